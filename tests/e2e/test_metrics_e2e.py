"""End to end: the metrics endpoint of a real `rdma-shared-dp run` (issue 5), in the test process.

Each test starts the real supervisor on a simulated node (tests/supervisor_rig.py) with the
kubelet simulator, `--metrics-address 127.0.0.1:<free port>` and a PodResources simulator socket,
then drives it the way a node would (Allocate, kill -9, config edits, port changes, kubelet
down) and reads `/metrics`, `/healthz` and `/readyz` over HTTP. One test lets a real Prometheus
server scrape the live supervisor. Every wait has a deadline and every test a hard timeout; the
fixtures stop the supervisor, its workers, the simulators and Prometheus whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import exitcodes
from common.config import Config, load_config_bytes
from common.devices import Scan
from common.messages import Status, WorkerCounters, WorkerStatus
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.http_server import Probes
from supervisor.metrics.observer import MetricsObserver
from supervisor.pod_resources import PodAllocation
from tests.component.test_metrics_prometheus import PROMETHEUS, PROMTOOL, Prometheus, free_port, hca
from tests.conditions import hard_timeout, wait_until
from tests.podresources_simulator import PodDevices, PodResourcesSimulator
from tests.supervisor_rig import E2E_TIMINGS, REPO, Plant, full, resource_entry, three_resources
from tests.tls_certs import make_pki

HARD_TIMEOUT = 40
ABC = ["a", "b", "c"]
P = "rdma_shared_dp_"
#: A pod of another plugin's resource: the PodResources API reports it, the plugin must not.
FOREIGN = "nvidia.com/gpu"

T = TypeVar("T")
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def _hard_timeout() -> Iterator[None]:
    with hard_timeout(HARD_TIMEOUT):
        yield


class MetricsPlant(Plant):
    """The rig's supervisor with the metrics endpoint on and a PodResources simulator."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pod_socket = self.root / "pr.sock"
        try:
            self.pods = PodResourcesSimulator(self.pod_socket)
        except BaseException:
            super().close()  # the kubelet simulator is already serving
            raise

    def command(self) -> list[str]:
        args = super().command()
        at = args.index("--metrics-address")
        args[at + 1] = f"127.0.0.1:{self.port}"
        return [*args, "--pod-resources-socket", str(self.pod_socket)]

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET; a 503 is an answer too, not an error."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=3) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def answers(self) -> bool:
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True

    def series(self) -> Series:
        status, body = self.get("/metrics")
        assert status == 200, body
        out: Series = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        """The one series of `name` with exactly these labels, None when it is absent."""
        return self.series().get((P + name, frozenset(labels.items())))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.pods.stop()


def _pods() -> list[PodDevices]:
    return [
        PodDevices("team-x", "trainer-0", {"main": {full("a"): ["a-1", "a-2"], FOREIGN: ["g0"]}}),
        PodDevices("team-y", "infer-0", {"server": {full("b"): ["b-1"]}}),
        PodDevices("team-z", "gpu-only", {"main": {FOREIGN: ["g1"]}}),
    ]


def _start(config: dict[str, Any]) -> MetricsPlant:
    rig = MetricsPlant(config)
    try:
        rig.pods.set_pods(_pods())
        rig.start()
        until(rig.answers, timeout=10, what="the metrics endpoint answering")
        rig.wait_registered(ABC)
        until(lambda: rig.get("/readyz")[0] == 200, what="/readyz 200 (every worker registered)")
    except BaseException:
        print(rig.log()[-8000:])
        rig.close()
        raise
    return rig


@pytest.fixture
def plant(request: pytest.FixtureRequest) -> Iterator[MetricsPlant]:
    """Three resources (a: 2 HCAs, b: 1, c: 1), registered, /readyz 200."""
    rig = _start(three_resources(getattr(request, "param", 0)))
    try:
        yield rig
    finally:
        print(rig.log()[-8000:])  # pytest shows it only when the test failed
        rig.close()


def _worker_pid(plant: Plant, name: str) -> int:
    return plant.worker(name).pid


