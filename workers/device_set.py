"""The device set a worker serves: the plan the gRPC handlers see, and the CDI spec that must
be on disk before it is published (worker process, main thread)."""

from __future__ import annotations

import logging

from common.loop.timers import Timers
from common.messages import WorkerSettings
from workers.cdi_sync import CdiSync
from workers.plan import Plan
from workers.servicer import StreamHub, publish

LOG = logging.getLogger("workers")


class DeviceSet:
    def __init__(self, hub: StreamHub, cdi: CdiSync, timers: Timers) -> None:
        self.hub = hub
        self.cdi = cdi
        self.timers = timers
        self.plan: Plan | None = None
        self.settings: WorkerSettings | None = None
        self.published: tuple[Plan, str | None] | None = None  # what the hub serves now

    def apply(self, plan: Plan, settings: WorkerSettings) -> None:
        self.plan, self.settings = plan, settings
        self._sync_cdi()
        self._publish()

    def _publish(self) -> None:
        """Hand the handlers the current plan, unless they already have exactly that."""
        plan = self.plan
        if plan is None:
            return
        key = (plan, self.cdi.problem)
        if key == self.published:
            LOG.debug("device set unchanged; nothing to publish")
            return
        self.published = key
        self.hub.publish(publish(plan, self.cdi.problem))
        LOG.info(
            "device set applied matched=%d usable=%d ids=%d health=%s numa=%s%s",
            len(plan.matched),
            len(plan.usable),
            len(plan.device_ids),
            plan.health if self.cdi.problem is None else "Unhealthy (CDI spec not written)",
            ",".join(map(str, plan.numa_nodes)) or "none",
            " cdi=pending" if self.cdi.problem is not None else "",
        )

    def _sync_cdi(self) -> None:
        retry = self.cdi.sync(self.plan, self.settings)
        if retry is None:
            self.timers.cancel("cdi")
        else:
            self.timers.call_later("cdi", retry, self._retry_cdi)

    def _retry_cdi(self) -> None:
        self._sync_cdi()
        self._publish()
