"""Registering with the kubelet, one attempt at a time (worker process, helper threads).

Classic mode: check that our own socket answers (`GetDevicePluginOptions`), then `Register` on
`kubelet.sock`; the kubelet dials back inside that call. Plugin-watcher mode has no call to make:
the kubelet finds our socket in the plugins-registry dir, so an attempt is only the self-check.
Each attempt runs in a short-lived thread so the main loop keeps heartbeating while the kubelet
takes its time; the result comes back as an `AttemptDone` event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from workers.events import AttemptDone, EventQueue
from workers.kubelet_watch import socket_inode
from workers.servicer import API_VERSION, options

SELF_CHECK_TIMEOUT = 2.0
#: The kubelet may spend up to 10 s dialling us inside Register.
REGISTER_TIMEOUT = 15.0
BACKOFF_FIRST = 0.05
#: While the kubelet is absent (no kubelet.sock, UNAVAILABLE): every second counts once it is back.
BACKOFF_CAP = 1.0
#: When the kubelet answers "no": asking again every second changes nothing and floods its log.
REFUSED_BACKOFF_CAP = 30.0
#: Status codes that mean nobody (or nobody working) answered, rather than a refusal.
_ABSENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def backoff(failures: int, refused: bool = False) -> float:
    """Delay before the next attempt after `failures` consecutive failures.

    Capped at 1 s while the kubelet is absent, at 30 s once it has refused us.
    """
    if failures <= 0:
        return 0.0
    cap = REFUSED_BACKOFF_CAP if refused else BACKOFF_CAP
    return min(cap, BACKOFF_FIRST * float(2 ** min(failures - 1, 20)))


def rpc_reason(err: grpc.RpcError) -> str:
    code = err.code() if hasattr(err, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{name}: {details}"


def self_check(socket_path: str) -> str:
    """'' when our server answers on `socket_path`, else why not."""
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    try:
        dp_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
            # Fail fast: a socket that is gone must not hold up the next attempt.
            dp.Empty(),
            timeout=SELF_CHECK_TIMEOUT,
            wait_for_ready=False,
        )
    except grpc.RpcError as err:
        return f"own socket {socket_path} does not answer: {rpc_reason(err)}"
    finally:
        channel.close()
    return ""


def register_classic(kubelet_socket: str, endpoint: str, resource_name: str) -> tuple[str, bool]:
    """('', False) when the kubelet accepted, else (why, whether the kubelet refused)."""
    if socket_inode(kubelet_socket) is None:
        # No kubelet: fail now. A channel would keep connecting and could reach the next kubelet
        # after our server has been replaced, registering behind the main loop's back.
        return f"no kubelet: {kubelet_socket} does not exist (yet)", False
    channel = grpc.insecure_channel(f"unix:{kubelet_socket}")
    try:
        dp_grpc.RegistrationStub(channel).Register(
            dp.RegisterRequest(
                version=API_VERSION,
                endpoint=endpoint,
                resource_name=resource_name,
                options=options(),
            ),
            timeout=REGISTER_TIMEOUT,
            wait_for_ready=False,
        )
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else None
        return f"Register on {kubelet_socket} failed: {rpc_reason(err)}", code not in _ABSENT_CODES
    finally:
        channel.close()
    return "", False


def start_attempt(
    events: EventQueue,
    generation: int,
    attempt: int,
    socket_path: str,
    kubelet_socket: str | None,
    resource_name: str,
    endpoint: str,
    check_self: bool,
    before_register: Callable[[], None] | None = None,
    still_current: Callable[[], bool] | None = None,
) -> threading.Thread:
    """Run one attempt in a daemon thread; `kubelet_socket=None` means only the self-check.

    `before_register` runs (in the thread) right before `Register`: the main loop uses it to
    wait until a stream it ended is really over, so the kubelet sees that end before the new
    registration (kubernetes#121994). `still_current` says whether our server is still the one
    serving our socket: the kubelet dials the socket path, so a Register made for a server that
    was replaced meanwhile would register the new one behind the main loop's back.
    """

    def run() -> None:
        if check_self:
            problem = self_check(socket_path)
            if problem:
                events.post(AttemptDone(generation, attempt, False, problem, True))
                return
        error, refused, kubelet, sent_at = "", False, None, 0.0
        if kubelet_socket:
            if before_register is not None:
                before_register()
            if still_current is not None and not still_current():
                events.post(AttemptDone(generation, attempt, False, "superseded", superseded=True))
                return
            kubelet = socket_inode(kubelet_socket)
            sent_at = time.monotonic()
            error, refused = register_classic(kubelet_socket, endpoint, resource_name)
        events.post(
            AttemptDone(
                generation, attempt, not error, error, False, refused, kubelet, sent_at=sent_at
            )
        )

    thread = threading.Thread(target=run, name=f"register-{attempt}", daemon=True)
    thread.start()
    return thread
