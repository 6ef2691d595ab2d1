"""The metrics hook of the supervisor loop: Observer events -> Metrics and probes (supervisor
process).

`start_metrics_observer()` checks the `--metrics-address` (one that does not parse fails before
the loop starts), tries to bind it, and returns a `MetricsObserver`; a bind that fails is retried
from `loop_turned` with backoff (`endpoint_binder`) while the workers serve. The arbiter calls
the hooks on the loop's thread. Everything here is cheap and never blocks: `Metrics` setters
take one lock, the probes store one value, and psutil reads a worker's /proc entry at most every
`SAMPLE_EVERY` seconds per worker. Pod allocations come from the supervisor's `PodResources` role
(`pods_listed`): metrics read them, they do not own them.

This module, prometheus_client and psutil are imported only when the metrics address is not
empty (`cli.commands._observer`), so a supervisor without metrics does not pay for them.
Per-resource events are counted only for resources in the running config: a worker still stopping
after its resource left the config must not bring that resource's series back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import psutil

from common.config import Config
from common.defaults import VERSION
from common.devices import Candidate, Scan
from common.loop.backoff import Backoff
from common.messages import WorkerCounters, WorkerStatus
from common.rdma_netns import EXCLUSIVE, EXCLUSIVE_WARNING
from supervisor.held_ids import retained
from supervisor.metrics.dra import DraTotals
from supervisor.metrics.dra import not_ready as dra_not_ready
from supervisor.metrics.endpoint_binder import EndpointBinder
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.http_server import MetricsServer, Probes
from supervisor.metrics.rdma_usage import RdmaUsageSource
from supervisor.metrics.tls import TlsContext
from supervisor.node_health import NodeProblem
from supervisor.observer import Observer, StatusSource
from supervisor.pod_resources import PodAllocation
from supervisor.restart_policy import RestartPolicy

LOG = logging.getLogger(__name__)

#: psutil looks at a worker at most this often (heartbeats come every second); a new process of
#: the resource is looked at on its first heartbeat.
SAMPLE_EVERY = 5.0
#: A worker whose process has been heard from this long has had a stable run (as the restart
#: policy counts it): its quick exits in a row are over.
STABLE_AFTER = RestartPolicy().stable_after
#: /healthz fails when the loop has not turned for this long (it turns at least every second).
STALL_AFTER = 10.0


class MetricsObserver(Observer):
    def __init__(
        self,
        metrics: Metrics,
        probes: Probes,
        binder: EndpointBinder | None = None,
        pod_series: bool = True,
    ) -> None:
        self.metrics = metrics
        self.probes = probes
        self.binder = binder
        self._dra_totals: DraTotals | None = None  # with `run --dra` only
        self.pod_series = pod_series  # off: pods still protect their held IDs, no pod series
        #: Per-pod RDMA usage from the rdma cgroups; set by start_metrics_observer.
        self.rdma_usage: RdmaUsageSource | None = None
        self._source: StatusSource | None = None
        #: The running config's resources (full name -> rdmaHcaMax), in config order.
        self._hca_max: dict[str, int] = {}
        self._selections: dict[str, tuple[Candidate, ...]] = {}
        #: resource -> (process, when it was last sampled).
        self._processes: dict[str, tuple[psutil.Process, float]] = {}
        self._pod_rows: list[PodAllocation] = []
        self._pods_available = False
        self._cdi: dict[str, tuple[bool | None, str]] = {}  # from the last heartbeat
        self._runs: dict[str, tuple[int, float]] = {}  # resource -> (pid, first heartbeat)

    # ---- config and devices ------------------------------------------------------------------

    def started(self, source: StatusSource) -> None:
        self._source = source
        self._publish_readiness()

    def config_applied(self, config: Config) -> None:
        now = time.time()
        hca_max = {r.full_name: r.rdma_hca_max for r in config.resources}
        for gone in self._hca_max.keys() - hca_max.keys():  # removed or renamed
            self._forget(gone)
        self._hca_max = hca_max
        self.metrics.config_loaded(now)
        # rdmaHcaMax may have changed without any device moving: publish again now.
        self._publish_resources()
        self._publish_pods()
        self._publish_readiness()

    def config_reloaded(self, ok: bool, problems: Sequence[str]) -> None:
        now = time.time()
        self.metrics.config_reload(ok, now)
        note = None
        if not ok:
            first = problems[0] if problems else "invalid config"
            note = (
                f"config reload refused at {_utc(now)} ({len(problems)} problem(s), first: "
                f"{first}); the running config keeps serving"
            )
        self.probes.set_note("reload", note)

    def rdma_netns_mode(self, mode: str) -> None:
        self.metrics.rdma_netns_mode(mode)
        self.probes.set_note("netns", EXCLUSIVE_WARNING if mode == EXCLUSIVE else None)

    def scan_finished(
        self,
        trigger: str,
        scan: Scan,
        seconds: float,
        selections: Mapping[str, tuple[Candidate, ...]],
    ) -> None:
        self.metrics.device_scan(trigger, seconds, scan.problems)
        self.metrics.set_ports(scan.candidates)
        self._selections = dict(selections)
        self._publish_resources()

    def resource_removed(self, resource: str) -> None:
        self._forget(resource)
        self._publish_readiness()

    # ---- workers -----------------------------------------------------------------------------

    def worker_state_changed(self, resource: str, state: str, previous: str, reason: str) -> None:
        if resource in self._hca_max:
            self.metrics.worker_up(resource, state == "running")
            self._publish_failures(resource)
            if state != "running":
                self._processes.pop(resource, None)
        self._publish_readiness()

    def worker_restarted(self, resource: str, reason: str) -> None:
        if resource in self._hca_max:
            self.metrics.worker_restarted(resource, reason)

    def worker_ready(self, resource: str, registered: bool, mode: str) -> None:
        self._publish_readiness()

    def heartbeat(self, resource: str, pid: int, counters: WorkerCounters) -> None:
        if resource not in self._hca_max:
            return
        self.metrics.worker_counters(resource, pid, counters)
        self._sample_process(resource, pid)
        # A run that lasted the restart policy's stable time ends the run of quick exits.
        now = time.monotonic()
        run = self._runs.get(resource)
        if run is None or run[0] != pid:
            self._runs[resource] = (pid, now)
        elif now - run[1] >= STABLE_AFTER:
            self.metrics.worker_failures(resource, 0)
        cdi = (counters.cdi_spec_current, counters.cdi_error)
        if self._cdi.get(resource) != cdi:  # the CDI spec came or went: /readyz says so
            self._cdi[resource] = cdi
            self._publish_readiness()

    def kubelet_restarted(self) -> None:
        self.metrics.kubelet_restart()

    # ---- the loop ----------------------------------------------------------------------------

    def node_problem_changed(self, problem: NodeProblem | None) -> None:
        self.metrics.node_problem("" if problem is None else problem.reason)
        self.probes.set_node_problem("" if problem is None else problem.text)

    def poll_timeout(self) -> float | None:
        return None if self.binder is None else self.binder.timeout()

    def endpoint_status(self) -> str:
        return "" if self.binder is None else self.binder.describe()

    def loop_turned(self, readable: Collection[int]) -> None:
        self.probes.loop_turned()
        if self.binder is not None:
            self.binder.due()

    def dra_reported(self, status: Mapping[str, Any]) -> None:
        if self._dra_totals is None:
            self._dra_totals = DraTotals()
            self.metrics.registry.register(self._dra_totals)
        if status:
            self._dra_totals.update(status)
        self.probes.set_part("dra", dra_not_ready(status))

    def pods_listed(self, rows: Sequence[PodAllocation], available: bool) -> None:
        self._pod_rows = list(rows)
        self._pods_available = available
        self._publish_pods()

    def stopped(self) -> None:
        """Idempotent: `run` calls it again in case the loop never started."""
        if self.binder is not None:
            self.binder.server.stop()

    # ---- publishing --------------------------------------------------------------------------

    def _forget(self, resource: str) -> None:
        self.metrics.remove_resource(resource)
        self._selections.pop(resource, None)
        self._processes.pop(resource, None)
        self._runs.pop(resource, None)

    def _publish_resources(self) -> None:
        # Only resources a scan has matched: before the first scan, no series beats a false 0.
        for name, hca_max in self._hca_max.items():
            if name in self._selections:
                self.metrics.set_resource(name, hca_max, self._selections[name])
        if self.rdma_usage is not None:
            self.rdma_usage.set_served(
                {
                    name: {r.name for c in self._selections[name] for r in c.rdma_devices}
                    for name in self._hca_max
                    if name in self._selections
                }
            )

    def _publish_pods(self) -> None:
        mine = self._hca_max.keys()
        if self.pod_series:
            self.metrics.set_pod_allocations([r for r in self._pod_rows if r.resource in mine])
        if self._pods_available:
            self.metrics.set_retained(
                {n: retained(n, m, self._pod_rows).ids for n, m in self._hca_max.items()}
            )

    def _publish_readiness(self) -> None:
        if self._source is None:
            return  # before `started`: /readyz says "starting"
        statuses = {s.resource: s for s in self._source.worker_statuses()}
        self.probes.set_resources({name: _not_ready(statuses.get(name)) for name in self._hca_max})

    def _publish_failures(self, resource: str) -> None:
        """The worker's quick exits in a row (the worker table counts them at each exit)."""
        if self._source is None:
            return
        for status in self._source.worker_statuses():
            if status.resource == resource:
                self.metrics.worker_failures(resource, status.failures)

    def _sample_process(self, resource: str, pid: int) -> None:
        now = time.monotonic()
        known = self._processes.get(resource)
        if known is not None and known[0].pid == pid and now - known[1] < SAMPLE_EVERY:
            return
        try:
            proc = known[0] if known is not None and known[0].pid == pid else psutil.Process(pid)
            with proc.oneshot():
                rss = proc.memory_info().rss
                cpu = proc.cpu_times()
        except psutil.Error:
            self._processes.pop(resource, None)
            return  # it just exited: the state machine reports that
        self._processes[resource] = (proc, now)
        self.metrics.worker_process(resource, rss, cpu.user + cpu.system, pid)


