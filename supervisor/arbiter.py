"""The supervisor's main loop: one thread of control over every worker (supervisor process).

One `zmq.Poller` waits on the control socket, the signal inbox and the uevent monitor, with a
timeout set by the nearest timer; every event is handled to the end before the next poll, so no
state is shared between threads and nothing needs a lock. What happens where:

- control socket: worker hello -> configure; ready / heartbeat / error; `status_request`;
- signals: SIGTERM/SIGINT stop everything (a second one kills), SIGHUP reloads the config,
  SIGCHLD only wakes the loop (every pass reaps);
- uevents: a debounced full sysfs rescan (the scan is the truth, the event only a hint);
- timers: heartbeats and liveness, config polling, kubelet.sock polling, the periodic rescan,
  backoff restarts, the stop ladder (stop message -> SIGTERM -> SIGKILL) and the stop budget.

A handler that raises is a bug, but one bad event must not take the node down: each event is
handled under a guard that logs the traceback, counts the error per event (`loop_errors`) and
carries on. Only a burst of errors (MAX_LOOP_ERRORS within LOOP_ERROR_WINDOW) ends the loop, and
then through the normal stop ladder; workers are SIGKILLed only if that ladder itself fails.

Every place an operator-visible event happens calls one method of an `Observer` (metrics hook).
The supervisor never imports grpc: workers are separate interpreters.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import zmq

from common import exitcodes
from common.config import Config, ConfigError, load_config_bytes
from common.devices import Scan, ScanProblem
from common.discovery import scan
from common.loop.signals import SignalInbox
from common.loop.timers import Timers
from common.messages import (
    Configure,
    Devices,
    Error,
    Heartbeat,
    Hello,
    Message,
    Ready,
    ReloadStatus,
    Reregister,
    Status,
    StatusRequest,
    Stop,
    WorkerSettings,
    WorkerStatus,
    type_name,
)
from common.rdma_netns import EXCLUSIVE, EXCLUSIVE_WARNING, read_netns_mode
from supervisor.config_diff import diff_configs
from supervisor.control import ControlChannel
from supervisor.device_state import DeviceState, healthy_count
from supervisor.leftovers import remove_leftovers, remove_stale_cdi_specs
from supervisor.observer import Observer
from supervisor.restart_policy import RestartPolicy
from supervisor.runtime_dir import RuntimeDir, RuntimeDirError, orphaned_workers, stop_processes
from supervisor.watch.config import ConfigWatch
from supervisor.watch.kubelet import KubeletWatch
from supervisor.worker_process import WorkerProcess
from supervisor.worker_table import WorkerRecord, WorkerState, WorkerTable

LOG = logging.getLogger(__name__)

#: Seconds between heartbeats, both ways. A worker that hears nothing for 2.5 of them exits, so
#: a killed supervisor leaves no worker behind for more than 2.5 s plus the worker's 2 s stop.
HEARTBEAT_INTERVAL = 1.0
#: A running worker silent for this many heartbeat intervals is hung: killed and restarted.
HUNG_AFTER_BEATS = 5
#: A worker that has not said hello this long after spawning is killed and restarted.
START_TIMEOUT = 15.0
CONFIG_POLL_INTERVAL = 1.0
KUBELET_POLL_INTERVAL = 0.2
#: Workers re-register on their own when kubelet.sock is replaced; after this long the
#: supervisor tells the ones that did not.
KUBELET_RECHECK_AFTER = 1.5
#: uevents come in bursts (a function going away sends dozens); one rescan per burst.
RESCAN_DEBOUNCE = 0.1
#: Stop ladder, from the stop message: SIGTERM, then SIGKILL (a worker stops within 2 s).
STOP_TERM_AFTER = 2.5
STOP_KILL_AFTER = 3.5
#: The whole supervisor stop, signal to exit, stays under 5 s.
SHUTDOWN_BUDGET = 4.2
#: Waiting for a previous supervisor's orphaned workers to go before ours bind their sockets.
ORPHAN_WAIT = 3.0
MAX_POLL_WAIT = 1.0
#: Handler errors within LOOP_ERROR_WINDOW seconds that make the supervisor stop (in order).
MAX_LOOP_ERRORS = 20
LOOP_ERROR_WINDOW = 10.0
#: Past the stop budget by this much, the loop gives up on the ladder and kills what is left.
STOP_OVERRUN = 1.0
#: Routing ids of workers that exited, remembered to drop their last messages quietly.
DEPARTED_PEERS = 64


@dataclass(frozen=True)
class Options:
    config_file: str
    host_root: str
    runtime_dir: str
    device_plugin_dir: str
    plugins_registry_dir: str
    registration_mode: str
    use_cdi: bool
    cdi_dir: str
    log_level: str = "info"
    log_format: str = "text"
    uevent_source: str = "kernel"  # kernel, udev or off
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    config_poll_interval: float = CONFIG_POLL_INTERVAL

    def worker_settings(self) -> WorkerSettings:
        return WorkerSettings(
            device_plugin_dir=os.path.abspath(self.device_plugin_dir),
            plugins_registry_dir=os.path.abspath(self.plugins_registry_dir)
            if self.plugins_registry_dir
            else "",
            registration_mode=self.registration_mode,
            use_cdi=self.use_cdi,
            cdi_dir=os.path.abspath(self.cdi_dir),
            heartbeat_interval=self.heartbeat_interval,
        )


class Arbiter:
    def __init__(
        self,
        options: Options,
        config: Config,
        config_bytes: bytes,
        observer: Observer | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.options = options
        self.config = config
        self.settings = options.worker_settings()
        self.observer = observer or Observer()
        self.clock: Callable[[], float] = time.monotonic
        self.table = WorkerTable(policy, on_change=self._state_changed)
        self.devices = DeviceState()
        self.timers = Timers()
        self.config_watch = ConfigWatch(options.config_file)
        self.config_watch.mark_seen(config_bytes)
        self.kubelet_watch = KubeletWatch(options.device_plugin_dir)
        self.kubelet_restart_at = 0.0
        self.scan_problems: set[ScanProblem] = set()
        self.runtime = RuntimeDir(options.runtime_dir)
        self.control: ControlChannel | None = None
        self.uevents: Any = None
        self.started = time.time()
        self.config_loaded = time.time()
        self.last_reload: ReloadStatus | None = None
        self.netns_mode = ""  # common.rdma_netns: read after every scan
        self.stopping = False
        self.stop_started = 0.0
        self.exit_code: int = exitcodes.OK
        #: Handler errors per event ("timer:heartbeat", "message:ready", ...), since start.
        self.loop_errors: dict[str, int] = {}
        self._recent_errors: list[float] = []
        #: peer -> full name of workers that exited: their last messages are not strangers'.
        self.departed: OrderedDict[bytes, str] = OrderedDict()
        self._poller: zmq.Poller | None = None
        self._extra_fds: tuple[int, ...] = ()

    # ---- entry ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.runtime.acquire()
        except RuntimeDirError as err:
            LOG.error("%s", err)
            return exitcodes.FATAL
        signals: SignalInbox | None = None
        try:
            try:
                self.control = ControlChannel(self.runtime.path)
            except zmq.ZMQError as err:
                LOG.error("cannot bind the control socket in %s: %s", self.runtime.path, err)
                return exitcodes.FATAL
            signals = SignalInbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD))
            self._stop_orphans()
            self._open_uevents()
            self._start()
            self._loop(signals)
            return self.exit_code
        except Exception:
            LOG.exception("the supervisor loop failed (a bug: please report it); stopping")
            self._stop_in_order(signals)
            return exitcodes.FATAL
        finally:
            self._close(signals)

    def _stop_in_order(self, signals: SignalInbox | None) -> None:
        """After the loop itself failed: the normal stop ladder, if the loop can still turn."""
        if signals is None or self.control is None or not any(r.proc for r in self.table):
            return
        try:
            self.begin_shutdown("the supervisor loop failed")
            self._loop(signals)
        except Exception:
            LOG.exception("stopping the workers in order failed too; killing them")

    def _start(self) -> None:
        now = self.clock()
        for warning in self.config.warnings:
            LOG.warning("config %s: %s", self.options.config_file, warning)
        LOG.info(
            "supervisor starting pid=%d resources=%s control=%s",
            os.getpid(),
            ",".join(r.full_name for r in self.config.resources) or "none",
            self.control.endpoint if self.control else "",
        )
        self._observe(self.observer.config_applied, self.config)
        if self.options.use_cdi:
            remove_stale_cdi_specs(
                self.options.cdi_dir, {r.full_name for r in self.config.resources}
            )
        self._rescan("start")
        for resource in self.config.resources:
            self._spawn(self.table.add(resource), "configured")
        self.timers.set(("heartbeat",), now + self.options.heartbeat_interval)
        self.timers.set(("config",), now + self.options.config_poll_interval)
        self.timers.set(("kubelet",), now + KUBELET_POLL_INTERVAL)
        self._schedule_periodic(now)
        self._observe(self.observer.started, self)

    def _loop(self, signals: SignalInbox) -> None:
        assert self.control is not None
        poller, extra_fds = self._poll_set(signals)
        while True:
            deadline = self.timers.next_deadline()
            wait = MAX_POLL_WAIT if deadline is None else deadline - self.clock()
            wanted = self._observer_timeout()
            if wanted is not None:
                wait = min(wait, wanted)
            ready = dict(poller.poll(int(max(0.0, min(wait, MAX_POLL_WAIT)) * 1000)))
            self._guarded("signals", self._on_signals, signals.drain())
            self._guarded("reap", self._reap)
            if self.control.socket in ready:
                for peer, msg in self.control.receive():
                    self._guarded(f"message:{type_name(msg)}", self._on_message, peer, msg)
            if self.uevents is not None and self.uevents.fileno() in ready:
                self._guarded("uevents", self._on_uevents)
            for key in self.timers.pop_due(self.clock()):
                kind = key[0] if isinstance(key, tuple) and key else key
                self._guarded(f"timer:{kind}", self._on_timer, key)
            self._guarded("reap", self._reap)
            self._observe(self.observer.loop_turned, {fd for fd in extra_fds if fd in ready})
            if self.stopping and not any(r.proc for r in self.table):
                return
            if self.stopping and self.clock() > self.stop_started + SHUTDOWN_BUDGET + STOP_OVERRUN:
                LOG.error("the stop ladder overran its budget; killing what is left")
                return

    def _poll_set(self, signals: SignalInbox) -> tuple[zmq.Poller, tuple[int, ...]]:
        """The poller, built once (the loop may be entered again to stop in order)."""
        if self._poller is not None:
            return self._poller, self._extra_fds
        assert self.control is not None
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        poller.register(signals.fileno(), zmq.POLLIN)
        if self.uevents is not None:
            poller.register(self.uevents.fileno(), zmq.POLLIN)
        try:
            self._extra_fds = tuple(self.observer.poll_fds())
        except Exception:
            LOG.exception("observer poll_fds failed; carrying on without them")
        for fd in self._extra_fds:
            poller.register(fd, zmq.POLLIN)
        self._poller = poller
        return poller, self._extra_fds

    def _guarded(self, event: str, handler: Callable[..., None], *args: Any) -> None:
        """Run one event's handler; an error is logged and counted, and the loop goes on."""
        try:
            handler(*args)
        except Exception:
            count = self.loop_errors[event] = self.loop_errors.get(event, 0) + 1
            LOG.exception(
                "handling %s failed (a bug: please report it); carrying on errors=%d",
                event,
                count,
            )
            self._observe(self.observer.loop_error, event)
            now = self.clock()
            self._recent_errors = [t for t in self._recent_errors if now - t < LOOP_ERROR_WINDOW]
            self._recent_errors.append(now)
            if len(self._recent_errors) >= MAX_LOOP_ERRORS and not self.stopping:
                self.exit_code = exitcodes.FATAL
                self.begin_shutdown(
                    f"{len(self._recent_errors)} handler errors within {LOOP_ERROR_WINDOW:.0f}s"
                )

    def _close(self, signals: SignalInbox | None) -> None:
        for record in self.table:
            if record.proc is not None:  # only after an error in the loop itself
                record.proc.kill()
                remove_leftovers(record.served or record.config, self.settings)
        if self.control is not None:
            self.control.close()
        if signals is not None:
            signals.close()
        self.runtime.release()
        self._observe(self.observer.stopped)
        LOG.info("supervisor stopped")

    def _observer_timeout(self) -> float | None:
        try:
            return self.observer.poll_timeout()
        except Exception:
            LOG.exception("observer poll_timeout failed; carrying on")
            return None

    def _observe(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            LOG.exception("observer %s failed; carrying on", getattr(hook, "__name__", hook))

    # ---- start-up helpers ----------------------------------------------------------------

    def _stop_orphans(self) -> None:
        """Stop workers a killed supervisor left on this endpoint, before ours take the sockets."""
        assert self.control is not None
        try:
            pids = orphaned_workers(self.control.endpoint)
        except OSError as err:  # no /proc: the orphans exit by themselves anyway
            LOG.warning("cannot look for orphaned workers: %s", err)
            return
        if not pids:
            return
        LOG.warning(
            "stopping %d orphaned worker(s) of a previous supervisor pids=%s",
            len(pids),
            ",".join(map(str, pids)),
        )
        stop_processes(pids, ORPHAN_WAIT)

    def _open_uevents(self) -> None:
        if self.options.uevent_source == "off":
            LOG.info("uevent monitor off; device changes are seen by the periodic rescan only")
            return
        from supervisor.watch.uevents import open_monitor  # pyudev is loaded only when used

        self.uevents = open_monitor(self.options.uevent_source)

    # ---- signals and processes -----------------------------------------------------------

    def _on_signals(self, signums: list[int]) -> None:
        for signum in signums:
            if signum in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(signum).name
                if self.stopping:
                    LOG.warning("%s again while stopping: killing the workers now", name)
                    for record in self.table:
                        if record.proc is not None:
                            record.proc.kill()
                else:
                    self.begin_shutdown(f"{name} received")
            elif signum == signal.SIGHUP:
                LOG.info("SIGHUP: reading the config file now")
                self._poll_config(forced=True)

    def _reap(self) -> None:
        for record in self.table:
            if record.proc is None:
                continue
            code = record.proc.poll()
            if code is not None:
                self._on_exit(record, code)

    def _spawn(self, record: WorkerRecord, reason: str) -> None:
        now = self.clock()
        assert self.control is not None
        self.timers.cancel(("start", record.name))
        self.table.move(record, WorkerState.STARTING, reason)
        try:
            proc = WorkerProcess.spawn(
                record.name,
                self.control.endpoint,
                self.options.log_level,
                self.options.log_format,
            )
        except OSError as err:
            LOG.error("cannot start a worker resource=%s: %s", record.full_name, err)
            record.failures += 1
            delay = self.table.policy.delay(record.failures, self.table.rng.random())
            record.backoff_delay = delay
            self.table.move(record, WorkerState.BACKOFF, f"cannot start: {err}")
            self.timers.set(("start", record.name), now + delay)
            return
        record.proc, record.pid, record.served = proc, proc.pid, record.config
        record.started_at = record.last_heard = now
        record.error = ""
        LOG.info("worker started resource=%s pid=%d (%s)", record.full_name, proc.pid, reason)

    def _on_exit(self, record: WorkerRecord, code: int) -> None:
        now = self.clock()
        pid, run_seconds = record.pid, now - record.started_at
        self.timers.cancel(("term", record.name, pid))
        self.timers.cancel(("kill", record.name, pid))
        if code < 0:  # killed (by us, the OOM killer, a crash): it left its socket and CDI spec
            remove_leftovers(record.served or record.config, self.settings)
        if record.peer is not None:
            self._remember_departed(record.peer, record.full_name)
        if record.state is WorkerState.STOPPING:
            record.forget_process()
            LOG.info(
                "worker stopped resource=%s pid=%d status=%s",
                record.full_name,
                pid,
                exitcodes.describe(code),
            )
            self.table.move(record, WorkerState.EXITED, f"stopped ({exitcodes.describe(code)})")
            if self.stopping:
                return
            if not record.wanted:
                self._drop(record)
            elif record.respawn_after_stop:
                record.respawn_after_stop = False
                self._spawn(record, "config changed")
            return
        decision = self.table.decide_exit(record, code, run_seconds)
        # Name the cause the worker reported, in the log and in status (issue 11).
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
        self.timers.set(("start", record.name), now + decision.delay)

    def _stop(self, record: WorkerRecord, reason: str) -> None:
        """Stop the worker (idempotent); a record without a process leaves at once if unwanted."""
        if record.proc is None:
            self.timers.cancel(("start", record.name))
            if record.state in (WorkerState.BACKOFF, WorkerState.FATAL):
                self.table.move(record, WorkerState.EXITED, reason)
            if not record.wanted and not self.stopping:
                self._drop(record)
            return
        if record.state is WorkerState.STOPPING:
            return
        now = self.clock()
        self.table.move(record, WorkerState.STOPPING, reason)
        if record.peer is not None and self.control is not None:
            self.control.send(record.peer, Stop(reason))
        else:
            record.proc.terminate()  # it has not said hello: a message could not reach it
        self.timers.set(("term", record.name, record.pid), now + STOP_TERM_AFTER)
        self.timers.set(("kill", record.name, record.pid), now + STOP_KILL_AFTER)

    def _remember_departed(self, peer: bytes, full_name: str) -> None:
        self.departed[peer] = full_name
        while len(self.departed) > DEPARTED_PEERS:
            self.departed.popitem(last=False)

    def _retry_early(self, record: WorkerRecord, why: str) -> None:
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
        self._spawn(record, f"{why}: an early retry")

    def _drop(self, record: WorkerRecord) -> None:
        self.table.remove(record.name)
        # Its worker is gone; a spec it could not remove (a pod killed whole) goes now.
        remove_leftovers(record.served or record.config, self.settings, "a removed resource left")
        self._observe(self.observer.resource_removed, record.full_name)
        LOG.info("resource removed resource=%s", record.full_name)

    def begin_shutdown(self, reason: str) -> None:
        if self.stopping:
            return
        LOG.info("stopping every worker: %s", reason)
        self.stopping = True
        self.stop_started = self.clock()
        for record in self.table:
            self._stop(record, "supervisor stopping")
        self.timers.set(("shutdown",), self.clock() + SHUTDOWN_BUDGET)

    def _state_changed(self, record: WorkerRecord, previous: WorkerState, reason: str) -> None:
        LOG.debug(
            "worker state resource=%s %s -> %s (%s)",
            record.full_name,
            previous.value,
            record.state.value,
            reason,
        )
        self._observe(
            self.observer.worker_state_changed,
            record.full_name,
            record.state.value,
            previous.value,
            reason,
        )

    # ---- control messages ----------------------------------------------------------------

    def _send(self, record: WorkerRecord, msg: Message) -> None:
        if record.peer is not None and self.control is not None:
            self.control.send(record.peer, msg)

    def _on_message(self, peer: bytes, msg: Message) -> None:
        assert self.control is not None
        if isinstance(msg, StatusRequest):
            self.control.send(peer, self._status(msg.id))
            return
        if isinstance(msg, Hello):
            self._on_hello(peer, msg)
            return
        record = self.table.by_peer(peer)
        if record is None:
            self._refuse_stranger(peer, msg)
            return
        record.last_heard = self.clock()
        if isinstance(msg, Heartbeat):
            if msg.counters is not None:
                record.counters = msg.counters
                self._observe(self.observer.heartbeat, record.full_name, record.pid, msg.counters)
        elif isinstance(msg, Ready):
            self._on_ready(record, msg)
        elif isinstance(msg, Error):
            record.error = f"{msg.code}: {msg.message}"[:300]
            LOG.warning(
                "worker reports an error resource=%s pid=%d code=%s: %s",
                record.full_name,
                record.pid,
                msg.code,
                msg.message,
            )
        else:
            self.control.send(
                peer,
                Error(
                    "unexpected", f"a supervisor does not accept {type_name(msg)}", parent=msg.id
                ),
            )

    def _refuse_stranger(self, peer: bytes, msg: Message) -> None:
        """A worker we did not start (a previous supervisor's orphan): tell it to stop."""
        assert self.control is not None
        departed = self.departed.get(peer)
        if departed is not None:  # its last words, read after it was reaped
            LOG.debug("%s from a worker that exited resource=%s: ignored", type_name(msg), departed)
            return
        if isinstance(msg, Heartbeat | Ready):
            LOG.info("telling an unknown worker to stop peer=%s", peer.decode(errors="replace"))
            self.control.send(peer, Stop("not a worker of this supervisor"))
        elif isinstance(msg, Error):
            LOG.warning("error from unknown peer=%s code=%s: %s", peer, msg.code, msg.message)

    def _on_hello(self, peer: bytes, msg: Hello) -> None:
        assert self.control is not None
        record = self.table.get(msg.resource)
        if record is None or record.proc is None or record.pid != msg.pid:
            LOG.info(
                "hello from a worker this supervisor did not start resource=%s pid=%d: stopping it",
                msg.resource,
                msg.pid,
            )
            self.control.send(peer, Stop("not a worker of this supervisor", parent=msg.id))
            return
        record.peer = peer
        record.last_heard = self.clock()
        if record.state is WorkerState.STOPPING:
            self.control.send(peer, Stop(record.reason, parent=msg.id))
            return
        devices = self.devices.selected(record.name)
        self.control.send(peer, Configure(record.config, self.settings, devices, parent=msg.id))
        record.configured = True
        record.sent_devices = devices
        if record.state is WorkerState.STARTING:
            self.table.move(record, WorkerState.RUNNING, "configured")

    def _on_ready(self, record: WorkerRecord, msg: Ready) -> None:
        changed = msg.registered != record.registered
        record.registered = msg.registered
        record.registered_since = msg.since
        record.mode = msg.mode or record.mode
        if msg.registered:
            record.registered_at = self.clock()
        if changed:
            LOG.info(
                "worker %s resource=%s mode=%s (%s)",
                "registered" if msg.registered else "not registered",
                record.full_name,
                record.mode or "-",
                msg.reason,
            )
            self._observe(self.observer.worker_ready, record.full_name, msg.registered, record.mode)

    def _status(self, parent: str) -> Status:
        return Status(
            pid=os.getpid(),
            started=self.started,
            config_file=self.options.config_file,
            config_loaded=self.config_loaded,
            grpc_loaded="grpc" in sys.modules,
            workers=self.worker_statuses(),
            last_reload=self.last_reload,
            rdma_netns_mode=self.netns_mode,
            parent=parent,
        )

    def worker_statuses(self) -> tuple[WorkerStatus, ...]:
        return self.table.statuses(self.devices.selected)

    # ---- timers --------------------------------------------------------------------------

    def _on_timer(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        now = self.clock()
        kind = key[0]
        # A recurring timer is set again before its handler runs: a handler that raises must
        # not end the heartbeats (the workers would think the supervisor gone).
        if kind == "heartbeat":
            self.timers.set(key, now + self.options.heartbeat_interval)
            self._heartbeat(now)
        elif kind == "config":
            self.timers.set(key, now + self.options.config_poll_interval)
            if not self.stopping:
                self._poll_config(forced=False)
        elif kind == "kubelet":
            self.timers.set(key, now + KUBELET_POLL_INTERVAL)
            self._poll_kubelet(now)
        elif kind == "kubelet_check":
            self._kubelet_check()
        elif kind == "periodic":
            self._schedule_periodic(now)
            if not self.stopping:
                self._rescan("periodic")
        elif kind == "rescan":
            if not self.stopping:
                self._rescan("uevent")
        elif kind == "start":
            record = self.table.get(key[1])
            if record is not None and record.state is WorkerState.BACKOFF and not self.stopping:
                self._spawn(record, f"restart {record.restarts}")
        elif kind in ("term", "kill"):
            record = self.table.get(key[1])
            if record is None or record.proc is None or record.pid != key[2]:
                return
            LOG.warning(
                "worker did not stop in time resource=%s pid=%d: sending %s",
                record.full_name,
                record.pid,
                "SIGTERM" if kind == "term" else "SIGKILL",
            )
            if kind == "term":
                record.proc.terminate()
            else:
                record.proc.kill()
        elif kind == "shutdown":
            self._shutdown_deadline()

    def _heartbeat(self, now: float) -> None:
        for record in self.table:
            if record.proc is None:
                continue
            if record.state is WorkerState.RUNNING:
                self._send(record, Heartbeat())
                if now - record.last_heard > HUNG_AFTER_BEATS * self.options.heartbeat_interval:
                    self._kill_hung(record, "hung", f"silent for {now - record.last_heard:.1f}s")
            elif record.state is WorkerState.STARTING and now - record.started_at > START_TIMEOUT:
                self._kill_hung(record, "start_timeout", f"no hello after {START_TIMEOUT:.0f}s")

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

    def _shutdown_deadline(self) -> None:
        left = [r for r in self.table if r.proc is not None]
        for record in left:
            LOG.warning(
                "stop budget spent: killing resource=%s pid=%d", record.full_name, record.pid
            )
            record.proc.kill()  # type: ignore[union-attr]
        deadline = self.clock() + 0.5
        while any(r.proc for r in self.table) and self.clock() < deadline:
            self._reap()
            time.sleep(0.01)  # the last half second of a stop: waiting on waitpid, no events

    def _schedule_periodic(self, now: float) -> None:
        interval = self.config.periodic_update_interval
        if interval > 0:
            self.timers.set(("periodic",), now + interval)
        else:
            self.timers.cancel(("periodic",))

    # ---- devices -------------------------------------------------------------------------

    def _on_uevents(self) -> None:
        try:
            events = self.uevents.drain()
        except Exception as err:  # an overflowed netlink buffer lost events: rescan anyway
            LOG.warning("reading uevents failed: %s; rescanning", err)
            events = ["lost"]
        if events:
            LOG.debug("uevents: %s", "; ".join(events[:10]))
            self.timers.set_once(("rescan",), self.clock() + RESCAN_DEBOUNCE)

    def _scan(self, trigger: str) -> tuple[Scan | None, float]:
        started = time.perf_counter()
        try:
            result: Scan | None = scan(self.options.host_root)
        except Exception:  # discovery is meant never to raise; a bug must not stop the loop
            LOG.exception(
                "device scan failed trigger=%s; keeping the previous device sets", trigger
            )
            result = None
        return result, time.perf_counter() - started

    def _rescan(self, trigger: str) -> None:
        result, seconds = self._scan(trigger)
        if result is not None:
            changed = self.devices.update(result, self.config.resources)
            self._after_scan(trigger, result, seconds, changed)

    def _after_scan(self, trigger: str, result: Scan, seconds: float, changed: set[str]) -> None:
        selections = {
            r.full_name: self.devices.selected(r.resource_name) for r in self.config.resources
        }
        self._observe(self.observer.scan_finished, trigger, result, seconds, selections)
        LOG.debug("device scan trigger=%s took %.1fms changed=%s", trigger, seconds * 1000, changed)
        new_problems = set(result.problems) - self.scan_problems
        for problem in sorted(new_problems, key=lambda p: p.path):
            # Once per problem, not once per periodic scan: a broken entry stays broken.
            LOG.warning(
                "device scan skipped an entry reason=%s path=%s: %s",
                problem.reason,
                problem.path,
                problem.detail,
            )
        self.scan_problems = set(result.problems)
        self._check_netns_mode()
        full_names = {r.resource_name: r.full_name for r in self.config.resources}
        for name in sorted(changed):
            selected = self.devices.selected(name)
            LOG.info(
                "devices resource=%s matched=%d healthy=%d trigger=%s",
                full_names.get(name, name),
                len(selected),
                healthy_count(selected),
                trigger,
            )
        self._push_devices(changed)

    def _check_netns_mode(self) -> None:
        """Exclusive RDMA netns mode breaks sharing: warn with the fix, keep serving (issue 13)."""
        mode = read_netns_mode(self.options.host_root)
        if mode == self.netns_mode:
            return
        if mode == EXCLUSIVE:
            LOG.warning("%s", EXCLUSIVE_WARNING)
        elif self.netns_mode == EXCLUSIVE:
            LOG.info("RDMA netns mode is %s again: devices can be shared", mode)
        self.netns_mode = mode
        self._observe(self.observer.rdma_netns_mode, mode)

    def _push_devices(self, changed: set[str]) -> None:
        for record in self.table:
            selected = self.devices.selected(record.name)
            if record.state is WorkerState.RUNNING and record.configured:
                if record.sent_devices != selected:
                    self._send(record, Devices(selected))
                    record.sent_devices = selected
            elif (
                record.state is WorkerState.BACKOFF
                and record.name in changed
                and record.name in self.devices.moved  # its set, not only its health
                and not self.stopping
            ):
                self._retry_early(record, "devices changed")

    # ---- config --------------------------------------------------------------------------

    def _poll_config(self, forced: bool) -> None:
        if self.stopping:  # a reload now could start workers nothing would ever stop
            return
        data = self.config_watch.poll()
        if data is None:
            if forced:
                _, why = self.config_watch.read()
                LOG.info("config unchanged%s", f" ({why})" if why else "")
            return
        try:
            config = load_config_bytes(data, self.options.config_file)
        except ConfigError as err:
            problems = [str(p) for p in err.problems]
            LOG.error(
                "config %s refused (%d problem(s)); the running config stays: %s",
                self.options.config_file,
                len(problems),
                "; ".join(problems),
            )
            for problem in problems:
                LOG.error("config problem: %s", problem)
            self.last_reload = ReloadStatus(time.time(), False, len(problems), problems[0])
            self._observe(self.observer.config_reloaded, False, problems)
            return
        for warning in config.warnings:
            LOG.warning("config %s: %s", self.options.config_file, warning)
        self.apply_config(config)
        self.last_reload = ReloadStatus(time.time(), True)
        self._observe(self.observer.config_applied, config)
        self._observe(self.observer.config_reloaded, True, [])

    def apply_config(self, new: Config) -> None:
        """Reload = diff -> apply, touching only what changed."""
        diff = diff_configs(self.config, new)
        interval_changed = diff.interval_changed
        self.config = new
        self.config_loaded = time.time()
        LOG.info(
            "config reloaded added=%s removed=%s changed=%s unchanged=%d%s",
            ",".join(r.full_name for r in diff.added) or "-",
            ",".join(r.full_name for r in diff.removed) or "-",
            ",".join(n.full_name for _, n in diff.changed) or "-",
            len(diff.unchanged),
            f" periodicUpdateInterval={new.periodic_update_interval}s" if interval_changed else "",
        )
        if interval_changed:
            self._schedule_periodic(self.clock())
        # A fresh scan, so new or changed resources start from the truth.
        result, seconds = self._scan("config")
        if result is not None:
            changed_devices = self.devices.update(result, new.resources)
        else:
            changed_devices = self.devices.reselect(new.resources)
        # The diff is keyed by full name: a changed prefix or name is a removal plus an addition
        # under the same socket name (resource name), which the same record serves.
        renamed = {r.resource_name for r in diff.added}
        for old in diff.removed:
            found = self.table.get(old.resource_name)
            if found is None or old.resource_name in renamed:
                continue
            found.wanted = False
            found.respawn_after_stop = False
            self._stop(found, "resource removed from the config")
        for resource in diff.added:
            found = self.table.get(resource.resource_name)
            if found is None:
                self._spawn(self.table.add(resource), "added to the config")
                continue
            # Renamed, or removed earlier and still stopping: a new registration, a new process.
            previous, found.config, found.wanted = found.served, resource, True
            if found.proc is not None:
                found.respawn_after_stop = True
                self._stop(found, "resource renamed")
            else:
                if previous is not None and previous.full_name != resource.full_name:
                    remove_leftovers(previous, self.settings, "a renamed resource left")
                self._spawn(found, "config changed")
        for _, resource in diff.changed:
            found = self.table.get(resource.resource_name)
            if found is None:
                continue
            found.config = resource
            if found.state is WorkerState.RUNNING and found.configured:
                selected = self.devices.selected(resource.resource_name)
                self._send(found, Configure(resource, self.settings, selected))
                found.sent_devices = selected
            elif found.state is WorkerState.BACKOFF:
                self._retry_early(found, "config changed")
            elif found.state is WorkerState.FATAL:
                self._spawn(found, "config changed")
            # STARTING: its hello gets the new config; STOPPING: it restarts with it if wanted.
        if result is not None:
            self._after_scan("config", result, seconds, changed_devices)  # pushes devices too
        else:
            self._push_devices(changed_devices)

    # ---- kubelet -------------------------------------------------------------------------

    def _poll_kubelet(self, now: float) -> None:
        if not self.kubelet_watch.poll():
            return
        LOG.info("kubelet.sock was replaced: the kubelet restarted; workers register again")
        self.kubelet_restart_at = now
        self._observe(self.observer.kubelet_restarted)
        self.timers.set(("kubelet_check",), now + KUBELET_RECHECK_AFTER)

    def _kubelet_check(self) -> None:
        # A registration after (detection - poll interval) happened after the restart.
        since = self.kubelet_restart_at - KUBELET_POLL_INTERVAL
        for record in self.table:
            if record.state is WorkerState.RUNNING and (
                not record.registered or record.registered_at < since
            ):
                LOG.warning(
                    "worker did not re-register after the kubelet restart resource=%s; telling it",
                    record.full_name,
                )
                self._send(record, Reregister("kubelet.sock replaced"))
