"""The kubelet simulator behaves like the kubelet, checked against a tiny in-test fake plugin.

Runs in the test process: real gRPC servers on unix sockets in a short temporary folder (socket
paths are limited to 107 bytes), the simulator as a library, and once as a subprocess.
"""

from __future__ import annotations

import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from simulator.kubelet import (
    CHECKPOINT_FILE,
    AdvertisedDevice,
    KubeletSimulator,
    KubeletSimulatorError,
    resource_name_problem,
)
from tests.conditions import wait_until

RESOURCE = "rdma/hca_shared_devices_a"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _device(dev_id: str, health: str = "Healthy", numa: tuple[int, ...] = ()) -> dp.Device:
    device = dp.Device(ID=dev_id, health=health)
    if numa:
        device.topology.nodes.extend(dp.NUMANode(ID=n) for n in numa)
    return device


class FakePlugin:
    """A device plugin with canned answers; optionally also serves plugin-watcher registration."""

    def __init__(
        self,
        socket_path: Path,
        devices: list[dp.Device],
        options: dp.DevicePluginOptions | None = None,
        info: reg.PluginInfo | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.devices = devices
        self.options = options or dp.DevicePluginOptions()
        self.info = info
        self.lock = threading.Lock()
        self.streams_started = 0
        self.streams_ended = 0
        self.queues: list[queue.Queue[list[dp.Device] | None]] = []
        self.allocate_requests: list[dp.AllocateRequest] = []
        self.statuses: list[reg.RegistrationStatus] = []
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fake-plugin")
        self._server: Any = grpc.server(self._pool)
        dp_grpc.add_DevicePluginServicer_to_server(self, self._server)
        if info is not None:
            reg_grpc.add_RegistrationServicer_to_server(self, self._server)
        assert self._server.add_insecure_port(f"unix:{socket_path}") != 0
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()
        self._pool.shutdown(wait=True)

    # DevicePlugin
    def GetDevicePluginOptions(self, request: dp.Empty, context: Any) -> dp.DevicePluginOptions:
        return self.options

    def ListAndWatch(self, request: dp.Empty, context: Any) -> Iterator[dp.ListAndWatchResponse]:
        updates: queue.Queue[list[dp.Device] | None] = queue.Queue()
        with self.lock:
            self.streams_started += 1
            self.queues.append(updates)
        context.add_callback(lambda: updates.put(None))
        try:
            devices: list[dp.Device] | None = self.devices
            while devices is not None and context.is_active():
                yield dp.ListAndWatchResponse(devices=devices)
                devices = updates.get()
        finally:
            with self.lock:
                self.streams_ended += 1

    def push(self, devices: list[dp.Device]) -> None:
        with self.lock:
            self.devices = devices
            for updates in self.queues:
                updates.put(devices)

    def end_streams(self) -> None:
        with self.lock:
            for updates in self.queues:
                updates.put(None)

    def Allocate(self, request: dp.AllocateRequest, context: Any) -> dp.AllocateResponse:
        self.allocate_requests.append(request)
        known = {d.ID for d in self.devices}
        unknown = [i for c in request.container_requests for i in c.devices_ids if i not in known]
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown device IDs {unknown}")
        return dp.AllocateResponse(
            container_responses=[
                dp.ContainerAllocateResponse(envs={"IDS": ",".join(c.devices_ids)})
                for c in request.container_requests
            ]
        )

    def GetPreferredAllocation(
        self, request: dp.PreferredAllocationRequest, context: Any
    ) -> dp.PreferredAllocationResponse:
        return dp.PreferredAllocationResponse(
            container_responses=[
                dp.ContainerPreferredAllocationResponse(
                    deviceIDs=list(c.available_deviceIDs)[: c.allocation_size]
                )
                for c in request.container_requests
            ]
        )

    def PreStartContainer(
        self, request: dp.PreStartContainerRequest, context: Any
    ) -> dp.PreStartContainerResponse:
        return dp.PreStartContainerResponse()

    # pluginregistration.Registration
    def GetInfo(self, request: reg.InfoRequest, context: Any) -> reg.PluginInfo:
        assert self.info is not None
        return self.info

    def NotifyRegistrationStatus(
        self, request: reg.RegistrationStatus, context: Any
    ) -> reg.RegistrationStatusResponse:
        with self.lock:
            self.statuses.append(request)
        return reg.RegistrationStatusResponse()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ks-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[KubeletSimulator]:
    simulator = KubeletSimulator(short_dir / "dp", dial_timeout=0.5)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def plugins() -> Iterator[list[FakePlugin]]:
    started: list[FakePlugin] = []
    yield started
    for plugin in started:
        plugin.stop()


def _register(
    kubelet: KubeletSimulator,
    endpoint: str,
    resource: str = RESOURCE,
    version: str = "v1beta1",
    options: dp.DevicePluginOptions | None = None,
) -> None:
    with grpc.insecure_channel(f"unix:{kubelet.kubelet_socket}") as channel:
        dp_grpc.RegistrationStub(channel).Register(
            dp.RegisterRequest(
                version=version, endpoint=endpoint, resource_name=resource, options=options
            ),
            timeout=5,
        )


def _serve(
    plugins: list[FakePlugin],
    socket_path: Path,
    devices: list[dp.Device] | None = None,
    **kwargs: Any,
) -> FakePlugin:
    plugin = FakePlugin(
        socket_path, devices if devices is not None else [_device("0"), _device("1")], **kwargs
    )
    plugins.append(plugin)
    return plugin


def _serve_registered(kubelet: KubeletSimulator, plugins: list[FakePlugin]) -> FakePlugin:
    """A plugin on a.sock, registered, its devices seen healthy by the kubelet."""
    plugin = _serve(plugins, kubelet.device_plugin_dir / "a.sock")
    _register(kubelet, "a.sock")
    kubelet.wait_for_devices(RESOURCE, _all_healthy)
    return plugin


def _make_stale_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def _all_healthy(devices: list[AdvertisedDevice]) -> bool:
    return bool(devices) and all(d.health == "Healthy" for d in devices)


def _all_unhealthy(devices: list[AdvertisedDevice]) -> bool:
    return bool(devices) and all(d.health == "Unhealthy" for d in devices)


# ---- start and restart ------------------------------------------------------------------------


def test_start_wipes_sockets_but_keeps_checkpoint_and_files(short_dir: Path) -> None:
    dp_dir = short_dir / "dp"
    dp_dir.mkdir()
    _make_stale_socket(dp_dir / "old.sock")
    (dp_dir / CHECKPOINT_FILE).write_text("{}")
    (dp_dir / "notes.txt").write_text("kept: not a socket")
    with KubeletSimulator(dp_dir) as kubelet:
        assert not (dp_dir / "old.sock").exists()
        assert (dp_dir / CHECKPOINT_FILE).read_text() == "{}"
        assert (dp_dir / "notes.txt").exists()
        assert kubelet.kubelet_socket.is_socket()


def test_start_creates_missing_dirs(short_dir: Path) -> None:
    with KubeletSimulator(short_dir / "a" / "dp", short_dir / "a" / "reg"):
        assert (short_dir / "a" / "dp" / "kubelet.sock").is_socket()
        assert (short_dir / "a" / "reg").is_dir()


def test_too_long_socket_path_is_a_clear_error(short_dir: Path) -> None:
    simulator = KubeletSimulator(short_dir / ("d" * 120))
    with pytest.raises(KubeletSimulatorError, match="longer than 107 bytes"):
        simulator.start()


def test_restart_wipes_sockets_recreates_kubelet_sock_and_drops_streams(
    kubelet: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    dp_dir = kubelet.device_plugin_dir
    (dp_dir / CHECKPOINT_FILE).write_text("checkpoint")
    plugin = _serve(plugins, dp_dir / "a.sock")
    _register(kubelet, "a.sock")
    kubelet.wait_for_devices(RESOURCE, _all_healthy)
    inode = kubelet.kubelet_socket.stat().st_ino

    kubelet.restart()

    assert kubelet.kubelet_socket.stat().st_ino != inode
    assert not (dp_dir / "a.sock").exists()
    assert (dp_dir / CHECKPOINT_FILE).read_text() == "checkpoint"
    assert kubelet.devices(RESOURCE) is None
    assert not kubelet.is_registered(RESOURCE)
    wait_until(lambda: plugin.streams_ended == 1, what="plugin sees its stream end")
    # History survives, so "registered again" is count=2.
    assert len(kubelet.registrations()) == 1

    plugin.stop()
    plugins.remove(plugin)
    _serve(plugins, dp_dir / "a.sock")
    _register(kubelet, "a.sock")
    second = kubelet.wait_for_registration(RESOURCE, count=2)
    assert second.time > kubelet.registrations()[0].time
    kubelet.wait_for_devices(RESOURCE, _all_healthy)


def test_stop_leaves_no_thread_and_is_idempotent(
    short_dir: Path, plugins: list[FakePlugin]
) -> None:
    kubelet = KubeletSimulator(short_dir / "dp", short_dir / "reg", dial_timeout=0.5)
    kubelet.start()
    _serve(plugins, kubelet.device_plugin_dir / "a.sock")
    _register(kubelet, "a.sock")
    kubelet.wait_for_devices(RESOURCE, _all_healthy)
    assert any(t.name.startswith("kubelet-sim") for t in threading.enumerate())
    kubelet.stop()
    kubelet.stop()
    left = [t.name for t in threading.enumerate() if t.name.startswith("kubelet-sim")]
    assert left == []


# ---- classic registration ---------------------------------------------------------------------


def test_registration_dials_back_and_records_options_and_snapshot(
    kubelet: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    served = dp.DevicePluginOptions(get_preferred_allocation_available=True)
    _serve(
        plugins,
        kubelet.device_plugin_dir / "a.sock",
        [_device("0", numa=(0,)), _device("1", "Unhealthy", numa=(0, 1))],
        options=served,
    )
    sent = dp.DevicePluginOptions(pre_start_required=True)
    _register(kubelet, "a.sock", options=sent)

    registration = kubelet.wait_for_registration(RESOURCE)
    assert registration.endpoint == "a.sock"
    assert registration.version == "v1beta1"
    assert registration.mode == "classic"
    assert registration.options == served
    assert registration.request_options == sent
    devices = kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 2)
    assert devices == [
        AdvertisedDevice("0", "Healthy", (0,)),
        AdvertisedDevice("1", "Unhealthy", (0, 1)),
    ]
    assert kubelet.stream_open(RESOURCE)
    assert kubelet.streams_opened(RESOURCE) == 1


def test_registration_fails_when_plugin_not_serving(kubelet: KubeletSimulator) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _register(kubelet, "missing.sock")
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    assert "is the plugin serving yet" in caught.value.details()
    assert kubelet.registrations() == []
    [(resource, reason)] = kubelet.failed_registrations()
    assert resource == RESOURCE
    assert "missing.sock" in reason


def test_registration_fails_on_a_stale_socket_file(kubelet: KubeletSimulator) -> None:
    _make_stale_socket(kubelet.device_plugin_dir / "stale.sock")
    with pytest.raises(grpc.RpcError):
        _register(kubelet, "stale.sock")
    assert not kubelet.is_registered(RESOURCE)


def test_bad_version_refused(kubelet: KubeletSimulator, plugins: list[FakePlugin]) -> None:
    _serve(plugins, kubelet.device_plugin_dir / "a.sock")
    with pytest.raises(grpc.RpcError) as caught:
        _register(kubelet, "a.sock", version="v1alpha")
    assert "unsupported API version 'v1alpha'" in caught.value.details()
    assert kubelet.registrations() == []


@pytest.mark.parametrize(
    "name",
    [
        "hca",
        "kubernetes.io/hca",
        "example.kubernetes.io/hca",
        "requests.example.com/hca",
        "example_prefix/hca",
        "Example.com/hca",
        "example.com/",
        "example.com/-hca",
        "example.com/hca.",
        "example.com/a/b",
        "/hca",
        "example.com/" + "a" * 64,
        "x" * 250 + "/hca",
    ],
)
def test_resource_names_the_kubelet_refuses(name: str) -> None:
    assert resource_name_problem(name) is not None


@pytest.mark.parametrize(
    "name",
    [RESOURCE, "example.com/a.b_c-D", "rdma/" + "a" * 63, "a-b.c/x", "rdma/hca_shared_devices_b"],
)
def test_resource_names_the_kubelet_accepts(name: str) -> None:
    assert resource_name_problem(name) is None


def test_bad_resource_name_refused_at_register(
    kubelet: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    _serve(plugins, kubelet.device_plugin_dir / "a.sock")
    with pytest.raises(grpc.RpcError) as caught:
        _register(kubelet, "a.sock", resource="example_prefix/hca")
    assert "DNS-1123" in caught.value.details()
    assert kubelet.failed_registrations()[0][0] == "example_prefix/hca"


def test_fail_next_registrations(kubelet: KubeletSimulator, plugins: list[FakePlugin]) -> None:
    _serve(plugins, kubelet.device_plugin_dir / "a.sock")
    kubelet.fail_next_registrations(2, "kubelet busy")
    for _ in range(2):
        with pytest.raises(grpc.RpcError, match="kubelet busy"):
            _register(kubelet, "a.sock")
    _register(kubelet, "a.sock")
    kubelet.wait_for_registration(RESOURCE)
    assert kubelet.failed_registrations() == [(RESOURCE, "kubelet busy")] * 2


def test_wait_for_registration_times_out_with_reasons(kubelet: KubeletSimulator) -> None:
    with pytest.raises(grpc.RpcError):
        _register(kubelet, "missing.sock")
    with pytest.raises(TimeoutError, match=r"missing\.sock"):
        kubelet.wait_for_registration(RESOURCE, timeout=0.05)


# ---- ListAndWatch -----------------------------------------------------------------------------


def test_every_snapshot_is_recorded(kubelet: KubeletSimulator, plugins: list[FakePlugin]) -> None:
    plugin = _serve_registered(kubelet, plugins)
    plugin.push([_device("0", "Unhealthy"), _device("1")])
    kubelet.wait_for_devices(RESOURCE, lambda d: d[0].health == "Unhealthy")
    plugin.push([])
    kubelet.wait_for_devices(RESOURCE, lambda d: d == [])
    assert [[d.health for d in s] for s in kubelet.snapshots(RESOURCE)] == [
        ["Healthy", "Healthy"],
        ["Unhealthy", "Healthy"],
        [],
    ]


def test_a_resent_snapshot_is_recorded_each_time(
    kubelet: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    # The simulator reuses the parse of bytes it has just seen (a plugin re-sends the same
    # snapshot on every registration): a repeat, and a change back, are snapshots of their own.
    plugin = _serve_registered(kubelet, plugins)
    first = plugin.devices
    for devices in (first, [_device("0", "Unhealthy")], first):
        plugin.push(devices)
    wait_until(lambda: len(kubelet.snapshots(RESOURCE)) == 4, what="four snapshots")
    both = [("0", "Healthy"), ("1", "Healthy")]
    assert [[(d.id, d.health) for d in s] for s in kubelet.snapshots(RESOURCE)] == [
        both,
        both,
        [("0", "Unhealthy")],
        both,
    ]
    assert [(d.id, d.health) for d in kubelet.devices(RESOURCE) or []] == both


def test_an_unparseable_snapshot_ends_the_stream(
    kubelet: KubeletSimulator, short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A plugin answering ListAndWatch with bytes that are no ListAndWatchResponse: the kubelet
    # drops the stream and marks nothing healthy; the simulator goes on serving.
    def list_and_watch(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"\xff\xff\xff"
        while context.is_active():
            time.sleep(0.05)

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handlers = {
        "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
            lambda request, context: dp.DevicePluginOptions().SerializeToString()
        ),
        "ListAndWatch": grpc.unary_stream_rpc_method_handler(list_and_watch),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("v1beta1.DevicePlugin", handlers),)
    )
    server.add_insecure_port(f"unix:{kubelet.device_plugin_dir / 'bad.sock'}")
    server.start()
    try:
        with caplog.at_level("WARNING", logger="simulator.kubelet"):
            _register(kubelet, "bad.sock")
            wait_until(
                lambda: kubelet.streams_opened(RESOURCE) == 1 and not kubelet.stream_open(RESOURCE),
                what="the stream opened and ended",
            )
        assert kubelet.devices(RESOURCE) is None
        assert "unparseable ListAndWatchResponse" in caplog.text
        assert kubelet.kubelet_socket.exists()
    finally:
        server.stop(grace=None).wait()


def test_broken_stream_is_never_reopened(
    kubelet: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    plugin = _serve_registered(kubelet, plugins)

    kubelet.break_stream(RESOURCE)

    assert not kubelet.stream_open(RESOURCE)
    assert not kubelet.is_registered(RESOURCE)
    assert _all_unhealthy(kubelet.devices(RESOURCE) or [])
    wait_until(lambda: plugin.streams_ended == 1, what="plugin sees the cancelled stream")
    # The reader thread has finished (break_stream joins it), so any reopening would show now.
    assert kubelet.streams_opened(RESOURCE) == 1
    assert plugin.streams_started == 1
    with pytest.raises(KubeletSimulatorError, match="stopped"):
        kubelet.allocate(RESOURCE, [["0"]])

    # Only a new registration brings the resource back.
    _register(kubelet, "a.sock")
    kubelet.wait_for_registration(RESOURCE, count=2)
    kubelet.wait_for_devices(RESOURCE, _all_healthy)
    assert kubelet.streams_opened(RESOURCE) == 2


def test_stream_ended_by_plugin_marks_devices_unhealthy(
    kubelet: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    plugin = _serve_registered(kubelet, plugins)
    plugin.end_streams()
    kubelet.wait_for_devices(RESOURCE, _all_unhealthy)
    wait_until(lambda: not kubelet.stream_open(RESOURCE), what="stream closed")
    assert kubelet.streams_opened(RESOURCE) == 1
    assert len(kubelet.snapshots(RESOURCE)) == 1


def test_new_registration_replaces_old_stream(
    kubelet: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    old = _serve(plugins, kubelet.device_plugin_dir / "old.sock", [_device("0")])
    _register(kubelet, "old.sock")
    kubelet.wait_for_devices(RESOURCE, lambda d: [x.id for x in d] == ["0"])
    _serve(plugins, kubelet.device_plugin_dir / "new.sock", [_device("0"), _device("1")])
    _register(kubelet, "new.sock")
    assert kubelet.wait_for_registration(RESOURCE, count=2).endpoint == "new.sock"
    wait_until(lambda: old.streams_ended == 1, what="old stream cancelled")
    devices = kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 2)
    assert _all_healthy(devices)
    assert kubelet.stream_open(RESOURCE)
    assert kubelet.is_registered(RESOURCE)


def test_legacy_reregistration_old_stream_end_disconnects_the_new_one(
    short_dir: Path, plugins: list[FakePlugin]
) -> None:
    with KubeletSimulator(short_dir / "dp", legacy_reregistration=True) as kubelet:
        old = _serve(plugins, kubelet.device_plugin_dir / "old.sock", [_device("0")])
        _register(kubelet, "old.sock")
        kubelet.wait_for_devices(RESOURCE, lambda d: [x.id for x in d] == ["0"])
        new = _serve(plugins, kubelet.device_plugin_dir / "new.sock", [_device("0"), _device("1")])
        _register(kubelet, "new.sock")
        kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 2)

        # The old stream is still open and its snapshots still count.
        old.push([_device("0"), _device("1"), _device("2")])
        kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 3)
        assert old.streams_ended == 0

        # When it ends, the kubelet disconnects the current (new) registration.
        old.end_streams()
        kubelet.wait_for_devices(RESOURCE, _all_unhealthy)
        wait_until(lambda: new.streams_ended == 1, what="new stream closed by the kubelet")
        assert not kubelet.is_registered(RESOURCE)
        with pytest.raises(KubeletSimulatorError, match="stopped"):
            kubelet.allocate(RESOURCE, [["0"]])

        _register(kubelet, "new.sock")
        kubelet.wait_for_registration(RESOURCE, count=3)
        kubelet.wait_for_devices(RESOURCE, lambda d: len(d) == 2 and _all_healthy(d))
        assert kubelet.is_registered(RESOURCE)


# ---- calls into the plugin --------------------------------------------------------------------


def test_allocate_and_other_calls(kubelet: KubeletSimulator, plugins: list[FakePlugin]) -> None:
    plugin = _serve(
        plugins,
        kubelet.device_plugin_dir / "a.sock",
        options=dp.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    _register(kubelet, "a.sock")
    kubelet.wait_for_registration(RESOURCE)

    response = kubelet.allocate(RESOURCE, [["0"], ["0", "1"]])
    assert [dict(c.envs) for c in response.container_responses] == [
        {"IDS": "0"},
        {"IDS": "0,1"},
    ]
    assert len(plugin.allocate_requests) == 1
    with pytest.raises(grpc.RpcError) as caught:
        kubelet.allocate(RESOURCE, [["7"]])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    preferred = kubelet.get_preferred_allocation(RESOURCE, ["0", "1"], [], 1)
    assert list(preferred.container_responses[0].deviceIDs) == ["0"]
    assert kubelet.pre_start_container(RESOURCE, ["0"]) == dp.PreStartContainerResponse()
    assert kubelet.get_options(RESOURCE).get_preferred_allocation_available
    with pytest.raises(KubeletSimulatorError, match="not registered"):
        kubelet.allocate("example.com/other", [["0"]])


# ---- plugin-watcher mode ----------------------------------------------------------------------


@pytest.fixture
def watcher(short_dir: Path) -> Iterator[KubeletSimulator]:
    simulator = KubeletSimulator(short_dir / "dp", short_dir / "reg", dial_timeout=0.5)
    simulator.start()
    yield simulator
    simulator.stop()


def _info(
    name: str = RESOURCE,
    endpoint: str = "",
    kind: str = "DevicePlugin",
    versions: tuple[str, ...] = ("v1beta1",),
) -> reg.PluginInfo:
    return reg.PluginInfo(type=kind, name=name, endpoint=endpoint, supported_versions=versions)


def test_watcher_registers_socket_and_notifies(
    watcher: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    assert watcher.plugins_registry_dir is not None
    path = watcher.plugins_registry_dir / "rdma-a.sock"
    plugin = _serve(plugins, path, info=_info())

    registration = watcher.wait_for_registration(RESOURCE)
    assert registration.mode == "watcher"
    assert registration.endpoint == str(path)
    assert registration.request_options is None
    watcher.wait_for_devices(RESOURCE, _all_healthy)
    wait_until(lambda: plugin.statuses, what="NotifyRegistrationStatus")
    assert plugin.statuses == [reg.RegistrationStatus(plugin_registered=True)]
    assert watcher.notifications() == [(str(path), True, "")]

    # Removing the socket de-registers the plugin.
    path.unlink()
    wait_until(lambda: not watcher.is_registered(RESOURCE), what="de-registration")
    assert _all_unhealthy(watcher.devices(RESOURCE) or [])
    wait_until(lambda: plugin.streams_ended == 1, what="stream closed on de-registration")


def test_watcher_follows_separate_endpoint(
    watcher: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    assert watcher.plugins_registry_dir is not None
    serving = watcher.device_plugin_dir / "serving.sock"
    _serve(plugins, serving, [_device("9")])
    registrar = _serve(
        plugins, watcher.plugins_registry_dir / "r.sock", info=_info(endpoint=str(serving))
    )
    assert watcher.wait_for_registration(RESOURCE).endpoint == str(serving)
    watcher.wait_for_devices(RESOURCE, lambda d: [x.id for x in d] == ["9"])
    wait_until(lambda: registrar.statuses, what="NotifyRegistrationStatus")
    assert registrar.streams_started == 0


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (_info(kind="CSIPlugin"), "plugin type 'CSIPlugin'"),
        (_info(versions=("v1alpha1",)), "supported versions"),
        (_info(name="example_prefix/hca"), "DNS-1123"),
        (_info(endpoint="relative.sock"), "not an absolute path"),
        (_info(endpoint="/nonexistent/x.sock"), "cannot dial"),
    ],
    ids=["type", "version", "name", "relative-endpoint", "dead-endpoint"],
)
def test_watcher_refusal_is_notified(
    watcher: KubeletSimulator, plugins: list[FakePlugin], info: reg.PluginInfo, reason: str
) -> None:
    assert watcher.plugins_registry_dir is not None
    plugin = _serve(plugins, watcher.plugins_registry_dir / "p.sock", info=info)
    wait_until(lambda: plugin.statuses, what="NotifyRegistrationStatus")
    status = plugin.statuses[0]
    assert not status.plugin_registered
    assert reason in status.error
    assert watcher.registrations() == []
    assert watcher.failed_registrations()[0][1] == status.error


def test_watcher_retries_a_refused_registration_with_backoff(
    watcher: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    assert watcher.plugins_registry_dir is not None
    watcher.fail_next_registrations(2, "not now")
    started = time.monotonic()
    plugin = _serve(plugins, watcher.plugins_registry_dir / "p.sock", info=_info())
    registration = watcher.wait_for_registration(RESOURCE, timeout=5)
    wait_until(lambda: len(plugin.statuses) == 3, what="three notifications")
    assert [s.plugin_registered for s in plugin.statuses] == [False, False, True]
    assert [ok for _, ok, _ in watcher.notifications()] == [False, False, True]
    assert watcher.failed_registrations() == [(RESOURCE, "not now")] * 2
    # 0.5 s, then 1 s between attempts, as the kubelet's plugin manager backs off.
    assert registration.time - started >= 1.4


def test_watcher_fail_next_then_recreated_socket_registers(
    watcher: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    assert watcher.plugins_registry_dir is not None
    path = watcher.plugins_registry_dir / "p.sock"
    watcher.fail_next_registrations(1, "not now")
    first = _serve(plugins, path, info=_info())
    wait_until(lambda: first.statuses, what="refusal notified")
    assert first.statuses[0].error == "not now"
    # A plugin retries by re-creating its socket (a new inode).
    first.stop()
    plugins.remove(first)
    path.unlink(missing_ok=True)
    _serve(plugins, path, info=_info())
    watcher.wait_for_registration(RESOURCE)
    watcher.wait_for_devices(RESOURCE, _all_healthy)


def test_watcher_ignores_dot_names_and_plain_files(
    watcher: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    assert watcher.plugins_registry_dir is not None
    hidden = _serve(plugins, watcher.plugins_registry_dir / ".hidden.sock", info=_info())
    (watcher.plugins_registry_dir / "file.sock").write_text("not a socket")
    # A visible plugin registered after the hidden one proves the scanner has looked.
    _serve(plugins, watcher.plugins_registry_dir / "b.sock", info=_info(name="rdma/b"))
    watcher.wait_for_registration("rdma/b")
    assert [r.resource_name for r in watcher.registrations()] == ["rdma/b"]
    assert hidden.statuses == []
    assert watcher.failed_registrations() == []


def test_restart_rediscovers_registry_sockets(
    watcher: KubeletSimulator, plugins: list[FakePlugin]
) -> None:
    assert watcher.plugins_registry_dir is not None
    path = watcher.plugins_registry_dir / "p.sock"
    plugin = _serve(plugins, path, info=_info())
    watcher.wait_for_registration(RESOURCE)
    watcher.restart()
    # The kubelet keeps plugins_registry sockets and registers them again at start.
    assert path.is_socket()
    watcher.wait_for_registration(RESOURCE, count=2)
    wait_until(lambda: len(plugin.statuses) == 2, what="second notification")


# ---- command line -----------------------------------------------------------------------------


def test_cli_runs_until_sigterm(short_dir: Path) -> None:
    dp_dir = short_dir / "dp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.kubelet", "--device-plugin-dir", str(dp_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (dp_dir / "kubelet.sock").is_socket(), what="kubelet.sock")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "kubelet simulator serving" in err


def test_cli_reports_bad_dir(short_dir: Path) -> None:
    blocker = short_dir / "file"
    blocker.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "simulator.kubelet", "--device-plugin-dir", str(blocker / "dp")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot start the kubelet simulator" in result.stderr
