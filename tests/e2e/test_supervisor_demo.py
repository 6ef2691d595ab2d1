"""`rdma-shared-dp demo` runs the real plugin end to end and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_the_scenario_and_exits_cleanly() -> None:
    # Short (unix socket paths are limited to 107 bytes) and unique (suites may run side by side).
    workdir = Path(tempfile.mkdtemp(prefix="rdp-demo-test-", dir="/tmp"))
    out = subprocess.run(
        [sys.executable, "-m", "supervisor", "demo", "--workdir", str(workdir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        text = out.stdout
        for resource in ("rdma/hca_ib", "rdma/hca_roce", "rdma/irdma"):
            assert f"{resource:<14} registered after" in text
        assert "16 device IDs (0..15), Healthy, NUMA 0,1, on 4 HCAs" in text
        assert "A device ID is a pod slot, not a piece of hardware" in text
        assert "`status` shows DEVICES 4: the HCAs" in text
        assert "/dev/infiniband/rdma_cm" in text
        assert "Unhealthy" in text and "back ACTIVE:" in text
        assert "a new worker registered after" in text
        assert "all 3 resources registered again" in text
        assert "RESOURCE" in text and "running" in text
        assert "exit status 0" in text and "plugin sockets left: none" in text
        assert "demo finished in" in text
        assert not (workdir / "run").exists()
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_demo_refuses_a_workdir_with_an_earlier_demo() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rdp-demo-test-", dir="/tmp"))
    try:
        (workdir / "node").mkdir()
        out = subprocess.run(
            [sys.executable, "-m", "supervisor", "demo", "--workdir", str(workdir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2
        assert "pick an empty --workdir" in out.stderr
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
