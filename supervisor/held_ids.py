"""Device IDs that pods hold above a shrunk `rdmaHcaMax` (supervisor process; pure, no I/O).

A resource advertises the IDs "0" … "<rdmaHcaMax-1>". When a reload lowers `rdmaHcaMax`, a
running pod may hold an ID above the new maximum. If the plugin stopped advertising it, the
kubelet would refuse that pod at every later re-admission (after a kubelet restart, a container
restart of a crash-looping pod): "previously allocated devices are no longer healthy", and
nothing would say why. So the plugin keeps advertising such IDs, as long as PodResources lists a
pod holding them, and names the pods in a warning and a metric
(`rdma_shared_dp_retained_device_ids`). New pods may be given a retained ID while it is
advertised: capacity is above `rdmaHcaMax` until those pods end.

`HeldIds` remembers the last PodResources snapshot; `serving(resource)` is the resource as the
worker must serve it (with `retained_ids`), and `update()` says which resources changed, so the
supervisor sends their workers a new `configure`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from common.config import ResourceConfig
from supervisor.pod_resources import PodAllocation

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retained:
    ids: tuple[str, ...]  # held IDs outside "0".."rdmaHcaMax-1", in numeric order
    pods: tuple[str, ...]  # "namespace/pod" of the pods holding them, sorted


def _id_key(device_id: str) -> tuple[int, int | str]:
    return (0, int(device_id)) if device_id.isdecimal() else (1, device_id)


def retained(full_name: str, rdma_hca_max: int, rows: Sequence[PodAllocation] | None) -> Retained:
    """The IDs pods hold beyond `rdma_hca_max` for resource `full_name`, and who holds them.

    Only decimal IDs are ours (the plugin never advertised anything else); `rows` None means
    PodResources is unknown, and nothing is retained on a guess.
    """
    ids: set[str] = set()
    pods: set[str] = set()
    for row in rows or ():
        if row.resource != full_name:
            continue
        above = {i for i in row.device_ids if i.isdecimal() and int(i) >= rdma_hca_max}
        if above:
            ids |= above
            pods.add(f"{row.namespace}/{row.pod}")
    return Retained(tuple(sorted(ids, key=_id_key)), tuple(sorted(pods)))


class HeldIds:
    """What each worker must keep advertising, from the latest PodResources snapshot."""

    def __init__(self) -> None:
        self._rows: tuple[PodAllocation, ...] | None = None
        #: full name -> the retained IDs last handed to its worker through `serving`.
        self._served: dict[str, tuple[str, ...]] = {}

    def serving(self, resource: ResourceConfig) -> ResourceConfig:
        """`resource` with the IDs its pods hold beyond rdmaHcaMax (what a `configure` carries)."""
        kept = retained(resource.full_name, resource.rdma_hca_max, self._rows)
        before = self._served.get(resource.full_name, ())
        if kept.ids != before:
            if kept.ids:
                LOG.warning(
                    "resource=%s rdmaHcaMax=%d but pods hold device IDs above it; still "
                    "advertising ids=%s until they are released pods=%s (the kubelet would "
                    "refuse those pods at their next admission otherwise)",
                    resource.full_name,
                    resource.rdma_hca_max,
                    ",".join(kept.ids),
                    ",".join(kept.pods),
                )
            else:
                LOG.info(
                    "resource=%s no pod holds an ID above rdmaHcaMax=%d any more; advertising "
                    "rdmaHcaMax IDs only",
                    resource.full_name,
                    resource.rdma_hca_max,
                )
        self._served[resource.full_name] = kept.ids
        return replace(resource, retained_ids=kept.ids) if kept.ids else resource

    def update(
        self, resources: Sequence[ResourceConfig], rows: Sequence[PodAllocation] | None
    ) -> list[ResourceConfig]:
        """Take a new snapshot; the resources whose workers must be configured again."""
        if rows is None:  # PodResources unknown: keep what is being served
            return []
        self._rows = tuple(rows)
        return [
            r
            for r in resources
            if retained(r.full_name, r.rdma_hca_max, self._rows).ids
            != self._served.get(r.full_name, ())
        ]
