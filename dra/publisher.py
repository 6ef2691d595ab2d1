"""Keeps this node's ResourceSlices true (DRA process, main thread).

`sync()` lists our slices (field selectors on driver and node: only our own are ever touched),
plans the writes (`slices.plan`: none when the pool already says what we want) and makes them.
It runs when the devices change, and every `resync` seconds, which is how a pool the kubelet
deleted at its start is published again. A failed call is retried after a capped exponential
backoff with jitter; a conflict (someone wrote between our list and our write) lists again at
once, a few times. While the API server is unreachable prepared claims keep working (they need no
API call) and `state()` says why nothing is published; publishing resumes when it answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from common.loop.backoff import Backoff
from dra import slices
from dra.counters import DriverCounters
from dra.devices import DraDevice
from dra.kube_api import ApiError, KubeApi

LOG = logging.getLogger(__name__)
T = TypeVar("T")
#: Immediate re-lists after a conflict before backing off.
CONFLICT_RETRIES = 3


@dataclass(frozen=True)
class PublishState:
    published: bool  # the pool on the server says what we want
    generation: int
    devices: int
    error: str  # why not, when not


class Publisher:
    def __init__(
        self,
        api: KubeApi,
        driver: str,
        node: str,
        counters: DriverCounters,
        resync: float = 30.0,
    ) -> None:
        self.api = api
        self.driver = driver
        self.node = node
        self.counters = counters
        self.resync = resync
        self.backoff = Backoff(initial=1.0, cap=60.0)
        self._devices: tuple[DraDevice, ...] = ()
        self._have_devices = False
        self._owner: slices.NodeOwner | None = None
        self._state = PublishState(False, 0, 0, "no devices from the supervisor yet")
        self.next_at = 0.0

    def set_devices(self, devices: Sequence[DraDevice]) -> None:
        if not self._have_devices or tuple(devices) != self._devices:
            self._devices = tuple(devices)
            self._have_devices = True
            self.next_at = 0.0  # now

    def state(self) -> PublishState:
        return self._state

    def due(self, now: float) -> bool:
        return self._have_devices and now >= self.next_at

    def sync(self, now: float) -> None:
        """One attempt; sets when the next one is due."""
        try:
            generation = self._sync_once()
        except ApiError as err:
            delay = self.backoff.next_delay()
            self._state = PublishState(False, self._state.generation, len(self._devices), str(err))
            LOG.warning(
                "cannot publish ResourceSlices node=%s: %s; retrying in %.1fs (prepared claims "
                "keep working)",
                self.node,
                err,
                delay,
            )
            self.next_at = now + delay
            return
        self.backoff.reset()
        self._state = PublishState(True, generation, len(self._devices), "")
        self.next_at = now + self.resync

    def _sync_once(self) -> int:
        for attempt in range(CONFLICT_RETRIES + 1):
            existing = self._call("list_slices", self.api.list_slices, self.driver, self.node)
            writes = slices.plan(
                slices.desired(self.driver, self._owner_ref(), self._devices), existing
            )
            if any(w.verb == "create" for w in writes) and self._owner_changed():
                # A Node made again under the same name has a new UID: slices owned by the old
                # one would be garbage-collected as soon as they are made.
                writes = slices.plan(
                    slices.desired(self.driver, self._owner_ref(), self._devices), existing
                )
            if not writes:
                return max((slices.generation(o) for o in existing), default=0)
            try:
                return self._apply(writes)
            except ApiError as err:
                if err.status != 409 or attempt == CONFLICT_RETRIES:
                    raise
                LOG.info("slice write conflict node=%s: listing again", self.node)
        raise AssertionError("unreachable")

    def _apply(self, writes: list[slices.Write]) -> int:
        generation = 0
        for write in writes:
            if write.verb == "create" and write.body is not None:
                self._call("create_slice", self.api.create_slice, write.body)
                generation = write.body["spec"]["pool"]["generation"]
            elif write.verb == "update" and write.body is not None:
                self._call("update_slice", self.api.update_slice, write.name, write.body)
                generation = write.body["spec"]["pool"]["generation"]
            else:
                self._call("delete_slice", self.api.delete_slice, write.name)
            self.counters.slice_write(write.verb)
        LOG.info(
            "published ResourceSlices node=%s generation=%d devices=%d writes=%s",
            self.node,
            generation,
            len(self._devices),
            ",".join(w.verb for w in writes),
        )
        return generation

    def _owner_changed(self) -> bool:
        """Read the Node again; True when its UID is not the one cached."""
        before = self._owner
        self._owner = None
        return self._owner_ref() != before

    def _owner_ref(self) -> slices.NodeOwner:
        if self._owner is None:
            node = self._call("get_node", self.api.get_node, self.node)
            uid = node.get("metadata", {}).get("uid", "")
            if not uid:
                raise ApiError(0, "NoNodeUID", f"node {self.node} has no UID")
            self._owner = slices.NodeOwner(self.node, uid)
        return self._owner

    def _call(self, name: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except ApiError as err:
            if err.status != 409:
                self.counters.api_error(name)
            if err.status == 404 and name == "get_node":
                self._owner = None
            raise
