"""Selector semantics: OR inside a list, AND across lists, and the first reason for a rejection."""

from __future__ import annotations

import dataclasses

import pytest

from common.config import ResourceConfig, Selectors
from common.devices import Candidate, CharDevice, NetDev, Port, RdmaDevice
from common.selectors import NO_DRIVER, NO_RDMA_DEVICE, first_rejection, select


def _hca(
    name: str = "0000:3b:00.0",
    vendor: str = "15b3",
    device_id: str = "101b",
    driver: str = "mlx5_core",
    netdev: str | None = "ib0",
    link_type: str = "infiniband",
    rdma: str | None = "mlx5_0",
) -> Candidate:
    rdma_devices: tuple[RdmaDevice, ...] = ()
    if rdma is not None:
        rdma_devices = (
            RdmaDevice(
                name=rdma,
                ports=(Port(1, "ACTIVE", "InfiniBand"),),
                char_devices=(CharDevice("uverbs", "uverbs0", 231, 192, True),),
            ),
        )
    return Candidate(
        name=name,
        pci_address=name,
        vendor=vendor,
        device_id=device_id,
        driver=driver,
        numa_node=0,
        netdevs=(NetDev(netdev, link_type, "up"),) if netdev else (),
        rdma_devices=rdma_devices,
        rdma_cm_present=True,
    )


def _resource(**selectors: tuple[str, ...]) -> ResourceConfig:
    return ResourceConfig("r", "rdma", 10, Selectors(**selectors))


def test_empty_selectors_match_every_rdma_device() -> None:
    assert first_rejection(Selectors(), _hca()) is None


@pytest.mark.parametrize(
    ("selectors", "reason"),
    [
        (Selectors(vendors=("8086",)), "vendors"),
        (Selectors(device_ids=("1017",)), "deviceIDs"),
        (Selectors(drivers=("irdma",)), "drivers"),
        (Selectors(if_names=("ib1",)), "ifNames"),
        (Selectors(link_types=("ether",)), "linkTypes"),
        (Selectors(pci_addresses=("0000:af:00.0",)), "pciAddresses"),
        (Selectors(rdma_devices=("mlx5_1",)), "rdmaDevices"),
    ],
)
def test_each_selector_rejects_with_its_config_key(selectors: Selectors, reason: str) -> None:
    why = first_rejection(selectors, _hca())
    assert why is not None and why[0] == reason


def test_or_within_a_list_and_across_lists() -> None:
    sel = Selectors(vendors=("8086", "15b3"), if_names=("ib0", "ib1"))
    assert first_rejection(sel, _hca()) is None
    assert first_rejection(sel, _hca(netdev="ib3")) == ("ifNames", "ib3 not in [ib0, ib1]")


def test_first_failing_selector_is_reported_in_config_order() -> None:
    sel = Selectors(vendors=("8086",), link_types=("ether",))
    assert first_rejection(sel, _hca())[0] == "vendors"  # type: ignore[index]


def test_device_without_netdev_matches_on_vendor_but_not_on_ifname() -> None:
    hca = _hca(netdev=None)
    assert first_rejection(Selectors(vendors=("15b3",)), hca) is None
    assert first_rejection(Selectors(if_names=("ib0",)), hca) == ("ifNames", "(none) not in [ib0]")
    assert first_rejection(Selectors(rdma_devices=("mlx5_0",)), hca) is None


def test_no_rdma_device_and_no_driver_come_before_selectors() -> None:
    nic = _hca(vendor="8086", driver="igb", netdev="eth0", link_type="ether", rdma=None)
    assert first_rejection(Selectors(vendors=("15b3",)), nic)[0] == NO_RDMA_DEVICE  # type: ignore[index]
    unbound = dataclasses.replace(_hca(), driver="")
    assert first_rejection(Selectors(), unbound)[0] == NO_DRIVER  # type: ignore[index]


def test_subfunction_matches_on_parent_pci_address() -> None:
    sf = dataclasses.replace(
        _hca(netdev="enp59s0f0s2", link_type="ether", rdma="mlx5_2"),
        name="mlx5_core.sf.2",
        auxiliary=True,
    )
    assert first_rejection(Selectors(pci_addresses=("0000:3b:00.0",)), sf) is None
    assert first_rejection(Selectors(if_names=("enp59s0f0s2",)), sf) is None


def test_select_splits_selected_and_rejected_in_input_order() -> None:
    a, b, c = _hca("0000:01:00.0"), _hca("0000:02:00.0", vendor="8086"), _hca("0000:03:00.0")
    sel = select(_resource(vendors=("15b3",)), [a, b, c])
    assert sel.selected == (a, c)
    assert [(r.candidate.name, r.reason) for r in sel.rejected] == [("0000:02:00.0", "vendors")]


def test_one_device_may_serve_several_resources() -> None:
    hca = _hca()
    assert select(_resource(vendors=("15b3",)), [hca]).selected == (hca,)
    assert select(_resource(if_names=("ib0",)), [hca]).selected == (hca,)


@pytest.mark.parametrize(
    "selectors",
    [
        Selectors(if_names=("ib",)),  # a prefix is not a match
        Selectors(if_names=("IB0",)),  # netdev names are case-sensitive
        Selectors(drivers=("mlx5",)),
        Selectors(rdma_devices=("mlx5_",)),
        Selectors(pci_addresses=("0000:3b:00",)),
    ],
)
def test_matching_is_exact(selectors: Selectors) -> None:
    assert first_rejection(selectors, _hca()) is not None
