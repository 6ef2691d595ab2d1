"""The whole path with a real kubelet and containerd 2: the agent in DRA mode (`run --dra all`)
on the suite's node (tests/e2e/dra/control_plane.py), an unchanged device-plugin pod spec
scheduled through the DeviceClass, prepared by the kubelet's call to our driver, and started with
the HCAs' char devices inside its container; deleting the pod unprepares it and removes the CDI
spec, also after the agent was killed with SIGKILL while the pod ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.config import ResourceConfig, Selectors
from dra.device_classes import device_classes
from dra.names import CLAIM_SPEC_PREFIX, DEFAULT_DRIVER_NAME
from tests.e2e.dra.control_plane import AGENT_TOKEN, NODE_NAME, ControlPlane
from tests.e2e.kubelet.rig import PREFIX, REPO, _stop_pid, container_view, pod_manifest

pytestmark = [pytest.mark.dra, pytest.mark.root, pytest.mark.hard_timeout(900)]

TIMEOUT = 90
RESOURCE = ResourceConfig("hca_dra", PREFIX, 2, Selectors(vendors=("15b3",)))


class Agent:
    """`rdma-shared-dp run --dra all` against the suite's kubelet, API server and host tree."""

    def __init__(self, cp: ControlPlane, rescan: int = 300) -> None:
        assert cp.node is not None
        self.cp = cp
        self.node = cp.node
        self.dir = Path(tempfile.mkdtemp(prefix="agent-", dir="/tmp"))
        self.config = self.dir / "config.json"
        self.config.write_text(
            json.dumps({"periodicUpdateInterval": rescan, "configList": [RESOURCE.to_json()]})
        )
        self.token = self.dir / "token"
        self.token.write_text(AGENT_TOKEN)
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        kubelet = self.node.kubelet
        args = [
            sys.executable, "-m", "supervisor", "run", f"--config-file={self.config}",
            f"--host-root={self.node.host_root}",
            f"--device-plugin-dir={kubelet.device_plugin_dir}",
            f"--plugins-registry-dir={kubelet.plugins_registry_dir}",
            f"--cdi-dir={self.node.cdi_dir}", f"--runtime-dir={self.dir / 'run'}",
            "--metrics-address=", "--uevent-source=off", "--log-level=debug",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDMA_SHARED_DP_")}
        env |= {
            "PYTHONPATH": str(REPO),
            "NODE_NAME": NODE_NAME,
            "RDMA_SHARED_DP_DRA": "all",
            "RDMA_SHARED_DP_DRA_API_SERVER": self.cp.server,
            "RDMA_SHARED_DP_DRA_TOKEN_FILE": str(self.token),
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=log, env=env, cwd=REPO, start_new_session=True
            )

    def dra_child(self) -> psutil.Process | None:
        if self.proc is None:
            return None
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "dra" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, grace=20)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def agent(cluster: ControlPlane) -> Iterator[Agent]:
    cluster.apply(device_classes([RESOURCE], DEFAULT_DRIVER_NAME))
    running = Agent(cluster, rescan=1)  # device changes seen by the periodic rescan
    running.start()
    try:
        yield running
    finally:
        cluster.kubectl("delete", "pods", "--all", "--grace-period=0", "--force", "--wait=true")
        running.stop()
        for s in cluster.items("resourceslices"):
            if s["spec"]["driver"] == DEFAULT_DRIVER_NAME:
                cluster.kubectl("delete", "resourceslice", s["metadata"]["name"], check=False)
        for c in device_classes([RESOURCE], DEFAULT_DRIVER_NAME):
            cluster.kubectl("delete", "deviceclass", c["metadata"]["name"], check=False)


def claim_specs(cp: ControlPlane) -> list[str]:
    assert cp.node is not None
    return sorted(p.name for p in cp.node.cdi_dir.glob(f"{CLAIM_SPEC_PREFIX}*.json"))


def running(cp: ControlPlane, name: str) -> dict[str, Any] | None:
    pod = cp.get("pods", name, "default") or {}
    return pod if (pod.get("status") or {}).get("phase") == "Running" else None


