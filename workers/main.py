"""The worker's main loop: one resource, one process (worker process, main thread).

`python -m workers --resource NAME --control ipc://...` connects a ZeroMQ DEALER to the
supervisor, says hello, waits for its configure, and from then on only follows messages. All
state lives in this thread; gRPC and helper threads post events (`workers.events`).

Each pass of the loop reconciles what is with what should be, so no single event is
load-bearing:
- our socket must exist and be the one our server listens on, or we serve afresh (a new server
  "generation");
- classic mode: we must be registered for (this generation, this `kubelet.sock`), or an attempt
  is started, with a backoff capped at 1 s while the kubelet is absent or refuses;
- watcher mode: the kubelet's plugin watcher must have told us `registered`, and a refusal or a
  lost stream re-creates the socket so the watcher sees it again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

import grpc
import zmq

from common import exitcodes
from common.config import ResourceConfig
from common.devices import Candidate
from common.messages import (
    Configure,
    Devices,
    Error,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Ready,
    Reregister,
    Stop,
    WorkerSettings,
    decode,
    encode,
    type_name,
)
from workers import cdi, registration
from workers.events import AttemptDone, Event, EventQueue, StreamLost, StreamOpened, WatcherStatus
from workers.kubelet_watch import POLL_INTERVAL, KubeletSocketWatch, socket_identity
from workers.plan import Plan, make_plan
from workers.servicer import Counters, StreamHub, add_services, publish

LOG = logging.getLogger("workers")

KUBELET_SOCKET = "kubelet.sock"
HELLO_INTERVAL = 1.0
#: Heartbeat periods of silence after which the supervisor counts as gone.
SILENT_PERIODS = 3
#: Shutdown budget: the server must be stopped within 2 s.
STOP_GRACE = 0.5
STOP_BUDGET = 2.0
GRPC_THREADS = 8
#: An attempt running this long against a server or kubelet that has since gone is abandoned.
STUCK_ATTEMPT = 1.0
#: sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass
class _Server:
    generation: int
    server: grpc.Server
    socket_path: str
    identity: tuple[int, int, int] | None

    def intact(self) -> bool:
        return self.identity is not None and socket_identity(self.socket_path) == self.identity


class Worker:
    def __init__(self, resource_name: str, control: str, connect_timeout: float) -> None:
        self.resource_name = resource_name
        self.control = control
        self.connect_timeout = connect_timeout

        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{resource_name}/{os.getpid()}".encode())
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.connect(control)

        self.events = EventQueue()
        self.signal_r, self.signal_w = socket.socketpair()
        self.signal_r.setblocking(False)
        self.signal_w.setblocking(False)
        self.signals: list[int] = []

        self.counters = Counters()
        self.hub = StreamHub(self.events, self.counters)
        self.pool = ThreadPoolExecutor(GRPC_THREADS, thread_name_prefix="grpc")

        self.resource: ResourceConfig | None = None
        self.settings: WorkerSettings | None = None
        self.devices: tuple[Candidate, ...] = ()
        self.plan: Plan | None = None
        self.mode = ""
        self.cdi_file: tuple[str, str] | None = None  # (dir, file name) we wrote

        self.server: _Server | None = None
        self.generation = 0
        self.serve_failures = 0
        self.next_serve_at = 0.0

        self.kubelet: KubeletSocketWatch | None = None
        self.kubelet_seen = False
        self.registered = False
        self.registered_since = time.time()
        self.registered_for: tuple[int, tuple[int, int, int] | None] | None = None
        self.attempt = 0
        self.attempt_in_flight = False
        self.attempt_key: tuple[int, tuple[int, int, int] | None] = (-1, None)
        self.attempt_started = 0.0
        self.attempt_lost = False  # the in-flight attempt is stale (stream broke, reregister)
        self.self_checked_generation = -1
        self.failures = 0
        self.next_attempt_at = 0.0

        now = time.monotonic()
        self.started = now
        self.last_heard = now
        self.next_hello = now
        self.next_heartbeat = now

    # ---- entry ---------------------------------------------------------------------------

    def run(self) -> int:
        signal.set_wakeup_fd(self.signal_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the supervisor's business
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.events.fileno(), zmq.POLLIN)
        poller.register(self.signal_r.fileno(), zmq.POLLIN)
        LOG.info("worker starting control=%s", self.control)
        try:
            while True:
                timeout = self._poll_timeout()
                poller.poll(int(timeout * 1000))
                code = self._step()
                if code is not None:
                    return code
        except Exception:
            LOG.exception("worker failed; shutting down")
            try:
                self._shutdown("internal error")
            except Exception:
                LOG.exception("clean shutdown failed too")
            return exitcodes.FATAL

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)  # only record: the loop acts

    def _poll_timeout(self) -> float:
        now = time.monotonic()
        if self.settings is None:
            return max(0.0, min(self.next_hello - now, HELLO_INTERVAL))
        deadlines = [self.next_heartbeat, now + POLL_INTERVAL]
        if self.server is None:
            deadlines.append(self.next_serve_at)
        elif self._wants_attempt():
            deadlines.append(self.next_attempt_at)
        return max(0.0, min(deadlines) - now)

    def _step(self) -> int | None:
        try:
            while self.signal_r.recv(512):
                pass
        except BlockingIOError:
            pass
        if self.signals:
            name = signal.Signals(self.signals[0]).name
            LOG.info("received %s; shutting down", name)
            self._shutdown(f"{name} received")
            return exitcodes.OK

        code = self._read_control()
        if code is not None:
            return code
        for event in self.events.drain():
            self._on_event(event)

        now = time.monotonic()
        if self.settings is None:
            if now - self.started > self.connect_timeout:
                LOG.error(
                    "no configure from the supervisor within %.0fs control=%s; exiting",
                    self.connect_timeout,
                    self.control,
                )
                self._shutdown("no configure from the supervisor")
                return exitcodes.SUPERVISOR_LOST
            if now >= self.next_hello:
                self._send(Hello(self.resource_name, os.getpid()))
                self.next_hello = now + HELLO_INTERVAL
            return None

        interval = self.settings.heartbeat_interval
        if now - self.last_heard > SILENT_PERIODS * interval:
            LOG.error(
                "nothing heard from the supervisor for %.1fs; shutting down so no orphan serves",
                now - self.last_heard,
            )
            self._shutdown("supervisor lost")
            return exitcodes.SUPERVISOR_LOST
        self._reconcile(now)
        if now >= self.next_heartbeat:
            self._send(Heartbeat(self.counters.snapshot()))
            self.next_heartbeat = now + interval
        return None

    # ---- control channel -----------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        try:
            self.sock.send(encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            LOG.warning("control channel full; dropped %s", type_name(msg))

    def _read_control(self) -> int | None:
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            self.last_heard = time.monotonic()
            try:
                msg = decode(frame)
            except ProtocolError as exc:
                LOG.error("refused a control message: %s", exc)
                self._send(Error("protocol", str(exc)))
                continue
            code = self._on_message(msg)
            if code is not None:
                return code

    def _on_message(self, msg: Message) -> int | None:
        if isinstance(msg, Heartbeat):
            return None
        if isinstance(msg, Configure):
            return self._configure(msg)
        if isinstance(msg, Devices):
            if self.resource is None or self.settings is None:
                self._send(Error("not_configured", "devices before configure", parent=msg.id))
                self._send(Hello(self.resource_name, os.getpid()))
                return None
            return self._apply(self.resource, self.settings, msg.devices)
        if isinstance(msg, Reregister):
            LOG.info("re-registering on request: %s", msg.reason or "no reason given")
            self._lose_registration(msg.reason or "supervisor asked")
            # An attempt already in flight may predate what the supervisor saw: do another.
            self.attempt_lost = self.attempt_in_flight
            self.next_attempt_at = 0.0
            if self.mode == "watcher":
                self._stop_server()
            return None
        if isinstance(msg, Stop):
            LOG.info("stop requested: %s", msg.reason or "no reason given")
            self._shutdown(msg.reason or "stop requested")
            return exitcodes.OK
        if isinstance(msg, Error):
            LOG.warning("supervisor reports error code=%s: %s", msg.code, msg.message)
            return None
        self._send(Error("unexpected", f"a worker does not accept {type_name(msg)}", parent=msg.id))
        return None

    def _configure(self, msg: Configure) -> int | None:
        if msg.resource.resource_name != self.resource_name:
            text = (
                f"configure for {msg.resource.resource_name!r} sent to the worker of "
                f"{self.resource_name!r}"
            )
            LOG.error("%s; ignored", text)
            self._send(Error("wrong_resource", text, parent=msg.id))
            return None
        return self._apply(msg.resource, msg.settings, msg.devices)

    def _apply(
        self, resource: ResourceConfig, settings: WorkerSettings, devices: tuple[Candidate, ...]
    ) -> int | None:
        try:
            plan = make_plan(resource, devices, settings.use_cdi)
        except cdi.CdiNameError as exc:
            LOG.error("cannot serve resource: %s", exc)
            self._send(Error("config_invalid", str(exc)))
            self._shutdown("config invalid")
            return exitcodes.CONFIG_INVALID

        first = self.settings is None
        identity_changed = not first and (
            settings != self.settings or resource.full_name != self._full_name()
        )
        if identity_changed:
            LOG.info("serving settings or resource name changed; serving afresh")
            self._stop_server()
            self._remove_cdi()
            self._lose_registration("settings changed")
        self.resource, self.settings, self.devices = resource, settings, devices
        if first or identity_changed:
            self.mode = self._choose_mode(settings)
            self.kubelet = KubeletSocketWatch(self._kubelet_socket())
            self.kubelet_seen = self.kubelet.current is not None
            self.next_heartbeat = time.monotonic()
            self.last_heard = time.monotonic()
        self._write_cdi(plan)
        self.plan = plan
        self.hub.publish(publish(plan))
        LOG.info(
            "device set applied matched=%d usable=%d ids=%d health=%s numa=%s",
            len(plan.matched),
            len(plan.usable),
            len(plan.device_ids),
            plan.health,
            ",".join(map(str, plan.numa_nodes)) or "none",
        )
        if first:
            self._send_ready("configured")
        return None

    def _full_name(self) -> str:
        return self.resource.full_name if self.resource is not None else ""

    def _choose_mode(self, settings: WorkerSettings) -> str:
        if settings.registration_mode != "auto":
            return settings.registration_mode
        registry = settings.plugins_registry_dir
        return "watcher" if registry and os.path.isdir(registry) else "classic"

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

    def _send_ready(self, reason: str) -> None:
        self._send(Ready(self.registered, self.mode, self.registered_since, reason))

    # ---- CDI -----------------------------------------------------------------------------

    def _write_cdi(self, plan: Plan) -> None:
        """Before the plan is published, so no CDI name is handed out before its spec exists."""
        if self.settings is None or not self.settings.use_cdi:
            return
        folder, name = self.settings.cdi_dir, cdi.spec_file_name(plan.resource)
        spec = cdi.build_spec(plan.resource, plan.usable)
        try:
            if spec is None:
                if cdi.remove_spec(folder, name):
                    LOG.info("CDI spec removed (no usable device) file=%s", name)
                self.cdi_file = None
            else:
                if cdi.write_spec(folder, name, spec):
                    LOG.info("CDI spec written file=%s devices=%d", name, len(spec["devices"]))
                self.cdi_file = (folder, name)
        except OSError as exc:
            LOG.error(
                "cannot write CDI spec dir=%s file=%s: %s; containers will fail to start until "
                "the folder is writable",
                folder,
                name,
                exc,
            )
            self._send(Error("cdi_write_failed", f"{folder}/{name}: {exc}"))

    def _remove_cdi(self) -> None:
        if self.cdi_file is not None:
            folder, name = self.cdi_file
            try:
                cdi.remove_spec(folder, name)
            except OSError as exc:
                LOG.warning("cannot remove CDI spec %s/%s: %s", folder, name, exc)
            self.cdi_file = None

    # ---- serving and registration --------------------------------------------------------

    def _registration_current(self) -> bool:
        if self.mode == "watcher":
            return self.registered
        kubelet = self.kubelet.current if self.kubelet is not None else None
        return (
            self.server is not None
            and self.registered_for == (self.server.generation, kubelet)
            and kubelet is not None
        )

    def _reconcile(self, now: float) -> None:
        if self.kubelet is not None:
            change = self.kubelet.poll()
            if change:
                self._on_kubelet_change(change)

        if self.server is not None and not self.server.intact():
            LOG.warning(
                "own socket %s was removed or replaced (kubelet restart?); serving afresh",
                self.server.socket_path,
            )
            self._stop_server()
            self._lose_registration("own socket removed")
        if self.server is None:
            if now < self.next_serve_at:
                return
            if not self._serve():
                self.serve_failures += 1
                self.next_serve_at = now + registration.backoff(self.serve_failures)
                return
            self.serve_failures = 0

        if self._wants_attempt() and now >= self.next_attempt_at:
            self._start_attempt()

    def _wants_attempt(self) -> bool:
        if self.server is None or self._registration_current():
            return False
        if self.attempt_in_flight and (
            self.attempt_key == self._attempt_key()
            or time.monotonic() - self.attempt_started < STUCK_ATTEMPT
        ):
            # One at a time: parallel Registers make the kubelet replace our endpoint (and
            # break our stream) over and over. Only one stuck on a server or kubelet that is
            # gone is left behind.
            return False
        # Watcher mode, served and checked: the kubelet's plugin watcher calls us.
        return not (
            self.mode == "watcher" and self.self_checked_generation == self.server.generation
        )

    def _on_kubelet_change(self, change: str) -> None:
        if change == "gone":
            LOG.warning("kubelet.sock went away; waiting for the kubelet")
            self._lose_registration("kubelet.sock gone")
            return
        if self.kubelet_seen:
            self.counters.add("kubelet_restarts")
            LOG.info("kubelet.sock %s: the kubelet restarted; registering again", change)
            if self.mode == "classic" and not self._registration_current():
                self._lose_registration("kubelet restarted")
        self.kubelet_seen = True
        self.failures = 0
        self.next_attempt_at = 0.0

    def _serve(self) -> bool:
        assert self.resource is not None
        path = self._socket_path()
        problem = ""
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            problem = (
                f"socket path is {len(os.fsencode(path))} bytes, more than the {MAX_SOCKET_PATH} "
                "a unix socket allows; use a shorter folder"
            )
        else:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self._remove_stale(path)
            except OSError as exc:
                problem = str(exc)
        if problem:
            self._serve_failed(path, problem)
            return False
        self.generation += 1
        server = grpc.server(self.pool, options=[("grpc.so_reuseport", 0)])
        add_services(
            server,
            self.hub,
            self.counters,
            self.events,
            self.generation,
            self.resource.full_name,
            path if self.mode == "watcher" else None,
        )
        try:
            if server.add_insecure_port(f"unix:{path}") == 0:
                raise RuntimeError("gRPC could not bind")
            server.start()
        except RuntimeError as exc:
            server.stop(None)
            self._serve_failed(path, f"{exc} (is the folder writable?)")
            return False
        self.server = _Server(self.generation, server, path, socket_identity(path))
        LOG.info("serving socket=%s generation=%d mode=%s", path, self.generation, self.mode)
        return True

    def _serve_failed(self, path: str, problem: str) -> None:
        # Told once per run of failures; the log keeps repeating at the retry pace.
        LOG.error("cannot serve on %s: %s; retrying", path, problem)
        if self.serve_failures == 0:
            self._send(Error("serve_failed", f"{path}: {problem}"))

    def _remove_stale(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it by hand")
        os.unlink(path)
        LOG.info("removed stale socket %s", path)

    def _stop_server(self) -> None:
        current = self.server
        if current is None:
            return
        self.server = None
        self.hub.end_generation(current.generation)
        current.server.stop(STOP_GRACE).wait(STOP_BUDGET)
        # Only ours: a replaced socket belongs to whoever made it.
        if socket_identity(current.socket_path) == current.identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(current.socket_path)

    def _attempt_key(self) -> tuple[int, tuple[int, int, int] | None]:
        generation = self.server.generation if self.server is not None else -1
        return generation, self.kubelet.current if self.kubelet is not None else None

    def _start_attempt(self) -> None:
        assert self.server is not None and self.resource is not None
        self.attempt_key = self._attempt_key()
        self.attempt_started = time.monotonic()
        self.attempt += 1
        self.hub.attempt = self.attempt
        self.attempt_in_flight = True
        self.attempt_lost = False
        classic = self.mode == "classic"
        registration.start_attempt(
            self.events,
            self.server.generation,
            self.attempt,
            self.server.socket_path,
            self._kubelet_socket() if classic else None,
            self.resource.full_name,
            os.path.basename(self.server.socket_path),
            check_self=self.self_checked_generation != self.server.generation,
        )

    def _lose_registration(self, reason: str) -> None:
        self.registered_for = None
        if self.registered:
            self.registered = False
            self.registered_since = time.time()
            self._send_ready(reason)

    def _on_event(self, event: Event) -> None:
        current = self.server.generation if self.server is not None else -1
        if isinstance(event, AttemptDone):
            self._on_attempt_done(event, current)
        elif isinstance(event, StreamLost):
            if event.generation != current or event.attempt != self.attempt:
                return  # a stream of a server or registration we already replaced
            LOG.warning("ListAndWatch stream broke: the kubelet lost us; registering again")
            if self.attempt_in_flight:
                self.attempt_lost = True
            self._lose_registration("stream broke")
            self.next_attempt_at = 0.0
            if self.mode == "watcher":
                self._stop_server()  # a new socket is how the plugin watcher sees us again
        elif isinstance(event, WatcherStatus):
            if event.generation != current:
                return
            if event.registered:
                self.failures = 0
                self.counters.add("registrations_ok")
                self._set_registered("registered by the plugin watcher")
            else:
                self.counters.add("registrations_failed")
                self.failures += 1
                LOG.error(
                    "the kubelet refused the registration: %s; retrying with a new socket",
                    event.error or "no reason given",
                )
                self._lose_registration(f"refused: {event.error}")
                self._stop_server()
                self.next_serve_at = time.monotonic() + registration.backoff(self.failures)
        elif isinstance(event, StreamOpened):
            pass

    def _on_attempt_done(self, event: AttemptDone, current: int) -> None:
        if event.attempt != self.attempt:
            return
        self.attempt_in_flight = False
        if event.self_check_failed:
            LOG.error("%s; serving afresh", event.error)
            if event.generation == current:
                self._stop_server()
            self._schedule_retry(event.error)
            return
        if event.generation == current:
            self.self_checked_generation = current
        if self.mode == "watcher":
            return
        if event.ok and not self.attempt_lost and event.generation == current:
            self.counters.add("registrations_ok")
            self.failures = 0
            self.registered_for = (event.generation, event.kubelet_identity)
            self._set_registered("registered")
            return
        if event.ok:
            return  # stale success: the loop registers again for what is current
        self._schedule_retry(event.error)

    def _schedule_retry(self, error: str) -> None:
        self.counters.add("registrations_failed")
        self.failures += 1
        delay = registration.backoff(self.failures)
        self.next_attempt_at = time.monotonic() + delay
        log = LOG.warning if self.failures <= 3 or self.failures % 30 == 0 else LOG.debug
        log("registration failed (%d in a row, next try in %.2fs): %s", self.failures, delay, error)

    def _set_registered(self, reason: str) -> None:
        if not self.registered:
            self.registered = True
            self.registered_since = time.time()
            LOG.info("%s resource=%s mode=%s", reason, self._full_name(), self.mode)
            self._send_ready(reason)

    # ---- shutdown ------------------------------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        """End streams, stop the server within 2 s, remove socket and CDI spec; idempotent."""
        self.hub.end_generation(None)
        self._stop_server()
        self._remove_cdi()
        if self.registered:
            self.registered = False
            self.registered_since = time.time()
        self._send(Ready(False, self.mode, self.registered_since, f"stopped: {reason}"))
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.sock.close(linger=200)
        self.events.close()
        LOG.info("worker stopped: %s", reason)


def _setup_logging(resource: str, level: str, fmt: str) -> None:
    if fmt == "json":
        import json

        class _Json(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps(
                    {
                        "time": self.formatTime(record),
                        "level": record.levelname,
                        "process": "worker",
                        "resource": resource,
                        "pid": record.process,
                        "msg": record.getMessage(),
                    }
                )

        handler = logging.StreamHandler()
        handler.setFormatter(_Json())
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s worker resource={resource} pid=%(process)d %(message)s"
            )
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers",
        description="One rdma-shared-dp worker: serves one resource to the kubelet. "
        "Started by the supervisor, never by hand.",
    )
    parser.add_argument("--resource", required=True, help="resourceName this worker serves")
    parser.add_argument("--control", required=True, help="supervisor endpoint, ipc://...")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the supervisor's configure before giving up",
    )
    parser.add_argument("--log-level", default=os.environ.get("RDMA_SHARED_DP_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("RDMA_SHARED_DP_LOG_FORMAT", "text"),
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exitcodes.USAGE if exc.code else exitcodes.OK
    if not args.resource or not args.control.startswith(("ipc://", "tcp://", "inproc://")):
        print(
            "error: --resource must be set and --control must be a ZeroMQ endpoint", file=sys.stderr
        )
        return exitcodes.USAGE
    try:
        _setup_logging(args.resource, args.log_level, args.log_format)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        worker = Worker(args.resource, args.control, args.connect_timeout)
    except zmq.ZMQError as exc:
        LOG.error("cannot connect to the supervisor at %s: %s", args.control, exc)
        return exitcodes.USAGE
    return worker.run()
