"""Polls the kubelet's PodResources API for the supervisor (its own small child process).

`python -m podresources.poller --socket PATH --interval SECONDS`

The supervisor must not import grpc, so this process does the gRPC calls: every interval it calls
`PodResourcesLister.List` on the unix socket and writes ONE JSON line to stdout:

    {"available": bool, "rows": [{"namespace", "pod", "container", "resource_name",
     "device_ids": [str, ...]}, ...], "error": str}

A missing socket is normal (no kubelet yet, or the API is not mounted): the line says
`"available": false` with an empty error, and nothing is logged. A failing call says why in
`error`; stderr gets one log line when the state changes, not one per poll.

It exits 0 when stdout is closed (EPIPE) and when its parent dies (`os.getppid()` changes, which
it checks several times a second), so it never outlives the supervisor.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from typing import Any

#: How often the parent check runs while waiting for the next poll.
PARENT_CHECK = 0.2
#: Upper bound of one List call; a hung kubelet must not stall the polls for long.
CALL_TIMEOUT = 3.0


def _log(message: str) -> None:
    print(f"pod_resources_poller: {message}", file=sys.stderr, flush=True)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _socket_identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


class Lister:
    """One gRPC channel to the socket, rebuilt when the socket is replaced or a call fails."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: Any = None
        self._stub: Any = None
        self._identity: tuple[int, int, int] | None = None

    def snapshot(self) -> dict[str, Any]:
        if not _is_socket(self.socket_path):
            self.close()
            return {"available": False, "rows": [], "error": ""}
        import grpc  # here, so `--help` and an absent socket cost no gRPC start-up

        from proto.podresources.v1 import api_pb2, api_pb2_grpc

        identity = _socket_identity(self.socket_path)
        if self._stub is None or identity != self._identity:
            self.close()
            self._channel = grpc.insecure_channel(f"unix:{self.socket_path}")
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
            self._identity = identity
        try:
            response = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            self.close()
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "UNKNOWN"
            return {"available": False, "rows": [], "error": f"{name}: {details}"}
        rows = [
            {
                "namespace": pod.namespace,
                "pod": pod.name,
                "container": container.name,
                "resource_name": devices.resource_name,
                "device_ids": list(devices.device_ids),
            }
            for pod in response.pod_resources
            for container in pod.containers
            for devices in container.devices
        ]
        return {"available": True, "rows": rows, "error": ""}

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = self._identity = None


def run(socket_path: str, interval: float) -> int:
    parent = os.getppid()
    lister = Lister(socket_path, min(CALL_TIMEOUT, max(interval, 0.5)))
    last_state: tuple[bool, str] | None = None
    try:
        while True:
            started = time.monotonic()
            snap = lister.snapshot()
            state = (snap["available"], snap["error"])
            # One line per change of state; a socket that is absent from the start is normal.
            if state != last_state and not (last_state is None and state == (False, "")):
                _log(
                    "PodResources API "
                    + (
                        "answering"
                        if snap["available"]
                        else f"unavailable: {snap['error'] or 'no socket'}"
                    )
                    + f" socket={socket_path}"
                )
            last_state = state
            try:
                sys.stdout.write(json.dumps(snap, separators=(",", ":")) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # The reader went away: nobody needs us. Point stdout at /dev/null so the
                # interpreter's final flush of the unwritten line stays quiet.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
            deadline = started + interval
            while True:
                if os.getppid() != parent:
                    return 0  # orphaned: the supervisor died
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, PARENT_CHECK))
    finally:
        lister.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podresources.poller")
    parser.add_argument("--socket", required=True, help="the kubelet's PodResources socket")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    args = parser.parse_args(argv)
    if not args.interval > 0:
        parser.error("--interval must be > 0")
    # Stop quietly on SIGINT too (SIGTERM's default action already ends the process).
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    return run(args.socket, args.interval)


if __name__ == "__main__":
    sys.exit(main())
