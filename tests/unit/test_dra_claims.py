"""Claim checks, the prepared-claims checkpoint, and prepare/unprepare on a real folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dra import claim_cdi
from dra.checkpoint import Checkpoint, PreparedClaim, PreparedDevice, decode, encode
from dra.claims import ClaimError, ClaimRef, results
from dra.counters import DriverCounters
from dra.devices import build
from dra.driver import Driver
from dra.kube_api import ApiError
from dra.names import claim_spec_file
from tests.factories import make_candidate, make_resource

DRIVER = "rdma.shared-dp.io"
POOL = "node-1"
REF = ClaimRef("ns", "claim-a", "uid-a")


def claim(uid: str = "uid-a", *results_: dict[str, Any], allocated: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "claim-a", "namespace": "ns", "uid": uid}}
    if allocated:
        body["status"] = {"allocation": {"devices": {"results": list(results_)}}}
    return body


def result(device: str, pool: str = POOL, driver: str = DRIVER, **extra: str) -> dict[str, Any]:
    return {"request": "req", "driver": driver, "pool": pool, "device": device, **extra}


KNOWN = {"res-hca-a", "hca-0000-03-00-0"}


def test_results_of_our_driver_are_taken() -> None:
    body = claim(
        "uid-a",
        result("res-hca-a", shareID="s-1"),
        result("gpu-0", driver="gpu.example.com", pool="other"),
    )
    assert [(a.device, a.share_id) for a in results(body, REF, DRIVER, POOL, KNOWN)] == [
        ("res-hca-a", "s-1")
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (claim("uid-b", result("res-hca-a")), "has UID uid-b, the kubelet asked for uid-a"),
        (claim("uid-a", allocated=False), "is not allocated"),
        (claim("uid-a", result("x", driver="gpu.example.com")), "allocates no device of driver"),
        (claim("uid-a", result("res-hca-a", pool="node-2")), "is in pool 'node-2'"),
        (claim("uid-a", result("res-hca-z")), "'res-hca-z' is not published on this node"),
    ],
    ids=["stale-uid", "unallocated", "other-driver", "other-pool", "unknown-device"],
)
def test_claims_that_are_not_ours_to_prepare_are_refused(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ClaimError, match=message):
        results(body, REF, DRIVER, POOL, KNOWN)


def test_checkpoint_round_trip_and_a_broken_file_is_kept_aside(tmp_path: Path) -> None:
    claims = {
        "u1": PreparedClaim("ns", "c", (PreparedDevice("r", POOL, "res-a", "", ("k=u1-res-a",)),))
    }
    assert decode(encode(claims)) == claims
    point = Checkpoint(str(tmp_path))
    assert point.load() == {}
    point.save(claims)
    assert Checkpoint(str(tmp_path)).load() == claims
    (tmp_path / "checkpoint.json").write_text('{"version": 1, "claims": {"u": {}}}')
    assert point.load() == {}
    assert (tmp_path / "checkpoint.json.bad").exists()
    assert not (tmp_path / "checkpoint.json").exists()


class Claims:
    """The API server's claims, as the driver reads them (a dict; errors on demand)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0
        self.down = False

    def get(self, namespace: str, name: str) -> Mapping[str, Any]:
        self.reads += 1
        if self.down:
            raise ApiError(0, "Unreachable", "connection refused")
        try:
            return self.objects[(namespace, name)]
        except KeyError:
            raise ApiError(404, "NotFound", f"{name} not found") from None


def _driver(tmp_path: Path, api: Claims) -> Driver:
    resource = make_resource("hca_a", "rdma", count=4)
    driver = Driver(
        DRIVER,
        POOL,
        api.get,
        str(tmp_path / "cdi"),
        Checkpoint(str(tmp_path / "state")),
        DriverCounters(),
    )
    driver.set_devices(build([resource], [resource], [make_candidate(0), make_candidate(1)]))
    return driver


def test_prepare_writes_a_cdi_spec_and_is_idempotent(tmp_path: Path) -> None:
    api = Claims()
    api.objects[("ns", "claim-a")] = claim("uid-a", result("res-hca-a", shareID="s1"))
    driver = _driver(tmp_path, api)
    first = driver.prepare([REF])["uid-a"]
    assert first.error == ""
    (device,) = first.devices
    assert device.cdi_ids == (f"{DRIVER}/claim=uid-a-res-hca-a",)
    assert device.share_id == "s1"
    spec = json.loads((tmp_path / "cdi" / claim_spec_file("uid-a")).read_text())
    assert spec["kind"] == claim_cdi.kind(DRIVER)
    paths = [n["path"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]]
    assert paths == [
        f"/dev/infiniband/{n}" for n in ("uverbs0", "umad0", "issm0", "uverbs1", "umad1", "issm1")
    ]
    assert driver.prepare([REF])["uid-a"] == first
    assert api.reads == 1  # the second answer came from the checkpoint
    # A new incarnation answers from the checkpoint on disk.
    again = _driver(tmp_path, api)
    assert again.prepare([REF])["uid-a"] == first and api.reads == 1


def test_errors_are_per_claim_and_nothing_is_recorded(tmp_path: Path) -> None:
    api = Claims()
    api.objects[("ns", "claim-a")] = claim("uid-a", result("res-hca-a"))
    driver = _driver(tmp_path, api)
    missing = ClaimRef("ns", "gone", "uid-g")
    out = driver.prepare([REF, missing])
    assert out["uid-a"].error == ""
    assert "cannot read claim ns/gone from the API server: 404 NotFound" in out["uid-g"].error
    api.down = True
    late = ClaimRef("ns", "claim-b", "uid-b")
    assert "Unreachable" in driver.prepare([late])["uid-b"].error
    # Prepared claims keep working while the API server is away.
    assert driver.prepare([REF])["uid-a"] == out["uid-a"]
    assert driver.prepared_count() == 1
    assert driver.counters.to_json()["claims"] == {"prepare:ok": 2, "prepare:error": 2}


def test_unprepare_removes_the_spec_and_is_idempotent(tmp_path: Path) -> None:
    api = Claims()
    api.objects[("ns", "claim-a")] = claim("uid-a", result("res-hca-a"))
    driver = _driver(tmp_path, api)
    driver.prepare([REF])
    spec = tmp_path / "cdi" / claim_spec_file("uid-a")
    assert spec.exists()
    assert driver.unprepare([REF]) == {"uid-a": ""}
    assert not spec.exists() and driver.prepared_count() == 0
    assert driver.unprepare([REF, ClaimRef("ns", "never", "uid-n")]) == {"uid-a": "", "uid-n": ""}
    assert _driver(tmp_path, api).prepared_count() == 0


def test_reconcile_removes_specs_the_checkpoint_does_not_hold(tmp_path: Path) -> None:
    api = Claims()
    api.objects[("ns", "claim-a")] = claim("uid-a", result("res-hca-a"))
    driver = _driver(tmp_path, api)
    driver.prepare([REF])
    cdi = tmp_path / "cdi"
    (cdi / claim_spec_file("uid-half")).write_text("{}")
    (cdi / "someone-else.json").write_text("{}")
    assert _driver(tmp_path, api).reconcile() == ["uid-half"]
    assert sorted(p.name for p in cdi.iterdir()) == sorted(
        [claim_spec_file("uid-a"), "someone-else.json"]
    )
