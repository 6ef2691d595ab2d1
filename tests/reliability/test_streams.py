"""Streams from anyone but the kubelet cannot starve it: 50 ListAndWatch streams from another local
client against a real worker, the kubelet's calls answered meanwhile, its registration untouched
when the other streams end, and the stream bound's admission rules on the hub itself.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from common.messages import Heartbeat
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from tests.conditions import wait_until
from tests.reliability.footprint import Footprint
from tests.standin_supervisor import Rig, make_candidate, make_resource
from workers import servicer
from workers.events import EventQueue, StreamLost
from workers.serving import Serving

RESOURCE = make_resource("hca_a", "example.com", 8)
#: The worker's gRPC pool size.
POOL = inspect.signature(Serving.__init__).parameters["threads"].default
FULL = "example.com/hca_a"
OTHERS = 50
#: Generous: the test asserts the calls are answered; make bench reports the latency.
DEADLINE = 5.0


@pytest.fixture(params=["classic", "watcher"])
def rig(tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, mode=request.param)
    r.start_worker(RESOURCE, (make_candidate(0),))
    r.kubelet.wait_for_registration(FULL, timeout=15)
    r.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 8)
    yield r
    r.close()


def open_streams(socket: str, count: int) -> tuple[grpc.Channel, list[Any], list[grpc.RpcError]]:
    """`count` ListAndWatch calls from one other client: (channel, admitted, refusals)."""
    channel = grpc.insecure_channel(f"unix:{socket}")
    stub = dp_grpc.DevicePluginStub(channel)
    admitted: list[Any] = []
    refused: list[grpc.RpcError] = []
    for _ in range(count):
        call = stub.ListAndWatch(dp.Empty(), timeout=60)
        try:
            next(call)  # an admitted stream sends its snapshot at once; a refused one ends
        except grpc.RpcError as err:
            refused.append(err)
        else:
            admitted.append(call)
    return channel, admitted, refused


def _socket(rig: Rig) -> str:
    folder = rig.reg_dir if rig.settings.registration_mode == "watcher" else rig.dp_dir
    return str(folder / "hca_a.sock")


def test_the_pool_keeps_threads_for_unary_calls() -> None:
    assert POOL - servicer.MAX_STREAMS >= 4


def test_fifty_other_streams_cannot_starve_the_kubelet(rig: Rig) -> None:
    pid = rig.procs["hca_a"].pid
    registrations = len(rig.kubelet.registrations())
    before = Footprint.of(pid)
    channel, admitted, refused = open_streams(_socket(rig), OTHERS)
    try:
        # The kubelet holds one stream; the bound leaves the rest to others.
        assert len(admitted) == servicer.MAX_STREAMS - 1
        assert len(refused) == OTHERS - len(admitted)
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "ListAndWatch streams are open" in refused[0].details()
        held = Footprint.of(pid)
        assert held.threads <= before.threads + POOL
        timings = []
        for i in range(20):
            start = time.perf_counter()
            rig.kubelet.get_options(FULL, timeout=DEADLINE)
            rig.kubelet.allocate(FULL, [[str(i % 8)]], timeout=DEADLINE)
            timings.append(time.perf_counter() - start)
        print(
            f"\n[reliability] kubelet Options+Allocate with {OTHERS} other streams tried: "
            f"max {max(timings) * 1000:.1f} ms"
        )
        # Devices still reach the kubelet's stream while the others hold theirs.
        rig.supervisor.update_devices("hca_a", (make_candidate(0, port_state="DOWN"),))
        rig.kubelet.wait_for_devices(FULL, lambda ds: ds[0].health == "Unhealthy")
    finally:
        for call in admitted:
            call.cancel()
        channel.close()
    # The other streams ending is not the kubelet losing us: no new registration, no break.
    beats = len(rig.supervisor.received("hca_a", Heartbeat))
    wait_until(
        lambda: len(rig.supervisor.received("hca_a", Heartbeat)) >= beats + 5,
        10,
        what="five heartbeats",
    )
    assert len(rig.kubelet.registrations()) == registrations
    assert rig.kubelet.stream_open(FULL)
    assert "stream broke" not in rig.log("hca_a")
    # Slots are free again once the others are gone, and storms leave nothing behind. The pool
    # keeps idle threads (it grows up to GRPC_THREADS and never shrinks), so threads are bounded
    # by the pool's size; fds and memory are compared with the first storm's.
    first = Footprint.of(pid)
    for _ in range(3):
        channel, admitted, refused = open_streams(_socket(rig), OTHERS)
        assert len(admitted) == servicer.MAX_STREAMS - 1
        for call in admitted:
            call.cancel()
        channel.close()
    cap = before.threads + POOL
    wait_until(lambda: Footprint.of(pid).threads <= cap, 10, what="threads within the pool")
    later = Footprint.of(pid)
    assert later.fds <= first.fds + 4, f"fds {first.fds} -> {later.fds}"
    assert later.memory <= first.memory + 4 * 2**20, f"{first.describe()} -> {later.describe()}"
    assert "ListAndWatch refused" in rig.log("hca_a")


def _hub() -> tuple[servicer.StreamHub, EventQueue]:
    events = EventQueue()
    return servicer.StreamHub(events, servicer.Counters()), events


def _appender(to: list[int], value: int) -> Callable[[], None]:
    return lambda: to.append(value)


def test_the_kubelets_claimed_stream_ends_the_oldest_other() -> None:
    hub, events = _hub()
    cancelled: list[int] = []
    hub.claim(1)  # right before Register
    kubelet = hub.open(1)
    assert kubelet.claim == 1 and hub.live(1) is kubelet
    others = [hub.open(1, _appender(cancelled, i)) for i in range(servicer.MAX_STREAMS - 1)]
    assert not any(s.claim is not None or s.refused for s in others)
    assert hub.live(1) is kubelet, "another client's stream became the live one"
    assert hub.open(1).refused
    hub.claim(2)  # a registration is about to be made
    again = hub.open(1)
    assert again.claim == 2 and not again.refused and hub.live(1) is again
    assert others[0].ended and cancelled == [0]
    # The evicted RPC holds its thread until gRPC says it is over (the cancel makes that soon).
    assert hub.open_count() == servicer.MAX_STREAMS + 1
    hub.terminated(others[0])
    assert hub.open_count() == servicer.MAX_STREAMS
    # Others ending is never StreamLost; the kubelet's is.
    events.drain()
    for stream in others:
        hub.terminated(stream)
    assert not any(isinstance(e, StreamLost) for e in events.drain())
    hub.terminated(again)
    assert [type(e) for e in events.drain()] == [StreamLost]
    assert hub.open_count() == 1


def test_end_all_frees_slots_for_the_next_registration() -> None:
    hub, events = _hub()
    streams = [hub.open(1) for _ in range(servicer.MAX_STREAMS)]
    assert hub.open(1).refused
    ended = hub.end_all()
    assert set(ended) == set(streams) and all(s.ended for s in streams)
    # Their RPCs are still running (threads held) until gRPC's callback says they are over:
    # the kubelet's next stream is admitted anyway.
    hub.claim(7)
    nxt = hub.open(1)
    assert nxt.claim == 7 and not nxt.refused
    events.drain()
    for stream in streams:
        hub.terminated(stream)
    assert hub.open_count() == 1
    assert events.drain() == []  # we ended them: not the kubelet losing us
