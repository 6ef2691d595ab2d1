"""Deadlines for a process's one loop: a heap of named timers (supervisor and workers).

Each timer has a hashable key (`"rescan"`, `("kill", "hca_a", 4242)`) and, usually, a callback:
`call_at`/`call_later` fire once, `every` fires again and again. Setting a key again replaces its
deadline, cancelling forgets it; stale heap entries are skipped when popped, so both are
O(log n) without searching the heap. The loop asks `next_deadline()` for its poll timeout and
runs what `take_due(now)` hands back, each call guarded by the loop itself. A recurring timer is
re-armed *before* its callback runs, so a callback that raises cannot stop it for good.
The clock is injected: tests drive time by hand.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Callback = Callable[[], None]


@dataclass(frozen=True)
class Due:
    key: Hashable
    callback: Callback | None


@dataclass
class _Entry:
    seq: int
    callback: Callback | None
    interval: float | None


class Timers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, _Entry] = {}
        self._seq = itertools.count()

    # -- arming ---------------------------------------------------------------------------------
    def call_at(self, key: Hashable, when: float, callback: Callback) -> None:
        """Run `callback` once at monotonic time `when` (replacing any deadline of `key`)."""
        self._arm(key, when, callback, None)

    def call_later(self, key: Hashable, delay: float, callback: Callback) -> None:
        self._arm(key, self.clock() + delay, callback, None)

    def every(
        self, key: Hashable, interval: float, callback: Callback, *, first: float | None = None
    ) -> None:
        """Run `callback` every `interval` s, first after `first` s (default: one interval)."""
        if interval <= 0:
            raise ValueError("interval must be > 0")
        start = self.clock() + (interval if first is None else first)
        self._arm(key, start, callback, interval)

    def set(self, key: Hashable, when: float) -> None:
        """A bare deadline without a callback: `take_due` hands back its key to dispatch."""
        self._arm(key, when, None, None)

    def set_once(self, key: Hashable, when: float, callback: Callback | None = None) -> None:
        """Like `call_at`, but keep an existing deadline: debounces a burst of hints."""
        if key not in self._live:
            self._arm(key, when, callback, None)

    def _arm(
        self, key: Hashable, when: float, callback: Callback | None, interval: float | None
    ) -> None:
        seq = next(self._seq)
        self._live[key] = _Entry(seq, callback, interval)
        heapq.heappush(self._heap, (when, seq, key))

    # -- inspecting -----------------------------------------------------------------------------
    def cancel(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def pending(self, key: Hashable) -> bool:
        return key in self._live

    def keys(self) -> list[Hashable]:
        return list(self._live)

    def next_deadline(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def timeout(self, cap: float) -> float:
        """Seconds until the next deadline (0 when overdue), at most `cap`: a poll timeout."""
        deadline = self.next_deadline()
        if deadline is None:
            return cap
        return max(0.0, min(cap, deadline - self.clock()))

    # -- firing ---------------------------------------------------------------------------------
    def take_due(self, now: float | None = None) -> list[Due]:
        """Timers due at or before `now`, earliest first. One-shot timers are forgotten;
        recurring ones are re-armed one interval after their deadline (no drift, no burst
        of catch-up calls after a stall: a deadline already past is moved to `now + interval`)."""
        now = self.clock() if now is None else now
        due: list[Due] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            when, _, key = heapq.heappop(self._heap)
            entry = self._live.pop(key)
            if entry.interval is not None and entry.callback is not None:
                following = when + entry.interval
                if following <= now:
                    following = now + entry.interval
                self._arm(key, following, entry.callback, entry.interval)
            due.append(Due(key, entry.callback))

    def pop_due(self, now: float) -> list[Hashable]:
        """Keys of due timers (the callbacks are not run): for loops that dispatch by key."""
        return [d.key for d in self.take_due(now)]

    def _drop_stale(self) -> None:
        while self._heap:
            _, seq, key = self._heap[0]
            entry = self._live.get(key)
            if entry is not None and entry.seq == seq:
                return
            heapq.heappop(self._heap)
