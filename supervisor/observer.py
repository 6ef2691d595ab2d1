"""Hook points of the supervisor loop, for metrics and health endpoints (supervisor process).

The loop calls one method per event on an `Observer`; the base class does nothing, so metrics
subclass it and override what they count. Every call happens on the loop's thread, must
not block, and may not raise into the loop: the arbiter logs and swallows an observer's error.
Resources are named by their full name `<prefix>/<name>`, as the kubelet knows them.

Wiring: `cli.commands._observer(args)` returns the observer: `MetricsObserver`
(supervisor/metrics/observer.py) when `--metrics-address` is set, else None. Observers only
watch: no fact the supervisor acts on lives in one (pod allocations live in `supervisor.pods`).
`started` hands over the worker table for /readyz; `stopped` releases what the observer took.
`loop_turned` runs at least once a second: the /healthz heartbeat. A reader that needs the loop
to wait on its pipe returns it from `poll_fds` and gets `loop_turned(readable)` calls.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from common.config import Config
from common.devices import Candidate, Scan
from common.messages import WorkerCounters, WorkerStatus
from supervisor.children import ChildSpec
from supervisor.node_health import NodeProblem
from supervisor.pod_resources import PodAllocation


class StatusSource(Protocol):
    """What the observer may ask the loop at any time (on the loop's thread)."""

    def worker_statuses(self) -> tuple[WorkerStatus, ...]: ...


class Observer:
    def started(self, source: StatusSource) -> None:
        """The supervisor is up: control socket bound, first scan done, workers spawning."""

    def scan_finished(
        self,
        trigger: str,
        scan: Scan,
        seconds: float,
        selections: Mapping[str, tuple[Candidate, ...]],
    ) -> None:
        """A sysfs scan ran. `trigger`: start, uevent, periodic, config. `selections` maps each
        configured resource's full name to its matched devices."""

    def node_problem_changed(self, problem: NodeProblem | None) -> None:
        """After a scan: the whole node serves no device and why (None: it serves some again)."""

    def worker_state_changed(self, resource: str, state: str, previous: str, reason: str) -> None:
        """A worker moved in the state machine (starting, running, backoff, stopping, exited,
        fatal)."""

    def worker_restarted(self, resource: str, reason: str) -> None:
        """A worker exited without being asked to; `reason`: crashed, killed, hung, start_timeout,
        config_invalid, exited. It will be started again (or waits in fatal)."""

    def worker_ready(self, resource: str, registered: bool, mode: str) -> None:
        """A worker's registration with the kubelet changed."""

    def heartbeat(self, resource: str, pid: int, counters: WorkerCounters) -> None:
        """A worker's counters (totals since process `pid` started)."""

    def config_reloaded(self, ok: bool, problems: Sequence[str]) -> None:
        """A changed config file was applied (ok) or refused (every problem listed)."""

    def rdma_netns_mode(self, mode: str) -> None:
        """The RDMA netns mode (shared, exclusive, unknown) was read and differs from before."""

    def kubelet_restarted(self) -> None:
        """`kubelet.sock` was replaced."""

    def resource_removed(self, resource: str) -> None:
        """A resource left the config and its worker is gone: drop its series."""

    def pods_listed(self, rows: Sequence[PodAllocation], available: bool) -> None:
        """A new PodResources snapshot (`supervisor.pods`): every resource the kubelet lists;
        `available` False (and no rows) when the API did not answer."""

    def dra_reported(self, status: Mapping[str, Any]) -> None:
        """The DRA driver child's latest status line (`supervisor.dra_child`; {} before its
        first): its counters and readiness."""

    def config_applied(self, config: Config) -> None:
        """The running config: at start (before the first scan) and after each good reload."""

    def loop_error(self, event: str) -> None:
        """Handling `event` ("timer:heartbeat", "message:ready", "reap", ...) raised: a bug,
        logged with its traceback; the loop carried on."""

    def stopped(self) -> None:
        """The supervisor is stopping; release anything `started` took."""

    # ---- joining the loop's poller (e.g. the PodResources reader's pipe) -----------------

    def children(self) -> Sequence[ChildSpec]:
        """Helper processes the supervisor should run for this observer (asked once, at
        start): started, restarted and stopped like the workers (`supervisor.children`)."""
        return ()

    def poll_fds(self) -> Sequence[int]:
        """File descriptors the loop should also wait on; asked once, after `started`."""
        return ()

    def poll_timeout(self) -> float | None:
        """Seconds until `loop_turned` must run again at the latest (None: no wish)."""
        return None

    def endpoint_status(self) -> str:
        """One line for `status` about the metrics endpoint ("" when there is none)."""
        return ""

    def loop_turned(self, readable: Collection[int]) -> None:
        """Once per pass of the loop (at least every second), with which of `poll_fds` are
        readable. Also how /healthz knows the loop is alive."""
