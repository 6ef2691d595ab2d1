"""Config reload: a pure plan from the config diff to actions, then their execution (supervisor).

`plan(diff, records)` looks only at the diff and a view of each record (state, whether it has a
process, whether it was configured, what it serves) and returns the actions, in order; it is
tested without processes. `Reloader.apply` runs a plan through the lifecycle. The diff is keyed
by full name (`<prefix>/<name>`): a changed prefix or name is a removal plus an addition under
the same socket name (resource name), which the same record serves, so the plan turns that pair
into one `Replace` of the record instead of a stop plus a clashing start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from common.config import Config, ConfigError, ResourceConfig, load_config_bytes
from common.dra_modes import ModeError
from common.messages import ReloadStatus
from supervisor.config_diff import ConfigDiff, diff_configs
from supervisor.device_sync import DeviceSync
from supervisor.lifecycle import Lifecycle
from supervisor.pod_resources import PodAllocation
from supervisor.running_config import RunningConfig
from supervisor.watch.config import ConfigWatch
from supervisor.worker_table import WorkerRecord, WorkerState

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordView:
    """What the plan needs to know of a worker record."""

    state: WorkerState
    has_process: bool
    configured: bool
    served: ResourceConfig | None

    @classmethod
    def of(cls, record: WorkerRecord) -> RecordView:
        return cls(record.state, record.proc is not None, record.configured, record.served)


class Then(Enum):
    """What an updated (same name, new settings) worker does with its new config."""

    CONFIGURE = "configure"  # running and configured: a new configure message
    RETRY = "retry"  # in backoff: an early retry
    SPAWN = "spawn"  # fatal: start again (the config may be fixed now)
    KEEP = "keep"  # starting (its hello gets it) or stopping (restarts with it if wanted)


@dataclass(frozen=True)
class Remove:
    name: str  # resource (socket) name
    reason: str = "resource removed from the config"


@dataclass(frozen=True)
class Add:
    resource: ResourceConfig


@dataclass(frozen=True)
class Replace:
    """The record serves a new full name (renamed prefix or name, or re-added while stopping)."""

    resource: ResourceConfig
    restart: bool  # its process still runs: stop it, start again when it has gone
    leftovers: ResourceConfig | None  # what the earlier process served, to clean up now


@dataclass(frozen=True)
class Update:
    resource: ResourceConfig
    then: Then


Action = Remove | Add | Replace | Update


def plan(diff: ConfigDiff, records: Mapping[str, RecordView]) -> list[Action]:
    renamed = {r.resource_name for r in diff.added}
    actions: list[Action] = [
        Remove(old.resource_name)
        for old in diff.removed
        if old.resource_name in records and old.resource_name not in renamed
    ]
    for resource in diff.added:
        view = records.get(resource.resource_name)
        if view is None:
            actions.append(Add(resource))
            continue
        previous = view.served
        stale = previous if previous and previous.full_name != resource.full_name else None
        actions.append(Replace(resource, view.has_process, None if view.has_process else stale))
    for _, resource in diff.changed:
        view = records.get(resource.resource_name)
        if view is not None:
            actions.append(Update(resource, _then(view)))
    return actions


def _then(view: RecordView) -> Then:
    if view.state is WorkerState.RUNNING and view.configured:
        return Then.CONFIGURE
    if view.state is WorkerState.BACKOFF:
        return Then.RETRY
    if view.state is WorkerState.FATAL:
        return Then.SPAWN
    return Then.KEEP


class Reloader:
    def __init__(
        self,
        lifecycle: Lifecycle,
        sync: DeviceSync,
        running: RunningConfig,
        observe: Callable[..., None],
        observer: Any,
    ) -> None:
        self.lifecycle = lifecycle
        self.table = lifecycle.table
        self.sync = sync
        self.running = running
        self._observe = observe
        self.observer = observer
        self.last_reload: ReloadStatus | None = None  # shown by `status`
        #: The part of a loaded config the workers serve (all of it unless --dra takes some).
        self.served: Callable[[Config], Config] = lambda config: config

    def poll(self, watch: ConfigWatch, source: str, forced: bool) -> None:
        """Read the config file (timer or SIGHUP); a changed, valid config is applied."""
        if self.lifecycle.stopping:  # a reload now could start workers nothing would ever stop
            return
        data = watch.poll()
        if data is None:
            if forced:
                _, why = watch.read()
                LOG.info("config unchanged%s", f" ({why})" if why else "")
            return
        try:
            config = self.served(load_config_bytes(data, source))
        except (ConfigError, ModeError) as err:
            problems = [str(p) for p in getattr(err, "problems", [err])]
            LOG.error(
                "config %s refused (%d problem(s)); the running config stays: %s",
                source,
                len(problems),
                "; ".join(problems),
            )
            for problem in problems:
                LOG.error("config problem: %s", problem)
            self.last_reload = ReloadStatus(time.time(), False, len(problems), problems[0])
            self._observe(self.observer.config_reloaded, False, problems)
            return
        for warning in config.warnings:
            LOG.warning("config %s: %s", source, warning)
        self.apply_config(config)
        self.last_reload = ReloadStatus(time.time(), True)
        self._observe(self.observer.config_applied, config)
        self._observe(self.observer.config_reloaded, True, [])

    def keep_held_ids(self, rows: Sequence[PodAllocation] | None) -> None:
        """Reconfigure workers whose pods hold IDs above rdmaHcaMax (or released them); `rows`
        None: PodResources unknown, nothing changes."""
        for resource in self.lifecycle.held_ids.update(self.running.config.resources, rows):
            record = self.table.get(resource.resource_name)
            if record is not None and record.state is WorkerState.RUNNING and record.configured:
                self.lifecycle.configure(record)

    def apply_config(self, new: Config) -> None:
        """Reload = diff -> plan -> apply, touching only what changed."""
        diff = diff_configs(self.running.replace(new), new)
        LOG.info(
            "config reloaded added=%s removed=%s changed=%s unchanged=%d%s",
            ",".join(r.full_name for r in diff.added) or "-",
            ",".join(r.full_name for r in diff.removed) or "-",
            ",".join(n.full_name for _, n in diff.changed) or "-",
            len(diff.unchanged),
            f" periodicUpdateInterval={new.periodic_update_interval}s"
            if diff.interval_changed
            else "",
        )
        if diff.interval_changed:
            self.sync.schedule_periodic()
        # A fresh scan, so new or changed resources start from the truth.
        result, seconds = self.sync.scan("config")
        devices = self.sync.devices
        if result is not None:
            changed_devices = devices.update(result, new.resources)
        else:
            changed_devices = devices.reselect(new.resources)
        views = {r.name: RecordView.of(r) for r in self.table}
        for action in plan(diff, views):
            self._run(action)
        if result is not None:
            self.sync.after_scan("config", result, seconds, changed_devices)  # pushes too
        else:
            self.sync.push(changed_devices)

    def _run(self, action: Action) -> None:
        life = self.lifecycle
        match action:
            case Remove(name=name, reason=reason):
                life.unwant(self._record(name), reason)
            case Add(resource=resource):
                life.spawn(self.table.add(resource), "added to the config")
            case Replace(resource=resource, restart=restart, leftovers=leftovers):
                life.rename(self._record(resource.resource_name), resource, restart, leftovers)
            case Update(resource=resource, then=then):
                record = self._record(resource.resource_name)
                life.new_config(record, resource)
                self._update(record, then)

    def _update(self, record: WorkerRecord, then: Then) -> None:
        if then is Then.CONFIGURE:
            self.lifecycle.configure(record)
        elif then is Then.RETRY:
            self.lifecycle.retry_early(record, "config changed")
        elif then is Then.SPAWN:
            self.lifecycle.spawn(record, "config changed")

    def _record(self, name: str) -> WorkerRecord:
        record = self.table.get(name)
        if record is None:
            raise KeyError(f"{name}: planned for but not in the table")
        return record
