"""DRA device names, modes (KEP-5004), devices and slices built from config and discovery."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from common import dra_modes as modes
from common.config import Config, ResourceConfig
from dra import slices
from dra.devices import DEFAULT_HCA_SHARES, PCIE_ROOT_ATTRIBUTE, HostFacts, build
from dra.names import (
    DeviceNameError,
    check_driver_name,
    claim_spec_file,
    claim_uid_of_spec,
    hca_device_name,
    resource_device_name,
)
from tests.factories import make_candidate, make_resource

DRIVER = "rdma.shared-dp.io"
OWNER = slices.NodeOwner("node-1", "uid-1")


def _config(*resources: ResourceConfig) -> Config:
    return Config(0, tuple(resources))


def test_names_are_dns_labels() -> None:
    assert resource_device_name("hca_shared_devices_a") == "res-hca-shared-devices-a"
    assert resource_device_name("HCA.A") == "res-hca-a"
    assert hca_device_name("0000:3b:00.0") == "hca-0000-3b-00-0"
    assert hca_device_name("mlx5_core.sf.2") == "hca-mlx5-core-sf-2"
    with pytest.raises(DeviceNameError, match="no DNS label"):
        resource_device_name("a" * 60)
    with pytest.raises(DeviceNameError, match="no DNS label"):
        resource_device_name("a b")
    assert check_driver_name(DRIVER) == DRIVER
    with pytest.raises(DeviceNameError):
        check_driver_name("nodots")
    assert claim_uid_of_spec(claim_spec_file("abc-1")) == "abc-1"
    assert claim_uid_of_spec("rdma-shared-dp_rdma_a.json") is None


def test_modes_split_each_resource_one_way() -> None:
    a, b = make_resource("hca_a", "rdma"), make_resource("hca_b", "rdma")
    config = _config(a, b)
    assert modes.split(config, "off") == modes.Split(False, (a, b), ())
    assert modes.split(config, "") == modes.Split(False, (a, b), ())
    assert modes.split(config, "all") == modes.Split(True, (), (a, b))
    assert modes.split(config, "hcas") == modes.Split(True, (a, b), ())
    assert modes.split(config, "hca_b") == modes.Split(True, (a,), (b,))
    assert modes.split(config, "rdma/hca_a") == modes.Split(True, (b,), (a,))


def test_modes_refuse_what_cannot_be_served_one_way() -> None:
    a = make_resource("hca_a", "rdma")
    with pytest.raises(modes.ModeError, match="hca_x, not in the config"):
        modes.split(_config(a), "hca_a,hca_x")
    with pytest.raises(modes.ModeError, match="empty resource name"):
        modes.split(_config(a), "hca_a,,")
    clash = _config(make_resource("hca_a", "rdma"), make_resource("HCA_A", "other"))
    with pytest.raises(modes.ModeError, match="both map onto DRA device name 'res-hca-a'"):
        modes.split(clash, "all")
    # One name under two prefixes: each full name goes one way.
    a2 = make_resource("hca_a", "other")
    assert modes.split(_config(a, a2), "rdma/hca_a") == modes.Split(True, (a2,), (a,))
    with pytest.raises(modes.ModeError, match="no DNS label"):
        modes.split(_config(make_resource("bad_", "rdma")), "all")


def test_drop_in_device_stands_for_every_selected_hca() -> None:
    resource = make_resource("hca_a", "rdma", count=8)
    hcas = [make_candidate(0), make_candidate(1, numa_node=1)]
    devices = build([resource], [resource], hcas)
    drop_in = devices[0]
    assert drop_in.name == "res-hca-a" and drop_in.kind == "resource"
    assert [c.name for c in drop_in.members] == [h.name for h in hcas]
    api = drop_in.to_api(DRIVER)
    assert api["allowMultipleAllocations"] is True
    assert api["capacity"]["shares"] == {
        "value": "8",
        "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": "8", "step": "1"}},
    }
    assert api["attributes"]["resourceName"] == {"string": "rdma/hca_a"}
    assert "numaNode" not in api["attributes"]  # two NUMA nodes: no single one to name
    assert "taints" not in api


def test_hca_devices_carry_the_attributes_a_selector_needs() -> None:
    facts = HostFacts(lambda pci: "pci0000:00", lambda rdma: 128)
    hca = make_candidate(0, numa_node=1)
    (device,) = build([], [], [hca], facts)
    attrs = device.to_api(DRIVER)["attributes"]
    assert attrs["pciAddress"] == {"string": hca.pci_address}
    assert attrs["vendor"] == {"string": "15b3"}
    assert attrs["deviceID"] == {"string": "1017"}
    assert attrs["driver"] == {"string": "mlx5_core"}
    assert attrs["netdev"] == {"string": "ib0"}
    assert attrs["linkType"] == {"string": "infiniband"}
    assert attrs["rdmaDevice"] == {"string": "mlx5_0"}
    assert attrs["numaNode"] == {"int": 1}
    assert attrs["auxiliary"] == {"bool": False}
    assert attrs[PCIE_ROOT_ATTRIBUTE] == {"string": "pci0000:00"}
    assert attrs["gidTableSize"] == {"int": 128}
    assert device.shares == DEFAULT_HCA_SHARES  # no resource selects it


def test_hca_shares_follow_the_config_and_unusable_hcas_are_left_out() -> None:
    small = make_resource("hca_a", "rdma", count=3)
    big = make_resource("hca_b", "rdma", count=7)
    broken = make_candidate(1, present=False)
    devices = build([], [small, big], [make_candidate(0), broken])
    assert [(d.name, d.shares) for d in devices] == [("hca-0000-03-00-0", 7)]


def test_port_down_taints_and_removal_drops() -> None:
    resource = make_resource("hca_a", "rdma")
    down = make_candidate(0, port_state="DOWN")
    devices = build([resource], [resource], [down])
    for device in devices:
        assert device.to_api(DRIVER)["taints"] == [
            {"key": f"{DRIVER}/unhealthy", "value": "port-down", "effect": "NoSchedule"}
        ]
    assert build([resource], [resource], []) == ()
    zero = dataclasses.replace(resource, rdma_hca_max=0)
    assert [d.kind for d in build([zero], [zero], [make_candidate(0)])] == ["hca"]


def _existing(wanted: list[dict[str, Any]], generation: int) -> list[dict[str, Any]]:
    out = []
    for i, obj in enumerate(wanted):
        obj = {**obj, "metadata": {**obj["metadata"], "name": f"s{i}", "resourceVersion": "7"}}
        obj["spec"] = {**obj["spec"], "pool": {**obj["spec"]["pool"], "generation": generation}}
        out.append(obj)
    return out


def test_slices_split_at_128_devices_and_64_with_taints() -> None:
    many = [
        make_candidate(i % 250, name=f"0000:{i // 256:02x}:{i % 256:02x}.0") for i in range(300)
    ]
    wanted = slices.desired(DRIVER, OWNER, build([], [], many))
    assert [len(s["spec"]["devices"]) for s in wanted] == [128, 128, 44]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in wanted} == {3}
    first = wanted[0]
    assert first["spec"]["nodeName"] == "node-1" and first["spec"]["pool"]["name"] == "node-1"
    assert first["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": "node-1",
        "uid": "uid-1",
        "controller": True,
    }
    tainted = [make_candidate(i, name=f"0000:00:{i:02x}.0", port_state="DOWN") for i in range(100)]
    assert [
        len(s["spec"]["devices"]) for s in slices.desired(DRIVER, OWNER, build([], [], tainted))
    ] == [64, 36]
    assert len(slices.desired(DRIVER, OWNER, ())) == 1  # an empty pool is one empty slice


def test_plan_writes_nothing_when_the_pool_is_current() -> None:
    wanted = slices.desired(DRIVER, OWNER, build([], [], [make_candidate(0)]))
    assert slices.plan(wanted, _existing(wanted, 4)) == []


def test_plan_creates_then_updates_in_place_with_a_bumped_generation() -> None:
    one = slices.desired(DRIVER, OWNER, build([], [], [make_candidate(0)]))
    writes = slices.plan(one, [])
    assert [(w.verb, w.name) for w in writes] == [("create", "")]
    assert writes[0].body is not None and writes[0].body["spec"]["pool"]["generation"] == 1
    two = slices.desired(DRIVER, OWNER, build([], [], [make_candidate(0), make_candidate(1)]))
    writes = slices.plan(two, _existing(one, 4))
    assert [(w.verb, w.name) for w in writes] == [("update", "s0")]
    body = writes[0].body
    assert body is not None
    assert body["spec"]["pool"]["generation"] == 5
    assert body["metadata"]["resourceVersion"] == "7" and "generateName" not in body["metadata"]


def test_plan_deletes_surplus_and_foreign_index_slices() -> None:
    many = [make_candidate(0, name=f"0000:00:{i:02x}.0") for i in range(200)]
    big = slices.desired(DRIVER, OWNER, build([], [], many))
    small = slices.desired(DRIVER, OWNER, build([], [], many[:10]))
    writes = slices.plan(small, _existing(big, 2))
    assert [(w.verb, w.name) for w in writes] == [("update", "s0"), ("delete", "s1")]
    # A slice of ours without our index annotation (hand-made, or older) goes too.
    stray = {"metadata": {"name": "x"}, "spec": {"pool": {"generation": 9}}}
    writes = slices.plan(small, [*_existing(small, 3), stray])
    assert [(w.verb, w.name) for w in writes] == [("update", "s0"), ("delete", "x")]
    assert writes[0].body is not None and writes[0].body["spec"]["pool"]["generation"] == 10


def test_device_classes_select_what_the_driver_publishes() -> None:
    from dra.device_classes import device_classes, render

    resource = make_resource("hca_shared_devices_a", "rdma")
    drop_in, hca = device_classes([resource], DRIVER)
    assert drop_in["metadata"]["name"] == "hca-shared-devices-a.rdma.shared-dp.io"
    assert drop_in["spec"]["extendedResourceName"] == "rdma/hca_shared_devices_a"
    (device,) = build([resource], [resource], [make_candidate(0)])[:1]
    published = device.to_api(DRIVER)["attributes"]
    # The CEL compares the attribute the drop-in device carries.
    assert published["resourceName"] == {"string": "rdma/hca_shared_devices_a"}
    assert '.resourceName == "rdma/hca_shared_devices_a"' in str(drop_in["spec"])
    assert hca["metadata"]["name"] == DRIVER and "extendedResourceName" not in hca["spec"]
    assert render([hca]).startswith("---\n{")
