"""A small stand-in for the supervisor, to drive real worker processes in tests and benchmarks.

Runs in the test (or benchmark) process. It binds a real ZeroMQ ROUTER on `ipc://` in a temp
folder, answers each worker's hello with the configure it was given, heartbeats every worker it
has heard from, and records every message it receives. One background thread owns the socket;
the test talks to it through thread-safe methods.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import zmq

from common.config import ResourceConfig
from common.devices import Candidate
from common.messages import (
    Configure,
    Devices,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Ready,
    WorkerSettings,
    decode,
    encode,
)
from tests.conditions import wait_until
from tests.factories import make_candidate as make_candidate  # re-exported for older imports
from tests.factories import make_resource as make_resource

REPO = Path(__file__).resolve().parent.parent


@dataclass
class _Peer:
    routing_id: bytes
    received: list[Message] = field(default_factory=list)


@dataclass
class WorkerSetup:
    resource: ResourceConfig
    settings: WorkerSettings
    devices: tuple[Candidate, ...]


class StandinSupervisor:
    def __init__(self, runtime_dir: Path, heartbeat_interval: float = 0.2) -> None:
        runtime_dir.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"ipc://{runtime_dir / 'control.sock'}"
        self.heartbeat_interval = heartbeat_interval
        self.heartbeats = True  # False: stay silent, as a dead supervisor would
        #: Extra environment for spawned workers (e.g. RDMA_SHARED_DP_WORKER_TIMINGS).
        self.worker_env: dict[str, str] = {}
        self._setups: dict[str, WorkerSetup] = {}
        self._peers: dict[str, _Peer] = {}
        self._outbox: queue.SimpleQueue[tuple[str, Message]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.endpoint)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._loop, name="standin-supervisor", daemon=True)
        self._thread.start()

    # ---- test side -----------------------------------------------------------------------

    def set_setup(self, setup: WorkerSetup) -> None:
        with self._lock:
            self._setups[setup.resource.resource_name] = setup

    def spawn(
        self, resource: str, log_path: Path | None = None, extra: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "RDMA_SHARED_DP_LOG_LEVEL": "DEBUG",
            **self.worker_env,
        }
        out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers", "--resource", resource, "--control", self.endpoint]
            + (extra or []),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        if log_path is not None:
            out.close()  # type: ignore[union-attr]
        self._procs.append(proc)
        return proc

    def send(self, resource: str, msg: Message) -> None:
        self._outbox.put((resource, msg))

    def send_raw(self, resource: str, frame: bytes) -> None:
        self._outbox.put((resource, frame))  # type: ignore[arg-type]

    def update_devices(self, resource: str, devices: tuple[Candidate, ...]) -> None:
        with self._lock:
            setup = self._setups[resource]
            self._setups[resource] = replace(setup, devices=devices)
        self.send(resource, Devices(devices))

    def received(self, resource: str, kind: type[Message] | None = None) -> list[Message]:
        with self._lock:
            peer = self._peers.get(resource)
            msgs = list(peer.received) if peer is not None else []
        return [m for m in msgs if kind is None or isinstance(m, kind)]

    def last_ready(self, resource: str) -> Ready | None:
        readies = self.received(resource, Ready)
        last = readies[-1] if readies else None
        assert last is None or isinstance(last, Ready)
        return last

    def wait_registered(
        self, resource: str, timeout: float = 5.0, registered: bool = True
    ) -> Ready:
        def check() -> Ready | None:
            ready = self.last_ready(resource)
            return ready if ready is not None and ready.registered == registered else None

        return wait_until(check, timeout, what=f"{resource} ready registered={registered}")

    def wait_for(
        self, resource: str, predicate: Callable[[Message], bool], timeout: float = 5.0
    ) -> Message:
        def check() -> Message | None:
            for m in self.received(resource):
                if predicate(m):
                    return m
            return None

        # A list, so the type stays the Message union (mypy joins a bare union to its base).
        found: list[Message] = wait_until(
            lambda: [m] if (m := check()) is not None else None,
            timeout,
            what=f"a message from {resource}",
        )
        return found[0]

    def close(self) -> None:
        """Stop answering and close the socket (a supervisor that died)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)
        self._ctx.term()

    def kill_workers(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

    # ---- socket thread -------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        next_beat = time.monotonic()
        while not self._stop.is_set():
            events = dict(poller.poll(10))
            if self._sock in events:
                self._receive()
            self._flush_outbox()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                if self.heartbeats:
                    with self._lock:
                        peers = list(self._peers.values())
                    for peer in peers:
                        self._sock.send_multipart([peer.routing_id, encode(Heartbeat())])

    def _receive(self) -> None:
        while True:
            try:
                routing_id, frame = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode(frame)
            except ProtocolError:
                continue
            resource = routing_id.decode().split("/", 1)[0]
            with self._lock:
                peer = self._peers.get(resource)
                if peer is None or peer.routing_id != routing_id:
                    peer = self._peers[resource] = _Peer(
                        routing_id, received=list(peer.received) if peer else []
                    )
                peer.received.append(msg)
                setup = self._setups.get(resource)
            if isinstance(msg, Hello) and setup is not None:
                answer = Configure(setup.resource, setup.settings, setup.devices, parent=msg.id)
                self._sock.send_multipart([routing_id, encode(answer)])

    def _flush_outbox(self) -> None:
        while True:
            try:
                resource, msg = self._outbox.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                peer = self._peers.get(resource)
            if peer is None:
                continue
            frame = msg if isinstance(msg, bytes) else encode(msg)
            self._sock.send_multipart([peer.routing_id, frame])


class Rig:
    """A kubelet simulator, a stand-in supervisor and real worker processes in one temp folder."""

    def __init__(
        self,
        root: Path,
        mode: str = "classic",
        use_cdi: bool = False,
        heartbeat_interval: float = 0.2,
        start_kubelet: bool = True,
        legacy_kubelet: bool = False,
    ) -> None:
        """`legacy_kubelet`: the simulator behaves like kubelets 1.26-1.35 on re-registration
        (kubernetes#121994), where ending an old stream disconnects the new registration."""
        from simulator.kubelet import KubeletSimulator

        self.root = root
        self.dp_dir = root / "dp"
        self.reg_dir = root / "reg"
        self.cdi_dir = root / "cdi"
        self.logs: dict[str, Path] = {}
        self.settings = WorkerSettings(
            device_plugin_dir=str(self.dp_dir),
            plugins_registry_dir=str(self.reg_dir),
            registration_mode=mode,
            use_cdi=use_cdi,
            cdi_dir=str(self.cdi_dir),
            heartbeat_interval=heartbeat_interval,
        )
        self.kubelet = KubeletSimulator(
            self.dp_dir,
            self.reg_dir if mode in ("watcher", "auto") else None,
            legacy_reregistration=legacy_kubelet,
        )
        if start_kubelet:
            self.kubelet.start()
        self.supervisor = StandinSupervisor(root / "run", heartbeat_interval)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(
        self, resource: ResourceConfig, devices: tuple[Candidate, ...]
    ) -> subprocess.Popen[bytes]:
        self.supervisor.set_setup(WorkerSetup(resource, self.settings, devices))
        log = self.root / f"{resource.resource_name}.log"
        self.logs[resource.resource_name] = log
        proc = self.supervisor.spawn(resource.resource_name, log)
        self.procs[resource.resource_name] = proc
        return proc

    def heartbeats(self, resource: str = "hca_a") -> int:
        """How many heartbeats the worker has sent: waiting for two more means it has run its
        loop (and its 50 ms checks) several times since."""
        return len(self.supervisor.received(resource, Heartbeat))

    def wait_heartbeats(self, count: int = 2, resource: str = "hca_a") -> None:
        target = self.heartbeats(resource) + count
        wait_until(lambda: self.heartbeats(resource) >= target, 10, what=f"{count} heartbeats more")

    def log(self, resource: str) -> str:
        path = self.logs.get(resource)
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.kubelet.stop()
        self.supervisor.close()
