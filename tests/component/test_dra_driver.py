"""The DRA driver process with a real gRPC client speaking DRAPlugin v1 and v1beta1 and the
plugin watcher's registration, fed state lines on its stdin like the supervisor does, against a
stand-in API server over real HTTP (tests/dra_api.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dra.feed import NodeState
from dra.names import claim_spec_file
from proto.dra.v1 import api_pb2 as v1
from proto.dra.v1 import api_pb2_grpc as v1_grpc
from proto.dra.v1beta1 import api_pb2 as v1beta1
from proto.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from tests.conditions import wait_until
from tests.dra_api import FakeApiServer
from tests.dra_rig import DRIVER, DriverProcess
from tests.factories import make_candidate, make_resource

NODE = "node-1"
REPO = Path(__file__).resolve().parents[2]


RESOURCE = make_resource("hca_a", "rdma", count=4)
STATE = NodeState((RESOURCE,), (RESOURCE,), (make_candidate(0), make_candidate(1)))


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    server.nodes[NODE] = {"metadata": {"name": NODE, "uid": "node-uid"}}
    yield server
    server.close()


@pytest.fixture
def driver(short_tmp: Path, api: FakeApiServer) -> Iterator[DriverProcess]:
    process = DriverProcess(short_tmp, api.url, NODE, extra=["--resync", "0.3"])
    process.start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.kill(signal.SIGTERM)


def _claim(uid: str, name: str, device: str) -> dict[str, Any]:
    result = {"request": "r", "driver": DRIVER, "pool": NODE, "device": device, "shareID": "s9"}
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": uid},
        "status": {"allocation": {"devices": {"results": [result]}}},
    }


def test_registration_answers_the_plugin_watcher(driver: DriverProcess) -> None:
    with grpc.insecure_channel(f"unix://{driver.reg_sock}") as channel:
        stub = reg_grpc.RegistrationStub(channel)
        info = stub.GetInfo(reg.InfoRequest(), timeout=5)
        assert (info.type, info.name, info.endpoint) == ("DRAPlugin", DRIVER, driver.dra_sock)
        assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True), timeout=5)
    wait_until(lambda: driver.last().get("registered"), 10, what="registered in the status")


def test_slices_published_once_and_republished_after_deletion(
    driver: DriverProcess, api: FakeApiServer
) -> None:
    driver.feed(STATE)
    expected = ["hca-0000-03-00-0", "hca-0000-04-00-0", "res-hca-a"]
    wait_until(lambda: api.devices() == expected, 10, what="devices published")
    wait_until(lambda: driver.last().get("published"), 10, what="published in the status")
    writes = len(api.writes)
    # Resyncs with nothing changed write nothing.
    wait_until(lambda: len(driver.statuses) > 10, 10, what="a few status lines")
    assert len(api.writes) == writes
    with api.lock:  # the kubelet deletes the node's slices when it starts
        api.slices.clear()
    wait_until(lambda: api.devices() == expected, 10, what="devices published again")
    (slice_,) = api.slices.values()
    assert slice_["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
    # A port going down taints the devices; the HCA going away removes its device.
    down = NodeState((RESOURCE,), (RESOURCE,), (make_candidate(0, port_state="DOWN"),))
    driver.feed(down)
    wait_until(lambda: api.devices() == ["hca-0000-03-00-0", "res-hca-a"], 10, what="removal")
    (slice_,) = api.slices.values()
    assert all("taints" in d for d in slice_["spec"]["devices"])
    assert slice_["spec"]["pool"]["generation"] == 2


def test_prepare_and_unprepare_over_v1_and_v1beta1(
    driver: DriverProcess, api: FakeApiServer, short_tmp: Path
) -> None:
    driver.feed(STATE)
    wait_until(lambda: api.devices(), 10, what="devices published")
    api.claims[("ns", "a")] = _claim("uid-a", "a", "res-hca-a")
    api.claims[("ns", "b")] = _claim("uid-b", "b", "hca-0000-04-00-0")
    spec = short_tmp / "cdi" / claim_spec_file("uid-a")
    with grpc.insecure_channel(f"unix://{driver.dra_sock}") as channel:
        new, old = v1_grpc.DRAPluginStub(channel), v1beta1_grpc.DRAPluginStub(channel)
        claims = [v1.Claim(namespace="ns", name="a", uid="uid-a")]
        answer = new.NodePrepareResources(v1.NodePrepareResourcesRequest(claims=claims), timeout=10)
        (device,) = answer.claims["uid-a"].devices
        assert (device.pool_name, device.device_name, device.share_id) == (NODE, "res-hca-a", "s9")
        assert list(device.cdi_device_ids) == [f"{DRIVER}/claim=uid-a-res-hca-a"]
        assert list(device.request_names) == ["r"]
        assert spec.exists()
        both = [
            v1beta1.Claim(namespace="ns", name="a", uid="uid-a"),
            v1beta1.Claim(namespace="ns", name="b", uid="uid-b"),
            v1beta1.Claim(namespace="ns", name="gone", uid="uid-g"),
        ]
        answer = old.NodePrepareResources(
            v1beta1.NodePrepareResourcesRequest(claims=both), timeout=10
        )
        assert answer.claims["uid-a"].devices[0].device_name == "res-hca-a"
        assert answer.claims["uid-b"].devices[0].device_name == "hca-0000-04-00-0"
        assert "404 NotFound" in answer.claims["uid-g"].error
        wait_until(lambda: driver.last().get("prepared_claims") == 2, 10, what="2 prepared")
        gone = old.NodeUnprepareResources(
            v1beta1.NodeUnprepareResourcesRequest(claims=both[:1]), timeout=10
        )
        assert gone.claims["uid-a"].error == ""
        assert not spec.exists()
    counters = wait_until(lambda: driver.last().get("prepared_claims") == 1 and driver.last())
    assert counters["counters"]["claims"] == {
        "prepare:ok": 3,
        "prepare:error": 1,
        "unprepare:ok": 1,
    }


def test_kill_9_then_unprepare_still_cleans_up_and_nothing_is_rewritten(
    driver: DriverProcess, api: FakeApiServer, short_tmp: Path
) -> None:
    driver.feed(STATE)
    wait_until(lambda: driver.last().get("published"), 10, what="published")
    api.claims[("ns", "a")] = _claim("uid-a", "a", "res-hca-a")
    claims = [v1.Claim(namespace="ns", name="a", uid="uid-a")]
    with grpc.insecure_channel(f"unix://{driver.dra_sock}") as channel:
        v1_grpc.DRAPluginStub(channel).NodePrepareResources(
            v1.NodePrepareResourcesRequest(claims=claims), timeout=10
        )
    assert driver.kill() == -signal.SIGKILL
    writes = len(api.writes)
    del api.claims[("ns", "a")]  # the claim is gone from the API server by now
    driver.statuses.clear()
    driver.start()
    driver.feed(STATE)
    wait_until(lambda: driver.last().get("published"), 10, what="published after the restart")
    assert len(api.writes) == writes  # same devices: no write
    assert driver.last()["prepared_claims"] == 1
    with grpc.insecure_channel(f"unix://{driver.dra_sock}") as channel:
        answer = v1_grpc.DRAPluginStub(channel).NodeUnprepareResources(
            v1.NodeUnprepareResourcesRequest(claims=claims), timeout=10
        )
    assert answer.claims["uid-a"].error == ""
    assert not (short_tmp / "cdi" / claim_spec_file("uid-a")).exists()


def test_api_server_away_then_back(driver: DriverProcess, api: FakeApiServer) -> None:
    api.down = True
    driver.feed(STATE)
    status = wait_until(lambda: "503" in driver.last().get("publish_error", "") and driver.last())
    assert not status["published"]
    api.down = False
    wait_until(lambda: driver.last().get("published"), 20, what="published once it answers")
    assert api.devices()


def test_end_of_input_stops_the_driver_and_removes_its_sockets(driver: DriverProcess) -> None:
    assert driver.proc is not None and driver.proc.stdin is not None
    driver.proc.stdin.close()
    assert driver.proc.wait(10) == 0
    assert not os.path.exists(driver.reg_sock) and not os.path.exists(driver.dra_sock)


def test_a_node_made_again_owns_the_slices_made_after(
    driver: DriverProcess, api: FakeApiServer
) -> None:
    driver.feed(STATE)
    wait_until(lambda: api.devices(), 10, what="devices published")
    with api.lock:  # the Node deleted (its slices garbage-collected) and made again
        api.nodes[NODE] = {"metadata": {"name": NODE, "uid": "node-uid-2"}}
        api.slices.clear()

    def owner() -> str:
        with api.lock:
            found = [s["metadata"]["ownerReferences"][0]["uid"] for s in api.slices.values()]
        return found[0] if found else ""

    assert wait_until(owner, 10, what="slices published again") == "node-uid-2"


def test_health_stream_follows_the_ports(driver: DriverProcess) -> None:
    from proto.drahealth.v1alpha1 import api_pb2 as health
    from proto.drahealth.v1alpha1 import api_pb2_grpc as health_grpc

    driver.feed(STATE)
    with grpc.insecure_channel(f"unix://{driver.dra_sock}") as channel:
        stream = health_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
            health.NodeWatchResourcesRequest(), timeout=20
        )
        first = next(stream)
        states = {d.device.device_name: d.health for d in first.devices}
        assert states == {
            "res-hca-a": health.HEALTHY,
            "hca-0000-03-00-0": health.HEALTHY,
            "hca-0000-04-00-0": health.HEALTHY,
        }
        assert {d.device.pool_name for d in first.devices} == {NODE}
        down = (make_candidate(0), make_candidate(1, port_state="DOWN"))
        driver.feed(NodeState((RESOURCE,), (RESOURCE,), down))
        second = next(stream)
        states = {d.device.device_name: d.health for d in second.devices}
        assert states["hca-0000-04-00-0"] == health.UNHEALTHY
        assert states["res-hca-a"] == health.HEALTHY  # one of its HCAs still carries traffic
        stream.cancel()


def test_a_kubelet_registration_brings_deleted_slices_back_before_the_resync(
    short_tmp: Path, api: FakeApiServer
) -> None:
    process = DriverProcess(short_tmp, api.url, NODE, extra=["--resync", "600"])
    process.start()
    try:
        process.feed(STATE)
        wait_until(lambda: api.devices(), 10, what="devices published")
        with api.lock:  # a kubelet starting deletes the node's slices, then registers plugins
            api.slices.clear()
        with grpc.insecure_channel(f"unix://{process.reg_sock}") as channel:
            reg_grpc.RegistrationStub(channel).NotifyRegistrationStatus(
                reg.RegistrationStatus(plugin_registered=True), timeout=5
            )
        wait_until(lambda: api.devices(), 15, what="published again, long before the resync")
    finally:
        process.kill(signal.SIGTERM)
