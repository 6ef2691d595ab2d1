"""What the supervisor does when the kubelet restarts: count it, and never nudge (supervisor).

The restart is detected by `supervisor.watch.kubelet.KubeletSocketWatch` (same definition as the
workers'). Each worker notices the restart itself and registers again; the supervisor never
tells a worker to register. Such a nudge, on a loaded node whose kubelet takes seconds to dial
back during `Register`, would make the worker give up its in-flight attempt, end the freshly
opened stream and register again, leaving every resource at allocatable 0 for seconds. A worker
that really misses a restart is a worker bug, so the supervisor only reports it: a warning per
worker still unregistered `kubelet_report_after` seconds after the restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from supervisor.loop import Loop
from supervisor.timings import Timings
from supervisor.watch.kubelet import KubeletSocketWatch
from supervisor.worker_table import WorkerState, WorkerTable

LOG = logging.getLogger(__name__)


class KubeletRestarts:
    def __init__(
        self,
        watch: KubeletSocketWatch,
        table: WorkerTable,
        loop: Loop,
        timings: Timings,
        observe: Callable[..., None],
        observer: Any,
    ) -> None:
        self.watch = watch
        self.table = table
        self.loop = loop
        self.timings = timings
        self._observe = observe
        self.observer = observer
        self.restarted_at = 0.0
        self.count = 0

    def start(self) -> None:
        self.watch.open()
        self.loop.timers.every(("kubelet",), self.timings.kubelet_poll_interval, self.poll)

    def poll(self) -> None:
        if not self.watch.poll():
            return
        LOG.info("kubelet.sock was replaced: the kubelet restarted; workers register again")
        self.restarted_at = self.loop.clock()
        self.count += 1
        self._observe(self.observer.kubelet_restarted)
        self.loop.timers.call_later(
            ("kubelet_report",), self.timings.kubelet_report_after, self.report
        )

    def report(self) -> None:
        """Log the workers that have not registered since the restart (no message to them)."""
        since = self.restarted_at - self.timings.kubelet_poll_interval
        for record in self.table:
            if record.state is WorkerState.RUNNING and (
                not record.registered or record.registered_at < since
            ):
                LOG.warning(
                    "worker has not registered %.0fs after the kubelet restart resource=%s",
                    self.timings.kubelet_report_after,
                    record.full_name,
                )
