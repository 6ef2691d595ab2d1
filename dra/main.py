"""The DRA driver process: `python -m dra --node-name NODE [...]` (a child of the supervisor).

Reads the node's state from stdin (dra/feed.py), serves `DRAPlugin` v1 and v1beta1 and the
plugin-watcher registration over gRPC, publishes the node's ResourceSlices, and writes one JSON
status line to stdout whenever its state changes and every `--status-interval` seconds:

    {"pid", "registered", "registration_error", "published", "generation", "devices",
     "publish_error", "prepared_claims", "counters"}

It exits 0 at end of input or when its parent dies (the supervisor is gone; prepared claims and
their CDI specs stay on disk for the next incarnation), and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from typing import Any

from common.defaults import DEFAULT_PLUGINS_REGISTRY_DIR
from dra import devices as dra_devices
from dra import host_facts
from dra.checkpoint import Checkpoint
from dra.counters import DriverCounters
from dra.driver import Driver
from dra.feed import FeedError, NodeState, parse_line
from dra.kube_api import ApiConfig, ApiError, KubeApi
from dra.names import DEFAULT_DRIVER_NAME, DeviceNameError, check_driver_name
from dra.publisher import Publisher

LOG = logging.getLogger("dra")
#: Environment variables that set a flag's default: RDMA_SHARED_DP_DRA_API_SERVER, ...
ENV = "RDMA_SHARED_DP_DRA_"
DEFAULT_PLUGINS_DIR = "/var/lib/kubelet/plugins"
#: gRPC threads: the kubelet may prepare many pods' claims at once; each mostly waits on I/O.
WORKERS = 16
#: Seconds after the kubelet registers us until the slices are checked (it deletes them at its
#: start, around when it registers its plugins).
AFTER_REGISTRATION = 3.0
#: How often the loop wakes at the latest (parent check, status line).
TICK = 0.5


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dra", description=__doc__)
    env = os.environ.get
    p.add_argument("--node-name", default=env("NODE_NAME", ""))
    p.add_argument("--driver-name", default=env(f"{ENV}DRIVER_NAME", DEFAULT_DRIVER_NAME))
    p.add_argument("--plugins-dir", default=DEFAULT_PLUGINS_DIR)
    p.add_argument("--plugins-registry-dir", default=DEFAULT_PLUGINS_REGISTRY_DIR)
    p.add_argument("--cdi-dir", default="/var/run/cdi")
    p.add_argument("--state-dir", default="/run/rdma-shared-dp/dra")
    p.add_argument("--host-root", default="/")
    p.add_argument("--api-server", default=env(f"{ENV}API_SERVER", ""), help="default: in-cluster")
    p.add_argument("--token-file", default=env(f"{ENV}TOKEN_FILE", ""))
    p.add_argument("--ca-file", default=env(f"{ENV}CA_FILE", ""))
    p.add_argument("--client-cert", default=env(f"{ENV}CLIENT_CERT", ""))
    p.add_argument("--client-key", default=env(f"{ENV}CLIENT_KEY", ""))
    p.add_argument("--api-qps", type=float, default=5.0)
    p.add_argument("--api-burst", type=int, default=10)
    p.add_argument("--resync", type=float, default=30.0, help="seconds between slice checks")
    p.add_argument("--status-interval", type=float, default=5.0)
    return p


def api_config(args: argparse.Namespace) -> ApiConfig | None:
    if args.api_server.startswith("https:") and not args.ca_file:
        LOG.warning(
            "no --ca-file for %s: the API server's certificate is not verified; give the "
            "cluster CA (in a pod the in-cluster config does)",
            args.api_server,
        )
    if args.api_server:
        return ApiConfig(
            server=args.api_server,
            token_file=args.token_file,
            ca_file=args.ca_file,
            client_cert=args.client_cert,
            client_key=args.client_key,
            qps=args.api_qps,
            burst=args.api_burst,
        )
    return ApiConfig.in_cluster()


class NoApi:
    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        raise ApiError(0, "NoApiServer", "no API server configured (--api-server or in-cluster)")


def _bind(server: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a previous incarnation's socket
    if server.add_insecure_port(f"unix://{path}") == 0:
        raise OSError(f"cannot listen on {path}")


class Process:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counters = DriverCounters()
        config = api_config(args)
        self.api = KubeApi(config) if config is not None else None
        get_claim = (self.api or NoApi()).get_claim
        self.driver = Driver(
            args.driver_name,
            args.node_name,
            get_claim,
            args.cdi_dir,
            Checkpoint(args.state_dir),
            self.counters,
        )
        self.publisher = (
            Publisher(self.api, args.driver_name, args.node_name, self.counters, args.resync)
            if self.api is not None
            else None
        )
        self.dra_sock = os.path.join(args.plugins_dir, args.driver_name, "dra.sock")
        self.reg_sock = os.path.join(args.plugins_registry_dir, f"{args.driver_name}-reg.sock")
        facts_root = args.host_root
        self.facts = dra_devices.HostFacts(
            lambda pci: host_facts.pcie_root(facts_root, pci),
            lambda rdma: host_facts.gid_table_size(facts_root, rdma),
        )
        from dra.health import HealthHub

        self.health = HealthHub(args.node_name)
        self.devices_error = ""
        self.stopping = False
        self._last_status = ""
        self._status_at = 0.0

    def serve(self) -> Any:
        import grpc  # only here: `--help` costs no gRPC start-up

        from dra.health import add_service
        from dra.servicer import DriverRegistration, add_services

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
        self.registration = DriverRegistration(self.args.driver_name, self.dra_sock)
        add_services(server, self.driver, self.registration)
        add_service(server, self.health)
        _bind(server, self.dra_sock)
        server.start()
        # The registration socket last: the kubelet dials dra.sock as soon as it sees it.
        reg_server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        add_services(reg_server, self.driver, self.registration)
        _bind(reg_server, self.reg_sock)
        reg_server.start()
        return server, reg_server

    def on_state(self, state: NodeState) -> None:
        try:
            built = dra_devices.build(
                state.dra_resources, state.resources, state.candidates, self.facts
            )
        except DeviceNameError as err:
            self.devices_error = str(err)
            LOG.error("cannot publish the node's devices: %s", err)
            return
        self.devices_error = ""
        self.driver.set_devices(built)
        self.health.publish(built)
        if self.publisher is not None:
            self.publisher.set_devices(built)

    def status(self) -> dict[str, Any]:
        registered, reg_error = self.registration.state()
        published, generation, count, error = False, 0, 0, "no API server configured"
        if self.publisher is not None:
            st = self.publisher.state()
            published, generation, count, error = st.published, st.generation, st.devices, st.error
        return {
            "pid": os.getpid(),
            "registered": registered,
            "registration_error": reg_error,
            "published": published,
            "generation": generation,
            "devices": count,
            "publish_error": self.devices_error or error,
            "prepared_claims": self.driver.prepared_count(),
            "counters": self.counters.to_json(),
        }

    def report(self, now: float) -> bool:
        """Write a status line when something changed or the interval passed; False on EPIPE."""
        line = json.dumps(self.status(), separators=(",", ":"), sort_keys=True)
        if line == self._last_status and now < self._status_at:
            return True
        self._last_status, self._status_at = line, now + self.args.status_interval
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return False
        return True

    def run(self) -> int:
        parent = os.getppid()
        self.driver.reconcile()
        servers = self.serve()
        LOG.info(
            "DRA driver %s serving node=%s socket=%s registration=%s",
            self.args.driver_name,
            self.args.node_name,
            self.dra_sock,
            self.reg_sock,
        )
        stdin = sys.stdin.buffer
        buffer = b""
        try:
            while not self.stopping and os.getppid() == parent:
                wait = self._turn()
                if wait is None:
                    return 0
                readable, _, _ = select.select([stdin], [], [], wait)
                if not readable:
                    continue
                chunk = os.read(stdin.fileno(), 1 << 20)
                if not chunk:
                    LOG.info("end of input: the supervisor is gone; stopping")
                    return 0
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if lines:
                    self._take(lines[-1])  # each line is the full state: the last one wins
            return 0
        finally:
            self.health.stop()  # ends the kubelet's health stream, so the server stops at once
            for server in servers:
                server.stop(grace=1.0)
            for path in (self.reg_sock, self.dra_sock):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _turn(self) -> float | None:
        """Registration news, a due slice sync, the status line; seconds to wait for input
        (None: nobody reads our status any more)."""
        now = time.monotonic()
        if self.registration.changed.is_set():
            self.registration.changed.clear()
            self._kubelet_registered(now)
        if self.publisher is not None and self.publisher.due(now):
            self.publisher.sync(now)
        if not self.report(time.monotonic()):
            return None
        if self.publisher is not None and self.publisher.next_at:
            return max(0.0, min(TICK, self.publisher.next_at - time.monotonic()))
        return TICK

    def _kubelet_registered(self, now: float) -> None:
        """A (re)started kubelet registered us; it deletes the node's slices at its start, so
        check them soon rather than at the next resync."""
        registered, _ = self.registration.state()
        if registered and self.publisher is not None:
            self.publisher.next_at = min(self.publisher.next_at, now + AFTER_REGISTRATION)

    def _take(self, line: bytes) -> None:
        try:
            state = parse_line(line)
        except FeedError as err:
            LOG.error("ignored a state line from the supervisor: %s", err)
            return
        self.on_state(state)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RDMA_SHARED_DP_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="dra: %(levelname)s %(message)s",
    )
    if not args.node_name:
        print("error: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 2
    try:
        check_driver_name(args.driver_name)
    except DeviceNameError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    process = Process(args)

    def stop(*_: object) -> None:
        process.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return process.run()
