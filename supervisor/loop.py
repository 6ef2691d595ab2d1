"""The supervisor's one loop: a poller, fd readers, timers and guarded handlers (supervisor).

One `zmq.Poller` waits on every registered reader (the control socket, the signal inbox, the
uevent monitor, an observer's pipes) with a timeout set by the nearest timer; every event is
handled to the end before the next poll, so no state is shared between threads and nothing
needs a lock. Timers are callbacks (`common.loop.timers`): `call_at`, `call_later`, `every`.

A handler that raises is a bug, but one bad event must not take the node down: each event runs
under `guarded`, which logs the traceback, counts the error per event (`errors`) and carries on.
Only a burst (`max_loop_errors` within `loop_error_window`) calls `on_burst`, which stops the
supervisor through its normal stop ladder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import zmq

from common.loop.timers import Timers
from supervisor.timings import Timings

LOG = logging.getLogger(__name__)

Source = int | zmq.Socket[Any]


@dataclass
class _Reader:
    event: str
    callback: Callable[[], None] | None  # None: the fd is only reported to `after_turn`


class Loop:
    def __init__(
        self,
        timings: Timings,
        clock: Callable[[], float],
        on_error: Callable[[str], None] | None = None,
        on_burst: Callable[[str], None] | None = None,
    ) -> None:
        self.timings = timings
        self.clock = clock
        self.timers = Timers(clock)
        self.poller = zmq.Poller()
        self._readers: dict[Source, _Reader] = {}
        #: Handler errors per event ("timer:heartbeat", "message:ready", ...), since start.
        self.errors: dict[str, int] = {}
        self._recent: list[float] = []
        self._on_error = on_error
        self._on_burst = on_burst
        #: Run on every pass, before and after the readers and timers (reaping children).
        self.every_pass: list[tuple[str, Callable[[], None]]] = []

    # ---- readers -----------------------------------------------------------------------------

    def add_reader(self, source: Source, event: str, callback: Callable[[], None] | None) -> None:
        if source in self._readers:
            self.remove_reader(source)
        self._readers[source] = _Reader(event, callback)
        self.poller.register(source, zmq.POLLIN)

    def remove_reader(self, source: Source) -> None:
        if self._readers.pop(source, None) is not None:
            self.poller.unregister(source)

    # ---- one pass ----------------------------------------------------------------------------

    def turn(self, wanted_wait: float | None = None) -> set[Source]:
        """Wait for the next event or deadline, handle everything ready; the ready sources."""
        wait = self.timers.timeout(self.timings.max_poll_wait)
        if wanted_wait is not None:
            wait = min(wait, wanted_wait)
        ready = {source for source, _ in self.poller.poll(int(max(0.0, wait) * 1000))}
        self._every_pass()
        for source in list(self._readers):
            reader = self._readers.get(source)
            if source in ready and reader is not None and reader.callback is not None:
                self.guarded(reader.event, reader.callback)
        for due in self.timers.take_due(self.clock()):
            if due.callback is not None:
                self.guarded(f"timer:{_kind(due.key)}", due.callback)
        self._every_pass()
        return ready

    def _every_pass(self) -> None:
        for event, callback in self.every_pass:
            self.guarded(event, callback)

    def guarded(self, event: str, handler: Callable[..., None], *args: Any) -> None:
        """Run one event's handler; an error is logged and counted, and the loop goes on."""
        try:
            handler(*args)
        except Exception:
            count = self.errors[event] = self.errors.get(event, 0) + 1
            LOG.exception(
                "handling %s failed (a bug: please report it); carrying on errors=%d",
                event,
                count,
            )
            if self._on_error is not None:
                self._on_error(event)
            now = self.clock()
            window = self.timings.loop_error_window
            self._recent = [t for t in self._recent if now - t < window]
            self._recent.append(now)
            if len(self._recent) >= self.timings.max_loop_errors and self._on_burst is not None:
                self._on_burst(f"{len(self._recent)} handler errors within {window:.0f}s")


def _kind(key: Hashable) -> str:
    """The timer's kind for error counts: ("stop", "a", 42) counts as "stop"."""
    return str(key[0]) if isinstance(key, tuple) and key else str(key)
