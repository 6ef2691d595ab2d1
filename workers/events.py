"""Events that gRPC and helper threads hand to the worker's main loop (worker process).

The main loop owns all state. Other threads never change it: they post an event here, which
also writes a byte to a pipe the main loop's poller watches, so the loop wakes at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamLost:
    """The kubelet cancelled the stream or a send failed: it has lost us."""

    generation: int
    opened_at: float  # time.monotonic() when the stream opened


@dataclass(frozen=True)
class AttemptDone:
    generation: int
    attempt: int
    ok: bool
    error: str = ""
    self_check_failed: bool = False
    #: The kubelet answered and said no (Register's UNKNOWN, or another status that is not
    #: "nobody there"): retried slowly and reported, unlike an absent kubelet.
    refused: bool = False
    kubelet: tuple[int, int] | None = None  # kubelet.sock (device, inode) when Register was called
    superseded: bool = False  # not tried: its server was replaced meanwhile (no failure)
    sent_at: float = 0.0  # time.monotonic() right before Register was sent


@dataclass(frozen=True)
class WatcherStatus:
    """`NotifyRegistrationStatus` from the kubelet's plugin watcher."""

    generation: int
    registered: bool
    error: str


Event = StreamLost | AttemptDone | WatcherStatus


class EventQueue:
    """Thread-safe queue with a wakeup file descriptor for `zmq.Poller`.

    gRPC threads may still post while the worker shuts down: once closed, posts are dropped, and
    the lock makes sure no post writes to a descriptor number that close() already released
    (and the process may have reused).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        return self._read_fd

    def post(self, event: Event) -> None:
        with self._lock:
            if self._closed:
                return
            self._queue.put(event)
            # A full pipe means the loop is already due to wake.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"\0")

    def drain(self) -> list[Event]:
        with self._lock:
            if self._closed:
                return []
            try:
                while os.read(self._read_fd, 4096):
                    pass
            except BlockingIOError:
                pass
        events: list[Event] = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._read_fd, self._write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
