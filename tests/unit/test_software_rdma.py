"""Software RDMA devices (soft-RoCE rxe, soft-iWARP siw) on trees written by simulator.sysfs:
discovery, their tie to the netdev's PCI function, selection and health."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import ResourceConfig, Selectors
from common.devices import Candidate, Scan
from common.discovery import scan
from common.selectors import SOFTWARE, select
from common.typed_json import fields_from_json
from simulator.sysfs import SysfsTree, connectx_roce, virtio_net

pytestmark = pytest.mark.unit

VIRTIO0 = "0000:00:03.0"
VIRTIO1 = "0000:00:04.0"


def by_name(result: Scan) -> dict[str, Candidate]:
    return {c.name: c for c in result.candidates}


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    t = SysfsTree(tmp_path)
    t.add(virtio_net(VIRTIO0, netdev="eth0"), virtio_net(VIRTIO1, netdev="eth1", virtio="virtio1"))
    t.add_software_rdma("rxe0", "eth0")
    t.add_software_rdma("rxe1", "eth1")
    return t


def resource(**selectors: list[str]) -> ResourceConfig:
    chosen = Selectors(**{key: tuple(values) for key, values in selectors.items()})
    return ResourceConfig(
        resource_name="soft", resource_prefix="rdma", rdma_hca_max=10, selectors=chosen
    )


def test_rxe_is_a_candidate_tied_to_its_netdevs_pci_function(tree: SysfsTree) -> None:
    result = scan(tree.root)
    assert result.problems == ()
    rxe0 = by_name(result)["rxe0"]
    assert rxe0.kind == "software" and rxe0.software == "rxe"
    assert (rxe0.pci_address, rxe0.vendor, rxe0.device_id, rxe0.driver) == (
        VIRTIO0,
        "1af4",
        "1000",
        "virtio-pci",
    )
    assert (rxe0.if_name, rxe0.link_type) == ("eth0", "ether")
    [rdma] = rxe0.rdma_devices
    assert rdma.name == "rxe0"
    assert [(p.number, p.state, p.link_layer) for p in rdma.ports] == [(1, "ACTIVE", "Ethernet")]
    # An issm even on an Ethernet port, as a real kernel makes for rxe; numbered as it does.
    assert [(c.name, c.major, c.minor) for c in rxe0.char_devices] == [
        ("uverbs0", 231, 192),
        ("umad0", 231, 0),
        ("issm0", 231, 64),
    ]
    assert rxe0.usable and rxe0.healthy
    assert by_name(result)["rxe1"].char_devices[0].name == "uverbs1"


def test_the_virtio_function_itself_stays_a_pci_candidate_without_rdma(tree: SysfsTree) -> None:
    candidates = scan(tree.root).candidates
    virtio = by_name(Scan(candidates))[VIRTIO0]
    assert virtio.kind == "pci" and virtio.rdma_devices == ()
    # Its rejection points at the software device on its netdev, not at "cannot do RDMA".
    [why] = [r for r in select(resource(), candidates).rejected if r.candidate.name == VIRTIO0]
    assert why.detail == "its netdev carries software RDMA device rxe0"


def test_catch_all_and_pci_only_selectors_leave_software_devices_out(tree: SysfsTree) -> None:
    candidates = scan(tree.root).candidates
    for config in (resource(), resource(vendors=["1af4"]), resource(link_types=["ether"])):
        selection = select(config, candidates)
        assert [c.name for c in selection.selected] == []
        software = [r for r in selection.rejected if r.candidate.software]
        assert {r.reason for r in software} == {SOFTWARE}
        assert "ifNames or rdmaDevices" in software[0].detail


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        ({"rdma_devices": ["rxe0"]}, ["rxe0"]),
        ({"if_names": ["eth1"]}, ["rxe1"]),
        ({"rdma_devices": ["rxe0", "rxe1"], "vendors": ["1af4"]}, ["rxe0", "rxe1"]),
        ({"rdma_devices": ["rxe0", "rxe1"], "vendors": ["15b3"]}, []),
        ({"rdma_devices": ["rxe0", "rxe1"], "drivers": ["virtio-pci"]}, ["rxe0", "rxe1"]),
        ({"rdma_devices": ["rxe0", "rxe1"], "device_ids": ["1000"]}, ["rxe0", "rxe1"]),
        ({"rdma_devices": ["rxe0", "rxe1"], "pci_addresses": [VIRTIO1]}, ["rxe1"]),
        ({"if_names": ["eth0"], "link_types": ["ether"]}, ["rxe0"]),
        ({"if_names": ["eth0"], "link_types": ["infiniband"]}, []),
    ],
)
def test_a_resource_naming_them_selects_them_and_other_selectors_narrow(
    tree: SysfsTree, selectors: dict[str, list[str]], expected: list[str]
) -> None:
    selection = select(resource(**selectors), scan(tree.root).candidates)
    assert [c.name for c in selection.selected] == expected


def test_hardware_selection_is_unchanged_beside_rxe(tree: SysfsTree) -> None:
    tree.add(connectx_roce("0000:5e:00.0", rdma="mlx5_0", netdev="ens1f0np0"))
    candidates = scan(tree.root).candidates
    for config in (resource(), resource(vendors=["15b3"])):
        assert [c.name for c in select(config, candidates).selected] == ["0000:5e:00.0"]


def test_netdev_down_makes_it_unhealthy_even_with_an_active_port(tree: SysfsTree) -> None:
    tree.set_operstate("eth0", "down")
    rxe0 = by_name(scan(tree.root))["rxe0"]
    assert rxe0.usable and not rxe0.healthy
    tree.set_operstate("eth0", "up")
    tree.set_port_state("rxe0", 1, "DOWN")
    assert not by_name(scan(tree.root))["rxe0"].healthy


def test_rdma_link_delete_removes_it_and_its_nodes(tree: SysfsTree) -> None:
    tree.remove_software_rdma("rxe1")
    result = scan(tree.root)
    assert "rxe1" not in by_name(result) and result.problems == ()
    assert not os.path.lexists(tree.root / "dev/infiniband/uverbs1")


def test_over_a_virtual_netdev_it_has_no_pci_identity(tree: SysfsTree) -> None:
    tree.write("sys/devices/virtual/net/veth0/type", "1")
    tree.write("sys/devices/virtual/net/veth0/operstate", "up")
    os.symlink("../../devices/virtual/net/veth0", tree.root / "sys/class/net/veth0")
    tree.add_software_rdma("rxe2", "veth0")
    rxe2 = by_name(scan(tree.root))["rxe2"]
    assert (rxe2.pci_address, rxe2.vendor, rxe2.driver, rxe2.numa_node) == ("", "", "", -1)
    assert rxe2.healthy
    selection = select(resource(rdma_devices=["rxe2"]), [rxe2])
    assert selection.selected == (rxe2,)


def test_siw_is_told_apart_by_its_node_type(tree: SysfsTree) -> None:
    tree.add_software_rdma("siw0", "eth0", kind="siw")
    assert by_name(scan(tree.root))["siw0"].software == "siw"


def test_a_parent_naming_a_gone_netdev_skips_the_device_with_a_problem(tree: SysfsTree) -> None:
    # `ip link set eth1 name lan1` between reading `parent` and reading the netdev.
    tree.write("sys/class/infiniband/rxe1/parent", "lan1")
    result = scan(tree.root)
    assert "rxe1" not in by_name(result) and "rxe0" in by_name(result)
    assert [(p.reason, p.path) for p in result.problems] == [("missing_file", "sys/class/net/lan1")]


@pytest.mark.parametrize("content", ["", "eth 0", "x" * 16])
def test_a_bad_parent_skips_the_device(tree: SysfsTree, content: str) -> None:
    tree.write("sys/class/infiniband/rxe1/parent", content)
    assert "rxe1" not in by_name(scan(tree.root))


def test_software_kind_survives_the_control_wire(tree: SysfsTree) -> None:
    rxe0 = by_name(scan(tree.root))["rxe0"]
    assert Candidate(**fields_from_json(Candidate, rxe0.to_json(), "c")) == rxe0
    old = rxe0.to_json()
    del old["software"]
    assert Candidate(**fields_from_json(Candidate, old, "c")).software == ""
