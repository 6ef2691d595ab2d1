"""TLS and client certificates on the metrics endpoint, with a real TLS client (Python's ssl)
and certificates the `openssl` command makes for each test run."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.metrics import tls as tls_module
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.http_server import MetricsServer
from supervisor.metrics.tls import TlsContext, TlsError, TlsFiles
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _serve(tls: TlsContext) -> MetricsServer:
    server = MetricsServer(
        "127.0.0.1:0", Metrics("v"), lambda: (True, "alive"), lambda: (True, "ready"), tls
    )
    server.start()
    return server


@pytest.fixture
def tls_only(pki: Pki) -> Iterator[MetricsServer]:
    server = _serve(TlsContext(TlsFiles(str(pki.server_cert), str(pki.server_key))))
    yield server
    server.stop()


@pytest.fixture
def client_auth(pki: Pki) -> Iterator[MetricsServer]:
    files = TlsFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    server = _serve(TlsContext(files))
    yield server
    server.stop()


def _client(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))  # verifies the server, by IP
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _get(server: MetricsServer, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.bound[1], timeout=5, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_tls_serves_every_path_to_a_verifying_client(tls_only: MetricsServer, pki: Pki) -> None:
    assert tls_only.url.startswith("https://127.0.0.1:")
    status, body = _get(tls_only, "/metrics", _client(pki))
    assert status == 200 and b"rdma_shared_dp_build_info" in body
    assert _get(tls_only, "/healthz", _client(pki))[0] == 200


def test_plain_http_is_refused(tls_only: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", tls_only.bound[1], timeout=5)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.request("GET", "/metrics")
            conn.getresponse()
    finally:
        conn.close()


def test_client_certificate_required_for_metrics_only(client_auth: MetricsServer, pki: Pki) -> None:
    status, body = _get(client_auth, "/metrics", _client(pki))  # no certificate: refused
    assert status == 403 and b"client certificate" in body
    # The kubelet's HTTPS probes carry no certificate: health and readiness still answer.
    assert _get(client_auth, "/healthz", _client(pki))[0] == 200
    assert _get(client_auth, "/readyz", _client(pki))[0] == 200
    status, body = _get(client_auth, "/metrics", _client(pki, pki.client_cert, pki.client_key))
    assert status == 200 and b"rdma_shared_dp_build_info" in body


def test_a_certificate_from_another_ca_fails_the_handshake(
    client_auth: MetricsServer, pki: Pki
) -> None:
    rogue = _client(pki, pki.rogue_cert, pki.rogue_key)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        _get(client_auth, "/metrics", rogue)


def test_a_silent_client_does_not_block_the_others(tls_only: MetricsServer, pki: Pki) -> None:
    # The handshake runs in the connection's thread: one client that never speaks TLS must not
    # hold the accept loop.
    with socket.create_connection(("127.0.0.1", tls_only.bound[1]), timeout=5):
        assert _get(tls_only, "/healthz", _client(pki))[0] == 200


def test_unusable_files_are_refused_with_the_file_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"nope\.pem"):
        TlsContext(TlsFiles(str(tmp_path / "nope.pem")))
    with pytest.raises(TlsError, match="certificate"):
        TlsContext(TlsFiles(str(pki.server_cert), str(pki.client_key)))  # key of another cert
    with pytest.raises(TlsError, match="client CA"):
        TlsContext(TlsFiles(str(pki.server_cert), str(pki.server_key), str(tmp_path / "x")))


def test_renewed_files_are_used_for_new_connections(pki: Pki, tmp_path: Path) -> None:
    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    tls = TlsContext(TlsFiles(str(cert), str(key)), clock)
    first = tls.context()
    cert.write_bytes(b"half-written")  # a renewal caught midway: the old context stays
    os.utime(cert, ns=(1, 1))
    clock.now += tls_module.RELOAD_CHECK
    assert tls.context() is first
    cert.write_bytes(pki.client_cert.read_bytes())  # renewed: another certificate and key
    key.write_bytes(pki.client_key.read_bytes())
    clock.now += tls_module.RELOAD_CHECK
    assert tls.context() is not first
