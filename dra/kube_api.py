"""A small Kubernetes REST client on the standard library (DRA process).

The DRA driver needs six calls: get a ResourceClaim, get its Node, and list, create, update and
delete its own ResourceSlices. The official `kubernetes` package costs ~36 MiB PSS at import and
`lightkube` ~19 MiB (docs/dra.md, measured); `http.client` and `ssl` cost ~4 MiB without the
system CA store, which the driver does not load (it trusts the cluster CA only). Requests are
JSON, the bearer token is read again for every request (projected tokens rotate), and a token
bucket with jitter spaces the writes of many nodes apart.

Every failure is an `ApiError`: `status` is the HTTP status, or 0 when the server was not
reached. Callers decide about retries (`retriable`).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

IN_CLUSTER = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status or 'unreachable'} {reason}: {message}")

    @property
    def retriable(self) -> bool:
        return self.status in (0, 408, 409, 429) or self.status >= 500


@dataclass(frozen=True)
class ApiConfig:
    server: str  # "https://10.0.0.1:443"
    token_file: str = ""
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    timeout: float = 10.0
    qps: float = 5.0
    burst: int = 10

    @classmethod
    def in_cluster(cls) -> ApiConfig | None:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host:
            return None
        if ":" in host:
            host = f"[{host}]"
        return cls(
            server=f"https://{host}:{port}",
            token_file=f"{IN_CLUSTER}/token",
            ca_file=f"{IN_CLUSTER}/ca.crt",
        )


class RateLimiter:
    """Token bucket: `burst` calls at once, then `qps` per second, each wait stretched by 0-20%."""

    def __init__(self, qps: float, burst: int, clock: Any = time.monotonic) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Take a token; the seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.qps)
            self._last = now
            self.tokens -= 1
            if self.tokens >= 0 or self.qps <= 0:
                return 0.0
            return (-self.tokens / self.qps) * (1 + 0.2 * random.random())


class KubeApi:
    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        url = urllib.parse.urlsplit(config.server)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if config.ca_file:
                ctx.load_verify_locations(config.ca_file)
            else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # only when no CA was given (tests, dev)
            if config.client_cert:
                ctx.load_cert_chain(config.client_cert, config.client_key or None)
            self._ssl = ctx
        self.limiter = RateLimiter(config.qps, config.burst)

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.config.timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.config.timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "rdma-shared-dp-dra"}
        if self.config.token_file:
            try:
                with open(self.config.token_file) as f:
                    headers["Authorization"] = "Bearer " + f.read().strip()
            except OSError as err:
                raise ApiError(
                    0, "NoToken", f"cannot read {self.config.token_file}: {err}"
                ) from err
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        limited: bool = True,
    ) -> dict[str, Any]:
        if limited and (wait := self.limiter.delay()) > 0:
            time.sleep(wait)
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as err:
            raise ApiError(0, "Unreachable", f"{method} {self.config.server}{path}: {err}") from err
        finally:
            conn.close()
        try:
            obj = json.loads(raw) if raw else {}
        except ValueError:
            obj = {"message": raw[:200].decode(errors="replace")}
        if response.status >= 300:
            raise ApiError(
                response.status,
                str(obj.get("reason", response.reason)),
                str(obj.get("message", "")),
            )
        return obj if isinstance(obj, dict) else {}

    # ---- the calls the driver makes ------------------------------------------------------

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        path = f"/apis/resource.k8s.io/v1/namespaces/{_q(namespace)}/resourceclaims/{_q(name)}"
        # Not rate limited: the kubelet waits on it, and it is one read per pod start.
        return self.request("GET", path, limited=False)

    def get_node(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/nodes/{_q(name)}")

    def list_slices(self, driver: str, node: str) -> list[dict[str, Any]]:
        selector = f"spec.driver={driver},spec.nodeName={node}"
        out = self.request(
            "GET", "/apis/resource.k8s.io/v1/resourceslices", query={"fieldSelector": selector}
        )
        items = out.get("items") or []
        return [i for i in items if isinstance(i, dict)]

    def create_slice(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/apis/resource.k8s.io/v1/resourceslices", body)

    def update_slice(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", f"/apis/resource.k8s.io/v1/resourceslices/{_q(name)}", body)

    def delete_slice(self, name: str) -> None:
        try:
            self.request("DELETE", f"/apis/resource.k8s.io/v1/resourceslices/{_q(name)}")
        except ApiError as err:
            if err.status != 404:
                raise


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
