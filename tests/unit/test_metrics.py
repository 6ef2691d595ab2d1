"""`supervisor.metrics.exporter.Metrics`: values move as the supervisor reports events (in-process).

Every check reads the rendered text format back with prometheus_client's parser, so what is
tested is what Prometheus would scrape.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import exitcodes
from common.devices import Candidate, CharDevice, NetDev, Port, RdmaDevice, ScanProblem
from common.messages import ALLOCATE_BUCKETS, WorkerCounters
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.families import (
    FAMILIES,
    PREFIX,
    RESTART_REASONS,
    exported_metrics,
    metric_names,
)
from supervisor.pod_resources import PodAllocation
from supervisor.rdma_cgroup import PodRdmaUsage
from supervisor.restart_policy import RestartPolicy
from supervisor.worker_table import exit_decision

RES = "rdma/hca_a"
Key = tuple[str, frozenset[tuple[str, str]]]


def scrape(m: Metrics) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return scrape(m).get((PREFIX + name, frozenset(labels.items())))


def series(m: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in scrape(m).items() if n == PREFIX + name}


def candidate(
    index: int, port_state: str = "ACTIVE", present: bool = True, ports: int = 1
) -> Candidate:
    chars = (
        CharDevice("uverbs", f"uverbs{index}", 231, 192 + index, present),
        CharDevice("umad", f"umad{index}", 231, index, present),
    )
    address = f"0000:{index + 3:02x}:00.0"
    return Candidate(
        name=address,
        pci_address=address,
        vendor="15b3",
        device_id="1017",
        driver="mlx5_core",
        numa_node=index % 2,
        netdevs=(NetDev(f"ib{index}", "infiniband", "up"),),
        rdma_devices=(
            RdmaDevice(
                f"mlx5_{index}",
                tuple(Port(n, port_state, "InfiniBand") for n in range(1, ports + 1)),
                chars,
            ),
        ),
        rdma_cm_present=True,
    )


def counters(
    ok: int = 0, refused: int = 0, durations: tuple[float, ...] = (), registrations_ok: int = 0
) -> WorkerCounters:
    buckets = tuple(sum(1 for d in durations if d <= b) for b in ALLOCATE_BUCKETS)
    return WorkerCounters(
        allocations_ok=ok,
        allocations_refused=refused,
        allocate_seconds_sum=sum(durations),
        allocate_count=len(durations),
        allocate_buckets=buckets,
        registrations_ok=registrations_ok,
    )


# Issue 5, item 2, verbatim: alerts and dashboards rely on these names and labels.
ISSUE_5 = """
rdma_shared_dp_build_info{version}
rdma_shared_dp_resource_devices{resource} rdma_shared_dp_resource_healthy_devices{resource}
rdma_shared_dp_resource_hcas{resource} rdma_shared_dp_resource_usable_hcas{resource}
rdma_shared_dp_hca_info{resource,pci_address,rdma_device,netdev,link_type,numa_node}
rdma_shared_dp_hca_port_up{rdma_device,port}
rdma_shared_dp_allocations_total{resource,result} rdma_shared_dp_allocate_duration_seconds{resource}
rdma_shared_dp_registrations_total{resource,result} rdma_shared_dp_kubelet_restarts_total
rdma_shared_dp_worker_up{resource} rdma_shared_dp_worker_restarts_total{resource,reason}
rdma_shared_dp_worker_resident_memory_bytes{resource}
rdma_shared_dp_worker_cpu_seconds_total{resource}
rdma_shared_dp_config_reloads_total{result}
rdma_shared_dp_config_last_reload_success_timestamp_seconds
rdma_shared_dp_device_scans_total{trigger} rdma_shared_dp_device_scan_duration_seconds
rdma_shared_dp_device_scan_errors_total{reason}
rdma_shared_dp_pod_allocations{namespace,pod,container,resource}
"""
# Added after the issue, with its reason (see docs/metrics.md); nothing of the issue's list goes.
ADDED = {
    # The reload counters cannot tell whether the refused file is still there; this can.
    "rdma_shared_dp_config_last_reload_successful": (),
    # Issue 11: CDI write failures visible to monitoring.
    "rdma_shared_dp_resource_cdi_spec_current": ("resource",),
    "rdma_shared_dp_cdi_write_errors_total": ("resource", "reason"),
    # Issue 11: a crash loop is never silent.
    "rdma_shared_dp_worker_consecutive_failures": ("resource",),
    # Issue 13: exclusive RDMA netns mode breaks sharing without any other series showing it.
    "rdma_shared_dp_rdma_netns_exclusive": (),
    # Issue 9: IDs above a shrunk rdmaHcaMax kept because running pods hold them.
    "rdma_shared_dp_retained_device_ids": ("resource",),
    # Issue 21: a node that serves no device at all (no PCI bus, unreadable sysfs, no match).
    "rdma_shared_dp_node_problem": ("reason",),
    # Issue 19: per-pod RDMA usage from the rdma cgroup.
    "rdma_shared_dp_pod_rdma_usage": ("resource", "pod_uid", "rdma_device", "object"),
    "rdma_shared_dp_pod_rdma_limit": ("resource", "pod_uid", "rdma_device", "object"),
}


def test_names_and_labels_are_the_ones_issue_5_promises() -> None:
    promised: dict[str, tuple[str, ...]] = {}
    for item in ISSUE_5.split():
        name, _, labels = item.partition("{")
        promised[name] = tuple(labels.rstrip("}").split(",")) if labels else ()
    assert len(promised) == 21
    exported = {PREFIX + short: labels for short, (_, labels, _) in FAMILIES.items()}
    assert exported == promised | ADDED
    assert exported_metrics()["rdma_shared_dp_allocate_duration_seconds"] == "histogram"


def test_every_family_is_exported_with_its_labels() -> None:
    m = Metrics("1.2.3")
    m.set_resource(RES, 8, [candidate(0)])
    m.set_ports([candidate(0)])
    m.device_scan("start", 0.01, [ScanProblem("dangling_link", "sys/x", "gone")])
    m.worker_up(RES, True)
    m.worker_restarted(RES, "exited")
    m.worker_counters(
        RES,
        10,
        replace(
            counters(ok=1, durations=(0.001,)), cdi_spec_current=True, cdi_write_errors=(0,) * 5
        ),
    )
    m.worker_process(RES, 1 << 20, 0.5, 10)
    m.worker_failures(RES, 2)
    m.kubelet_restart()
    m.config_reload(True, 1000.0)
    m.rdma_netns_mode("shared")
    m.set_pod_allocations([PodAllocation("ns", "p", "c", RES, 1)])
    m.set_retained({RES: ("9",)})
    m.pod_rdma = lambda: [PodRdmaUsage("u1", RES, "rxe0", 1, 5, None, 100)]
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    # The parser drops `_total` from counter family names; compare on the exported names.
    exported = {n + "_total" if f.type == "counter" else n for n, f in families.items()}
    assert exported == set(metric_names())
    for short, (kind, labels, _) in FAMILIES.items():
        family = families[PREFIX + short.removesuffix("_total")]
        assert family.type == kind, short
        sample_labels = {k for s in family.samples for k in s.labels} - {"le"}
        assert sample_labels == set(labels), short
    assert value(m, "build_info", version="1.2.3") == 1


def test_pod_rdma_series_and_a_failing_source() -> None:
    m = Metrics("v")
    m.pod_rdma = lambda: [PodRdmaUsage("u1", RES, "rxe0", 2, 5, None, 100)]
    labels = {"resource": RES, "pod_uid": "u1", "rdma_device": "rxe0"}
    assert value(m, "pod_rdma_usage", object="hca_object", **labels) == 5
    assert value(m, "pod_rdma_usage", object="hca_handle", **labels) == 2
    # Only the object limit is set; "max" (unlimited) handles have no series.
    assert series(m, "pod_rdma_limit") == {
        frozenset({**labels, "object": "hca_object"}.items()): 100
    }

    def broken() -> list[PodRdmaUsage]:
        raise OSError("cgroup gone")

    m.pod_rdma = broken
    assert series(m, "pod_rdma_usage") == {}
    assert value(m, "build_info", version="v") == 1  # the rest of the scrape is unharmed


def test_rdma_netns_exclusive_follows_the_mode() -> None:
    m = Metrics("v")
    assert series(m, "rdma_netns_exclusive") == {}  # unknown: no series beats a false 0
    m.rdma_netns_mode("exclusive")
    assert value(m, "rdma_netns_exclusive") == 1
    m.rdma_netns_mode("shared")
    assert value(m, "rdma_netns_exclusive") == 0
    m.rdma_netns_mode("unknown")
    assert series(m, "rdma_netns_exclusive") == {}


def test_resource_gauges_follow_matched_hcas() -> None:
    m = Metrics("v")
    m.set_resource(RES, 100, [candidate(0), candidate(1, present=False)])
    assert value(m, "resource_devices", resource=RES) == 100
    assert value(m, "resource_healthy_devices", resource=RES) == 100
    assert value(m, "resource_hcas", resource=RES) == 2
    assert value(m, "resource_usable_hcas", resource=RES) == 1
    info = series(m, "hca_info")
    assert (
        frozenset(
            {
                "resource": RES,
                "pci_address": "0000:03:00.0",
                "rdma_device": "mlx5_0",
                "netdev": "ib0",
                "link_type": "infiniband",
                "numa_node": "0",
            }.items()
        )
        in info
    )
    assert len(info) == 2

    # Every port down: advertised but unhealthy.
    m.set_resource(RES, 100, [candidate(0, port_state="DOWN")])
    assert value(m, "resource_devices", resource=RES) == 100
    assert value(m, "resource_healthy_devices", resource=RES) == 0
    assert len(series(m, "hca_info")) == 1  # the other HCA's row is gone

    m.set_resource(RES, 100, [])
    assert value(m, "resource_devices", resource=RES) == 0
    assert value(m, "resource_hcas", resource=RES) == 0
    assert series(m, "hca_info") == {}


def test_remove_resource_drops_every_series_of_it() -> None:
    m = Metrics("v")
    for res in (RES, "rdma/hca_b"):
        m.set_resource(res, 4, [candidate(0)])
        m.worker_up(res, True)
        m.worker_restarted(res, "exited")
        m.worker_counters(res, 1, counters(ok=2))
        m.worker_process(res, 100, 1.0, 1)
    m.remove_resource(RES)
    text = m.render().decode()
    assert f'resource="{RES}"' not in text
    assert 'resource="rdma/hca_b"' in text
    assert value(m, "worker_up", resource="rdma/hca_b") == 1


def test_ports_are_replaced_as_a_whole() -> None:
    m = Metrics("v")
    m.set_ports([candidate(0), candidate(1, ports=2)])
    assert series(m, "hca_port_up") == {
        frozenset({"rdma_device": "mlx5_0", "port": "1"}.items()): 1,
        frozenset({"rdma_device": "mlx5_1", "port": "1"}.items()): 1,
        frozenset({"rdma_device": "mlx5_1", "port": "2"}.items()): 1,
    }
    m.set_ports([candidate(0, port_state="DOWN")])
    assert series(m, "hca_port_up") == {
        frozenset({"rdma_device": "mlx5_0", "port": "1"}.items()): 0,
    }


def test_worker_counters_are_monotonic_across_restarts() -> None:
    m = Metrics("v")
    m.worker_counters(RES, 100, counters(ok=5, refused=1, durations=(0.0004, 0.003)))
    m.worker_counters(RES, 100, counters(ok=7, refused=1, durations=(0.0004, 0.003, 0.3)))
    assert value(m, "allocations_total", resource=RES, result="success") == 7
    assert value(m, "allocations_total", resource=RES, result="failure") == 1
    assert value(m, "allocate_duration_seconds_count", resource=RES) == 3
    assert value(m, "allocate_duration_seconds_bucket", resource=RES, le="0.0005") == 1
    assert value(m, "allocate_duration_seconds_bucket", resource=RES, le="0.005") == 2
    assert value(m, "allocate_duration_seconds_bucket", resource=RES, le="+Inf") == 3

    # The worker restarts with a new pid and counts from zero again: the series keeps growing.
    m.worker_counters(RES, 200, counters(ok=2, durations=(0.0001,), registrations_ok=1))
    assert value(m, "allocations_total", resource=RES, result="success") == 9
    assert value(m, "allocations_total", resource=RES, result="failure") == 1
    assert value(m, "allocate_duration_seconds_count", resource=RES) == 4
    assert value(m, "allocate_duration_seconds_bucket", resource=RES, le="0.0005") == 2
    assert value(m, "registrations_total", resource=RES, result="success") == 1
    total = value(m, "allocate_duration_seconds_sum", resource=RES)
    assert total is not None and math.isclose(total, 0.0004 + 0.003 + 0.3 + 0.0001)

    # The same heartbeat twice adds nothing.
    m.worker_counters(RES, 200, counters(ok=2, durations=(0.0001,), registrations_ok=1))
    assert value(m, "allocations_total", resource=RES, result="success") == 9

    # A pid whose totals go down is a new process too (pid reuse): never backwards.
    m.worker_counters(RES, 200, counters(ok=1))
    assert value(m, "allocations_total", resource=RES, result="success") == 10

    # A new pid whose first totals are already higher than the old one's: all of it is new.
    m.worker_counters(RES, 300, counters(ok=4))
    assert value(m, "allocations_total", resource=RES, result="success") == 14


def test_counters_from_a_worker_of_another_shape_are_ignored() -> None:
    m = Metrics("v")
    m.worker_counters(RES, 1, counters(ok=3))
    bad = replace(counters(ok=50), allocate_buckets=(1, 2))
    m.worker_counters(RES, 1, bad)
    m.worker_counters(RES, 1, replace(counters(ok=60), allocations_refused=-1))
    not_cumulative = replace(counters(durations=(0.1, 0.2)), allocate_buckets=(2,) + (0,) * 6)
    m.worker_counters(RES, 1, not_cumulative)
    assert value(m, "allocations_total", resource=RES, result="success") == 3


def test_registration_and_allocation_counters_start_at_zero() -> None:
    m = Metrics("v")
    m.set_resource(RES, 4, [])
    assert value(m, "allocations_total", resource=RES, result="success") == 0
    assert value(m, "allocations_total", resource=RES, result="failure") == 0
    assert value(m, "registrations_total", resource=RES, result="success") == 0
    assert value(m, "registrations_total", resource=RES, result="failure") == 0
    assert value(m, "allocate_duration_seconds_count", resource=RES) == 0


@pytest.mark.parametrize("first", ["set_resource", "worker_up"])
def test_restart_reasons_start_at_zero_and_go_with_the_resource(first: str) -> None:
    m = Metrics("v")
    if first == "set_resource":
        m.set_resource(RES, 4, [candidate(0)])
    else:
        m.worker_up(RES, False)
    restarts = series(m, "worker_restarts_total")
    assert restarts == {
        frozenset({"resource": RES, "reason": reason}.items()): 0 for reason in RESTART_REASONS
    }
    # The first restart is a step from 0 to 1, which increase() sees.
    m.worker_restarted(RES, "killed")
    assert value(m, "worker_restarts_total", resource=RES, reason="killed") == 1
    assert value(m, "worker_restarts_total", resource=RES, reason="crashed") == 0
    m.remove_resource(RES)
    assert series(m, "worker_restarts_total") == {}
    assert series(m, "allocations_total") == {}
    assert series(m, "registrations_total") == {}


def test_restart_reasons_cover_every_exit_decision() -> None:
    # exit_decision's own labels, and the arbiter's kill labels that it passes through.
    policy = RestartPolicy()
    reasons = {
        exit_decision(code, 30.0, 0, kill, policy, 0.5).reason
        for code in (0, 1, 2, exitcodes.CONFIG_INVALID, 70, -9, -15)
        for kill in ("", "hung", "start_timeout")
    }
    assert reasons == set(RESTART_REASONS)


def test_worker_restarts_up_memory_and_cpu() -> None:
    m = Metrics("v")
    m.worker_up(RES, True)
    m.worker_process(RES, 20_000_000, 1.5, pid=10)
    m.worker_process(RES, 21_000_000, 2.0, pid=10)
    assert value(m, "worker_up", resource=RES) == 1
    assert value(m, "worker_resident_memory_bytes", resource=RES) == 21_000_000
    assert value(m, "worker_cpu_seconds_total", resource=RES) == 2.0

    m.worker_up(RES, False)
    m.worker_restarted(RES, "killed")
    assert value(m, "worker_up", resource=RES) == 0
    assert value(m, "worker_resident_memory_bytes", resource=RES) is None
    assert value(m, "worker_restarts_total", resource=RES, reason="killed") == 1

    m.worker_up(RES, True)
    m.worker_process(RES, 19_000_000, 0.25, pid=11)  # the new process' CPU starts from zero
    assert value(m, "worker_cpu_seconds_total", resource=RES) == 2.25
    m.worker_restarted(RES, "killed")
    m.worker_restarted(RES, "heartbeat_timeout")
    assert value(m, "worker_restarts_total", resource=RES, reason="killed") == 2
    assert value(m, "worker_restarts_total", resource=RES, reason="heartbeat_timeout") == 1


def test_config_reloads_and_success_time() -> None:
    m = Metrics("v")
    assert value(m, "config_reloads_total", result="success") == 0
    assert value(m, "config_reloads_total", result="failure") == 0
    assert value(m, "config_last_reload_success_timestamp_seconds") is None
    m.config_loaded(1000.0)
    assert value(m, "config_last_reload_success_timestamp_seconds") == 1000.0
    assert value(m, "config_reloads_total", result="success") == 0
    m.config_reload(False, 1100.0)
    m.config_reload(False, 1200.0)
    assert value(m, "config_reloads_total", result="failure") == 2
    assert value(m, "config_last_reload_success_timestamp_seconds") == 1000.0
    m.config_reload(True, 1300.0)
    assert value(m, "config_reloads_total", result="success") == 1
    assert value(m, "config_last_reload_success_timestamp_seconds") == 1300.0


def test_last_reload_successful_holds_while_the_refused_file_stays() -> None:
    m = Metrics("v")
    assert value(m, "config_last_reload_successful") is None  # no config loaded yet
    m.config_loaded(1000.0)  # the load at start
    assert value(m, "config_last_reload_successful") == 1
    m.config_reload(False, 1100.0)
    assert value(m, "config_last_reload_successful") == 0
    # The refused file is counted once, but the gauge stays 0 however long it stays in place.
    m.device_scan("periodic", 0.01, [])
    m.kubelet_restart()
    assert value(m, "config_last_reload_successful") == 0
    # A good file again: the supervisor reports it applied, then the reload's result.
    m.config_loaded(1200.0)
    m.config_reload(True, 1200.0)
    assert value(m, "config_last_reload_successful") == 1
    m.config_reload(False, 1300.0)
    m.config_reload(True, 1400.0)
    assert value(m, "config_last_reload_successful") == 1


def test_device_scans_durations_and_errors() -> None:
    m = Metrics("v")
    problems = [
        ScanProblem("dangling_link", "sys/a", ""),
        ScanProblem("dangling_link", "sys/b", ""),
        ScanProblem("bad_value", "sys/c", ""),
    ]
    m.device_scan("start", 0.004, problems)
    m.device_scan("uevent", 0.02, [])
    m.device_scan("uevent", float("nan"), [])  # a broken clock must not poison the sum
    assert value(m, "device_scans_total", trigger="start") == 1
    assert value(m, "device_scans_total", trigger="uevent") == 2
    assert value(m, "device_scan_errors_total", reason="dangling_link") == 2
    assert value(m, "device_scan_errors_total", reason="bad_value") == 1
    assert value(m, "device_scan_duration_seconds_count") == 3
    assert value(m, "device_scan_duration_seconds_bucket", le="0.005") == 2
    assert value(m, "device_scan_duration_seconds_bucket", le="0.025") == 3
    total = value(m, "device_scan_duration_seconds_sum")
    assert total is not None and math.isclose(total, 0.024)


def test_pod_allocations_replace_and_sum_duplicates() -> None:
    m = Metrics("v")
    m.set_pod_allocations(
        [
            PodAllocation("ns", "p", "c", RES, 1),
            PodAllocation("ns", "p", "c", RES, 2),  # the kubelet may split one resource in two
            PodAllocation("other", 'we"ird\\name', "c", RES, 1),
        ]
    )
    assert value(m, "pod_allocations", namespace="ns", pod="p", container="c", resource=RES) == 3
    labels = dict(namespace="other", pod='we"ird\\name', container="c", resource=RES)
    assert value(m, "pod_allocations", **labels) == 1
    m.set_pod_allocations([])
    assert series(m, "pod_allocations") == {}


def test_kubelet_restarts() -> None:
    m = Metrics("v")
    assert value(m, "kubelet_restarts_total") == 0
    m.kubelet_restart()
    m.kubelet_restart()
    assert value(m, "kubelet_restarts_total") == 2


def test_render_while_the_loop_updates_is_always_consistent() -> None:
    m = Metrics("v")
    stop = threading.Event()
    problems: list[str] = []

    def scrape_loop() -> None:
        while not stop.is_set():
            ports = series(m, "hca_port_up")
            if len(ports) != 4:  # set_ports always publishes four ports at once
                problems.append(f"saw {len(ports)} ports")

    m.set_ports([candidate(i) for i in range(4)])
    thread = threading.Thread(target=scrape_loop)
    thread.start()
    try:
        for n in range(300):
            m.set_ports([candidate(i, port_state="DOWN" if n % 2 else "ACTIVE") for i in range(4)])
            m.worker_counters(RES, 1 + n // 50, counters(ok=n % 50))
    finally:
        stop.set()
        thread.join()
    assert problems == []


@pytest.mark.parametrize(("rdma_hca_max", "devices"), [(-5, 0), (0, 0), (1, 1)])
def test_rdma_hca_max_edge_values(rdma_hca_max: int, devices: int) -> None:
    m = Metrics("v")
    m.set_resource(RES, rdma_hca_max, [candidate(0)])
    assert value(m, "resource_devices", resource=RES) == devices


def test_pod_allocations_count_a_device_listed_under_two_numa_nodes_once() -> None:
    # A real kubelet answered List with one ContainerDevices entry per NUMA node, each naming
    # the two device IDs of a device that sits on nodes 0 and 1.
    m = Metrics("v")
    m.set_pod_allocations(
        [
            PodAllocation("ns", "p", "c", RES, 2, ("0", "5")),
            PodAllocation("ns", "p", "c", RES, 2, ("0", "5")),
        ]
    )
    assert value(m, "pod_allocations", namespace="ns", pod="p", container="c", resource=RES) == 2
