"""The DRA component's ValidatingAdmissionPolicy on a real API server: a node's agent writes
only its own node's ResourceSlices (deployment/k8s/components/dra).

The agent's identity is what a DaemonSet pod gets: a ServiceAccount token bound to a pod that is
bound to a node, so the API server adds `authentication.kubernetes.io/node-name` to its user
info. Two such pods on two Nodes (objects only: nothing runs them) give tokens for node A and B.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dra.control_plane import ControlPlane

pytestmark = [pytest.mark.dra, pytest.mark.root]

COMPONENT = Path(__file__).resolve().parents[3] / "deployment" / "k8s" / "components" / "dra"
AGENT_SA = "rdma-shared-dp"
NODES = ("vap-node-a", "vap-node-b")
DRIVER = "vap.rdma-e2e.test"


def slice_for(node: str, name: str | None = None) -> dict[str, object]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name or f"{node}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "hca-0"}],
        },
    }


class Agents:
    """Kubeconfigs of the agent's ServiceAccount as each node's pod holds it, and unbound."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.kubeconfigs: dict[str, Path] = {}

    def token(self, *bound: str) -> str:
        return self.cp.kubectl("create", "token", AGENT_SA, "-n", "kube-system", *bound).strip()

    def add(self, label: str, token: str) -> Path:
        path = self.cp.dir / f"agent-{label}.kubeconfig"
        path.write_text(self.cp.kubeconfig_text(f"agent-{label}", token))
        self.kubeconfigs[label] = path
        return path

    def write(self, label: str, verb: str, obj: dict[str, object], dry_run: bool = False) -> str:
        """'' when the API server accepted it, else its error."""
        args = [verb, "-f", "-"] if verb != "delete" else ["delete", "-f", "-", "--wait=false"]
        if dry_run:
            args.append("--dry-run=server")
        try:
            self.cp.kubectl(*args, input=json.dumps(obj), kubeconfig=self.kubeconfigs[label])
        except RuntimeError as exc:
            return str(exc)
        return ""


@pytest.fixture
def agents(cluster: ControlPlane) -> Iterator[Agents]:
    cp = cluster
    cp.kubectl("apply", "-f", str(COMPONENT / "rbac.yaml"))
    cp.kubectl("apply", "-f", str(COMPONENT / "admission-policy.yaml"))
    a = Agents(cp)
    try:
        for node in NODES:
            cp.register_node(node)
            pod = cp.pod(f"agent-{node}")
            pod["metadata"]["namespace"] = "kube-system"
            pod["spec"].update({"nodeName": node, "serviceAccountName": AGENT_SA})
            cp.create(pod)
            token = a.token("--bound-object-kind=Pod", f"--bound-object-name=agent-{node}")
            a.add(node, token)
        a.add("unbound", a.token())
        yield a
    finally:
        for node in NODES:
            cp.kubectl("delete", "resourceslices", f"{node}-{DRIVER}", "--ignore-not-found")
            cp.kubectl(
                "delete",
                "pod",
                "-n",
                "kube-system",
                f"agent-{node}",
                "--force",
                "--grace-period=0",
                "--ignore-not-found",
            )
            cp.kubectl("delete", "node", node, "--ignore-not-found")
        cp.kubectl("delete", "-f", str(COMPONENT / "admission-policy.yaml"), "--ignore-not-found")


def test_a_nodes_agent_writes_only_its_own_nodes_slices(agents: Agents) -> None:
    a, b = NODES
    # A new policy takes a moment to be enforced: wait until a dry run is refused by it.
    agents.cp.wait_for(
        lambda: "ValidatingAdmissionPolicy" in agents.write(a, "create", slice_for(b), True),
        timeout=60,
        what="the policy refusing node A's agent a slice of node B",
    )
    # Its own node: create, update, delete.
    assert agents.write(a, "create", slice_for(a)) == ""
    mine = slice_for(a)
    mine["spec"]["pool"]["generation"] = 2  # type: ignore[index]
    assert agents.write(a, "apply", mine) == ""
    # Another node's: create refused, and the other node's agent cannot touch A's slice.
    refused = agents.write(a, "create", slice_for(b))
    assert f"the rdma-shared-dp agent on node {a} may not write node {b}'s" in refused, refused
    assert agents.cp.get("resourceslices", f"{b}-{DRIVER}") is None
    theirs = slice_for(a)
    theirs["spec"]["pool"]["generation"] = 3  # type: ignore[index]
    for verb in ("apply", "delete"):
        refused = agents.write(b, verb, theirs)
        assert f"on node {b} may not write node {a}'s" in refused, (verb, refused)
    # A token bound to no pod names no node: no slice at all.
    refused = agents.write("unbound", "create", slice_for(b, "unbound-slice"))
    assert "token names no node" in refused, refused
    assert agents.write(a, "delete", mine) == ""
    assert agents.cp.get("resourceslices", f"{a}-{DRIVER}") is None


def test_the_policy_leaves_other_users_alone(agents: Agents) -> None:
    """The admin (and so the kubelet and controllers, other users) is not matched by it."""
    b = NODES[1]
    agents.cp.create(slice_for(b))
    assert agents.cp.get("resourceslices", f"{b}-{DRIVER}") is not None
