"""The metrics HTTP endpoint: paths, status codes, address parsing (real sockets, in-process)."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from cli.parser import DEFAULT_METRICS_ADDRESS
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.http_server import (
    AddressError,
    MetricsServer,
    Probes,
    parse_address,
    start_metrics_server,
)


class Flags:
    """What the supervisor loop would publish: set from the test, read by the HTTP thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.alive: tuple[bool, str] = (True, "loop turned 0.1s ago")
        self.ready: tuple[bool, str] = (False, "rdma/hca_a: not registered (starting)")

    def health(self) -> tuple[bool, str]:
        with self.lock:
            return self.alive

    def readiness(self) -> tuple[bool, str]:
        with self.lock:
            return self.ready


def get(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, str, str]:
    host, port = server.bound
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def server(flags: Flags) -> Iterator[MetricsServer]:
    s = start_metrics_server("127.0.0.1:0", Metrics("9.9.9"), flags.health, flags.readiness)
    assert s is not None
    yield s
    s.stop()


def test_metrics_path_serves_the_text_format(server: MetricsServer) -> None:
    status, ctype, body = get(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert 'rdma_shared_dp_build_info{version="9.9.9"} 1.0' in body
    status, _, body = get(server, "/metrics?x=1")
    assert status == 200 and "rdma_shared_dp_build_info" in body


def test_readyz_flips_with_the_callback(server: MetricsServer, flags: Flags) -> None:
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert "rdma/hca_a: not registered (starting)" in body
    with flags.lock:
        flags.ready = (True, "all 1 resources registered")
    status, _, body = get(server, "/readyz")
    assert status == 200 and body.startswith("ok\n")
    with flags.lock:
        flags.ready = (False, "rdma/hca_a: registration failed: kubelet refused")
    status, _, body = get(server, "/readyz")
    assert status == 503 and "kubelet refused" in body


def test_healthz_follows_the_loop(server: MetricsServer, flags: Flags) -> None:
    assert get(server, "/healthz")[0] == 200
    with flags.lock:
        flags.alive = (False, "loop stalled for 31s")
    status, _, body = get(server, "/healthz")
    assert status == 503 and "stalled" in body


def test_a_callback_that_raises_is_a_503_not_a_dead_server(flags: Flags) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    s = start_metrics_server("127.0.0.1:0", Metrics("v"), broken, flags.readiness)
    assert s is not None
    try:
        status, _, body = get(s, "/healthz")
        assert status == 503 and "boom" in body
        assert get(s, "/metrics")[0] == 200
    finally:
        s.stop()


def test_unknown_path_and_head(server: MetricsServer) -> None:
    status, _, body = get(server, "/nope")
    assert status == 404 and "/metrics" in body
    status, _, body = get(server, "/metrics", method="HEAD")
    assert status == 200 and body == ""
    assert get(server, "/metrics", method="POST")[0] == 501


def test_empty_address_means_no_server(flags: Flags) -> None:
    assert start_metrics_server("", Metrics("v"), flags.health, flags.readiness) is None
    assert start_metrics_server("  ", Metrics("v"), flags.health, flags.readiness) is None


def test_stop_closes_the_port(flags: Flags) -> None:
    s = start_metrics_server("127.0.0.1:0", Metrics("v"), flags.health, flags.readiness)
    assert s is not None
    host, port = s.bound
    s.stop()
    s.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=2).close()


def test_busy_port_is_a_clear_error(server: MetricsServer, flags: Flags) -> None:
    _, port = server.bound
    other = MetricsServer(f"127.0.0.1:{port}", Metrics("v"), flags.health, flags.readiness)
    with pytest.raises(OSError, match=f"cannot serve metrics on '127.0.0.1:{port}'"):
        other.start()


def test_all_interfaces_reachable_over_ipv4(flags: Flags) -> None:
    s = start_metrics_server(":0", Metrics("v"), flags.health, flags.readiness)
    assert s is not None
    try:
        _, port = s.bound
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        s.stop()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_ipv6_loopback(flags: Flags) -> None:
    s = start_metrics_server("[::1]:0", Metrics("v"), flags.health, flags.readiness)
    assert s is not None
    try:
        assert s.bound[0] == "::1"
        assert s.url.startswith("http://[::1]:")
        assert get(s, "/healthz")[0] == 200
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (DEFAULT_METRICS_ADDRESS, ("", 9478)),
        (":9478", ("", 9478)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9478", ("::1", 9478)),
        ("[::]:9478", ("::", 9478)),
        ("localhost:9478", ("localhost", 9478)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address", ["9478", "host", ":", ":-1", ":65536", ":http", "::1:9478", "[1.2.3.4]:80", "a:b:c"]
)
def test_bad_addresses_are_refused_clearly(address: str) -> None:
    with pytest.raises(AddressError, match="metrics address"):
        parse_address(address)


def test_unresolvable_host_is_refused(flags: Flags) -> None:
    with pytest.raises(AddressError, match="does not resolve"):
        start_metrics_server("no-such-host.invalid:0", Metrics("v"), flags.health, flags.readiness)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_probes_health_follows_the_loop_turning() -> None:
    clock = Clock()
    probes = Probes(stall_after=30, clock=clock)
    assert probes.health()[0]
    clock.now += 31
    ok, why = probes.health()
    assert not ok and "31s" in why
    probes.loop_turned()
    assert probes.health()[0]


def test_probes_readiness_names_what_is_missing() -> None:
    probes = Probes()
    ok, why = probes.ready()
    assert not ok and "starting" in why
    probes.set_resources({"rdma/a": None, "rdma/b": "not registered: backoff after exit code 1"})
    ok, why = probes.ready()
    assert not ok and why == "rdma/b: not registered: backoff after exit code 1"
    probes.set_resources({"rdma/a": None, "rdma/b": None})
    assert probes.ready() == (True, "2 resources registered")
    probes.set_resources({})  # nothing configured: nothing to wait for
    assert probes.ready()[0]


def test_readyz_flips_through_probes_over_http() -> None:
    probes = Probes()
    s = start_metrics_server("127.0.0.1:0", Metrics("v"), probes.health, probes.ready)
    assert s is not None
    try:
        probes.set_resources({"rdma/a": "registration failed: kubelet refused the name"})
        status, _, body = get(s, "/readyz")
        assert status == 503 and "rdma/a: registration failed" in body
        probes.set_resources({"rdma/a": None})
        assert get(s, "/readyz")[0] == 200
        assert get(s, "/healthz")[0] == 200
    finally:
        s.stop()
