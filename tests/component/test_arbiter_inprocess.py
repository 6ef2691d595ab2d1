"""Arbiter paths that are hard to reach through a whole plugin: driven in-process, real files."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from common import exitcodes
from common.config import load_config_bytes
from common.messages import (
    Heartbeat,
    Hello,
    Message,
    Ready,
    StatusRequest,
    decode,
    encode,
    type_name,
)
from simulator.sysfs import SysfsTree, connectx_ib
from supervisor.arbiter import Arbiter, Options
from supervisor.control import RECEIVE_BATCH, ControlChannel
from supervisor.observer import Observer
from supervisor.timings import Timings
from supervisor.worker_table import WorkerRecord, WorkerState
from tests.conditions import wait_until
from tests.loop_script import Script


def _config(names: list[str]) -> bytes:
    entries = [
        {
            "resourceName": n,
            "resourcePrefix": "example.com",
            "rdmaHcaMax": 2,
            "selectors": {"vendors": ["15b3"]},
        }
        for n in names
    ]
    return json.dumps({"periodicUpdateInterval": 0, "configList": entries}).encode()


@pytest.fixture
def root() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes: keep them short
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        for sub in ("dp", "cdi", "node"):
            os.mkdir(os.path.join(d, sub))
        yield Path(d)


def _arbiter(
    root: Path,
    names: list[str],
    records: bool = True,
    clock: Callable[[], float] = time.monotonic,
    observer: Observer | None = None,
    timings: Timings | None = None,
) -> Arbiter:
    data = _config(names)
    (root / "c.json").write_bytes(data)
    options = Options(
        config_file=str(root / "c.json"),
        host_root=str(root / "node"),
        runtime_dir=str(root / "run"),
        device_plugin_dir=str(root / "dp"),
        plugins_registry_dir="",
        registration_mode="classic",
        use_cdi=True,
        cdi_dir=str(root / "cdi"),
    )
    arbiter = Arbiter(
        options,
        load_config_bytes(data),
        data,
        observer,
        timings=timings or Timings.fast(),
        clock=clock,
    )
    for resource in arbiter.config.resources if records else ():
        arbiter.table.add(resource)
    return arbiter


def test_receive_reads_a_bounded_batch_and_loses_nothing(tmp_path: Path) -> None:
    channel = ControlChannel(str(tmp_path))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(channel.endpoint)
    try:
        total = RECEIVE_BATCH * 2 + 10
        frame = encode(Heartbeat())
        for _ in range(total):
            dealer.send(frame)
        got: list[int] = []

        def drained() -> bool:
            got.append(len(channel.receive()))
            return sum(got) >= total

        wait_until(drained, timeout=10, what="every flooded message")
        assert max(got) <= RECEIVE_BATCH
        assert sum(got) == total
    finally:
        dealer.close()
        ctx.term()
        channel.close()


def test_a_worker_killed_unexpectedly_leaves_no_socket_or_cdi_spec(root: Path) -> None:
    arbiter = _arbiter(root, ["a", "b"])
    record = arbiter.table.get("b")
    assert record is not None
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "dp" / "b.sock"))
    sock.close()
    spec = root / "cdi" / "rdma-shared-dp_example.com_b.json"
    spec.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": "example.com/b", "devices": []}))
    other = root / "cdi" / "vendor.example_gpu.json"  # another producer's spec stays
    other.write_text("{}")
    proc = subprocess.Popen(["sleep", "60"])
    arbiter.table.move(record, WorkerState.STARTING, "test")
    record.proc, record.pid, record.served = proc, proc.pid, record.config  # type: ignore[assignment]
    arbiter.table.move(record, WorkerState.RUNNING, "test")
    os.kill(proc.pid, signal.SIGKILL)
    wait_until(lambda: proc.poll() is not None, what="the worker to die")
    arbiter.lifecycle.reap()
    assert record.state is WorkerState.BACKOFF
    assert not (root / "dp" / "b.sock").exists()
    assert not spec.exists()
    assert other.exists()


def test_sighup_while_stopping_starts_nothing(root: Path) -> None:
    arbiter = _arbiter(root, ["a"])
    spawned: list[str] = []
    arbiter.lifecycle.spawn = lambda record, reason: spawned.append(record.name)  # type: ignore[method-assign]
    arbiter.lifecycle.stopping = True
    (root / "c.json").write_bytes(_config(["a", "z"]))
    arbiter.poll_config(forced=True)
    assert spawned == []
    assert arbiter.table.get("z") is None


# ---- a real loop with real workers, driven from the loop's own observer hook ------------------


def _options(root: Path) -> Options:
    return Options(
        config_file=str(root / "c.json"),
        host_root=str(root / "node"),
        runtime_dir=str(root / "run"),
        device_plugin_dir=str(root / "dp"),
        plugins_registry_dir="",
        registration_mode="classic",
        use_cdi=False,
        cdi_dir=str(root / "cdi"),
        uevent_source="off",
    )


def _run(root: Path, names: list[str], script: Script, **timings: Any) -> tuple[Arbiter, int]:
    """Run a real supervisor loop (real workers, fast timings) until the script ends it."""
    data = _config(names)
    (root / "c.json").write_bytes(data)
    arbiter = Arbiter(
        _options(root),
        load_config_bytes(data),
        data,
        observer=script,
        timings=Timings.fast(**timings),
    )
    script.arbiter = arbiter
    code = arbiter.run()
    assert not script.failure, script.failure
    return arbiter, code


def _running(arbiter: Arbiter, name: str) -> bool:
    record = arbiter.table.get(name)
    return record is not None and record.state is WorkerState.RUNNING and record.configured


def test_a_handler_that_raises_once_is_logged_counted_and_the_workers_keep_running(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen = {"calls": 0, "pid": 0}

    def worker_running(arbiter: Arbiter) -> bool:
        record = arbiter.table.get("a")
        if record is None or not _running(arbiter, "a"):
            return False
        seen["pid"] = record.pid
        real = arbiter.lifecycle.heartbeat

        def heartbeat_failing_once() -> None:
            seen["calls"] += 1
            if seen["calls"] == 1:
                raise RuntimeError("a bug in the heartbeat handler")
            real()

        arbiter.timers.every(
            ("heartbeat",), arbiter.timings.heartbeat_interval, heartbeat_failing_once
        )
        return True

    def heartbeats_went_on(arbiter: Arbiter) -> bool:
        return seen["calls"] >= 3  # the failed one, then two more turns of the same timer

    arbiter, code = _run(root, ["a"], Script([worker_running, heartbeats_went_on]))
    assert code == exitcodes.OK
    assert arbiter.loop_errors == {"timer:heartbeat": 1}
    failed = [r for r in caplog.records if "handling timer:heartbeat failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None  # logged with its traceback
    log = caplog.text
    # One worker process served throughout and was stopped in order, not killed.
    assert log.count("worker started resource=example.com/a") == 1
    assert f"worker stopped resource=example.com/a pid={seen['pid']}" in log
    assert "SIGKILL" not in log and "killing" not in log


def test_a_burst_of_handler_errors_stops_the_workers_in_order(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def worker_running(arbiter: Arbiter) -> bool:
        if not _running(arbiter, "a"):
            return False

        def always_failing() -> None:
            raise RuntimeError("a bug that happens every time")

        # The kubelet poll, not the heartbeat: the worker must keep hearing from us, or it
        # would leave as "supervisor lost" before the stop message could reach it.
        arbiter.timers.every(("kubelet",), 0.05, always_failing)
        return True

    def never(arbiter: Arbiter) -> bool:  # the loop has to end by itself
        return False

    script = Script([worker_running, never])
    arbiter, code = _run(root, ["a"], script, max_loop_errors=3)
    assert code == exitcodes.FATAL
    assert set(arbiter.loop_errors) == {"timer:kubelet"}
    assert arbiter.loop_errors["timer:kubelet"] >= 3
    log = caplog.text
    assert "3 handler errors within" in log
    assert "worker stopped resource=example.com/a" in log  # the stop message did it
    assert "SIGKILL" not in log and "killing" not in log


def test_a_failure_of_the_loop_itself_still_stops_the_workers_in_order(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def break_the_loop_once(arbiter: Arbiter) -> bool:
        if not _running(arbiter, "a"):
            return False
        real = arbiter.timers.next_deadline
        calls = [0]

        def next_deadline() -> float | None:
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("a bug outside any handler")
            return real()

        arbiter.timers.next_deadline = next_deadline  # type: ignore[method-assign]
        return True

    def never(arbiter: Arbiter) -> bool:
        return False

    _, code = _run(root, ["a"], Script([break_the_loop_once, never]))
    assert code == exitcodes.FATAL
    log = caplog.text
    assert "the supervisor loop failed" in log
    assert "worker stopped resource=example.com/a" in log
    assert "SIGKILL" not in log and "killing them" not in log


def test_sighup_reloads_at_once(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    times: dict[str, float] = {}

    def hang_up(arbiter: Arbiter) -> bool:
        if not _running(arbiter, "a"):
            return False
        (root / "c.json").write_bytes(_config(["a", "z"]))
        times["sent"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGHUP)
        return True

    def reloaded(arbiter: Arbiter) -> bool:
        if arbiter.table.get("z") is None:
            return False
        times["reloaded"] = time.monotonic()
        return True

    # The config poll would not look for a minute: only the signal can explain the reload.
    _run(root, ["a"], Script([hang_up, reloaded]), config_poll_interval=60.0)
    assert times["reloaded"] - times["sent"] < 1.0
    log = caplog.text
    assert "SIGHUP: reading the config file now" in log
    assert log.index("SIGHUP") < log.index("config reloaded added=example.com/z")


# ---- early retries from backoff ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _in_backoff(arbiter: Arbiter, name: str, delay: float) -> None:
    record = arbiter.table.get(name)
    assert record is not None
    arbiter.table.move(record, WorkerState.STARTING, "test")
    arbiter.table.move(record, WorkerState.BACKOFF, "crashed")
    record.backoff_delay = delay


def _node(root: Path) -> SysfsTree:
    tree = SysfsTree(root / "node")
    tree.add(connectx_ib("0000:1a:00.0", rdma="mlx5_0", netdev="ib0"))
    tree.add(connectx_ib("0000:3c:00.0", rdma="mlx5_1", netdev="ib1"))
    return tree


def _spawns(arbiter: Arbiter) -> list[str]:
    spawned: list[str] = []

    def fake_spawn(record: WorkerRecord, reason: str) -> None:
        spawned.append(reason)
        arbiter.table.move(record, WorkerState.STARTING, reason)

    arbiter.lifecycle.spawn = fake_spawn  # type: ignore[method-assign]
    return spawned


def test_a_flapping_port_never_restarts_a_worker_in_backoff(root: Path) -> None:
    tree = _node(root)
    clock = Clock()
    arbiter = _arbiter(root, ["a"], clock=clock)
    arbiter.sync.rescan("start")
    _in_backoff(arbiter, "a", 60.0)
    spawned = _spawns(arbiter)
    for state in ("DOWN", "ACTIVE", "DOWN", "ACTIVE"):
        tree.set_port_state("mlx5_1", 1, state)
        clock.now += 1
        arbiter.sync.rescan("periodic")
        assert arbiter.devices.moved == set()
    assert spawned == []  # health alone: the backoff runs its course


def test_a_device_set_change_retries_early_once_per_backoff_period(root: Path) -> None:
    tree = _node(root)
    clock = Clock()
    arbiter = _arbiter(root, ["a"], clock=clock)
    arbiter.sync.rescan("start")
    _in_backoff(arbiter, "a", 60.0)
    spawned = _spawns(arbiter)
    tree.remove_function("0000:3c:00.0")
    arbiter.sync.rescan("periodic")
    assert spawned == ["devices changed: an early retry"]
    # It crashed again at once; the device comes back within the same backoff period.
    arbiter.table.move(arbiter.table.get("a"), WorkerState.BACKOFF, "crashed")  # type: ignore[arg-type]
    clock.now += 5
    tree.add(connectx_ib("0000:3c:00.0", rdma="mlx5_1", netdev="ib1"))
    arbiter.sync.rescan("periodic")
    assert arbiter.devices.moved == {"a"}
    assert len(spawned) == 1  # no second early retry
    # A backoff period later, a change may retry early again.
    clock.now += 60
    tree.remove_function("0000:1a:00.0")
    arbiter.sync.rescan("periodic")
    assert len(spawned) == 2


def test_a_config_change_retries_early_once_per_backoff_period(root: Path) -> None:
    _node(root)
    clock = Clock()
    arbiter = _arbiter(root, ["a", "b"], clock=clock)
    arbiter.sync.rescan("start")
    _in_backoff(arbiter, "a", 30.0)
    spawned = _spawns(arbiter)
    changed = json.loads(_config(["a", "b"]))
    changed["configList"][0]["rdmaHcaMax"] = 5
    arbiter.apply_config(load_config_bytes(json.dumps(changed).encode()))
    assert spawned == ["config changed: an early retry"]
    arbiter.table.move(arbiter.table.get("a"), WorkerState.BACKOFF, "crashed")  # type: ignore[arg-type]
    clock.now += 1
    changed["configList"][0]["rdmaHcaMax"] = 6
    arbiter.apply_config(load_config_bytes(json.dumps(changed).encode()))
    assert len(spawned) == 1
    record = arbiter.table.get("a")
    assert record is not None and record.config.rdma_hca_max == 6  # used at the next start


# ---- uevent debounce ----------------------------------------------------------------------


class CountingObserver(Observer):
    def __init__(self) -> None:
        self.scans: list[str] = []

    def scan_finished(self, trigger: str, *args: object) -> None:
        self.scans.append(trigger)


class BusyMonitor:
    def drain(self) -> list[str]:
        return ["change@/devices/pci0000:00/0000:00:01.0/0000:1a:00.0 (pci)"]


def test_a_burst_of_uevents_within_the_debounce_gives_one_rescan(root: Path) -> None:
    _node(root)
    clock, counting = Clock(), CountingObserver()
    # 40 events over 80 ms: one burst for a 100 ms debounce.
    timings = Timings.fast(rescan_debounce=0.1)
    arbiter = _arbiter(root, ["a"], clock=clock, observer=counting, timings=timings)
    arbiter.sync.uevents = BusyMonitor()

    def run_due() -> None:
        for due in arbiter.timers.take_due(clock.now):
            assert due.callback is not None
            due.callback()

    for _ in range(40):  # 40 events over 80 ms, timers running between them
        arbiter.sync.on_uevents()
        clock.now += 0.002
        run_due()
    clock.now += arbiter.timings.rescan_debounce
    run_due()
    assert counting.scans == ["uevent"]
    arbiter.sync.on_uevents()  # a later event gets its own rescan
    clock.now += arbiter.timings.rescan_debounce
    run_due()
    assert counting.scans == ["uevent", "uevent"]


# ---- stale CDI specs --------------------------------------------------------------------------


def _spec(root: Path, file_kind: str, kind: str | None) -> Path:
    path = root / "cdi" / f"rdma-shared-dp_{file_kind}.json"
    path.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": kind, "devices": []}))
    return path


def test_start_removes_tagged_cdi_specs_of_resources_no_longer_configured(root: Path) -> None:
    _node(root)
    arbiter = _arbiter(root, ["a"], records=False)
    _spawns(arbiter)
    kept = _spec(root, "example.com_a", "example.com/a")
    stale = _spec(root, "example.com_gone", "example.com/gone")
    unreadable = root / "cdi" / "rdma-shared-dp_broken.json"
    unreadable.write_text("{ not json")
    other = root / "cdi" / "vendor.example_gpu.json"
    other.write_text(json.dumps({"kind": "vendor.example/gpu"}))
    arbiter._start()
    assert kept.exists() and unreadable.exists() and other.exists()
    assert not stale.exists()


def test_start_without_cdi_leaves_cdi_specs_alone(root: Path) -> None:
    _node(root)
    arbiter = _arbiter(root, ["a"], records=False)
    arbiter.options = dataclasses.replace(arbiter.options, use_cdi=False)
    _spawns(arbiter)
    stale = _spec(root, "example.com_gone", "example.com/gone")
    arbiter._start()
    assert stale.exists()


def test_removing_a_resource_whose_worker_is_not_running_removes_its_cdi_spec(root: Path) -> None:
    _node(root)
    arbiter = _arbiter(root, ["a", "b"])
    _spawns(arbiter)
    _in_backoff(arbiter, "b", 10.0)
    record = arbiter.table.get("b")
    assert record is not None
    record.served = record.config
    spec = _spec(root, "example.com_b", "example.com/b")
    kept = _spec(root, "example.com_a", "example.com/a")
    arbiter.apply_config(load_config_bytes(_config(["a"])))
    assert arbiter.table.get("b") is None
    assert not spec.exists() and kept.exists()


# ---- the last words of a worker that exited ----------------------------------------------------


def test_a_message_from_a_worker_reaped_a_moment_ago_is_not_answered(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    arbiter = _arbiter(root, ["a"])
    os.mkdir(root / "run")
    arbiter.control = ControlChannel(str(root / "run"))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.ROUTING_ID, b"a/4242")
    dealer.connect(arbiter.control.endpoint)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        record = arbiter.table.get("a")
        assert record is not None
        arbiter.table.move(record, WorkerState.STARTING, "test")
        record.proc, record.pid, record.served = proc, proc.pid, record.config  # type: ignore[assignment]

        def deliver(msg: Message) -> None:
            assert arbiter.control is not None
            dealer.send(encode(msg))
            got: list[tuple[bytes, Message]] = []
            wait_until(lambda: got.extend(arbiter.control.receive()) or got, what="delivery")  # type: ignore[union-attr, func-returns-value]
            for peer, received in got:
                arbiter.peers.on_message(peer, received)

        deliver(Hello(resource="a", pid=proc.pid))
        assert record.state is WorkerState.RUNNING
        arbiter.lifecycle.stop(record, "test")
        # The worker says goodbye and exits; the supervisor reaps it before reading that.
        proc.terminate()
        wait_until(lambda: proc.poll() is not None, what="the worker to exit")
        arbiter.lifecycle.reap()
        assert record.state.value == "exited"
        deliver(Ready(registered=False, mode="classic", since=0.0, reason="stopping"))
        deliver(StatusRequest())
        # Answers in order: configure, stop, status; no second stop for the late ready.
        answers = []
        while dealer.poll(2000):
            answers.append(type_name(decode(dealer.recv())))
            if answers[-1] == "status":
                break
        assert answers == ["configure", "stop", "status"]
        assert "unknown worker" not in caplog.text
        assert "from a worker that exited resource=example.com/a" in caplog.text
    finally:
        proc.kill()
        proc.wait()
        dealer.close()
        ctx.term()
        arbiter.control.close()
