"""ResourceSlices of this node's pool: what they should say, and the writes that get there (pure).

One pool per node, named after the node, its slices owned by the Node object (so they go when
the node goes). Devices are split over slices of at most 128 devices (64 when any device carries
a taint, the API server's limit). Each slice carries two annotations of ours: its index in the
pool and a hash of the whole pool's content, so "nothing changed" is decided without comparing
against fields the API server may default: an agent or kubelet restart with the same devices
writes nothing. When something changed, every slice is written with the pool generation bumped
past the highest one seen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dra.devices import DraDevice

API_VERSION = "resource.k8s.io/v1"
MAX_DEVICES = 128
MAX_DEVICES_WITH_TAINTS = 64
INDEX_ANNOTATION = "rdma.shared-dp.io/slice-index"
HASH_ANNOTATION = "rdma.shared-dp.io/pool-hash"


@dataclass(frozen=True)
class NodeOwner:
    node: str
    uid: str


def chunks(devices: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    limit = MAX_DEVICES_WITH_TAINTS if any("taints" in d for d in devices) else MAX_DEVICES
    return [list(devices[i : i + limit]) for i in range(0, len(devices), limit)] or [[]]


def pool_hash(driver: str, owner: NodeOwner, parts: Sequence[Sequence[dict[str, Any]]]) -> str:
    text = json.dumps([driver, owner.node, owner.uid, parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def desired(driver: str, owner: NodeOwner, devices: Sequence[DraDevice]) -> list[dict[str, Any]]:
    """The pool's slices without generation (set when written): one object per slice."""
    parts = chunks([d.to_api(driver) for d in devices])
    digest = pool_hash(driver, owner, parts)
    out = []
    for index, part in enumerate(parts):
        out.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ResourceSlice",
                "metadata": {
                    "generateName": f"{owner.node}-{driver}-"[:200],
                    "annotations": {INDEX_ANNOTATION: str(index), HASH_ANNOTATION: digest},
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": owner.node,
                            "uid": owner.uid,
                            "controller": True,
                        }
                    ],
                },
                "spec": {
                    "driver": driver,
                    "nodeName": owner.node,
                    "pool": {"name": owner.node, "generation": 0, "resourceSliceCount": len(parts)},
                    "devices": part,
                },
            }
        )
    return out


@dataclass(frozen=True)
class Write:
    verb: str  # "create", "update", "delete"
    name: str  # existing slice's name ("" for create)
    body: dict[str, Any] | None  # the object to send (None for delete)


def _annotation(obj: Mapping[str, Any], key: str) -> str:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(key, "")
    return value if isinstance(value, str) else ""


def plan(wanted: Sequence[dict[str, Any]], existing: Sequence[dict[str, Any]]) -> list[Write]:
    """The writes that make `existing` (our node's slices of our driver) say `wanted`.

    Nothing when every wanted slice exists once with the same pool hash and no other slice of
    ours is there. Otherwise the generation goes past every one seen, slices are updated in place
    by index (keeping their names), missing ones created, surplus ones deleted.
    """
    digest = _annotation(wanted[0], HASH_ANNOTATION) if wanted else ""
    by_index: dict[str, dict[str, Any]] = {}
    surplus: list[dict[str, Any]] = []
    for obj in sorted(existing, key=lambda o: o["metadata"].get("name", "")):
        index = _annotation(obj, INDEX_ANNOTATION)
        if index in by_index or not index.isdigit() or int(index) >= len(wanted):
            surplus.append(obj)
        else:
            by_index[index] = obj
    current = (
        not surplus
        and len(by_index) == len(wanted)
        and all(_annotation(o, HASH_ANNOTATION) == digest for o in by_index.values())
        and len({generation(o) for o in by_index.values()}) == 1
    )
    if current:
        return []
    bumped = max((generation(o) for o in existing), default=0) + 1
    writes = []
    for position, slice_ in enumerate(wanted):
        body = json.loads(json.dumps(slice_))
        body["spec"]["pool"]["generation"] = bumped
        old = by_index.get(str(position))
        if old is None:
            writes.append(Write("create", "", body))
        else:
            body["metadata"]["name"] = old["metadata"]["name"]
            body["metadata"]["resourceVersion"] = old["metadata"].get("resourceVersion", "")
            del body["metadata"]["generateName"]
            writes.append(Write("update", old["metadata"]["name"], body))
    writes += [Write("delete", o["metadata"]["name"], None) for o in surplus]
    return writes


def generation(obj: Mapping[str, Any]) -> int:
    value = obj.get("spec", {}).get("pool", {}).get("generation", 0)
    return value if isinstance(value, int) else 0
