"""A stand-in Kubernetes API server for the DRA driver's component tests (tests only).

Serves on loopback the few `resource.k8s.io/v1` and `v1` paths the driver calls, over real HTTP:
nodes (get), resourceclaims (get), resourceslices (list with field selectors, create with
generateName, update with resourceVersion checks: 409 on a stale one, delete). It stores objects
as given; it does not validate them (the real API server does that in the e2e suite).
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLICES = "/apis/resource.k8s.io/v1/resourceslices"


class FakeApiServer:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.slices: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._versions = itertools.count(1)
        self.down = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length", "0"))
                obj: dict[str, Any] = json.loads(self.rfile.read(length))
                return obj

            def _handle(self, method: str) -> None:
                if owner.down:
                    self._reply(503, {"reason": "ServiceUnavailable", "message": "stopped"})
                    return
                url = urllib.parse.urlsplit(self.path)
                body = self._body() if method in ("POST", "PUT") else {}
                with owner.lock:
                    status, reply = owner.route(method, url.path, url.query, body)
                self._reply(status, reply)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(
        self, method: str, path: str, query: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if path.startswith("/api/v1/nodes/") and method == "GET":
            node = self.nodes.get(parts[-1])
            return (200, node) if node else _not_found(parts[-1])
        if "resourceclaims" in parts and method == "GET":
            found = self.claims.get((parts[-3], parts[-1]))
            return (200, found) if found else _not_found(parts[-1])
        if path == SLICES and method == "GET":
            return 200, {"items": self._select(urllib.parse.parse_qs(query))}
        if path == SLICES and method == "POST":
            name = body["metadata"].pop("generateName") + str(len(self.writes))
            return 201, self._store("create", name, body)
        if path.startswith(SLICES + "/"):
            return self._one(method, parts[-1], body)
        return 404, {"reason": "NotFound", "message": path}

    def _one(self, method: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        old = self.slices.get(name)
        if old is None:
            return _not_found(name)
        if method == "DELETE":
            del self.slices[name]
            self.writes.append(("delete", name))
            return 200, {}
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
                return 409, {"reason": "Conflict", "message": "the object has been modified"}
            return 200, self._store("update", name, body)
        return 200, old

    def _store(self, verb: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"]["name"] = name
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.slices[name] = body
        self.writes.append((verb, name))
        return body

    def _select(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        wanted = dict(
            term.split("=", 1)
            for term in ",".join(query.get("fieldSelector", [])).split(",")
            if term
        )
        out = []
        for obj in self.slices.values():
            have = {"spec.driver": obj["spec"]["driver"], "spec.nodeName": obj["spec"]["nodeName"]}
            if all(have.get(k) == v for k, v in wanted.items()):
                out.append(json.loads(json.dumps(obj)))
        return out

    def devices(self) -> list[str]:
        with self.lock:
            return sorted(d["name"] for s in self.slices.values() for d in s["spec"]["devices"])


def _not_found(name: str) -> tuple[int, dict[str, Any]]:
    return 404, {"reason": "NotFound", "message": f"{name} not found"}
