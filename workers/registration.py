"""The two calls of a registration, each in a short-lived helper thread (worker process).

The self-check asks our own socket `GetDevicePluginOptions`; classic mode then calls `Register`
on `kubelet.sock`, and the kubelet dials back inside that call. (Plugin-watcher mode has no call
to make: the kubelet finds our socket in the plugins-registry dir.) The main loop keeps
heartbeating while the kubelet takes its time; results come back as events
(`SelfCheckDone`, `RegisterDone`) for the registration state machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from common.loop.file_identity import file_id
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from workers.events import EventQueue, RegisterDone, SelfCheckDone
from workers.servicer import API_VERSION, options
from workers.serving import socket_answers

#: Our calls' channels: no gRPC retries, transparent ones included. gRPC retries a call whose
#: stream never left the client (its connection had a GOAWAY, the kubelet stopping) at once and
#: without limit, each attempt kept in the call's memory until the call ends: a Register picked
#: onto the connection of a kubelet going down spun a gRPC thread and grew the worker by
#: gigabytes until its 15 s timeout. Failing at once is right: the machine tries again, on the
#: next kubelet.
CHANNEL_OPTIONS = (("grpc.enable_retries", 0),)

#: Status codes that mean nobody (or nobody working) answered, rather than a refusal.
_ABSENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def rpc_reason(err: grpc.RpcError) -> str:
    code = err.code() if hasattr(err, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{name}: {details}"


def self_check(socket_path: str, timeout: float) -> str:
    """'' when our server answers on `socket_path`, else why not."""
    channel = grpc.insecure_channel(f"unix:{socket_path}", options=CHANNEL_OPTIONS)
    try:
        dp_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
            # Fail fast: a socket that is gone must not hold up the next attempt.
            dp.Empty(),
            timeout=timeout,
            wait_for_ready=False,
        )
    except grpc.RpcError as err:
        return f"own socket {socket_path} does not answer: {rpc_reason(err)}"
    finally:
        channel.close()
    return ""


def register_classic(
    kubelet_socket: str, endpoint: str, resource_name: str, timeout: float
) -> tuple[str, bool]:
    """('', False) when the kubelet accepted, else (why, whether the kubelet refused)."""
    if file_id(kubelet_socket) is None:
        # No kubelet: fail now. A channel would keep connecting and could reach the next kubelet
        # after our server has been replaced, registering behind the main loop's back.
        return f"no kubelet: {kubelet_socket} does not exist (yet)", False
    if not socket_answers(kubelet_socket):
        # The socket a killed kubelet left, or one bound but not listening yet: a gRPC channel
        # costs milliseconds of CPU to learn what one connect() says in microseconds, and every
        # worker retries while the kubelet is away.
        return f"no kubelet: nothing listens on {kubelet_socket}", False
    channel = grpc.insecure_channel(f"unix:{kubelet_socket}", options=CHANNEL_OPTIONS)
    try:
        dp_grpc.RegistrationStub(channel).Register(
            dp.RegisterRequest(
                version=API_VERSION,
                endpoint=endpoint,
                resource_name=resource_name,
                options=options(),
            ),
            timeout=timeout,
            wait_for_ready=False,
        )
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else None
        return f"Register on {kubelet_socket} failed: {rpc_reason(err)}", code not in _ABSENT_CODES
    finally:
        channel.close()
    return "", False


def start_self_check(
    events: EventQueue, generation: int, socket_path: str, timeout: float
) -> threading.Thread:
    def run() -> None:
        events.post(SelfCheckDone(generation, self_check(socket_path, timeout)))

    thread = threading.Thread(target=run, name=f"self-check-{generation}", daemon=True)
    thread.start()
    return thread


def start_register(
    events: EventQueue,
    attempt: int,
    generation: int,
    kubelet_socket: str,
    resource_name: str,
    endpoint: str,
    timeout: float,
    prepare: Callable[[], bool],
) -> threading.Thread:
    """Send one `Register` in a daemon thread.

    `prepare` runs (in the thread) right before it: the main loop uses it to wait until the
    streams it ended are really over, so the kubelet sees that end before the new registration
    (kubernetes#121994), and to arm the stream claim. It returns False when our server is no
    longer the one serving our socket: the kubelet dials the socket path, so a Register made for
    a server replaced meanwhile would register the new one behind the main loop's back.
    """

    def run() -> None:
        if not prepare():
            events.post(RegisterDone(attempt, generation, superseded=True))
            return
        sent_at = time.monotonic()
        error, refused = register_classic(kubelet_socket, endpoint, resource_name, timeout)
        events.post(RegisterDone(attempt, generation, error, refused, sent_at=sent_at))

    thread = threading.Thread(target=run, name=f"register-{attempt}", daemon=True)
    thread.start()
    return thread
