"""The DRA process's REST client: rate limit, errors, token per request."""

from __future__ import annotations

from pathlib import Path

import pytest

from dra.kube_api import ApiConfig, ApiError, KubeApi, RateLimiter
from tests.dra_api import FakeApiServer


def test_rate_limiter_lets_a_burst_through_then_spaces_calls() -> None:
    now = [0.0]
    limiter = RateLimiter(qps=5, burst=2, clock=lambda: now[0])
    assert [limiter.delay(), limiter.delay()] == [0.0, 0.0]
    wait = limiter.delay()
    assert 0.2 <= wait <= 0.2 * 1.2  # one token short at 5/s, stretched by at most 20 %
    now[0] += 10  # tokens refill up to the burst, not beyond
    assert [limiter.delay(), limiter.delay()] == [0.0, 0.0]
    assert limiter.delay() > 0


def test_errors_carry_status_and_reason_and_say_what_to_retry(tmp_path: Path) -> None:
    api = FakeApiServer()
    try:
        client = KubeApi(ApiConfig(server=api.url))
        with pytest.raises(ApiError) as err:
            client.get_claim("ns", "missing")
        assert (err.value.status, err.value.reason) == (404, "NotFound")
        assert not err.value.retriable
        api.down = True
        with pytest.raises(ApiError) as err:
            client.list_slices("d", "n")
        assert err.value.status == 503 and err.value.retriable
    finally:
        api.close()
    gone = KubeApi(ApiConfig(server=api.url, timeout=2))
    with pytest.raises(ApiError) as err:
        gone.get_node("n")
    assert err.value.status == 0 and err.value.retriable and "unreachable" in str(err.value)
    no_token = KubeApi(ApiConfig(server=api.url, token_file=str(tmp_path / "absent")))
    with pytest.raises(ApiError, match="NoToken"):
        no_token.get_node("n")


def test_slice_calls_round_trip() -> None:
    api = FakeApiServer()
    try:
        client = KubeApi(ApiConfig(server=api.url))
        body = {
            "metadata": {"generateName": "n-d-"},
            "spec": {"driver": "d", "nodeName": "n", "devices": [{"name": "x"}]},
        }
        created = client.create_slice(body)
        name = created["metadata"]["name"]
        assert [s["metadata"]["name"] for s in client.list_slices("d", "n")] == [name]
        assert client.list_slices("d", "other") == []
        stale = {**created, "metadata": {**created["metadata"], "resourceVersion": "0"}}
        with pytest.raises(ApiError) as err:
            client.update_slice(name, stale)
        assert err.value.status == 409
        client.delete_slice(name)
        client.delete_slice(name)  # gone already: no error
        assert client.list_slices("d", "n") == []
    finally:
        api.close()
