"""What the DRA process counts, reported to the supervisor in its status lines (DRA process).

Totals since this process started, like a worker's counters: the supervisor's metrics add a
restart's totals up. Call latency is a histogram with cumulative buckets in Prometheus style.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

#: Upper bounds (seconds) of the NodePrepareResources / NodeUnprepareResources histogram.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    def __init__(self) -> None:
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def to_json(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "count": self.count, "sum": round(self.sum, 6)}


class DriverCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.claims: Counter[str] = Counter()  # "prepare:ok", "unprepare:error", ...
        self.latency = {"prepare": LatencyHistogram(), "unprepare": LatencyHistogram()}
        self.slice_writes: Counter[str] = Counter()  # create, update, delete
        self.api_errors: Counter[str] = Counter()  # by call: get_claim, list_slices, ...

    def call(self, what: str, seconds: float, results: Counter[str]) -> None:
        with self._lock:
            self.latency[what].observe(seconds)
            for result, n in results.items():
                self.claims[f"{what}:{result}"] += n

    def slice_write(self, verb: str) -> None:
        with self._lock:
            self.slice_writes[verb] += 1

    def api_error(self, call: str) -> None:
        with self._lock:
            self.api_errors[call] += 1

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "claims": dict(self.claims),
                "latency": {k: h.to_json() for k, h in self.latency.items()},
                "slice_writes": dict(self.slice_writes),
                "api_errors": dict(self.api_errors),
            }