# ---- the live endpoint ---------------------------------------------------------------------------


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_live_endpoint_passes_promtool_and_shows_every_resource(plant: MetricsPlant) -> None:
    # Worker counters and memory come with the next heartbeat, pods with the poller's answer.
    until(
        lambda: (
            all(
                plant.value("worker_resident_memory_bytes", resource=full(n))
                and plant.value("registrations_total", resource=full(n), result="success")
                for n in ABC
            )
            and plant.value("pod_allocations", **_pod_labels("team-y", "infer-0", "server", "b"))
        ),
        what="worker memory, registrations and pod series",
    )
    status, body = plant.get("/metrics")
    assert status == 200
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == b"" and check.stderr.strip() == b""  # not even a lint hint

    got = plant.series()
    for name, hcas in (("a", 2), ("b", 1), ("c", 1)):
        res = full(name)
        assert plant.value("resource_devices", resource=res) == 4  # rdmaHcaMax
        assert got[(P + "resource_healthy_devices", frozenset({("resource", res)}))] == 4
        assert got[(P + "resource_hcas", frozenset({("resource", res)}))] == hcas
        assert got[(P + "resource_usable_hcas", frozenset({("resource", res)}))] == hcas
        assert got[(P + "worker_up", frozenset({("resource", res)}))] == 1
        assert (
            got[(P + "allocations_total", frozenset({("resource", res), ("result", "success")}))]
            == 0
        )
        assert (
            got[(P + "registrations_total", frozenset({("resource", res), ("result", "success")}))]
            >= 1
        )
    info = {dict(k[1])["rdma_device"]: dict(k[1]) for k in got if k[0] == P + "hca_info"}
    assert info["mlx5_2"] == {
        "resource": full("b"),
        "pci_address": "0000:9c:00.0",
        "rdma_device": "mlx5_2",
        "netdev": "ib2",
        "link_type": "infiniband",
        "numa_node": "1",
    }
    assert {k for k in got if k[0] == P + "hca_port_up"} == {
        (P + "hca_port_up", frozenset({("rdma_device", f"mlx5_{i}"), ("port", "1")}))
        for i in range(4)
    }
    assert got[(P + "device_scans_total", frozenset({("trigger", "start")}))] == 1
    assert got[(P + "config_reloads_total", frozenset({("result", "failure")}))] == 0
    assert got[(P + "config_last_reload_success_timestamp_seconds", frozenset())] > 1.7e9
    assert got[(P + "config_last_reload_successful", frozenset())] == 1
    assert got[(P + "build_info", frozenset({("version", "0.1.0")}))] == 1
    # Pods come from the PodResources simulator, only for this plugin's resources.
    pods = {k: v for k, v in got.items() if k[0] == P + "pod_allocations"}
    assert pods == {
        (
            P + "pod_allocations",
            frozenset(_pod_labels("team-x", "trainer-0", "main", "a").items()),
        ): 2,
        (
            P + "pod_allocations",
            frozenset(_pod_labels("team-y", "infer-0", "server", "b").items()),
        ): 1,
    }
    assert plant.get("/healthz")[0] == 200
    assert plant.get("/readyz") == (200, "ok\n3 resources registered\n")
    # The endpoint lives in the supervisor, which still never loads grpc (its poller child does).
    assert plant.proc is not None
    maps = Path(f"/proc/{plant.proc.pid}/maps").read_text()
    assert "cygrpc" not in maps


def until(predicate: Callable[[], T], what: str = "", timeout: float = 10.0) -> T:
    """`wait_until` at a pace fit for HTTP scrapes of a shared machine."""
    return wait_until(predicate, timeout=timeout, interval=0.05, what=what)


def _pod_labels(ns: str, pod: str, container: str, name: str) -> dict[str, str]:
    return {"namespace": ns, "pod": pod, "container": container, "resource": full(name)}


