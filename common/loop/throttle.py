"""The one log throttle (supervisor and workers).

A failure that repeats (a refused registration, an unwritable CDI folder, an unreadable config)
is logged when it starts, then at most once per `interval` while it goes on, with the number of
repeats swallowed in between (`allow` answers `LogNow(swallowed)`, always true, or None: stay
quiet); `clear` after a success makes the next failure log at once. The clock is injected so
tests need no real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class LogNow:
    """Log this failure now; `swallowed` repeats went unlogged since the previous line."""

    swallowed: int = 0


@dataclass
class _Run:
    last: float
    suppressed: int = 0


class LogThrottle:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._runs: dict[Hashable, _Run] = {}

    def allow(self, key: Hashable) -> LogNow | None:
        """`LogNow` (always true): log this one. None: stay quiet, it is counted."""
        now = self._clock()
        run = self._runs.get(key)
        if run is None:
            self._runs[key] = _Run(now)
            return LogNow()
        if now - run.last >= self._interval:
            swallowed, run.last, run.suppressed = run.suppressed, now, 0
            return LogNow(swallowed)
        run.suppressed += 1
        return None

    def active(self, key: Hashable) -> bool:
        """True while a run of failures of `key` is going on (since the last `clear`)."""
        return key in self._runs

    def clear(self, key: Hashable) -> bool:
        """The failure is over. True when there was a run to end (worth an "ok again" line)."""
        return self._runs.pop(key, None) is not None
