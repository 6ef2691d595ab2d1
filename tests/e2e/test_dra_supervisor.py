"""The supervisor with `--dra`: its DRA child started, fed, restarted; workers only where DRA is
not (a real `rdma-shared-dp run` on a simulated node, the kubelet simulator, and the stand-in API
server of tests/dra_api.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from cli.status_client import StatusError
from common import exitcodes
from common.messages import DraStatus
from tests.conditions import wait_until
from tests.dra_api import FakeApiServer
from tests.supervisor_rig import REPO, Plant, full, resource_entry, three_resources

NODE = "node-1"


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    server.nodes[NODE] = {"metadata": {"name": NODE, "uid": "node-uid"}}
    yield server
    server.close()


def _plant(
    monkeypatch: pytest.MonkeyPatch, api: FakeApiServer, setting: str, config: Any = None
) -> Plant:
    monkeypatch.setenv("RDMA_SHARED_DP_DRA", setting)
    monkeypatch.setenv("NODE_NAME", NODE)
    monkeypatch.setenv("RDMA_SHARED_DP_DRA_API_SERVER", api.url)
    return Plant(config or three_resources())


def _dra_child(rig: Plant) -> psutil.Process | None:
    assert rig.proc is not None
    for child in psutil.Process(rig.proc.pid).children():
        try:
            if "dra" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_dra_all_serves_every_resource_through_dra_and_starts_no_worker(
    monkeypatch: pytest.MonkeyPatch, api: FakeApiServer
) -> None:
    rig = _plant(monkeypatch, api, "all")
    again: psutil.Process | None = None
    try:
        rig.start()
        wait_until(
            lambda: {"res-a", "res-b", "res-c"} <= set(api.devices()), 20, what="drop-in devices"
        )
        assert [d for d in api.devices() if d.startswith("hca-")]
        assert rig.status().workers == ()
        assert rig.kubelet.registrations() == []
        # A crash of the DRA child is repaired by the lifecycle; the new one gets the state.
        child = wait_until(lambda: _dra_child(rig), 10, what="the DRA child")
        writes = len(api.writes)
        child.send_signal(signal.SIGKILL)
        again = wait_until(
            lambda: (c := _dra_child(rig)) is not None and c.pid != child.pid and c, 20
        )
        wait_until(lambda: "DRA driver exited" in rig.log(), 10, what="the restart logged")
        with api.lock:
            api.slices.clear()  # the new incarnation must publish from the state it was fed
        wait_until(lambda: {"res-a", "res-b", "res-c"} <= set(api.devices()), 40)
        assert again.is_running() and len(api.writes) > writes
        # A resource added to the config reaches the pool, and still no worker starts.
        config = three_resources()
        config["configList"].append(resource_entry("d", rdma=["mlx5_0"]))
        rig.write_config(config)
        wait_until(lambda: "res-d" in api.devices(), 20, what="res-d published")
        assert rig.status().workers == ()
    finally:
        print(rig.log()[-6000:])
        rig.close()
    # Stopped with the supervisor (SIGTERM, within the shutdown budget).
    assert again is not None
    wait_until(lambda: not again.is_running() or again.status() == psutil.STATUS_ZOMBIE, 10)


def test_dra_list_leaves_the_other_resources_to_workers(
    monkeypatch: pytest.MonkeyPatch, api: FakeApiServer
) -> None:
    rig = _plant(monkeypatch, api, "a")
    try:
        rig.start()
        rig.wait_registered(["b", "c"])
        wait_until(lambda: "res-a" in api.devices(), 20, what="res-a published")
        assert not {"res-b", "res-c"} & set(api.devices())
        assert [w.resource for w in rig.status().workers] == [full("b"), full("c")]
        assert rig.registrations("a") == 0
    finally:
        print(rig.log()[-6000:])
        rig.close()


def test_a_dra_setting_that_does_not_fit_the_config_is_refused(
    monkeypatch: pytest.MonkeyPatch, api: FakeApiServer
) -> None:
    rig = _plant(monkeypatch, api, "a,zz")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            rig.command(), cwd=REPO, capture_output=True, text=True, timeout=30, env=os.environ
        )

    try:
        out = run()
        assert out.returncode == exitcodes.CONFIG_INVALID
        assert "--dra names zz, not in the config" in out.stderr
        monkeypatch.delenv("NODE_NAME")
        monkeypatch.setenv("RDMA_SHARED_DP_DRA", "all")
        out = run()
        assert out.returncode == exitcodes.USAGE
        assert "--dra: needs RDMA_SHARED_DP_NODE_NAME or NODE_NAME" in out.stderr
    finally:
        rig.close()


def test_metrics_and_readyz_show_the_dra_side(
    monkeypatch: pytest.MonkeyPatch, api: FakeApiServer
) -> None:
    import urllib.error
    import urllib.request

    from tests.e2e.kubelet.rig import free_port

    port = free_port()
    rig = _plant(monkeypatch, api, "all")
    monkeypatch.setattr(
        rig, "command", lambda: [*Plant.command(rig), "--metrics-address", f"127.0.0.1:{port}"]
    )

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:
            return 0, ""

    try:
        rig.start()
        wait_until(
            lambda: "rdma_shared_dp_dra_slices_published 1.0" in get("/metrics")[1], 30, what="m"
        )
        published = f"rdma_shared_dp_dra_devices {len(api.devices())}.0"
        text = wait_until(lambda: (t := get("/metrics")[1]) and published in t and t, 30)
        assert 'rdma_shared_dp_dra_slice_writes_total{verb="create"} 1.0' in text
        # The simulated kubelet runs no plugin watcher here: not ready, and /readyz says why.
        code, body = get("/readyz")
        assert code == 503 and "DRA driver: not registered" in body
    finally:
        print(rig.log()[-6000:])
        rig.close()


def test_status_shows_the_dra_driver(monkeypatch: pytest.MonkeyPatch, api: FakeApiServer) -> None:
    rig = _plant(monkeypatch, api, "all")
    try:
        rig.start()

        def published() -> DraStatus | None:
            with contextlib.suppress(StatusError):
                dra = rig.status().dra
                return dra if dra is not None and dra.published else None
            return None

        dra = wait_until(published, 30, what="the DRA driver in the status, published")
        assert dra.devices == len(api.devices()) and dra.prepared_claims == 0
        assert not dra.registered  # the simulated kubelet runs no plugin watcher here
        out = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--runtime-dir", str(rig.runtime_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "DRA driver pid" in out.stdout and "slices published (generation 1" in out.stdout
    finally:
        print(rig.log()[-6000:])
        rig.close()
