"""A real worker process against kubelets that behave like real ones under stress: slow to dial
back during Register, another local client on the worker's socket, a killed kubelet whose
successor reuses the inode number of `kubelet.sock`."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.messages import Heartbeat, Stop
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from simulator.kubelet import KubeletSimulator
from tests.conditions import wait_until
from tests.standin_supervisor import Rig, make_candidate, make_resource

RESOURCE = make_resource("hca_a", "example.com", 4)
FULL = "example.com/hca_a"
DEVICES = (make_candidate(0), make_candidate(1, numa_node=1))


class SlowDialKubelet(KubeletSimulator):
    """A kubelet on a loaded node: inside Register it takes `dial_delay` s to dial back."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.dial_delay = 0.0
        self.register_calls = 0
        self.in_register = threading.Event()

    def connect(self, resource, socket_path, mode, stopping):  # type: ignore[no-untyped-def]
        self.register_calls += 1
        self.in_register.set()
        if self.dial_delay:
            stopping.wait(self.dial_delay)
        return super().connect(resource, socket_path, mode, stopping)


@pytest.fixture
def slow_rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, start_kubelet=False)
    rig.kubelet = SlowDialKubelet(rig.dp_dir)
    rig.kubelet.start()
    yield rig
    rig.close()


def _registered_and_streaming(rig: Rig, count: int = 1) -> None:
    rig.kubelet.wait_for_registration(FULL, timeout=10, count=count)
    wait_until(lambda: rig.kubelet.stream_open(FULL), what="stream open")
    rig.supervisor.wait_registered("hca_a")


def _counters(rig: Rig) -> Heartbeat:
    beats = [m for m in rig.supervisor.received("hca_a", Heartbeat) if isinstance(m, Heartbeat)]
    assert beats and beats[-1].counters is not None
    return beats[-1]


def test_a_slow_kubelet_gives_exactly_one_registration_per_restart(slow_rig: Rig) -> None:
    # The kubelet takes 2 s to dial back inside Register; meanwhile the worker's backstops (the
    # stat look at kubelet.sock, the stream grace) must not start a second Register.
    rig = slow_rig
    kubelet = rig.kubelet
    assert isinstance(kubelet, SlowDialKubelet)
    rig.start_worker(RESOURCE, DEVICES)
    _registered_and_streaming(rig)
    kubelet.dial_delay = 2.0
    kubelet.in_register.clear()
    calls = kubelet.register_calls
    kubelet.restart()
    assert kubelet.in_register.wait(5), "the worker never called Register after the restart"
    _registered_and_streaming(rig, count=2)
    rig.wait_heartbeats(4)  # a second Register would start at once after the first returned
    assert kubelet.register_calls == calls + 1, "registered more than once for one restart"
    assert len(kubelet.registrations()) == 2
    assert kubelet.streams_opened(FULL) == 2 and kubelet.stream_open(FULL)
    devices = kubelet.devices(FULL)
    assert devices is not None and all(d.health == "Healthy" for d in devices)


def test_another_client_closing_a_stream_on_our_socket_is_not_the_kubelet(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        rig.start_worker(RESOURCE, DEVICES)
        _registered_and_streaming(rig)
        with grpc.insecure_channel(f"unix:{rig.dp_dir / 'hca_a.sock'}") as channel:
            call = dp_grpc.DevicePluginStub(channel).ListAndWatch(dp.Empty())
            first = next(iter(call))
            assert len(first.devices) == 4
            call.cancel()
        rig.wait_heartbeats(4)
        assert len(rig.kubelet.registrations()) == 1, "the worker re-registered"
        assert rig.kubelet.stream_open(FULL) and rig.kubelet.streams_opened(FULL) == 1
        devices = rig.kubelet.devices(FULL)
        assert devices is not None and all(d.health == "Healthy" for d in devices)
        assert "stream broke" not in rig.log("hca_a")
    finally:
        rig.close()


def _stale_socket(path: Path) -> None:
    """What a SIGKILLed kubelet leaves behind: a socket file nobody listens on."""
    if not path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(path))


@pytest.mark.parametrize("mode", ["classic", "watcher"])
def test_a_killed_kubelets_successor_is_found_without_inode_numbers(
    tmp_path: Path, mode: str
) -> None:
    # The stat fallback is switched off, and the backoff grows fast and far: only the inotify
    # signals (our socket wiped, kubelet.sock created) and the backoff reset they cause can
    # bring the worker back promptly, whether or not the new kubelet.sock reuses the inode.
    rig = Rig(tmp_path, mode=mode)
    rig.supervisor.worker_env["RDMA_SHARED_DP_WORKER_TIMINGS"] = (
        "poll_interval=3600,watched_poll_interval=3600,backoff_first=1,backoff_cap=30"
    )
    try:
        rig.start_worker(RESOURCE, DEVICES)
        _registered_and_streaming(rig)
        kubelet_sock = rig.dp_dir / "kubelet.sock"
        old_inode = os.stat(kubelet_sock).st_ino
        rig.kubelet.stop()
        _stale_socket(kubelet_sock)
        if mode == "classic":
            # The worker keeps trying the dead kubelet; its backoff is at 4 s or more.
            wait_until(
                lambda: _counters(rig).counters.registrations_failed >= 3,  # type: ignore[union-attr]
                15,
                what="three failed attempts",
            )
        rig.kubelet.start()
        same_inode = os.stat(kubelet_sock).st_ino == old_inode
        rig.kubelet.wait_for_registration(FULL, timeout=2.5, count=2)
        wait_until(lambda: rig.kubelet.stream_open(FULL), what=f"stream (same inode {same_inode})")
        rig.wait_heartbeats(3)
        assert len(rig.kubelet.registrations()) == 2
    finally:
        rig.close()


def test_after_a_kubelets_wipe_our_name_is_relinked_to_the_server_we_run(tmp_path: Path) -> None:
    # The wipe deletes every socket in the device-plugin folder but skips folders: the private
    # name kept in one still holds our server, so no new gRPC server is built per restart.
    rig = Rig(tmp_path)
    try:
        rig.start_worker(RESOURCE, DEVICES)
        _registered_and_streaming(rig)
        public = rig.dp_dir / "hca_a.sock"
        (kept,) = (rig.dp_dir / ".rdma-shared-dp").iterdir()
        bound = os.stat(kept)
        assert os.stat(public).st_ino == bound.st_ino and bound.st_nlink == 2
        for count in (2, 3):
            rig.kubelet.restart()
            _registered_and_streaming(rig, count)
            assert os.stat(public).st_ino == bound.st_ino == os.stat(kept).st_ino
        rig.supervisor.send("hca_a", Stop("resource removed from config"))
        wait_until(lambda: not (rig.dp_dir / ".rdma-shared-dp").exists(), what="kept names gone")
    finally:
        rig.close()
