"""Keeping the CDI spec on disk in step with the current plan (worker process, main thread).

So no CDI name is handed out before its spec exists: the spec is written before a plan is
published, and while the write fails the plan is published with a refusal (Allocate says why;
every ID is advertised Unhealthy, so the scheduler stops sending pods here instead of the kubelet
failing their admission) and the write is retried with backoff.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from common.loop.backoff import Backoff
from common.loop.throttle import LogThrottle
from common.messages import WorkerSettings
from workers import cdi
from workers.plan import Plan
from workers.timings import WorkerTimings

LOG = logging.getLogger("workers.cdi")


class CdiSync:
    def __init__(
        self,
        timings: WorkerTimings,
        report: Callable[[str, str], None],
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self.report = report
        self.on_error = on_error  # counts the failure for the metrics (issue 11)
        # (dir, file name, identity) of the spec we wrote: removed at shutdown only if unchanged.
        self.file: tuple[str, str, cdi.FileIdentity | None] | None = None
        self.problem: str | None = None  # the current plan's spec is not on disk: why
        self.backoff = Backoff(timings.cdi_retry_first, timings.cdi_retry_cap)
        self._throttle = LogThrottle(timings.log_repeat)

    def sync(self, plan: Plan | None, settings: WorkerSettings | None) -> float | None:
        """Make the disk match `plan`; the delay before a retry when the write failed."""
        if plan is None or settings is None:
            return None
        target = (settings.cdi_dir, cdi.spec_file_name(plan.resource)) if settings.use_cdi else None
        if self.file is not None and (target is None or self.file[:2] != target):
            self.remove()  # CDI turned off, or the file moved: the old one goes
        if target is None:
            self.problem = None
            return None
        folder, name = target
        spec = cdi.build_spec(plan.resource, plan.usable)
        try:
            if spec is None:
                if cdi.remove_spec(folder, name):
                    LOG.info("CDI spec removed (no usable device) file=%s", name)
                self.file = None
            else:
                if cdi.write_spec(folder, name, spec):
                    LOG.info("CDI spec written file=%s devices=%d", name, len(spec["devices"]))
                self.file = (folder, name, cdi.spec_identity(folder, name))
        except OSError as exc:
            return self._failed(plan, folder, name, exc)
        if self.problem is not None:
            LOG.info("CDI spec on disk again after %d failed writes", self.backoff.failures)
        self.problem = None
        self.backoff.reset()
        self._throttle.clear("write")
        return None

    def _failed(self, plan: Plan, folder: str, name: str, exc: OSError) -> float:
        if self.on_error is not None:
            self.on_error(exc)
        first = self.backoff.failures == 0
        delay = self.backoff.next_delay()
        self.problem = (
            f"{plan.resource.full_name}: the CDI spec {os.path.join(folder, name)} cannot be "
            f"written ({exc}); nothing is allocated until it is (the worker keeps retrying)"
        )
        log = LOG.error if self._throttle.allow("write") else LOG.debug
        log(
            "cannot write CDI spec dir=%s file=%s: %s; Allocate refuses until the folder "
            "is writable (retry in %.2fs)",
            folder,
            name,
            exc,
            delay,
        )
        if first:
            self.report("cdi_write_failed", f"{folder}/{name}: {exc}")
        return delay

    def remove(self) -> None:
        """Remove the spec we wrote, unless someone has replaced it since."""
        if self.file is None:
            return
        folder, name, identity = self.file
        self.file = None
        try:
            removed = identity is not None and cdi.remove_spec(folder, name, owned=identity)
            if not removed and cdi.spec_identity(folder, name) is not None:
                LOG.warning(
                    "CDI spec %s/%s was rewritten by someone else; left in place", folder, name
                )
        except OSError as exc:
            LOG.warning("cannot remove CDI spec %s/%s: %s", folder, name, exc)
