"""Abusive gRPC input to a real worker: huge, empty, unknown and duplicated IDs, huge and negative
preferred-allocation sizes, crafted container counts, and 10 000 Allocates with the worker's
threads, fds and memory bounded. Each case ends with the worker still serving the kubelet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from tests.conditions import wait_until
from tests.reliability.footprint import Footprint, scale
from tests.standin_supervisor import Rig, make_candidate, make_resource
from workers import requests, servicer
from workers.plan import make_plan

RESOURCE = make_resource("hca_a", "example.com", 64)
FULL = "example.com/hca_a"
DEVICES = (make_candidate(0), make_candidate(1, numa_node=1))
#: Generous: what is asserted is that the call is answered, not how fast (make bench measures).
DEADLINE = 10.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("abuse"))
    r.start_worker(RESOURCE, DEVICES)
    r.kubelet.wait_for_registration(FULL, timeout=15)
    r.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 64)
    yield r
    r.close()


@pytest.fixture(scope="module")
def stub(rig: Rig) -> Iterator[Any]:
    """Another local client on the worker's socket (not the kubelet)."""
    channel = grpc.insecure_channel(f"unix:{rig.dp_dir / 'hca_a.sock'}")
    yield dp_grpc.DevicePluginStub(channel)
    channel.close()


def _allocate(stub: Any, *containers: list[str]) -> dp.AllocateResponse:
    request = dp.AllocateRequest(
        container_requests=[dp.ContainerAllocateRequest(devices_ids=c) for c in containers]
    )
    response: dp.AllocateResponse = stub.Allocate(request, timeout=DEADLINE)
    return response


def _refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _kubelet_still_served(rig: Rig) -> None:
    answer = rig.kubelet.allocate(FULL, [["0"]], timeout=DEADLINE).container_responses[0]
    assert answer.devices, "the kubelet's Allocate got an empty answer"
    assert rig.kubelet.is_registered(FULL)
    assert rig.procs["hca_a"].poll() is None, "the worker exited"


def test_100000_unknown_ids_are_refused_by_size(rig: Rig, stub: Any) -> None:
    ids = [f"x{i}" for i in range(100_000)]
    err = _refused(lambda: _allocate(stub, ids))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names 100000 device IDs, more than the 64 this resource advertises" in err.details()
    # Spread over containers, and with known IDs: the total counts.
    err = _refused(lambda: _allocate(stub, *[[str(i % 64)] for i in range(60)], ["0"] * 10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "names 70 device IDs" in err.details()
    _kubelet_still_served(rig)


def test_many_containers_are_refused(rig: Rig, stub: Any) -> None:
    err = _refused(lambda: _allocate(stub, *[[] for _ in range(100_000)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than the {requests.MAX_CONTAINERS}" in err.details()
    _kubelet_still_served(rig)


def test_unknown_ids_are_named_and_cut_short(rig: Rig, stub: Any) -> None:
    long_id = "y" * 100_000
    err = _refused(lambda: _allocate(stub, ["0", "64", long_id, "", "64"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details()
    assert "'64'" in details and "''" in details and details.count("'64'") == 1
    assert len(details) < 2000, "the error quotes a 100 000-character ID back"
    _kubelet_still_served(rig)


def test_empty_and_duplicated_requests_are_answered(rig: Rig, stub: Any) -> None:
    assert list(_allocate(stub).container_responses) == []
    empty = _allocate(stub, [])
    assert len(empty.container_responses) == 1 and not empty.container_responses[0].devices
    # Every ID maps to the same devices: a repeated ID is harmless and answered like any other.
    twice = _allocate(stub, ["3", "3"], ["3"])
    assert len(twice.container_responses) == 2
    assert twice.container_responses[0] == twice.container_responses[1]
    _kubelet_still_served(rig)


def _preferred(stub: Any, available: list[str], must: list[str], size: int) -> Any:
    request = dp.PreferredAllocationRequest(
        container_requests=[
            dp.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
            )
        ]
    )
    return stub.GetPreferredAllocation(request, timeout=DEADLINE)


def test_preferred_allocation_sizes(rig: Rig, stub: Any) -> None:
    for size in (-1, -(2**31)):
        err = _refused(lambda size=size: _preferred(stub, ["0", "1"], [], size))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "negative" in err.details()
    err = _refused(lambda: _preferred(stub, ["0", "1"], [], 2**31 - 1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "advertises 64" in err.details()
    huge = [str(i) for i in range(200_000)]
    err = _refused(lambda: _preferred(stub, huge, huge[:10], 3))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # At the bound it is answered, linear: no repeats, must-include first.
    answer = _preferred(stub, [str(i) for i in range(64)] + ["0", "1"], ["5", "5"], 64)
    ids = list(answer.container_responses[0].deviceIDs)
    assert ids[0] == "5" and len(ids) == 64 and len(set(ids)) == 64
    assert list(_preferred(stub, ["1"], [], 0).container_responses[0].deviceIDs) == []
    _kubelet_still_served(rig)


class _Context:
    """A servicer context whose caller is gone (the only stand-in here: a real client cannot
    make the worker observe its own cancellation at a chosen point of a bounded call)."""

    def __init__(self, active: bool, remaining: float | None) -> None:
        self.active, self.remaining, self.asked = active, remaining, 0

    def is_active(self) -> bool:
        self.asked += 1
        return self.active

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(("active", "remaining"), [(False, None), (True, 0.0), (True, -1.0)])
def test_a_call_whose_caller_is_gone_stops(active: bool, remaining: float | None) -> None:
    resource = make_resource("hca_a", "example.com", 10_000)
    published = servicer.publish(make_plan(resource, DEVICES, use_cdi=False))
    request = dp.AllocateRequest(
        container_requests=[dp.ContainerAllocateRequest(devices_ids=[str(i) for i in range(9999)])]
    )
    context = _Context(active, remaining)
    problem = requests.allocate_problem(published.plan, published.refusal, request, context)
    assert problem is not None and problem[0] == grpc.StatusCode.CANCELLED
    assert context.asked == 1, "the work went on after the caller was gone"
    assert requests.allocate_problem(published.plan, None, request, _Context(True, 5.0)) is None


def test_10000_allocates_leave_no_growth(rig: Rig, stub: Any) -> None:
    calls = scale(10_000, 200_000)
    pid = rig.procs["hca_a"].pid
    for i in range(500):  # warm up the worker's allocator, channels and caches
        _allocate(stub, [str(i % 64)])
    before = Footprint.of(pid)
    start = time.perf_counter()
    refused = 0
    for i in range(calls):
        if i % 10 == 9:
            refused += 1
            with pytest.raises(grpc.RpcError):
                _allocate(stub, ["nope"])
        else:
            _allocate(stub, [str(i % 64)])
    seconds = time.perf_counter() - start
    after = Footprint.of(pid)
    print(
        f"\n[reliability] {calls} Allocates ({refused} refused) in {seconds:.1f}s; worker "
        f"{before.describe()} -> {after.describe()}"
    )
    before.assert_bounded(after, f"worker after {calls} Allocates")
    _kubelet_still_served(rig)
    wait_until(
        lambda: (rig.procs["hca_a"].poll() is None) and rig.kubelet.is_registered(FULL),
        5,
        what="worker serving",
    )
