"""PodResources: the poller process against the simulator, and the supervisor-side reader.

Real processes and pipes: `python -m podresources.poller` talks gRPC to
`tests.podresources_simulator` on a unix socket; `PodResourcesReader` owns the poller. Where a
test needs a misbehaving poller, a tiny shell script stands in for the Python interpreter.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from supervisor.metrics.exporter import Metrics
from supervisor.pod_resources import PodAllocation, PodResourcesReader, parse_snapshot
from tests.conditions import wait_until
from tests.podresources_simulator import PodDevices, PodResourcesSimulator, short_tmp_dir

RES = "rdma/hca_shared_devices_a"
POLLER = [sys.executable, "-m", "podresources.poller"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with short_tmp_dir() as path:
        yield path


@pytest.fixture
def sim(short_dir: Path) -> Iterator[PodResourcesSimulator]:
    s = PodResourcesSimulator(short_dir / "kubelet.sock")
    yield s
    s.stop()


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> dict[str, object]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from the poller within {timeout}s"
    line = proc.stdout.readline()
    assert line.endswith(b"\n"), f"poller ended or wrote a partial line: {line!r}"
    data = json.loads(line)
    assert isinstance(data, dict)
    return data


def start_poller(socket: Path, interval: float = 0.1) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*POLLER, "--socket", str(socket), "--interval", str(interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pods() -> list[PodDevices]:
    return [
        PodDevices("default", "trainer-0", {"main": {RES: ["d1", "d2"], "nvidia.com/gpu": ["g"]}}),
        PodDevices("ml", "infer", {"a": {RES: ["d3"]}, "b": {}}),
    ]


# -- the poller process ------------------------------------------------------------------------


def test_poller_reports_what_the_kubelet_lists(sim: PodResourcesSimulator) -> None:
    sim.set_pods(pods())
    proc = start_poller(sim.socket_path)
    try:
        snap = read_line(proc)
        assert snap["available"] is True and snap["error"] == ""
        rows = snap["rows"]
        assert isinstance(rows, list)
        assert {
            "namespace": "default",
            "pod": "trainer-0",
            "container": "main",
            "resource_name": RES,
            "device_ids": ["d1", "d2"],
        } in rows
        assert len(rows) == 3  # the container without devices has no row

        sim.set_pods([])
        wait_until(lambda: read_line(proc)["rows"] == [], timeout=5, what="empty snapshot")
    finally:
        stop(proc)


def test_absent_socket_is_an_empty_snapshot_without_log_spam(short_dir: Path) -> None:
    proc = start_poller(short_dir / "missing.sock", interval=0.05)
    try:
        for _ in range(5):
            assert read_line(proc) == {"available": False, "rows": [], "error": ""}
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        assert proc.stderr is not None
        assert proc.stderr.read() == b""
        stop(proc)


def test_failing_kubelet_is_reported_once_then_recovers(sim: PodResourcesSimulator) -> None:
    sim.set_pods(pods())
    sim.fail_with(grpc.StatusCode.INTERNAL)
    proc = start_poller(sim.socket_path, interval=0.05)
    try:
        for _ in range(4):
            snap = read_line(proc)
            assert snap["available"] is False
            assert snap["error"] == "INTERNAL: simulated failure"
        sim.fail_with(None)
        wait_until(lambda: read_line(proc)["available"] is True, timeout=5, what="recovery")
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        assert proc.stderr is not None
        log = proc.stderr.read().decode().splitlines()
        stop(proc)
    assert len([line for line in log if "INTERNAL" in line]) == 1, log
    assert len([line for line in log if "answering" in line]) == 1, log


def test_poller_exits_when_its_reader_closes_the_pipe(sim: PodResourcesSimulator) -> None:
    proc = start_poller(sim.socket_path, interval=0.05)
    try:
        read_line(proc)
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None
        assert b"Error" not in proc.stderr.read()  # no traceback, no "Exception ignored"
    finally:
        stop(proc)


def test_poller_exits_when_its_parent_dies(sim: PodResourcesSimulator, short_dir: Path) -> None:
    # The poller's stdout is a file here, so only the parent check can end it.
    out = short_dir / "poller.out"
    parent_code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen({[*POLLER, "--socket", str(sim.socket_path), "--interval", "5"]!r},
                             stdout=open({str(out)!r}, "wb"), start_new_session=True)
        print(p.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    poller_pid = 0
    try:
        assert parent.stdout is not None
        poller_pid = int(parent.stdout.readline())
        wait_until(lambda: out.read_bytes().count(b"\n") >= 1, timeout=10, what="first poll")
        assert not gone(poller_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)
        # The interval is 5 s; the parent check must end it well before the next poll.
        wait_until(lambda: gone(poller_pid), timeout=2, what="orphaned poller to exit")
    finally:
        stop(parent)
        if poller_pid and not gone(poller_pid):
            os.kill(poller_pid, signal.SIGKILL)  # the test failed; leave nothing behind


def test_poller_refuses_bad_arguments() -> None:
    result = subprocess.run(
        [*POLLER, "--socket", "/x", "--interval", "0"], capture_output=True, timeout=30
    )
    assert result.returncode == 2 and b"--interval must be > 0" in result.stderr


# -- the reader ----------------------------------------------------------------------------------


def read_until(
    reader: PodResourcesReader, pred: object, timeout: float = 10.0
) -> list[PodAllocation]:
    """Drive the reader like the supervisor loop: select on fileno() with its timeout()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([reader], [], [], min(reader.timeout(), 0.2))
        rows = reader.read()
        if rows is not None and callable(pred) and pred(rows):
            return rows
    raise AssertionError("reader did not produce the expected snapshot in time")


