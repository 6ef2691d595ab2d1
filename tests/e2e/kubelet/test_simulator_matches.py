"""One scenario against the kubelet simulator and against the real kubelet: the plugin must see
the same (issue 9: a simulator is only worth its fast tests if it behaves like the real thing).

The scenario: the plugin registers (classic mode), a running pod holds 2 IDs and a crash-looping
pod 1, then the kubelet is killed with SIGKILL and started again 3 times, 0.5 s apart. Compared:
whether kubelet.sock was left behind by the dead kubelet and came back at the same inode, how
many registrations each kubelet run got, whether the non-running pod was admitted again after
each start, how many times PodResources names each held ID (once per NUMA node), and what the
plugin's own metrics say (pod allocations, successful registrations).
"""

from __future__ import annotations

import functools
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto.podresources.v1 import api_pb2 as pr
from proto.podresources.v1 import api_pb2_grpc as pr_grpc
from simulator.kubelet import KubeletSimulator
from tests.e2e.kubelet import rig
from tests.e2e.kubelet.conftest import FIGURES
from tests.e2e.kubelet.rig import PREFIX, Node, settled, wait_for

# A scenario restarts a real kubelet 20+ times: longer than the default hard timeout.
pytestmark = [pytest.mark.kubelet, pytest.mark.root, pytest.mark.hard_timeout(900)]

A = f"{PREFIX}/hca_a"
RES_A = {"resourceName": "hca_a", "rdmaHcaMax": 8, "selectors": {"ifNames": ["ib0", "ib1"]}}
RESTARTS = 3
GAP = 0.5


def multiplicity(listing: list[tuple[str, list[str]]], pod: str) -> list[int]:
    """How many times PodResources names each ID `pod` holds, sorted."""
    ids = [i for p, got in listing if p == pod for i in got]
    return sorted(Counter(ids).values())


def plugin_view(plugin: rig.Plugin, pod: str) -> dict[str, Any]:
    """What the plugin itself reports: the pod's allocation and that it serves (/readyz)."""
    wait_for(lambda: plugin.metric("pod_allocations", pod=pod, resource=A) == 2, 30)
    wait_for(plugin.ready, 30)
    # Printed, not compared: a registration the worker took for stale is not counted.
    ok = plugin.metric("registrations_total", resource=A, result="success")
    return {"pod_allocations": 2, "ready": True, "registrations_counted": ok}


def simulated(node: Node, workdir: Path) -> dict[str, Any]:
    sim = KubeletSimulator(workdir / "dp", pod_resources_socket=workdir / "pr" / "kubelet.sock")
    sim.start()
    plugin = rig.Plugin(workdir / "plugin", node.host_root, sim, "classic")
    try:
        plugin.dir.mkdir(parents=True)
        plugin.write_config([RES_A])
        plugin.start()
        sim.wait_for_registration(A, timeout=30)
        sim.wait_for_devices(A, lambda d: len(d) == 8, timeout=30)
        sim.add_pod("steady", A, ["0", "1"], running=True)
        sim.add_pod("crash", A, ["2"], running=False)
        obs: dict[str, Any] = {"left_behind": [], "same_inode": [], "readmitted": []}
        runs = []
        for i in range(RESTARTS):
            before = len(sim.registrations())
            inode = sim.kubelet_socket.stat().st_ino
            sim.kill()
            obs["left_behind"].append(sim.kubelet_socket.exists())
            time.sleep(GAP)  # the kubelet is down this long: the scenario
            sim.start(inode=inode)
            obs["same_inode"].append(sim.kubelet_socket.stat().st_ino == inode)
            sim.wait_for_registration(A, timeout=30, count=before + 1)
            adm = sim.wait_for_admissions(i + 1)
            obs["readmitted"].append(adm[-1].pod == "crash")
            if not adm[-1].admitted:  # rejected pods are gone: a new crash-looping one
                sim.add_pod("crash", A, ["2"], running=False)
            runs.append(len(sim.registrations()) - before)
        obs["registrations_per_run"] = runs
        assert sim.pod_resources_socket is not None
        with grpc.insecure_channel(f"unix:{sim.pod_resources_socket}") as ch:
            stub = pr_grpc.PodResourcesListerStub(ch)
            resp = stub.List(pr.ListPodResourcesRequest(), timeout=5)
        listing = [
            (p.name, list(d.device_ids))
            for p in resp.pod_resources
            for c in p.containers
            for d in c.devices
        ]
        obs["podresources_multiplicity"] = multiplicity(listing, "steady")
        obs["plugin"] = plugin_view(plugin, "steady")
        obs["rejected"] = sum(not a.admitted for a in sim.admissions())
        obs["messages"] = sorted({a.message for a in sim.admissions() if not a.admitted})
        return obs
    finally:
        plugin.stop()
        sim.stop()


