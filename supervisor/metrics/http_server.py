"""The `/metrics`, `/healthz` and `/readyz` endpoint (supervisor process, its only extra thread).

A `ThreadingHTTPServer` runs in daemon threads next to the supervisor's single loop. It never
changes anything: it only reads what the loop publishes. `Metrics.render()` takes the metrics
lock, and the `health` and `ready` callbacks must be just as cheap and thread-safe: read a value
the loop last stored (a timestamp, a tuple), never walk the loop's live structures or block.

- `/metrics`: the Prometheus text format.
- `/healthz`: 200 while `health()` says the loop is alive, else 503; the body is its message.
- `/readyz`: 200 when `ready()` says every configured resource is registered, else 503 with the
  body naming which are not and why; also 503 when the node serves no device at all
  (`supervisor.node_health`: no PCI bus, unreadable sysfs, nothing matched). Notes (a refused
  config reload, exclusive RDMA netns mode) follow as `note: ...` lines without changing the
  status: the running config still serves.

Addresses: `":9478"` (all interfaces: IPv6 and IPv4 when the host has IPv6, IPv4 otherwise),
`"0.0.0.0:9478"`, `"127.0.0.1:0"` (a free port, for tests), `"[::1]:9478"`, `"localhost:9478"`.
An empty address means no server at all (`start_metrics_server` returns None).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common.defaults import HEALTHZ_PATH, READYZ_PATH
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.tls import TlsContext

LOG = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
#: What `Metrics.render()` produces. Said explicitly: newer prometheus_client versions call their
#: default "1.0.0", which older Prometheus servers do not know by that name.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How long stop() may wait for the serving thread to notice (it wakes this often when idle).
SHUTDOWN_POLL = 0.1
#: A client that sends nothing for this long loses its connection (and its thread).
CLIENT_TIMEOUT = 10.0

Check = Callable[[], tuple[bool, str]]


class AddressError(ValueError):
    """A `--metrics-address` that is not `[host]:port`."""


def parse_address(address: str) -> tuple[str, int]:
    """`(host, port)` of `host:port`, `:port` or `[v6]:port`; host "" means all interfaces."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise AddressError(f"metrics address {address!r} must be [host]:port, e.g. ':9478'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise AddressError(f"metrics address {address!r}: brackets are for IPv6 only")
    elif ":" in host:
        raise AddressError(f"metrics address {address!r}: write an IPv6 host as [addr]:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"metrics address {address!r}: port must be 0-65535")
    return host, int(port_text)


def _bind_target(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    if host == "":
        return (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AddressError(f"metrics address host {host!r} does not resolve: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[str, int],
        metrics: Metrics,
        health: Check,
        ready: Check,
        tls: TlsContext | None = None,
    ) -> None:
        self.address_family = family
        self.metrics = metrics
        self.health = health
        self.ready = ready
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client: object
    ) -> None:
        """Runs in the connection's own thread: the TLS handshake happens here, so a slow or
        silent client holds only its thread, never the accept loop."""
        if self.tls is None or not isinstance(request, socket.socket):
            super().finish_request(request, client)
            return
        try:
            request.settimeout(CLIENT_TIMEOUT)
            secure = self.tls.context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:  # plain HTTP, a bad certificate, a port scan
            LOG.debug("metrics TLS handshake failed client=%s: %s", client, err)
            return
        try:
            super().finish_request(secure, client)
        finally:
            secure.close()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # All interfaces means IPv4 too (IPv4-mapped), whatever the sysctl default says.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # TCPServer's bind, not HTTPServer's: that one calls getfqdn(), a DNS lookup that can hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "rdma-shared-dp"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == METRICS_PATH and not self._client_allowed():
                status, ctype = 403, "text/plain; charset=utf-8"
                body = b"/metrics needs a client certificate signed by the configured CA\n"
            elif path == METRICS_PATH:
                status, ctype, body = 200, METRICS_CONTENT_TYPE, self.server.metrics.render()
            elif path in (HEALTHZ_PATH, READYZ_PATH):
                check = self.server.health if path == HEALTHZ_PATH else self.server.ready
                status, ctype, body = _check_answer(check)
            else:
                status, ctype = 404, "text/plain; charset=utf-8"
                body = f"not found; try {METRICS_PATH}, {HEALTHZ_PATH} or {READYZ_PATH}\n".encode()
        except Exception as exc:  # a bug must cost one answer, not the server
            LOG.exception("metrics endpoint failed path=%s", path)
            status, ctype = 500, "text/plain; charset=utf-8"
            body = f"internal error: {exc}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _client_allowed(self) -> bool:
        tls = self.server.tls
        if tls is None or not tls.client_auth:
            return True
        # CERT_OPTIONAL: a presented certificate was verified in the handshake; none is {}/None.
        conn = self.connection
        return isinstance(conn, ssl.SSLSocket) and bool(conn.getpeercert())

    def log_message(self, format: str, *args: object) -> None:
        # Probes every few seconds would flood the log; keep them for debugging only.
        LOG.debug("http %s %s", self.address_string(), format % args)


def _check_answer(check: Check) -> tuple[int, str, bytes]:
    try:
        ok, message = check()
    except Exception as exc:
        LOG.exception("health or readiness callback raised")
        ok, message = False, f"check failed: {exc}"
    text = message if message.endswith("\n") or not message else message + "\n"
    body = (("ok\n" if ok else "not ok\n") + text).encode()
    return (200 if ok else 503), "text/plain; charset=utf-8", body


class Probes:
    """What `/healthz` and `/readyz` answer, published by the loop, read by the HTTP thread.

    The loop calls `loop_turned()` on every turn and `set_resources()` whenever a worker's
    registration changes; `health` and `ready` are the callbacks for `MetricsServer`. Each write
    replaces one immutable value (atomic in CPython), so no lock is needed on either side.
    """

    def __init__(self, stall_after: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.stall_after = stall_after
        self._clock = clock
        self._last_turn = clock()
        self._resources: tuple[tuple[str, str | None], ...] | None = None
        self._notes: tuple[tuple[str, str], ...] = ()
        self._node = ""
        self._extra: tuple[tuple[str, str], ...] = ()  # other parts not ready: key -> why

    def set_node_problem(self, text: str) -> None:
        """Why the whole node serves no device ("" when it serves): /readyz fails with it."""
        self._node = text

    def loop_turned(self) -> None:
        self._last_turn = self._clock()

    def set_resources(self, not_ready: Mapping[str, str | None]) -> None:
        """Every configured resource -> None when registered, else why not (one short line)."""
        self._resources = tuple(sorted(not_ready.items()))

    def set_note(self, key: str, text: str | None) -> None:
        """A line /readyz adds after its verdict (None removes it); it never makes it fail."""
        notes = dict(self._notes)
        if text is None:
            notes.pop(key, None)
        else:
            notes[key] = text
        self._notes = tuple(sorted(notes.items()))

    def set_part(self, key: str, why: str | None) -> None:
        """A part besides the workers (the DRA driver): None when ready, else why not."""
        parts = dict(self._extra)
        if why is None:
            parts.pop(key, None)
        else:
            parts[key] = why
        self._extra = tuple(sorted(parts.items()))

    def health(self) -> tuple[bool, str]:
        idle = self._clock() - self._last_turn
        if idle > self.stall_after:
            return (
                False,
                f"supervisor loop has not turned for {idle:.0f}s (limit {self.stall_after:.0f}s)",
            )
        return True, f"supervisor loop turned {idle:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        ok, text = self._verdict()
        notes = "".join(f"\nnote: {note}" for _, note in self._notes)
        return ok, text + notes

    def _verdict(self) -> tuple[bool, str]:
        if self._node:
            return False, f"node: {self._node}"
        resources = self._resources
        if resources is None:
            return False, "starting: no resource has been configured yet"
        waiting = [f"{name}: {why}" for name, why in resources if why is not None]
        waiting += [why for _, why in self._extra]
        if waiting:
            return False, "\n".join(waiting)
        return True, f"{len(resources)} resources registered"


class MetricsServer:
    """The HTTP endpoint; `start()` binds (raising on a bad or busy address), `stop()` ends it.

    The supervisor does not start it directly: `endpoint_binder.EndpointBinder` retries a bind
    that fails, so a busy port never stops the plugin.
    """

    def __init__(
        self,
        address: str,
        metrics: Metrics,
        health: Check,
        ready: Check,
        tls: TlsContext | None = None,
    ) -> None:
        self.address = address
        self.tls = tls
        self._host, self._port = parse_address(address)
        self._metrics = metrics
        self._health = health
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def resolve(self) -> None:
        """Raise AddressError when the host does not resolve (a typo: no retry fixes it)."""
        _bind_target(self._host, self._port)

    @property
    def bound(self) -> tuple[str, int]:
        """(host, port) actually bound; the port is the real one when 0 was asked for."""
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        return str(self._server.server_address[0]), int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL a client on this host can use (loopback for an all-interfaces bind)."""
        host, port = self.bound
        if host in ("::", "0.0.0.0"):
            host = "::1" if host == "::" else "127.0.0.1"
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def start(self) -> None:
        if self._server is not None:
            return
        family, host = _bind_target(self._host, self._port)
        try:
            server = _Server(
                family, (host, self._port), self._metrics, self._health, self._ready, self.tls
            )
        except OSError as exc:
            if self._host == "" and family == socket.AF_INET6:
                # A host with IPv6 compiled in but disabled: all interfaces means IPv4 only.
                family, host = socket.AF_INET, "0.0.0.0"
                server = self._bind_ipv4_fallback(host, exc)
            else:
                raise OSError(
                    exc.errno, f"cannot serve metrics on {self.address!r}: {exc}"
                ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL},
            name="metrics-http",
        )
        self._thread.daemon = True
        self._thread.start()
        LOG.info(
            "serving /metrics /healthz /readyz address=%s port=%d tls=%s client_certs=%s",
            host,
            self.bound[1],
            "on" if self.tls is not None else "off",
            "required for /metrics" if self.tls is not None and self.tls.client_auth else "no",
        )

    def _bind_ipv4_fallback(self, host: str, first: OSError) -> _Server:
        try:
            return _Server(
                socket.AF_INET,
                (host, self._port),
                self._metrics,
                self._health,
                self._ready,
                self.tls,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot serve metrics on {self.address!r}: {exc} (IPv6: {first})"
            ) from exc

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


def start_metrics_server(
    address: str, metrics: Metrics, health: Check, ready: Check
) -> MetricsServer | None:
    """A started server on `address`, or None when the address is empty (metrics turned off).

    Raises AddressError for an address that does not parse, OSError when it cannot be bound.
    """
    if not address.strip():
        return None
    server = MetricsServer(address, metrics, health, ready)
    server.start()
    return server
