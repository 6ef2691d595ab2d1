"""common.discovery on trees written by simulator.sysfs: layouts, rules and every broken entry."""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

import pytest

from common.devices import Candidate, Scan
from common.discovery import PROBLEM_REASONS, scan
from simulator.sysfs import (
    ARPHRD_INFINIBAND,
    AuxSpec,
    FunctionSpec,
    NetdevSpec,
    PortSpec,
    RdmaSpec,
    SysfsTree,
    build_demo_node,
    connectx_ib,
    connectx_roce,
    e810,
    gpu,
    igb,
)

IB = "0000:3b:00.0"
ROCE = "0000:5e:00.0"
NIC = "0000:05:00.0"


def by_name(result: Scan) -> dict[str, Candidate]:
    return {c.name: c for c in result.candidates}


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    t = SysfsTree(tmp_path)
    t.add(
        connectx_ib(IB, rdma="mlx5_0", netdev="ib0", numa_node=0),
        connectx_roce(ROCE, rdma="mlx5_1", netdev="ens1f0np0", numa_node=1),
        igb(NIC, netdev="eno1"),
    )
    return t


def reasons(result: Scan) -> list[tuple[str, str]]:
    return [(p.reason, p.path) for p in result.problems]


# -- layouts ---------------------------------------------------------------------------------------


def test_demo_node(tmp_path: Path) -> None:
    build_demo_node(tmp_path)
    result = scan(tmp_path)
    assert result.problems == ()
    found = by_name(result)
    assert list(found) == sorted(found)
    assert list(found) == [
        "0000:05:00.0",
        "0000:1a:00.0",
        "0000:3c:00.0",
        "0000:9c:00.0",
        "0000:b1:00.0",
        "0000:b1:00.1",
        "0000:bc:00.0",
        "0000:ca:00.0",
        "mlx5_core.sf.2",
    ]  # no GPU (class 0x0302), no mlx5_core.eth.N / mlx5_core.rdma.N candidates
    usable = [c.name for c in result.candidates if c.usable and c.healthy]
    assert usable == list(found)[1:]
    ib = found["0000:9c:00.0"]
    assert (ib.vendor, ib.device_id, ib.driver, ib.numa_node) == ("15b3", "1021", "mlx5_core", 1)
    assert (ib.if_name, ib.link_type) == ("ib2", "infiniband")
    assert [c.name for c in ib.char_devices] == ["uverbs2", "umad2", "issm2"]
    roce = found["0000:b1:00.0"]
    assert [r.name for r in roce.rdma_devices] == ["mlx5_4"]
    assert [c.kind for c in roce.char_devices] == ["uverbs", "umad"]  # RoCE: no issm
    assert roce.rdma_devices[0].ports[0].link_layer == "Ethernet"