def test_unchanged_pod_spec_runs_with_the_char_devices_and_deletion_cleans_up(
    cluster: ControlPlane, agent: Agent
) -> None:
    cp = cluster
    assert cp.node is not None
    cp.wait_for(
        lambda: any(s["spec"]["driver"] == DEFAULT_DRIVER_NAME for s in cp.items("resourceslices")),
        TIMEOUT,
        f"the agent's slices\n{agent.tail()}",
    )
    out = agent.dir / "p1-out"
    cp.create(pod_manifest("p1", {RESOURCE.resource_name: 1}, out))
    cp.wait_for(lambda: running(cp, "p1"), TIMEOUT, f"p1 running\n{agent.tail()}")
    cp.wait_for(lambda: (out / "view").exists(), TIMEOUT, "the container's view")
    assert container_view(out) == cp.node.expected_view()
    (spec,) = claim_specs(cp)
    # The agent is killed while the pod runs; its restart must still clean up after deletion.
    child = cp.wait_for(agent.dra_child, 30, "the DRA child")
    os.kill(agent.proc.pid if agent.proc else 0, signal.SIGKILL)
    child.kill()
    agent.start()
    cp.wait_for(agent.dra_child, 60, "the DRA child of the new agent")
    cp.kubectl("delete", "pod", "p1", "--wait=false")
    cp.wait_for(lambda: spec not in claim_specs(cp), TIMEOUT, f"the CDI spec gone\n{agent.tail()}")
    cp.wait_for(lambda: cp.get("pods", "p1", "default") is None, TIMEOUT, "p1 gone")


def ours(cp: ControlPlane) -> list[dict[str, Any]]:
    return [s for s in cp.items("resourceslices") if s["spec"]["driver"] == DEFAULT_DRIVER_NAME]


def test_kubelet_restart_with_a_pod_running_then_deletion_cleans_up(
    cluster: ControlPlane, agent: Agent
) -> None:
    cp = cluster
    assert cp.node is not None
    cp.wait_for(lambda: ours(cp), TIMEOUT, f"the agent's slices\n{agent.tail()}")
    out = agent.dir / "k1-out"
    cp.create(pod_manifest("k1", {RESOURCE.resource_name: 1}, out))
    cp.wait_for(lambda: running(cp, "k1"), TIMEOUT, f"k1 running\n{agent.tail()}")
    (spec,) = claim_specs(cp)
    before = {s["metadata"]["uid"] for s in ours(cp)}
    kubelet = cp.node.kubelet
    kubelet.stop()
    kubelet.start()
    cp.wait_for(cp.node_ready, TIMEOUT, "the node Ready again")
    # The new kubelet deletes the node's slices at its start; the driver publishes them again.
    cp.wait_for(
        lambda: (now := {s["metadata"]["uid"] for s in ours(cp)}) and now != before,
        TIMEOUT,
        f"slices published again after the kubelet's restart\n{agent.tail()}",
    )
    assert running(cp, "k1") is not None
    cp.kubectl("delete", "pod", "k1", "--wait=false")
    cp.wait_for(lambda: spec not in claim_specs(cp), TIMEOUT, f"the CDI spec gone\n{agent.tail()}")


def test_a_port_going_down_on_the_node_reaches_the_slice(
    cluster: ControlPlane, agent: Agent
) -> None:
    cp = cluster
    assert cp.node is not None
    name = "hca-0000-3c-00-0"  # mlx5_1 of the suite's node

    def device() -> dict[str, Any]:
        for s in ours(cp):
            for d in s["spec"]["devices"]:
                if d["name"] == name:
                    return dict(d)
        return {}

    cp.wait_for(lambda: device(), TIMEOUT, f"{name} published\n{agent.tail()}")
    assert "taints" not in device()
    cp.node.tree.set_port_state("mlx5_1", 1, "DOWN")
    try:
        tainted = cp.wait_for(lambda: device().get("taints"), TIMEOUT, f"{name} tainted")
        assert tainted[0]["effect"] == "NoSchedule"
    finally:
        cp.node.tree.set_port_state("mlx5_1", 1, "ACTIVE")
    cp.wait_for(lambda: device() and "taints" not in device(), TIMEOUT, f"{name} untainted")
