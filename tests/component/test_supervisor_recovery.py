"""Kubelet restarts and a removed runtime folder, against a real supervisor loop (component).

The loop, control socket, timers and watches are real; the workers are stand-ins: a `sleep`
process the supervisor spawns and reaps, and a ZeroMQ DEALER in the test that speaks for it
under the worker's routing id (`<resource>/<pid>`), so the test decides what the worker says.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import zmq

from common.config import load_config_bytes
from common.messages import (
    Configure,
    Devices,
    Heartbeat,
    Hello,
    Message,
    Ready,
    Stop,
    decode,
    encode,
)
from supervisor.arbiter import Arbiter, Options
from supervisor.children import ChildSpec
from supervisor.timings import Timings
from supervisor.watch.kubelet import KubeletSocketWatch
from supervisor.worker_process import WorkerProcess
from supervisor.worker_table import WorkerState
from tests.loop_script import Script

pytestmark = pytest.mark.component


class StandIns:
    """Stand-in worker processes and the DEALERs that speak for them."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dealers: dict[int, zmq.Socket[bytes]] = {}
        self.received: dict[int, list[Message]] = {}
        self.hello: set[int] = set()
        self.last_beat = 0.0

    def spawn(self, resource: str, endpoint: str, level: str, fmt: str) -> WorkerProcess:
        proc = subprocess.Popen(["sleep", "120"])
        self.procs.append(proc)
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, f"{resource}/{proc.pid}".encode())
        dealer.setsockopt(zmq.RECONNECT_IVL, 20)
        dealer.connect(endpoint)
        self.dealers[proc.pid] = dealer
        self.received[proc.pid] = []
        return WorkerProcess(proc)

    def beat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat < 0.03:
            return
        self.last_beat = now
        for pid in self.hello:
            if pid in self.dealers:
                self.say(pid, Heartbeat())

    def say(self, pid: int, msg: Message) -> None:
        if isinstance(msg, Hello):
            self.hello.add(pid)
        self.dealers[pid].send(encode(msg), zmq.NOBLOCK)

    def read(self, pid: int) -> list[Message]:
        dealer = self.dealers[pid]
        while dealer.poll(0):
            self.received[pid].append(decode(dealer.recv()))
        return self.received[pid]

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for dealer in self.dealers.values():
            dealer.close()
        self.ctx.term()


@pytest.fixture
def standins() -> Iterator[StandIns]:
    s = StandIns()
    yield s
    s.close()


class WithStandIns(Script):
    """A script whose stand-ins heartbeat on every loop turn, as live workers do."""

    def __init__(self, standins: StandIns, steps: list[Any], timeout: float = 20.0) -> None:
        super().__init__(steps, timeout)
        self.standins = standins
        self.kubelet_restarts = 0

    def loop_turned(self, readable: Collection[int]) -> None:
        self.standins.beat()
        super().loop_turned(readable)

    def kubelet_restarted(self) -> None:
        self.kubelet_restarts += 1


