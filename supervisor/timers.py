"""Deadlines for the supervisor's one loop: a heap of named timers (supervisor process).

Each timer has a hashable key (`("rescan",)`, `("kill", "hca_a", 4242)`); setting a key again
replaces its deadline, and cancelling forgets it. Stale heap entries are skipped when popped, so
both are O(log n) without searching the heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, int] = {}  # key -> sequence number of its current entry
        self._seq = itertools.count()

    def set(self, key: Hashable, when: float) -> None:
        """Fire `key` at monotonic time `when`, replacing any earlier deadline of it."""
        seq = next(self._seq)
        self._live[key] = seq
        heapq.heappush(self._heap, (when, seq, key))

    def set_once(self, key: Hashable, when: float) -> None:
        """Like `set`, but keep an existing deadline: used to debounce bursts of hints."""
        if key not in self._live:
            self.set(key, when)

    def cancel(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def pending(self, key: Hashable) -> bool:
        return key in self._live

    def next_deadline(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """Keys whose deadline is at or before `now`, earliest first; they are forgotten."""
        due: list[Hashable] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            due.append(key)

    def _drop_stale(self) -> None:
        while self._heap and self._live.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