def test_reader_turns_lines_into_allocations_and_metrics(sim: PodResourcesSimulator) -> None:
    sim.set_pods(pods())
    reader = PodResourcesReader(str(sim.socket_path), interval=0.1)
    try:
        rows = read_until(reader, lambda rows: len(rows) == 3)
        assert reader.available
        assert PodAllocation("default", "trainer-0", "main", RES, 2) in rows
        assert PodAllocation("ml", "infer", "a", RES, 1) in rows

        # The caller keeps its own resources only, then publishes them.
        metrics = Metrics("v")
        metrics.set_pod_allocations([r for r in rows if r.resource == RES])
        text = metrics.render().decode()
        assert (
            'rdma_shared_dp_pod_allocations{container="main",namespace="default",'
            f'pod="trainer-0",resource="{RES}"}} 2.0'
        ) in text
        assert "nvidia.com/gpu" not in text

        sim.set_pods(pods()[1:])
        rows = read_until(reader, lambda rows: len(rows) == 1)
        assert rows == [PodAllocation("ml", "infer", "a", RES, 1)]

        sim.stop()  # the kubelet goes away: no series rather than stale ones
        read_until(reader, lambda rows: rows == [])
        assert not reader.available
    finally:
        reader.stop()


def test_reader_with_no_socket_says_so_once_and_keeps_one_quiet_poller(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Network Operator mounts no pod-resources socket: one log line, no retry storm."""
    caplog.set_level("INFO", logger="supervisor.pod_resources")
    reader = PodResourcesReader(str(short_dir / "pod-resources" / "kubelet.sock"), interval=0.02)
    try:
        first = reader.pid
        snapshots = 0

        def polled_enough(rows: list[PodAllocation]) -> bool:
            nonlocal snapshots
            snapshots += 1
            return snapshots >= 25

        assert read_until(reader, polled_enough) == []
        assert reader.pid == first  # the same child all along: nothing restarted
        lines = [r for r in caplog.records if "PodResources" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "not available" in lines[0].getMessage()
        assert "no socket" in lines[0].getMessage()
        assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    finally:
        reader.stop()


def test_reader_restarts_a_killed_poller_on_the_same_descriptor(
    sim: PodResourcesSimulator,
) -> None:
    sim.set_pods(pods())
    reader = PodResourcesReader(str(sim.socket_path), interval=0.1)
    try:
        read_until(reader, lambda rows: len(rows) == 3)
        fd, first = reader.fileno(), reader.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        sim.set_pods(pods()[:1])
        read_until(reader, lambda rows: len(rows) == 2)
        assert reader.pid not in (None, first)
        assert reader.fileno() == fd
    finally:
        reader.stop()
    assert first is not None and gone(first)


def test_reader_stop_ends_the_poller(sim: PodResourcesSimulator) -> None:
    reader = PodResourcesReader(str(sim.socket_path), interval=0.1)
    pid = reader.pid
    assert pid is not None
    reader.stop()
    reader.stop()
    assert gone(pid)
    assert reader.read() is None


def fake_python(folder: Path, body: str) -> Path:
    """An executable that ignores `-m podresources.poller ...` and runs `body`."""
    path = folder / "fake-python"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_reader_tolerates_garbage_and_partial_lines(short_dir: Path) -> None:
    good = {
        "available": True,
        "rows": [
            {
                "namespace": "n",
                "pod": "p",
                "container": "c",
                "resource_name": RES,
                "device_ids": ["1"],
            },
            5,
            {"namespace": "n", "pod": 7, "container": "c", "resource_name": RES, "device_ids": []},
            {"namespace": "n", "pod": "q", "container": "c", "resource_name": RES},
        ],
        "error": "",
    }
    body = (
        'printf \'garbage\\n\\377\\376\\n[1,2]\\n{"available": "yes"}\\n\'\n'
        f"printf '%s\\n' '{json.dumps(good)}'\n"
        'printf \'{"available": true, "rows": [], "err\'\n'  # never finished
        "exec sleep 30\n"
    )
    reader = PodResourcesReader(
        "/nonexistent", interval=1, python=str(fake_python(short_dir, body))
    )
    try:
        rows = read_until(reader, lambda rows: True)
        assert rows == [PodAllocation("n", "p", "c", RES, 1)]
        assert reader.read() is None  # the unfinished line is not a snapshot
    finally:
        reader.stop()


def test_reader_gives_the_poller_an_explicit_environment(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RDMA_SHARED_DP_TEST_SECRET", "leak")
    env_file = short_dir / "env"
    body = f"env > {env_file}\nexec sleep 30\n"
    reader = PodResourcesReader("/x", interval=1, python=str(fake_python(short_dir, body)))
    try:
        wait_until(lambda: env_file.exists() and env_file.read_text(), timeout=5, what="env dump")
        env = env_file.read_text()
        assert "RDMA_SHARED_DP_TEST_SECRET" not in env
        assert f"PATH={os.environ['PATH']}" in env
    finally:
        reader.stop()


def test_reader_backs_off_before_restarting_a_crashing_poller(short_dir: Path) -> None:
    starts = short_dir / "starts"
    body = f"echo start >> {starts}\nexit 3\n"
    reader = PodResourcesReader("/x", interval=1, python=str(fake_python(short_dir, body)))
    try:
        wait_until(
            lambda: starts.exists() and reader._proc is not None and reader._proc.poll() == 3
        )
        reader.read()  # notices the exit and schedules the restart
        assert reader.pid is None
        assert 0.3 < reader.timeout() <= 0.5
        reader.read()
        assert starts.read_text().count("start") == 1  # not restarted at once
        wait_until(
            lambda: reader.read() is None and starts.read_text().count("start") == 2,
            timeout=3,
            what="restart after the backoff",
        )
        proc = reader._proc
        wait_until(lambda: proc is not None and proc.poll() == 3, what="second exit")
        reader.read()
        assert 0.8 < reader.timeout() <= 1.0  # the next delay is longer
    finally:
        reader.stop()


@pytest.mark.parametrize(
    "line",
    [b"", b"null", b"[]", b'{"rows": []}', b'{"available": 1}', b'{"available": true, "rows": 5}'],
)
def test_parse_snapshot_refuses_what_is_not_a_snapshot(line: bytes) -> None:
    assert parse_snapshot(line) is None


def test_parse_snapshot_unavailable() -> None:
    assert parse_snapshot(b'{"available": false, "rows": [], "error": "x"}') == (False, [], "x")


def test_the_supervisor_side_never_loads_grpc(sim: PodResourcesSimulator) -> None:
    sim.set_pods(pods())
    code = textwrap.dedent(
        f"""
        import select, sys
        from supervisor.metrics.http_server import start_metrics_server
        from supervisor.metrics.exporter import Metrics
        from supervisor.pod_resources import PodResourcesReader
        reader = PodResourcesReader({str(sim.socket_path)!r}, interval=0.1)
        rows = None
        while not rows:
            select.select([reader], [], [], 0.2)
            rows = reader.read()
        m = Metrics("v")
        m.set_pod_allocations(rows)
        server = start_metrics_server("127.0.0.1:0", m, lambda: (True, ""), lambda: (True, ""))
        server.stop()
        reader.stop()
        print(sorted(n for n in sys.modules if n == "grpc" or n.startswith(("grpc.", "proto"))))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=30, check=True
    )
    assert result.stdout.strip() == b"[]", result.stdout


def test_parse_snapshot_counts_each_device_once_across_numa_nodes() -> None:
    # What a real kubelet listed for a pod holding two slots of a device on NUMA nodes 0 and 1.
    row = {"namespace": "n", "pod": "p", "container": "c", "resource_name": RES}
    line = json.dumps(
        {"available": True, "rows": [{**row, "device_ids": ["3", "7", "3", "7"]}], "error": ""}
    ).encode()
    parsed = parse_snapshot(line)
    assert parsed is not None
    _, rows, _ = parsed
    assert [(r.count, r.device_ids) for r in rows] == [(2, ("3", "7"))]
    metrics = Metrics("v")
    metrics.set_pod_allocations(rows)
    assert f'pod="p",resource="{RES}"}} 2.0' in metrics.render().decode()
