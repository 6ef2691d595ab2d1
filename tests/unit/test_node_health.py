"""Node-level verdicts (supervisor.node_health) from real discovery scans of sysfs trees."""

from __future__ import annotations

from pathlib import Path

from common.config import load_config_bytes
from common.devices import Scan, ScanProblem
from common.discovery import scan
from common.selectors import select
from simulator.sysfs import SysfsTree, connectx_ib
from supervisor.node_health import NO_DEVICES, NO_PCI_BUS, SYSFS_UNREADABLE, node_problem
from tests.factories import config_bytes


def _verdict(root: Path) -> tuple[str, str] | None:
    """The verdict for two resources selecting Mellanox devices, on the tree under `root`."""
    config = load_config_bytes(config_bytes(["a", "b"]), "c.json")
    result = scan(str(root))
    selections = {r.full_name: select(r, result.candidates).selected for r in config.resources}
    problem = node_problem(result, selections, str(root))
    return None if problem is None else (problem.reason, problem.text)


def test_a_node_with_matching_devices_has_no_problem(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(connectx_ib("0000:3b:00.0", rdma="mlx5_0", netdev="ib0"))
    assert _verdict(tmp_path) is None


def test_no_pci_bus_under_the_host_root(tmp_path: Path) -> None:
    verdict = _verdict(tmp_path)
    assert verdict is not None and verdict[0] == NO_PCI_BUS
    assert f"{tmp_path}/sys/bus/pci/devices" in verdict[1] and "--host-root" in verdict[1]


def test_nothing_matched_by_any_resource(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(connectx_ib("0000:3b:00.0", rdma="mlx5_0", netdev="ib0"))
    config = load_config_bytes(
        b'{"configList": [{"resourceName": "a", "resourcePrefix": "example.com", '
        b'"rdmaHcaMax": 1, "selectors": {"vendors": ["8086"]}}]}',
        "c.json",
    )
    result = scan(str(tmp_path))
    selections = {r.full_name: select(r, result.candidates).selected for r in config.resources}
    problem = node_problem(result, selections, str(tmp_path))
    assert problem is not None and problem.reason == NO_DEVICES
    assert "1 configured resource(s)" in problem.text and "1 with RDMA" in problem.text
    # No resource configured at all: nothing is asked, so nothing is missing.
    assert node_problem(result, {}, str(tmp_path)) is None


def test_unreadable_pci_bus() -> None:
    problem = node_problem(
        Scan(problems=(ScanProblem("unreadable", "sys/bus/pci/devices", "cannot list: EACCES"),)),
        {"example.com/a": ()},
        "/host",
    )
    assert problem is not None and problem.reason == SYSFS_UNREADABLE
    assert "/host/sys/bus/pci/devices" in problem.text and "EACCES" in problem.text
