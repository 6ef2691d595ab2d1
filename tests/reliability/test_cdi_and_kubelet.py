"""A CDI folder that is read-only or full, and a slow kubelet, against real processes.

CDI: the folder is a small tmpfs we mount (root needed), read-only at start, then writable, then
full while a spec must change. While a spec cannot be written the kubelet is told every device of
that resource is Unhealthy and Allocate is refused; the other resources are untouched; once the
folder works again every spec is written and the devices are Healthy. Nothing grows meanwhile.

Slow kubelet: a kubelet of our own on `kubelet.sock` that takes seconds inside Register and reads
its ListAndWatch stream slowly, while the supervisor sends a burst of device changes. The worker
registers once, keeps heartbeating, and the kubelet ends up with the latest snapshot.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.status_client import render_text
from common.messages import Heartbeat
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from simulator.kubelet import HEALTHY, UNHEALTHY
from tests.conditions import hard_timeout, missing, wait_until
from tests.reliability.footprint import Footprint, scale
from tests.standin_supervisor import Rig, make_candidate, make_resource
from tests.supervisor_rig import Plant, full, three_resources

ABC = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _hard_timeout() -> Iterator[None]:
    with hard_timeout(90):
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as err:
        missing(f"cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): {err}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=10)


def _healths(rig: Plant, name: str) -> set[str]:
    return {d.health for d in rig.kubelet.devices(full(name)) or []}


def _allocate_code(rig: Plant, name: str) -> grpc.StatusCode:
    try:
        rig.kubelet.allocate(full(name), [["0"]], timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


class CdiPlant(Plant):
    """The rig's supervisor in CDI mode with its metrics endpoint on."""

    def __init__(self) -> None:
        super().__init__(three_resources(interval=1), use_cdi=True)
        self.port = free_port()

    def command(self) -> list[str]:
        args = super().command()
        args[args.index("--metrics-address") + 1] = f"127.0.0.1:{self.port}"
        return args

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        status, body = self.get("/metrics")
        assert status == 200, body
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == f"rdma_shared_dp_{name}" and sample.labels == labels:
                    return float(sample.value)
        return None


def _visible(rig: CdiPlant, name: str, reason: str | None) -> bool:
    """Metrics, status and /readyz all say the same about `name`'s CDI spec (None: current)."""
    res = full(name)
    row = rig.worker(name)
    current = rig.metric("resource_cdi_spec_current", resource=res)
    healthy = rig.metric("resource_healthy_devices", resource=res)
    code, ready = rig.get("/readyz")
    if reason is None:
        return (
            row.cdi == "current"
            and current == 1
            and bool(healthy)
            and f"{res}: CDI spec" not in ready
        )
    errors = rig.metric("cdi_write_errors_total", resource=res, reason=reason) or 0
    return (
        row.cdi == f"not written ({reason})"
        and row.healthy == 0
        and current == 0
        and healthy == 0
        and errors > 0
        and code == 503
        and f"{res}: CDI spec not written ({reason})" in ready
    )


@pytest.mark.root
def test_cdi_folder_read_only_then_full() -> None:
    rig = CdiPlant()
    try:
        with small_tmpfs(rig.cdi_dir, "64k"):
            _mount("-o", "remount,ro", str(rig.cdi_dir))
            rig.start()
            rig.wait_registered(ABC, timeout=20)
            for name in ABC:
                rig.kubelet.wait_for_devices(
                    full(name), lambda ds: len(ds) == 4 and {d.health for d in ds} == {UNHEALTHY}
                )
                assert _allocate_code(rig, name) == grpc.StatusCode.FAILED_PRECONDITION
            assert "Read-only file system" in rig.log()
            for name in ABC:
                wait_until(functools.partial(_visible, rig, name, "read_only"), 10, what=name)
            text = render_text(rig.status())  # what `rdma-shared-dp status` prints
            assert f"{full('a')}: CDI spec not written (read_only); Allocate is refused" in text
            assert rig.proc is not None
            supervisor = Footprint.of(rig.proc.pid)

            _mount("-o", "remount,rw", str(rig.cdi_dir))
            wait_until(lambda: len(list(rig.cdi_dir.glob("*.json"))) == 3, 15, what="3 specs")
            for name in ABC:
                rig.kubelet.wait_for_devices(full(name), lambda ds: _all(ds, HEALTHY), timeout=15)
                assert _allocate_code(rig, name) == grpc.StatusCode.OK
                wait_until(functools.partial(_visible, rig, name, None), 10, what=name)
            wait_until(lambda: rig.get("/readyz")[0] == 200, 10, what="ready again")

            # Full: a's spec must change (one of its two HCAs goes) and cannot be written.
            filler = rig.cdi_dir / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            rig.tree.remove_function("0000:3c:00.0")
            rig.kubelet.wait_for_devices(full("a"), lambda ds: _all(ds, UNHEALTHY), timeout=15)
            assert _allocate_code(rig, "a") == grpc.StatusCode.FAILED_PRECONDITION
            assert (
                _healths(rig, "b") == {HEALTHY} and _allocate_code(rig, "b") == grpc.StatusCode.OK
            )
            wait_until(lambda: "No space left on device" in rig.log(), 10, what="ENOSPC logged")
            wait_until(lambda: _visible(rig, "a", "no_space"), 10, what="a: no_space visible")
            assert _visible(rig, "b", None) and _visible(rig, "c", None)

            filler.unlink()
            rig.kubelet.wait_for_devices(full("a"), lambda ds: _all(ds, HEALTHY), timeout=15)
            assert _allocate_code(rig, "a") == grpc.StatusCode.OK
            wait_until(lambda: _visible(rig, "a", None), 10, what="a current again")
            assert rig.get("/readyz")[0] == 200
            assert "mlx5_1" not in (rig.cdi_dir / "rdma-shared-dp_example.com_a.json").read_text()
            later = Footprint.of(rig.proc.pid)
            print(
                f"\n[reliability] CDI read-only then full: supervisor {supervisor.describe()} "
                f"-> {later.describe()}"
            )
            supervisor.assert_bounded(later, "supervisor after CDI failures")
            for w in rig.status().workers:
                assert Footprint.of(w.pid).fds < 40
            rig.terminate()
    finally:
        rig.close()


