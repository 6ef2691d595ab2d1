"""The supervisor's parts on their own: timers, signals, device sets, runtime dir, control channel,
status messages, leftovers, and the rule that the supervisor never imports grpc."""

from __future__ import annotations

import ast
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import zmq

from cli.status_client import StatusError, fetch_status, render_json, render_text
from common.config import ResourceConfig, Selectors
from common.discovery import scan
from common.loop.signals import SignalInbox
from common.loop.timers import Timers
from common.messages import (
    Error,
    Hello,
    ProtocolError,
    Status,
    StatusRequest,
    WorkerSettings,
    WorkerStatus,
    decode,
    encode,
)
from simulator.sysfs import SysfsTree, connectx_ib
from supervisor.control import ControlChannel
from supervisor.device_selections import DeviceSelections
from supervisor.leftovers import remove_leftovers
from supervisor.runtime_dir import RuntimeDir, RuntimeDirError
from supervisor.worker_process import worker_command, worker_env
from tests.conditions import wait_until

REPO = Path(__file__).resolve().parents[2]
SUPERVISOR = REPO / "supervisor"


# ---- the supervisor never imports grpc --------------------------------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_supervisor_module_imports_grpc_proto_or_workers() -> None:
    offenders = {
        path.name: sorted(_imports(path) & {"grpc", "proto", "workers", "google", "simulator"})
        for path in SUPERVISOR.glob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # The check can fail: the kubelet simulator imports grpc.
    assert "grpc" in _imports(REPO / "simulator" / "kubelet.py")


def test_importing_every_supervisor_module_loads_no_grpc() -> None:
    modules = sorted(
        f"supervisor.{p.stem}" for p in SUPERVISOR.glob("*.py") if p.stem != "__main__"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'proto', 'workers'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- timers -----------------------------------------------------------------------------------


def test_timers_fire_in_order_and_replace_cancel_debounce() -> None:
    t = Timers()
    t.set("b", 2.0)
    t.set("a", 1.0)
    t.set("c", 3.0)
    t.set("b", 5.0)  # replaced: fires later
    t.cancel("c")
    t.set_once("d", 1.5)
    t.set_once("d", 9.0)  # debounced: the first deadline stays
    assert t.next_deadline() == 1.0
    assert t.pop_due(0.5) == []
    assert t.pop_due(4.0) == ["a", "d"]
    assert t.pending("b") and not t.pending("a")
    assert t.pop_due(10.0) == ["b"]
    assert t.next_deadline() is None


# ---- signals ----------------------------------------------------------------------------------


def test_signal_inbox_records_and_wakes_a_poller() -> None:
    inbox = SignalInbox([signal.SIGHUP, signal.SIGUSR1])
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGUSR1)
        readable, _, _ = select.select([inbox.fileno()], [], [], 2.0)
        assert readable
        assert wait_until(lambda: inbox.drain(), what="signals recorded") == [
            signal.SIGHUP,
            signal.SIGUSR1,
        ]
        assert inbox.drain() == []
    finally:
        inbox.close()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


# ---- device sets ------------------------------------------------------------------------------


def _resource(name: str, *rdma: str) -> ResourceConfig:
    return ResourceConfig(name, "example.com", 4, Selectors(rdma_devices=tuple(rdma)))


def test_only_resources_whose_set_or_health_changed_are_reported(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(
        connectx_ib("0000:1a:00.0", rdma="mlx5_0", netdev="ib0"),
        connectx_ib("0000:3c:00.0", rdma="mlx5_1", netdev="ib1"),
    )
    resources = [_resource("a", "mlx5_0"), _resource("b", "mlx5_1")]
    state = DeviceSelections()
    assert state.update(scan(tmp_path), resources) == {"a", "b"}  # first scan: all new
    assert state.update(scan(tmp_path), resources) == set()  # nothing moved
    tree.set_port_state("mlx5_1", 1, "DOWN")
    assert state.update(scan(tmp_path), resources) == {"b"}  # health only
    assert not state.selected("b")[0].healthy
    tree.remove_function("0000:1a:00.0")
    assert state.update(scan(tmp_path), resources) == {"a"}
    assert state.selected("a") == ()
    # A config change selects again from the last scan; a removed resource is not "changed".
    assert state.reselect([_resource("b", "mlx5_0", "mlx5_1")]) == set()
    assert state.reselect([_resource("c", "mlx5_1")]) == {"c"}


# ---- runtime dir ------------------------------------------------------------------------------


def test_runtime_dir_is_private_locked_and_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir(mode=0o755)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path / "control.sock"))
    stale.close()
    first = RuntimeDir(str(path))
    first.acquire()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert not (path / "control.sock").exists()
        assert (path / "supervisor.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RuntimeDirError, match="another supervisor"):
            RuntimeDir(str(path)).acquire()
    finally:
        first.release()
    assert not path.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RuntimeDirError, match="not a folder"):
        RuntimeDir(str(tmp_path / "file")).acquire()


