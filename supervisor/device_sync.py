"""Device sync: uevents (debounced) and timers -> a full rescan -> devices pushed (supervisor).

The scan is the truth, a uevent only a hint: a burst of uevents (a function going away sends
dozens) arms one rescan `rescan_debounce` later. `periodicUpdateInterval` adds a periodic
rescan. After every scan each running, configured worker whose matched set or health moved gets
a `devices` message; a worker in backoff whose device *set* changed is retried early (at most
once per backoff, see `Lifecycle.retry_early`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from common.devices import Scan, ScanProblem
from common.discovery import scan as discover
from common.rdma_netns import EXCLUSIVE, EXCLUSIVE_WARNING, read_netns_mode
from supervisor.device_selections import DeviceSelections, healthy_count
from supervisor.lifecycle import Lifecycle
from supervisor.node_health import NodeProblem, node_problem
from supervisor.running_config import RunningConfig
from supervisor.worker_table import WorkerState

LOG = logging.getLogger(__name__)

Scanner = Callable[[str], Scan]


class DeviceSync:
    def __init__(
        self,
        host_root: str,
        devices: DeviceSelections,
        lifecycle: Lifecycle,
        running: RunningConfig,
        observe: Callable[..., None],
        observer: Any,
        scanner: Scanner = discover,
    ) -> None:
        self.host_root = host_root
        self.devices = devices
        self.lifecycle = lifecycle
        self.table = lifecycle.table
        self.timers = lifecycle.loop.timers
        self.timings = lifecycle.timings
        self.running = running
        self._observe = observe
        self.observer = observer
        self.scanner = scanner
        self.uevents: Any = None  # the monitor (supervisor.watch.uevents), when one is open
        self.problems: set[ScanProblem] = set()
        self.netns_mode = ""  # common.rdma_netns: read after every scan
        self.node: NodeProblem | None = None  # why the node serves no device (node_health)

    # ---- triggers ----------------------------------------------------------------------------

    def on_uevents(self) -> None:
        try:
            events = self.uevents.drain()
        except Exception as err:  # an overflowed netlink buffer lost events: rescan anyway
            LOG.warning("reading uevents failed: %s; rescanning", err)
            events = ["lost"]
        if events:
            LOG.debug("uevents: %s", "; ".join(events[:10]))
            when = self.lifecycle.clock() + self.timings.rescan_debounce
            self.timers.set_once(("rescan",), when, self._debounced)

    def _debounced(self) -> None:
        if not self.lifecycle.stopping:
            self.rescan("uevent")

    def schedule_periodic(self) -> None:
        interval = self.running.config.periodic_update_interval
        if interval > 0:
            self.timers.every(("periodic",), interval, self._periodic)
        else:
            self.timers.cancel(("periodic",))

    def _periodic(self) -> None:
        if not self.lifecycle.stopping:
            self.rescan("periodic")

    # ---- scanning ----------------------------------------------------------------------------

    def scan(self, trigger: str) -> tuple[Scan | None, float]:
        started = time.perf_counter()
        try:
            result: Scan | None = self.scanner(self.host_root)
        except Exception:  # discovery is meant never to raise; a bug must not stop the loop
            LOG.exception(
                "device scan failed trigger=%s; keeping the previous device sets", trigger
            )
            result = None
        return result, time.perf_counter() - started

    def rescan(self, trigger: str) -> None:
        result, seconds = self.scan(trigger)
        if result is not None:
            changed = self.devices.update(result, self.running.config.resources)
            self.after_scan(trigger, result, seconds, changed)

    def after_scan(self, trigger: str, result: Scan, seconds: float, changed: set[str]) -> None:
        resources = self.running.config.resources
        selections = {r.full_name: self.devices.selected(r.resource_name) for r in resources}
        self._observe(self.observer.scan_finished, trigger, result, seconds, selections)
        LOG.debug("device scan trigger=%s took %.1fms changed=%s", trigger, seconds * 1000, changed)
        self._log_problems(result)
        self._check_node(node_problem(result, selections, self.host_root))
        self._check_netns_mode()
        full_names = {r.resource_name: r.full_name for r in resources}
        for name in sorted(changed):
            selected = self.devices.selected(name)
            LOG.info(
                "devices resource=%s matched=%d healthy=%d trigger=%s",
                full_names.get(name, name),
                len(selected),
                healthy_count(selected),
                trigger,
            )
        self.push(changed)

    @property
    def node_problem(self) -> str:
        return "" if self.node is None else self.node.text

    def _check_node(self, problem: NodeProblem | None) -> None:
        if problem == self.node:
            return
        if problem is not None:
            LOG.error("node serves no RDMA device reason=%s: %s", problem.reason, problem.text)
        else:
            LOG.info("node serves RDMA devices again")
        self.node = problem
        self._observe(self.observer.node_problem_changed, problem)

    def _check_netns_mode(self) -> None:
        """Exclusive RDMA netns mode breaks sharing: warn with the fix, keep serving."""
        mode = read_netns_mode(self.host_root)
        if mode == self.netns_mode:
            return
        if mode == EXCLUSIVE:
            LOG.warning("%s", EXCLUSIVE_WARNING)
        elif self.netns_mode == EXCLUSIVE:
            LOG.info("RDMA netns mode is %s again: devices can be shared", mode)
        self.netns_mode = mode
        self._observe(self.observer.rdma_netns_mode, mode)

    def _log_problems(self, result: Scan) -> None:
        for problem in sorted(set(result.problems) - self.problems, key=lambda p: p.path):
            # Once per problem, not once per periodic scan: a broken entry stays broken.
            LOG.warning(
                "device scan skipped an entry reason=%s path=%s: %s",
                problem.reason,
                problem.path,
                problem.detail,
            )
        self.problems = set(result.problems)

    def push(self, changed: set[str]) -> None:
        for record in self.table:
            if record.state is WorkerState.RUNNING and record.configured:
                self.lifecycle.push_devices(record)
            elif (
                record.state is WorkerState.BACKOFF
                and record.name in changed
                and record.name in self.devices.moved  # its set, not only its health
                and not self.lifecycle.stopping
            ):
                self.lifecycle.retry_early(record, "devices changed")