def real(node: Node) -> dict[str, Any]:
    k = node.kubelet
    k.start()
    plugin = node.start_plugin([RES_A], "classic")
    node.wait_registered("hca_a")
    out = node.dir / "out"
    k.write_pod(rig.pod_manifest("steady", {"hca_a": 2}, out / "steady"))
    k.wait_running("steady")
    serial = 0

    def crash_pod() -> str:
        name = f"crash-{serial}"
        k.write_pod(rig.pod_manifest(name, {"hca_a": 1}, out / name, command="exit 1"))
        wait_for(
            lambda: any(
                c.get("restartCount", 0) >= 1
                for c in k.pod_status(name).get("containerStatuses") or []
            ),
            60,
            interval=0.2,
        )
        return name

    crashing = crash_pod()
    obs: dict[str, Any] = {"left_behind": [], "same_inode": [], "readmitted": []}
    runs, rejected, messages = [], 0, set()
    for _ in range(RESTARTS):
        before = k.current
        k.stop(signal.SIGKILL)
        obs["left_behind"].append((k.device_plugin_dir / "kubelet.sock").exists())
        runs.append(len([r for _t, r in before.registrations() if r == A]))
        time.sleep(GAP)  # the kubelet is down this long: the scenario
        inc = k.start()
        obs["same_inode"].append(inc.inode == before.inode)
        node.wait_registered("hca_a")
        status = wait_for(functools.partial(settled, k, crashing), 30, interval=0.1)
        obs["readmitted"].append(bool(status))
        if status.get("reason") == "UnexpectedAdmissionError":
            rejected += 1
            messages.add(status.get("message", ""))
            k.delete_pod(crashing)
            serial += 1
            crashing = crash_pod()
    runs.append(len([r for _t, r in k.current.registrations() if r == A]))
    obs["registrations_per_run"] = runs[1:]  # the simulator counts the runs after each restart
    full = f"steady-{rig.NODE_NAME}"
    obs["podresources_multiplicity"] = multiplicity(
        [(p, ids) for p, _c, r, ids in k.pod_resources() if r == A], full
    )
    obs["plugin"] = plugin_view(plugin, full)
    obs["rejected"] = rejected
    obs["messages"] = sorted(messages)
    return obs


def _both(node: Node) -> tuple[dict[str, Any], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="rks-", dir="/tmp") as tmp:
        sim = simulated(node, Path(tmp))
    got = real(node)
    FIGURES.append(f"{node.kubelet.binary.name} simulator vs real: sim={sim} real={got}")
    return sim, got


def test_simulator_and_real_kubelet_look_the_same_to_the_plugin(node: Node) -> None:
    sim, got = _both(node)
    if sim["registrations_per_run"] != got["registrations_per_run"]:
        # A known race of the worker, not of either kubelet: a Register decided before the new
        # kubelet.sock and connected after it, then one more for its creation event (seen about
        # 2 runs in 55, on either side). One more pair of runs; a second mismatch fails.
        FIGURES.append(f"{node.kubelet.binary.name}: registrations differed once, ran again")
        sim, got = _both(node)
    # Timing decides a rejection and (rarely, on ext4) the inode: compared as facts, not counts.
    for key in ("left_behind", "readmitted", "registrations_per_run", "podresources_multiplicity"):
        assert sim[key] == got[key], key
    for key in ("pod_allocations", "ready"):
        assert sim["plugin"][key] == got["plugin"][key], key
    assert any(sim["same_inode"]) and any(got["same_inode"])
    if sim["messages"] and got["messages"]:  # a rejection reads the same in both
        assert sim["messages"] == got["messages"]
    assert sim["podresources_multiplicity"] == [2, 2]  # each ID once per NUMA node (0 and 1)
