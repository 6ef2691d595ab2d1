"""Supervisor and worker log lines share one shape, in both formats."""

from __future__ import annotations

import json
import subprocess
import sys


def _worker_log(fmt: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers",
            "--resource",
            "abc",
            "--control",
            "ipc:///nonexistent/control.sock",
            "--connect-timeout",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"RDMA_SHARED_DP_LOG_FORMAT": fmt, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 4, out.stderr  # SUPERVISOR_LOST: nobody sent a configure
    return out.stderr


def test_worker_json_lines_carry_the_shared_keys() -> None:
    lines = [json.loads(line) for line in _worker_log("json").splitlines() if line.strip()]
    assert lines
    for entry in lines:
        assert {"ts", "level", "logger", "msg", "process", "pid", "resource"} <= entry.keys()
        assert entry["process"] == "worker" and entry["resource"] == "abc"
    assert any(e["level"] == "error" for e in lines)


def test_worker_text_lines_name_the_resource() -> None:
    first = _worker_log("text").splitlines()[0]
    assert " worker resource=abc pid=" in first
