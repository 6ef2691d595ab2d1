"""The gRPC services a worker serves to the kubelet (worker process, gRPC threads).

`v1beta1.DevicePlugin` always; `pluginregistration.Registration` too in plugin-watcher mode.
Handlers only read what the main loop published (`Published`, swapped as one reference) and
post events back; they never change the worker's state and never touch the disk.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from common.loop.throttle import LogThrottle
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from workers import requests
from workers.counters import Counters as Counters  # re-exported: used as servicer.Counters
from workers.events import EventQueue, StreamLost, StreamOpened, WatcherStatus
from workers.published import Published
from workers.published import publish as publish  # re-exported

LOG = logging.getLogger("workers.servicer")

API_VERSION = "v1beta1"
PLUGIN_TYPE = "DevicePlugin"
#: A stream thread re-checks its call this often even when nothing changes.
STREAM_IDLE_CHECK = 1.0
#: ListAndWatch streams one worker serves at once. Each holds a thread of the worker's gRPC pool
#: (8 threads, workers.serving) for its whole life, so the bound keeps threads free for the
#: kubelet's unary calls. The kubelet needs one (two while an old registration's stream is
#: ending); the rest is room for a debugging client. Beyond the bound a new stream is refused
#: with RESOURCE_EXHAUSTED, except the kubelet's (the claimed one, see StreamHub): it is always
#: admitted and ends the oldest other stream instead.
MAX_STREAMS = 4
#: Refused streams are logged at most this often (a client retrying in a loop would flood).
REFUSAL_LOG_INTERVAL = 10.0


def options() -> dp.DevicePluginOptions:
    # Every ID is equivalent (all share every HCA), so a preferred-allocation policy has nothing
    # to prefer; the call is still answered correctly if a kubelet makes it.
    return dp.DevicePluginOptions(
        pre_start_required=False, get_preferred_allocation_available=False
    )


@dataclass(eq=False)
class _Stream:
    generation: int
    opened_at: float  # time.monotonic()
    #: The registration whose stream this is, when it is the kubelet's; None: another client's.
    claim: int | None = None
    ended: bool = False  # set when we end it (replaced, server stopping); the kubelet did not
    over: bool = False  # the RPC has terminated (gRPC's callback ran)
    refused: bool = False  # over the stream bound (MAX_STREAMS): the handler refuses it at once
    #: Cancels the RPC, so an ended stream whose thread is blocked sending to a client that does
    #: not read frees its thread too.
    cancel: Callable[[], None] | None = None


class StreamHub:
    """The published state and the ListAndWatch streams.

    Only the kubelet's stream counts. The main loop arms a claim right before it sends Register
    (in watcher mode: once the socket is served), and the first stream to open after that is the
    kubelet's (the kubelet opens it while, or right after, it handles our registration); it is
    the live one, reported as StreamOpened and, ending without us ending it, as StreamLost.
    Streams opened with no claim armed are another local client's: served like any other, but
    their end says nothing about the kubelet. (A client that opens one between our Register and
    the kubelet's dial would be taken for the kubelet; nothing in the call tells them apart.)
    An older stream is never ended just because a newer one opened: kubelets 1.26-1.35 keep an
    old registration's stream open, and when it ends they disconnect the *current* registration
    (kubernetes#121994). The kubelet ends old streams itself, or we end them all right before we
    register again.

    At most MAX_STREAMS streams hold a gRPC thread at once: beyond that another client's new
    stream is refused, while the kubelet's (claimed) one is admitted and ends the oldest
    unclaimed stream.
    """

    def __init__(self, events: EventQueue, counters: Counters) -> None:
        self._events = events
        self._counters = counters
        self._cond = threading.Condition()
        self._published: Published | None = None
        self._version = 0
        self._live: _Stream | None = None
        self._open: set[_Stream] = set()
        self._first_live_generation = 0
        self._claim: int | None = None
        self._watcher_claims = 0
        #: Admitted streams whose RPC is not over (each holds a gRPC thread), oldest first.
        self._running: list[_Stream] = []
        self._refusals = LogThrottle(REFUSAL_LOG_INTERVAL)

    def claim(self, claim: int) -> None:
        """The next stream to open is the kubelet's, of registration `claim`."""
        with self._cond:
            self._claim = claim

    def claim_next(self) -> None:
        """The plugin watcher called GetInfo: its kubelet opens the next stream (claims < 0)."""
        with self._cond:
            self._watcher_claims -= 1
            self._claim = self._watcher_claims

    @property
    def published(self) -> Published | None:
        return self._published

    def publish(self, published: Published) -> None:
        # The refusal is the CDI spec not being on disk: what the supervisor's metrics, status
        # and /readyz report, so they agree with what the kubelet is told.
        self._counters.cdi_published(published.plan.use_cdi, published.refusal is None)
        with self._cond:
            self._published = published
            self._version += 1
            self._cond.notify_all()

    def open(self, generation: int, cancel: Callable[[], None] | None = None) -> _Stream:
        stream = _Stream(generation=generation, opened_at=time.monotonic(), cancel=cancel)
        evicted: _Stream | None = None
        with self._cond:
            if generation < self._first_live_generation:
                # Its server is being stopped: end at once, and it was not the kubelet's doing.
                stream.ended = True
                return stream
            running = [s for s in self._running if not s.over]
            evicted = self._admit(stream, running)
            if not stream.refused:
                self._running = [*running, stream]
                self._open.add(stream)
                if self._claim is not None:
                    stream.claim, self._claim = self._claim, None
                    self._live = stream
                    self._counters.stream_open = True
            self._cond.notify_all()
        if evicted is not None:
            LOG.warning(
                "ListAndWatch: ended another client's stream to admit the kubelet's (at most %d "
                "streams at once)",
                MAX_STREAMS,
            )
            if evicted.cancel is not None:
                evicted.cancel()
        if stream.refused and (log := self._refusals.allow("refused")):
            LOG.warning(
                "ListAndWatch refused: %d streams are open, the most one worker serves; "
                "another local client keeps streams open (%d more refused since last said)",
                MAX_STREAMS,
                log.swallowed,
            )
        if stream.claim is not None:
            self._events.post(StreamOpened(generation, stream.claim))
        return stream

    def _admit(self, stream: _Stream, running: list[_Stream]) -> _Stream | None:
        """Apply the stream bound (under the lock): refuse `stream`, or the stream it evicts."""
        if len(running) < MAX_STREAMS:
            return None
        if self._claim is None:
            stream.refused = stream.ended = True
            return None
        others = [s for s in running if s.claim is None]
        if not others:
            return None  # only kubelet streams run (an old one ending): admit the new one anyway
        evicted = others[0]
        evicted.ended = True
        self._open.discard(evicted)
        return evicted

    def open_count(self) -> int:
        """Streams holding a gRPC thread now."""
        with self._cond:
            return sum(1 for s in self._running if not s.over)

    def live(self, generation: int) -> _Stream | None:
        """The live stream, when the server of `generation` serves it and we have not ended it."""
        with self._cond:
            live = self._live
            if live is None or live.ended or live.generation != generation:
                return None
            return live

    def end_all(self) -> list[_Stream]:
        """End every open stream ourselves (not counted as lost); returns them."""
        with self._cond:
            ended = list(self._open)
            for stream in ended:
                stream.ended = True
            self._open.clear()
            self._live = None
            self._counters.stream_open = False
            self._cond.notify_all()
            return ended

    def wait_over(self, streams: list[_Stream], timeout: float) -> bool:
        """Block until the RPCs of `streams` have terminated; False when `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: all(s.over for s in streams), timeout)

    def end_generation(self, generation: int | None = None) -> None:
        """We are stopping a server (None: every server): its streams end, not counted as lost.

        Streams that open on that server from now on end at once too.
        """
        with self._cond:
            if generation is None:
                self._first_live_generation = 2**62
            else:
                self._first_live_generation = max(self._first_live_generation, generation + 1)
            for stream in [s for s in self._open if s.generation < self._first_live_generation]:
                stream.ended = True
                self._open.discard(stream)
            if self._live is not None and self._live.ended:
                self._live = None
                self._counters.stream_open = False
            self._cond.notify_all()

    def terminated(self, stream: _Stream) -> None:
        """gRPC's callback: the RPC is over, for whatever reason."""
        with self._cond:
            stream.over = True
            lost = not stream.ended and stream.claim is not None
            stream.ended = True
            self._open.discard(stream)
            self._running = [s for s in self._running if not s.over]
            if self._live is stream:
                self._live = None
                self._counters.stream_open = False
            self._cond.notify_all()
        if lost and stream.claim is not None:
            self._events.post(StreamLost(stream.generation, stream.claim))

    def next_snapshot(
        self, stream: _Stream, seen: int
    ) -> tuple[dp.ListAndWatchResponse, int] | None:
        """Block until there is a snapshot newer than `seen`; None once the stream has ended."""
        with self._cond:
            while True:
                if stream.ended:
                    return None
                published = self._published
                if published is not None and self._version != seen:
                    return published.snapshot, self._version
                self._cond.wait(STREAM_IDLE_CHECK)


class DevicePluginServicer(dp_grpc.DevicePluginServicer):  # type: ignore[misc]
    def __init__(self, hub: StreamHub, counters: Counters, generation: int, resource: str) -> None:
        self._hub = hub
        self._counters = counters
        self._generation = generation
        self._resource = resource

    def GetDevicePluginOptions(
        self, request: dp.Empty, context: grpc.ServicerContext
    ) -> dp.DevicePluginOptions:
        return options()

    def ListAndWatch(
        self, request: dp.Empty, context: grpc.ServicerContext
    ) -> Iterator[dp.ListAndWatchResponse]:
        stream = self._hub.open(self._generation, context.cancel)
        if stream.refused:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._resource}: {MAX_STREAMS} ListAndWatch streams are open, the most this "
                "plugin serves at once; close one and retry",
            )
        if not context.add_callback(lambda: self._hub.terminated(stream)):
            self._hub.terminated(stream)  # already over
            return
        LOG.info("ListAndWatch opened resource=%s generation=%d", self._resource, stream.generation)
        seen = -1
        while True:
            update = self._hub.next_snapshot(stream, seen)
            if update is None or not context.is_active():
                return
            snapshot, seen = update
            yield snapshot

    def Allocate(self, request: dp.AllocateRequest, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        published = self._hub.published
        plan, refusal = (None, None) if published is None else (published.plan, published.refusal)
        problem = requests.allocate_problem(plan, refusal, request, context)
        if problem is not None:
            code, message = problem
            self._counters.allocation(False, time.perf_counter() - start)
            LOG.warning("Allocate refused resource=%s: %s", self._resource, message[:500])
            context.abort(code, message)
        assert published is not None
        response = dp.AllocateResponse()
        for container in request.container_requests:
            answer = response.container_responses.add()
            if container.devices_ids:
                answer.CopyFrom(published.container_answer)
        self._counters.allocation(True, time.perf_counter() - start)
        return response

    def GetPreferredAllocation(
        self, request: dp.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> dp.PreferredAllocationResponse:
        # Every ID is equivalent: the must-include IDs, then the first available ones, is as good
        # as any choice, and always a valid answer.
        published = self._hub.published
        problem = requests.preferred_problem(None if published is None else published.plan, request)
        if problem is not None:
            LOG.warning("GetPreferredAllocation refused resource=%s: %s", self._resource, problem)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        response = dp.PreferredAllocationResponse()
        for container in request.container_requests:
            if not requests.call_alive(context):
                context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled or expired")
            size = container.allocation_size
            chosen: dict[str, None] = {}  # insertion-ordered set: linear in the lists
            for device_id in itertools.chain(
                container.must_include_deviceIDs, container.available_deviceIDs
            ):
                if len(chosen) >= size:
                    break
                chosen[device_id] = None
            response.container_responses.add().deviceIDs.extend(chosen)
        return response

    def PreStartContainer(
        self, request: dp.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> dp.PreStartContainerResponse:
        return dp.PreStartContainerResponse()


class RegistrationServicer(reg_grpc.RegistrationServicer):  # type: ignore[misc]
    """`pluginregistration.Registration`, served on the same socket in watcher mode."""

    def __init__(
        self,
        events: EventQueue,
        hub: StreamHub,
        generation: int,
        resource_name: str,
        endpoint: str,
    ) -> None:
        self._events = events
        self._hub = hub
        self._generation = generation
        self._info = reg.PluginInfo(
            type=PLUGIN_TYPE,
            name=resource_name,
            endpoint=endpoint,
            supported_versions=[API_VERSION],
        )

    def GetInfo(self, request: reg.InfoRequest, context: grpc.ServicerContext) -> reg.PluginInfo:
        self._hub.claim_next()  # the kubelet's device manager dials us and opens a stream next
        return self._info

    def NotifyRegistrationStatus(
        self, request: reg.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg.RegistrationStatusResponse:
        self._events.post(WatcherStatus(self._generation, request.plugin_registered, request.error))
        return reg.RegistrationStatusResponse()


def add_services(
    server: grpc.Server,
    hub: StreamHub,
    counters: Counters,
    events: EventQueue,
    generation: int,
    resource_name: str,
    watcher_endpoint: str | None,
) -> None:
    dp_grpc.add_DevicePluginServicer_to_server(
        DevicePluginServicer(hub, counters, generation, resource_name), server
    )
    if watcher_endpoint is not None:
        reg_grpc.add_RegistrationServicer_to_server(
            RegistrationServicer(events, hub, generation, resource_name, watcher_endpoint), server
        )
