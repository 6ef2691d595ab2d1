"""What a real worker advertises and allocates, through the kubelet simulator, plain and CDI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.config import ResourceConfig
from common.devices import RDMA_CM_PATH, Candidate
from common.messages import Heartbeat
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from simulator.kubelet import AdvertisedDevice
from tests.conditions import wait_until
from tests.standin_supervisor import Rig, make_candidate, make_resource
from tests.unit.test_cdi import validate_cdi

RESOURCE = make_resource("hca_a", "example.com", 4)
FULL = "example.com/hca_a"
DEVICES = (make_candidate(0, numa_node=0), make_candidate(1, numa_node=1))
PLAIN_PATHS = [
    "/dev/infiniband/uverbs0",
    "/dev/infiniband/umad0",
    "/dev/infiniband/issm0",
    "/dev/infiniband/uverbs1",
    "/dev/infiniband/umad1",
    "/dev/infiniband/issm1",
    RDMA_CM_PATH,
]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def cdi_rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, use_cdi=True)
    yield r
    r.close()


def _start(
    rig: Rig, devices: tuple[Candidate, ...] = DEVICES, resource: ResourceConfig = RESOURCE
) -> None:
    rig.start_worker(resource, devices)
    rig.kubelet.wait_for_registration(resource.full_name, timeout=10)


def _all(health: str, count: int = 4) -> Callable[[list[AdvertisedDevice]], bool]:
    def check(devices: list[AdvertisedDevice]) -> bool:
        return len(devices) == count and all(d.health == health for d in devices)

    return check


def test_snapshot_at_start(rig: Rig) -> None:
    _start(rig)
    devices = rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4)
    assert [d.id for d in devices] == ["0", "1", "2", "3"]
    assert all(d.health == "Healthy" for d in devices)
    assert all(d.numa_nodes == (0, 1) for d in devices)


def test_snapshot_after_device_changes_and_health_flips(rig: Rig) -> None:
    _start(rig)
    rig.kubelet.wait_for_devices(FULL, _all("Healthy"))
    down = (make_candidate(0, port_state="DOWN"), make_candidate(1, port_state="DOWN"))
    rig.supervisor.update_devices("hca_a", down)
    rig.kubelet.wait_for_devices(FULL, _all("Unhealthy"))
    rig.supervisor.update_devices("hca_a", (down[0], make_candidate(1, numa_node=1)))
    devices = rig.kubelet.wait_for_devices(FULL, _all("Healthy"))
    assert devices[0].numa_nodes == (0, 1)
    # Char devices gone: still listed (the device matched) but unusable, so unhealthy.
    rig.supervisor.update_devices("hca_a", (make_candidate(0, present=False),))
    devices = rig.kubelet.wait_for_devices(FULL, _all("Unhealthy"))
    assert devices[0].numa_nodes == ()
    # Nothing matched: an empty list.
    rig.supervisor.update_devices("hca_a", ())
    rig.kubelet.wait_for_devices(FULL, lambda ds: ds == [])
    # One stream carried it all: no re-registration for a device change.
    assert len(rig.kubelet.registrations()) == 1
    assert rig.kubelet.streams_opened(FULL) == 1


def test_topology_single_node_and_unknown(rig: Rig) -> None:
    _start(rig, (make_candidate(0, numa_node=1), make_candidate(1, numa_node=-1)))
    devices = rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4)
    assert devices[0].numa_nodes == (1,)
    rig.supervisor.update_devices("hca_a", (make_candidate(1, numa_node=-1),))
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].numa_nodes == ())


def _paths(answer: dp.ContainerAllocateResponse) -> list[str]:
    specs = list(answer.devices)
    assert all(s.host_path == s.container_path and s.permissions == "rwm" for s in specs)
    return [s.container_path for s in specs]


def test_allocate_one_and_several_containers(rig: Rig) -> None:
    _start(rig)
    response = rig.kubelet.allocate(FULL, [["0"]])
    assert len(response.container_responses) == 1
    assert _paths(response.container_responses[0]) == PLAIN_PATHS
    assert not response.container_responses[0].cdi_devices
    assert not response.container_responses[0].annotations

    response = rig.kubelet.allocate(FULL, [["1", "2"], ["3"], ["0"]])
    assert len(response.container_responses) == 3
    for answer in response.container_responses:
        assert _paths(answer) == PLAIN_PATHS

    wait_until(
        lambda: any(
            isinstance(m, Heartbeat) and m.counters is not None and m.counters.allocations_ok == 2
            for m in rig.supervisor.received("hca_a", Heartbeat)
        ),
        what="allocations counted",
    )


def test_allocate_refuses_unknown_ids_by_name(rig: Rig) -> None:
    _start(rig)
    with pytest.raises(grpc.RpcError) as caught:
        rig.kubelet.allocate(FULL, [["0"], ["4", "x"]])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'4'" in caught.value.details() and "'x'" in caught.value.details()
    rig.kubelet.allocate(FULL, [["3"]])  # the worker is fine afterwards


def test_allocate_with_zero_devices(rig: Rig) -> None:
    _start(rig, ())
    rig.kubelet.wait_for_devices(FULL, lambda ds: ds == [])
    with pytest.raises(grpc.RpcError) as caught:
        rig.kubelet.allocate(FULL, [["0"]])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Matched but unusable: advertised Unhealthy, and Allocate says why it cannot hand anything.
    rig.supervisor.update_devices("hca_a", (make_candidate(0, present=False),))
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4)
    with pytest.raises(grpc.RpcError) as caught:
        rig.kubelet.allocate(FULL, [["0"]])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no usable RDMA device" in caught.value.details()


def test_allocate_follows_device_changes(rig: Rig) -> None:
    _start(rig)
    rig.supervisor.update_devices("hca_a", (make_candidate(1, issm=False),))
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].numa_nodes == (0,))
    answer = rig.kubelet.allocate(FULL, [["0"]]).container_responses[0]
    assert _paths(answer) == ["/dev/infiniband/uverbs1", "/dev/infiniband/umad1", RDMA_CM_PATH]


def test_other_calls(rig: Rig) -> None:
    _start(rig)
    preferred = rig.kubelet.get_preferred_allocation(FULL, ["0", "1", "2", "3"], ["2"], 2)
    assert list(preferred.container_responses[0].deviceIDs) == ["2", "0"]
    assert rig.kubelet.pre_start_container(FULL, ["0"]).ListFields() == []
    options = rig.kubelet.get_options(FULL)
    assert not options.pre_start_required and not options.get_preferred_allocation_available


def _spec(rig: Rig, name: str = "rdma-shared-dp_example.com_hca_a.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((rig.cdi_dir / name).read_text())
    return data


def test_cdi_mode(cdi_rig: Rig) -> None:
    rig = cdi_rig
    other = rig.cdi_dir / "vendor.com-gpu.json"
    rig.cdi_dir.mkdir()
    other.write_text("{}")
    _start(rig)
    spec = _spec(rig)
    validate_cdi(spec)
    assert spec["kind"] == FULL
    assert [d["name"] for d in spec["devices"]] == ["0000:03:00.0", "0000:04:00.0"]

    answer = rig.kubelet.allocate(FULL, [["0"], ["1"]]).container_responses
    names = ["example.com/hca_a=0000:03:00.0", "example.com/hca_a=0000:04:00.0"]
    for container in answer:
        assert [d.name for d in container.cdi_devices] == names
        assert dict(container.annotations) == {
            "cdi.k8s.io/rdma-shared-dp_example.com_hca_a": ",".join(names)
        }
        assert not container.devices

    # A device change rewrites the spec before the new snapshot goes out.
    rig.supervisor.update_devices("hca_a", (make_candidate(1, numa_node=1),))
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].numa_nodes == (1,))
    spec = _spec(rig)
    validate_cdi(spec)
    assert [d["name"] for d in spec["devices"]] == ["0000:04:00.0"]
    assert [
        d.name for d in rig.kubelet.allocate(FULL, [["0"]]).container_responses[0].cdi_devices
    ] == ["example.com/hca_a=0000:04:00.0"]

    # No usable device: no spec at all (a spec needs one device), and Allocate refuses.
    rig.supervisor.update_devices("hca_a", (make_candidate(1, present=False),))
    wait_until(lambda: not (rig.cdi_dir / "rdma-shared-dp_example.com_hca_a.json").exists())
    assert other.read_text() == "{}"


def test_cdi_specs_are_per_resource(cdi_rig: Rig) -> None:
    rig = cdi_rig
    b = make_resource("hca_b", "example.com", 2)
    _start(rig)
    _start(rig, (make_candidate(0),), resource=b)
    files = sorted(p.name for p in rig.cdi_dir.iterdir())
    assert files == [
        "rdma-shared-dp_example.com_hca_a.json",
        "rdma-shared-dp_example.com_hca_b.json",
    ]
    spec_b = _spec(rig, files[1])
    validate_cdi(spec_b)
    assert spec_b["kind"] == "example.com/hca_b"
    a = rig.kubelet.allocate(FULL, [["0"]]).container_responses[0]
    bb = rig.kubelet.allocate("example.com/hca_b", [["0"]]).container_responses[0]
    # Both in one container: the annotation keys differ, so neither overwrites the other.
    assert set(a.annotations).isdisjoint(bb.annotations)
