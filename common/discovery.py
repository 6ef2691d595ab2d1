"""Sysfs discovery of the node's network functions and their RDMA devices (supervisor and CLI).

`scan(host_root)` reads `<host_root>/sys` and `<host_root>/dev` and returns a `Scan` of frozen
values from `common.devices`. It never raises for what it finds in the tree: a broken entry is
skipped (or one field falls back to a default), logged with what to check, and reported as a
`ScanProblem` whose `reason` is one of `PROBLEM_REASONS` (stable: used as a metric label).
Reading and checking sit in `common.sysfs_reader`, `common.sysfs_domains` and
`common.device_reader`; this module is the walk over PCI functions and their auxiliary devices.

What is read, per PCI function `sys/bus/pci/devices/<bdf>` of class 0x02xxxx:

- `class`, `vendor`, `device` (required: a function without them is skipped), `numa_node`
  (missing -> -1, silently: kernels without NUMA have none), the `driver` link's basename (no link
  -> "", the function is unbound; the link's target need not exist);
- `net/<if>/type` and `net/<if>/operstate` of each netdev, in name order;
- `infiniband/<dev>/ports/<n>/state` and `link_layer` of each RDMA device;
- `infiniband_verbs/`, `infiniband_mad/`, `infiniband_cm/` beside `infiniband/` for the char
  devices, or `sys/class/infiniband_{verbs,mad,cm}/*` when such a folder is absent there;
- auxiliary children (folder names listed in `sys/bus/auxiliary/devices`) and their own auxiliary
  children: one with netdevs is a candidate of its own (an mlx5 sub-function), one without gives its
  RDMA devices to the function (Intel `ice.roce.N`, mlx5 `mlx5_core.rdma.N`).

Then, per entry of `sys/class/infiniband/` without a `device` link but with a `parent` file (a
software RDMA device: soft-RoCE `rxe`, soft-iWARP `siw`), the netdev it names under
`sys/class/net/` and the PCI function that netdev hangs off, if any (`common/software_rdma.py`).

Nothing else is walked: a scan of 64 RDMA functions takes about 14 ms
(benchmarks/bench_discovery.py). docs/discovery.md has the full rules and the default chosen for
each field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from common.device_reader import DeviceReader, Owner
from common.devices import Candidate, NetDev, RdmaDevice, Scan
from common.software_rdma import software_candidates

# Re-exported: callers and tests name the domains and reasons through discovery.
from common.sysfs_domains import (
    BDF,
    MAX_AUX_NAME,
    MAX_CHAR_DIGITS,
    MAX_DRIVER_NAME,
    MAX_LINK_TYPE,
    MAX_MAJOR,
    MAX_MINOR,
    MAX_NETDEV_NAME,
    MAX_PCI_CLASS,
    MAX_PORT,
    MAX_RDMA_NAME,
    MAX_WORD,
    OPERSTATES,
)
from common.sysfs_reader import PROBLEM_REASONS, parse_hex, shown

__all__ = [
    "MAX_AUX_NAME",
    "MAX_CHAR_DIGITS",
    "MAX_DRIVER_NAME",
    "MAX_LINK_TYPE",
    "MAX_MAJOR",
    "MAX_MINOR",
    "MAX_NETDEV_NAME",
    "MAX_PCI_CLASS",
    "MAX_PORT",
    "MAX_RDMA_NAME",
    "MAX_WORD",
    "OPERSTATES",
    "PROBLEM_REASONS",
    "scan",
]

_NET_CLASS = 0x02
# How deep auxiliary devices nest below a PCI function: mlx5_core.sf.N/mlx5_core.eth.N.
_AUX_DEPTH = 2


@dataclass
class _Found:
    """Netdevs and RDMA devices found in one device folder and its auxiliary children."""

    netdevs: list[NetDev] = field(default_factory=list)
    rdma: list[RdmaDevice] = field(default_factory=list)


class _Scanner(DeviceReader):
    """One scan: the PCI functions, their auxiliary devices, then the software RDMA devices.

    A folder is listed once and its listing tells which sub-folders exist, so absent folders
    cost no system call.
    """

    def __init__(self, host_root: str) -> None:
        super().__init__(host_root)
        self.aux_names: frozenset[str] = frozenset()

    def run(self) -> Scan:
        bus = "sys/bus/pci/devices"
        if not os.path.isdir(self.prefix + bus):
            self.problem("no_pci_bus", bus, f"no PCI device folder under {self.root!r}")
            return Scan(problems=tuple(self.problems))
        self.aux_names = frozenset(self.listdir("sys/bus/auxiliary/devices") or ())
        self.dev_nodes = frozenset(self.listdir("dev/infiniband") or ())
        candidates: list[Candidate] = []
        for bdf in self.listdir(bus) or ():
            candidates.extend(self.function(f"{bus}/{bdf}", bdf))
        candidates.extend(software_candidates(self))
        candidates.sort(key=lambda c: c.name)
        return Scan(candidates=tuple(candidates), problems=tuple(self.problems))

    def is_network_function(self, rel: str) -> bool:
        """The function's `class` is a network controller's (0x02xxxx); problems otherwise."""
        _, cls = self.read_in(rel, "class", "PCI function")
        if cls is None:
            return False
        cls_value = parse_hex(cls)
        if cls_value is None:
            self.problem("bad_value", f"{rel}/class", f"PCI class {shown(cls)} is not hex")
            return False
        if not 0 <= cls_value <= MAX_PCI_CLASS:
            self.problem("out_of_range", f"{rel}/class", f"PCI class {shown(cls)} is not 24 bits")
            return False
        return cls_value >> 16 == _NET_CLASS

    def function(self, rel: str, bdf: str) -> list[Candidate]:
        """The candidates of one PCI function: itself, and any auxiliary sub-functions."""
        if not self.is_network_function(rel):
            return []
        if not BDF.match(bdf):
            self.problem("bad_value", rel, "folder name is not a PCI address (DDDD:BB:DD.F)")
            return []
        vendor = self.hex_id(f"{rel}/vendor")
        device_id = self.hex_id(f"{rel}/device")
        if vendor is None or device_id is None:
            return []
        driver = self.driver(f"{rel}/driver")
        numa = self.numa_node(f"{rel}/numa_node")
        rdma_cm = "rdma_cm" in self.dev_nodes

        names = self.listdir(rel) or []
        own = self.folder(rel, names)
        subs: list[Candidate] = []
        for aux in names:
            if aux not in self.aux_names:
                continue
            if not self.name_ok(f"{rel}/{aux}", aux, MAX_AUX_NAME, "auxiliary device"):
                continue
            found = self.aux_tree(f"{rel}/{aux}", _AUX_DEPTH - 1)
            if found is None:
                continue
            if found.netdevs:
                subs.append(
                    Candidate(
                        name=aux,
                        pci_address=bdf,
                        vendor=vendor,
                        device_id=device_id,
                        driver=driver,
                        numa_node=numa,
                        netdevs=tuple(sorted(found.netdevs, key=lambda n: n.name)),
                        rdma_devices=tuple(sorted(found.rdma, key=lambda r: r.name)),
                        rdma_cm_present=rdma_cm,
                        auxiliary=True,
                    )
                )
            else:
                own.rdma.extend(found.rdma)
        function = Candidate(
            name=bdf,
            pci_address=bdf,
            vendor=vendor,
            device_id=device_id,
            driver=driver,
            numa_node=numa,
            netdevs=tuple(own.netdevs),
            rdma_devices=tuple(sorted(own.rdma, key=lambda r: r.name)),
            rdma_cm_present=rdma_cm,
        )
        return [function, *subs]

    def aux_tree(self, rel: str, depth: int) -> _Found | None:
        """What an auxiliary device and (up to `depth` levels of) its own aux children hold;
        None when its folder is broken."""
        names = self.listdir(rel)
        if names is None:
            return None
        found = self.folder(rel, names)
        if depth > 0:
            for child in names:
                if child in self.aux_names and self.name_ok(
                    f"{rel}/{child}", child, MAX_AUX_NAME, "auxiliary device"
                ):
                    deeper = self.aux_tree(f"{rel}/{child}", depth - 1)
                    if deeper is not None:
                        found.netdevs.extend(deeper.netdevs)
                        found.rdma.extend(deeper.rdma)
        return found

    def folder(self, rel: str, names: list[str]) -> _Found:
        """Netdevs and RDMA devices sitting directly in one device folder (listed as `names`)."""
        found = _Found()
        if "net" in names:
            for name in self.listdir(f"{rel}/net") or ():
                if not self.name_ok(f"{rel}/net/{name}", name, MAX_NETDEV_NAME, "netdev"):
                    continue
                netdev = self.netdev(f"{rel}/net/{name}", name)
                if netdev is not None:
                    found.netdevs.append(netdev)
        if "infiniband" in names:
            owner = Owner(rel, names)
            for name in self.listdir(f"{rel}/infiniband") or ():
                if not self.name_ok(f"{rel}/infiniband/{name}", name, MAX_RDMA_NAME, "RDMA device"):
                    continue
                rdma = self.rdma_device(owner, name)
                if rdma is not None:
                    found.rdma.append(rdma)
        return found


def scan(host_root: str | os.PathLike[str] = "/") -> Scan:
    """Discover the network functions and RDMA devices under `<host_root>/sys` and `/dev`."""
    return _Scanner(os.fspath(host_root)).run()
