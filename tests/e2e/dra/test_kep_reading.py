"""What the real control plane does with shares of a multi-allocatable device (docs/dra.md,
"What the control plane does (measured)"): hand-written slice and classes (objects.py), no
driver. This decides the driver's design; it fails if a Kubernetes release changes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.dra import objects as o
from tests.e2e.dra.conftest import FIGURES
from tests.e2e.dra.control_plane import NODE_NAME, ControlPlane

pytestmark = [pytest.mark.dra, pytest.mark.root, pytest.mark.hard_timeout(600)]

TIMEOUT = 60


@pytest.fixture
def cp(cluster: ControlPlane) -> Iterator[ControlPlane]:
    cluster.apply([o.resource_slice(NODE_NAME), *o.device_classes()])
    try:
        yield cluster
    finally:
        cluster.kubectl("delete", "pods", "--all", "--grace-period=0", "--force", "--wait=true")
        cluster.kubectl("delete", "resourceclaimtemplates", "--all")
        cluster.wait_for(
            lambda: not cluster.items("resourceclaims", "default"),
            timeout=TIMEOUT,
            what="every claim gone with its pod",
        )


def pod(cp: ControlPlane, name: str) -> dict[str, Any]:
    got = cp.get("pods", name, "default")
    assert got is not None, f"pod {name} is gone"
    return got


def scheduled(cp: ControlPlane, name: str) -> dict[str, Any]:
    def bound() -> dict[str, Any] | None:
        p = pod(cp, name)
        return p if p["spec"].get("nodeName") else None

    result: dict[str, Any] = cp.wait_for(bound, timeout=TIMEOUT, what=f"pod {name} scheduled")
    return result


def unschedulable(cp: ControlPlane, name: str) -> str:
    """The scheduler's message on the pod's PodScheduled=False condition."""

    def message() -> str | None:
        for c in (pod(cp, name).get("status") or {}).get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("message"):
                return str(c["reason"]) + ": " + str(c["message"])
        return None

    result: str = cp.wait_for(message, timeout=TIMEOUT, what=f"pod {name} unschedulable")
    return result


def kubelet_warning(cp: ControlPlane, name: str, reason: str) -> str:
    # By UID: an earlier test's pod of the same name (the cluster is shared) has events too.
    uid = pod(cp, name)["metadata"]["uid"]

    def message() -> str | None:
        for e in cp.events(name=name):
            if e["reason"] == reason and e.get("involvedObject", {}).get("uid") == uid:
                return str(e["message"])
        return None

    result: str = cp.wait_for(message, timeout=TIMEOUT, what=f"{reason} event of pod {name}")
    return result


def extended_claim(cp: ControlPlane, p: dict[str, Any]) -> dict[str, Any]:
    """The claim the scheduler made for the pod's extended resources, once allocated."""
    status = (p.get("status") or {}).get("extendedResourceClaimStatus") or {}
    name = status.get("resourceClaimName")
    assert name, f"no extendedResourceClaimStatus on {p['metadata']['name']}: {p.get('status')}"
    claim = cp.wait_for(
        lambda: (
            (c := cp.get("resourceclaims", name, "default"))
            and c.get("status", {}).get("allocation")
            and c
        ),
        timeout=TIMEOUT,
        what=f"claim {name} allocated",
    )
    assert isinstance(claim, dict)
    return claim


def results(claim: dict[str, Any]) -> list[dict[str, Any]]:
    return list(claim["status"]["allocation"]["devices"]["results"])


