"""The metrics endpoint's bind retries (supervisor.metrics.endpoint_binder) on real sockets.

The clock is a test clock, so the backoff is exact; the port is really taken by a listening
socket of the test and really freed.
"""

from __future__ import annotations

import http.client
import logging
import socket
from collections.abc import Iterator

import pytest

from common.loop.backoff import Backoff
from supervisor.metrics.endpoint_binder import EndpointBinder
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.http_server import MetricsServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    yield busy
    busy.close()


def _binder(port: int, clock: Clock) -> EndpointBinder:
    server = MetricsServer(
        f"127.0.0.1:{port}", Metrics("v"), lambda: (True, "alive"), lambda: (True, "ready")
    )
    return EndpointBinder(server, Backoff(initial=1.0, cap=4.0), clock)


def test_taken_port_is_retried_with_capped_backoff_then_bound(
    taken: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    port = taken.getsockname()[1]
    binder = _binder(port, clock)
    caplog.set_level(logging.INFO, logger="supervisor.metrics.endpoint_binder")
    try:
        assert not binder.attempt()
        assert binder.timeout() == 1.0
        assert "Address already in use" in binder.describe()
        assert "1 attempt(s), next try in 1s" in binder.describe()
        waits = []
        for _ in range(4):
            clock.now += 0.5
            binder.due()  # not due yet: no attempt
            clock.now += binder.timeout() or 0.0
            binder.due()
            waits.append(binder.timeout())
        assert binder.attempts == 5
        assert waits == [2.0, 4.0, 4.0, 4.0]  # doubling, capped
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # one line per run of failures
        assert "keeps serving the kubelet" in errors[0].getMessage()
        taken.close()
        clock.now += 4.0
        binder.due()
        assert binder.bound and binder.timeout() is None
        assert binder.describe() == f"serving on http://127.0.0.1:{port}"
        assert any("bound address=" in r.getMessage() for r in caplog.records)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        binder.server.stop()