def _serve(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    return s


def _arbiter(root: Path, script: Script, standins: StandIns, **timings: Any) -> Arbiter:
    data = json.dumps(
        {
            "periodicUpdateInterval": 0,
            "configList": [{"resourceName": "a", "selectors": {"vendors": ["15b3"]}}],
        }
    ).encode()
    (root / "c.json").write_bytes(data)
    options = Options(
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
    arbiter = Arbiter(
        options,
        load_config_bytes(data),
        data,
        observer=script,
        timings=Timings.fast(**timings),
        spawner=standins.spawn,
    )
    script.arbiter = arbiter
    return arbiter


def _pid(arbiter: Arbiter) -> int:
    record = arbiter.table.get("a")
    return record.pid if record is not None else 0


def _configured(arbiter: Arbiter, standins: StandIns, said_hello: set[int]) -> bool:
    """Say hello for the current stand-in once; True when the supervisor configured it."""
    pid = _pid(arbiter)
    if not pid:
        return False
    if pid not in said_hello:
        standins.say(pid, Hello(resource="a", pid=pid))
        said_hello.add(pid)
    record = arbiter.table.get("a")
    return record is not None and record.state is WorkerState.RUNNING and record.configured


def _sent(standins: StandIns, kind: type) -> list[Message]:
    return [m for pid in standins.dealers for m in standins.read(pid) if isinstance(m, kind)]


def _nudges(standins: StandIns) -> list[Message]:
    """What the supervisor sent the workers besides their config, heartbeats and stop."""
    quiet = (Configure, Devices, Heartbeat, Stop)
    return [m for pid in standins.dealers for m in standins.read(pid) if not isinstance(m, quiet)]


# ---- one definition of a kubelet restart ------------------------------------------------------


def test_a_chmod_or_chown_of_kubelet_sock_is_not_a_restart(tmp_path: Path) -> None:
    sock = _serve(tmp_path / "kubelet.sock")
    try:
        watch = KubeletSocketWatch(tmp_path)
        os.chmod(tmp_path / "kubelet.sock", 0o600)
        assert not watch.poll()
        os.chown(tmp_path / "kubelet.sock", os.getuid(), os.getgid())
        os.chmod(tmp_path / "kubelet.sock", 0o660)
        assert not watch.poll()
    finally:
        sock.close()
        watch.close()


def test_a_kubelet_sock_created_again_counts_even_at_the_same_inode(tmp_path: Path) -> None:
    first = _serve(tmp_path / "kubelet.sock")
    watch = KubeletSocketWatch(tmp_path)
    try:
        before = os.lstat(tmp_path / "kubelet.sock").st_ino
        first.close()
        (tmp_path / "kubelet.sock").unlink()
        second = _serve(tmp_path / "kubelet.sock")
        # Whether or not the file system reused the inode, the creation is the restart.
        same_inode = os.lstat(tmp_path / "kubelet.sock").st_ino == before
        assert watch.poll(), f"restart missed (same inode: {same_inode})"
        assert not watch.poll()
        second.close()
    finally:
        watch.close()


def _registered(standins: StandIns, hello: set[int]) -> Any:
    def step(arbiter: Arbiter) -> bool:
        if not _configured(arbiter, standins, hello):
            return False
        standins.say(_pid(arbiter), Ready(registered=True, mode="classic", since=1.0))
        record = arbiter.table.get("a")
        return record is not None and record.registered

    return step


def _counting_polls(arbiter: Arbiter) -> dict[str, int]:
    counted = {"polls": 0}
    real_poll = arbiter.kubelet.watch.poll

    def counting_poll() -> bool:
        counted["polls"] += 1
        return real_poll()

    arbiter.kubelet.watch.poll = counting_poll  # type: ignore[method-assign]
    return counted


def test_the_supervisor_does_not_count_a_chmod_or_chown_of_kubelet_sock(
    root: Path, standins: StandIns
) -> None:
    kubelet = _serve(root / "dp" / "kubelet.sock")
    at_chmod = {"polls": 0}

    def chmod(arbiter: Arbiter) -> bool:
        os.chmod(root / "dp" / "kubelet.sock", 0o640)
        os.chown(root / "dp" / "kubelet.sock", os.getuid(), os.getgid())
        at_chmod["polls"] = counted["polls"]
        return True

    def polled_a_while(arbiter: Arbiter) -> bool:
        return counted["polls"] >= at_chmod["polls"] + 5

    script = WithStandIns(standins, [_registered(standins, set()), chmod, polled_a_while])
    arbiter = _arbiter(root, script, standins)
    counted = _counting_polls(arbiter)
    try:
        assert arbiter.run() == 0
    finally:
        kubelet.close()
    assert not script.failure, script.failure
    assert script.kubelet_restarts == 0
    assert _nudges(standins) == []


def test_no_reregister_nudge_while_a_slow_kubelet_dials_back(
    root: Path, standins: StandIns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kubelet = [_serve(root / "dp" / "kubelet.sock")]

    def kubelet_restarts(arbiter: Arbiter) -> bool:
        kubelet[0].close()
        (root / "dp" / "kubelet.sock").unlink()
        kubelet[0] = _serve(root / "dp" / "kubelet.sock")
        return True

    def noticed(arbiter: Arbiter) -> bool:
        if script.kubelet_restarts == 0:
            return False
        # The worker is re-registering and the kubelet is slow to dial back: not registered yet.
        standins.say(_pid(arbiter), Ready(registered=False, mode="classic", since=2.0))
        return True

    def past_the_report(arbiter: Arbiter) -> bool:
        # Under the old rule a nudge went out 1.5 s after the restart; the report comes later.
        return "has not registered" in caplog.text

    steps = [_registered(standins, set()), kubelet_restarts, noticed, past_the_report]
    script = WithStandIns(standins, steps)
    arbiter = _arbiter(root, script, standins, kubelet_report_after=1.6)
    try:
        assert arbiter.run() == 0
    finally:
        kubelet[0].close()
    assert not script.failure, script.failure
    assert script.kubelet_restarts == 1
    assert _nudges(standins) == []
    assert _sent(standins, Heartbeat), "the stand-in heard nothing: the test proves nothing"


# ---- the runtime folder removed under a running supervisor ------------------------------------


@pytest.mark.parametrize("what", ["folder", "socket"])
def test_a_removed_runtime_folder_or_control_socket_is_made_again(
    root: Path, standins: StandIns, what: str
) -> None:
    run = root / "run"
    hello: set[int] = set()
    first = {"pid": 0, "beats": 0}

    def running(arbiter: Arbiter) -> bool:
        if not _configured(arbiter, standins, hello):
            return False
        first["pid"] = _pid(arbiter)
        return True

    def remove(arbiter: Arbiter) -> bool:
        if what == "folder":
            shutil.rmtree(run)
        else:
            (run / "control.sock").unlink()
        return True

    def restored(arbiter: Arbiter) -> bool:
        if not (run / "control.sock").exists() or not (run / "supervisor.lock").exists():
            return False
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
        first["beats"] = len(_sent(standins, Heartbeat))
        return True

    def connected_worker_still_heard(arbiter: Arbiter) -> bool:
        # The connected stand-in re-dials the same path and hears heartbeats again.
        return len(_sent(standins, Heartbeat)) > first["beats"] + 2

    def kill_the_worker(arbiter: Arbiter) -> bool:
        os.kill(first["pid"], 9)
        return True

    def came_back(arbiter: Arbiter) -> bool:
        pid = _pid(arbiter)
        return pid not in (0, first["pid"]) and _configured(arbiter, standins, hello)

    steps = [running, remove, restored, connected_worker_still_heard, kill_the_worker, came_back]
    script = WithStandIns(standins, steps)
    arbiter = _arbiter(root, script, standins)
    assert arbiter.run() == 0
    assert not script.failure, script.failure
    assert arbiter.guard.restored >= 1
    assert not run.exists()  # a clean stop still removes what it made


# ---- a helper child (the PodResources poller) lives and dies with the supervisor -------------


class WithHelper(WithStandIns):
    def __init__(self, standins: StandIns, steps: list[Any], helper: ChildSpec) -> None:
        super().__init__(standins, steps)
        self.helper = helper

    def children(self) -> Sequence[ChildSpec]:
        return (self.helper,)


def test_a_helper_child_is_restarted_after_a_crash_and_stopped_with_the_supervisor(
    root: Path, standins: StandIns
) -> None:
    spec = ChildSpec("test helper", ("sleep", "120"), restart_first=0.02)
    pids: list[int] = []

    def helper_pid(arbiter: Arbiter) -> int:
        proc = arbiter.lifecycle.helpers[0].proc
        return proc.pid if proc is not None else 0

    def running(arbiter: Arbiter) -> bool:
        pid = helper_pid(arbiter)
        if pid:
            pids.append(pid)
        return bool(pid)

    def crash(arbiter: Arbiter) -> bool:
        os.kill(pids[0], 9)
        return True

    def restarted(arbiter: Arbiter) -> bool:
        pid = helper_pid(arbiter)
        if pid and pid != pids[0]:
            pids.append(pid)
            return True
        return False

    script = WithHelper(standins, [running, crash, restarted], spec)
    arbiter = _arbiter(root, script, standins)
    assert arbiter.run() == 0
    assert not script.failure, script.failure
    helper = arbiter.lifecycle.helpers[0]
    assert helper.restarts == 1 and helper.proc is None  # stopped and reaped with the rest
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
