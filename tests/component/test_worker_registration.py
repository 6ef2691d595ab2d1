"""A real worker process registering with the kubelet simulator, in both modes, and again after
everything the kubelet does to it (restart, broken stream, refusal, absence).

The re-registration tests run against both simulator behaviours: the default one, and
`legacy_reregistration` (kubelets 1.26-1.35, kubernetes#121994), where a stream of an old
registration ending disconnects the current one.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.messages import Error, Heartbeat, Ready
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from tests.conditions import wait_until
from tests.standin_supervisor import Rig, make_candidate, make_resource

RESOURCE = make_resource("hca_a", "example.com", 4)
FULL = "example.com/hca_a"
DEVICES = (make_candidate(0), make_candidate(1, numa_node=1))


KUBELETS = pytest.mark.parametrize("legacy", [False, True], ids=["kubelet", "legacy-kubelet"])


@pytest.fixture(params=[False, True], ids=["kubelet", "legacy-kubelet"])
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, legacy_kubelet=request.param)
    yield r
    r.close()


@pytest.fixture(params=[False, True], ids=["kubelet", "legacy-kubelet"])
def watcher_rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, mode="watcher", legacy_kubelet=request.param)
    yield r
    r.close()


def _errors(rig: Rig, code: str, resource: str = "hca_a") -> list[Error]:
    return [
        m
        for m in rig.supervisor.received(resource, Error)
        if isinstance(m, Error) and m.code == code
    ]


def _registered_and_streaming(rig: Rig) -> None:
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    wait_until(lambda: rig.kubelet.stream_open(FULL), what="stream open")
    rig.supervisor.wait_registered("hca_a")


def _counters(rig: Rig, resource: str = "hca_a") -> Heartbeat:
    beats = [m for m in rig.supervisor.received(resource, Heartbeat) if isinstance(m, Heartbeat)]
    assert beats and beats[-1].counters is not None
    return beats[-1]


def test_classic_registration_contents(rig: Rig) -> None:
    rig.start_worker(RESOURCE, DEVICES)
    registration = rig.kubelet.wait_for_registration(FULL, timeout=10)
    assert registration.mode == "classic"
    assert registration.version == "v1beta1"
    assert registration.endpoint == "hca_a.sock"
    assert registration.request_options == registration.options
    assert not registration.options.pre_start_required
    assert not registration.options.get_preferred_allocation_available
    assert (rig.dp_dir / "hca_a.sock").is_socket()
    ready = rig.supervisor.wait_registered("hca_a")
    assert ready.mode == "classic"
    assert abs(ready.since - time.time()) < 30


def test_watcher_registration_contents(watcher_rig: Rig) -> None:
    rig = watcher_rig
    rig.start_worker(RESOURCE, DEVICES)
    registration = rig.kubelet.wait_for_registration(FULL, timeout=10)
    socket_path = rig.reg_dir / "hca_a.sock"
    assert registration.mode == "watcher"
    assert registration.endpoint == str(socket_path)
    assert not (rig.dp_dir / "hca_a.sock").exists()
    wait_until(lambda: (str(socket_path), True, "") in rig.kubelet.notifications())
    assert rig.supervisor.wait_registered("hca_a").mode == "watcher"

    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        info = reg_grpc.RegistrationStub(channel).GetInfo(reg.InfoRequest(), timeout=2)
    assert info.type == "DevicePlugin"
    assert info.name == FULL
    assert info.endpoint == str(socket_path)
    assert "v1beta1" in info.supported_versions


@pytest.mark.parametrize(("make_registry", "mode"), [(True, "watcher"), (False, "classic")])
def test_auto_mode_follows_the_registry_folder(
    tmp_path: Path, make_registry: bool, mode: str
) -> None:
    rig = Rig(tmp_path, mode="auto")
    try:
        if not make_registry:
            rig.kubelet.stop()
            os.rmdir(rig.reg_dir)
            rig.kubelet.plugins_registry_dir = None
            rig.kubelet.start()
        rig.start_worker(RESOURCE, DEVICES)
        assert rig.kubelet.wait_for_registration(FULL, timeout=10).mode == mode
    finally:
        rig.close()


@KUBELETS
def test_kubelet_absent_at_start(tmp_path: Path, legacy: bool) -> None:
    rig = Rig(tmp_path, start_kubelet=False, legacy_kubelet=legacy)
    try:
        proc = rig.start_worker(RESOURCE, DEVICES)
        # It serves, keeps trying, and never exits while the kubelet is away.
        wait_until(lambda: (rig.dp_dir / "hca_a.sock").is_socket(), 10, what="worker serving")
        wait_until(
            lambda: (
                rig.supervisor.received("hca_a", Heartbeat)
                and _counters(rig).counters.registrations_failed >= 3  # type: ignore[union-attr]
            ),
            5,
            what="failed attempts counted",
        )
        assert proc.poll() is None
        started = time.monotonic()
        rig.kubelet.start()
        rig.kubelet.wait_for_registration(FULL, timeout=3)
        # Backoff is capped at 1 s, and a new kubelet.sock is tried at once.
        assert time.monotonic() - started < 1.5
        assert proc.poll() is None
        # An absent kubelet is no refusal: the supervisor is not bothered with it.
        assert _errors(rig, "register_refused") == []
    finally:
        rig.close()


def test_kubelet_restart_leads_to_reregistration(rig: Rig) -> None:
    rig.start_worker(RESOURCE, DEVICES)
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4)
    for count in (2, 3):
        rig.kubelet.restart()
        restarted = time.monotonic()
        registration = rig.kubelet.wait_for_registration(FULL, timeout=3, count=count)
        assert registration.time - restarted < 0.5
        rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].health == "Healthy")
        assert rig.kubelet.stream_open(FULL)
        # Exactly one registration per restart: the signals (socket wiped, kubelet.sock new,
        # stream broken) arrive in any order and must not add up to extra registrations.
        rig.wait_heartbeats()
        assert len(rig.kubelet.registrations()) == count
        assert rig.kubelet.stream_open(FULL)


def test_broken_stream_leads_to_reregistration(rig: Rig) -> None:
    rig.start_worker(RESOURCE, DEVICES)
    _registered_and_streaming(rig)
    # Counted from here: on a loaded machine the simulator can take over a second to open its
    # first stream, and the worker's backstop (no stream 1 s after Register) registers again.
    registrations, streams = len(rig.kubelet.registrations()), rig.kubelet.streams_opened(FULL)
    rig.kubelet.break_stream(FULL)
    rig.kubelet.wait_for_registration(FULL, timeout=10, count=registrations + 1)
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].health == "Healthy")
    wait_until(lambda: rig.kubelet.streams_opened(FULL) == streams + 1, what="a new stream")
    # Registered again because the stream broke, at once (how soon is a benchmark's figure).
    broke = "ListAndWatch stream broke: the kubelet lost us; registering again"
    wait_until(lambda: broke in rig.log("hca_a"), what="the worker saw the stream break")
    # The supervisor hears about the loss and the recovery (its messages travel apart from the
    # kubelet's calls, so they may arrive after the kubelet saw the new registration).
    wait_until(
        lambda: (
            "stream broke"
            in [m.reason for m in rig.supervisor.received("hca_a", Ready) if isinstance(m, Ready)]
        ),
        what="ready: stream broke",
    )


def test_refused_registration_is_retried_and_reported_once(rig: Rig) -> None:
    rig.kubelet.fail_next_registrations(3, "simulated refusal")
    rig.start_worker(RESOURCE, DEVICES)
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    assert [r for _, r in rig.kubelet.failed_registrations()] == ["simulated refusal"] * 3
    # One report for the whole run of refusals, naming the kubelet's reason.
    refused = _errors(rig, "register_refused")
    assert len(refused) == 1
    assert "simulated refusal" in refused[0].message


def test_watcher_refusal_is_logged_and_retried(watcher_rig: Rig) -> None:
    rig = watcher_rig
    rig.kubelet.fail_next_registrations(1, "simulated refusal")
    rig.start_worker(RESOURCE, DEVICES)
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    socket_path = str(rig.reg_dir / "hca_a.sock")
    assert rig.kubelet.notifications()[0] == (socket_path, False, "simulated refusal")
    wait_until(lambda: (socket_path, True, "") in rig.kubelet.notifications())
    assert "simulated refusal" in rig.log("hca_a")
    refused = _errors(rig, "register_refused")
    assert len(refused) == 1 and "simulated refusal" in refused[0].message


def test_watcher_mode_survives_a_kubelet_restart(watcher_rig: Rig) -> None:
    rig = watcher_rig
    rig.start_worker(RESOURCE, DEVICES)
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    rig.kubelet.restart()
    rig.kubelet.wait_for_registration(FULL, timeout=3, count=2)
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].health == "Healthy")


def _still_one_healthy_registration(rig: Rig) -> None:
    assert len(rig.kubelet.registrations()) == 1
    assert rig.kubelet.is_registered(FULL) and rig.kubelet.stream_open(FULL)
    devices = rig.kubelet.devices(FULL)
    assert devices is not None and len(devices) == 4
    assert all(d.health == "Healthy" for d in devices)


def test_a_chmod_of_kubelet_sock_is_no_kubelet_restart(rig: Rig) -> None:
    rig.start_worker(RESOURCE, DEVICES)
    _registered_and_streaming(rig)
    kubelet_sock = rig.dp_dir / "kubelet.sock"
    before = os.stat(kubelet_sock)
    os.chmod(kubelet_sock, before.st_mode & 0o7777)  # same mode: only the change time moves
    rig.wait_heartbeats(3)  # the worker looked at kubelet.sock many times since
    _still_one_healthy_registration(rig)
    assert "kubelet.sock replaced" not in rig.log("hca_a")


def test_another_live_server_on_our_socket_is_left_alone(tmp_path: Path) -> None:
    # A second process for the same resource (an old worker outliving a restarted supervisor,
    # or the Go plugin during migration) finds our socket live: it must not take it over.
    rig = Rig(tmp_path, heartbeat_interval=1.0)
    try:
        first = rig.start_worker(RESOURCE, DEVICES)
        _registered_and_streaming(rig)
        ours = os.stat(rig.dp_dir / "hca_a.sock").st_ino
        second = rig.supervisor.spawn("hca_a", tmp_path / "second.log")
        in_use = rig.supervisor.wait_for(
            "hca_a", lambda m: isinstance(m, Error) and m.code == "socket_in_use", timeout=10
        )
        assert isinstance(in_use, Error) and "hca_a.sock" in in_use.message
        assert os.stat(rig.dp_dir / "hca_a.sock").st_ino == ours
        _still_one_healthy_registration(rig)
        assert second.poll() is None and first.poll() is None
        # The first one goes (removing its socket): the second one takes over at once.
        first.terminate()
        first.wait(5)
        rig.kubelet.wait_for_registration(FULL, timeout=3, count=2)
        assert len(_errors(rig, "socket_in_use")) == 1  # told once, not per look
    finally:
        rig.supervisor.kill_workers()
        rig.close()


def test_our_socket_replaced_by_a_live_server_is_not_taken_back(rig: Rig) -> None:
    rig.start_worker(RESOURCE, DEVICES)
    _registered_and_streaming(rig)
    path = rig.dp_dir / "hca_a.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Put in place atomically: our socket only removed, the worker re-links it at once.
        other.bind(str(rig.dp_dir / "other.tmp"))
        other.listen(8)
        os.rename(rig.dp_dir / "other.tmp", path)
        theirs = os.stat(path).st_ino
        rig.supervisor.wait_for(
            "hca_a", lambda m: isinstance(m, Error) and m.code == "socket_in_use", timeout=5
        )
        rig.wait_heartbeats()
        assert path.is_socket() and os.stat(path).st_ino == theirs
        assert len(rig.kubelet.registrations()) == 1
    finally:
        other.close()
    # The other server goes: ours is served and registered again without waiting 5 s.
    path.unlink()
    gone = time.monotonic()
    registration = rig.kubelet.wait_for_registration(FULL, timeout=3, count=2)
    assert registration.time - gone < 1.0
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].health == "Healthy")


@KUBELETS
def test_own_socket_removed_is_noticed_quickly(tmp_path: Path, legacy: bool) -> None:
    # What a kubelet's wipe does, without the stream breaking: only the socket watch can tell.
    # Heartbeats every second, so they do not wake the loop in time by chance.
    rig = Rig(tmp_path, heartbeat_interval=1.0, legacy_kubelet=legacy)
    try:
        _own_socket_removed(rig)
    finally:
        rig.close()


def _own_socket_removed(rig: Rig) -> None:
    rig.start_worker(RESOURCE, DEVICES)
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    wait_until(lambda: rig.kubelet.stream_open(FULL), what="stream open")
    (rig.dp_dir / "hca_a.sock").unlink()
    removed = time.monotonic()
    registration = rig.kubelet.wait_for_registration(FULL, timeout=3, count=2)
    assert registration.time - removed < 0.4  # polls every 50 ms; heartbeats wake it each 1 s
    assert (rig.dp_dir / "hca_a.sock").is_socket()
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].health == "Healthy")