def _all(devices: Any, health: str) -> bool:
    return bool(devices) and {d.health for d in devices} == {health}


class SlowKubelet(dp_grpc.RegistrationServicer):  # type: ignore[misc]
    """Register takes `delay` seconds (after dialing the plugin, as a kubelet does inside it);
    the stream it then opens is read one message every `read_every` seconds."""

    def __init__(self, folder: Path, delay: float, read_every: float) -> None:
        self.folder, self.delay, self.read_every = folder, delay, read_every
        self.registers = 0
        self.snapshots: list[list[tuple[str, str]]] = []
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server = grpc.server(ThreadPoolExecutor(4))
        dp_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{folder / 'kubelet.sock'}")
        self.server.start()

    def Register(self, request: dp.RegisterRequest, context: Any) -> dp.Empty:
        self.registers += 1
        channel = grpc.insecure_channel(f"unix:{self.folder / request.endpoint}")
        stub = dp_grpc.DevicePluginStub(channel)
        stub.GetDevicePluginOptions(dp.Empty(), timeout=10)
        self.stop.wait(self.delay)  # the slowness being simulated, not a synchronisation
        thread = threading.Thread(target=self._read, args=(channel, stub), daemon=True)
        thread.start()
        self._threads.append(thread)
        return dp.Empty()

    def _read(self, channel: grpc.Channel, stub: Any) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in stub.ListAndWatch(dp.Empty()):
                self.snapshots.append([(d.ID, d.health) for d in response.devices])
                if self.stop.wait(self.read_every):
                    break
        channel.close()

    def close(self) -> None:
        self.stop.set()
        self.server.stop(None)
        for thread in self._threads:
            thread.join(5)


def test_a_slow_kubelet(tmp_path: Path) -> None:
    rig = Rig(tmp_path, start_kubelet=False)
    rig.dp_dir.mkdir(parents=True, exist_ok=True)
    kubelet = SlowKubelet(rig.dp_dir, delay=2.5, read_every=0.3)
    try:
        resource = make_resource("hca_a", "example.com", 4)
        proc = rig.start_worker(resource, (make_candidate(0),))
        rig.supervisor.wait_registered("hca_a", timeout=20)
        before = Footprint.of(proc.pid)
        updates = scale(30, 600)
        for i in range(updates):
            state = "DOWN" if i % 2 == 0 else "ACTIVE"
            rig.supervisor.update_devices("hca_a", (make_candidate(0, port_state=state),))
        rig.supervisor.update_devices("hca_a", (make_candidate(0, port_state="DOWN"),))
        wait_until(
            lambda: kubelet.snapshots and {h for _, h in kubelet.snapshots[-1]} == {UNHEALTHY},
            30,
            what="the slow kubelet holds the latest snapshot",
        )
        beats = len(rig.supervisor.received("hca_a", Heartbeat))
        wait_until(
            lambda: len(rig.supervisor.received("hca_a", Heartbeat)) >= beats + 3,
            10,
            what="heartbeats go on",
        )
        assert kubelet.registers == 1, "the worker registered again with a slow kubelet"
        # Snapshots are coalesced: the slow reader never gets a backlog of every change.
        assert len(kubelet.snapshots) < updates
        later = Footprint.of(proc.pid)
        print(
            f"\n[reliability] slow kubelet, {updates} device changes: worker "
            f"{before.describe()} -> {later.describe()}, {len(kubelet.snapshots)} snapshots read"
        )
        before.assert_bounded(later, "worker with a slow kubelet")
        assert proc.poll() is None
    finally:
        kubelet.close()
        rig.close()
