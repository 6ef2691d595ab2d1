"""`status`, `/readyz` and the netns metric on a live supervisor (issue 13, items 3 and 5).

A real supervisor with real workers on a sysfs tree in a temp folder, the kubelet simulator, and
its HTTP endpoint on a free loopback port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conditions import wait_until
from tests.e2e.test_metrics_e2e import MetricsPlant, _start
from tests.supervisor_rig import REPO, three_resources

ABC = ["a", "b", "c"]


@pytest.fixture
def plant() -> Iterator[MetricsPlant]:
    rig = _start(three_resources(1))  # 1 s rescans: the netns mode is read after each
    try:
        yield rig
    finally:
        print(rig.log()[-8000:])
        rig.close()


def _status_text(plant: MetricsPlant) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "supervisor", "status", "--runtime-dir", str(plant.runtime_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_refused_reload_shows_in_status_and_readyz_stays_ready(plant: MetricsPlant) -> None:
    assert plant.status().last_reload is None
    assert "last reload: none since start" in _status_text(plant)
    plant.write_config('{"configList": [{"resourceName": "a", "rdmaHcaMax": -1}]}')
    reload = wait_until(lambda: plant.status().last_reload, 10, what="a reload recorded")
    assert not reload.ok and reload.problems >= 1
    assert "rdmaHcaMax" in reload.first_problem or "selects no devices" in reload.first_problem
    text = _status_text(plant)
    assert "refused" in text and "the running config stays; first: configList[0]" in text
    status, body = plant.get("/readyz")
    assert status == 200, body  # the running config still serves every resource
    assert body.startswith("ok\n3 resources registered\nnote: config reload refused at ")
    # A good file again: the note goes, status says applied.
    plant.write_config(three_resources(1))
    wait_until(lambda: (r := plant.status().last_reload) is not None and r.ok, 10, what="applied")
    wait_until(lambda: plant.get("/readyz") == (200, "ok\n3 resources registered\n"), 10)
    assert " applied" in _status_text(plant).splitlines()[1]


def test_exclusive_netns_mode_warns_everywhere_and_keeps_serving(plant: MetricsPlant) -> None:
    assert plant.status().rdma_netns_mode == "unknown"  # the rig's tree has no ib_core folder
    assert plant.value("rdma_netns_exclusive") is None
    plant.tree.set_netns_mode(shared=False)
    wait_until(lambda: plant.status().rdma_netns_mode == "exclusive", 10, what="exclusive read")
    assert plant.value("rdma_netns_exclusive") == 1
    text = _status_text(plant)
    assert "RDMA netns mode: exclusive" in text and "rdma system set netns shared" in text
    status, body = plant.get("/readyz")
    assert status == 200 and "note: the RDMA subsystem is in exclusive" in body
    assert "exclusive network-namespace mode" in plant.log()
    assert all(plant.worker(n).registered for n in ABC)  # it keeps running
    plant.tree.set_netns_mode(shared=True)
    wait_until(lambda: plant.value("rdma_netns_exclusive") == 0, 10, what="shared again")
    assert (
        json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "supervisor",
                    "status",
                    "--json",
                    "--runtime-dir",
                    str(plant.runtime_dir),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        )["rdma_netns_mode"]
        == "shared"
    )


def test_a_node_without_pci_bus_is_not_ready_and_says_why(plant: MetricsPlant) -> None:
    """The host's /sys goes missing under --host-root: workers keep running, but /readyz, status
    and the node_problem metric say the node serves no device (1 s rescans notice it)."""
    assert plant.value("node_problem", reason="no_pci_bus") == 0
    assert plant.status().node_problem == ""
    bus = plant.node / "sys" / "bus" / "pci"
    bus.rename(bus.with_name("pci.away"))
    try:
        wait_until(lambda: plant.get("/readyz")[0] == 503, 10, what="/readyz 503 without a bus")
        body = plant.get("/readyz")[1]
        assert body.startswith("not ok\nnode: no PCI bus at ") and "--host-root" in body
        assert plant.value("node_problem", reason="no_pci_bus") == 1
        assert plant.value("node_problem", reason="no_devices") == 0
        assert "no PCI bus" in plant.status().node_problem
        assert "node serves no device: no PCI bus" in _status_text(plant)
        assert plant.log().count("node serves no RDMA device reason=no_pci_bus") == 1
    finally:
        bus.with_name("pci.away").rename(bus)
    wait_until(lambda: plant.get("/readyz")[0] == 200, 10, what="/readyz 200 with the bus back")
    assert plant.value("node_problem", reason="no_pci_bus") == 0
    assert plant.status().node_problem == ""