def _utc(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _not_ready(status: WorkerStatus | None) -> str | None:
    """None when registered with the kubelet, else one short line saying why not."""
    if status is None:
        return "no worker yet"
    if status.registered and status.cdi.startswith("not written"):
        # Registered, but Allocate is refused and every device advertised Unhealthy.
        return f"CDI spec {status.cdi}: Allocate is refused until it is written"
    if status.registered:
        return None
    if status.state == "running":  # its state reason ("configured") would say nothing here
        return "not registered with the kubelet yet (worker running)"
    why = f": {status.reason}" if status.reason else ""
    return f"not registered (worker {status.state}{why})"


def start_metrics_observer(
    address: str,
    bind_retry: Backoff | None = None,
    tls: TlsContext | None = None,
    pod_series: bool = True,
    *,
    host_root: str = "/",
    device_plugin_dir: str = "",
) -> MetricsObserver:
    """Serve /metrics, /healthz and /readyz on `address`.

    Raises `AddressError` (a ValueError) for an address that does not parse or whose host does
    not resolve; a bind that fails is retried with `bind_retry` while the plugin runs. `tls`
    serves HTTPS. `pod_series=False` turns the per-pod series off (the PodResources role still
    protects the IDs pods hold).
    An empty `device_plugin_dir` (or `pod_series=False`) turns the per-pod RDMA usage off (read
    from the rdma cgroups under `host_root`).
    """
    metrics = Metrics(VERSION)
    usage = (
        RdmaUsageSource(host_root, device_plugin_dir) if device_plugin_dir and pod_series else None
    )
    metrics.pod_rdma = usage
    probes = Probes(stall_after=STALL_AFTER)
    server = MetricsServer(address, metrics, probes.health, probes.ready, tls)
    server.resolve()
    binder = EndpointBinder(server, bind_retry or Backoff(initial=1.0, cap=30.0, jitter=0.2))
    binder.attempt()
    observer = MetricsObserver(metrics, probes, binder, pod_series)
    observer.rdma_usage = usage
    return observer
