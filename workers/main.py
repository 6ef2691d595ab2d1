"""The worker's main loop: one resource, one process (worker process, main thread).

`python -m workers --resource NAME --control ipc://...` connects a ZeroMQ DEALER to the
supervisor, says hello, waits for its configure, and from then on only follows messages. All
state lives in this thread; gRPC and helper threads post events (`workers.events`).

Each pass of the loop reconciles what is with what should be, so no single event is
load-bearing:
- our socket must exist and be the one our server listens on, or we serve afresh (a new server
  "generation");
- classic mode: we must be registered for this generation, or an attempt is started, with a
  backoff capped at 1 s while the kubelet is absent and at 30 s once it refuses;
- watcher mode: the kubelet's plugin watcher must have told us `registered`, and a refusal or a
  lost stream re-creates the socket so the watcher sees it again;
- with `--use-cdi`, the current plan's spec must be on disk, or the write is retried (and
  Allocate refuses meanwhile).

A live ListAndWatch stream of the current registration, on our intact socket, proves the kubelet
still has us: a `reregister` request or a `kubelet.sock` change is then only noted. Registering
again beside a live stream makes kubelets 1.26-1.35 drop the *new* registration as soon as the
old stream ends (kubernetes#121994); when a new registration is really needed, the old stream
is ended first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
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
from workers.events import AttemptDone, Event, EventQueue, StreamLost, WatcherStatus
from workers.kubelet_watch import POLL_INTERVAL, Inode, KubeletSocketWatch, socket_identity
from workers.plan import Plan, make_plan
from workers.servicer import Counters, StreamHub, add_services, publish

LOG = logging.getLogger("workers")

KUBELET_SOCKET = "kubelet.sock"
HELLO_INTERVAL = 1.0
#: Heartbeat periods of silence after which the supervisor counts as gone.
SILENT_PERIODS = 2.5  # with the <= 2 s shutdown, orphans are gone within 5 s of a SIGKILL
#: Shutdown budget: the server must be stopped within 2 s.
STOP_GRACE = 0.5
STOP_BUDGET = 2.0
GRPC_THREADS = 8
#: An attempt running this long against a server or kubelet that has since gone is abandoned.
STUCK_ATTEMPT = 1.0
#: sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Another live server holds our socket path: look again this often (at once if it goes away).
IN_USE_RETRY = 5.0
#: A failed CDI write is retried with this backoff: 50 ms doubling, at most every 2 s.
CDI_RETRY_FIRST = 0.05
CDI_RETRY_CAP = 2.0
#: How long an attempt waits for a stream we ended to be over before it calls Register.
END_STREAM_WAIT = 1.0
#: The kubelet opens ListAndWatch right after Register returns; registered this long without a
#: live stream means the kubelet lost us (a stream break we could not attribute, say).
STREAM_GRACE = 1.0
#: After a success for a replaced server, how long to wait for its stream on the current one.
ADOPT_WAIT = 0.2
#: --resource becomes a file name (<name>.sock) and a routing id.
RESOURCE_ARG = re.compile(r"[A-Za-z0-9_]+\Z")


class SocketInUse(OSError):
    """Our socket path is held by a live server that is not ours."""


def socket_answers(path: str) -> bool:
    """Whether something accepts connections on the unix socket at `path`.

    Only "refused" and "no such file" mean nobody is there; anything else (a full backlog,
    no permission) may be a live server, which we must not delete.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    return True


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
        self.plan: Plan | None = None
        self.published: tuple[Plan, str | None] | None = None  # what the hub serves now
        self.mode = ""
        # (dir, file name, identity) of the spec we wrote: removed at shutdown only if unchanged.
        self.cdi_file: tuple[str, str, cdi.FileIdentity | None] | None = None
        self.cdi_problem: str | None = None  # the current plan's spec is not on disk: why
        self.cdi_failures = 0
        self.next_cdi_at = 0.0

        self.server: _Server | None = None
        self.generation = 0
        self.serve_failures = 0
        self.serve_reported = ""  # error code told to the supervisor in this run of failures
        self.socket_in_use = False
        self.next_serve_at = 0.0

        self.kubelet: KubeletSocketWatch | None = None
        self.kubelet_seen = False
        self.registered = False
        self.registered_since = time.time()
        # (server generation, when its Register was sent, kubelet.sock inode it registered with)
        self.registered_for: tuple[int, float, Inode | None] | None = None
        self.registered_at = 0.0  # time.monotonic() of the current registration
        # A success for a server replaced meanwhile: (sent_at, kubelet) until adopted or expired.
        self.adoptable: tuple[float, Inode | None] | None = None
        self.attempt = 0
        self.attempt_in_flight = False
        self.attempt_key: tuple[int, Inode | None] = (-1, None)
        self.attempt_started = 0.0
        self.attempt_lost = False  # the in-flight attempt is stale (stream broke, reregister)
        self.self_checked_generation = -1
        self.failures = 0
        self.refused = False  # this run of failures includes a refusal: the slow backoff applies
        self.refusal_reported = False
        self.next_attempt_at = 0.0
        self.stopped = False

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
        except Exception as exc:
            LOG.exception("worker failed; shutting down")
            with contextlib.suppress(Exception):  # the supervisor shows it (issue 11)
                self._send(Error("crashed", f"{type(exc).__name__}: {exc}"[:300]))
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
        if self.cdi_problem is not None:
            deadlines.append(self.next_cdi_at)
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
            reason = msg.reason or "supervisor asked"
            if self._stream_proves_registration():
                LOG.info(
                    "re-register request noted, not acted on (%s): the kubelet holds our live "
                    "ListAndWatch stream, so it still has us",
                    reason,
                )
                return None
            LOG.info("re-registering on request: %s", reason)
            self._lose_registration(reason)
            # An attempt already in flight may predate what the supervisor saw: do another.
            self.attempt_lost = self.attempt_in_flight
            self.failures = 0
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

        first = self.settings is None or self.resource is None
        # Only where and how we register needs a new server and registration; the CDI settings
        # change the Allocate answer and the spec file, the heartbeat only the loop's pace.
        reserve = (
            self.settings is not None
            and self.resource is not None
            and _serving_key(settings, resource) != _serving_key(self.settings, self.resource)
        )
        if reserve:
            LOG.info("registration settings or resource name changed; serving afresh")
            self._stop_server()
            self._lose_registration("settings changed")
        if not first and settings.heartbeat_interval != self._interval():
            self.next_heartbeat = time.monotonic()
        self.resource, self.settings = resource, settings
        if first or reserve:
            self.mode = self._choose_mode(settings)
            self.kubelet = KubeletSocketWatch(self._kubelet_socket())
            self.kubelet_seen = self.kubelet.current is not None
            self.next_heartbeat = time.monotonic()
            self.last_heard = time.monotonic()
        self.plan = plan
        self._sync_cdi()
        self._publish()
        if first:
            self._send_ready("configured")
        return None

    def _interval(self) -> float:
        return self.settings.heartbeat_interval if self.settings is not None else 1.0

    def _publish(self) -> None:
        """Hand the handlers the current plan, unless they already have exactly that."""
        plan = self.plan
        if plan is None:
            return
        key = (plan, self.cdi_problem)
        if key == self.published:
            LOG.debug("device set unchanged; nothing to publish")
            return
        self.published = key
        self.hub.publish(publish(plan, self.cdi_problem))
        LOG.info(
            "device set applied matched=%d usable=%d ids=%d health=%s numa=%s%s",
            len(plan.matched),
            len(plan.usable),
            len(plan.device_ids),
            plan.health if self.cdi_problem is None else "Unhealthy (CDI spec not written)",
            ",".join(map(str, plan.numa_nodes)) or "none",
            " cdi=pending" if self.cdi_problem is not None else "",
        )

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

    def _sync_cdi(self) -> None:
        """Make the disk match the current plan, before it is published.

        So no CDI name is handed out before its spec exists: while the write fails, the plan is
        published with a refusal (Allocate says why; every ID is advertised Unhealthy, so the
        scheduler stops sending pods here instead of the kubelet failing their admission) and
        the reconcile loop retries with backoff.
        """
        plan, settings = self.plan, self.settings
        if plan is None or settings is None:
            return
        target = (settings.cdi_dir, cdi.spec_file_name(plan.resource)) if settings.use_cdi else None
        if self.cdi_file is not None and (target is None or self.cdi_file[:2] != target):
            self._remove_cdi()  # CDI turned off, or the file moved: the old one goes
        if target is None:
            self.cdi_problem = None
            return
        folder, name = target
        spec = cdi.build_spec(plan.resource, plan.usable)
        try:
            if spec is None:
                if cdi.remove_spec(folder, name):
                    LOG.info("CDI spec removed (no usable device) file=%s", name)
                self.cdi_file = None
            else:
                if cdi.write_spec(folder, name, spec):
                    LOG.info("CDI spec written file=%s devices=%d", name, len(spec["devices"]))
                self.cdi_file = (folder, name, cdi.spec_identity(folder, name))
        except OSError as exc:
            self.counters.cdi_write_failed(exc)  # issue 11: the metric and status see it
            self.cdi_failures += 1
            delay = min(CDI_RETRY_CAP, CDI_RETRY_FIRST * 2 ** min(self.cdi_failures - 1, 10))
            self.next_cdi_at = time.monotonic() + delay
            self.cdi_problem = (
                f"{plan.resource.full_name}: the CDI spec {os.path.join(folder, name)} cannot be "
                f"written ({exc}); nothing is allocated until it is (the worker keeps retrying)"
            )
            log = LOG.error if self.cdi_failures == 1 or self.cdi_failures % 30 == 0 else LOG.debug
            log(
                "cannot write CDI spec dir=%s file=%s: %s; Allocate refuses until the folder "
                "is writable (retry in %.2fs)",
                folder,
                name,
                exc,
                delay,
            )
            if self.cdi_failures == 1:
                self._send(Error("cdi_write_failed", f"{folder}/{name}: {exc}"))
            return
        if self.cdi_problem is not None:
            LOG.info("CDI spec on disk again after %d failed writes", self.cdi_failures)
        self.cdi_problem = None
        self.cdi_failures = 0

    def _remove_cdi(self) -> None:
        """Remove the spec we wrote, unless someone has replaced it since."""
        if self.cdi_file is not None:
            folder, name, identity = self.cdi_file
            self.cdi_file = None
            try:
                removed = identity is not None and cdi.remove_spec(folder, name, owned=identity)
                if not removed and cdi.spec_identity(folder, name) is not None:
                    LOG.warning(
                        "CDI spec %s/%s was rewritten by someone else; left in place", folder, name
                    )
            except OSError as exc:
                LOG.warning("cannot remove CDI spec %s/%s: %s", folder, name, exc)

    # ---- serving and registration --------------------------------------------------------

    def _registration_current(self) -> bool:
        if self.mode == "watcher":
            return self.registered
        return (
            self.server is not None
            and self.registered_for is not None
            and self.registered_for[0] == self.server.generation
        )

    def _stream_proves_registration(self) -> bool:
        """The kubelet holds a live stream of our current registration on our intact socket."""
        server = self.server
        if server is None or not self.registered or not server.intact():
            return False
        live = self.hub.live(server.generation)
        if live is None:
            return False
        if self.mode == "watcher":
            return True
        return (
            not self.attempt_in_flight
            and self.registered_for is not None
            and self.registered_for[0] == server.generation
            and live.opened_at >= self.registered_for[1]
        )

    def _reconcile(self, now: float) -> None:
        if self.cdi_problem is not None and now >= self.next_cdi_at:
            self._sync_cdi()
            self._publish()

        if self.kubelet is not None:
            change = self.kubelet.poll()
            if change:
                self._on_kubelet_change(change)

        if self.server is not None and not self.server.intact():
            path = self.server.socket_path
            if socket_identity(path) is not None and socket_answers(path):
                LOG.warning(
                    "own socket %s was replaced by another live server (another instance of "
                    "this plugin?); not taking it back",
                    path,
                )
            else:
                LOG.warning("own socket %s was removed (kubelet restart?); serving afresh", path)
            self._stop_server()
            self._lose_registration("own socket removed")
        if self.server is None:
            if now < self.next_serve_at:
                if not (self.socket_in_use and not os.path.lexists(self._socket_path())):
                    return
                LOG.info("the other server's socket is gone; serving now")
            if not self._serve():
                self.serve_failures += 1
                delay = registration.backoff(self.serve_failures)
                self.next_serve_at = now + (IN_USE_RETRY if self.socket_in_use else delay)
                return
            self.serve_failures = 0
            self.serve_reported = ""

        if (
            self.mode == "classic"
            and self._registration_current()
            and not self.attempt_in_flight
            and now - self.registered_at > STREAM_GRACE
            and self.server is not None
            and self.hub.live(self.server.generation) is None
        ):
            LOG.warning(
                "no ListAndWatch stream %.1fs after registering: the kubelet lost us; "
                "registering again",
                STREAM_GRACE,
            )
            self._lose_registration("no stream")
            self.next_attempt_at = 0.0

        self._adopt()
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
        live = self._stream_proves_registration()
        if change == "gone":
            if live:
                LOG.warning("kubelet.sock went away, but our stream is live; watching")
                return
            LOG.warning("kubelet.sock went away; waiting for the kubelet")
            self._lose_registration("kubelet.sock gone")
            return
        if self.kubelet_seen:
            self.counters.add("kubelet_restarts")
        self.kubelet_seen = True
        # A (new) kubelet deserves a prompt try, whatever the previous one said.
        self.failures = 0
        self.refused = False
        self.next_attempt_at = 0.0
        if live:
            LOG.info(
                "kubelet.sock %s, but the kubelet holds our live stream: it still has us; "
                "not registering again",
                change,
            )
            return
        current = self.kubelet.current if self.kubelet is not None else None
        if (
            self._registration_current()
            and self.registered_for is not None
            and self.registered_for[2] == current
        ):
            LOG.info("kubelet.sock %s; already registered with this kubelet", change)
            return
        LOG.info("kubelet.sock %s: the kubelet (re)started; registering again", change)
        if self.mode == "classic":
            self._lose_registration("kubelet restarted")

    def _serve(self) -> bool:
        """Serve on our socket path, never deleting or replacing a socket someone else serves.

        gRPC unlinks whatever is at its unix path when its server stops (and before it binds),
        even a socket another process put there since. So the server binds a private dot name
        (ignored by the plugin watcher), which is hard-linked to the real name (EEXIST if
        someone got there first) and then unlinked: gRPC only ever touches the private name.
        """
        assert self.resource is not None
        self.socket_in_use = False
        path = self._socket_path()
        private = os.path.join(os.path.dirname(path), f".{os.getpid()}.sock")
        longest = max(len(os.fsencode(path)), len(os.fsencode(private)))
        if longest > MAX_SOCKET_PATH:
            self._serve_failed(
                path,
                f"socket path is {longest} bytes, more than the {MAX_SOCKET_PATH} a unix socket "
                "allows; use a shorter folder",
            )
            return False
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._remove_stale(path)
        except SocketInUse as exc:
            return self._in_use(path, str(exc))
        except OSError as exc:
            self._serve_failed(path, str(exc))
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(private)  # a leftover of ours: the name has our pid
            if server.add_insecure_port(f"unix:{private}") == 0:
                raise RuntimeError("gRPC could not bind")
            server.start()
            try:
                os.link(private, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(private)
        except FileExistsError:
            server.stop(None)
            return self._in_use(path, f"another process created {path} just now")
        except (RuntimeError, OSError) as exc:
            server.stop(None)
            self._serve_failed(path, f"{exc} (is the folder writable?)")
            return False
        self.server = _Server(self.generation, server, path, socket_identity(path))
        LOG.info("serving socket=%s generation=%d mode=%s", path, self.generation, self.mode)
        return True

    def _in_use(self, path: str, problem: str) -> bool:
        self.socket_in_use = True
        self._serve_failed(path, problem, "socket_in_use")
        return False

    def _serve_failed(self, path: str, problem: str, code: str = "serve_failed") -> None:
        # Told once per run of failures (again if the reason changes); the log repeats.
        LOG.error("cannot serve on %s: %s; retrying", path, problem)
        if self.serve_reported != code:
            self.serve_reported = code
            self._send(Error(code, f"{path}: {problem}"))

    def _remove_stale(self, path: str) -> None:
        """Delete a socket nobody serves; a live one is another process's (SocketInUse)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it by hand")
        if socket_answers(path):
            raise SocketInUse(
                f"another live server holds {path} (another instance of this plugin, or the Go "
                f"plugin?); not deleting it, looking again every {IN_USE_RETRY:.0f}s"
            )
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

    def _attempt_key(self) -> tuple[int, Inode | None]:
        generation = self.server.generation if self.server is not None else -1
        return generation, self.kubelet.current if self.kubelet is not None else None

    def _start_attempt(self) -> None:
        assert self.server is not None and self.resource is not None
        self.attempt_key = self._attempt_key()
        self.attempt_started = time.monotonic()
        self.attempt += 1
        self.attempt_in_flight = True
        self.attempt_lost = False
        classic = self.mode == "classic"
        before_register = None
        old = self.hub.end_all() if classic else []
        if old:
            # Registering beside a live stream and ending it later makes kubelets 1.26-1.35
            # drop the new registration (kubernetes#121994): end it first, wait until it is over.
            LOG.info("ending %d old ListAndWatch stream(s) before registering again", len(old))

            def before_register() -> None:
                self.hub.wait_over(old, END_STREAM_WAIT)

        generation = self.server.generation
        LOG.debug(
            "attempt %d starts generation=%d kubelet=%s", self.attempt, generation, self.attempt_key
        )
        registration.start_attempt(
            self.events,
            self.server.generation,
            self.attempt,
            self.server.socket_path,
            self._kubelet_socket() if classic else None,
            self.resource.full_name,
            os.path.basename(self.server.socket_path),
            check_self=self.self_checked_generation != self.server.generation,
            before_register=before_register,
            still_current=lambda: self.server is not None and self.server.generation == generation,
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
            if event.generation != current:
                return  # a stream of a server we already replaced
            if self.mode == "classic":
                if self.attempt_in_flight:
                    # Most likely the kubelet replacing an old registration's stream because of
                    # our Register; if it was the new one's, the check in _reconcile notices.
                    return
                if self.registered_for is None or event.opened_at < self.registered_for[1]:
                    return  # a stream of a registration we already replaced
            LOG.warning(
                "ListAndWatch stream broke: the kubelet lost us; registering again (generation=%d)",
                event.generation,
            )
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
                self.refused = True
                delay = registration.backoff(self.failures, refused=True)
                LOG.error(
                    "the kubelet refused the registration: %s; retrying with a new socket in %.2fs",
                    event.error or "no reason given",
                    delay,
                )
                self._report_refusal(event.error or "no reason given")
                self._lose_registration(f"refused: {event.error}")
                self._stop_server()
                self.next_serve_at = time.monotonic() + delay

    def _on_attempt_done(self, event: AttemptDone, current: int) -> None:
        LOG.debug(
            "attempt %d done generation=%d current=%d ok=%s lost=%s %s",
            event.attempt,
            event.generation,
            current,
            event.ok,
            self.attempt_lost,
            event.error,
        )
        if event.attempt != self.attempt:
            return
        self.attempt_in_flight = False
        if event.superseded:
            self.next_attempt_at = 0.0
            return
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
            self.registered_for = (event.generation, event.sent_at, event.kubelet)
            self.registered_at = time.monotonic()
            self._set_registered("registered")
            return
        if event.ok and not self.attempt_lost and self.server is not None:
            # Registered while our server was being replaced: the kubelet dials the socket path
            # (retrying for up to 10 s), so it may well have reached the current server. If it
            # streams from it, that is our registration; registering again would replace it and
            # end its stream. Give it a moment to open the stream before trying again.
            self.adoptable = (event.sent_at, event.kubelet)
            self.next_attempt_at = time.monotonic() + ADOPT_WAIT
            self._adopt()
            return
        if event.ok:
            return  # stale success: the loop registers again for what is current
        self._schedule_retry(event.error, event.refused)

    def _adopt(self) -> None:
        """Take a registration made for a replaced server, if the kubelet streams from ours."""
        if self.adoptable is None or self.server is None:
            return
        sent_at, kubelet = self.adoptable
        live = self.hub.live(self.server.generation)
        if live is not None and live.opened_at >= sent_at:
            self.adoptable = None
            self.counters.add("registrations_ok")
            self.registered_for = (self.server.generation, sent_at, kubelet)
            self.registered_at = time.monotonic()
            self._set_registered("registered")
        elif time.monotonic() >= self.next_attempt_at:
            self.adoptable = None

    def _schedule_retry(self, error: str, refused: bool = False) -> None:
        self.counters.add("registrations_failed")
        self.failures += 1
        self.refused = self.refused or refused
        delay = registration.backoff(self.failures, self.refused)
        self.next_attempt_at = time.monotonic() + delay
        log = LOG.warning if self.failures <= 3 or self.failures % 30 == 0 else LOG.debug
        log("registration failed (%d in a row, next try in %.2fs): %s", self.failures, delay, error)
        if refused:
            self._report_refusal(error)

    def _report_refusal(self, reason: str) -> None:
        """Tell the supervisor once per run of failures that the kubelet says no."""
        if not self.refusal_reported:
            self.refusal_reported = True
            self._send(Error("register_refused", reason))

    def _set_registered(self, reason: str) -> None:
        self.failures = 0
        self.refused = False
        self.refusal_reported = False
        if not self.registered:
            self.registered = True
            self.registered_since = time.time()
            LOG.info("%s resource=%s mode=%s", reason, self._full_name(), self.mode)
            self._send_ready(reason)

    # ---- shutdown ------------------------------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        """End streams, stop the server within 2 s, remove socket and CDI spec; idempotent."""
        if self.stopped:
            return
        self.stopped = True
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


def _serving_key(settings: WorkerSettings, resource: ResourceConfig) -> tuple[str, ...]:
    """What decides where our socket lives and what we register as."""
    return (
        settings.device_plugin_dir,
        settings.plugins_registry_dir,
        settings.registration_mode,
        resource.full_name,
    )


def _setup_logging(resource: str, level: str, fmt: str) -> None:
    from common.logs import setup_logging

    setup_logging(level, fmt, process="worker", fields={"resource": resource})


USAGE = (
    "usage: python -m workers --resource NAME --control ENDPOINT [--connect-timeout SECONDS]\n"
    "                         [--log-level LEVEL] [--log-format text|json]\n"
    "One rdma-shared-dp worker: serves one resource to the kubelet. Started by the supervisor,\n"
    "never by hand."
)
_OPTIONS = ("--resource", "--control", "--connect-timeout", "--log-level", "--log-format")


def parse_args(argv: list[str]) -> dict[str, str]:
    """`--name value` or `--name=value` for the options above; ValueError says what is wrong.

    A few lines instead of argparse: the worker is started by the supervisor with a fixed
    command line, and argparse (with gettext) costs every worker about 0.4 MiB.
    """
    values: dict[str, str] = {}
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in _OPTIONS:
            raise ValueError(f"unknown argument {arg!r}")
        if not eq:
            if not rest:
                raise ValueError(f"{name} needs a value")
            value = rest.pop(0)
        values[name[2:].replace("-", "_")] = value
    return values


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return exitcodes.OK
    try:
        values = parse_args(args)
        resource = values.get("resource", "")
        control = values.get("control", "")
        if not RESOURCE_ARG.match(resource):
            raise ValueError(
                f"--resource must be set to letters, digits and '_' only, not {resource!r}"
            )
        if not control.startswith(("ipc://", "tcp://", "inproc://")):
            raise ValueError("--control must be a ZeroMQ endpoint (ipc://...)")
        timeout = float(values.get("connect_timeout", "10"))
        if not timeout > 0:
            raise ValueError("--connect-timeout must be a positive number of seconds")
        log_format = values.get("log_format", os.environ.get("RDMA_SHARED_DP_LOG_FORMAT", "text"))
        if log_format not in ("text", "json"):
            raise ValueError(f"--log-format must be text or json, not {log_format!r}")
        log_level = values.get("log_level", os.environ.get("RDMA_SHARED_DP_LOG_LEVEL", "INFO"))
        _setup_logging(resource, log_level, log_format)
    except ValueError as exc:
        print(f"{USAGE}\nerror: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        worker = Worker(resource, control, timeout)
    except zmq.ZMQError as exc:
        LOG.error("cannot connect to the supervisor at %s: %s", control, exc)
        return exitcodes.USAGE
    return worker.run()
