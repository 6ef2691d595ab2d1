"""What a simulated PCI function is made of: the spec dataclasses and the presets for common
hardware (runs in whatever process builds a tree: tests, the demo, the CLI).

`simulator.sysfs.SysfsTree` writes these out; every name here is importable from
`simulator.sysfs` too, where the callers import them. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

ARPHRD_ETHER = 1
ARPHRD_INFINIBAND = 32
#: GID table sizes of the demo node's RoCE ports: mlx5 reports 255 entries, irdma 32.
MLX5_ROCE_GIDS = 255
IRDMA_ROCE_GIDS = 32

#: The numbers the kernel prints before a port state ("4: ACTIVE").
PORT_STATES: dict[str, int] = {
    "NOP": 0,
    "DOWN": 1,
    "INIT": 2,
    "ARMED": 3,
    "ACTIVE": 4,
    "ACTIVE_DEFER": 5,
}


#: The kernel's char-device classes (below sys/class) and their device names.
CHAR_CLASSES = ("infiniband_verbs", "infiniband_mad", "infiniband_cm")
CHAR_NAME = re.compile(r"^(uverbs|umad|issm|ucm)([0-9]+)$")


@dataclass
class PortSpec:
    number: int = 1
    state: str = "ACTIVE"  # a key of PORT_STATES
    link_layer: str = "InfiniBand"  # or "Ethernet"
    #: Entries of `gids/` (the port's GID table) to write; 0 = no `gids/` folder.
    gids: int = 0


@dataclass
class NetdevSpec:
    name: str
    link_type: int = ARPHRD_ETHER  # ARPHRD number written to `type`
    operstate: str = "up"


@dataclass
class RdmaSpec:
    name: str
    ports: list[PortSpec] = field(default_factory=lambda: [PortSpec()])
    #: issm per port: None = one for each InfiniBand port (what ib_umad does).
    issm: bool | None = None
    ucm: bool = False
    #: Where the char-device folders go: "device" (beside infiniband/, as the kernel does),
    #: "class" (only under sys/devices/virtual, reachable through sys/class), or "none".
    char_devices: str = "device"
    #: Create the dev/infiniband nodes of its char devices.
    dev_nodes: bool = True


@dataclass
class AuxSpec:
    """An auxiliary device below a PCI function (or below another auxiliary device)."""

    #: "mlx5_core.sf.2", "ice.roce.0"; a "{n}" is replaced by the lowest free number, as the
    #: kernel's per-driver ID allocator does ("mlx5_core.eth.{n}").
    name: str
    driver: str = ""  # auxiliary driver bound to it ("" = none)
    netdevs: list[NetdevSpec] = field(default_factory=list)
    rdma: list[RdmaSpec] = field(default_factory=list)
    children: list[AuxSpec] = field(default_factory=list)


@dataclass
class FunctionSpec:
    address: str  # "0000:3b:00.0", lower-case
    vendor: str = "15b3"
    device: str = "1017"
    pci_class: int = 0x020000
    driver: str | None = "mlx5_core"  # None = unbound (no driver link)
    numa_node: int | None = 0  # None = no numa_node file
    netdevs: list[NetdevSpec] = field(default_factory=list)
    rdma: list[RdmaSpec] = field(default_factory=list)
    aux: list[AuxSpec] = field(default_factory=list)
    #: Folder under sys/devices; default: a root port derived from the bus number.
    parent: str | None = None
    #: A child device holding the netdevs instead of the function itself, with its driver:
    #: ("virtio0", "virtio_net") for a virtio-net function.
    netdev_holder: tuple[str, str] | None = None


# -- presets ---------------------------------------------------------------------------------------


def connectx_ib(
    address: str,
    *,
    rdma: str,
    netdev: str | None = "ib0",
    numa_node: int = 0,
    device: str = "1021",
    ports: int = 1,
    state: str = "ACTIVE",
) -> FunctionSpec:
    """A ConnectX HCA in InfiniBand mode (default ConnectX-7); `netdev=None` for no IPoIB."""
    return FunctionSpec(
        address,
        vendor="15b3",
        device=device,
        pci_class=0x020700,
        driver="mlx5_core",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev, ARPHRD_INFINIBAND)] if netdev else [],
        rdma=[RdmaSpec(rdma, ports=[PortSpec(n, state) for n in range(1, ports + 1)])],
        aux=_mlx5_aux(),
    )


def connectx_roce(
    address: str,
    *,
    rdma: str,
    netdev: str,
    numa_node: int = 0,
    device: str = "101d",
    sub_functions: Sequence[tuple[int, str, str]] = (),
    gids: int = 0,
) -> FunctionSpec:
    """A ConnectX Ethernet port with RoCE (default ConnectX-6 Dx).

    `sub_functions`: (sf number, netdev, rdma device) triples, laid out as mlx5 does:
    `mlx5_core.sf.N/` holding `net/` and `infiniband/`, with `mlx5_core.eth.N` and
    `mlx5_core.rdma.N` auxiliary children below it. `gids`: GID table entries per port.
    """
    spec = FunctionSpec(
        address,
        vendor="15b3",
        device=device,
        pci_class=0x020000,
        driver="mlx5_core",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev)],
        rdma=[RdmaSpec(rdma, ports=[PortSpec(1, link_layer="Ethernet", gids=gids)])],
        aux=_mlx5_aux(),
    )
    for number, sf_netdev, sf_rdma in sub_functions:
        spec.aux.append(
            AuxSpec(
                f"mlx5_core.sf.{number}",
                driver="mlx5_core.sf",
                netdevs=[NetdevSpec(sf_netdev)],
                rdma=[RdmaSpec(sf_rdma, ports=[PortSpec(1, link_layer="Ethernet", gids=gids)])],
                children=_mlx5_aux(),
            )
        )
    return spec


def e810(
    address: str,
    *,
    netdev: str,
    rdma: str | None = "irdma0",
    numa_node: int = 0,
    roce: int = 0,
    gids: int = 0,
) -> FunctionSpec:
    """An Intel E810 port (ice); with `rdma`, an `ice.roce.<roce>` child bound to irdma."""
    aux = []
    if rdma:
        aux.append(
            AuxSpec(
                f"ice.roce.{roce}",
                driver="irdma",
                rdma=[RdmaSpec(rdma, ports=[PortSpec(1, link_layer="Ethernet", gids=gids)])],
            )
        )
    return FunctionSpec(
        address,
        vendor="8086",
        device="159b",
        driver="ice",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev)],
        aux=aux,
    )


def igb(address: str, *, netdev: str, numa_node: int = 0, device: str = "1533") -> FunctionSpec:
    """An Intel 1 GbE NIC without RDMA (default I210)."""
    return FunctionSpec(
        address,
        vendor="8086",
        device=device,
        driver="igb",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev)],
    )


def virtio_net(
    address: str, *, netdev: str = "eth0", virtio: str = "virtio0", operstate: str = "up"
) -> FunctionSpec:
    """A virtio-net function (a VM's NIC) as qemu and Linux show it: vendor 1af4 device 1000,
    bound to virtio-pci, its netdev below the `virtioN` device bound to virtio_net."""
    return FunctionSpec(
        address,
        vendor="1af4",
        device="1000",
        driver="virtio-pci",
        numa_node=None,
        netdevs=[NetdevSpec(netdev, operstate=operstate)],
        netdev_holder=(virtio, "virtio_net"),
    )


def gpu(address: str, *, numa_node: int = 0, device: str = "2330") -> FunctionSpec:
    """A non-network PCI device: an NVIDIA GPU (3D controller, class 0x030200)."""
    return FunctionSpec(
        address,
        vendor="10de",
        device=device,
        pci_class=0x030200,
        driver="nvidia",
        numa_node=numa_node,
    )


def _mlx5_aux() -> list[AuxSpec]:
    # Every mlx5 PF and SF has these two children; the netdev and RDMA device sit in the parent.
    return [
        AuxSpec("mlx5_core.eth.{n}", driver="mlx5_core.eth"),
        AuxSpec("mlx5_core.rdma.{n}", driver="mlx5_ib.rdma"),
    ]
