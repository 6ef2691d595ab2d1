"""The plugin's Prometheus metrics (supervisor process only; workers report over ZeroMQ).

`Metrics` holds plain values that the supervisor's loop sets through small methods named for the
event (`device_scan`, `worker_restarted`, `config_reload`, ...), and one custom collector turns
them into metric families when `/metrics` is scraped. A single collector (rather than
prometheus_client's Gauge/Counter objects) because:

- a scrape must never see half an update: "replace all port series" or "drop this resource" are
  one step under one lock, not a clear() followed by sets a scrape can land between;
- worker counters arrive as per-process totals (`WorkerCounters`, reset when a worker restarts),
  and the allocate histogram arrives as bucket counts, which the setters cannot express;
- the metric names and label sets live in one place (`supervisor.metrics.families.FAMILIES`),
  which the docs and tests use.

Counters that come from worker processes stay monotonic across worker restarts: each update is
turned into a delta against the previous totals of the same pid (a new pid, or any value going
down, starts a new process whose totals are all delta). What a worker counted after its last
heartbeat before it died is lost; that is at most one heartbeat interval of counts. The delta
bookkeeping and the histograms are `supervisor.metrics.worker_totals`.

Every counter of a resource exists from the moment the resource does (allocations and
registrations by result, worker restarts by each reason in `RESTART_REASONS`), at 0: Prometheus
cannot see the first increment of a series that appears already at 1.

Thread safety: the loop calls the setters, the HTTP server's thread calls `render()`; one lock
guards the state, and `render()` copies it out under the lock before formatting.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from common.devices import Candidate, ScanProblem
from common.messages import ALLOCATE_BUCKETS, CDI_ERROR_REASONS, WorkerCounters
from supervisor.metrics.families import (
    FAILURE,
    RESTART_REASONS,
    SCAN_BUCKETS,
    SUCCESS,
    build_families,
)
from supervisor.metrics.rdma_usage import collect_pod_rdma
from supervisor.metrics.worker_totals import (
    COUNTER_FIELDS,
    Histogram,
    ProcessTotals,
    counters_vector,
)
from supervisor.node_health import REASONS as NODE_REASONS
from supervisor.pod_resources import PodAllocation
from supervisor.rdma_cgroup import PodRdmaUsage

LOG = logging.getLogger(__name__)

_Add = Callable[[str, Sequence[str], float], None]


@dataclass
class _Resource:
    """Everything known about one resource; dropped as a whole by `remove_resource`."""

    inventory: tuple[int, int, int, int] | None = None  # devices, healthy, hcas, usable
    hca_rows: tuple[tuple[str, str, str, str, str], ...] = ()
    worker_up: bool | None = None
    rss_bytes: int | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    counters: ProcessTotals = field(default_factory=ProcessTotals)
    cpu: ProcessTotals = field(default_factory=ProcessTotals)
    cdi_current: bool | None = None  # None: not in CDI mode (or no heartbeat yet)
    cdi_errors: ProcessTotals = field(default_factory=ProcessTotals)
    failures: int | None = None


def _hca_rows(candidates: Iterable[Candidate]) -> tuple[tuple[str, str, str, str, str], ...]:
    rows: dict[tuple[str, str, str, str, str], None] = {}
    for c in candidates:
        for rdma in [r.name for r in c.rdma_devices] or [""]:
            rows[(c.pci_address, rdma, c.if_name, c.link_type, str(c.numa_node))] = None
    return tuple(rows)


class Metrics:
    """The supervisor's metrics; setters for the loop, `render()` for the HTTP thread."""

    def __init__(self, version: str) -> None:
        self._version = version
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._ports: dict[tuple[str, str], bool] = {}
        self._kubelet_restarts = 0
        self._reloads: dict[str, int] = {SUCCESS: 0, FAILURE: 0}
        self._last_reload_success: float | None = None
        self._last_reload_ok: bool | None = None  # None until the config is first loaded
        self._netns_exclusive: bool | None = None  # None while the mode is unknown
        self._node_problem = ""  # supervisor.node_health reason; "" when the node serves
        self._scans: dict[str, int] = {}
        self._scan_errors: dict[str, int] = {}
        self._scan_duration = Histogram.empty(SCAN_BUCKETS)
        self._pods: dict[tuple[str, str, str, str], int] = {}
        self._retained: dict[str, int] = {}
        self._refused_pids: set[tuple[str, int]] = set()
        #: Per-pod RDMA usage, read on each scrape (supervisor/metrics/rdma_usage.py); None = off.
        self.pod_rdma: Callable[[], Sequence[PodRdmaUsage]] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- for the HTTP thread -------------------------------------------------------------------

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)

    # -- for the supervisor loop ---------------------------------------------------------------

    def set_resource(self, resource: str, rdma_hca_max: int, matched: Sequence[Candidate]) -> None:
        """The resource's matched HCAs after a scan or a config change (replaces what was)."""
        devices = max(0, rdma_hca_max) if matched else 0
        healthy = devices if any(c.healthy for c in matched) else 0
        usable = sum(1 for c in matched if c.usable)
        rows = _hca_rows(matched)
        with self._lock:
            r = self._resource(resource)
            r.inventory = (devices, healthy, len(matched), usable)
            r.hca_rows = rows

    def remove_resource(self, resource: str) -> None:
        """The resource left the config: every series with its label goes."""
        with self._lock:
            self._resources.pop(resource, None)
            self._retained.pop(resource, None)
            self._refused_pids = {k for k in self._refused_pids if k[0] != resource}

    def set_ports(self, candidates: Sequence[Candidate]) -> None:
        """Port state of every RDMA device a scan found (replaces all port series)."""
        ports = {
            (r.name, str(p.number)): p.up
            for c in candidates
            for r in c.rdma_devices
            for p in r.ports
        }
        with self._lock:
            self._ports = ports

    def device_scan(self, trigger: str, duration: float, problems: Sequence[ScanProblem]) -> None:
        """A full sysfs scan finished; `trigger` is e.g. start, uevent, periodic or config."""
        seconds = duration if math.isfinite(duration) and duration > 0 else 0.0
        with self._lock:
            self._scans[trigger] = self._scans.get(trigger, 0) + 1
            self._scan_duration.observe(seconds)
            for p in problems:
                self._scan_errors[p.reason] = self._scan_errors.get(p.reason, 0) + 1

    def worker_up(self, resource: str, up: bool) -> None:
        """The worker process started (True) or exited (False)."""
        with self._lock:
            r = self._resource(resource)
            r.worker_up = up
            if not up:
                r.rss_bytes = None  # a dead process has no memory; don't show a stale figure

    def worker_restarted(self, resource: str, reason: str) -> None:
        """The supervisor is starting a new process for the resource; `reason` is a short label."""
        with self._lock:
            r = self._resource(resource)
            r.restarts[reason] = r.restarts.get(reason, 0) + 1

    def worker_counters(self, resource: str, pid: int, counters: WorkerCounters) -> None:
        """A heartbeat's counters: totals since the worker process `pid` started."""
        vector = counters_vector(counters)
        with self._lock:
            if isinstance(vector, str):
                if (resource, pid) not in self._refused_pids:  # once per process, not per beat
                    if len(self._refused_pids) > 1000:
                        self._refused_pids.clear()
                    self._refused_pids.add((resource, pid))
                    LOG.warning(
                        "ignoring worker counters resource=%s pid=%d: %s (a worker of another "
                        "version?)",
                        resource,
                        pid,
                        vector,
                    )
                return
            r = self._resource(resource)
            r.counters.update(pid, vector)
            r.cdi_current = counters.cdi_spec_current
            errors = counters.cdi_write_errors
            if len(errors) == len(CDI_ERROR_REASONS) and all(n >= 0 for n in errors):
                r.cdi_errors.update(pid, tuple(float(n) for n in errors))

    def worker_failures(self, resource: str, failures: int) -> None:
        """The worker's consecutive quick exits, from the worker table."""
        with self._lock:
            self._resource(resource).failures = max(0, failures)

    def worker_process(
        self, resource: str, rss_bytes: int, cpu_seconds_of_pid: float, pid: int
    ) -> None:
        """What psutil saw of the worker process: resident memory and its CPU time so far."""
        cpu = cpu_seconds_of_pid if math.isfinite(cpu_seconds_of_pid) else 0.0
        with self._lock:
            r = self._resource(resource)
            r.rss_bytes = max(0, rss_bytes)
            r.cpu.update(pid, (max(0.0, cpu),))

    def kubelet_restart(self) -> None:
        """The supervisor saw kubelet.sock replaced."""
        with self._lock:
            self._kubelet_restarts += 1

    def config_loaded(self, when: float) -> None:
        """The config was loaded at start (not counted as a reload; sets the success time)."""
        with self._lock:
            self._last_reload_success = when
            self._last_reload_ok = True

    def config_reload(self, ok: bool, when: float) -> None:
        """A changed config file was applied (ok) or refused; `when` is Unix time."""
        with self._lock:
            result = SUCCESS if ok else FAILURE
            self._reloads[result] += 1
            self._last_reload_ok = ok
            if ok:
                self._last_reload_success = when

    def rdma_netns_mode(self, mode: str) -> None:
        """The RDMA netns mode as `common.rdma_netns` read it: shared, exclusive or unknown."""
        with self._lock:
            self._netns_exclusive = {"shared": False, "exclusive": True}.get(mode)

    def node_problem(self, reason: str) -> None:
        """Why the node serves no device (a `supervisor.node_health.REASONS` label), "" if fine."""
        with self._lock:
            self._node_problem = reason

    def set_pod_allocations(self, rows: Sequence[PodAllocation]) -> None:
        """The PodResources snapshot, already filtered to this plugin's resources (replaces all)."""
        # The kubelet lists a device once per NUMA node of its topology, in one entry per node:
        # rows that carry their IDs count each ID once; rows without IDs add their counts.
        ids: dict[tuple[str, str, str, str], set[str]] = {}
        bare: dict[tuple[str, str, str, str], int] = {}
        for row in rows:
            key = (row.namespace, row.pod, row.container, row.resource)
            if row.device_ids:
                ids.setdefault(key, set()).update(row.device_ids)
            else:
                bare[key] = bare.get(key, 0) + row.count
        pods = {k: len(ids.get(k, ())) + bare.get(k, 0) for k in ids.keys() | bare.keys()}
        with self._lock:
            self._pods = pods

    def set_retained(self, held: Mapping[str, Sequence[str]]) -> None:
        """Per resource, the IDs above rdmaHcaMax that pods hold (replaces all)."""
        with self._lock:
            self._retained = {name: len(ids) for name, ids in held.items()}

    # -- the collector -------------------------------------------------------------------------

    def _resource(self, name: str) -> _Resource:
        r = self._resources.get(name)
        if r is None:
            r = self._resources[name] = _Resource(restarts=dict.fromkeys(RESTART_REASONS, 0))
        return r

    def describe(self) -> list[Metric]:
        """Names only, so the registry knows them without calling collect()."""
        return list(build_families().values())

    def collect(self) -> list[Metric]:
        fam = build_families()

        def add(name: str, labels: Sequence[str], value: float) -> None:
            metric = fam[name]
            assert isinstance(metric, GaugeMetricFamily | CounterMetricFamily)
            metric.add_metric(list(labels), value)

        with self._lock:
            self._collect_node(add, fam)
            for name, r in sorted(self._resources.items()):
                self._collect_resource(name, r, add, fam)
        if self.pod_rdma is not None:
            collect_pod_rdma(self.pod_rdma, add)
        return list(fam.values())

    def _collect_node(self, add: _Add, fam: dict[str, Metric]) -> None:
        """The node-wide series (the caller holds the lock)."""
        add("build_info", [self._version], 1)
        add("kubelet_restarts_total", [], self._kubelet_restarts)
        for result, n in sorted(self._reloads.items()):
            add("config_reloads_total", [result], n)
        if self._last_reload_success is not None:
            add("config_last_reload_success_timestamp_seconds", [], self._last_reload_success)
        if self._last_reload_ok is not None:
            add("config_last_reload_successful", [], 1 if self._last_reload_ok else 0)
        if self._netns_exclusive is not None:
            add("rdma_netns_exclusive", [], 1 if self._netns_exclusive else 0)
        self._collect_scans(add, fam)
        for (rdma, port), up in sorted(self._ports.items()):
            add("hca_port_up", [rdma, port], 1 if up else 0)
        for key, count in sorted(self._pods.items()):
            add("pod_allocations", key, count)
        for name, n in sorted(self._retained.items()):
            add("retained_device_ids", [name], n)

    def _collect_scans(self, add: _Add, fam: dict[str, Metric]) -> None:
        for trigger, n in sorted(self._scans.items()):
            add("device_scans_total", [trigger], n)
        if self._scans:  # a verdict needs a scan
            for reason in NODE_REASONS:
                add("node_problem", [reason], 1 if reason == self._node_problem else 0)
        for reason, n in sorted(self._scan_errors.items()):
            add("device_scan_errors_total", [reason], n)
        scan = fam["device_scan_duration_seconds"]
        assert isinstance(scan, HistogramMetricFamily)
        scan.add_metric([], self._scan_duration.samples(), self._scan_duration.total)

    def _collect_resource(self, name: str, r: _Resource, add: _Add, fam: dict[str, Metric]) -> None:
        if r.inventory is not None:
            devices, healthy, hcas, usable = r.inventory
            add("resource_devices", [name], devices)
            # What the kubelet is told: nothing is healthy while the CDI spec is not on disk.
            add("resource_healthy_devices", [name], 0 if r.cdi_current is False else healthy)
            add("resource_hcas", [name], hcas)
            add("resource_usable_hcas", [name], usable)
        for row in r.hca_rows:
            add("hca_info", [name, *row], 1)
        if r.worker_up is not None:
            add("worker_up", [name], 1 if r.worker_up else 0)
        if r.rss_bytes is not None:
            add("worker_resident_memory_bytes", [name], r.rss_bytes)
        if r.cpu.sums:
            add("worker_cpu_seconds_total", [name], r.cpu.sums[0])
        for reason, n in sorted(r.restarts.items()):
            add("worker_restarts_total", [name, reason], n)
        _collect_crash_loops_and_cdi(name, r, add)
        # Zeros before the first heartbeat, so rate() and increase() work from the start.
        sums = r.counters.sums or [0.0] * (len(COUNTER_FIELDS) + len(ALLOCATE_BUCKETS))
        c = dict(zip(COUNTER_FIELDS, sums, strict=False))
        add("allocations_total", [name, SUCCESS], c["allocations_ok"])
        add("allocations_total", [name, FAILURE], c["allocations_refused"])
        add("registrations_total", [name, SUCCESS], c["registrations_ok"])
        add("registrations_total", [name, FAILURE], c["registrations_failed"])
        hist = Histogram(
            ALLOCATE_BUCKETS,
            list(sums[len(COUNTER_FIELDS) :]),
            count=c["allocate_count"],
            total=c["allocate_seconds_sum"],
        )
        allocate = fam["allocate_duration_seconds"]
        assert isinstance(allocate, HistogramMetricFamily)
        allocate.add_metric([name], hist.samples(), hist.total)


def _collect_crash_loops_and_cdi(name: str, r: _Resource, add: _Add) -> None:
    """Crash loops and CDI spec writes."""
    if r.failures is not None:
        add("worker_consecutive_failures", [name], r.failures)
    if r.cdi_current is not None:
        add("resource_cdi_spec_current", [name], 1 if r.cdi_current else 0)
    if r.cdi_current is not None or r.cdi_errors.sums:
        errors = r.cdi_errors.sums or [0.0] * len(CDI_ERROR_REASONS)
        for label, errs in zip(CDI_ERROR_REASONS, errors, strict=True):
            add("cdi_write_errors_total", [name, label], errs)