def test_allocations_count_up_after_allocate(plant: MetricsPlant) -> None:
    res = full("a")
    devices = plant.kubelet.wait_for_devices(res, lambda ds: len(ds) == 4)
    plant.kubelet.allocate(res, [[devices[0].id], [devices[1].id]])
    plant.kubelet.allocate(res, [[devices[2].id]])
    with pytest.raises(grpc.RpcError):
        plant.kubelet.allocate(res, [["no-such-device"]])

    def counted() -> bool:
        return (
            plant.value("allocations_total", resource=res, result="success") == 2
            and plant.value("allocations_total", resource=res, result="failure") == 1
        )

    until(counted, timeout=10, what="allocations_total 2 success, 1 failure")
    assert plant.value("allocate_duration_seconds_count", resource=res) == 3
    assert plant.value("allocate_duration_seconds_bucket", resource=res, le="+Inf") == 3
    # Other resources did not move.
    assert plant.value("allocations_total", resource=full("b"), result="success") == 0


def test_kill_9_counts_a_worker_restart_and_keeps_counters(plant: MetricsPlant) -> None:
    res = full("b")
    devices = plant.kubelet.wait_for_devices(res, lambda ds: len(ds) == 4)
    plant.kubelet.allocate(res, [[devices[0].id]])
    until(
        lambda: plant.value("allocations_total", resource=res, result="success") == 1,
        what="the allocation counted",
    )
    old = _worker_pid(plant, "b")
    os.kill(old, signal.SIGKILL)
    until(
        lambda: plant.value("worker_restarts_total", resource=res, reason="killed") == 1,
        what="worker_restarts_total{reason=killed} == 1",
    )
    plant.wait_registered(["b"], count=2)
    until(
        lambda: (
            plant.worker("b").pid not in (0, old)
            and plant.value("worker_up", resource=res) == 1
            and plant.get("/readyz")[0] == 200
        ),
        what="the new worker up and registered",
    )
    # The new process starts its counters at zero; the exported counter does not go back.
    assert plant.value("allocations_total", resource=res, result="success") == 1
    # The other resource's restart counters exist from its start, at 0, and did not move.
    assert plant.value("worker_restarts_total", resource=full("a"), reason="killed") == 0


def test_config_reloads_are_counted_and_applied(plant: MetricsPlant) -> None:
    before = plant.value("config_last_reload_success_timestamp_seconds")
    plant.write_config("{ not json")
    until(
        lambda: plant.value("config_reloads_total", result="failure") == 1,
        what='config_reloads_total{result="failure"} == 1',
    )
    assert plant.value("config_reloads_total", result="success") == 0
    assert plant.value("config_last_reload_success_timestamp_seconds") == before
    assert plant.value("config_last_reload_successful") == 0
    assert plant.value("resource_devices", resource=full("c")) == 4  # the running config stays

    # A good one: a's rdmaHcaMax changes (no device moves) and c leaves the config.
    good = three_resources()
    good["configList"][0]["rdmaHcaMax"] = 7
    del good["configList"][2]
    plant.write_config(good)
    until(
        lambda: (
            plant.value("config_reloads_total", result="success") == 1
            and plant.value("resource_devices", resource=full("a")) == 7
        ),
        what="the reload counted and a's devices at 7",
    )
    until(
        lambda: not any(("resource", full("c")) in labels for _, labels in plant.series()),
        what="every series of the removed resource gone",
    )
    after = plant.value("config_last_reload_success_timestamp_seconds")
    assert before is not None and after is not None and after > before
    assert plant.value("config_last_reload_successful") == 1
    # The pod holding b's device stays; readiness now counts the two configured resources.
    until(lambda: plant.get("/readyz") == (200, "ok\n2 resources registered\n"))


@pytest.mark.parametrize("plant", [1], indirect=True)  # periodicUpdateInterval 1 s: rescans
def test_port_change_moves_port_up_and_health(plant: MetricsPlant) -> None:
    up = {"rdma_device": "mlx5_3", "port": "1"}
    assert plant.value("hca_port_up", **up) == 1
    plant.tree.set_port_state("mlx5_3", 1, "DOWN")
    until(
        lambda: (
            plant.value("hca_port_up", **up) == 0
            and plant.value("resource_healthy_devices", resource=full("c")) == 0
        ),
        what="mlx5_3 port 1 down and c without healthy devices",
    )
    assert plant.value("resource_devices", resource=full("c")) == 4
    assert plant.value("hca_port_up", rdma_device="mlx5_2", port="1") == 1
    scans = plant.value("device_scans_total", trigger="periodic")
    assert scans is not None and scans >= 1
    plant.tree.set_port_state("mlx5_3", 1, "ACTIVE")
    until(
        lambda: (
            plant.value("hca_port_up", **up) == 1
            and plant.value("resource_healthy_devices", resource=full("c")) == 4
        ),
        what="mlx5_3 port 1 up again",
    )


