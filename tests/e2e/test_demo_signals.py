"""`rdma-shared-dp demo`: a stop signal to the demo's pid stops everything it started (issue 13).

The real demo (the CLI execs it, so the pid `Popen` returns is the demo's), `--json` events read
line by line, and psutil to see that the supervisor and every worker are gone afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from tests.conditions import wait_until

REPO = Path(__file__).resolve().parents[2]


def _events(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        yield json.loads(line)


def _start(*extra: str) -> tuple[subprocess.Popen[str], Path]:
    workdir = Path(tempfile.mkdtemp(prefix="rdp-demo-sig-", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "demo", "--json", "--workdir", str(workdir), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, workdir


def _wait_for(events: Iterator[dict[str, Any]], name: str) -> dict[str, Any]:
    for event in events:
        if event["event"] == name:
            return event
        assert event["event"] != "failed", event
    raise AssertionError(f"the demo ended before a {name!r} event")


def _all_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_keep_running_prints_how_to_look_and_a_signal_stops_everything(signum: int) -> None:
    proc, workdir = _start("--keep-running")
    try:
        assert proc.stdout is not None
        events = _events(proc.stdout)
        inspect = _wait_for(events, "inspect")
        pids = [inspect["supervisor_pid"], *inspect["worker_pids"]]
        assert len(inspect["worker_pids"]) == 3 and all(psutil.pid_exists(p) for p in pids)
        # The printed commands work as printed.
        status = subprocess.run(
            inspect["status_command"], shell=True, capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0 and "rdma/hca_ib" in status.stdout, status.stderr
        url = inspect["curl_commands"][1].split()[-1]
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.status == 200 and answer.read().startswith(b"ok\n")
        assert url.startswith("http://127.0.0.1:")

        proc.send_signal(signum)
        stopped = _wait_for(events, "stopped")
        assert stopped["exit_status"] == 0 and stopped["sockets_left"] == []
        assert proc.wait(30) == 0
        wait_until(lambda: _all_gone(pids), 10, what="supervisor and workers gone")
        assert not (workdir / "run").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_sigterm_in_the_middle_of_the_scenario_stops_everything() -> None:
    proc, workdir = _start()
    try:
        assert proc.stdout is not None
        events = _events(proc.stdout)
        supervisor = _wait_for(events, "plugin_started")["pid"]
        _wait_for(events, "registered")
        children = [c.pid for c in psutil.Process(supervisor).children()]
        proc.send_signal(signal.SIGTERM)
        assert _wait_for(events, "interrupted")["signal"] == "SIGTERM"
        assert proc.wait(30) == 128 + signal.SIGTERM
        wait_until(lambda: _all_gone([supervisor, *children]), 10, what="everything gone")
        assert proc.stderr is not None and "stopping everything it started" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
