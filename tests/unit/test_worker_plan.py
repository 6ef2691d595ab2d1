"""What a worker advertises and hands out, from config and devices (workers/plan.py, pure)."""

from __future__ import annotations

from dataclasses import replace

from common.devices import RDMA_CM_PATH, NetDev
from tests.standin_supervisor import make_candidate, make_resource
from workers.plan import HEALTHY, UNHEALTHY, make_plan, unknown_ids


def test_ids_are_the_go_plugins() -> None:
    plan = make_plan(make_resource(count=5), (make_candidate(0),), use_cdi=False)
    assert plan.device_ids == ("0", "1", "2", "3", "4")
    assert plan.health == HEALTHY


def test_no_matched_device_means_an_empty_list() -> None:
    plan = make_plan(make_resource(count=5), (), use_cdi=False)
    assert plan.device_ids == ()
    assert plan.device_paths == ()
    assert not plan.can_allocate


def test_rdma_hca_max_zero_advertises_nothing() -> None:
    plan = make_plan(make_resource(count=0), (make_candidate(0),), use_cdi=False)
    assert plan.device_ids == ()


def test_matched_but_unusable_is_listed_unhealthy() -> None:
    plan = make_plan(make_resource(count=3), (make_candidate(0, present=False),), use_cdi=False)
    assert plan.device_ids == ("0", "1", "2")
    assert plan.health == UNHEALTHY
    assert plan.numa_nodes == ()
    assert not plan.can_allocate


def test_health_needs_one_usable_device_with_a_live_port() -> None:
    down = make_candidate(0, port_state="DOWN")
    up = make_candidate(1)
    assert make_plan(make_resource(), (down,), False).health == UNHEALTHY
    assert make_plan(make_resource(), (down, up), False).health == HEALTHY
    # A port-down device is still usable: its char devices are handed out.
    assert "/dev/infiniband/uverbs0" in make_plan(make_resource(), (down,), False).device_paths


def test_topology_is_the_numa_nodes_of_usable_devices() -> None:
    devices = (
        make_candidate(0, numa_node=1),
        make_candidate(1, numa_node=0),
        make_candidate(2, numa_node=1),
        make_candidate(3, numa_node=-1),
        make_candidate(4, numa_node=3, present=False),
    )
    assert make_plan(make_resource(), devices, False).numa_nodes == (0, 1)
    assert make_plan(make_resource(), (make_candidate(0, numa_node=-1),), False).numa_nodes == ()


def test_device_paths_are_stable_without_duplicates_and_rdma_cm_once() -> None:
    a = make_candidate(0)
    b = make_candidate(1, issm=False)  # RoCE: no issm
    absent = replace(
        make_candidate(2),
        rdma_devices=(
            replace(
                make_candidate(2).rdma_devices[0],
                char_devices=tuple(
                    replace(c, present=c.kind != "issm")
                    for c in make_candidate(2).rdma_devices[0].char_devices
                ),
            ),
        ),
    )
    twin = replace(a, name="0000:99:00.0", netdevs=(NetDev("ib9", "infiniband", "up"),))
    expected = (
        "/dev/infiniband/uverbs0",
        "/dev/infiniband/umad0",
        "/dev/infiniband/issm0",
        "/dev/infiniband/uverbs1",
        "/dev/infiniband/umad1",
        "/dev/infiniband/uverbs2",
        "/dev/infiniband/umad2",
        RDMA_CM_PATH,
    )
    for order in [(a, b, absent, twin), (twin, absent, b, a)]:
        plan = make_plan(make_resource(), order, use_cdi=False)
        assert plan.device_paths == expected
        assert plan.device_paths.count(RDMA_CM_PATH) == 1


def test_unknown_ids_are_named_once_in_request_order() -> None:
    plan = make_plan(make_resource(count=3), (make_candidate(0),), use_cdi=False)
    assert unknown_ids(plan, ["2", "7", "0", "x", "7"]) == ["7", "x"]
    assert unknown_ids(plan, ["0", "1"]) == []


def test_plain_mode_has_no_cdi_fields() -> None:
    plan = make_plan(make_resource(), (make_candidate(0),), use_cdi=False)
    assert plan.cdi_devices == ()
    assert plan.cdi_annotation is None
