"""The DRA health stream (`v1alpha1.DRAResourceHealth/NodeWatchResources`; DRA process).

Kubelets from 1.34 open one stream to a driver that serves it and show each device's health in
the status of the pods using it. Every message is the full list of the pool's devices: HEALTHY
when any of its HCAs can carry traffic, else UNHEALTHY (ports down; the device is also tainted in
the slice). A stream gets the current list at once and a new one after each change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from dra.devices import DraDevice
from proto.drahealth.v1alpha1 import api_pb2 as health
from proto.drahealth.v1alpha1 import api_pb2_grpc as health_grpc

#: How often a waiting stream checks that its client is still there.
POLL = 1.0


class HealthHub:
    def __init__(self, pool: str) -> None:
        self.pool = pool
        self._cond = threading.Condition()
        self._version = 0
        self._states: tuple[tuple[str, bool], ...] | None = None
        self.stopping = False

    def publish(self, devices: Sequence[DraDevice]) -> None:
        states = tuple((d.name, d.healthy) for d in devices)
        with self._cond:
            if states != self._states:
                self._states = states
                self._version += 1
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify_all()

    def message(self, states: Sequence[tuple[str, bool]]) -> health.NodeWatchResourcesResponse:
        now = int(time.time())
        return health.NodeWatchResourcesResponse(
            devices=[
                health.DeviceHealth(
                    device=health.DeviceIdentifier(pool_name=self.pool, device_name=name),
                    health=health.HEALTHY if ok else health.UNHEALTHY,
                    last_updated_time=now,
                )
                for name, ok in states
            ]
        )

    def watch(self, active: Any) -> Iterator[health.NodeWatchResourcesResponse]:
        seen = 0
        while True:
            with self._cond:
                while (
                    not self.stopping and (self._version == seen or self._states is None)
                ) and active():
                    self._cond.wait(POLL)
                if self.stopping or not active():
                    return
                seen, states = self._version, self._states or ()
            yield self.message(states)


class HealthServicer(health_grpc.DRAResourceHealthServicer):  # type: ignore[misc]
    def __init__(self, hub: HealthHub) -> None:
        self._hub = hub

    def NodeWatchResources(
        self, request: health.NodeWatchResourcesRequest, context: grpc.ServicerContext
    ) -> Iterator[health.NodeWatchResourcesResponse]:
        yield from self._hub.watch(context.is_active)


def add_service(server: grpc.Server, hub: HealthHub) -> None:
    health_grpc.add_DRAResourceHealthServicer_to_server(HealthServicer(hub), server)
