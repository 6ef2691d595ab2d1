"""The ListAndWatch snapshot is built in place (issue 14: 1 MiB less per worker) and is the same
message, byte for byte, as one built from standalone `Device` messages."""

from __future__ import annotations

import pytest

from common.devices import Candidate
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from tests.standin_supervisor import make_candidate, make_resource
from workers import plan as planning
from workers.plan import make_plan
from workers.servicer import publish

DEVICE_SETS = {
    "one, NUMA 0": (make_candidate(0),),
    "two NUMA nodes": (make_candidate(0, numa_node=0), make_candidate(1, numa_node=1)),
    "no NUMA node": (make_candidate(0, numa_node=-1),),
    "port down": (make_candidate(0, port_state="DOWN"),),
    "none": (),
}


def _standalone(plan: planning.Plan, refusal: str | None) -> dp.ListAndWatchResponse:
    topology = None
    if plan.numa_nodes:
        topology = dp.TopologyInfo(nodes=[dp.NUMANode(ID=n) for n in plan.numa_nodes])
    health = planning.UNHEALTHY if refusal is not None else plan.health
    return dp.ListAndWatchResponse(
        devices=[dp.Device(ID=i, health=health, topology=topology) for i in plan.device_ids]
    )


@pytest.mark.parametrize("refusal", [None, "the CDI spec cannot be written"])
@pytest.mark.parametrize("devices", DEVICE_SETS.values(), ids=DEVICE_SETS.keys())
def test_snapshot_is_the_same_message(devices: tuple[Candidate, ...], refusal: str | None) -> None:
    plan = make_plan(make_resource("x", "example.com", 1000), devices, False)
    built = publish(plan, refusal).snapshot
    assert len(built.devices) == len(plan.device_ids)
    assert built.SerializeToString(deterministic=True) == _standalone(
        plan, refusal
    ).SerializeToString(deterministic=True)
    assert built == _standalone(plan, refusal)
