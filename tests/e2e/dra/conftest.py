"""Fixtures of the DRA suite: one real control plane and node for the suite (control_plane.py);
each test leaves it as it found it.

It skips only where this machine lacks a capability, naming it; with RDMA_E2E_REQUIRE=1 (set by
`make e2e-dra` and CI) a missing capability fails instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conditions import missing
from tests.e2e.dra import control_plane
from tests.e2e.dra.control_plane import ControlPlane

#: Lines the tests add for the end-of-run summary (start time, the scheduler's messages).
FIGURES: list[str] = []


def _unavailable(reason: str) -> None:
    if os.environ.get("RDMA_E2E_REQUIRE") == "1":
        pytest.fail(f"DRA suite required but {reason}")
    missing(reason)  # a skip with its reason; a failure under CI=true


#: RDMA_E2E_DRA_FAKE_NODE=1: the Node is an object with no kubelet behind it (what the scheduler
#: does can be seen without root, containerd or a kubelet; pods are bound, never started).
FAKE_NODE = os.environ.get("RDMA_E2E_DRA_FAKE_NODE") == "1"


@pytest.fixture(scope="package")
def cluster() -> Iterator[ControlPlane]:
    reason = control_plane.missing_capability(node=not FAKE_NODE)
    if reason:
        _unavailable(reason)
    # Short and under /tmp: unix socket paths are limited to 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="dra-", dir="/tmp"))
    with ControlPlane(workdir, node=not FAKE_NODE) as cp:
        if FAKE_NODE:
            cp.register_node()
        FIGURES.append(f"control plane and node ready in {cp.start_seconds:.1f} s")
        yield cp


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("DRA figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
