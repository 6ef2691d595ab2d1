"""The real DRA driver against a real control plane (no kubelet: the test calls the driver's
DRAPlugin service the way the kubelet does, with the claims the real scheduler allocated).

What it shows: the driver's ResourceSlices pass the API server's validation with the content of
docs/dra.md; the DeviceClasses rendered from the config make the scheduler give an unchanged
device-plugin pod spec one share of the drop-in device, and the (N+1)-th pod stays Pending with
the scheduler's reason; a CEL claim picks one HCA; NodePrepareResources checks the real claims and
writes their CDI specs, NodeUnprepareResources removes them; an HCA removed and a port down reach
the slice; the API server stopped and started again: prepared claims keep answering, publishing
resumes. The full path with a kubelet and containerd (pods started with the char devices inside)
is not here yet.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.config import ResourceConfig, Selectors
from dra.device_classes import class_name, device_classes
from dra.feed import NodeState
from dra.names import claim_spec_file
from proto.dra.v1 import api_pb2 as v1
from proto.dra.v1 import api_pb2_grpc as v1_grpc
from tests.dra_rig import DRIVER, DriverProcess
from tests.e2e.dra.conftest import _unavailable
from tests.e2e.dra.control_plane import AGENT_TOKEN, KUBECTL, ControlPlane, binaries_dir
from tests.factories import make_candidate

pytestmark = [pytest.mark.dra, pytest.mark.root, pytest.mark.hard_timeout(900)]

NODE = "dra-driver-node"
TIMEOUT = 60
SHARES = 2
RESOURCE = ResourceConfig("hca_shared_devices_a", "rdma", SHARES, Selectors(vendors=("15b3",)))
HCAS = (make_candidate(0), make_candidate(1, numa_node=1))
STATE = NodeState((RESOURCE,), (RESOURCE,), HCAS)
DROP_IN = "res-hca-shared-devices-a"


def _missing() -> str | None:
    for cmd in ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager"):
        if not (binaries_dir() / cmd).exists():
            return f"{binaries_dir() / cmd} not built (bash .ci/install-dra-e2e.sh)"
    if not Path(KUBECTL).exists():
        return f"no kubectl at {KUBECTL} (bash .ci/install-tools.sh)"
    return None


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlane]:
    reason = _missing()
    if reason:
        _unavailable(reason)
    workdir = Path(tempfile.mkdtemp(prefix="drad-", dir="/tmp"))
    with ControlPlane(workdir, node=False) as plane:
        plane.register_node(NODE)
        # Admission taints a new Node not-ready until a node lifecycle controller or kubelet
        # clears it; there is neither here.
        plane.kubectl(
            "taint", "nodes", NODE, "node.kubernetes.io/not-ready:NoSchedule-", check=False
        )
        plane.apply(device_classes([RESOURCE], DRIVER))
        yield plane


@pytest.fixture
def driver(cp: ControlPlane) -> Iterator[DriverProcess]:
    token = cp.dir / "agent.token"
    token.write_text(AGENT_TOKEN)
    tmp = Path(tempfile.mkdtemp(prefix="drv-", dir="/tmp"))
    process = DriverProcess(
        tmp, cp.server, NODE, extra=["--token-file", str(token), "--resync", "1"]
    )
    process.start()
    process.feed(STATE)
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()
        cp.kubectl("delete", "pods", "--all", "--grace-period=0", "--force", "--wait=true")
        cp.kubectl("delete", "resourceclaimtemplates", "--all")
        cp.wait_for(lambda: not cp.items("resourceclaims", "default"), TIMEOUT, "claims gone")


def our_slices(cp: ControlPlane) -> list[dict[str, Any]]:
    return [s for s in cp.items("resourceslices") if s["spec"]["driver"] == DRIVER]


def devices(cp: ControlPlane) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in our_slices(cp) for d in s["spec"]["devices"]}


def scheduled_claim(cp: ControlPlane, pod: str) -> dict[str, Any]:
    def claim() -> dict[str, Any] | None:
        p = cp.get("pods", pod, "default") or {}
        status = p.get("status") or {}
        name = (status.get("extendedResourceClaimStatus") or {}).get("resourceClaimName")
        if not name:
            statuses = status.get("resourceClaimStatuses") or []
            name = statuses[0]["resourceClaimName"] if statuses else None
        c = cp.get("resourceclaims", name, "default") if name else None
        return c if c and (c.get("status") or {}).get("allocation") else None

    result: dict[str, Any] = cp.wait_for(claim, TIMEOUT, f"pod {pod}'s claim allocated")
    return result


def pending_reason(cp: ControlPlane, pod: str) -> str:
    def message() -> str | None:
        for c in ((cp.get("pods", pod, "default") or {}).get("status") or {}).get("conditions", []):
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("message"):
                return f"{c['reason']}: {c['message']}"
        return None

    result: str = cp.wait_for(message, TIMEOUT, f"pod {pod} unschedulable")
    return result


def prepare(driver: DriverProcess, claim: dict[str, Any]) -> v1.NodePrepareResourceResponse:
    meta = claim["metadata"]
    ref = v1.Claim(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
    with grpc.insecure_channel(f"unix://{driver.dra_sock}") as channel:
        answer = v1_grpc.DRAPluginStub(channel).NodePrepareResources(
            v1.NodePrepareResourcesRequest(claims=[ref]), timeout=30
        )
    result: v1.NodePrepareResourceResponse = answer.claims[meta["uid"]]
    return result


def unprepare(driver: DriverProcess, claim: dict[str, Any]) -> str:
    meta = claim["metadata"]
    ref = v1.Claim(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
    with grpc.insecure_channel(f"unix://{driver.dra_sock}") as channel:
        answer = v1_grpc.DRAPluginStub(channel).NodeUnprepareResources(
            v1.NodeUnprepareResourcesRequest(claims=[ref]), timeout=30
        )
    return str(answer.claims[meta["uid"]].error)


def test_slices_pass_validation_with_their_content(cp: ControlPlane, driver: DriverProcess) -> None:
    want = {DROP_IN, "hca-0000-03-00-0", "hca-0000-04-00-0"}
    got = cp.wait_for(lambda: set(devices(cp)) == want and devices(cp), TIMEOUT, "our devices")
    (slice_,) = our_slices(cp)
    node_uid = cp.get("nodes", NODE)["metadata"]["uid"]  # type: ignore[index]
    assert slice_["metadata"]["ownerReferences"][0]["uid"] == node_uid
    assert slice_["spec"]["pool"]["name"] == NODE and slice_["spec"]["nodeName"] == NODE
    assert got[DROP_IN]["allowMultipleAllocations"] is True
    assert got[DROP_IN]["capacity"]["shares"]["value"] == str(SHARES)
    hca = got["hca-0000-04-00-0"]["attributes"]
    assert hca["numaNode"] == {"int": 1} and hca["rdmaDevice"] == {"string": "mlx5_1"}
    # A restart with nothing changed writes nothing: the slice keeps its resourceVersion.
    version = slice_["metadata"]["resourceVersion"]
    driver.kill()
    driver.statuses.clear()
    driver.start()
    driver.feed(STATE)
    cp.wait_for(lambda: driver.last().get("published"), TIMEOUT, "published after restart")
    (again,) = our_slices(cp)
    assert again["metadata"]["resourceVersion"] == version


def test_unchanged_pod_spec_gets_a_share_and_the_driver_prepares_it(
    cp: ControlPlane, driver: DriverProcess
) -> None:
    cp.wait_for(lambda: DROP_IN in devices(cp), TIMEOUT, "the drop-in device")
    limits = {RESOURCE.full_name: 1}
    claims = []
    for name in ("p1", "p2"):
        cp.create(cp.pod(name, limits=limits))
        claim = scheduled_claim(cp, name)
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert (result["driver"], result["pool"], result["device"]) == (DRIVER, NODE, DROP_IN)
        answer = prepare(driver, claim)
        assert answer.error == ""
        (device,) = answer.devices
        uid = claim["metadata"]["uid"]
        assert list(device.cdi_device_ids) == [f"{DRIVER}/claim={uid}-{DROP_IN}"]
        assert device.share_id == result["shareID"]
        spec = json.loads((driver.tmp / "cdi" / claim_spec_file(uid)).read_text())
        paths = {n["path"] for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"]}
        assert {"/dev/infiniband/uverbs0", "/dev/infiniband/uverbs1"} <= paths
        claims.append(claim)
    cp.create(cp.pod("p3", limits=limits))
    why = pending_reason(cp, "p3")
    assert "cannot allocate all claims" in why, why
    for claim in claims:
        assert unprepare(driver, claim) == ""
        assert not (driver.tmp / "cdi" / claim_spec_file(claim["metadata"]["uid"])).exists()
    assert (
        class_name(RESOURCE, DRIVER)
        == claims[0]["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"]
    )


def test_cel_claim_picks_one_hca_and_a_stale_claim_is_refused(
    cp: ControlPlane, driver: DriverProcess
) -> None:
    cp.wait_for(lambda: "hca-0000-04-00-0" in devices(cp), TIMEOUT, "the HCA devices")
    cel = f'device.attributes["{DRIVER}"].rdmaDevice == "mlx5_1"'
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "mlx5-1", "namespace": "default"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "hca",
                            "exactly": {
                                "deviceClassName": DRIVER,
                                "selectors": [{"cel": {"expression": cel}}],
                            },
                        }
                    ]
                }
            }
        },
    }
    cp.apply(template)
    cp.create(cp.pod("t1", claims=[{"name": "hca", "resourceClaimTemplateName": "mlx5-1"}]))
    claim = scheduled_claim(cp, "t1")
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert result["device"] == "hca-0000-04-00-0"
    stale = json.loads(json.dumps(claim))
    stale["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    assert "stale" in prepare(driver, stale).error
    answer = prepare(driver, claim)
    assert [d.device_name for d in answer.devices] == ["hca-0000-04-00-0"]
    assert list(answer.devices[0].request_names) == ["hca"]
    assert unprepare(driver, claim) == ""


def test_device_changes_reach_the_slice(cp: ControlPlane, driver: DriverProcess) -> None:
    cp.wait_for(lambda: len(devices(cp)) == 3, TIMEOUT, "three devices")
    down = (make_candidate(0), make_candidate(1, numa_node=1, port_state="DOWN"))
    driver.feed(NodeState((RESOURCE,), (RESOURCE,), down))
    tainted = cp.wait_for(
        lambda: (d := devices(cp).get("hca-0000-04-00-0")) and d.get("taints") and d,
        TIMEOUT,
        "the port-down HCA tainted",
    )
    assert tainted["taints"][0]["effect"] == "NoSchedule"
    driver.feed(NodeState((RESOURCE,), (RESOURCE,), HCAS[:1]))
    cp.wait_for(lambda: "hca-0000-04-00-0" not in devices(cp), TIMEOUT, "the removed HCA gone")
    driver.feed(STATE)
    cp.wait_for(lambda: len(devices(cp)) == 3, TIMEOUT, "back to three devices")


def test_api_server_stopped_and_started(cp: ControlPlane, driver: DriverProcess) -> None:
    cp.wait_for(lambda: DROP_IN in devices(cp), TIMEOUT, "the drop-in device")
    cp.create(cp.pod("s1", limits={RESOURCE.full_name: 1}))
    claim = scheduled_claim(cp, "s1")
    first = prepare(driver, claim)
    assert first.error == ""
    apiserver = cp.processes["kube-apiserver"]
    apiserver.stop()
    try:
        driver.feed(NodeState((RESOURCE,), (RESOURCE,), HCAS[:1]))
        cp_down = cp.wait_for(
            lambda: "Unreachable" in driver.last().get("publish_error", "") and driver.last(),
            TIMEOUT,
            "the driver says the API server is unreachable",
        )
        assert not cp_down["published"]
        assert prepare(driver, claim) == first  # a prepared claim answers without the server
    finally:
        apiserver.start()
    cp.wait_for(lambda: control_plane_ready(cp), 120, "the API server back")
    cp.wait_for(lambda: "hca-0000-04-00-0" not in devices(cp), 120, "publishing resumed")
    assert unprepare(driver, claim) == ""
    driver.feed(STATE)


def control_plane_ready(cp: ControlPlane) -> bool:
    return cp.kubectl("get", "--raw", "/readyz", check=False).strip() == "ok"
