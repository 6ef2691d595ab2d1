"""Keeps the runtime folder and the control socket in place while the supervisor runs.

Someone may remove the folder or `control.sock` under a running supervisor (a tmpfs cleaner, an
operator's `rm -rf`). The ROUTER keeps its connected peers, but no new worker could connect, so
crash recovery would be gone for good. Two signals, one check: inotify on the folder (the fast
one) and a periodic look every `runtime_check_interval` (covers a folder re-created between two
events, or no inotify at all). The check re-creates the folder (0700) and its lock and binds the
control socket again; workers reconnect by themselves (ZeroMQ re-dials the same ipc:// path)
under their own routing id, and a worker started later finds the socket as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from common.loop.inotify import DirWatch
from supervisor.loop import Loop
from supervisor.runtime_dir import RuntimeDir, RuntimeDirError
from supervisor.timings import Timings

LOG = logging.getLogger(__name__)


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
        if not folder_ok:
            LOG.warning("runtime folder %s was removed: making it again", self.runtime.path)
            try:
                self.runtime.restore()
            except RuntimeDirError as err:
                LOG.error("%s; trying again", err)
                return
        else:
            LOG.warning("control socket in %s was removed: binding it again", self.runtime.path)
        self._rebind()
        self._watch_folder()
        self.restored += 1
        LOG.info("control socket bound again in %s", self.runtime.path)

    def close(self) -> None:
        self._unwatch()
