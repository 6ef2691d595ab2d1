"""The supervisor process: its roles wired around one loop (supervisor process).

Who does what (docs/architecture.md has the map):

- `loop.Loop`: the poller, fd readers, callback timers, guarded handlers;
- `lifecycle.Lifecycle`: every child: spawn, reap, restart policy, stop ladder, liveness;
- `peers.Peers`: messages from workers and status clients, matched on a typed union;
- `device_sync.DeviceSync`: uevents (debounced), periodic and config rescans, devices pushed;
- `reload.Reloader`: a config reload, as a pure plan from the diff, then applied;
- `kubelet_restarts.KubeletRestarts`: kubelet restarts counted (never nudged);
- `runtime_guard.RuntimeGuard`: the runtime folder and control socket re-made if removed.

This module keeps what holds them together: start, signals (SIGTERM/SIGINT stop, a second one
kills; SIGHUP reloads; SIGCHLD only wakes the loop, every pass reaps), config polling, status,
the close. Timings come from one `Timings`; operator-visible events call `Observer` hooks.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from common import exitcodes
from common.config import Config
from common.loop.signals import SignalInbox
from common.messages import Message, Status, WorkerStatus, type_name
from supervisor import zygote_client
from supervisor.cdi_runtime import CDI_RUNTIME_REQUIREMENT
from supervisor.control import ControlChannel, endpoint_for
from supervisor.device_selections import DeviceSelections
from supervisor.device_sync import DeviceSync, Scanner
from supervisor.kubelet_restarts import KubeletRestarts
from supervisor.leftovers import remove_leftovers, remove_stale_cdi_specs
from supervisor.lifecycle import Lifecycle
from supervisor.loop import Loop
from supervisor.observer import Observer
from supervisor.options import Options as Options  # re-exported: the CLI and tests use it
from supervisor.peers import Peers
from supervisor.pods import PodResources
from supervisor.reload import Reloader
from supervisor.restart_policy import RestartPolicy
from supervisor.running_config import RunningConfig
from supervisor.runtime_dir import RuntimeDir, RuntimeDirError, stop_orphaned_workers
from supervisor.runtime_guard import RuntimeGuard
from supervisor.timings import Timings
from supervisor.watch.config import ConfigWatch
from supervisor.watch.kubelet import KubeletSocketWatch
from supervisor.worker_process import Spawner, WorkerProcess, start_worker
from supervisor.worker_table import WorkerTable

LOG = logging.getLogger(__name__)


class Arbiter:
    def __init__(
        self,
        options: Options,
        config: Config,
        config_bytes: bytes,
        observer: Observer | None = None,
        policy: RestartPolicy | None = None,
        timings: Timings | None = None,
        clock: Callable[[], float] = time.monotonic,
        spawner: Spawner | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        self.options = options
        self.running = RunningConfig(config)
        self.timings = timings = timings or Timings()
        self.settings = options.worker_settings(timings.heartbeat_interval)
        self.observer = observer or Observer()
        self.table = WorkerTable(policy or timings.restart, on_change=self._state_changed)
        self.devices = DeviceSelections()
        self.pods = PodResources(options.pod_resources_socket, options.pod_resources_interval)
        self.loop = Loop(timings, clock, self._loop_error, self._error_burst)
        self.timers = self.loop.timers
        self.config_watch = ConfigWatch(options.config_file)
        self.config_watch.mark_seen(config_bytes)
        self.runtime = RuntimeDir(options.runtime_dir)
        self.control: ControlChannel | None = None
        self.started = time.time()
        self.exit_code: int = exitcodes.OK
        self.lifecycle = Lifecycle(
            self.table,
            self.loop,
            timings,
            self.settings,
            endpoint_for(options.runtime_dir),
            (options.log_level, options.log_format),
            self._send,
            self._observe,
            self.observer,
            spawner or self._start_worker,
            self.devices,
            self.pods.held_ids,
        )
        self.peers = Peers(self.lifecycle, self._send, self._status, self._observe, self.observer)
        sync_args: dict[str, Any] = {"scanner": scanner} if scanner is not None else {}
        self.sync = DeviceSync(
            options.host_root,
            self.devices,
            self.lifecycle,
            self.running,
            self._observe,
            self.observer,
            **sync_args,
        )
        self.reloader = Reloader(
            self.lifecycle,
            self.sync,
            self.running,
            self._observe,
            self.observer,
        )
        self.kubelet = KubeletRestarts(
            KubeletSocketWatch(options.device_plugin_dir, watch=False),  # watching from start()
            self.table,
            self.loop,
            timings,
            self._observe,
            self.observer,
        )
        self.guard = RuntimeGuard(
            self.runtime, self.loop, timings, self._control_intact, self._rebind
        )
        self._signals: SignalInbox | None = None
        self.zygote: zygote_client.Zygote | None = None
        self._extra_fds: tuple[int, ...] = ()
        self.loop.every_pass.append(("reap", self.lifecycle.reap))
        self.loop.every_pass.append(("pods", self._on_pods))

    # ---- what tests and observers read -------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.lifecycle.stopping

    @property
    def loop_errors(self) -> dict[str, int]:
        return self.loop.errors

    @property
    def config(self) -> Config:
        return self.running.config

    @property
    def config_loaded(self) -> float:
        return self.running.loaded_at

    def worker_statuses(self) -> tuple[WorkerStatus, ...]:
        return self.table.statuses(self.devices.selected)

    def begin_shutdown(self, reason: str) -> None:
        self.lifecycle.begin_shutdown(reason)

    def apply_config(self, new: Config) -> None:
        self.reloader.apply_config(new)

    # ---- entry -------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.runtime.acquire()
        except RuntimeDirError as err:
            LOG.error("%s", err)
            return exitcodes.FATAL
        try:
            try:
                self._bind()
            except zmq.ZMQError as err:
                LOG.error("cannot bind the control socket in %s: %s", self.runtime.path, err)
                return exitcodes.FATAL
            self._signals = SignalInbox(
                (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
            )
            # The fd only wakes the poll; the inbox is drained on every pass, so a signal that
            # arrives while a handler runs is handled in the same pass.
            self.loop.add_reader(self._signals.fileno(), "signals", None)
            self.loop.every_pass.insert(0, ("signals", self._on_signals))
            # The workers' fork server, started first so its imports overlap ours.
            self.zygote = zygote_client.install(
                self.lifecycle.endpoint, self.options.log_level, self.options.log_format
            )
            stop_orphaned_workers(self.lifecycle.endpoint, self.timings.orphan_wait)
            self._open_uevents()
            self._start()
            self._run_loop()
            return self.exit_code
        except Exception:
            LOG.exception("the supervisor loop failed (a bug: please report it); stopping")
            self._stop_in_order()
            return exitcodes.FATAL
        finally:
            self._close()

    def _bind(self) -> None:
        self.control = ControlChannel(self.runtime.path)
        self.loop.add_reader(self.control.socket, "control", self._on_control)

    def _control_intact(self) -> bool:
        return self.control is not None and self.control.intact()

    def _rebind(self) -> None:
        old = self.control
        if old is not None:
            self.loop.remove_reader(old.socket)
            old.close()
        self.control = None
        self._bind()

    def _stop_in_order(self) -> None:
        """After the loop itself failed: the normal stop ladder, if the loop can still turn."""
        if self._signals is None or self.control is None or not self.lifecycle.running():
            return
        try:
            self.begin_shutdown("the supervisor loop failed")
            self._run_loop()
        except Exception:
            LOG.exception("stopping the workers in order failed too; killing them")

    def _start(self) -> None:
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
            LOG.info("CDI mode: %s", CDI_RUNTIME_REQUIREMENT)
            remove_stale_cdi_specs(
                self.options.cdi_dir, {r.full_name for r in self.config.resources}
            )
        self.sync.rescan("start")
        names = [r.resource_name for r in self.config.resources]
        # Zygote ready in time: every worker of the start is forked in one request.
        if self.zygote is not None and self.zygote.wait_ready(zygote_client.READY_TIMEOUT):
            self.zygote.prefork(names, self.lifecycle.endpoint)
        for resource in self.config.resources:
            self.lifecycle.spawn(self.table.add(resource), "configured")
        timers, timings = self.timers, self.timings
        timers.every(("heartbeat",), timings.heartbeat_interval, self.lifecycle.heartbeat)
        timers.every(("config",), timings.config_poll_interval, self._config_tick)
        timers.every(("zygote",), timings.heartbeat_interval, self._maintain_zygote)
        self.kubelet.start()
        self.guard.start()
        self.sync.schedule_periodic()
        self._start_pods()
        self._join_observer()
        self._observe(self.observer.started, self)

    def _start_pods(self) -> None:
        spec, fd = self.pods.child_spec(), self.pods.fileno()
        if spec is not None:
            self.lifecycle.adopt(spec)
        if fd is not None:
            self.loop.add_reader(fd, "pods", None)  # read on every pass: `_on_pods`

    def _on_pods(self) -> None:
        # Every pass, not only when the pipe is readable: the reader also notices a lost
        # kubelet; it never blocks. Held IDs are checked every pass too: a reload may have
        # changed rdmaHcaMax since the last snapshot.
        if self.pods.read():
            self._observe(self.observer.pods_listed, self.pods.rows, self.pods.available)
        self.reloader.keep_held_ids(self.pods.known())

    def _join_observer(self) -> None:
        try:
            for spec in self.observer.children():
                self.lifecycle.adopt(spec)
        except Exception:
            LOG.exception("observer children failed; carrying on without them")
        try:
            self._extra_fds = tuple(self.observer.poll_fds())
        except Exception:
            LOG.exception("observer poll_fds failed; carrying on without them")
        for fd in self._extra_fds:
            self.loop.add_reader(fd, "observer", None)

    def _run_loop(self) -> None:
        while True:
            ready = self.loop.turn(self._wait())
            readable = {fd for fd in self._extra_fds if fd in ready}
            self._observe(self.observer.loop_turned, readable)
            if self.stopping and not self.lifecycle.running():
                return
            if self.lifecycle.overran():
                LOG.error("the stop ladder overran its budget; killing what is left")
                return

    def _close(self) -> None:
        for helper in self.lifecycle.helpers:
            helper.stopping = True
            helper.kill()  # only after an error in the loop itself, or a stop budget overrun
        for record in self.table:
            if record.proc is not None:  # only after an error in the loop itself
                record.proc.kill()
                remove_leftovers(record.served or record.config, self.settings)
        zygote_client.uninstall()
        self.guard.close()
        self.kubelet.watch.close()
        if self.control is not None:
            self.control.close()
        if self._signals is not None:
            self._signals.close()
        self.runtime.release()
        self.pods.stop()
        self._observe(self.observer.stopped)
        LOG.info("supervisor stopped")

    def _start_worker(
        self, resource_name: str, endpoint: str, log_level: str, log_format: str
    ) -> WorkerProcess:
        """The production spawner: forked by the zygote when it runs, else a fresh process."""
        return start_worker(resource_name, endpoint, log_level, log_format, self.zygote)

    def _maintain_zygote(self) -> None:
        if self.zygote is not None and not self.stopping:
            self.zygote.maintain()  # a dead zygote is replaced after a backoff

    def _wait(self) -> float | None:
        """The longest the next poll may wait, as the pods reader and the observer wish."""
        try:
            wishes = [self.observer.poll_timeout(), self.pods.timeout()]
        except Exception:
            LOG.exception("observer poll_timeout failed; carrying on")
            wishes = [self.pods.timeout()]
        known = [w for w in wishes if w is not None]
        return min(known) if known else None

    def _observe(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            LOG.exception("observer %s failed; carrying on", getattr(hook, "__name__", hook))

    def _loop_error(self, event: str) -> None:
        self._observe(self.observer.loop_error, event)

    def _error_burst(self, why: str) -> None:
        if not self.stopping:
            self.exit_code = exitcodes.FATAL
            self.begin_shutdown(why)

    # ---- start-up helpers --------------------------------------------------------------------

    def _open_uevents(self) -> None:
        if self.options.uevent_source == "off":
            LOG.info("uevent monitor off; device changes are seen by the periodic rescan only")
            return
        from supervisor.watch.uevents import open_monitor  # pyudev is loaded only when used

        self.sync.uevents = open_monitor(self.options.uevent_source)
        self.loop.add_reader(self.sync.uevents.fileno(), "uevents", self.sync.on_uevents)

    def _on_signals(self) -> None:
        if self._signals is None:
            return
        for signum in self._signals.drain():
            if signum in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(signum).name
                if self.stopping:
                    LOG.warning("%s again while stopping: killing the workers now", name)
                    self.lifecycle.kill_all()
                else:
                    self.begin_shutdown(f"{name} received")
            elif signum == signal.SIGHUP:
                LOG.info("SIGHUP: reading the config file now")
                self.poll_config(forced=True)

    def _on_control(self) -> None:
        control = self.control
        if control is None:
            return
        for peer, msg in control.receive():
            self.loop.guarded(f"message:{type_name(msg)}", self.peers.on_message, peer, msg)

    def _send(self, peer: bytes, msg: Message) -> bool:
        return self.control is not None and self.control.send(peer, msg)

    def _status(self, parent: str) -> Status:
        return Status(
            pid=os.getpid(),
            started=self.started,
            config_file=self.options.config_file,
            config_loaded=self.config_loaded,
            grpc_loaded="grpc" in sys.modules,
            workers=self.worker_statuses(),
            use_cdi=self.settings.use_cdi,
            last_reload=self.reloader.last_reload,
            rdma_netns_mode=self.sync.netns_mode,
            metrics_endpoint=self.observer.endpoint_status(),  # a raise costs this answer only
            node_problem=self.sync.node_problem,
            parent=parent,
        )

    def _state_changed(self, record: Any, previous: Any, reason: str) -> None:
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

    # ---- config ------------------------------------------------------------------------------

    def _config_tick(self) -> None:
        if not self.stopping:
            self.poll_config(forced=False)

    def poll_config(self, forced: bool) -> None:
        self.reloader.poll(self.config_watch, self.options.config_file, forced)