def test_readyz_is_503_until_every_resource_registers() -> None:
    rig = MetricsPlant(three_resources())
    try:
        rig.kubelet.stop()  # no kubelet yet: workers run but cannot register
        rig.start()
        until(rig.answers, timeout=10, what="the metrics endpoint answering")

        def waiting() -> str:
            status, body = rig.get("/readyz")
            return body if status == 503 and all(full(n) in body for n in ABC) else ""

        assert "not registered" in until(waiting, "/readyz 503 naming a, b and c")
        until(
            lambda: all(rig.value("worker_up", resource=full(n)) == 1 for n in ABC),
            what="workers up though unregistered",
        )
        assert rig.get("/healthz")[0] == 200  # alive, just not ready
        rig.kubelet.start()
        rig.wait_registered(ABC)
        until(lambda: rig.get("/readyz")[0] == 200, "/readyz 200 after registration")
        assert rig.get("/readyz") == (200, "ok\n3 resources registered\n")
        # The kubelet going away un-registers every resource: not ready again.
        rig.kubelet.stop()
        until(lambda: rig.get("/readyz")[0] == 503, "/readyz 503 with the kubelet stopped")
        until(
            lambda: (
                (rig.value("registrations_total", resource=full("a"), result="success") or 0) >= 1
            ),
            what="the registration counted",
        )
    finally:
        print(rig.log()[-8000:])
        rig.close()


def test_unparseable_metrics_address_is_a_usage_error_before_starting() -> None:
    rig = Plant(three_resources())
    try:
        for address, words in (
            ("no-port-here", "must be [host]:port"),
            ("127.0.0.1:99999", "port must be 0-65535"),
            ("no-such-host.invalid:9478", "does not resolve"),
        ):
            args = rig.command()
            args[args.index("--metrics-address") + 1] = address
            done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=20)
            assert done.returncode == exitcodes.USAGE, done.stderr
            assert words in done.stderr and "--metrics-address" in done.stderr
            assert not rig.kubelet.registrations()  # nothing started
            assert rig.worker_processes() == []
    finally:
        rig.close()


def test_taken_metrics_port_fails_soft_and_binds_once_freed() -> None:
    """Something else holds the port: the plugin serves the kubelet anyway, `status` says why,
    and the endpoint comes up within the bind backoff once the port is free."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    rig = MetricsPlant(three_resources())
    rig.port, rig.url = port, f"http://127.0.0.1:{port}"
    # Retries every second at most, so the test waits on the bind, not on a 30 s production cap.
    rig.timings = {**E2E_TIMINGS, "metrics_bind_initial": 0.2, "metrics_bind_cap": 1.0}
    try:
        rig.start()
        rig.wait_registered(ABC)  # the workers serve the kubelet without the endpoint

        def not_serving() -> Status | None:
            status = rig.status()
            return status if status.metrics_endpoint.startswith("not serving") else None

        status = until(not_serving, what="status saying the endpoint is not serving")
        assert status is not None
        assert "Address already in use" in status.metrics_endpoint, status.metrics_endpoint
        assert f"127.0.0.1:{port}" in status.metrics_endpoint
        text = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--runtime-dir", str(rig.runtime_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        assert "metrics endpoint: not serving" in text and "Address already in use" in text
        assert rig.proc is not None and rig.proc.poll() is None
        busy.close()
        until(rig.answers, what="the endpoint bound once the port is free")
        assert rig.get("/healthz")[0] == 200
        until(lambda: rig.get("/readyz")[0] == 200, what="/readyz 200")
        assert rig.status().metrics_endpoint == f"serving on {rig.url}"
        log = rig.log()
        assert log.count("Address already in use") == 1, log  # once per run of failures
        assert "metrics endpoint bound" in log
    finally:
        busy.close()
        print(rig.log()[-8000:])
        rig.close()


def _pollers(rig: MetricsPlant) -> list[int]:
    """Live PodResources poller processes of this rig."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info.get("cmdline") or []
        if (
            "podresources.poller" in cmd
            and str(rig.pod_socket) in cmd
            and proc.info.get("status") != psutil.STATUS_ZOMBIE
        ):
            found.append(proc.pid)
    return found


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_closes_the_endpoint_and_stops_the_poller(plant: MetricsPlant) -> None:
    assert len(_pollers(plant)) == 1
    code, seconds = plant.terminate()
    assert code == exitcodes.OK and seconds < 5.0
    assert _refused(plant.port)
    assert _pollers(plant) == [] and plant.worker_processes() == []


