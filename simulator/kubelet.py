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

What a real kubelet did (v1.32-1.37 with containerd), on request:

- `restart(killed=True)` leaves the dead `kubelet.sock` behind, and `same_inode=True` re-creates
  it at the same inode number, as ext4 did in 52 of 53 real restarts (`inode_reused` records
  whether that worked: on tmpfs it cannot);
- pods added with `add_pod(..., running=False)` are admitted again 23-99 ms after the new kubelet
  serves (`readmit_delay`); one whose resource is not registered by then, or whose devices are
  not all healthy, is rejected with the kubelet's `UnexpectedAdmissionError` message and dropped
  (`admissions()`);
- with `pod_resources_socket`, a PodResources `List` that names each held device once per NUMA
  node of its topology, in one `ContainerDevices` per node, as the kubelet does.

All times recorded here come from `time.monotonic()`. This module is the device manager
(registration, endpoints, streams, calls into the plugin) and the simulator's lifecycle; its
plugin watcher is `simulator.plugin_watcher`, its pods `simulator.kubelet_pods`, and the records
and rules they share `simulator.kubelet_records`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from proto.podresources.v1 import api_pb2 as pr
from simulator.kubelet_pods import SimulatedPods, Topology
from simulator.kubelet_records import (
    CHECKPOINT_FILE,
    DIAL_RETRY_INTERVAL,
    HEALTHY,
    KUBELET_SOCKET,
    MAX_SOCKET_PATH,
    READMIT_DELAY,
    SAME_INODE_ATTEMPTS,
    UNHEALTHY,
    VERSION,
    Admission,
    AdvertisedDevice,
    Endpoint,
    KubeletSimulatorError,
    Mode,
    Registration,
    RegistrationRefused,
    SimPod,
    is_socket,
    resource_name_problem,
    rpc_reason,
)
from simulator.plugin_watcher import PluginWatcher

__all__ = [  # what tests, benchmarks and the demo import from here
    "CHECKPOINT_FILE",
    "HEALTHY",
    "READMIT_DELAY",
    "UNHEALTHY",
    "Admission",
    "AdvertisedDevice",
    "KubeletSimulator",
    "KubeletSimulatorError",
    "Registration",
    "SimPod",
    "resource_name_problem",
]

LOG = logging.getLogger(__name__)

