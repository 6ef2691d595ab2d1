"""The DRA driver's figures in the supervisor: totals over restarts, /readyz reasons."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from supervisor.metrics.dra import DraTotals, not_ready
from supervisor.metrics.http_server import Probes


def status(pid: int, prepared_ok: int, writes: int, **extra: Any) -> dict[str, Any]:
    return {
        "pid": pid,
        "registered": True,
        "published": True,
        "devices": 3,
        "prepared_claims": 1,
        "counters": {
            "claims": {"prepare:ok": prepared_ok},
            "latency": {"prepare": {"buckets": [1] * 10, "count": 1, "sum": 0.004}},
            "slice_writes": {"create": writes},
            "api_errors": {"get_claim": 2},
        },
        **extra,
    }


def _scrape(totals: DraTotals) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(totals)
    return generate_latest(registry).decode()


def test_counters_add_up_over_incarnations() -> None:
    totals = DraTotals()
    totals.update(status(10, prepared_ok=3, writes=1))
    totals.update(status(10, prepared_ok=5, writes=1))
    totals.update(status(11, prepared_ok=2, writes=0))  # restarted: its own totals from 0
    text = _scrape(totals)
    assert 'rdma_shared_dp_dra_claims_total{call="prepare",result="ok"} 7.0' in text
    assert 'rdma_shared_dp_dra_slice_writes_total{verb="create"} 1.0' in text
    assert 'rdma_shared_dp_dra_api_errors_total{call="get_claim"} 4.0' in text
    assert 'rdma_shared_dp_dra_call_duration_seconds_count{call="prepare"} 2.0' in text
    assert "rdma_shared_dp_dra_registered 1.0" in text
    assert "rdma_shared_dp_dra_prepared_claims 1.0" in text
    assert totals.restarts == 1


def test_readyz_says_why_the_driver_is_not_ready() -> None:
    assert not_ready(None) == "DRA driver: starting"
    assert "not registered (refused)" in str(
        not_ready({"registered": False, "registration_error": "refused"})
    )
    why = not_ready({"registered": True, "published": False, "publish_error": "503 stopped"})
    assert why == "DRA driver: ResourceSlices not published (503 stopped)"
    assert not_ready({"registered": True, "published": True}) is None
    probes = Probes()
    probes.set_resources({"rdma/a": None})
    assert probes.ready()[0]
    probes.set_part("dra", why)
    ok, text = probes.ready()
    assert not ok and "503 stopped" in text
    probes.set_part("dra", None)
    assert probes.ready()[0]


def test_the_dra_families_are_what_is_exported() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from supervisor.metrics.families import DRA_FAMILIES, PREFIX

    totals = DraTotals()
    totals.update(status(1, prepared_ok=1, writes=1))
    families = {f.name: f for f in text_string_to_metric_families(_scrape(totals))}
    exported = {n + "_total" if f.type == "counter" else n for n, f in families.items()}
    assert exported == {PREFIX + short for short in DRA_FAMILIES}
    for short, (kind, labels, _) in DRA_FAMILIES.items():
        family = families[PREFIX + short.removesuffix("_total")]
        assert family.type == kind, short
        assert {k for s in family.samples for k in s.labels} - {"le"} == set(labels), short
