"""The DRA driver's figures on /metrics and /readyz (supervisor process).

The DRA child writes a status line with its totals since it started (dra/main.py); this keeps
the totals of earlier incarnations (a new `pid` folds the last one in) so counters never go
back, and renders the `DRA_FAMILIES` of `supervisor.metrics.families`. `/readyz` is not ready
while the driver is not registered with the kubelet or its slices are not published, and says
why.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from supervisor.metrics.families import DRA_FAMILIES, PREFIX
from supervisor.metrics.worker_totals import Histogram

#: The child's LATENCY_BUCKETS (dra/counters.py); the supervisor does not import the driver.
DRA_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CALLS = ("prepare", "unprepare")
RESULTS = ("ok", "error")
VERBS = ("create", "update", "delete")


def not_ready(status: Mapping[str, Any] | None) -> str | None:
    """None when the driver is registered and its slices published, else why not."""
    if not status:
        return "DRA driver: starting"
    if not status.get("registered"):
        error = status.get("registration_error") or "the kubelet has not registered it yet"
        return f"DRA driver: not registered ({error})"
    if not status.get("published"):
        return f"DRA driver: ResourceSlices not published ({status.get('publish_error') or '?'})"
    return None


class DraTotals:
    """Counters summed over the child's incarnations; read by the HTTP thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._pid = 0
        self._gauges: dict[str, float] = {}
        self.restarts = 0

    def update(self, status: Mapping[str, Any]) -> None:
        flat = _flatten(status.get("counters") or {})
        with self._lock:
            pid = int(status.get("pid") or 0)
            if pid != self._pid:
                if self._pid:
                    self.restarts += 1
                self._base = _add(self._base, self._last)
                self._pid = pid
            self._last = flat
            self._gauges = {
                "dra_registered": 1.0 if status.get("registered") else 0.0,
                "dra_slices_published": 1.0 if status.get("published") else 0.0,
                "dra_devices": float(status.get("devices") or 0),
                "dra_prepared_claims": float(status.get("prepared_claims") or 0),
            }

    def collect(self) -> list[Metric]:
        with self._lock:
            totals = _add(self._base, self._last)
            gauges = dict(self._gauges)
        out: list[Metric] = []
        for short, value in gauges.items():
            gauge = GaugeMetricFamily(PREFIX + short, DRA_FAMILIES[short][2])
            gauge.add_metric([], value)
            out.append(gauge)
        calls = _counter("dra_claims_total")
        for call in CALLS:
            for result in RESULTS:
                calls.add_metric([call, result], totals.get(f"claims.{call}:{result}", 0.0))
        writes = _counter("dra_slice_writes_total")
        for verb in VERBS:
            writes.add_metric([verb], totals.get(f"slice_writes.{verb}", 0.0))
        errors = _counter("dra_api_errors_total")
        for key in sorted(k for k in totals if k.startswith("api_errors.")):
            errors.add_metric([key.split(".", 1)[1]], totals[key])
        _, labels, doc = DRA_FAMILIES["dra_call_duration_seconds"]
        hist = HistogramMetricFamily(PREFIX + "dra_call_duration_seconds", doc, labels=labels)
        for call in CALLS:
            h = Histogram(
                DRA_CALL_BUCKETS,
                [totals.get(f"latency.{call}.{i}", 0.0) for i in range(len(DRA_CALL_BUCKETS))],
                count=totals.get(f"latency.{call}.count", 0.0),
                total=totals.get(f"latency.{call}.sum", 0.0),
            )
            hist.add_metric([call], h.samples(), h.total)
        return [*out, calls, writes, errors, hist]

    def describe(self) -> list[Metric]:
        return []


def _counter(short: str) -> CounterMetricFamily:
    _, labels, doc = DRA_FAMILIES[short]
    return CounterMetricFamily(PREFIX + short, doc, labels=labels)


def _add(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}


def _flatten(counters: Mapping[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for group in ("claims", "slice_writes", "api_errors"):
        for key, value in (counters.get(group) or {}).items():
            flat[f"{group}.{key}"] = float(value)
    for call, hist in (counters.get("latency") or {}).items():
        for i, value in enumerate(hist.get("buckets") or []):
            flat[f"latency.{call}.{i}"] = float(value)
        flat[f"latency.{call}.count"] = float(hist.get("count") or 0)
        flat[f"latency.{call}.sum"] = float(hist.get("sum") or 0)
    return flat
