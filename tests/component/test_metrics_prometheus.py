"""The live endpoint against the real Prometheus tools: `promtool check metrics` and a real server.

Both come from Debian's `prometheus` package (`.ci/install-tools.sh` installs it). The server
runs on loopback only, with a temporary storage folder and a 1 s scrape interval, and is killed
in a finalizer; every wait has a deadline.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.devices import Candidate, CharDevice, NetDev, Port, RdmaDevice, ScanProblem
from common.messages import ALLOCATE_BUCKETS, WorkerCounters
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.http_server import MetricsServer, start_metrics_server
from supervisor.pod_resources import PodAllocation
from tests.conditions import wait_until

RES = "rdma/hca_shared_devices_a"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def hca(index: int, state: str = "ACTIVE") -> Candidate:
    chars = (
        CharDevice("uverbs", f"uverbs{index}", 231, 192 + index, True),
        CharDevice("umad", f"umad{index}", 231, index, True),
    )
    return Candidate(
        name=f"0000:0{index}:00.0",
        pci_address=f"0000:0{index}:00.0",
        vendor="15b3",
        device_id="1017",
        driver="mlx5_core",
        numa_node=0,
        netdevs=(NetDev(f"ib{index}", "infiniband", "up"),),
        rdma_devices=(RdmaDevice(f"mlx5_{index}", (Port(1, state, "InfiniBand"),), chars),),
        rdma_cm_present=True,
    )


def allocations(ok: int, refused: int = 0) -> WorkerCounters:
    return WorkerCounters(
        allocations_ok=ok,
        allocations_refused=refused,
        allocate_seconds_sum=0.001 * (ok + refused),
        allocate_count=ok + refused,
        allocate_buckets=tuple(ok + refused if b >= 0.001 else 0 for b in ALLOCATE_BUCKETS),
        registrations_ok=1,
    )


def busy_metrics() -> Metrics:
    """A Metrics with every family holding at least one series."""
    m = Metrics("0.1.0")
    m.config_loaded(1_700_000_000.0)
    m.set_resource(RES, 100, [hca(0), hca(1)])
    m.set_ports([hca(0), hca(1)])
    m.device_scan("start", 0.012, [ScanProblem("dangling_link", "sys/class/net/x", "gone")])
    m.worker_up(RES, True)
    m.worker_counters(RES, 1000, allocations(5, 1))
    m.worker_process(RES, 18 << 20, 0.4, 1000)
    m.worker_restarted(RES, "exited")
    m.kubelet_restart()
    m.config_reload(False, 1_700_000_100.0)
    m.set_pod_allocations([PodAllocation("default", "trainer-0", "main", RES, 1)])
    return m


def always(ok: bool) -> Any:
    return lambda: (ok, "test")


@pytest.fixture
def live() -> Iterator[tuple[Metrics, MetricsServer]]:
    m = busy_metrics()
    server = start_metrics_server("127.0.0.1:0", m, always(True), always(True))
    assert server is not None
    yield m, server
    server.stop()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_live_endpoint(live: tuple[Metrics, MetricsServer]) -> None:
    _, server = live
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        body = response.read()
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""  # not even a lint hint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    def __init__(self, folder: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: rdma-shared-dp\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = (folder / "prometheus.log").open("wb")
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder,
        )

    def ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited; see its log"
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=2) as response:
            data = json.load(response)
        assert data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package)")
def test_real_prometheus_scrapes_the_endpoint(
    live: tuple[Metrics, MetricsServer], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    m, server = live
    host, port = server.bound
    prom = Prometheus(tmp_path, f"{host}:{port}")
    request.addfinalizer(prom.stop)
    wait_until(prom.ready, timeout=20, interval=0.1, what="prometheus ready")

    def up() -> bool:
        return prom.value('up{job="rdma-shared-dp"}') == 1.0

    wait_until(up, timeout=15, interval=0.2, what="up == 1")
    devices = prom.query("rdma_shared_dp_resource_devices")
    assert [(r["metric"]["resource"], r["value"][1]) for r in devices] == [(RES, "100")]
    assert prom.value(f'rdma_shared_dp_resource_usable_hcas{{resource="{RES}"}}') == 2.0
    assert prom.value('rdma_shared_dp_hca_port_up{rdma_device="mlx5_1"}') == 1.0

    # Values move between scrapes: the worker restarts (new pid, counters from zero), a reload
    # fails, a port goes down. Counters only ever go up.
    m.worker_counters(RES, 2000, allocations(2))
    m.worker_restarted(RES, "exited")
    m.config_reload(False, 1_700_000_200.0)
    m.set_ports([hca(0), hca(1, state="DOWN")])
    m.set_resource(RES, 100, [hca(0), hca(1, state="DOWN")])

    def moved() -> bool:
        return (
            prom.value('rdma_shared_dp_hca_port_up{rdma_device="mlx5_1"}') == 0.0
            and prom.value('rdma_shared_dp_allocations_total{result="success"}') == 7.0
            and prom.value('rdma_shared_dp_config_reloads_total{result="failure"}') == 2.0
            and prom.value('rdma_shared_dp_worker_restarts_total{reason="exited"}') == 2.0
            and prom.value("rdma_shared_dp_config_last_reload_successful") == 0.0
        )

    wait_until(moved, timeout=10, interval=0.2, what="the new values in prometheus")
    # No counter reset was ever seen: resets() counts decreases over the window.
    resets = prom.query("resets(rdma_shared_dp_allocations_total[1m])")
    assert resets and all(float(r["value"][1]) == 0 for r in resets), resets
    assert prom.value("sum(rdma_shared_dp_pod_allocations)") == 1.0
