"""The node's RDMA devices as discovery reports them (used by supervisor, workers and the CLI).

These are plain frozen values: discovery builds them from sysfs, selectors filter them, the
supervisor ships them to workers as JSON, and workers derive DeviceSpecs and CDI specs from them.
Nothing here touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Char-device kinds in the order they are handed to containers.
CHAR_DEVICE_KINDS: tuple[str, ...] = ("uverbs", "umad", "issm", "ucm")
#: Path of the RDMA connection manager node every container gets once.
RDMA_CM_PATH = "/dev/infiniband/rdma_cm"
#: NUMA node IDs are < MAX_NUMNODES (1 << CONFIG_NODES_SHIFT, at most 1024 on any arch); -1 = none.
MAX_NUMA_NODES = 1024
#: Netdev operstates that mean the link cannot carry traffic.
DOWN_OPERSTATES = frozenset({"down", "lowerlayerdown", "notpresent"})


@dataclass(frozen=True)
class CharDevice:
    """One `/dev/infiniband/<name>` node of an RDMA device."""

    kind: str  # one of CHAR_DEVICE_KINDS
    name: str  # "uverbs0"
    major: int | None  # from sysfs `dev` ("231:192"); None when unreadable
    minor: int | None
    present: bool  # the node exists under <host-root>/dev

    @property
    def path(self) -> str:
        """Path as the kubelet and the container see it (never under host-root)."""
        return f"/dev/infiniband/{self.name}"


@dataclass(frozen=True)
class Port:
    number: int
    state: str  # "ACTIVE", "DOWN", "INIT", ... (the word after "4: " in sysfs)
    link_layer: str  # "InfiniBand", "Ethernet", or "" when unreadable

    @property
    def up(self) -> bool:
        return self.state == "ACTIVE"


@dataclass(frozen=True)
class RdmaDevice:
    name: str  # "mlx5_0"
    ports: tuple[Port, ...] = ()
    char_devices: tuple[CharDevice, ...] = ()  # sorted by (kind order, number)


@dataclass(frozen=True)
class NetDev:
    name: str
    link_type: str  # "ether", "infiniband", the kernel's name, or "unknown<N>"
    operstate: str  # "up", "down", ... as in sysfs


@dataclass(frozen=True)
class Candidate:
    """A PCI network function, an auxiliary sub-function, or a software RDMA device.

    A sub-function (mlx5 `mlx5_core.sf.N`) carries its parent's vendor, device ID, driver, PCI
    address and NUMA node, because that is what selectors match on; its netdevs and RDMA devices
    are its own. A software RDMA device (soft-RoCE `rxe0`) carries those of the PCI function its
    netdev sits below ("" and -1 when the netdev is virtual), its netdev and itself.
    """

    name: str  # PCI address, auxiliary device name ("mlx5_core.sf.2") or RDMA device ("rxe0")
    pci_address: str  # own address, the parent's (auxiliary), the netdev's function's or ""
    vendor: str  # 4 lower-case hex digits, no 0x
    device_id: str
    driver: str  # basename of the driver link; "" when unbound
    numa_node: int  # -1 when unknown
    netdevs: tuple[NetDev, ...] = ()  # in name order
    rdma_devices: tuple[RdmaDevice, ...] = ()
    rdma_cm_present: bool = False
    auxiliary: bool = False
    software: str = ""  # "rxe" or "siw" for a software RDMA device, "" for hardware

    @property
    def kind(self) -> str:
        """ "pci", "auxiliary" or "software": what `discover` shows."""
        if self.software:
            return "software"
        return "auxiliary" if self.auxiliary else "pci"

    @property
    def if_name(self) -> str:
        return self.netdevs[0].name if self.netdevs else ""

    @property
    def link_type(self) -> str:
        return self.netdevs[0].link_type if self.netdevs else ""

    @property
    def char_devices(self) -> tuple[CharDevice, ...]:
        return tuple(c for r in self.rdma_devices for c in r.char_devices)

    @property
    def usable(self) -> bool:
        """uverbs, umad and rdma_cm present, as today's plugin requires (issm is optional)."""
        present = {c.kind for c in self.char_devices if c.present}
        return self.rdma_cm_present and {"uverbs", "umad"} <= present

    @property
    def healthy(self) -> bool:
        """Usable, and able to carry traffic.

        Port state is the signal when the RDMA device reports ports (an IB netdev may be admin-down
        while verbs work fine); without ports, the first netdev's operstate decides. A software
        device needs both: its traffic is its netdev's.
        """
        if not self.usable:
            return False
        ports = [p for r in self.rdma_devices for p in r.ports]
        if self.software and self.netdevs and self.netdevs[0].operstate in DOWN_OPERSTATES:
            return False
        if ports:
            return any(p.up for p in ports)
        if self.netdevs:
            return self.netdevs[0].operstate not in DOWN_OPERSTATES
        return True

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _to_json(self)
        return data


@dataclass(frozen=True)
class ScanProblem:
    """A sysfs entry skipped by discovery; `reason` is a short stable label (a metric label)."""

    reason: str  # "dangling_link", "missing_file", "not_a_file", "bad_encoding", "bad_value", ...
    path: str  # the sysfs path, relative to host-root
    detail: str


@dataclass(frozen=True)
class Scan:
    """What one sysfs scan found: network functions (RDMA-capable or not) and what it skipped."""

    candidates: tuple[Candidate, ...] = ()
    problems: tuple[ScanProblem, ...] = ()


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _to_json(getattr(value, k)) for k in value.__dataclass_fields__}
    return value