def test_sub_function_is_a_candidate_with_its_parents_identity(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(
        connectx_roce(
            ROCE, rdma="mlx5_0", netdev="p0", numa_node=1, sub_functions=[(7, "p0sf7", "mlx5_1")]
        )
    )
    parent, sf = scan(tmp_path).candidates
    assert sf.name == "mlx5_core.sf.7" and sf.auxiliary and not parent.auxiliary
    assert (sf.pci_address, sf.vendor, sf.device_id, sf.driver, sf.numa_node) == (
        ROCE,
        "15b3",
        "101d",
        "mlx5_core",
        1,
    )
    assert sf.if_name == "p0sf7"
    assert [r.name for r in sf.rdma_devices] == ["mlx5_1"]
    assert [r.name for r in parent.rdma_devices] == ["mlx5_0"]
    assert parent.if_name == "p0"
    assert sf.usable and sf.healthy


def test_sub_function_contents_one_aux_level_deeper(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    deep = AuxSpec(
        "mlx5_core.sf.3",
        driver="mlx5_core.sf",
        children=[
            AuxSpec("mlx5_core.eth.9", netdevs=[NetdevSpec("p0sf3")]),
            AuxSpec(
                "mlx5_core.rdma.9",
                rdma=[RdmaSpec("mlx5_9", ports=[PortSpec(link_layer="Ethernet")])],
            ),
        ],
    )
    tree.add(FunctionSpec(ROCE, device="101d", netdevs=[NetdevSpec("p0")], aux=[deep]))
    parent, sf = scan(tmp_path).candidates
    assert parent.rdma_devices == ()
    assert (sf.name, sf.if_name) == ("mlx5_core.sf.3", "p0sf3")
    assert [r.name for r in sf.rdma_devices] == ["mlx5_9"]
    assert [c.name for c in sf.char_devices] == ["uverbs0", "umad0"]


def test_irdma_on_ice_roce_belongs_to_the_function(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(e810("0000:ca:00.0", netdev="ens2f0", rdma="irdma0", numa_node=1))
    (function,) = scan(tmp_path).candidates
    assert (function.name, function.vendor, function.device_id) == ("0000:ca:00.0", "8086", "159b")
    assert (function.driver, function.if_name) == ("ice", "ens2f0")
    assert [r.name for r in function.rdma_devices] == ["irdma0"]
    assert function.usable and function.healthy


def test_mlx5_rdma_aux_child_without_netdev_belongs_to_the_function(tmp_path: Path) -> None:
    child = AuxSpec("mlx5_core.rdma.0", rdma=[RdmaSpec("mlx5_0")])
    SysfsTree(tmp_path).add(FunctionSpec(IB, netdevs=[NetdevSpec("ib0", 32)], aux=[child]))
    (function,) = scan(tmp_path).candidates
    assert [r.name for r in function.rdma_devices] == ["mlx5_0"]


def test_multi_port_hca_has_every_umad_and_issm(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(connectx_ib(IB, rdma="mlx5_0", ports=2, device="101b"))
    (hca,) = scan(tmp_path).candidates
    assert [p.number for p in hca.rdma_devices[0].ports] == [1, 2]
    assert [c.name for c in hca.char_devices] == ["uverbs0", "umad0", "umad1", "issm0", "issm1"]
    assert [(c.major, c.minor) for c in hca.char_devices] == [
        (231, 192),
        (231, 0),
        (231, 1),
        (231, 64),
        (231, 65),
    ]


def test_many_umad_sort_by_number_not_text(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(connectx_ib(IB, rdma="mlx5_0", ports=12))
    (hca,) = scan(tmp_path).candidates
    umads = [c.name for c in hca.char_devices if c.kind == "umad"]
    assert umads == [f"umad{n}" for n in range(12)]
    assert [p.number for p in hca.rdma_devices[0].ports] == list(range(1, 13))


def test_ucm_comes_last(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(FunctionSpec(IB, rdma=[RdmaSpec("mlx5_0", ucm=True)]))
    (hca,) = scan(tmp_path).candidates
    assert [c.kind for c in hca.char_devices] == ["uverbs", "umad", "issm", "ucm"]
    assert (hca.char_devices[-1].major, hca.char_devices[-1].minor) == (231, 224)


def test_ib_mode_hca_without_netdev(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(connectx_ib(IB, rdma="mlx5_0", netdev=None))
    (hca,) = scan(tmp_path).candidates
    assert hca.netdevs == () and hca.if_name == "" and hca.link_type == ""
    assert hca.usable and hca.healthy


def test_char_devices_found_through_sys_class(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(FunctionSpec(IB, rdma=[RdmaSpec("mlx5_0", char_devices="class")]))
    assert not (tmp_path / tree.function_dir(IB) / "infiniband_verbs").exists()
    (hca,) = scan(tmp_path).candidates
    assert [c.name for c in hca.char_devices] == ["uverbs0", "umad0", "issm0"]
    assert hca.usable


def test_class_fallback_only_takes_the_devices_own_entries(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(
        FunctionSpec(IB, rdma=[RdmaSpec("mlx5_0", char_devices="class")]),
        FunctionSpec(ROCE, rdma=[RdmaSpec("mlx5_1", char_devices="class")]),
    )
    found = by_name(scan(tmp_path))
    assert [c.name for c in found[IB].char_devices] == ["uverbs0", "umad0", "issm0"]
    assert [c.name for c in found[ROCE].char_devices] == ["uverbs1", "umad1", "issm1"]


def test_non_rdma_nic_is_a_candidate_that_is_not_usable(tree: SysfsTree) -> None:
    nic = by_name(scan(tree.root))[NIC]
    assert (nic.vendor, nic.driver, nic.if_name, nic.link_type) == ("8086", "igb", "eno1", "ether")
    assert nic.rdma_devices == () and not nic.usable and not nic.healthy


def test_non_network_pci_device_is_ignored(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(gpu("0000:19:00.0"), FunctionSpec("0000:00:1f.4", pci_class=0x0C0500))
    result = scan(tmp_path)
    assert result.candidates == () and result.problems == ()


def test_unbound_function_has_empty_driver(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(FunctionSpec(IB, driver=None, numa_node=None))
    (function,) = scan(tmp_path).candidates
    assert (function.driver, function.numa_node) == ("", -1)


def test_link_type_names(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(
        FunctionSpec(
            IB,
            netdevs=[
                NetdevSpec("a-ib", ARPHRD_INFINIBAND),
                NetdevSpec("b-lo", 772),
                NetdevSpec("c-odd", 999),
            ],
        )
    )
    (function,) = scan(tmp_path).candidates
    assert [n.link_type for n in function.netdevs] == ["infiniband", "loopback", "unknown999"]
    assert function.if_name == "a-ib"


def test_netdevs_in_name_order(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(FunctionSpec(IB, netdevs=[NetdevSpec("ib1"), NetdevSpec("ib0")]))
    assert scan(tmp_path).candidates[0].if_name == "ib0"


# -- usable and healthy ----------------------------------------------------------------------------


def test_missing_dev_node_makes_it_not_usable(tree: SysfsTree) -> None:
    tree.remove_dev_node("umad0")
    hca = by_name(scan(tree.root))[IB]
    assert [(c.name, c.present) for c in hca.char_devices] == [
        ("uverbs0", True),
        ("umad0", False),
        ("issm0", True),
    ]
    assert not hca.usable and not hca.healthy


def test_missing_issm_node_is_fine(tree: SysfsTree) -> None:
    tree.remove_dev_node("issm0")
    assert by_name(scan(tree.root))[IB].usable


def test_missing_rdma_cm_makes_everything_not_usable(tree: SysfsTree) -> None:
    tree.remove_dev_node("rdma_cm")
    result = scan(tree.root)
    assert not any(c.rdma_cm_present or c.usable for c in result.candidates)


def test_port_down_is_not_healthy(tree: SysfsTree) -> None:
    tree.set_port_state("mlx5_0", 1, "DOWN")
    hca = by_name(scan(tree.root))[IB]
    assert hca.rdma_devices[0].ports[0].state == "DOWN"
    assert hca.usable and not hca.healthy
    tree.set_port_state("mlx5_0", 1, "ACTIVE")
    assert by_name(scan(tree.root))[IB].healthy


def test_one_active_port_of_two_is_healthy(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(connectx_ib(IB, rdma="mlx5_0", ports=2))
    tree.set_port_state("mlx5_0", 2, "DOWN")
    assert scan(tmp_path).candidates[0].healthy


def test_operstate_decides_without_ports(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(FunctionSpec(ROCE, netdevs=[NetdevSpec("p0")], rdma=[RdmaSpec("mlx5_0")]))
    tree.remove(f"{tree.function_dir(ROCE)}/infiniband/mlx5_0/ports/1")  # an empty ports/ folder
    result = scan(tmp_path)
    assert result.problems == () and result.candidates[0].rdma_devices[0].ports == ()
    assert result.candidates[0].healthy
    tree.set_operstate("p0", "down")
    function = scan(tmp_path).candidates[0]
    assert function.netdevs[0].operstate == "down"
    assert function.usable and not function.healthy


def test_removed_function_disappears(tree: SysfsTree) -> None:
    tree.remove_function(IB)
    result = scan(tree.root)
    assert IB not in by_name(result) and result.problems == ()
    assert not (tree.root / "dev/infiniband/uverbs0").exists()


# -- broken entries --------------------------------------------------------------------------------


def test_missing_pci_bus_gives_empty_scan(tmp_path: Path) -> None:
    result = scan(tmp_path / "nothing-here")
    assert result.candidates == ()
    assert reasons(result) == [("no_pci_bus", "sys/bus/pci/devices")]


def test_dangling_function_link_skips_that_function(tree: SysfsTree) -> None:
    tree.dangle(f"sys/bus/pci/devices/{IB}")
    result = scan(tree.root)
    assert list(by_name(result)) == [NIC, ROCE]
    assert reasons(result) == [("dangling_link", f"sys/bus/pci/devices/{IB}")]


def test_dangling_driver_link_still_names_the_driver(tree: SysfsTree) -> None:
    tree.remove("sys/bus/pci/drivers/mlx5_core")
    assert os.path.islink(tree.root / tree.function_dir(IB) / "driver")
    result = scan(tree.root)
    assert result.problems == ()
    assert by_name(result)[IB].driver == "mlx5_core"


def test_driver_that_is_not_a_link(tree: SysfsTree) -> None:
    tree.write(f"{tree.function_dir(IB)}/driver", "mlx5_core")
    result = scan(tree.root)
    assert by_name(result)[IB].driver == ""
    assert reasons(result) == [("not_a_link", f"sys/bus/pci/devices/{IB}/driver")]


_BREAKS = [
    ("remove", "missing_file"),
    ("dir", "not_a_file"),
    ("latin1", "bad_encoding"),
    ("garbage", "bad_value"),
    ("dangle", "dangling_link"),
]


@pytest.mark.parametrize(
    ("attribute", "how", "reason"),
    [(a, h, r) for a in ("vendor", "device", "class") for h, r in _BREAKS]
    + [("vendor", "too_big", "bad_value"), ("device", "too_big", "bad_value")],
)
def test_broken_required_attribute_skips_the_function(
    tree: SysfsTree, attribute: str, how: str, reason: str
) -> None:
    rel = f"{tree.function_dir(ROCE)}/{attribute}"
    _break(tree, rel, how)
    result = scan(tree.root)
    assert list(by_name(result)) == [NIC, IB]
    assert reasons(result) == [(reason, f"sys/bus/pci/devices/{ROCE}/{attribute}")]


def _break(tree: SysfsTree, rel: str, how: str) -> None:
    if how == "remove":
        tree.remove(rel)
    elif how == "dir":
        tree.replace_with_dir(rel)
    elif how == "latin1":
        tree.write(rel, b"0x15b3\xe9\n")
    elif how == "garbage":
        tree.write(rel, "zz-top\n")
    elif how == "too_big":
        tree.write(rel, "0x15b300\n")
    elif how == "dangle":
        tree.dangle(rel)
    else:
        raise AssertionError(how)


def test_fifo_instead_of_attribute_does_not_hang(tree: SysfsTree) -> None:
    rel = f"{tree.function_dir(ROCE)}/vendor"
    tree.remove(rel)
    os.mkfifo(tree.root / rel)
    result = scan(tree.root)
    assert list(by_name(result)) == [NIC, IB]
    assert reasons(result) == [("bad_value", f"sys/bus/pci/devices/{ROCE}/vendor")]


def test_port_folder_with_a_non_ascii_digit(tree: SysfsTree) -> None:
    tree.replace_with_dir(f"{tree.function_dir(IB)}/infiniband/mlx5_0/ports/\u00b2")
    result = scan(tree.root)
    assert [p.number for p in by_name(result)[IB].rdma_devices[0].ports] == [1]
    assert [p.reason for p in result.problems] == ["bad_value"]


def test_bad_numa_node_falls_back_to_minus_one(tree: SysfsTree) -> None:
    tree.write(f"{tree.function_dir(IB)}/numa_node", "two\n")
    result = scan(tree.root)
    assert by_name(result)[IB].numa_node == -1
    assert reasons(result) == [("bad_value", f"sys/bus/pci/devices/{IB}/numa_node")]


def test_missing_numa_node_is_minus_one_without_problem(tree: SysfsTree) -> None:
    tree.remove(f"{tree.function_dir(IB)}/numa_node")
    result = scan(tree.root)
    assert by_name(result)[IB].numa_node == -1 and result.problems == ()


@pytest.mark.parametrize(
    ("how", "reason"),
    [("remove", "missing_file"), ("garbage", "bad_value"), ("latin1", "bad_encoding")],
)
def test_broken_netdev_type_keeps_netdev_with_empty_link_type(
    tree: SysfsTree, how: str, reason: str
) -> None:
    _break(tree, f"{tree.function_dir(IB)}/net/ib0/type", how)
    result = scan(tree.root)
    hca = by_name(result)[IB]
    assert (hca.if_name, hca.link_type, hca.usable) == ("ib0", "", True)
    assert reasons(result) == [(reason, f"sys/bus/pci/devices/{IB}/net/ib0/type")]


def test_missing_operstate_reads_unknown(tree: SysfsTree) -> None:
    tree.remove(f"{tree.function_dir(ROCE)}/net/ens1f0np0/operstate")
    result = scan(tree.root)
    assert by_name(result)[ROCE].netdevs[0].operstate == "unknown"
    assert [p.reason for p in result.problems] == ["missing_file"]


def test_dangling_netdev_folder_skips_that_netdev(tree: SysfsTree) -> None:
    tree.dangle(f"{tree.function_dir(ROCE)}/net/ens1f0np0")
    result = scan(tree.root)
    roce = by_name(result)[ROCE]
    assert roce.netdevs == () and roce.usable  # the RDMA device is intact
    assert reasons(result) == [("dangling_link", f"sys/bus/pci/devices/{ROCE}/net/ens1f0np0")]


def test_net_that_is_a_file(tree: SysfsTree) -> None:
    tree.write(f"{tree.function_dir(NIC)}/net", "eno1\n")
    result = scan(tree.root)
    assert by_name(result)[NIC].netdevs == ()
    assert reasons(result) == [("not_a_dir", f"sys/bus/pci/devices/{NIC}/net")]


def test_non_utf8_netdev_name_is_skipped(tree: SysfsTree) -> None:
    net = tree.root / tree.function_dir(NIC) / "net"
    os.mkdir(os.fsencode(net) + b"/eth\xff")
    result = scan(tree.root)
    assert by_name(result)[NIC].if_name == "eno1"
    assert [p.reason for p in result.problems] == ["bad_encoding"]
    assert result.problems[0].path.startswith(f"sys/bus/pci/devices/{NIC}/net/eth")


def test_dangling_rdma_device_skips_that_device(tree: SysfsTree) -> None:
    tree.dangle(f"{tree.function_dir(IB)}/infiniband/mlx5_0")
    result = scan(tree.root)
    hca = by_name(result)[IB]
    assert hca.rdma_devices == () and hca.if_name == "ib0"
    assert by_name(result)[ROCE].usable
    assert reasons(result) == [("dangling_link", f"sys/bus/pci/devices/{IB}/infiniband/mlx5_0")]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"4 ACTIVE?\n", "bad_value"), (b"4: \xff\n", "bad_encoding"), (None, "missing_file")],
)
def test_broken_port_state_is_unknown_and_not_healthy(
    tree: SysfsTree, content: bytes | None, reason: str
) -> None:
    rel = f"{tree.function_dir(IB)}/infiniband/mlx5_0/ports/1/state"
    if content is None:
        tree.remove(rel)
    else:
        tree.write(rel, content)
    result = scan(tree.root)
    hca = by_name(result)[IB]
    assert hca.rdma_devices[0].ports[0].state == "UNKNOWN"
    assert hca.usable and not hca.healthy
    assert reasons(result) == [
        (reason, f"sys/bus/pci/devices/{IB}/infiniband/mlx5_0/ports/1/state")
    ]


def test_missing_link_layer_is_empty(tree: SysfsTree) -> None:
    tree.remove(f"{tree.function_dir(IB)}/infiniband/mlx5_0/ports/1/link_layer")
    result = scan(tree.root)
    assert by_name(result)[IB].rdma_devices[0].ports[0].link_layer == ""
    assert [p.reason for p in result.problems] == ["missing_file"]


def test_port_folder_that_is_not_a_number(tree: SysfsTree) -> None:
    tree.replace_with_dir(f"{tree.function_dir(IB)}/infiniband/mlx5_0/ports/x")
    result = scan(tree.root)
    assert [p.number for p in by_name(result)[IB].rdma_devices[0].ports] == [1]
    assert [p.reason for p in result.problems] == ["bad_value"]


def test_bad_dev_numbers_keep_the_char_device(tree: SysfsTree) -> None:
    tree.write(f"{tree.function_dir(IB)}/infiniband_verbs/uverbs0/dev", "231-192\n")
    result = scan(tree.root)
    uverbs = by_name(result)[IB].char_devices[0]
    assert (uverbs.name, uverbs.major, uverbs.minor, uverbs.present) == (
        "uverbs0",
        None,
        None,
        True,
    )
    assert reasons(result) == [
        ("bad_value", f"sys/bus/pci/devices/{IB}/infiniband_verbs/uverbs0/dev")
    ]


def test_char_device_without_ibdev_is_skipped(tree: SysfsTree) -> None:
    tree.remove(f"{tree.function_dir(IB)}/infiniband_mad/umad0/ibdev")
    result = scan(tree.root)
    hca = by_name(result)[IB]
    assert [c.name for c in hca.char_devices] == ["uverbs0", "issm0"]
    assert not hca.usable
    assert reasons(result) == [
        ("missing_file", f"sys/bus/pci/devices/{IB}/infiniband_mad/umad0/ibdev")
    ]


def test_dangling_class_entry_in_fallback(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(FunctionSpec(IB, rdma=[RdmaSpec("mlx5_0", char_devices="class")]))
    tree.dangle("sys/class/infiniband_mad/umad0")
    result = scan(tmp_path)
    assert [c.name for c in result.candidates[0].char_devices] == ["uverbs0", "issm0"]
    assert reasons(result) == [("dangling_link", "sys/class/infiniband_mad/umad0")]


def test_dangling_aux_child_is_skipped(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(connectx_roce(ROCE, rdma="mlx5_0", netdev="p0", sub_functions=[(2, "p0s2", "mlx5_1")]))
    tree.dangle(f"{tree.function_dir(ROCE)}/mlx5_core.sf.2")
    result = scan(tmp_path)
    assert [c.name for c in result.candidates] == [ROCE]
    assert reasons(result) == [("dangling_link", f"sys/bus/pci/devices/{ROCE}/mlx5_core.sf.2")]


def test_problems_are_logged_with_path_and_advice(
    tree: SysfsTree, caplog: pytest.LogCaptureFixture
) -> None:
    tree.write(f"{tree.function_dir(IB)}/vendor", "nope\n")
    with caplog.at_level(logging.WARNING, logger="common.discovery"):
        scan(tree.root)
    (record,) = caplog.records
    message = record.getMessage()
    assert f"path=sys/bus/pci/devices/{IB}/vendor" in message
    assert "reason=bad_value" in message and "check" in message


def test_reasons_are_metric_labels() -> None:
    assert all(re.fullmatch(r"[a-z][a-z_]*", r) for r in PROBLEM_REASONS)


def test_no_corruption_of_any_file_raises(tmp_path: Path) -> None:
    """Every file of an RDMA function, broken four ways: the scan survives, the others stay."""
    tree = SysfsTree(tmp_path)
    tree.add(
        connectx_roce(ROCE, rdma="mlx5_1", netdev="p0", sub_functions=[(2, "p0s2", "mlx5_2")]),
        igb(NIC, netdev="eno1"),
    )
    base = tree.function_dir(ROCE)
    files = sorted(
        os.path.relpath(os.path.join(d, f), tmp_path)
        for d, _, names in os.walk(tmp_path / base)
        for f in names
    )
    assert len(files) > 40
    for rel in files:
        path = tmp_path / rel
        original = os.readlink(path) if path.is_symlink() else path.read_bytes()
        for how in ("dir", "latin1", "garbage", "dangle"):
            _break(tree, rel, how)
            result = scan(tmp_path)
            assert NIC in by_name(result), (rel, how)
            assert all(p.reason in PROBLEM_REASONS for p in result.problems)
        tree.remove(rel)
        if isinstance(original, str):
            os.symlink(original, path)
        else:
            path.write_bytes(original)
    assert scan(tmp_path).problems == ()


def test_scan_during_hot_plug_never_raises(tmp_path: Path) -> None:
    """Functions come and go while scans run: each scan returns, and sees each one whole or not."""
    tree = SysfsTree(tmp_path)
    tree.add(igb(NIC, netdev="eno1"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                tree.add(
                    connectx_roce(
                        ROCE, rdma="mlx5_1", netdev="p0", sub_functions=[(2, "p0s2", "mlx5_2")]
                    )
                )
                tree.remove_function(ROCE)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(200):
            result = scan(tmp_path)
            assert NIC in by_name(result)
            assert all(p.reason in PROBLEM_REASONS for p in result.problems)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive() and errors == []
