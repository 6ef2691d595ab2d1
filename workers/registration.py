"""Registering with the kubelet, one attempt at a time (worker process, helper threads).

Classic mode: check that our own socket answers (`GetDevicePluginOptions`), then `Register` on
`kubelet.sock`; the kubelet dials back inside that call. Plugin-watcher mode has no call to make:
the kubelet finds our socket in the plugins-registry dir, so an attempt is only the self-check.
Each attempt runs in a short-lived thread so the main loop keeps heartbeating while the kubelet
takes its time; the result comes back as an `AttemptDone` event.
"""

from __future__ import annotations

import threading

import grpc

from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from workers.events import AttemptDone, EventQueue
from workers.kubelet_watch import socket_identity
from workers.servicer import API_VERSION, options

SELF_CHECK_TIMEOUT = 2.0
#: The kubelet may spend up to 10 s dialling us inside Register.
REGISTER_TIMEOUT = 15.0
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 1.0


def backoff(failures: int) -> float:
    """Delay before the next attempt after `failures` consecutive failures (capped at 1 s)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_FIRST * float(2 ** min(failures - 1, 10)))


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


def register_classic(kubelet_socket: str, endpoint: str, resource_name: str) -> str:
    """'' when the kubelet accepted the registration, else its refusal or why it failed."""
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
        )
    except grpc.RpcError as err:
        return f"Register on {kubelet_socket} failed: {rpc_reason(err)}"
    finally:
        channel.close()
    return ""


def start_attempt(
    events: EventQueue,
    generation: int,
    attempt: int,
    socket_path: str,
    kubelet_socket: str | None,
    resource_name: str,
    endpoint: str,
    check_self: bool,
) -> threading.Thread:
    """Run one attempt in a daemon thread; `kubelet_socket=None` means only the self-check."""

    def run() -> None:
        identity = socket_identity(kubelet_socket) if kubelet_socket else None
        if check_self:
            problem = self_check(socket_path)
            if problem:
                events.post(AttemptDone(generation, attempt, False, problem, True, identity))
                return
        error = register_classic(kubelet_socket, endpoint, resource_name) if kubelet_socket else ""
        events.post(AttemptDone(generation, attempt, not error, error, False, identity))

    thread = threading.Thread(target=run, name=f"register-{attempt}", daemon=True)
    thread.start()
    return thread
