"""The gRPC services a worker serves to the kubelet (worker process, gRPC threads).

`v1beta1.DevicePlugin` always; `pluginregistration.Registration` too in plugin-watcher mode.
Handlers only read what the main loop published (`Published`, swapped as one reference) and
post events back; they never change the worker's state and never touch the disk.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from common.messages import ALLOCATE_BUCKETS, WorkerCounters
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from workers import plan as planning
from workers.events import EventQueue, StreamLost, StreamOpened, WatcherStatus

LOG = logging.getLogger("workers.servicer")

API_VERSION = "v1beta1"
PLUGIN_TYPE = "DevicePlugin"
#: A stream thread re-checks its call this often even when nothing changes.
STREAM_IDLE_CHECK = 1.0


def options() -> dp.DevicePluginOptions:
    # Every ID is equivalent (all share every HCA), so a preferred-allocation policy has nothing
    # to prefer; the call is still answered correctly if a kubelet makes it.
    return dp.DevicePluginOptions(
        pre_start_required=False, get_preferred_allocation_available=False
    )


@dataclass(frozen=True)
class Published:
    """What the handlers serve, built once per plan."""

    plan: planning.Plan
    snapshot: dp.ListAndWatchResponse
    container_answer: dp.ContainerAllocateResponse
    #: Set while the worker cannot honour what `container_answer` promises (the CDI spec is not
    #: on disk): Allocate refuses with this text and every ID is advertised Unhealthy.
    refusal: str | None = None


def publish(plan: planning.Plan, refusal: str | None = None) -> Published:
    health = planning.UNHEALTHY if refusal is not None else plan.health
    # Built in place, in the response's own arena: a standalone dp.Device per ID (copied in, then
    # freed) left 1.3 MiB of heap behind per worker for 1000 IDs; this way it is 0.25 MiB.
    snapshot = dp.ListAndWatchResponse()
    add = snapshot.devices.add
    for device_id in plan.device_ids:
        device = add(ID=device_id, health=health)
        if plan.numa_nodes:
            nodes = device.topology.nodes
            for n in plan.numa_nodes:
                nodes.add(ID=n)
    answer = dp.ContainerAllocateResponse()
    if plan.use_cdi:
        answer.cdi_devices.extend(dp.CDIDevice(name=n) for n in plan.cdi_devices)
        if plan.cdi_annotation is not None:
            key, value = plan.cdi_annotation
            answer.annotations[key] = value
    else:
        answer.devices.extend(
            dp.DeviceSpec(container_path=p, host_path=p, permissions=planning.PERMISSIONS)
            for p in plan.device_paths
        )
    return Published(plan, snapshot, answer, refusal)


class Counters:
    """Mutable totals behind a lock; `snapshot()` gives the message form."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.allocations_ok = 0
        self.allocations_refused = 0
        self.allocate_seconds_sum = 0.0
        self.allocate_count = 0
        self.allocate_buckets = [0] * len(ALLOCATE_BUCKETS)  # per bucket, made cumulative on read
        self.registrations_ok = 0
        self.registrations_failed = 0
        self.kubelet_restarts = 0
        self.stream_open = False

    def allocation(self, ok: bool, seconds: float) -> None:
        index = bisect.bisect_left(ALLOCATE_BUCKETS, seconds)
        with self._lock:
            if ok:
                self.allocations_ok += 1
            else:
                self.allocations_refused += 1
            self.allocate_seconds_sum += seconds
            self.allocate_count += 1
            if index < len(self.allocate_buckets):
                self.allocate_buckets[index] += 1

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> WorkerCounters:
        with self._lock:
            cumulative: list[int] = []
            total = 0
            for n in self.allocate_buckets:
                total += n
                cumulative.append(total)
            return WorkerCounters(
                allocations_ok=self.allocations_ok,
                allocations_refused=self.allocations_refused,
                allocate_seconds_sum=self.allocate_seconds_sum,
                allocate_count=self.allocate_count,
                allocate_buckets=tuple(cumulative),
                registrations_ok=self.registrations_ok,
                registrations_failed=self.registrations_failed,
                kubelet_restarts=self.kubelet_restarts,
                stream_open=self.stream_open,
            )


@dataclass(eq=False)
class _Stream:
    generation: int
    opened_at: float  # time.monotonic()
    #: The registration whose stream this is, when it is the kubelet's; None: another client's.
    claim: int | None = None
    ended: bool = False  # set when we end it (replaced, server stopping); the kubelet did not
    over: bool = False  # the RPC has terminated (gRPC's callback ran)


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
        with self._cond:
            self._published = published
            self._version += 1
            self._cond.notify_all()

    def open(self, generation: int) -> _Stream:
        stream = _Stream(generation=generation, opened_at=time.monotonic())
        with self._cond:
            if generation < self._first_live_generation:
                # Its server is being stopped: end at once, and it was not the kubelet's doing.
                stream.ended = True
                return stream
            self._open.add(stream)
            if self._claim is not None:
                stream.claim, self._claim = self._claim, None
                self._live = stream
                self._counters.stream_open = True
            self._cond.notify_all()
        if stream.claim is not None:
            self._events.post(StreamOpened(generation, stream.claim))
        return stream

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
        stream = self._hub.open(self._generation)
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
        problem = _allocate_problem(published, request)
        if problem is not None:
            code, message = problem
            self._counters.allocation(False, time.perf_counter() - start)
            LOG.warning("Allocate refused resource=%s: %s", self._resource, message)
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
        response = dp.PreferredAllocationResponse()
        for container in request.container_requests:
            chosen: list[str] = []
            for device_id in [*container.must_include_deviceIDs, *container.available_deviceIDs]:
                if len(chosen) >= max(container.allocation_size, 0):
                    break
                if device_id not in chosen:
                    chosen.append(device_id)
            response.container_responses.add().deviceIDs.extend(chosen)
        return response

    def PreStartContainer(
        self, request: dp.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> dp.PreStartContainerResponse:
        return dp.PreStartContainerResponse()


def _allocate_problem(
    published: Published | None, request: dp.AllocateRequest
) -> tuple[grpc.StatusCode, str] | None:
    if published is None:
        return grpc.StatusCode.UNAVAILABLE, "the worker has no device set yet; retry"
    plan = published.plan
    unknown: list[str] = []
    for container in request.container_requests:
        for device_id in planning.unknown_ids(plan, container.devices_ids):
            if device_id not in unknown:
                unknown.append(device_id)
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{plan.resource.full_name}: device IDs {shown}{more} were never advertised "
            f"(this resource advertises {len(plan.device_ids)} IDs)",
        )
    wanted = any(c.devices_ids for c in request.container_requests)
    if wanted and published.refusal is not None:
        return grpc.StatusCode.FAILED_PRECONDITION, published.refusal
    if wanted and not plan.can_allocate:
        return (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{plan.resource.full_name}: no usable RDMA device is matched right now "
            "(char devices missing); the devices are advertised Unhealthy",
        )
    return None


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
