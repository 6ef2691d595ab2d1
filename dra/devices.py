"""The devices this node publishes through DRA, built from config and discovery (pure).

Two ways (docs/dra.md):

- the drop-in way: per DRA-served config resource, one device `res-<name>` that stands for every
  usable HCA the resource selects (one share gives the container all their char devices, exactly
  like one device-plugin slot), `allowMultipleAllocations` with a `shares` capacity of
  `rdmaHcaMax`. A DeviceClass with `extendedResourceName: <prefix>/<name>` selects it, so an
  unchanged pod spec asking for `<prefix>/<name>: 1` takes one share.
- the DRA way: one device `hca-<pci or auxiliary name>` per usable HCA, multi-allocatable, with
  the attributes a CEL selector or a `matchAttribute` constraint needs.

A device whose HCAs are all unhealthy (ports down) stays, tainted NoSchedule; a device with no
usable HCA left is removed. Nothing here touches the disk: host facts come in as functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.config import ResourceConfig
from common.devices import Candidate
from common.selectors import select
from dra.names import hca_device_name, resource_device_name

#: Shares of a per-HCA device that no DRA resource selects (the config's usual rdmaHcaMax).
DEFAULT_HCA_SHARES = 1000
PCIE_ROOT_ATTRIBUTE = "resource.kubernetes.io/pcieRoot"
#: The API server's limit for a string attribute.
MAX_STRING_ATTRIBUTE = 64

Attribute = tuple[str, str | int | bool]


@dataclass(frozen=True)
class DraDevice:
    name: str  # a DNS label, unique in the pool
    kind: str  # "resource" (drop-in) or "hca"
    shares: int  # the `shares` capacity; 0 = no capacity (unlimited sharing)
    attributes: tuple[Attribute, ...]
    members: tuple[Candidate, ...]  # the usable HCAs a share gives access to
    healthy: bool

    def to_api(self, driver: str) -> dict[str, Any]:
        """The device as `resource.k8s.io/v1` ResourceSlice.spec.devices[] holds it."""
        attrs: dict[str, Any] = {}
        for key, value in self.attributes:
            if isinstance(value, bool):
                attrs[key] = {"bool": value}
            elif isinstance(value, int):
                attrs[key] = {"int": value}
            else:
                attrs[key] = {"string": value}
        device: dict[str, Any] = {
            "name": self.name,
            "attributes": attrs,
            "allowMultipleAllocations": True,
        }
        if self.shares > 0:
            n = str(self.shares)
            device["capacity"] = {
                "shares": {
                    "value": n,
                    "requestPolicy": {
                        "default": "1",
                        "validRange": {"min": "1", "max": n, "step": "1"},
                    },
                }
            }
        if not self.healthy:
            device["taints"] = [
                {"key": f"{driver}/unhealthy", "value": "port-down", "effect": "NoSchedule"}
            ]
        return device


@dataclass(frozen=True)
class HostFacts:
    pcie_root: Callable[[str], str | None]  # PCI address -> "pci0000:00"
    gid_table_size: Callable[[str], int | None]  # RDMA device -> entries


NO_FACTS = HostFacts(lambda _: None, lambda _: None)


def _string(attrs: list[Attribute], key: str, value: str) -> None:
    if value and len(value) <= MAX_STRING_ATTRIBUTE:
        attrs.append((key, value))


def resource_device(resource: ResourceConfig, candidates: Sequence[Candidate]) -> DraDevice | None:
    """The drop-in device of `resource`, or None when it has no usable HCA or no shares."""
    usable = tuple(
        sorted((c for c in select(resource, candidates).selected if c.usable), key=_by_name)
    )
    if not usable or resource.rdma_hca_max <= 0:
        return None
    attrs: list[Attribute] = [("kind", "resource")]
    _string(attrs, "resourceName", resource.full_name)
    attrs.append(("hcaCount", len(usable)))
    numa = {c.numa_node for c in usable}
    if len(numa) == 1 and (only := numa.pop()) >= 0:
        attrs.append(("numaNode", only))
    return DraDevice(
        name=resource_device_name(resource.resource_name),
        kind="resource",
        shares=resource.rdma_hca_max,
        attributes=tuple(attrs),
        members=usable,
        healthy=any(c.healthy for c in usable),
    )


def hca_device(candidate: Candidate, shares: int, facts: HostFacts) -> DraDevice:
    attrs: list[Attribute] = [("kind", "hca")]
    _string(attrs, "pciAddress", candidate.pci_address)
    _string(attrs, "name", candidate.name)
    _string(attrs, "vendor", candidate.vendor)
    _string(attrs, "deviceID", candidate.device_id)
    _string(attrs, "driver", candidate.driver)
    _string(attrs, "netdev", candidate.if_name)
    _string(attrs, "linkType", candidate.link_type)
    rdma = candidate.rdma_devices[0].name if candidate.rdma_devices else ""
    _string(attrs, "rdmaDevice", rdma)
    if candidate.numa_node >= 0:
        attrs.append(("numaNode", candidate.numa_node))
    attrs.append(("auxiliary", candidate.auxiliary))
    root = facts.pcie_root(candidate.pci_address)
    if root:
        _string(attrs, PCIE_ROOT_ATTRIBUTE, root)
    gids = facts.gid_table_size(rdma) if rdma else None
    if gids is not None:
        attrs.append(("gidTableSize", gids))
    return DraDevice(
        name=hca_device_name(candidate.name),
        kind="hca",
        shares=shares,
        attributes=tuple(attrs),
        members=(candidate,),
        healthy=candidate.healthy,
    )


def build(
    dra_resources: Sequence[ResourceConfig],
    all_resources: Sequence[ResourceConfig],
    candidates: Sequence[Candidate],
    facts: HostFacts = NO_FACTS,
) -> tuple[DraDevice, ...]:
    """Every device of the pool, in a stable order: drop-in devices, then HCAs by name.

    A per-HCA device gets the largest `rdmaHcaMax` of the config resources that select the HCA
    (DEFAULT_HCA_SHARES when none does). Raises names.DeviceNameError for a name that cannot be a
    device name (modes.split refuses such a config before it gets here).
    """
    out = [d for r in dra_resources if (d := resource_device(r, candidates)) is not None]
    for candidate in sorted((c for c in candidates if c.usable), key=_by_name):
        limits = [r.rdma_hca_max for r in all_resources if select(r, [candidate]).selected]
        shares = max(limits, default=0) or DEFAULT_HCA_SHARES
        out.append(hca_device(candidate, shares, facts))
    return tuple(out)


def _by_name(candidate: Candidate) -> str:
    return candidate.name
