"""The simulated kubelet's plugin watcher (test and demo processes, never the plugin's).

As the kubelet's plugin manager: a socket that appears in the plugins-registry dir is dialled,
asked `GetInfo`, registered with the device manager (`simulator.kubelet`) and told
`NotifyRegistrationStatus`; a refusal is retried with the kubelet's backoff; removing the socket
de-registers the plugin. One `PluginWatcher` per run of the kubelet: a restart starts afresh.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import grpc

from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from simulator.kubelet_records import (
    GET_INFO_TIMEOUT,
    NOTIFY_TIMEOUT,
    PLUGIN_TYPE,
    REGISTRY_POLL_INTERVAL,
    VERSION,
    WATCHER_RETRY_INITIAL,
    WATCHER_RETRY_MAX,
    Endpoint,
    Mode,
    Registration,
    RegistrationRefused,
    resource_name_problem,
    rpc_reason,
)

LOG = logging.getLogger(__name__)

#: A socket's identity: (st_dev, st_ino, st_ctime_ns).
Identity = tuple[int, int, int]


class DeviceManager(Protocol):
    """What the watcher asks of the kubelet's device manager (`KubeletSimulator`)."""

    def dial(self, target: Path, stopping: threading.Event) -> None: ...

    def connect(
        self, resource: str, socket_path: Path, mode: Mode, stopping: threading.Event
    ) -> tuple[Endpoint, dp.DevicePluginOptions]: ...

    def commit(
        self, endpoint: Endpoint, registration: Registration, stopping: threading.Event
    ) -> None: ...

    def take_forced_failure(self) -> str | None: ...

    def record_failure(self, resource: str, reason: str) -> None: ...

    def record_notification(self, socket_path: str, ok: bool, error: str) -> None: ...

    def deregister_watcher(self, resource: str, socket_path: Path) -> None: ...


class PluginWatcher:
    def __init__(
        self, manager: DeviceManager, registry_dir: Path, stopping: threading.Event
    ) -> None:
        self.manager = manager
        self.registry_dir = registry_dir
        self.stopping = stopping
        self._lock = threading.Lock()
        # plugins-registry socket path -> identity as last seen, and what it registered.
        self._watched: dict[Path, Identity] = {}
        self._watched_resource: dict[Path, str] = {}
        # Failed registrations: attempts so far, and when the next one is due.
        self._attempts: dict[Path, int] = {}
        self._retry_at: dict[Path, float] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kubelet-sim-watch")
        self._thread = threading.Thread(target=self._watch, name="kubelet-sim-watcher")

    def start(self) -> None:
        self._thread.start()
        LOG.info("kubelet simulator watching plugins_registry=%s", self.registry_dir)

    def join(self) -> None:
        """After `stopping` is set: returns once no watcher thread is left."""
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ---- the registry folder ---------------------------------------------------------------

    def _watch(self) -> None:
        while not self.stopping.is_set():
            try:
                self._scan()
            except OSError as err:
                LOG.warning("cannot scan plugins_registry=%s: %s", self.registry_dir, err)
            self.stopping.wait(REGISTRY_POLL_INTERVAL)

    def _scan(self) -> None:
        # Inodes are reused at once on tmpfs; the change time tells a re-created socket apart.
        present: dict[Path, Identity] = {}
        with os.scandir(self.registry_dir) as entries:
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
            self._deregister(path)
        for path in new + due:
            if self.stopping.is_set():
                return
            self._pool.submit(self._register, path, present[path])

    def _attempt_done(self, path: Path, key: Identity, ok: bool) -> None:
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

    def _deregister(self, path: Path) -> None:
        with self._lock:
            resource = self._watched_resource.pop(path, None)
        if resource is not None:
            self.manager.deregister_watcher(resource, path)

    # ---- one registration ------------------------------------------------------------------

    def _register(self, socket_path: Path, key: Identity) -> None:
        ok = False
        channel = grpc.insecure_channel(f"unix:{socket_path}")
        try:
            try:
                self.manager.dial(socket_path, self.stopping)
                info: reg.PluginInfo = reg_grpc.RegistrationStub(channel).GetInfo(
                    reg.InfoRequest(), timeout=GET_INFO_TIMEOUT, wait_for_ready=True
                )
            except RegistrationRefused as err:
                self.manager.record_failure("", f"socket {socket_path}: {err}")
                return
            except grpc.RpcError as err:
                self.manager.record_failure(
                    "", f"GetInfo on {socket_path} failed: {rpc_reason(err)}"
                )
                return
            resource = info.name
            try:
                self._register_from_info(socket_path, info)
            except RegistrationRefused as err:
                self.manager.record_failure(resource, str(err))
                self._notify(channel, socket_path, False, str(err))
            else:
                ok = True
                self._notify(channel, socket_path, True, "")
        finally:
            channel.close()
            if not self.stopping.is_set():
                self._attempt_done(socket_path, key, ok)

    def _register_from_info(self, socket_path: Path, info: reg.PluginInfo) -> None:
        forced = self.manager.take_forced_failure()
        if forced is not None:
            raise RegistrationRefused(forced)
        if info.type != PLUGIN_TYPE:
            raise RegistrationRefused(f"plugin type {info.type!r} is not {PLUGIN_TYPE!r}")
        if VERSION not in info.supported_versions:
            raise RegistrationRefused(
                f"none of the supported versions {list(info.supported_versions)} is {VERSION!r}"
            )
        problem = resource_name_problem(info.name)
        if problem is not None:
            raise RegistrationRefused(problem)
        target = Path(info.endpoint) if info.endpoint else socket_path
        if not target.is_absolute():
            raise RegistrationRefused(f"endpoint {info.endpoint!r} is not an absolute path")
        endpoint, options = self.manager.connect(info.name, target, "watcher", self.stopping)
        registration = Registration(
            resource_name=info.name,
            endpoint=str(target),
            version=VERSION,
            options=options,
            mode="watcher",
            time=time.monotonic(),
        )
        self.manager.commit(endpoint, registration, self.stopping)
        with self._lock:
            self._watched_resource[socket_path] = info.name

    def _notify(self, channel: grpc.Channel, socket_path: Path, ok: bool, error: str) -> None:
        self.manager.record_notification(str(socket_path), ok, error)
        try:
            reg_grpc.RegistrationStub(channel).NotifyRegistrationStatus(
                reg.RegistrationStatus(plugin_registered=ok, error=error), timeout=NOTIFY_TIMEOUT
            )
        except grpc.RpcError as err:
            LOG.warning(
                "NotifyRegistrationStatus failed socket=%s: %s", socket_path, rpc_reason(err)
            )
