"""`make e2e-rdma`: the plugin against a real kernel's RDMA stack (soft-RoCE in a VM).

One VM session per run (module fixture): Debian 12's kernel, rxe0 on eth0 and rxe1 on eth1
(two virtio NICs), the work tree shared read-only. Inside, tests/e2e/rdma/vm_scenarios.py runs the
scenarios and records each; every test here asserts one of them, with the VM's detail on failure.
The figures line (devices found, scenarios passed, ib_write_bw bandwidth, uevent-to-kubelet
latency, VM boot time) goes to `<out>/figures.txt`, which `make e2e-rdma` prints last.
docs/e2e-rdma.md has the design and the budget.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.discovery import scan
from tests.conditions import missing
from tests.e2e.rdma import vm

pytestmark = [pytest.mark.rdma_vm, pytest.mark.hard_timeout(1500)]

REPO = Path(__file__).resolve().parents[3]
OUT = Path(os.environ.get("RDMA_VM_OUT", "/tmp/rdma-vm-out"))
#: Under TCG with two shared cores the kernel prints its first line in ~15-40 s.
BOOT_DEADLINE = float(os.environ.get("RDMA_VM_BOOT_DEADLINE", "180"))
SESSION_DEADLINE = float(os.environ.get("RDMA_VM_DEADLINE", "1200"))
SCENARIOS = (
    "capture",
    "discovery",
    "registration_allocate",
    "traffic",
    "traffic_without_our_devices_fails",
    "cdi_allocate_traffic",
    "rdma_cgroup_usage",
    "rdma_link_delete_add",
    "netdev_down_up",
    "netdev_renamed",
    "delete_while_allocated",
    "netns_exclusive",
)


def _unavailable(reason: str) -> None:
    if os.environ.get("RDMA_E2E_REQUIRE") == "1" and os.environ.get("CI") != "true":
        pytest.fail(f"soft-RoCE VM suite required but {reason}")
    missing(reason)  # a skip with its reason; a failure under CI=true


@pytest.fixture(scope="module")
def session() -> Iterator[vm.VmRun]:
    problem = vm.image_problem()
    if problem:
        _unavailable(problem)
    run = vm.boot(REPO, OUT, boot_deadline=BOOT_DEADLINE, deadline=SESSION_DEADLINE)
    yield run
    write_figures(run)


def write_figures(run: vm.VmRun) -> None:
    results = run.results.get("scenarios", {})
    figures = run.results.get("figures", {})
    passed = sum(1 for s in results.values() if s.get("ok"))
    latency = figures.get("uevent_latency_s", {})
    boot = "-" if run.boot_seconds is None else f"{run.boot_seconds:.1f} s"
    line = (
        f"e2e-rdma figures: devices found {figures.get('devices', 0)}, "
        f"scenarios passed {passed}/{len(SCENARIOS)}, "
        f"ib_write_bw {figures.get('ib_write_bw_mb_s', '-')} MB/s, "
        f"uevent->kubelet latency max {latency.get('max', '-')} s "
        f"(median {latency.get('median', '-')} s), VM boot {boot}, "
        f"VM session {run.seconds:.0f} s ({run.accel}), kernel {run.results.get('kernel', '-')}"
    )
    (OUT / "figures.txt").write_text(line + "\n")


def test_the_vm_boots_and_runs_its_session(session: vm.VmRun) -> None:
    tail = "\n".join(session.console.splitlines()[-40:])
    assert not session.failure, f"{session.failure}; console tail:\n{tail}"
    assert session.rc is not None, f"the session wrote no exit status; console tail:\n{tail}"
    assert session.results, f"no results.json; console tail:\n{tail}"


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(session: vm.VmRun, name: str) -> None:
    scenarios = session.results.get("scenarios", {})
    assert name in scenarios, f"scenario {name} did not run ({session.failure or 'see console'})"
    got = scenarios[name]
    detail = got["detail"]
    if name in ("rdma_link_delete_add", "netns_exclusive") and not got["ok"]:
        detail += "\nplugin log tail:\n" + session.results.get("plugin_log_tail", "")
    assert got["ok"], detail


def test_the_capture_reads_like_the_live_kernel(session: vm.VmRun, tmp_path: Path) -> None:
    """What the VM captured (the fixture's source) gives the host's discovery what the live
    kernel gave it inside: the way tests/fixtures/real-sysfs/debian12-rxe is made stays sound."""
    archive = session.out / "capture.tar"
    assert archive.is_file(), "no capture.tar"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="tar")
    root = tmp_path / "capture"
    assert (root / "sys/class/infiniband/rxe0").is_symlink()
    assert (root / "KERNEL").read_text().strip() == session.results["kernel"]
    found = {c.name: c for c in scan(root).candidates if c.software}
    assert sorted(found) == ["rxe0", "rxe1"]
    assert all(c.healthy and c.vendor == "1af4" for c in found.values())
    assert session.results["figures"]["devices"] == len(found)
