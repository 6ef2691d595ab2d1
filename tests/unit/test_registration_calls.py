"""The worker's two registration calls (workers/registration.py) on a connection that a kubelet
going down has sent GOAWAY on: real gRPC over a unix socket, against a minimal HTTP/2 peer.

A kubelet stopping says GOAWAY on its open connections. A call whose stream had not left the
client by then is failed as "never sent", which gRPC retries at once, transparently and without
limit, keeping every attempt in the call's memory: in the kubelet restart storm a Register caught
that way spun a gRPC thread for its whole 15 s timeout and grew the worker by gigabytes. The peer
here makes that state likely: it allows no concurrent stream (the call waits in the client) and
then says GOAWAY and closes the connection, as a kubelet going down does, on every connection.
Whether the call was queued on the connection before the GOAWAY arrived is up to the client's
threads: when it was, only retries turned off end it at once (with them on, each retry waits on
a new connection of the same peer until the deadline); when it was not, the call finds the
connection gone and fails at once either way. Without the close that second case hung the call
until its deadline (a peer that says GOAWAY and keeps the connection open for ever), which made
this test fail about one run in five on a loaded machine.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers import registration

#: Far above what a failing call takes (milliseconds); a call retried behind our back runs to it.
CALL_TIMEOUT = 10.0

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _GOAWAY = 0x4, 0x7
_ACK = 0x1
_MAX_CONCURRENT_STREAMS = 0x3


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame on the connection (stream 0)."""
    header = struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", 0)
    return header + payload


def _read_frame(conn: socket.socket, buffer: bytearray) -> tuple[int, int] | None:
    """The next frame's (type, flags), or None once the client has closed."""
    while True:
        if len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) >= 9 + length:
                kind, flags = buffer[3], buffer[4]
                del buffer[: 9 + length]
                return kind, flags
        data = conn.recv(65536)
        if not data:
            return None
        buffer += data


class GoawayPeer:
    """Accepts connections on a unix socket; on each: SETTINGS (no concurrent stream), then,
    once the client has acknowledged them (it counts the connection ready), GOAWAY and close."""

    def __init__(self, path: Path) -> None:
        self.connections = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError):
            while len(buffer) < len(_PREFACE):
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            if bytes(buffer[: len(_PREFACE)]) != _PREFACE:
                return  # not HTTP/2: the call fails on its own
            del buffer[: len(_PREFACE)]
            conn.sendall(_frame(_SETTINGS, 0, struct.pack(">HI", _MAX_CONCURRENT_STREAMS, 0)))
            while (frame := _read_frame(conn, buffer)) is not None:
                kind, flags = frame
                if kind == _SETTINGS and not flags & _ACK:
                    conn.sendall(_frame(_SETTINGS, _ACK))
                elif kind == _SETTINGS:
                    # Last stream 0, no error: a server shutting down that processed nothing.
                    conn.sendall(_frame(_GOAWAY, 0, struct.pack(">II", 0, 0)))
                    conn.shutdown(socket.SHUT_RDWR)
                    return

    def close(self) -> None:
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[GoawayPeer, Path]]:
    path = tmp_path / "kubelet.sock"
    p = GoawayPeer(path)
    yield p, path
    p.close()


def test_a_register_on_a_goaway_connection_fails_at_once_and_is_not_retried(
    peer: tuple[GoawayPeer, Path],
) -> None:
    server, path = peer
    error, refused = registration.register_classic(
        str(path), "x.sock", "example.com/x", CALL_TIMEOUT
    )
    # Retried transparently, it would run to DEADLINE_EXCEEDED over dozens of connections.
    assert "UNAVAILABLE" in error, f"{error} after {server.connections} connection(s)"
    assert not refused  # nobody working answered: the machine retries soon, on the next kubelet


def test_a_self_check_on_a_goaway_connection_fails_at_once_and_is_not_retried(
    peer: tuple[GoawayPeer, Path],
) -> None:
    server, path = peer
    error = registration.self_check(str(path), CALL_TIMEOUT)
    assert "UNAVAILABLE" in error, f"{error} after {server.connections} connection(s)"
