"""Checking a ResourceClaim before it is prepared (pure; DRA process).

The kubelet names a claim (namespace, name, UID); the driver reads it from the API server and
prepares only what the allocation gives this driver: the UID must be the one the kubelet asked
for (a claim deleted and re-made under the same name is another claim), the claim must be
allocated, and every result of our driver must name our pool and a device we publish. Results
of other drivers are theirs. Each refusal is a `ClaimError` whose text goes back to the kubelet
(and to the pod's events) as is, so it says what is wrong and where.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


class ClaimError(ValueError):
    pass


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Assigned:
    """One allocation result of our driver."""

    request: str
    pool: str
    device: str
    share_id: str = ""


def results(
    claim: Mapping[str, Any], ref: ClaimRef, driver: str, pool: str, known: Collection[str]
) -> tuple[Assigned, ...]:
    uid = claim.get("metadata", {}).get("uid", "")
    if uid != ref.uid:
        raise ClaimError(
            f"claim {ref} has UID {uid or '(none)'}, the kubelet asked for {ref.uid}: "
            "a stale request for a claim that was deleted and made again"
        )
    allocation = (claim.get("status") or {}).get("allocation")
    if not isinstance(allocation, Mapping):
        raise ClaimError(f"claim {ref} is not allocated")
    raw = (allocation.get("devices") or {}).get("results") or []
    ours = [r for r in raw if isinstance(r, Mapping) and r.get("driver") == driver]
    if not ours:
        raise ClaimError(f"claim {ref} allocates no device of driver {driver}")
    out = []
    for result in ours:
        device, result_pool = str(result.get("device", "")), str(result.get("pool", ""))
        if result_pool != pool:
            raise ClaimError(
                f"claim {ref}: device {device} is in pool {result_pool!r}, this node's pool "
                f"is {pool!r} (allocated for another node?)"
            )
        if device not in known:
            raise ClaimError(
                f"claim {ref}: device {device!r} is not published on this node "
                f"(devices: {', '.join(sorted(known)) or 'none'})"
            )
        out.append(
            Assigned(
                request=str(result.get("request", "")),
                pool=result_pool,
                device=device,
                share_id=str(result.get("shareID") or ""),
            )
        )
    return tuple(out)
