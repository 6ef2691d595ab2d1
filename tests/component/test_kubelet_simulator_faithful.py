"""The kubelet simulator does what a real kubelet did (issue 9): a killed kubelet's socket left
behind and re-created at the same inode, re-admission of non-running pods shortly after a start,
PodResources listing a device once per NUMA node. With the real plugin where it matters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from proto.podresources.v1 import api_pb2 as pr
from proto.podresources.v1 import api_pb2_grpc as pr_grpc
from simulator.kubelet import READMIT_DELAY, KubeletSimulator
from tests.conditions import hard_timeout, missing
from tests.supervisor_rig import Plant, full, resource_entry

A = full("a")


@pytest.fixture
def plant() -> Iterator[Plant]:
    """The real supervisor, resource a on mlx5_0 (NUMA 0) and mlx5_2 (NUMA 1), classic mode."""
    config = {
        "periodicUpdateInterval": 0,
        "configList": [resource_entry("a", ["mlx5_0", "mlx5_2"], count=4)],
    }
    with hard_timeout(60):
        rig = Plant(config)
        rig.kubelet.stop()
        rig.kubelet = KubeletSimulator(rig.dp_dir, pod_resources_socket=rig.root / "pr.sock")
        rig.kubelet.start()
        try:
            rig.start()
            rig.wait_registered(["a"])
            rig.kubelet.wait_for_devices(A, lambda d: len(d) == 4)
            yield rig
        except BaseException:
            print(rig.log()[-6000:])
            raise
        finally:
            rig.close()


def test_killed_kubelet_leaves_its_socket_and_gets_the_same_inode(plant: Plant) -> None:
    sim = plant.kubelet
    before = sim.kubelet_socket.stat().st_ino
    sim.kill()
    assert sim.kubelet_socket.stat().st_ino == before  # dead, left behind
    sim.start()
    plant.wait_registered(["a"], timeout=20, count=2)
    before = sim.kubelet_socket.stat().st_ino
    sim.restart(killed=True, same_inode=True)
    if not sim.inode_reused[-1]:  # tmpfs, for one, never hands a number back
        missing(f"a filesystem that hands a freed inode back, not that of {sim.device_plugin_dir}")
    assert sim.kubelet_socket.stat().st_ino == before
    # The plugin must notice this restart too and register again.
    plant.wait_registered(["a"], timeout=20, count=3)


def test_restart_with_same_inode_and_readmission(plant: Plant) -> None:
    sim = plant.kubelet
    sim.add_pod("steady", A, ["0"], running=True)
    sim.add_pod("crash", A, ["1"], running=False)
    sim.restart(killed=True, same_inode=True)
    [admission] = sim.wait_for_admissions(1)
    assert admission.pod == "crash"
    assert READMIT_DELAY[0] <= admission.after_serving < 1.0
    if not admission.admitted:  # the plugin was not registered again in time
        assert admission.reason == "UnexpectedAdmissionError"
        assert admission.message == (
            "Pod was rejected: Allocate failed due to no healthy devices present; cannot "
            f"allocate unhealthy devices {A}, which is unexpected"
        )
        assert "crash" not in {p.name for p in sim.pods()}
    assert "steady" in {p.name for p in sim.pods()}  # running pods are never re-admitted


def test_readmission_of_a_resource_never_registered_is_refused(tmp_path: Path) -> None:
    sim = KubeletSimulator(tmp_path / "dp")
    sim.add_pod("crash", "example.com/none", ["0"], running=False)
    with sim:
        [admission] = sim.wait_for_admissions(1)
    assert not admission.admitted
    assert "cannot allocate unregistered device example.com/none" in admission.message


def test_pod_resources_lists_a_device_once_per_numa_node(plant: Plant) -> None:
    sim = plant.kubelet
    sim.add_pod("two", A, ["0", "3"])
    assert sim.pod_resources_socket is not None
    with grpc.insecure_channel(f"unix:{sim.pod_resources_socket}") as ch:
        stub = pr_grpc.PodResourcesListerStub(ch)
        resp = stub.List(pr.ListPodResourcesRequest(), timeout=5)
    [pod] = resp.pod_resources
    [container] = pod.containers
    nodes = [[n.ID for n in d.topology.nodes] for d in container.devices]
    assert nodes == [[0], [1]]  # the plugin reports NUMA 0 and 1 for every ID
    ids = Counter(i for d in container.devices for i in d.device_ids)
    assert ids == {"0": 2, "3": 2}
