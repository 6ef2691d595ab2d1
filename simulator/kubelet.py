"""A kubelet simulator: the kubelet's side of the device-plugin API, over real gRPC unix sockets.

Runs inside the test process, the benchmark or the demo (`python -m simulator.kubelet`), never in
the plugin's own processes. It behaves like the kubelet's device manager and plugin watcher
(Kubernetes 1.25 and later), including the parts a plugin must survive:

- `start()` creates the device-plugin dir, deletes every socket in it (the file
  `kubelet_internal_checkpoint` is kept) and serves `v1beta1.Registration` on `kubelet.sock`;
- `Register` checks the version and the extended resource name, then dials the plugin's socket
  and calls `GetDevicePluginOptions` before it answers: a plugin that is not serving yet fails;
- one `ListAndWatch` stream per resource, opened after `Register` returns; a new registration
  replaces the old endpoint (or, with `legacy_reregistration`, leaves it open the way kubelets
  before 1.36 do, with their hazard); a stream that ends or breaks is never reopened, and the
  resource's devices turn unhealthy until the plugin registers again;
- watcher mode: new sockets in the plugins-registry dir are dialled, asked `GetInfo`, connected to
  and told `NotifyRegistrationStatus`; a refusal is retried with the kubelet's backoff; removing
  the socket de-registers the plugin;
- `restart()` is a kubelet restart: the sockets are wiped and `kubelet.sock` gets a new inode.

What a real kubelet did (v1.32-1.37 with containerd, issue 9), on request:

- `restart(killed=True)` leaves the dead `kubelet.sock` behind, and `same_inode=True` re-creates
  it at the same inode number, as ext4 did in 52 of 53 real restarts (`inode_reused` records
  whether that worked: on tmpfs it cannot);
- pods added with `add_pod(..., running=False)` are admitted again 23-99 ms after the new kubelet
  serves (`readmit_delay`); one whose resource is not registered by then, or whose devices are
  not all healthy, is rejected with the kubelet's `UnexpectedAdmissionError` message and dropped
  (`admissions()`);
- with `pod_resources_socket`, a PodResources `List` that names each held device once per NUMA
  node of its topology, in one `ContainerDevices` per node, as the kubelet does.

All times recorded here come from `time.monotonic()`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import grpc
from google.protobuf.message import DecodeError

from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from proto.podresources.v1 import api_pb2 as pr
from proto.podresources.v1 import api_pb2_grpc as pr_grpc

LOG = logging.getLogger(__name__)

VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT_FILE = "kubelet_internal_checkpoint"
PLUGIN_TYPE = "DevicePlugin"
GET_INFO_TIMEOUT = 1.0
NOTIFY_TIMEOUT = 1.0
# The kubelet reacts to fsnotify events; polling this often is close enough for tests.
REGISTRY_POLL_INTERVAL = 0.02
# The kubelet's plugin manager retries a failed watcher registration with this backoff
# (nestedpendingoperations: 500 ms, doubling, at most 2 min 2 s).
WATCHER_RETRY_INITIAL = 0.5
WATCHER_RETRY_MAX = 122.0
DIAL_RETRY_INTERVAL = 0.02
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: After it starts serving, a real kubelet admitted non-running pods again this much later (s).
READMIT_DELAY = (0.023, 0.099)
#: How often `same_inode` restarts retry for the old inode number before giving up.
SAME_INODE_ATTEMPTS = 16
REJECTED = "UnexpectedAdmissionError"

Mode = Literal["classic", "watcher"]

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class KubeletSimulatorError(Exception):
    """A simulator call that cannot be made (resource not registered, stream stopped, bad dir)."""


class _RegistrationError(Exception):
    """A registration refused for the reason in the message (what the kubelet would answer)."""


@dataclass(frozen=True)
class Registration:
    """One successful registration, as the kubelet saw it.

    `endpoint` is the socket name relative to the device-plugin dir in classic mode and the
    absolute socket path in watcher mode. `options` come from `GetDevicePluginOptions` (the kubelet
    uses those); `request_options` are what `RegisterRequest` carried (classic mode only).
    """

    resource_name: str
    endpoint: str
    version: str
    options: dp.DevicePluginOptions
    mode: Mode
    time: float
    request_options: dp.DevicePluginOptions | None = None


@dataclass(frozen=True)
class SimPod:
    """A pod the simulated kubelet holds devices for (PodResources lists it)."""

    name: str
    resource: str
    device_ids: tuple[str, ...]
    running: bool = True
    namespace: str = "default"
    container: str = "main"


@dataclass(frozen=True)
class Admission:
    """One re-admission of a non-running pod after a start: admitted, or rejected and why."""

    pod: str
    admitted: bool
    reason: str  # "" or "UnexpectedAdmissionError"
    message: str
    after_serving: float  # seconds after kubelet.sock was served


@dataclass(frozen=True)
class DeviceState:
    """One device of a `ListAndWatch` snapshot."""

    id: str
    health: str
    numa_nodes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, device: dp.Device) -> DeviceState:
        return cls(
            id=device.ID,
            health=device.health,
            numa_nodes=tuple(node.ID for node in device.topology.nodes),
        )


def resource_name_problem(name: str) -> str | None:
    """Why the kubelet refuses `name` as an extended resource name, or None when it accepts it."""
    if "/" not in name:
        return f"resource name {name!r} has no domain prefix (expected prefix/name)"
    if "kubernetes.io/" in name:
        return f"resource name {name!r} uses the reserved kubernetes.io/ domain"
    if name.startswith("requests."):
        return f"resource name {name!r} must not start with 'requests.'"
    prefix, _, short = name.partition("/")
    if "/" in short:
        return f"resource name {name!r} has more than one '/'"
    # The kubelet validates "requests." + name as a qualified name, hence the shorter limit.
    if len(prefix) > 253 - len("requests.") or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
        return (
            f"resource name prefix {prefix!r} is not a DNS-1123 subdomain "
            "(lower-case letters, digits, '-' and '.')"
        )
    if len(short) > 63 or not _QUALIFIED_NAME.fullmatch(short):
        return (
            f"resource name part {short!r} must be 1-63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def _rpc_reason(err: grpc.RpcError) -> str:
    code = err.code()
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {err.details()}"


#: ListAndWatch as raw bytes: a plugin re-sends the same snapshot on every registration, and
#: parsing 1000 devices each time would cost this (single-GIL) simulator more CPU than the plugin
#: spends sending them; identical bytes reuse the parse (`KubeletSimulator._parse_snapshot`).
_LIST_AND_WATCH = "/v1beta1.DevicePlugin/ListAndWatch"


class _Endpoint:
    """The kubelet's connection to one registered plugin and its single ListAndWatch stream."""

    def __init__(
        self, resource: str, socket_path: Path, channel: grpc.Channel, stub: Any, mode: Mode
    ) -> None:
        self.resource = resource
        self.socket_path = socket_path
        self.channel = channel
        self.stub = stub
        self.mode = mode
        self.call: Any = None
        self.thread: threading.Thread | None = None
        self.stream_open = False
        # Set once the stream has ended: like the kubelet, the endpoint is then unusable.
        self.stopped = False
        self.closed = False