#: ListAndWatch as raw bytes: a plugin re-sends the same snapshot on every registration, and
#: parsing 1000 devices each time would cost this (single-GIL) simulator more CPU than the plugin
#: spends sending them; identical bytes reuse the parse (`KubeletSimulator._parse_snapshot`).
_LIST_AND_WATCH = "/v1beta1.DevicePlugin/ListAndWatch"


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
        # Resources this kubelet has seen registered (its checkpoint keeps them across restarts).
        self._known_resources: set[str] = set()

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pods = SimulatedPods(self._changed)
        self._registrations: list[Registration] = []
        self._failures: list[tuple[str, str]] = []
        self._notifications: list[tuple[str, bool, str]] = []
        self._endpoints: dict[str, Endpoint] = {}
        # Every endpoint whose channel is still open (old ones too, in legacy mode).
        self._open: set[Endpoint] = set()
        self._devices: dict[str, list[AdvertisedDevice]] = {}
        self._snapshots: dict[str, list[list[AdvertisedDevice]]] = {}
        #: Per resource: the last snapshot's bytes and their parse (shared, never mutated).
        self._parsed: dict[str, tuple[bytes, list[AdvertisedDevice]]] = {}
        self._streams_opened: dict[str, int] = {}
        self._fail_next = 0
        self._fail_reason = ""

        self._running = False
        # Replaced on every start, so work begun before a stop can tell it is stale.
        self._stopping = threading.Event()
        self._server: Any = None
        self._server_pool: ThreadPoolExecutor | None = None
        self._stream_threads: list[threading.Thread] = []
        self._watcher: PluginWatcher | None = None

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
        watcher: PluginWatcher | None = None
        if self.plugins_registry_dir is not None:
            watcher = PluginWatcher(self, self.plugins_registry_dir, stopping)
        with self._lock:
            self._stopping = stopping
            self._server = server
            self._server_pool = pool
            self._watcher = watcher
            self._running = True
        LOG.info("kubelet simulator serving socket=%s", self.kubelet_socket)
        if watcher is not None:
            watcher.start()
        if self.pod_resources_socket is not None:
            self._pods.serve(self.pod_resources_socket, self._topology)
        if self._pods.waiting():
            delay = random.uniform(*self.readmit_delay)
            timer = threading.Timer(
                max(0.0, delay - (time.monotonic() - served_at)),
                self._pods.readmit,
                args=(stopping, served_at, self._admission_problem),
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
            watcher, self._watcher = self._watcher, None
            endpoints = list(self._open)
            self._endpoints.clear()
            # A stopped kubelet knows no devices; history (registrations, snapshots) is kept.
            self._devices.clear()
            self._changed.notify_all()
        if watcher is not None:
            watcher.join()
        server.stop(grace=None).wait()
        if pool is not None:
            pool.shutdown(wait=True)
        for endpoint in endpoints:
            self._close_endpoint(endpoint)
        with self._lock:
            threads, self._stream_threads = self._stream_threads, []
        for thread in threads:
            thread.join()
        self._pods.stop()
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
            if entry.name == CHECKPOINT_FILE or entry == keep or not is_socket(entry):
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()

    # ---- pods: re-admission and PodResources (simulator.kubelet_pods) ----------------------

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
        self._pods.add(name, resource, device_ids, running, namespace)

    def pods(self) -> list[SimPod]:
        return self._pods.all()

    def admissions(self) -> list[Admission]:
        return self._pods.admissions()

    def wait_for_admissions(self, count: int, timeout: float = 5.0) -> list[Admission]:
        return self._pods.wait_for_admissions(count, timeout)

    def list_pod_resources(self) -> pr.ListPodResourcesResponse:
        """What PodResources `List` answers: each held ID once per NUMA node of its device."""
        return self._pods.list(self._topology())

    def _admission_problem(self, pod: SimPod) -> str:
        """Why admitting `pod` again fails now, "" when it is admitted (the lock is held)."""
        endpoint = self._endpoints.get(pod.resource)
        healthy = {d.id for d in self._devices.get(pod.resource, []) if d.health == HEALTHY}
        if endpoint is None or endpoint.stopped:
            # The checkpoint brings back a known resource with no healthy device.
            return (
                f"no healthy devices present; cannot allocate unhealthy devices {pod.resource}"
                if pod.resource in self._known_resources
                else f"cannot allocate unregistered device {pod.resource}"
            )
        if not healthy:
            return f"no healthy devices present; cannot allocate unhealthy devices {pod.resource}"
        if not set(pod.device_ids) <= healthy:
            return (
                "previously allocated devices are no longer healthy; cannot allocate "
                f"unhealthy devices {pod.resource}"
            )
        return ""

    def _topology(self) -> Topology:
        # The kubelet keeps each allocated device's NUMA nodes (its checkpoint has them), so
        # they do not depend on a stream being open right now: the newest snapshot has them.
        with self._lock:
            return {
                (res, d.id): d.numa_nodes
                for res, history in self._snapshots.items()
                if history
                for d in history[-1]
            }

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

    def devices(self, resource: str) -> list[AdvertisedDevice] | None:
        """The devices of the latest snapshot (all unhealthy once the stream ended), or None."""
        with self._lock:
            current = self._devices.get(resource)
            return list(current) if current is not None else None

    def snapshots(self, resource: str) -> list[list[AdvertisedDevice]]:
        """Every `ListAndWatch` snapshot received for `resource`, across registrations."""
        with self._lock:
            return [list(s) for s in self._snapshots.get(resource, [])]

    def wait_for_devices(
        self,
        resource: str,
        predicate: Callable[[list[AdvertisedDevice]], bool],
        timeout: float = 5.0,
    ) -> list[AdvertisedDevice]:
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

    def _endpoint_for_call(self, resource: str) -> Endpoint:
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

    def take_forced_failure(self) -> str | None:
        with self._lock:
            if self._fail_next <= 0:
                return None
            self._fail_next -= 1
            return self._fail_reason

    def record_failure(self, resource: str, reason: str) -> None:
        LOG.warning("registration refused resource=%s reason=%s", resource, reason)
        with self._changed:
            self._failures.append((resource, reason))
            self._changed.notify_all()

    def dial(self, target: Path, stopping: threading.Event) -> None:
        """Dial like the kubelet (blocking, retried until `dial_timeout`), or give up on stop.

        A plain connect() probe rather than grpc's channel_ready_future: that one leaves a
        connectivity watch behind which makes every later channel.close() take 200 ms.
        """
        if len(os.fsencode(target)) > MAX_SOCKET_PATH:
            raise RegistrationRefused(
                f"socket path {target} is longer than {MAX_SOCKET_PATH} bytes"
            )
        deadline = time.monotonic() + self.dial_timeout
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(os.fsencode(target))
                    return
                except OSError:
                    pass
            if stopping.is_set():
                raise RegistrationRefused("kubelet is stopping")
            if time.monotonic() >= deadline:
                raise RegistrationRefused(
                    f"cannot dial {target} within {self.dial_timeout}s (is the plugin serving yet?)"
                )
            stopping.wait(DIAL_RETRY_INTERVAL)

    def connect(
        self, resource: str, socket_path: Path, mode: Mode, stopping: threading.Event
    ) -> tuple[Endpoint, dp.DevicePluginOptions]:
        """Dial the plugin and ask `GetDevicePluginOptions`, as the kubelet does in `Register`."""
        channel = grpc.insecure_channel(f"unix:{socket_path}")
        try:
            self.dial(socket_path, stopping)
            stub = dp_grpc.DevicePluginStub(channel)
            options: dp.DevicePluginOptions = stub.GetDevicePluginOptions(
                dp.Empty(), timeout=self.dial_timeout, wait_for_ready=True
            )
        except RegistrationRefused:
            channel.close()
            raise
        except grpc.RpcError as err:
            channel.close()
            raise RegistrationRefused(f"GetDevicePluginOptions failed: {rpc_reason(err)}") from None
        return Endpoint(resource, socket_path, channel, stub, mode), options

    def commit(
        self, endpoint: Endpoint, registration: Registration, stopping: threading.Event
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
            raise RegistrationRefused("kubelet is stopping")
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

    def _close_endpoint(self, endpoint: Endpoint) -> None:
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

    def _read_stream(self, endpoint: Endpoint) -> None:
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
            reason = rpc_reason(err)
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

    def _parse_snapshot(self, resource: str, raw: bytes) -> list[AdvertisedDevice]:
        """A ListAndWatch response's devices; the same bytes as last time give the same list."""
        last = self._parsed.get(resource)
        if last is not None and last[0] == raw:
            return last[1]
        response = dp.ListAndWatchResponse.FromString(raw)
        snapshot = [AdvertisedDevice.from_proto(d) for d in response.devices]
        self._parsed[resource] = (raw, snapshot)
        return snapshot

    def _register_classic(
        self, request: dp.RegisterRequest, stopping: threading.Event
    ) -> Registration:
        resource = request.resource_name
        try:
            forced = self.take_forced_failure()
            if forced is not None:
                raise RegistrationRefused(forced)
            if request.version != VERSION:
                raise RegistrationRefused(
                    f"unsupported API version {request.version!r}, the kubelet supports {VERSION!r}"
                )
            problem = resource_name_problem(resource)
            if problem is not None:
                raise RegistrationRefused(problem)
            socket_path = self.device_plugin_dir / request.endpoint
            endpoint, options = self.connect(resource, socket_path, "classic", stopping)
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
            self.commit(endpoint, registration, stopping)
        except RegistrationRefused as err:
            self.record_failure(resource, str(err))
            raise
        return registration

    # ---- plugin watcher (simulator.plugin_watcher) -----------------------------------------

    def record_notification(self, socket_path: str, ok: bool, error: str) -> None:
        with self._changed:
            self._notifications.append((socket_path, ok, error))
            self._changed.notify_all()

    def deregister_watcher(self, resource: str, socket_path: Path) -> None:
        """The watcher-mode plugin of `resource` removed its socket: forget its endpoint."""
        with self._changed:
            endpoint = self._endpoints.get(resource)
            if endpoint is None or endpoint.mode != "watcher":
                return
            del self._endpoints[endpoint.resource]
            if endpoint.resource in self._devices:
                self._devices[endpoint.resource] = [
                    replace(d, health=UNHEALTHY) for d in self._devices[endpoint.resource]
                ]
            self._changed.notify_all()
        LOG.info(
            "de-registered resource=%s socket=%s (socket removed)", endpoint.resource, socket_path
        )
        self._close_endpoint(endpoint)


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
        except RegistrationRefused as err:
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
