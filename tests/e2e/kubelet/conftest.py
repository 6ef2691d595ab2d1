"""Fixtures of the real-kubelet suite: one node (containerd + kubelet + plugin) per test.

The suite runs once per kubelet version of versions.env. It skips only where this machine lacks
a capability, naming it; with RDMA_E2E_REQUIRE=1 (set by `make e2e-kubelet` and CI) a missing
capability fails instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conditions import missing
from tests.e2e.kubelet import rig

#: Lines the tests add for the end-of-run summary (figures: latencies, rejections, inodes).
FIGURES: list[str] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kubelet_version" in metafunc.fixturenames:
        metafunc.parametrize("kubelet_version", rig.kubelet_versions(), scope="session")


def _unavailable(reason: str) -> None:
    if os.environ.get("RDMA_E2E_REQUIRE") == "1":
        pytest.fail(f"real-kubelet suite required but {reason}")
    missing(reason)  # a skip with its reason; a failure under CI=true


@pytest.fixture(scope="session")
def capability() -> None:
    reason = rig.missing_capability()
    if reason:
        _unavailable(reason)


@pytest.fixture(scope="session")
def image_archive(capability: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rig.build_image_archive(tmp_path_factory.mktemp("image") / "busybox-oci.tar")


@pytest.fixture
def kubelet_bin(kubelet_version: str, capability: None) -> Path:
    path = rig.kubelet_binary(kubelet_version)
    if not path.exists():
        _unavailable(f"kubelet {kubelet_version} not built (bash .ci/install-kubelet-e2e.sh)")
    return path


def _node(kubelet_version: str, image_archive: Path, containerd2: bool) -> Iterator[rig.Node]:
    # Short and under /tmp: unix socket paths are limited to 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="rke-", dir="/tmp"))
    node = rig.Node(workdir, kubelet_version, image_archive, containerd2=containerd2)
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def node(kubelet_bin: Path, kubelet_version: str, image_archive: Path) -> Iterator[rig.Node]:
    yield from _node(kubelet_version, image_archive, containerd2=False)


@pytest.fixture
def node2(kubelet_bin: Path, kubelet_version: str, image_archive: Path) -> Iterator[rig.Node]:
    """A node whose runtime is containerd 2.x with CDI enabled."""
    if not (rig.containerd2_dir() / "containerd").exists():
        _unavailable(
            f"containerd {rig.containerd2_version()} not built (bash .ci/install-kubelet-e2e.sh)"
        )
    yield from _node(kubelet_version, image_archive, containerd2=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("real-kubelet figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
