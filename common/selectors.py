"""Which discovered devices a resource gets, and why the others were left out.

Runs in the supervisor and the `discover` command. Semantics are today's plugin's: OR inside one
selector list, AND across lists, exact match, an empty list does not filter. Two things come
before the selectors: a function with no bound driver or no RDMA device can never serve a pod.

An auxiliary sub-function is matched on its parent's vendor, device ID, driver and PCI address
(discovery copies them onto it) and on its own netdev, link type and RDMA device names.

A software RDMA device (soft-RoCE, soft-iWARP) is matched on the PCI function of its netdev
(vendor, device ID, driver, address), its netdev and link type, and its own name; but only a
resource that names it, in `ifNames` or `rdmaDevices`, can select it. A catch-all resource, or one
that selects by PCI identity or link type alone, was written for hardware HCAs: handing out an
emulation instead (CPU-bound, a fraction of the bandwidth) without the operator asking would be a
silent change of what pods get. `discover` shows such a device rejected with reason `software`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.config import ResourceConfig, Selectors
from common.devices import Candidate

NO_DRIVER = "no driver bound"
NO_RDMA_DEVICE = "no RDMA device"
#: A software RDMA device left out by a resource that does not name it.
SOFTWARE = "software"
#: Network drivers of NICs that can do RDMA -> the kernel module that adds their RDMA device.
#: Deliberately short: naming a module for a NIC that has none would send an operator hunting.
RDMA_DRIVERS: dict[str, str] = {
    "mlx5_core": "mlx5_ib",
    "mlx4_core": "mlx4_ib",
    "ice": "irdma",
    "bnxt_en": "bnxt_re",
    "qede": "qedr",
    "cxgb4": "iw_cxgb4",
    "hns3": "hns_roce_hw_v2",
}


def no_rdma_hint(driver: str) -> str:
    """Why a bound function has no RDMA device: a module to load, or no RDMA on that NIC."""
    module = RDMA_DRIVERS.get(driver)
    if module is not None:
        return f"is its RDMA driver loaded? (modprobe {module})"
    return (
        f"{driver} is not a driver of an RDMA-capable NIC this plugin knows "
        f"({', '.join(sorted(RDMA_DRIVERS))}); this NIC most likely cannot do RDMA"
    )


@dataclass(frozen=True)
class Rejection:
    candidate: Candidate
    # NO_DRIVER, NO_RDMA_DEVICE, SOFTWARE, or the config key of the selector ("vendors", ...)
    reason: str
    detail: str  # what the candidate had against what the selector wanted


@dataclass(frozen=True)
class Selection:
    resource: ResourceConfig
    selected: tuple[Candidate, ...]
    rejected: tuple[Rejection, ...]


# (config key, Selectors field, what the candidate offers for it), in the order they are checked.
_CHECKS: tuple[tuple[str, str, Callable[[Candidate], tuple[str, ...]]], ...] = (
    ("vendors", "vendors", lambda c: (c.vendor,)),
    ("deviceIDs", "device_ids", lambda c: (c.device_id,)),
    ("drivers", "drivers", lambda c: (c.driver,)),
    ("ifNames", "if_names", lambda c: (c.if_name,)),
    ("linkTypes", "link_types", lambda c: (c.link_type,)),
    ("pciAddresses", "pci_addresses", lambda c: (c.pci_address,)),
    ("rdmaDevices", "rdma_devices", lambda c: tuple(r.name for r in c.rdma_devices)),
)


def first_rejection(selectors: Selectors, candidate: Candidate) -> tuple[str, str] | None:
    """The reason and detail of the first check `candidate` fails, or None when it matches."""
    if candidate.software:
        if not (selectors.if_names or selectors.rdma_devices):
            return SOFTWARE, (
                f"a software RDMA device ({candidate.software}) is selected only by a resource "
                "naming it in ifNames or rdmaDevices"
            )
    elif not candidate.driver:
        return NO_DRIVER, "bind a network driver to it"
    if not candidate.rdma_devices:
        return NO_RDMA_DEVICE, no_rdma_hint(candidate.driver)
    for key, field, offered in _CHECKS:
        wanted: tuple[str, ...] = getattr(selectors, field)
        if not wanted:
            continue
        have = offered(candidate)
        if not set(have) & set(wanted):
            shown = ",".join(h for h in have if h) or "(none)"
            return key, f"{shown} not in [{', '.join(wanted)}]"
    return None


def select(resource: ResourceConfig, candidates: Iterable[Candidate]) -> Selection:
    everything = tuple(candidates)
    # A function whose netdev carries a software RDMA device has none of its own: say where it is
    # rather than "this NIC most likely cannot do RDMA".
    software: dict[str, list[str]] = {}
    for c in everything:
        if c.software and c.pci_address:
            software.setdefault(c.pci_address, []).append(c.name)
    selected: list[Candidate] = []
    rejected: list[Rejection] = []
    for candidate in everything:
        why = first_rejection(resource.selectors, candidate)
        if why is None:
            selected.append(candidate)
            continue
        soft = software.get(candidate.name) if not candidate.software else None
        if why[0] == NO_RDMA_DEVICE and soft:
            why = (NO_RDMA_DEVICE, f"its netdev carries software RDMA device {', '.join(soft)}")
        rejected.append(Rejection(candidate, *why))
    return Selection(resource, tuple(selected), tuple(rejected))