class KubeletSimulator:
    """The kubelet as a device plugin sees it. Thread-safe; every wait has a deadline."""

    def __init__(
        self,
        device_plugin_dir: Path,
        plugins_registry_dir: Path | None = None,
        dial_timeout: float = 10.0,
        legacy_reregistration: bool = False,
        pod_resources_socket: Path | None = None,
    ) -> None:
        """`legacy_reregistration` copies the device manager of kubelets without
        kubernetes#135437 (every release before 1.36): a new registration leaves the old
        stream open (its snapshots still count), and when any stream of the resource ends, the
        *current* registration is disconnected. The default is the clean behaviour: the old
        stream is cancelled.
        """
        self.device_plugin_dir = Path(device_plugin_dir).absolute()
        self.plugins_registry_dir = (
            Path(plugins_registry_dir).absolute() if plugins_registry_dir is not None else None
        )
        self.dial_timeout = dial_timeout
        self.kubelet_socket = self.device_plugin_dir / KUBELET_SOCKET
        self.legacy_reregistration = legacy_reregistration
        self.pod_resources_socket = (
            Path(pod_resources_socket).absolute() if pod_resources_socket is not None else None
        )
        self.readmit_delay = READMIT_DELAY
        #: Per `same_inode` restart: whether kubelet.sock got its old inode number back.
        self.inode_reused: list[bool] = []
        self._pods: dict[str, SimPod] = {}
        self._admissions: list[Admission] = []
        # Resources this kubelet has seen registered (its checkpoint keeps them across restarts).
        self._known_resources: set[str] = set()
        self._pr_server: Any = None
        self._pr_pool: ThreadPoolExecutor | None = None

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._registrations: list[Registration] = []
        self._failures: list[tuple[str, str]] = []
        self._notifications: list[tuple[str, bool, str]] = []
        self._endpoints: dict[str, _Endpoint] = {}
        # Every endpoint whose channel is still open (old ones too, in legacy mode).
        self._open: set[_Endpoint] = set()
        self._devices: dict[str, list[DeviceState]] = {}
        self._snapshots: dict[str, list[list[DeviceState]]] = {}
        #: Per resource: the last snapshot's bytes and their parse (shared, never mutated).
        self._parsed: dict[str, tuple[bytes, list[DeviceState]]] = {}
        self._streams_opened: dict[str, int] = {}
        self._fail_next = 0
        self._fail_reason = ""

        self._running = False
        # Replaced on every start, so work begun before a stop can tell it is stale.
        self._stopping = threading.Event()
        self._server: Any = None
        self._server_pool: ThreadPoolExecutor | None = None
        self._stream_threads: list[threading.Thread] = []
        self._watcher: threading.Thread | None = None
        self._watch_pool: ThreadPoolExecutor | None = None
        # plugins-registry socket path -> identity as last seen, and what it registered.
        self._watched: dict[Path, tuple[int, int, int]] = {}
        self._watched_resource: dict[Path, str] = {}
        # Failed watcher registrations: attempts so far, and when the next one is due.
        self._attempts: dict[Path, int] = {}
        self._retry_at: dict[Path, float] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, *, inode: int | None = None) -> None:
        """Start like the kubelet: wipe the device-plugin sockets, serve `kubelet.sock`, watch.

        `inode`: serve kubelet.sock at this inode number if the filesystem hands it back (as
        the real kubelet's socket usually came back after a kill); see `inode_reused`."""
        self._start(keep=None, want_inode=inode)

    def _serve(self, stopping: threading.Event, want_inode: int | None) -> tuple[Any, Any]:
        """Serve Registration on kubelet.sock; with `want_inode`, at that inode number if the
        filesystem gives it back (a wrong number is kept taken by a placeholder and retried)."""
        placeholders: list[Path] = []
        try:
            for attempt in range(SAME_INODE_ATTEMPTS if want_inode is not None else 1):
                pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kubelet-sim-rpc")
                server = grpc.server(pool)
                dp_grpc.add_RegistrationServicer_to_server(
                    _RegistrationService(self, stopping), server
                )
                try:
                    port = server.add_insecure_port(f"unix:{self.kubelet_socket}")
                except RuntimeError:  # newer grpc raises instead of returning 0
                    port = 0
                if port == 0:
                    pool.shutdown(wait=False)
                    raise KubeletSimulatorError(f"cannot listen on {self.kubelet_socket}")
                # Bound, not serving yet: a number that is not the wanted one is discarded
                # before any plugin could register with this server.
                got = self.kubelet_socket.stat().st_ino
                if want_inode is None or got == want_inode or attempt == SAME_INODE_ATTEMPTS - 1:
                    if want_inode is not None:
                        self.inode_reused.append(got == want_inode)
                    server.start()
                    return server, pool
                placeholder = self.device_plugin_dir / f".inode-placeholder-{attempt}"
                os.rename(self.kubelet_socket, placeholder)
                placeholders.append(placeholder)
                server.stop(grace=None).wait()
                pool.shutdown(wait=True)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            for placeholder in placeholders:
                placeholder.unlink(missing_ok=True)

    def _start(self, keep: Path | None, want_inode: int | None = None) -> None:
        with self._lock:
            if self._running:
                raise KubeletSimulatorError("the kubelet simulator is already running")
        if len(os.fsencode(self.kubelet_socket)) > MAX_SOCKET_PATH:
            raise KubeletSimulatorError(
                f"socket path {self.kubelet_socket} is longer than {MAX_SOCKET_PATH} bytes; "
                "use a shorter device-plugin dir"
            )
        self.device_plugin_dir.mkdir(parents=True, exist_ok=True)
        self._wipe_sockets(keep)
        if self.plugins_registry_dir is not None:
            self.plugins_registry_dir.mkdir(parents=True, exist_ok=True)

        stopping = threading.Event()
        server, pool = self._serve(stopping, want_inode)
        served_at = time.monotonic()
        watcher: threading.Thread | None = None
        watch_pool: ThreadPoolExecutor | None = None
        if self.plugins_registry_dir is not None:
            watch_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kubelet-sim-watch")
            watcher = threading.Thread(
                target=self._watch_registry, args=(stopping,), name="kubelet-sim-watcher"
            )
        with self._lock:
            self._stopping = stopping
            self._server = server
            self._server_pool = pool
            self._watcher = watcher
            self._watch_pool = watch_pool
            self._running = True
            self._watched.clear()
            self._watched_resource.clear()
            self._attempts.clear()
            self._retry_at.clear()
        LOG.info("kubelet simulator serving socket=%s", self.kubelet_socket)
        if watcher is not None:
            watcher.start()
            LOG.info("kubelet simulator watching plugins_registry=%s", self.plugins_registry_dir)
        if self.pod_resources_socket is not None and self._pr_server is None:
            self._serve_pod_resources(self.pod_resources_socket)
        with self._lock:
            waiting = any(not p.running for p in self._pods.values())
        if waiting:
            delay = random.uniform(*self.readmit_delay)
            timer = threading.Timer(
                max(0.0, delay - (time.monotonic() - served_at)),
                self._readmit,
                args=(stopping, served_at),
            )
            timer.daemon = True
            timer.start()

    def stop(self) -> None:
        """Stop serving and close every plugin connection; returns once no thread is left."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._stopping.set()
            server, pool = self._server, self._server_pool
            self._server = self._server_pool = None
            watcher, watch_pool = self._watcher, self._watch_pool
            self._watcher = self._watch_pool = None
            endpoints = list(self._open)
            self._endpoints.clear()
            # A stopped kubelet knows no devices; history (registrations, snapshots) is kept.
            self._devices.clear()
            self._changed.notify_all()
        if watcher is not None:
            watcher.join()
        if watch_pool is not None:
            watch_pool.shutdown(wait=True, cancel_futures=True)
        server.stop(grace=None).wait()
        if pool is not None:
            pool.shutdown(wait=True)
        for endpoint in endpoints:
            self._close_endpoint(endpoint)
        with self._lock:
            threads, self._stream_threads = self._stream_threads, []
        for thread in threads:
            thread.join()
        if self._pr_server is not None:
            self._pr_server.stop(grace=None).wait()
            self._pr_server = None
        if self._pr_pool is not None:
            self._pr_pool.shutdown(wait=True)
            self._pr_pool = None
        LOG.info("kubelet simulator stopped")

    def kill(self) -> None:
        """A SIGKILLed kubelet: it stops serving at once and its `kubelet.sock` stays behind."""
        aside = self.device_plugin_dir / ".kubelet.sock.killed"
        try:
            os.link(self.kubelet_socket, aside)
        except OSError:
            self.stop()
            return
        self.stop()
        if self.kubelet_socket.exists():
            aside.unlink()
        else:
            os.replace(aside, self.kubelet_socket)

    def restart(self, *, killed: bool = False, same_inode: bool = False, gap: float = 0.0) -> None:
        """A kubelet restart: stop (or `killed`: die and leave kubelet.sock behind), wipe the
        sockets, start again. By default kubelet.sock gets a new inode; `same_inode` gives it the
        old number back where the filesystem allows, as a real kubelet on ext4 usually got;
        `gap` seconds pass between the two kubelets."""
        if same_inode:
            try:
                old: int | None = self.kubelet_socket.stat().st_ino
            except OSError:
                old = None
            if killed:
                self.kill()
            else:
                self.stop()
            time.sleep(gap)  # the kubelet is down this long: part of the scenario
            self._start(None, want_inode=old)
            return
        # Filesystems hand a freed inode number straight to the next file, so the new
        # kubelet.sock could reuse the old number; a hard link holds it until the new one exists.
        # (A real kubelet gives no such promise: plugins should also compare st_ctime_ns.)
        guard_path = self.device_plugin_dir / ".kubelet.sock.restarting"
        guard: Path | None = guard_path
        try:
            os.link(self.kubelet_socket, guard_path)
        except OSError:
            guard = None
        try:
            if killed:
                self.kill()
            else:
                self.stop()
            self._wipe_sockets(guard)
            self._start(guard)
        finally:
            if guard is not None:
                guard.unlink(missing_ok=True)

    def __enter__(self) -> KubeletSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wipe_sockets(self, keep: Path | None = None) -> None:
        if not self.device_plugin_dir.is_dir():
            return
        for entry in self.device_plugin_dir.iterdir():
            # Only sockets go, as in the kubelet; the checkpoint is named explicitly for clarity.
            if entry.name == CHECKPOINT_FILE or entry == keep or not _is_socket(entry):
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()

    # ---- pods: re-admission and PodResources (what a real kubelet did) --------------------

    def add_pod(
        self,
        name: str,
        resource: str,
        device_ids: list[str] | tuple[str, ...],
        *,
        running: bool = True,
        namespace: str = "default",
    ) -> None:
        """A pod holding `device_ids` of `resource`; a non-running one (crash-looping) is
        admitted again after every start."""
        with self._lock:
            self._pods[name] = SimPod(name, resource, tuple(device_ids), running, namespace)

    def pods(self) -> list[SimPod]:
        with self._lock:
            return list(self._pods.values())

    def admissions(self) -> list[Admission]:
        with self._lock:
            return list(self._admissions)

    def wait_for_admissions(self, count: int, timeout: float = 5.0) -> list[Admission]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._admissions) >= count, timeout):
                raise TimeoutError(f"fewer than {count} admissions within {timeout}s")
            return list(self._admissions)

    def _readmit(self, stopping: threading.Event, served_at: float) -> None:
        after = time.monotonic() - served_at
        with self._changed:
            if stopping.is_set():
                return
            for pod in [p for p in self._pods.values() if not p.running]:
                endpoint = self._endpoints.get(pod.resource)
                healthy = {d.id for d in self._devices.get(pod.resource, []) if d.health == HEALTHY}
                problem = ""
                if endpoint is None or endpoint.stopped:
                    # The checkpoint brings back a known resource with no healthy device.
                    problem = (
                        f"no healthy devices present; cannot allocate unhealthy devices "
                        f"{pod.resource}"
                        if pod.resource in self._known_resources
                        else f"cannot allocate unregistered device {pod.resource}"
                    )
                elif not healthy:
                    problem = (
                        f"no healthy devices present; cannot allocate unhealthy devices "
                        f"{pod.resource}"
                    )
                elif not set(pod.device_ids) <= healthy:
                    problem = (
                        "previously allocated devices are no longer healthy; cannot allocate "
                        f"unhealthy devices {pod.resource}"
                    )
                if problem:
                    # As the pod's status message says it.
                    message = (
                        f"Pod was rejected: Allocate failed due to {problem}, which is unexpected"
                    )
                    self._admissions.append(Admission(pod.name, False, REJECTED, message, after))
                    del self._pods[pod.name]  # a rejected pod is Failed: never admitted again
                    LOG.warning("pod rejected pod=%s reason=%s %s", pod.name, REJECTED, message)
                else:
                    self._admissions.append(Admission(pod.name, True, "", "", after))
            self._changed.notify_all()

    def _serve_pod_resources(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kubelet-sim-podres")
        server = grpc.server(pool)
        pr_grpc.add_PodResourcesListerServicer_to_server(_PodResourcesService(self), server)
        if server.add_insecure_port(f"unix:{path}") == 0:
            pool.shutdown(wait=False)
            raise KubeletSimulatorError(f"cannot serve PodResources on {path}")
        server.start()
        self._pr_server, self._pr_pool = server, pool

    def list_pod_resources(self) -> pr.ListPodResourcesResponse:
        """What PodResources `List` answers: each held ID once per NUMA node of its device."""
        with self._lock:
            pods = list(self._pods.values())
            # The kubelet keeps each allocated device's NUMA nodes (its checkpoint has them), so
            # they do not depend on a stream being open right now: the newest snapshot has them.
            topology = {
                (res, d.id): d.numa_nodes
                for res, history in self._snapshots.items()
                if history
                for d in history[-1]
            }
        out = []
        for pod in pods:
            per_node: dict[int | None, list[str]] = {}
            for device_id in pod.device_ids:
                for node in topology.get((pod.resource, device_id)) or (None,):
                    per_node.setdefault(node, []).append(device_id)
            devices = [
                pr.ContainerDevices(
                    resource_name=pod.resource,
                    device_ids=ids,
                    topology=pr.TopologyInfo(nodes=[pr.NUMANode(ID=node)])
                    if node is not None
                    else None,
                )
                for node, ids in sorted(per_node.items(), key=lambda kv: (kv[0] is None, kv[0]))
            ]
            out.append(
                pr.PodResources(
                    name=pod.name,
                    namespace=pod.namespace,
                    containers=[pr.ContainerResources(name=pod.container, devices=devices)],
                )
            )
        return pr.ListPodResourcesResponse(pod_resources=out)

    # ---- observations ----------------------------------------------------------------------

    def registrations(self) -> list[Registration]:
        """Every successful registration since construction, in order."""
        with self._lock:
            return list(self._registrations)

    def failed_registrations(self) -> list[tuple[str, str]]:
        """Every refused registration as (resource, reason); the resource may be '' if unknown."""
        with self._lock:
            return list(self._failures)

    def notifications(self) -> list[tuple[str, bool, str]]:
        """Watcher mode: each `NotifyRegistrationStatus` sent, as (socket, registered, error)."""
        with self._lock:
            return list(self._notifications)

    def is_registered(self, resource: str) -> bool:
        """The resource has a live registration: registered, and its stream has not ended."""
        with self._lock:
            endpoint = self._endpoints.get(resource)
            return endpoint is not None and not endpoint.stopped

    def wait_for_registration(
        self, resource: str, timeout: float = 5.0, count: int = 1
    ) -> Registration:
        """Wait until `resource` has registered `count` times; return that (count-th) one."""

        def found() -> list[Registration]:
            return [r for r in self._registrations if r.resource_name == resource]

        with self._changed:
            if not self._changed.wait_for(lambda: len(found()) >= count, timeout):
                failures = [reason for name, reason in self._failures if name == resource]
                raise TimeoutError(
                    f"{resource} registered {len(found())} time(s) within {timeout}s, "
                    f"expected {count}; refusals: {failures or 'none'}"
                )
            return found()[count - 1]

    def devices(self, resource: str) -> list[DeviceState] | None:
        """The devices of the latest snapshot (all unhealthy once the stream ended), or None."""
        with self._lock:
            current = self._devices.get(resource)
            return list(current) if current is not None else None

    def snapshots(self, resource: str) -> list[list[DeviceState]]:
        """Every `ListAndWatch` snapshot received for `resource`, across registrations."""
        with self._lock:
            return [list(s) for s in self._snapshots.get(resource, [])]

    def wait_for_devices(
        self,
        resource: str,
        predicate: Callable[[list[DeviceState]], bool],
        timeout: float = 5.0,
    ) -> list[DeviceState]:
        """Wait until the current devices of `resource` satisfy `predicate`; return them."""

        def matches() -> bool:
            current = self._devices.get(resource)
            return current is not None and predicate(list(current))

        with self._changed:
            if not self._changed.wait_for(matches, timeout):
                raise TimeoutError(
                    f"devices of {resource} did not match within {timeout}s; "
                    f"current: {self._devices.get(resource)}"
                )
            return list(self._devices[resource])

    def stream_open(self, resource: str) -> bool:
        with self._lock:
            endpoint = self._endpoints.get(resource)
            return endpoint is not None and endpoint.stream_open

    def streams_opened(self, resource: str) -> int:
        """How many `ListAndWatch` streams the simulator ever opened for `resource`."""
        with self._lock:
            return self._streams_opened.get(resource, 0)

    # ---- fault injection -------------------------------------------------------------------

    def fail_next_registrations(self, count: int, reason: str = "simulated refusal") -> None:
        """Refuse the next `count` registrations (either mode) with `reason`."""
        with self._lock:
            self._fail_next = count
            self._fail_reason = reason

    def break_stream(self, resource: str, timeout: float = 5.0) -> None:
        """Cancel our side of the `ListAndWatch` stream, like a kubelet hiccup; never reopened."""
        with self._changed:
            endpoint = self._endpoints.get(resource)
            if endpoint is None:
                raise KubeletSimulatorError(f"{resource} is not registered")
            if not self._changed.wait_for(lambda: endpoint.call is not None, timeout):
                raise KubeletSimulatorError(f"no ListAndWatch stream for {resource} to break")
            call, thread = endpoint.call, endpoint.thread
        call.cancel()
        if thread is not None:
            thread.join(timeout)

    # ---- calls into the plugin -------------------------------------------------------------

    def _endpoint_for_call(self, resource: str) -> _Endpoint:
        with self._lock:
            endpoint = self._endpoints.get(resource)
        if endpoint is None:
            raise KubeletSimulatorError(f"{resource} is not registered")
        if endpoint.stopped:
            # The kubelet refuses to use an endpoint whose stream has ended.
            raise KubeletSimulatorError(f"endpoint of {resource} is stopped (its stream ended)")
        return endpoint

    def allocate(
        self, resource: str, container_requests: list[list[str]], timeout: float = 5.0
    ) -> dp.AllocateResponse:
        """Call `Allocate`, one `ContainerAllocateRequest` per entry; RpcError passes through."""
        request = dp.AllocateRequest(
            container_requests=[
                dp.ContainerAllocateRequest(devices_ids=ids) for ids in container_requests
            ]
        )
        response: dp.AllocateResponse = self._endpoint_for_call(resource).stub.Allocate(
            request, timeout=timeout
        )
        return response

    def get_preferred_allocation(
        self,
        resource: str,
        available: list[str],
        must_include: list[str],
        size: int,
        timeout: float = 5.0,
    ) -> dp.PreferredAllocationResponse:
        """Call `GetPreferredAllocation` for one container, as the kubelet does."""
        request = dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=must_include,
                    allocation_size=size,
                )
            ]
        )
        response: dp.PreferredAllocationResponse = self._endpoint_for_call(
            resource
        ).stub.GetPreferredAllocation(request, timeout=timeout)
        return response

    def pre_start_container(
        self, resource: str, device_ids: list[str], timeout: float = 30.0
    ) -> dp.PreStartContainerResponse:
        """Call `PreStartContainer` (the kubelet's timeout is 30 s)."""
        response: dp.PreStartContainerResponse = self._endpoint_for_call(
            resource
        ).stub.PreStartContainer(
            dp.PreStartContainerRequest(devices_ids=device_ids), timeout=timeout
        )
        return response

    def get_options(self, resource: str, timeout: float = 5.0) -> dp.DevicePluginOptions:
        """Ask the registered plugin for its options now (registrations record them too)."""
        response: dp.DevicePluginOptions = self._endpoint_for_call(
            resource
        ).stub.GetDevicePluginOptions(dp.Empty(), timeout=timeout)
        return response

    # ---- registration ----------------------------------------------------------------------

    def _take_forced_failure(self) -> str | None:
        with self._lock:
            if self._fail_next <= 0:
                return None
            self._fail_next -= 1
            return self._fail_reason

    def _record_failure(self, resource: str, reason: str) -> None:
        LOG.warning("registration refused resource=%s reason=%s", resource, reason)
        with self._changed:
            self._failures.append((resource, reason))
            self._changed.notify_all()

    def _dial(self, target: Path, stopping: threading.Event) -> None:
        """Dial like the kubelet (blocking, retried until `dial_timeout`), or give up on stop.

        A plain connect() probe rather than grpc's channel_ready_future: that one leaves a
        connectivity watch behind which makes every later channel.close() take 200 ms.
        """
        if len(os.fsencode(target)) > MAX_SOCKET_PATH:
            raise _RegistrationError(f"socket path {target} is longer than {MAX_SOCKET_PATH} bytes")
        deadline = time.monotonic() + self.dial_timeout
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(os.fsencode(target))
                    return
                except OSError:
                    pass
            if stopping.is_set():
                raise _RegistrationError("kubelet is stopping")
            if time.monotonic() >= deadline:
                raise _RegistrationError(
                    f"cannot dial {target} within {self.dial_timeout}s (is the plugin serving yet?)"
                )
            stopping.wait(DIAL_RETRY_INTERVAL)

    def _connect(
        self, resource: str, socket_path: Path, mode: Mode, stopping: threading.Event
    ) -> tuple[_Endpoint, dp.DevicePluginOptions]:
        """Dial the plugin and ask `GetDevicePluginOptions`, as the kubelet does in `Register`."""
        channel = grpc.insecure_channel(f"unix:{socket_path}")
        try:
            self._dial(socket_path, stopping)
            stub = dp_grpc.DevicePluginStub(channel)
            options: dp.DevicePluginOptions = stub.GetDevicePluginOptions(
                dp.Empty(), timeout=self.dial_timeout, wait_for_ready=True
            )
        except _RegistrationError:
            channel.close()
            raise
        except grpc.RpcError as err:
            channel.close()
            raise _RegistrationError(f"GetDevicePluginOptions failed: {_rpc_reason(err)}") from None
        return _Endpoint(resource, socket_path, channel, stub, mode), options

    def _commit(
        self, endpoint: _Endpoint, registration: Registration, stopping: threading.Event
    ) -> None:
        """Make `endpoint` the resource's only one, record the registration, open its stream."""
        thread = threading.Thread(
            target=self._read_stream,
            args=(endpoint,),
            name=f"kubelet-sim-stream-{endpoint.resource}",
        )
        endpoint.thread = thread
        with self._changed:
            # Checked under the lock that stop() takes, so nothing is added after it looked.
            stopped = stopping.is_set()
            if not stopped:
                stale = self._endpoints.get(endpoint.resource)
                self._endpoints[endpoint.resource] = endpoint
                self._open.add(endpoint)
                self._registrations.append(registration)
                self._known_resources.add(endpoint.resource)
                self._stream_threads.append(thread)
                self._changed.notify_all()
        if stopped:
            self._close_endpoint(endpoint)
            raise _RegistrationError("kubelet is stopping")
        LOG.info(
            "registered resource=%s endpoint=%s mode=%s",
            registration.resource_name,
            registration.endpoint,
            registration.mode,
        )
        if stale is not None and self.legacy_reregistration:
            LOG.info("old stream left open resource=%s old=%s", stale.resource, stale.socket_path)
        elif stale is not None:
            LOG.info("replacing endpoint resource=%s old=%s", stale.resource, stale.socket_path)
            self._close_endpoint(stale)
        thread.start()

    def _close_endpoint(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.closed = True
            self._open.discard(endpoint)
            call, thread = endpoint.call, endpoint.thread
        # Closing a channel with a live stream takes grpc ~200 ms; cancelling first is instant.
        if call is not None:
            call.cancel()
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=2.0)
        endpoint.channel.close()

    def _read_stream(self, endpoint: _Endpoint) -> None:
        resource = endpoint.resource
        reason = "plugin ended the stream"
        try:
            call = endpoint.channel.unary_stream(
                _LIST_AND_WATCH,
                request_serializer=dp.Empty.SerializeToString,
                response_deserializer=None,  # bytes: see _parse_snapshot
            )(dp.Empty())
            with self._changed:
                endpoint.call = call
                endpoint.stream_open = not endpoint.closed
                self._streams_opened[resource] = self._streams_opened.get(resource, 0) + 1
                self._changed.notify_all()
            for raw in call:
                snapshot = self._parse_snapshot(resource, raw)
                with self._changed:
                    if endpoint.closed or (
                        # The legacy kubelet keys snapshots by resource name only.
                        not self.legacy_reregistration
                        and self._endpoints.get(resource) is not endpoint
                    ):
                        break
                    self._snapshots.setdefault(resource, []).append(snapshot)
                    self._devices[resource] = snapshot
                    self._changed.notify_all()
                healthy = sum(d.health == HEALTHY for d in snapshot)
                LOG.info(
                    "snapshot resource=%s devices=%d healthy=%d", resource, len(snapshot), healthy
                )
        except grpc.RpcError as err:
            reason = _rpc_reason(err)
        except DecodeError as err:
            call.cancel()
            reason = f"unparseable ListAndWatchResponse: {err}"
        except ValueError as err:
            # The channel was closed before the stream could start.
            reason = str(err)
        with self._changed:
            endpoint.stream_open = False
            endpoint.stopped = True
            holder = self._endpoints.get(resource)
            # The legacy kubelet disconnects whichever client holds the name, even a newer one.
            victim = holder if self.legacy_reregistration else None
            current = holder is endpoint or victim is not None
            if victim is not None:
                victim.stopped = True
            if current and resource in self._devices:
                # As the kubelet: everything unhealthy, and the stream is never reopened.
                self._devices[resource] = [
                    replace(d, health=UNHEALTHY) for d in self._devices[resource]
                ]
            self._changed.notify_all()
        if victim is not None and victim is not endpoint and not victim.closed:
            LOG.warning(
                "an old stream of resource=%s ended: the current registration (%s) is "
                "disconnected too, as kubelets before 1.36 do",
                resource,
                victim.socket_path,
            )
            self._close_endpoint(victim)
        if current:
            LOG.warning(
                "ListAndWatch ended resource=%s reason=%s; devices unhealthy until the plugin "
                "registers again",
                resource,
                reason,
            )

    def _parse_snapshot(self, resource: str, raw: bytes) -> list[DeviceState]:
        """A ListAndWatch response's devices; the same bytes as last time give the same list."""
        last = self._parsed.get(resource)
        if last is not None and last[0] == raw:
            return last[1]
        response = dp.ListAndWatchResponse.FromString(raw)
        snapshot = [DeviceState.from_proto(d) for d in response.devices]
        self._parsed[resource] = (raw, snapshot)
        return snapshot

    def _register_classic(
        self, request: dp.RegisterRequest, stopping: threading.Event
    ) -> Registration:
        resource = request.resource_name
        try:
            forced = self._take_forced_failure()
            if forced is not None:
                raise _RegistrationError(forced)
            if request.version != VERSION:
                raise _RegistrationError(
                    f"unsupported API version {request.version!r}, the kubelet supports {VERSION!r}"
                )
            problem = resource_name_problem(resource)
            if problem is not None:
                raise _RegistrationError(problem)
            socket_path = self.device_plugin_dir / request.endpoint
            endpoint, options = self._connect(resource, socket_path, "classic", stopping)
            request_options: dp.DevicePluginOptions | None = None
            if request.HasField("options"):
                request_options = dp.DevicePluginOptions()
                request_options.CopyFrom(request.options)
            registration = Registration(
                resource_name=resource,
                endpoint=request.endpoint,
                version=request.version,
                options=options,
                mode="classic",
                time=time.monotonic(),
                request_options=request_options,
            )
            self._commit(endpoint, registration, stopping)
        except _RegistrationError as err:
            self._record_failure(resource, str(err))
            raise
        return registration

    # ---- plugin watcher --------------------------------------------------------------------

    def _watch_registry(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self._scan_registry(stopping)
            except OSError as err:
                LOG.warning("cannot scan plugins_registry=%s: %s", self.plugins_registry_dir, err)
            stopping.wait(REGISTRY_POLL_INTERVAL)

    def _scan_registry(self, stopping: threading.Event) -> None:
        assert self.plugins_registry_dir is not None
        # Inodes are reused at once on tmpfs; the change time tells a re-created socket apart.
        present: dict[Path, tuple[int, int, int]] = {}
        with os.scandir(self.plugins_registry_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    present[Path(entry.path)] = (st.st_dev, st.st_ino, st.st_ctime_ns)
        now = time.monotonic()
        with self._lock:
            gone = [p for p, key in self._watched.items() if present.get(p) != key]
            for path in gone:
                del self._watched[path]
                self._attempts.pop(path, None)
                self._retry_at.pop(path, None)
            new = [p for p, key in present.items() if self._watched.get(p) != key]
            self._watched.update({p: present[p] for p in new})
            due = [p for p, at in self._retry_at.items() if at <= now]
            for path in due:
                del self._retry_at[path]
        for path in gone:
            self._deregister_socket(path)
        for path in new + due:
            pool = self._watch_pool
            if pool is None or stopping.is_set():
                return
            pool.submit(self._register_watcher, path, present[path], stopping)

    def _watcher_attempt_done(self, path: Path, key: tuple[int, int, int], ok: bool) -> None:
        with self._lock:
            if self._watched.get(path) != key:
                return  # the socket went or was re-created meanwhile: the scanner handles it
            if ok:
                self._attempts.pop(path, None)
                return
            attempts = self._attempts.get(path, 0) + 1
            self._attempts[path] = attempts
            delay = min(WATCHER_RETRY_INITIAL * 2 ** (attempts - 1), WATCHER_RETRY_MAX)
            self._retry_at[path] = time.monotonic() + delay

    def _deregister_socket(self, path: Path) -> None:
        with self._changed:
            resource = self._watched_resource.pop(path, None)
            endpoint = self._endpoints.get(resource) if resource is not None else None
            if endpoint is None or endpoint.mode != "watcher":
                return
            del self._endpoints[endpoint.resource]
            if endpoint.resource in self._devices:
                self._devices[endpoint.resource] = [
                    replace(d, health=UNHEALTHY) for d in self._devices[endpoint.resource]
                ]
            self._changed.notify_all()
        LOG.info("de-registered resource=%s socket=%s (socket removed)", endpoint.resource, path)
        self._close_endpoint(endpoint)

    def _register_watcher(
        self, socket_path: Path, key: tuple[int, int, int], stopping: threading.Event
    ) -> None:
        ok = False
        channel = grpc.insecure_channel(f"unix:{socket_path}")
        try:
            try:
                self._dial(socket_path, stopping)
                info: reg.PluginInfo = reg_grpc.RegistrationStub(channel).GetInfo(
                    reg.InfoRequest(), timeout=GET_INFO_TIMEOUT, wait_for_ready=True
                )
            except _RegistrationError as err:
                self._record_failure("", f"socket {socket_path}: {err}")
                return
            except grpc.RpcError as err:
                self._record_failure("", f"GetInfo on {socket_path} failed: {_rpc_reason(err)}")
                return
            resource = info.name
            try:
                self._register_from_info(socket_path, info, stopping)
            except _RegistrationError as err:
                self._record_failure(resource, str(err))
                self._notify(channel, socket_path, False, str(err))
            else:
                ok = True
                self._notify(channel, socket_path, True, "")
        finally:
            channel.close()
            if not stopping.is_set():
                self._watcher_attempt_done(socket_path, key, ok)

    def _register_from_info(
        self, socket_path: Path, info: reg.PluginInfo, stopping: threading.Event
    ) -> None:
        forced = self._take_forced_failure()
        if forced is not None:
            raise _RegistrationError(forced)
        if info.type != PLUGIN_TYPE:
            raise _RegistrationError(f"plugin type {info.type!r} is not {PLUGIN_TYPE!r}")
        if VERSION not in info.supported_versions:
            raise _RegistrationError(
                f"none of the supported versions {list(info.supported_versions)} is {VERSION!r}"
            )
        problem = resource_name_problem(info.name)
        if problem is not None:
            raise _RegistrationError(problem)
        target = Path(info.endpoint) if info.endpoint else socket_path
        if not target.is_absolute():
            raise _RegistrationError(f"endpoint {info.endpoint!r} is not an absolute path")
        endpoint, options = self._connect(info.name, target, "watcher", stopping)
        registration = Registration(
            resource_name=info.name,
            endpoint=str(target),
            version=VERSION,
            options=options,
            mode="watcher",
            time=time.monotonic(),
        )
        self._commit(endpoint, registration, stopping)
        with self._lock:
            self._watched_resource[socket_path] = info.name

    def _notify(self, channel: grpc.Channel, socket_path: Path, ok: bool, error: str) -> None:
        with self._changed:
            self._notifications.append((str(socket_path), ok, error))
            self._changed.notify_all()
        try:
            reg_grpc.RegistrationStub(channel).NotifyRegistrationStatus(
                reg.RegistrationStatus(plugin_registered=ok, error=error), timeout=NOTIFY_TIMEOUT
            )
        except grpc.RpcError as err:
            LOG.warning(
                "NotifyRegistrationStatus failed socket=%s: %s", socket_path, _rpc_reason(err)
            )


class _PodResourcesService:
    """v1 PodResourcesLister over the simulator's pods."""

    def __init__(self, kubelet: KubeletSimulator) -> None:
        self.kubelet = kubelet

    def List(
        self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr.ListPodResourcesResponse:
        return self.kubelet.list_pod_resources()

    def GetAllocatableResources(
        self, request: pr.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> pr.AllocatableResourcesResponse:
        return pr.AllocatableResourcesResponse()


class _RegistrationService:
    """`v1beta1.Registration` on `kubelet.sock`, bound to one run of the simulator.

    Not derived from the generated servicer, which is untyped; the method name is the contract.
    """

    def __init__(self, kubelet: KubeletSimulator, stopping: threading.Event) -> None:
        self._kubelet = kubelet
        self._stopping = stopping

    def Register(self, request: dp.RegisterRequest, context: grpc.ServicerContext) -> dp.Empty:
        try:
            self._kubelet._register_classic(request, self._stopping)
        except _RegistrationError as err:
            # The kubelet returns a plain Go error, which gRPC sends as UNKNOWN.
            context.abort(grpc.StatusCode.UNKNOWN, str(err))
        return dp.Empty()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator.kubelet",
        description="A kubelet simulator for device plugins (registration, ListAndWatch).",
    )
    parser.add_argument("--device-plugin-dir", type=Path, required=True)
    parser.add_argument("--plugins-registry-dir", type=Path, default=None)
    parser.add_argument("--dial-timeout", type=float, default=10.0)
    parser.add_argument(
        "--legacy-reregistration",
        action="store_true",
        help="behave like kubelets before 1.36 when a resource registers again (see the docs)",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    simulator = KubeletSimulator(
        args.device_plugin_dir,
        args.plugins_registry_dir,
        args.dial_timeout,
        legacy_reregistration=args.legacy_reregistration,
    )
    try:
        simulator.start()
    except (KubeletSimulatorError, OSError) as err:
        print(f"error: cannot start the kubelet simulator: {err}", file=sys.stderr)
        return 1
    try:
        while not done.wait(0.5):
            pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