# ---- leftovers of a killed worker -------------------------------------------------------------


def test_leftovers_removes_only_the_workers_socket_and_cdi_spec(tmp_path: Path) -> None:
    dp, cdi = tmp_path / "dp", tmp_path / "cdi"
    dp.mkdir()
    cdi.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(dp / "a.sock"))
    sock.close()
    (dp / "b.sock").write_text("not a socket")
    ours = cdi / "rdma-shared-dp_example.com_a.json"
    ours.write_text(json.dumps({"cdiVersion": "0.5.0", "kind": "example.com/a", "devices": []}))
    other_kind = cdi / "rdma-shared-dp_example.com_b.json"
    other_kind.write_text(json.dumps({"kind": "example.com/b"}))
    foreign = cdi / "vendor.json"
    foreign.write_text(json.dumps({"kind": "example.com/a"}))
    settings = WorkerSettings(str(dp), str(tmp_path / "reg"), "classic", True, str(cdi), 1.0)
    removed = remove_leftovers(_resource("a"), settings)
    assert sorted(removed) == sorted([str(dp / "a.sock"), str(ours)])
    assert other_kind.exists() and foreign.exists()
    assert remove_leftovers(_resource("b"), settings) == [str(other_kind)]
    assert (dp / "b.sock").exists()  # a file that is not a socket is never touched


# ---- workers get an explicit environment ------------------------------------------------------


def test_worker_environment_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "x")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = worker_env("debug", "json")
    assert "SECRET_TOKEN" not in env and env["LANG"] == "C.UTF-8"
    assert env["RDMA_SHARED_DP_LOG_LEVEL"] == "DEBUG"
    assert env["RDMA_SHARED_DP_LOG_FORMAT"] == "json"
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert worker_command("a", "ipc:///x")[1:] == [
        "-OO",
        "-m",
        "workers",
        "--resource",
        "a",
        "--control",
        "ipc:///x",
    ]


# ---- control channel and status --------------------------------------------------------------


def test_status_messages_round_trip_and_are_checked() -> None:
    row = WorkerStatus("example.com/a", "running", 12, 1, 2, 2, True, 1.5e9, 7, "classic", "")
    status = Status(1, 1.5e9, "/cfg", 1.5e9, False, (row,))
    assert decode(encode(status)) == status
    assert isinstance(decode(encode(StatusRequest())), StatusRequest)
    frame = json.loads(encode(status))
    frame["body"]["workers"][0]["pid"] = "twelve"
    with pytest.raises(ProtocolError, match="pid"):
        decode(json.dumps(frame).encode())


