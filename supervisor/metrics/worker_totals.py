"""Worker counters as Prometheus series (supervisor process only): per-process totals made into
monotonic sums across worker restarts, and cumulative histograms.

A worker reports totals since it started (`WorkerCounters`); a new pid, or any value going down,
starts a new process whose totals all count as new. `supervisor.metrics.exporter` uses these.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from common.messages import ALLOCATE_BUCKETS, WorkerCounters


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


@dataclass
class Histogram:
    """Cumulative bucket counts (one per bound, `+Inf` is `count`) and a sum."""

    bounds: tuple[float, ...]
    buckets: list[float]
    count: float = 0.0
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, [0.0] * len(bounds))

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.buckets[i] += 1
        self.count += 1
        self.total += value

    def samples(self) -> list[tuple[str, float]]:
        pairs = [(_le(b), v) for b, v in zip(self.bounds, self.buckets, strict=True)]
        return [*pairs, ("+Inf", self.count)]


# Order of the flat vector a WorkerCounters becomes; bucket entries follow these.
COUNTER_FIELDS = (
    "allocations_ok",
    "allocations_refused",
    "allocate_seconds_sum",
    "allocate_count",
    "registrations_ok",
    "registrations_failed",
)


def counters_vector(c: WorkerCounters) -> tuple[float, ...] | str:
    """The counters as one flat vector, or why they cannot be trusted."""
    if len(c.allocate_buckets) != len(ALLOCATE_BUCKETS):
        return f"{len(c.allocate_buckets)} allocate buckets, expected {len(ALLOCATE_BUCKETS)}"
    values = tuple(float(getattr(c, name)) for name in COUNTER_FIELDS) + tuple(
        float(b) for b in c.allocate_buckets
    )
    if any(not math.isfinite(v) or v < 0 for v in values):
        return "a negative or non-finite value"
    buckets = c.allocate_buckets
    if any(a > b for a, b in itertools.pairwise(buckets)) or (
        buckets and buckets[-1] > c.allocate_count
    ):
        return "allocate buckets are not cumulative"
    return values


@dataclass
class ProcessTotals:
    """Turns the totals of a sequence of processes into one monotonic running sum."""

    pid: int | None = None
    last: tuple[float, ...] = ()
    sums: list[float] = field(default_factory=list)

    def update(self, pid: int, values: tuple[float, ...]) -> None:
        if not self.sums:
            self.sums = [0.0] * len(values)
        new_process = (
            pid != self.pid
            or len(values) != len(self.last)
            or any(v < old for v, old in zip(values, self.last, strict=True))
        )
        base = (0.0,) * len(values) if new_process else self.last
        for i, (v, old) in enumerate(zip(values, base, strict=True)):
            self.sums[i] += v - old
        self.pid, self.last = pid, values