def test_sigkill_of_the_supervisor_leaves_no_poller(plant: MetricsPlant) -> None:
    assert plant.proc is not None and len(_pollers(plant)) == 1
    plant.proc.kill()
    plant.proc.wait(5)
    until(lambda: _pollers(plant) == [], "the poller gone after its parent", timeout=5)
    assert _refused(plant.port)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package)")
def test_real_prometheus_scrapes_the_live_supervisor(
    plant: MetricsPlant, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    prom = Prometheus(tmp_path, f"127.0.0.1:{plant.port}")
    request.addfinalizer(prom.stop)
    wait_until(prom.ready, timeout=20, interval=0.1, what="prometheus ready")
    wait_until(
        lambda: prom.value('up{job="rdma-shared-dp"}') == 1.0,
        timeout=15,
        interval=0.2,
        what="up == 1",
    )
    devices = prom.query("rdma_shared_dp_resource_devices")
    assert sorted((r["metric"]["resource"], r["value"][1]) for r in devices) == [
        (full(n), "4") for n in ABC
    ]
    assert prom.value(f'rdma_shared_dp_resource_hcas{{resource="{full("a")}"}}') == 2.0
    assert prom.value("sum(rdma_shared_dp_worker_up)") == 3.0
    wait_until(
        lambda: prom.value("sum(rdma_shared_dp_pod_allocations)") == 3.0,
        timeout=10,
        interval=0.2,
        what="the pod series in prometheus",
    )


def test_metrics_off_loads_neither_prometheus_client_nor_psutil() -> None:
    # The import check the supervisor's memory budget relies on: with an empty address the
    # commands module must not pull in the metrics stack.
    code = (
        "import sys; from cli.commands import _observer; import argparse;"
        "from supervisor.timings import Timings;"
        "o = _observer(argparse.Namespace(metrics_address='', pod_resources_socket='x'),"
        " Timings());"
        "print(o, 'prometheus_client' in sys.modules, 'psutil' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=20
    )
    assert done.stdout.split() == ["None", "False", "False"], done.stderr


# ---- the glue alone: event orders the live tests cannot time -------------------------------------


class _Table:
    """A StatusSource with a settable worker table."""

    def __init__(self) -> None:
        self.rows: tuple[WorkerStatus, ...] = ()

    def worker_statuses(self) -> tuple[WorkerStatus, ...]:
        return self.rows


def _config(*entries: tuple[str, str, int]) -> Config:
    """(name, prefix, rdmaHcaMax) per resource, each selecting mlx5_0."""
    doc = {"configList": [resource_entry(n, ["mlx5_0"], c, p) for n, p, c in entries]}
    return load_config_bytes(json.dumps(doc).encode())


def _resources(metrics: Metrics) -> set[str]:
    return {
        s.labels["resource"]
        for fam in metrics.collect()
        for s in fam.samples
        if "resource" in s.labels and fam.name != P + "pod_allocations"
    }


def test_observer_drops_removed_and_renamed_resources_for_good() -> None:
    metrics, probes, table = Metrics("test"), Probes(), _Table()
    obs = MetricsObserver(metrics, probes)
    obs.config_applied(_config(("a", "x.io", 4), ("b", "x.io", 4)))
    obs.scan_finished("start", Scan((hca(0),)), 0.01, {"x.io/a": (hca(0),), "x.io/b": ()})
    table.rows = (
        WorkerStatus("x.io/a", "running", 10, 0, 1, 1, True, 1.0, 0),
        WorkerStatus("x.io/b", "running", 11, 0, 0, 0, False, 0.0, 0),
    )
    obs.started(table)
    assert probes.ready() == (False, "x.io/b: not registered with the kubelet yet (worker running)")
    assert metrics.render().count(b'resource_devices{resource="x.io/a"} 4.0') == 1
    # rdmaHcaMax changes and b's prefix changes; the old b keeps stopping and beating.
    obs.config_applied(_config(("a", "x.io", 9), ("b", "y.io", 4)))
    obs.heartbeat("x.io/b", 11, WorkerCounters())
    obs.worker_state_changed("x.io/b", "exited", "stopping", "stopped")
    obs.worker_restarted("x.io/b", "killed")
    assert b'resource_devices{resource="x.io/a"} 9.0' in metrics.render()  # no rescan needed
    assert _resources(metrics) == {"x.io/a"}  # y.io/b has no scan yet; x.io/b stays gone
    obs.resource_removed("x.io/a")
    assert _resources(metrics) == set()
    # Pods of a resource that left the config go at once, not at the next poll.
    obs._pod_rows = [PodAllocation("ns", "p", "c", "y.io/b", 1)]
    obs.config_applied(_config(("b", "y.io", 4)))
    assert b'pod="p"' in metrics.render()
    obs.config_applied(_config(("c", "y.io", 4)))
    assert b'pod="p"' not in metrics.render()


def _https_get(url: str, context: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_tls_with_client_certificates_and_pod_series_off(tmp_path: Path) -> None:
    """The real CLI with the TLS flags and `--pod-metrics off`: plain HTTP gets nothing, a client
    without a certificate only the probes, one with a certificate /metrics without pod series
    (while the poller still runs: the held-ID gauge shows it answered)."""
    pki = make_pki(tmp_path)
    rig = MetricsPlant(three_resources())
    tls_flags = [
        *("--metrics-tls-cert-file", str(pki.server_cert)),
        *("--metrics-tls-key-file", str(pki.server_key)),
        *("--metrics-tls-client-ca-file", str(pki.ca)),
        *("--pod-metrics", "off"),
    ]
    plain_command = rig.command
    rig.command = lambda: [*plain_command(), *tls_flags]  # type: ignore[method-assign]
    url = f"https://127.0.0.1:{rig.port}"
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    known = ssl.create_default_context(cafile=str(pki.ca))
    known.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    try:
        rig.pods.set_pods(_pods())
        rig.start()
        rig.wait_registered(ABC)
        until(lambda: _https_get(url + "/readyz", anonymous)[0] == 200, what="/readyz over TLS")
        with pytest.raises(OSError):  # urllib's URLError, a connection reset: no HTTP answer
            urllib.request.urlopen(rig.url + "/healthz", timeout=3)
        assert _https_get(url + "/metrics", anonymous)[0] == 403
        assert rig.status().metrics_endpoint == f"serving on {url}"

        def scraped() -> str | None:
            status, body = _https_get(url + "/metrics", known)
            assert status == 200
            held = f'{P}retained_device_ids{{resource="{full("a")}"}} 0.0'
            return body if held in body else None

        body = until(scraped, what="the poller's first answer in /metrics")
        assert body is not None
        assert P + "resource_devices" in body
        assert P + "pod_allocations{" not in body
    finally:
        print(rig.log()[-8000:])
        rig.close()


def test_unusable_tls_files_are_a_usage_error_before_starting(tmp_path: Path) -> None:
    rig = Plant(three_resources())
    try:
        for flags, words in (
            (["--metrics-tls-cert-file", str(tmp_path / "nope.pem")], "nope.pem"),
            (["--metrics-tls-client-ca-file", str(tmp_path / "ca.pem")], "needs --metrics-tls"),
        ):
            args = rig.command()
            args[args.index("--metrics-address") + 1] = "127.0.0.1:0"
            done = subprocess.run(
                [*args, *flags], cwd=REPO, capture_output=True, text=True, timeout=20
            )
            assert done.returncode == exitcodes.USAGE, done.stderr
            assert words in done.stderr and "--metrics-tls-" in done.stderr
            assert not rig.kubelet.registrations()
    finally:
        rig.close()
