"""What a worker advertises and hands out, computed once per device-set change (worker process).

Pure: from the resource's config and its matched devices this derives the ListAndWatch snapshot
and the Allocate answer, which is the same for every device ID (all IDs share every matched
HCA). Allocate then only checks IDs against a set and copies a prepared answer: it reads nothing
from disk and computes nothing per call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.config import ResourceConfig
from common.devices import MAX_NUMA_NODES, RDMA_CM_PATH, Candidate
from workers import cdi

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
PERMISSIONS = "rwm"
#: A char device name that makes a safe /dev path (discovery only reports such names).
_CHAR_NAME = re.compile(r"(uverbs|umad|issm|ucm)[0-9]{1,7}\Z")


@dataclass(frozen=True)
class Plan:
    resource: ResourceConfig
    #: "0" … "<rdmaHcaMax-1>" when at least one device matched, else empty (IDs are checkpointed
    #: by the kubelet, so they never depend on anything but rdmaHcaMax), then any retained IDs
    #: above it that pods still hold.
    device_ids: tuple[str, ...]
    health: str  # one value for every ID: they all share the same devices
    numa_nodes: tuple[int, ...]  # of the usable matched devices; empty = no preference
    matched: tuple[Candidate, ...]  # sorted by name
    usable: tuple[Candidate, ...]  # the subset that has its char devices
    #: DeviceSpec paths for each container (host path = container path), in a stable order.
    device_paths: tuple[str, ...]
    use_cdi: bool
    cdi_devices: tuple[str, ...] = ()  # fully qualified names, CDI mode only
    cdi_annotation: tuple[str, str] | None = None  # (key, value), CDI mode only
    id_set: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def can_allocate(self) -> bool:
        return bool(self.cdi_devices) if self.use_cdi else bool(self.usable)


def make_plan(resource: ResourceConfig, devices: Sequence[Candidate], use_cdi: bool) -> Plan:
    """Raises cdi.CdiNameError in CDI mode when the resource cannot form a CDI kind."""
    matched = tuple(sorted(devices, key=lambda d: d.name))
    usable = tuple(d for d in matched if d.usable)
    ids: tuple[str, ...] = ()
    if matched:
        ids = tuple(str(i) for i in range(resource.rdma_hca_max))
        # IDs above a shrunk rdmaHcaMax that pods still hold stay advertised (held_ids.py).
        ids += tuple(i for i in resource.retained_ids if int(i) >= resource.rdma_hca_max)
    healthy = any(d.healthy for d in usable)
    # Discovery bounds NUMA nodes already; bounding them again here keeps a value that arrived
    # some other way from failing the protobuf message (int64) in every stream and crash-looping.
    numa = tuple(sorted({d.numa_node for d in usable if 0 <= d.numa_node < MAX_NUMA_NODES}))

    paths: list[str] = []
    seen: set[str] = set()
    for device in usable:
        for char in device.char_devices:
            if char.present and char.path not in seen and _CHAR_NAME.match(char.name):
                seen.add(char.path)
                paths.append(char.path)
    if usable:
        paths.append(RDMA_CM_PATH)

    cdi_devices: tuple[str, ...] = ()
    annotation: tuple[str, str] | None = None
    if use_cdi:
        cdi.kind(resource)  # refuse early, even while no device is usable
        named = [d for d in usable if cdi.valid_device_name(d.name)]
        cdi_devices = cdi.qualified_names(resource, named)
        if cdi_devices:
            annotation = (cdi.annotation_key(resource), ",".join(cdi_devices))

    return Plan(
        resource=resource,
        device_ids=ids,
        health=HEALTHY if healthy else UNHEALTHY,
        numa_nodes=numa,
        matched=matched,
        usable=usable,
        device_paths=tuple(paths),
        use_cdi=use_cdi,
        cdi_devices=cdi_devices,
        cdi_annotation=annotation,
        id_set=frozenset(ids),
    )


def unknown_ids(plan: Plan, requested: Sequence[str]) -> list[str]:
    """Requested IDs this worker does not advertise, in request order, without repeats.

    Linear: a dict is the insertion-ordered set (a list lookup made 100 000 IDs quadratic)."""
    out: dict[str, None] = {}
    for device_id in requested:
        if device_id not in plan.id_set:
            out[device_id] = None
    return list(out)