def test_control_channel_answers_bad_frames_and_serves_status(tmp_path: Path) -> None:
    channel = ControlChannel(str(tmp_path))
    ctx = zmq.Context()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.ROUTING_ID, b"a/1")
    peer.connect(channel.endpoint)
    try:
        assert stat.S_IMODE(os.stat(channel.path).st_mode) == 0o600
        peer.send(b'{"v": 2, "type": "hello"}')
        peer.send(encode(Hello("a", 1)))
        got = wait_until(lambda: channel.receive(), what="the hello")
        assert [(p, type(m)) for p, m in got] == [(b"a/1", Hello)]
        assert peer.poll(2000)
        answer = decode(peer.recv())
        assert isinstance(answer, Error) and answer.code == "protocol"
        assert "version" in answer.message
        assert channel.send(b"gone/2", StatusRequest()) is False  # no such peer: said, not lost

        # fetch_status against this channel, answered from a thread.
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                for who, msg in channel.receive():
                    if isinstance(msg, StatusRequest):
                        channel.send(who, Status(5, 1.0, "/c", 1.0, False, (), parent=msg.id))
                stop.wait(0.01)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            status = fetch_status(str(tmp_path), timeout=3)
            # Calls in quick succession each get their answer (each has its own routing id).
            assert [fetch_status(str(tmp_path), timeout=3).pid for _ in range(20)] == [5] * 20
        finally:
            stop.set()
            thread.join()
        assert status.pid == 5
        with pytest.raises(StatusError, match="no answer"):
            fetch_status(str(tmp_path), timeout=0.3)  # nobody answers now
    finally:
        peer.close(0)
        ctx.term()
        channel.close()
    assert not os.path.exists(channel.path)
    with pytest.raises(StatusError, match="no supervisor control socket"):
        fetch_status(str(tmp_path))


def test_status_rendering() -> None:
    rows = (
        WorkerStatus("example.com/a", "running", 12, 0, 2, 2, True, 1.7e9, 3, "classic"),
        WorkerStatus("example.com/b", "fatal", 0, 0, 1, 1, False, 0.0, 0, "", "config invalid"),
    )
    status = Status(1, 1.7e9, "/cfg.json", 1.7e9, False, rows)
    text = render_text(status)
    assert "example.com/a  running" in text and "2023-11-14T22:13:20Z" in text
    assert "example.com/b: fatal: config invalid" in text
    data = json.loads(render_json(status))
    assert data["workers"][1]["state"] == "fatal" and "id" not in data


def _fetch_as_nobody(runtime_dir: str) -> str:
    """fetch_status's error message in a child running as `nobody` (root ignores permissions)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os-level calls and an already imported function
        os.close(read)
        message = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            fetch_status(runtime_dir, timeout=0.2)
        except StatusError as err:
            message = str(err)
        except BaseException as err:  # reported to the parent, whatever it is
            message = f"unexpected {err!r}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
def test_status_says_permission_denied_rather_than_no_socket() -> None:
    root = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(root, 0o755)
        runtime = os.path.join(root, "run")
        os.mkdir(runtime, 0o700)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.join(runtime, "control.sock"))
        try:
            message = _fetch_as_nobody(runtime)  # cannot even look into the folder
            assert "permission denied" in message and "no supervisor" not in message
            os.chmod(runtime, 0o755)
            os.chmod(os.path.join(runtime, "control.sock"), 0o600)
            message = _fetch_as_nobody(runtime)  # can see the socket, cannot connect
            assert "permission denied" in message and "no supervisor" not in message
            assert "no supervisor control socket" in _fetch_as_nobody(os.path.join(root, "x"))
        finally:
            sock.close()
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("since", [1e20, -1e20, float("inf"), float("nan"), 0.0])
def test_status_rendering_survives_any_time(since: float) -> None:
    row = WorkerStatus("example.com/a", "running", 12, 0, 2, 2, True, since, 3, "classic")
    text = render_text(Status(1, since, "/cfg.json", since, False, (row,)))
    assert "example.com/a  running" in text


def test_status_in_cdi_mode_says_what_the_runtime_must_support() -> None:
    row = WorkerStatus("example.com/a", "running", 12, 1, 2, 2, True, 1.5e9, 7, "classic", "")
    assert "containerd" not in render_text(Status(1, 1.5e9, "/cfg", 1.5e9, False, (row,)))
    status = Status(1, 1.5e9, "/cfg", 1.5e9, False, (row,), use_cdi=True)
    assert decode(encode(status)) == status
    assert "containerd >= 1.7" in render_text(status)
