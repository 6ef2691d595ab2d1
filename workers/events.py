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
class StreamOpened:
    """The kubelet's ListAndWatch stream of registration `claim` opened on server `generation`."""

    generation: int
    claim: int


@dataclass(frozen=True)
class StreamLost:
    """The kubelet's stream ended without us ending it (cancelled, or a send failed).

    Only the kubelet's stream is reported (see `StreamHub.claim`): another local client opening
    and closing ListAndWatch says nothing about the kubelet.
    """

    generation: int
    claim: int


@dataclass(frozen=True)
class SelfCheckDone:
    """Our own socket answered `GetDevicePluginOptions` (error == "") or not."""

    generation: int
    error: str = ""


@dataclass(frozen=True)
class RegisterDone:
    """A classic `Register` returned: accepted (error == "") or why not."""

    attempt: int
    generation: int
    error: str = ""
    #: The kubelet answered and said no (Register's UNKNOWN, or another status that is not
    #: "nobody there"): retried slowly and reported, unlike an absent kubelet.
    refused: bool = False
    #: Not sent: its server was replaced before it got to Register (no failure).
    superseded: bool = False
    sent_at: float = 0.0  # time.monotonic() right before Register was sent


@dataclass(frozen=True)
class WatcherStatus:
    """`NotifyRegistrationStatus` from the kubelet's plugin watcher."""

    generation: int
    registered: bool
    error: str


Event = StreamOpened | StreamLost | SelfCheckDone | RegisterDone | WatcherStatus


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
