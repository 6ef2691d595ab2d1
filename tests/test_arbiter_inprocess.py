"""Arbiter paths that are hard to reach through a whole plugin: driven in-process, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from common.config import load_config_bytes
from common.messages import Heartbeat, encode
from supervisor.arbiter import Arbiter, Options
from supervisor.control import RECEIVE_BATCH, ControlChannel
from supervisor.worker_table import WorkerState
from tests.conditions import wait_until


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


def _arbiter(root: Path, names: list[str]) -> Arbiter:
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
    arbiter = Arbiter(options, load_config_bytes(data), data)
    for resource in arbiter.config.resources:
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
    arbiter._reap()
    assert record.state is WorkerState.BACKOFF
    assert not (root / "dp" / "b.sock").exists()
    assert not spec.exists()
    assert other.exists()


def test_sighup_while_stopping_starts_nothing(root: Path) -> None:
    arbiter = _arbiter(root, ["a"])
    spawned: list[str] = []
    arbiter._spawn = lambda record, why: spawned.append(record.name)  # type: ignore[method-assign]
    arbiter.stopping = True
    (root / "c.json").write_bytes(_config(["a", "z"]))
    arbiter._poll_config(forced=True)
    assert spawned == []
    assert arbiter.table.get("z") is None
