"""The life of every worker process: spawn, reap, restart policy, stop ladder (supervisor).

The table (`worker_table`) holds the states and decides; this module acts: it starts processes,
reaps them on every loop pass, schedules restarts by the restart policy, and stops workers by
the ladder (stop message, then SIGTERM after `stop_term_after`, SIGKILL after `stop_kill_after`),
the whole supervisor stop within `shutdown_budget`. Liveness is here too: a running worker that
is silent for `hung_after_beats` heartbeats, or a starting one without hello after
`start_timeout`, is killed and restarted. Timers are callbacks keyed per worker and pid, so a
stale timer of an earlier process never touches a newer one.

A `WorkerRecord` is changed here only (and by the table's own moves): what a worker said
(`hello`, `heard`, `ready`, ...), what it was told (`configure`, `push_devices`: the one place
a `Configure` is built and `sent_devices` kept), and what the config wants of it (`unwant`,
`rename`, `new_config`). A test in tests/static/test_layout.py keeps other modules from writing
to a record.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from common import exitcodes
from common.config import ResourceConfig
from common.messages import (
    Configure,
    Devices,
    Heartbeat,
    Message,
    Ready,
    Stop,
    WorkerCounters,
    WorkerSettings,
)
from supervisor.children import ChildSpec, HelperChild
from supervisor.device_selections import DeviceSelections
from supervisor.held_ids import HeldIds
from supervisor.leftovers import remove_leftovers
from supervisor.loop import Loop
from supervisor.timings import Timings
from supervisor.worker_process import Spawner
from supervisor.worker_table import WorkerRecord, WorkerState, WorkerTable

LOG = logging.getLogger(__name__)

#: Routing ids of workers that exited, remembered to drop their last messages quietly.
DEPARTED_PEERS = 64

#: Calls one observer hook, guarded (the arbiter's `observe`).
Observe = Callable[..., None]


class Lifecycle:
    def __init__(
        self,
        table: WorkerTable,
        loop: Loop,
        timings: Timings,
        settings: WorkerSettings,
        endpoint: str,
        log: tuple[str, str],
        send: Callable[[bytes, Message], bool],
        observe: Observe,
        observer: Any,
        spawner: Spawner,
        devices: DeviceSelections,
        held_ids: HeldIds,
    ) -> None:
        self.table = table
        self.loop = loop
        self.timings = timings
        self.settings = settings
        #: The one way workers are started (the zygote's forks or fresh interpreters; tests
        #: inject stand-ins here).
        self.spawner = spawner
        #: Each resource's matched devices, as the last scan selected them.
        self.devices = devices
        #: IDs above rdmaHcaMax that running pods hold (`supervisor.pods`): each `Configure`
        #: carries `held_ids.serving(record.config)`.
        self.held_ids = held_ids
        self.endpoint = endpoint
        self.log_level, self.log_format = log
        self._send_peer = send
        self._observe = observe
        self.observer = observer
        self.stopping = False
        self.stop_started = 0.0
        #: peer -> full name of workers that exited: their last messages are not strangers'.
        self.departed: OrderedDict[bytes, str] = OrderedDict()
        #: Child processes that are not workers (the PodResources poller).
        self.helpers: list[HelperChild] = []

    @property
    def clock(self) -> Callable[[], float]:
        return self.loop.clock

    def send(self, record: WorkerRecord, msg: Message) -> None:
        if record.peer is not None:
            self._send_peer(record.peer, msg)

    # ---- what a worker is told ------------------------------------------------------------

    def configure(self, record: WorkerRecord, parent: str = "") -> None:
        """Send the worker its whole config: resource (with held IDs), settings and devices."""
        config = self.held_ids.serving(record.config)
        self._tell(
            record,
            Configure(config, self.settings, self.devices.selected(record.name), parent=parent),
        )

    def push_devices(self, record: WorkerRecord) -> None:
        """Send a configured worker its matched devices, when they differ from what it has."""
        selected = self.devices.selected(record.name)
        if record.sent_devices != selected:
            self._tell(record, Devices(selected))

    def _tell(self, record: WorkerRecord, msg: Configure | Devices) -> None:
        self.send(record, msg)
        record.sent_devices = msg.devices

    # ---- what a worker says -----------------------------------------------------------------

    def hello(self, record: WorkerRecord, peer: bytes, parent: str) -> None:
        """The worker this record started said hello: stop it if it is stopping, else configure."""
        record.peer = peer
        record.last_heard = self.clock()
        if record.state is WorkerState.STOPPING:
            self._send_peer(peer, Stop(record.reason, parent=parent))
            return
        self.configure(record, parent)
        record.configured = True
        if record.state is WorkerState.STARTING:
            self.table.move(record, WorkerState.RUNNING, "configured")

    def heard(self, record: WorkerRecord) -> None:
        record.last_heard = self.clock()

    def counted(self, record: WorkerRecord, counters: WorkerCounters) -> None:
        record.counters = counters

    def reported(self, record: WorkerRecord, code: str, message: str) -> None:
        record.error = f"{code}: {message}"[:300]

    def ready(self, record: WorkerRecord, msg: Ready) -> bool:
        """The worker's registration with the kubelet; True when `registered` changed."""
        changed = msg.registered != record.registered
        record.registered = msg.registered
        record.registered_since = msg.since
        record.mode = msg.mode or record.mode
        if msg.registered:
            record.registered_at = self.clock()
        return changed

    # ---- what the config wants --------------------------------------------------------------

    def new_config(self, record: WorkerRecord, resource: ResourceConfig) -> None:
        """Same resource, new settings: used at its next configure or start."""
        record.config = resource

    def unwant(self, record: WorkerRecord, reason: str) -> None:
        """Its resource left the config: stop it and drop the record once it has gone."""
        record.wanted = False
        record.respawn_after_stop = False
        self.stop(record, reason)

    def rename(
        self,
        record: WorkerRecord,
        resource: ResourceConfig,
        restart: bool,
        leftovers: ResourceConfig | None,
    ) -> None:
        """The record serves `resource` now (a new full name): its running process is stopped
        and started again once gone (`restart`), else it starts now, after the `leftovers` of
        what an earlier process served are removed."""
        record.config, record.wanted = resource, True
        if restart:
            record.respawn_after_stop = True
            self.stop(record, "resource renamed")
            return
        if leftovers is not None:
            remove_leftovers(leftovers, self.settings, "a renamed resource left")
        self.spawn(record, "config changed")

    # ---- children ---------------------------------------------------------------------------

    def running(self) -> bool:
        return any(r.proc for r in self.table) or any(h.running for h in self.helpers)

    def adopt(self, spec: ChildSpec) -> None:
        """Start a helper child and keep it running until the supervisor stops."""
        helper = HelperChild(spec, self.loop, self.timings)
        self.helpers.append(helper)
        helper.start()

    # ---- start -------------------------------------------------------------------------------

    def spawn(self, record: WorkerRecord, reason: str) -> None:
        now = self.clock()
        self.loop.timers.cancel(("start", record.name))
        self.table.move(record, WorkerState.STARTING, reason)
        try:
            proc = self.spawner(record.name, self.endpoint, self.log_level, self.log_format)
        except OSError as err:
            LOG.error("cannot start a worker resource=%s: %s", record.full_name, err)
            record.failures += 1
            delay = self.table.policy.delay(record.failures, self.table.rng.random())
            record.backoff_delay = delay
            self.table.move(record, WorkerState.BACKOFF, f"cannot start: {err}")
            self._restart_later(record, delay)
            return
        record.proc, record.pid, record.served = proc, proc.pid, record.config
        record.started_at = record.last_heard = now
        record.error = ""
        LOG.info("worker started resource=%s pid=%d (%s)", record.full_name, proc.pid, reason)

    def _restart_later(self, record: WorkerRecord, delay: float) -> None:
        name = record.name

        def restart() -> None:
            found = self.table.get(name)
            if found is not None and found.state is WorkerState.BACKOFF and not self.stopping:
                self.spawn(found, f"restart {found.restarts}")

        self.loop.timers.call_later(("start", name), delay, restart)

    def retry_early(self, record: WorkerRecord, why: str) -> None:
        """Start a worker in backoff now, because its config or device set changed.

        At most once per backoff period: a device that keeps coming and going must not restart
        a crash-looping worker on every rescan. Otherwise it starts when its backoff ends (with
        the newest config and devices: both are read at start).
        """
        now = self.clock()
        if now - record.early_retry_at < record.backoff_delay:
            LOG.info(
                "worker in backoff resource=%s: %s; already retried early in this backoff, "
                "next start as scheduled",
                record.full_name,
                why,
            )
            return
        record.early_retry_at = now
        self.spawn(record, f"{why}: an early retry")

    # ---- exit --------------------------------------------------------------------------------

    def reap(self) -> None:
        for helper in self.helpers:
            helper.reap()
        for record in self.table:
            if record.proc is None:
                continue
            code = record.proc.poll()
            if code is not None:
                self._on_exit(record, code)

    def _on_exit(self, record: WorkerRecord, code: int) -> None:
        pid, run_seconds = record.pid, self.clock() - record.started_at
        self.loop.timers.cancel(("term", record.name, pid))
        self.loop.timers.cancel(("kill", record.name, pid))
        if code < 0:  # killed (by us, the OOM killer, a crash): it left its socket and CDI spec
            remove_leftovers(record.served or record.config, self.settings, pid=pid)
        if record.peer is not None:
            self._remember_departed(record.peer, record.full_name)
        if record.state is WorkerState.STOPPING:
            self._stopped(record, pid, code)
        else:
            self._died(record, pid, code, run_seconds)

    def _stopped(self, record: WorkerRecord, pid: int, code: int) -> None:
        record.forget_process()
        described = exitcodes.describe(code)
        LOG.info("worker stopped resource=%s pid=%d status=%s", record.full_name, pid, described)
        self.table.move(record, WorkerState.EXITED, f"stopped ({described})")
        if self.stopping:
            return
        if not record.wanted:
            self.drop(record)
        elif record.respawn_after_stop:
            record.respawn_after_stop = False
            self.spawn(record, "config changed")

    def _died(self, record: WorkerRecord, pid: int, code: int, run_seconds: float) -> None:
        decision = self.table.decide_exit(record, code, run_seconds)
        # Name the cause the worker reported, in the log and in status.
        description = decision.description + (
            f"; last error: {record.error}" if record.error else ""
        )
        record.forget_process()
        record.failures = decision.failures
        self._observe(self.observer.worker_restarted, record.full_name, decision.reason)
        if decision.state is WorkerState.FATAL:
            LOG.error(
                "worker cannot serve its resource resource=%s pid=%d: %s; fix this resource in "
                "the config (see the worker's log above)",
                record.full_name,
                pid,
                description,
            )
            self.table.move(record, WorkerState.FATAL, description)
            return
        record.restarts += 1
        record.backoff_delay = decision.delay
        LOG.warning(
            "worker exited unexpectedly resource=%s pid=%d: %s; restarting in %.2fs",
            record.full_name,
            pid,
            description,
            decision.delay,
        )
        self.table.move(record, WorkerState.BACKOFF, description)
        self._restart_later(record, decision.delay)

    def _remember_departed(self, peer: bytes, full_name: str) -> None:
        self.departed[peer] = full_name
        while len(self.departed) > DEPARTED_PEERS:
            self.departed.popitem(last=False)

    def drop(self, record: WorkerRecord) -> None:
        self.table.remove(record.name)
        # Its worker is gone; a spec it could not remove (a pod killed whole) goes now.
        remove_leftovers(record.served or record.config, self.settings, "a removed resource left")
        self._observe(self.observer.resource_removed, record.full_name)
        LOG.info("resource removed resource=%s", record.full_name)

    # ---- stop --------------------------------------------------------------------------------

    def stop(self, record: WorkerRecord, reason: str) -> None:
        """Stop the worker (idempotent); a record without a process leaves at once if unwanted."""
        if record.proc is None:
            self.loop.timers.cancel(("start", record.name))
            if record.state in (WorkerState.BACKOFF, WorkerState.FATAL):
                self.table.move(record, WorkerState.EXITED, reason)
            if not record.wanted and not self.stopping:
                self.drop(record)
            return
        if record.state is WorkerState.STOPPING:
            return
        self.table.move(record, WorkerState.STOPPING, reason)
        if record.peer is not None:
            self._send_peer(record.peer, Stop(reason))
        else:
            record.proc.terminate()  # it has not said hello: a message could not reach it
        name, pid = record.name, record.pid
        timers = self.loop.timers
        term, kill = self._rung(name, pid, False), self._rung(name, pid, True)
        timers.call_later(("term", name, pid), self.timings.stop_term_after, term)
        timers.call_later(("kill", name, pid), self.timings.stop_kill_after, kill)

    def _rung(self, name: str, pid: int, kill: bool) -> Callable[[], None]:
        """One rung of the stop ladder for worker `name`, process `pid`: SIGTERM or SIGKILL."""

        def rung() -> None:
            record = self.table.get(name)
            if record is None or record.proc is None or record.pid != pid:
                return
            LOG.warning(
                "worker did not stop in time resource=%s pid=%d: sending %s",
                record.full_name,
                pid,
                "SIGKILL" if kill else "SIGTERM",
            )
            if kill:
                record.proc.kill()
            else:
                record.proc.terminate()

        return rung

    def begin_shutdown(self, reason: str) -> None:
        if self.stopping:
            return
        LOG.info("stopping every worker: %s", reason)
        self.stopping = True
        self.stop_started = self.clock()
        for record in self.table:
            self.stop(record, "supervisor stopping")
        for helper in self.helpers:
            helper.stop()
        self.loop.timers.call_later(("shutdown",), self.timings.shutdown_budget, self._budget_spent)

    def kill_all(self) -> None:
        for helper in self.helpers:
            helper.kill()
        for record in self.table:
            if record.proc is not None:
                record.proc.kill()

    def overran(self) -> bool:
        """Past the stop budget and its overrun: the loop stops waiting."""
        limit = self.stop_started + self.timings.shutdown_budget + self.timings.stop_overrun
        return self.stopping and self.clock() > limit

    def _budget_spent(self) -> None:
        for helper in self.helpers:
            helper.kill()
        for record in self.table:
            if record.proc is not None:
                LOG.warning(
                    "stop budget spent: killing resource=%s pid=%d", record.full_name, record.pid
                )
                record.proc.kill()
        deadline = time.monotonic() + 0.5
        while self.running() and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)  # the last half second of a stop: waiting on waitpid, no events

    # ---- liveness ----------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Every heartbeat interval: a heartbeat to each running worker; the hung are killed."""
        now = self.clock()
        hung_after = self.timings.hung_after_beats * self.timings.heartbeat_interval
        for record in self.table:
            if record.proc is None:
                continue
            if record.state is WorkerState.RUNNING:
                self.send(record, Heartbeat())
                if now - record.last_heard > hung_after:
                    self._kill_hung(record, "hung", f"silent for {now - record.last_heard:.1f}s")
            elif (
                record.state is WorkerState.STARTING
                and now - record.started_at > self.timings.start_timeout
            ):
                why = f"no hello after {self.timings.start_timeout:.0f}s"
                self._kill_hung(record, "start_timeout", why)

    def _kill_hung(self, record: WorkerRecord, label: str, why: str) -> None:
        if record.kill_reason or record.proc is None:
            return
        LOG.error(
            "worker %s resource=%s pid=%d: killing it to start a new one",
            why,
            record.full_name,
            record.pid,
        )
        record.kill_reason = label
        record.proc.kill()
