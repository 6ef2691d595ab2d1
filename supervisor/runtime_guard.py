"""Keeps the runtime folder and the control socket in place while the supervisor runs.

Someone may remove the folder or `control.sock` under a running supervisor (a tmpfs cleaner, an
operator's `rm -rf`). The ROUTER keeps its connected peers, but no new worker could connect, so
crash recovery would be gone for good. Two triggers, one check: inotify on the folder (the fast
one) and a periodic look every `runtime_check_interval` (covers a folder re-created between two
events, or no inotify at all). The check re-creates the folder (0700) and its lock and binds the
control socket again; workers reconnect by themselves (ZeroMQ re-dials the same ipc:// path)
under their own routing id, and a worker started later finds the socket as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from common.loop.inotify import DirWatch
from common.loop.throttle import LogThrottle
from supervisor.loop import Loop
from supervisor.runtime_dir import RuntimeDir, RuntimeDirError
from supervisor.timings import Timings

LOG = logging.getLogger(__name__)

#: A folder that cannot be made again is retried at every check, logged at most this often.
FAILURE_LOG_INTERVAL = 60.0


class RuntimeGuard:
    def __init__(
        self,
        runtime: RuntimeDir,
        loop: Loop,
        timings: Timings,
        intact: Callable[[], bool],
        rebind: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.timings = timings
        self._control_intact = intact
        self._rebind = rebind
        self._watch: DirWatch | None = None
        self.restored = 0
        self._throttle = LogThrottle(FAILURE_LOG_INTERVAL, loop.clock)

    def start(self) -> None:
        self._watch_folder()
        self.loop.timers.every(("runtime",), self.timings.runtime_check_interval, self.check)

    def _watch_folder(self) -> None:
        self._unwatch()
        try:
            self._watch = DirWatch(self.runtime.path)
        except OSError as err:
            LOG.debug("cannot watch the runtime folder %s: %s", self.runtime.path, err)
            return
        self.loop.add_reader(self._watch.fileno(), "runtime", self._on_events)

    def _unwatch(self) -> None:
        if self._watch is not None:
            self.loop.remove_reader(self._watch.fileno())
            self._watch.close()
            self._watch = None

    def _on_events(self) -> None:
        if self._watch is not None and self._watch.read():
            self.check()

    def check(self) -> None:
        folder_ok = self.runtime.intact()
        if folder_ok and self._control_intact():
            return
        quiet = self._throttle.active("restore")
        if not folder_ok:
            if not quiet:
                LOG.warning("runtime folder %s was removed: making it again", self.runtime.path)
            try:
                self.runtime.restore()
            except RuntimeDirError as err:
                self._failed(str(err))
                return
        elif not quiet:
            LOG.warning("control socket in %s was removed: binding it again", self.runtime.path)
        try:
            self._rebind()
        except zmq.ZMQError as err:
            self._failed(f"cannot bind the control socket in {self.runtime.path}: {err}")
            return
        self._watch_folder()
        self.restored += 1
        self._throttle.clear("restore")
        LOG.info("control socket bound again in %s", self.runtime.path)

    def _failed(self, why: str) -> None:
        if log := self._throttle.allow("restore"):
            again = f" (failed {log.swallowed} more times)" if log.swallowed else ""
            LOG.error(
                "%s; trying again every %.0fs%s", why, self.timings.runtime_check_interval, again
            )

    def close(self) -> None:
        self._unwatch()