def test_an_unchanged_pod_gets_one_share_per_extended_resource_unit(cp: ControlPlane) -> None:
    limits = {o.EXTENDED_RESOURCE: 1}
    claims = []
    for name in ("p1", "p2"):
        cp.create(cp.pod(name, limits=limits))
        p = scheduled(cp, name)
        assert p["spec"]["nodeName"] == NODE_NAME
        claim = extended_claim(cp, p)
        # The scheduler's own claim: annotated, owned by the pod, one request per container.
        assert (
            claim["metadata"]["annotations"]["resource.kubernetes.io/extended-resource-claim"]
            == "true"
        )
        assert claim["metadata"]["generateName"] == f"{name}-extended-resources-"
        assert [r["kind"] for r in claim["metadata"]["ownerReferences"]] == ["Pod"]
        (request,) = claim["spec"]["devices"]["requests"]
        assert request["name"] == "container-0-request-0"
        assert request["exactly"]["deviceClassName"] == o.DROP_IN_CLASS
        assert request["exactly"]["count"] == 1
        mapping = p["status"]["extendedResourceClaimStatus"]["requestMappings"]
        assert mapping == [
            {
                "containerName": "main",
                "resourceName": o.EXTENDED_RESOURCE,
                "requestName": "container-0-request-0",
            }
        ]
        (result,) = results(claim)
        assert result["device"] == o.DROP_IN_DEVICE
        assert result["driver"] == o.DRIVER and result["pool"] == NODE_NAME
        assert result["consumedCapacity"] == {"shares": "1"}
        assert result.get("shareID")
        claims.append(claim)
    share_ids = {results(c)[0]["shareID"] for c in claims}
    assert len(share_ids) == 2, "two pods on one device get distinct shares"
    if cp.node is not None:
        # The kubelet takes the claim to the driver before the sandbox; with no driver, it says so.
        why = kubelet_warning(cp, "p1", "FailedPrepareDynamicResources")
        FIGURES.append(f"kubelet, no driver registered: {why}")
        assert f"DRA driver {o.DRIVER} is not registered" in why, why
        assert pod(cp, "p1")["status"]["phase"] == "Pending"

    # The third unit does not fit: Pending, with the scheduler's reason.
    cp.create(cp.pod("p3", limits=limits))
    why = unschedulable(cp, "p3")
    FIGURES.append(f"third pod on a 2-share device: {why}")
    assert why.startswith("Unschedulable: 0/1 nodes are available"), why
    assert "cannot allocate all claims" in why, why
    # A share set free is taken by the waiting pod.
    cp.kubectl("delete", "pod", "p1", "--grace-period=0", "--force")
    p3 = scheduled(cp, "p3")
    assert results(extended_claim(cp, p3))[0]["device"] == o.DROP_IN_DEVICE


def test_an_extended_resource_request_for_two_does_not_take_two_shares(cp: ControlPlane) -> None:
    """`limits: {name: 2}` becomes a request for 2 devices (count 2, no capacity request), and
    one allocation never gives the same device twice: with one multi-allocatable device it is
    unschedulable, although both shares are free."""
    cp.create(cp.pod("q2", limits={o.EXTENDED_RESOURCE: 2}))
    why = unschedulable(cp, "q2")
    FIGURES.append(f"extended resource 2 on one 2-share device: {why}")
    assert "cannot allocate all claims" in why, why
    # The shares are free: a pod asking for one is scheduled next to the waiting one.
    cp.create(cp.pod("q1", limits={o.EXTENDED_RESOURCE: 1}))
    (result,) = results(extended_claim(cp, scheduled(cp, "q1")))
    assert result["consumedCapacity"] == {"shares": "1"}
    assert pod(cp, "q2")["spec"].get("nodeName") is None


def test_a_claim_asks_for_two_shares_through_capacity(cp: ControlPlane) -> None:
    """What does take two shares: a claim's `capacity.requests` (one result, shares 2)."""
    cp.create(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "two-shares", "namespace": "default"},
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "hca",
                            "exactly": {
                                "deviceClassName": o.DROP_IN_CLASS,
                                "capacity": {"requests": {"shares": "2"}},
                            },
                        }
                    ]
                }
            },
        }
    )
    try:
        cp.create(cp.pod("c2", claims=[{"name": "hca", "resourceClaimName": "two-shares"}]))
        scheduled(cp, "c2")
        claim = cp.wait_for(
            lambda: (
                (c := cp.get("resourceclaims", "two-shares", "default"))
                and c.get("status", {}).get("allocation")
                and c
            ),
            timeout=TIMEOUT,
            what="claim two-shares allocated",
        )
        (result,) = results(claim)
        assert result["device"] == o.DROP_IN_DEVICE
        assert result["consumedCapacity"] == {"shares": "2"}
        # The device is full: an unchanged pod's one unit waits.
        cp.create(cp.pod("q1", limits={o.EXTENDED_RESOURCE: 1}))
        assert "cannot allocate all claims" in unschedulable(cp, "q1")
    finally:
        cp.kubectl("delete", "pods", "--all", "--grace-period=0", "--force")
        cp.kubectl("delete", "resourceclaim", "two-shares", "--wait=false")


def test_a_claim_template_selects_one_hca_by_cel(cp: ControlPlane) -> None:
    cp.apply(o.claim_template("hca0", "mlx5_0"))
    cp.create(cp.pod("t1", claims=[{"name": "hca", "resourceClaimTemplateName": "hca0"}]))
    p = scheduled(cp, "t1")
    (status,) = p["status"]["resourceClaimStatuses"]
    claim = cp.wait_for(
        lambda: (
            (c := cp.get("resourceclaims", status["resourceClaimName"], "default"))
            and c.get("status", {}).get("allocation")
            and c
        ),
        timeout=TIMEOUT,
        what="the template's claim allocated",
    )
    (result,) = results(claim)
    assert result["device"] == "mlx5-0"
    assert result["request"] == "hca"
    assert result["consumedCapacity"] == {"shares": "1"}
