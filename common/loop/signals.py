"""Signals as readable events for a process's poll loop (supervisor and workers).

The handlers only record the signal number; `signal.set_wakeup_fd` writes a byte to a socket pair
that the loop's `zmq.Poller` watches, so a signal wakes the loop and the loop does the work. No
logging, locking or I/O happens inside a handler (gunicorn's arbiter learnt this the hard way).
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterable
from types import FrameType
from typing import Any


class SignalInbox:
    def __init__(self, signums: Iterable[int]) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._received: list[int] = []
        self._previous: dict[int, Any] = {}
        self._old_wakeup = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)

    def fileno(self) -> int:
        return self._read.fileno()

    def drain(self) -> list[int]:
        """The signals received since the last drain, in order."""
        with contextlib.suppress(BlockingIOError):
            while self._read.recv(512):
                pass
        # Swap rather than copy-and-clear: a handler may run between the two.
        received, self._received = self._received, []
        return received

    def close(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        signal.set_wakeup_fd(self._old_wakeup)
        self._read.close()
        self._write.close()
