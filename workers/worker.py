"""The worker's shell: one resource, one process, one loop (worker process, main thread).

It says hello to the supervisor, waits for its configure, and from then on follows messages. The
registration with the kubelet is `workers.registration_machine` (pure); this module carries out its
actions and feeds it what happened: serving (`workers.serving`), the two calls
(`workers.registration`), the socket folders' watch (`workers.socket_folder_watch`), CDI sync
(`workers.cdi_sync`), the control link (`workers.control_link`). gRPC and helper threads post
events (`workers.events`); every deadline is a `common.loop.timers` timer; OS signals arrive
through a `SignalInbox`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq

from common import exitcodes
from common.config import ResourceConfig
from common.devices import Candidate
from common.kubelet_socket import KUBELET_SOCKET
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
    Stop,
    WorkerSettings,
    type_name,
)
from workers import cdi, registration
from workers import registration_io as fsm
from workers.cdi_sync import CdiSync
from workers.control_link import ControlLink
from workers.device_set import DeviceSet
from workers.events import EventQueue, RegisterDone
from workers.plan import make_plan
from workers.registration_machine import RegistrationMachine
from workers.servicer import Counters, StreamHub
from workers.serving import Serving, choose_mode, serving_key
from workers.socket_folder_watch import SocketFolderWatch
from workers.timings import WorkerTimings
from workers.watch_events import WatchEvents

LOG = logging.getLogger("workers")


class Worker:
    def __init__(
        self,
        resource_name: str,
        control: str,
        connect_timeout: float,
        timings: WorkerTimings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resource_name = resource_name
        self.connect_timeout = connect_timeout
        self.t = timings or WorkerTimings()
        self.clock = clock
        self.link = ControlLink(resource_name, control, clock)
        self.events = EventQueue()
        self.counters = Counters()
        self.hub = StreamHub(self.events, self.counters)
        self.serving = Serving(self.hub, self.counters, self.events, self.t, self._report)
        self.cdi = CdiSync(self.t, self._report, self.counters.cdi_write_failed)
        self.timers = Timers(clock)
        self.devices = DeviceSet(self.hub, self.cdi, self.timers)
        self.machine = RegistrationMachine(self.t, clock)
        self.watch_events: WatchEvents | None = None
        self._feed_queue: collections.deque[fsm.Event] = collections.deque()
        self.poller = zmq.Poller()

        self.resource: ResourceConfig | None = None
        self.settings: WorkerSettings | None = None
        self.mode = ""
        self.registered_since = time.time()
        self.stopped = False
        self.exit_code: int | None = None

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        inbox = SignalInbox((signal.SIGTERM, signal.SIGINT))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the supervisor's business
        self.poller.register(self.link.sock, zmq.POLLIN)
        self.poller.register(self.events.fileno(), zmq.POLLIN)
        self.poller.register(inbox.fileno(), zmq.POLLIN)
        self.timers.every("hello", self.t.hello_interval, self._hello, first=0.0)
        self.timers.call_later("connect-timeout", self.connect_timeout, self._no_configure)
        LOG.info("worker starting control=%s", self.link.endpoint)
        try:
            while self.exit_code is None:
                # Rounded up: a deadline 0.4 ms away must not spin the loop until it is due.
                ready = dict(self.poller.poll(math.ceil(self.timers.timeout(1.0) * 1000)))
                for signum in inbox.drain() if inbox.fileno() in ready else ():
                    name = signal.Signals(signum).name
                    LOG.info("received %s; shutting down", name)
                    self._shutdown(f"{name} received", exitcodes.OK)
                self._step(ready)
            return self.exit_code
        except Exception as exc:
            LOG.exception("worker failed; shutting down")
            with contextlib.suppress(Exception):  # the supervisor shows it (issue 11)
                self._send(Error("crashed", f"{type(exc).__name__}: {exc}"[:300]))
            try:
                self._shutdown("internal error", exitcodes.FATAL)
            except Exception:
                LOG.exception("clean shutdown failed too")
            return exitcodes.FATAL

    def _step(self, ready: dict[Any, int]) -> None:
        # Only what poll() said is readable: reading the others costs a failed syscall (and a
        # ZeroMQ exception) each, on every wake-up of every worker.
        if self.link.sock in ready:
            for msg in self.link.receive():
                if self.exit_code is None:
                    self._on_message(msg)
        if self.events.fileno() in ready:
            for event in self.events.drain():
                if isinstance(event, RegisterDone) and event.superseded and self.watch_events:
                    self.watch_events.check_own_socket()  # why it was not sent, before a retry
                self._feed(event)
        if (
            self.watch_events is not None
            and self.exit_code is None
            and self.watch_events.ready(ready)
        ):
            self.watch_events.read()
        for due in self.timers.take_due():
            if self.exit_code is None and due.callback is not None:
                due.callback()

    def _hello(self) -> None:
        self._send(Hello(self.resource_name, os.getpid()))

    def _no_configure(self) -> None:
        if self.settings is None:
            LOG.error(
                "no configure from the supervisor within %.0fs control=%s; exiting",
                self.connect_timeout,
                self.link.endpoint,
            )
            self._shutdown("no configure from the supervisor", exitcodes.SUPERVISOR_LOST)

    def _interval(self) -> float:
        return self.settings.heartbeat_interval if self.settings is not None else 1.0

    def _heartbeat(self) -> None:
        self._send(Heartbeat(self.counters.snapshot()))

    def _liveness(self) -> None:
        silent = self.link.silent_for()
        if silent > self.t.silent_periods * self._interval():
            LOG.error(
                "nothing heard from the supervisor for %.1fs; shutting down so no orphan serves",
                silent,
            )
            self._shutdown("supervisor lost", exitcodes.SUPERVISOR_LOST)

    # ---- control channel --------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        self.link.send(msg)

    def _report(self, code: str, message: str) -> None:
        self._send(Error(code, message))

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            return
        if isinstance(msg, Configure):
            if msg.resource.resource_name != self.resource_name:
                text = (
                    f"configure for {msg.resource.resource_name!r} sent to the worker of "
                    f"{self.resource_name!r}"
                )
                LOG.error("%s; ignored", text)
                self._send(Error("wrong_resource", text, parent=msg.id))
                return
            self._apply(msg.resource, msg.settings, msg.devices)
        elif isinstance(msg, Devices):
            if self.resource is None or self.settings is None:
                self._send(Error("not_configured", "devices before configure", parent=msg.id))
                self._hello()
                return
            self._apply(self.resource, self.settings, msg.devices)
        elif isinstance(msg, Stop):
            LOG.info("stop requested: %s", msg.reason or "no reason given")
            self._shutdown(msg.reason or "stop requested", exitcodes.OK)
        elif isinstance(msg, Error):
            LOG.warning("supervisor reports error code=%s: %s", msg.code, msg.message)
        else:
            text = f"a worker does not accept {type_name(msg)}"
            self._send(Error("unexpected", text, parent=msg.id))

    def _apply(
        self, resource: ResourceConfig, settings: WorkerSettings, devices: tuple[Candidate, ...]
    ) -> None:
        try:
            plan = make_plan(resource, devices, settings.use_cdi)
        except cdi.CdiNameError as exc:
            LOG.error("cannot serve resource: %s", exc)
            self._send(Error("config_invalid", str(exc)))
            self._shutdown("config invalid", exitcodes.CONFIG_INVALID)
            return
        first = self.settings is None or self.resource is None
        # Only where and how we register needs a new server and registration; the CDI settings
        # change the Allocate answer and the spec file, the heartbeat only the loop's pace.
        reserve = (
            self.settings is not None
            and self.resource is not None
            and serving_key(settings, resource) != serving_key(self.settings, self.resource)
        )
        if first or settings.heartbeat_interval != self._interval():
            interval = settings.heartbeat_interval
            self.timers.every("heartbeat", interval, self._heartbeat, first=0.0)
            self.timers.every("liveness", interval / 4, self._liveness)
        self.resource, self.settings = resource, settings
        self.devices.apply(plan, settings)
        if first or reserve:
            if reserve:
                LOG.info("registration settings or resource name changed; serving afresh")
            self._start_serving(settings)
        if first:
            self.timers.cancel("hello")
            self.timers.cancel("connect-timeout")
            self._send_ready("configured")

    def _start_serving(self, settings: WorkerSettings) -> None:
        self.mode = choose_mode(settings)
        if self.watch_events is not None:
            self.watch_events.close()
        own = self._socket_path()
        watch = SocketFolderWatch(settings.device_plugin_dir, own)
        events = WatchEvents(watch, own, self.serving, self.poller, self._feed, self.clock)
        self.watch_events = events
        events.schedule(self.timers, self.t)
        self._feed(fsm.Reset(self.mode, "settings changed"))

    def _kubelet_socket(self) -> str:
        assert self.settings is not None
        return os.path.join(self.settings.device_plugin_dir, KUBELET_SOCKET)

    def _socket_path(self) -> str:
        assert self.settings is not None
        folder = (
            self.settings.plugins_registry_dir
            if self.mode == "watcher"
            else self.settings.device_plugin_dir
        )
        return os.path.join(os.path.abspath(folder), f"{self.resource_name}.sock")

    def _full_name(self) -> str:
        return self.resource.full_name if self.resource is not None else ""

    def _send_ready(self, reason: str) -> None:
        self._send(Ready(self.machine.registered, self.mode, self.registered_since, reason))

    # ---- the state machine's actions --------------------------------------------------------

    def _feed(self, event: fsm.Event) -> None:
        """Hand `event` to the machine and carry out what it says (events it causes queue up)."""
        self._feed_queue.append(event)
        if len(self._feed_queue) > 1:
            return  # already draining further up the stack
        while self._feed_queue:
            for action in self.machine.handle(self._feed_queue[0]):
                self._do(action)
            self._feed_queue.popleft()

    def _do(self, action: fsm.Action) -> None:
        if self.stopped:
            return
        handlers: dict[type, Callable[[Any], None]] = {
            fsm.Serve: self._serve,
            fsm.StopServer: lambda _: self.serving.stop(),
            fsm.SelfCheck: self._self_check,
            fsm.Register: self._register,
            fsm.SetTimer: lambda a: self.timers.call_later(
                "registration", a.delay, self._timer_due
            ),
            fsm.CancelTimer: lambda _: self.timers.cancel("registration"),
            fsm.ReportReady: self._report_ready,
            fsm.ReportError: lambda a: self._report(a.code, a.message),
            fsm.Count: lambda a: self.counters.add(a.name),
        }
        handlers[type(action)](action)

    def _serve(self, action: fsm.Serve) -> None:
        assert self.resource is not None
        if action.relink:
            relinked = self.serving.relink()
            if relinked is not None:
                self._feed(fsm.Served(relinked.generation))
                return
            self.serving.stop()
        server = self.serving.serve(
            self._socket_path(), self.resource.full_name, self.mode == "watcher"
        )
        if server is None:
            self._feed(fsm.ServeFailed(self.serving.in_use))
        else:
            LOG.info("serving mode=%s", self.mode)
            self._feed(fsm.Served(server.generation))

    def _self_check(self, action: fsm.SelfCheck) -> None:
        server = self.serving.server
        if server is not None and server.generation == action.generation:
            registration.start_self_check(
                self.events, action.generation, server.socket_path, self.t.self_check_timeout
            )

    def _report_ready(self, action: fsm.ReportReady) -> None:
        self.registered_since = time.time()
        if action.registered:
            LOG.info("%s resource=%s mode=%s", action.reason, self._full_name(), self.mode)
        self._send_ready(action.reason)

    def _timer_due(self) -> None:
        self._feed(fsm.TimerDue())

    def _register(self, action: fsm.Register) -> None:
        server = self.serving.server
        assert server is not None and self.resource is not None
        generation = action.generation
        old = self.hub.end_all()
        if old:
            # Registering beside a live stream and ending it later makes kubelets 1.26-1.35
            # drop the new registration (kubernetes#121994): end it first, wait until it is over.
            LOG.info("ending %d old ListAndWatch stream(s) before registering again", len(old))

        def prepare() -> bool:
            if old:
                self.hub.wait_over(old, self.t.end_stream_wait)
            current = self.serving.server
            if current is None or current.generation != generation or not current.intact():
                # Replaced, or our socket is gone (a new kubelet wiped it): the kubelet would
                # dial a missing socket and wait ~1 s before it tries again.
                return False
            self.hub.claim(action.claim)
            return True

        registration.start_register(
            self.events,
            action.attempt,
            generation,
            self._kubelet_socket(),
            self.resource.full_name,
            os.path.basename(server.socket_path),
            self.t.register_timeout,
            prepare,
        )

    # ---- shutdown ---------------------------------------------------------------------------

    def _shutdown(self, reason: str, code: int) -> None:
        """End streams, stop the server within 2 s, remove socket and CDI spec; idempotent."""
        if self.exit_code is None:
            self.exit_code = code
        if self.stopped:
            return
        self.machine.handle(fsm.Stop())
        self.stopped = True
        self.serving.close()
        self.cdi.remove()
        if self.watch_events is not None:
            self.watch_events.close()
        self.registered_since = time.time()
        self._send(Ready(False, self.mode, self.registered_since, f"stopped: {reason}"))
        self.link.close()
        self.events.close()
        LOG.info("worker stopped: %s", reason)
