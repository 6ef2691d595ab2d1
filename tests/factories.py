"""Factories of test data: configs, devices and sysfs trees (tests).

One place for the shapes many tests build: a resource config (as a value or as the JSON an
operator writes), a discovered ConnectX-like device, and a simulated node's sysfs tree with the
usual four HCAs. Keep them plain: a test that needs something odd builds it itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.config import ResourceConfig, Selectors
from common.devices import Candidate, CharDevice, NetDev, Port, RdmaDevice
from simulator.sysfs import SysfsTree, connectx_ib

PREFIX = "example.com"
#: (PCI address, RDMA device, netdev, NUMA node) of the rig's HCAs.
HCAS = (
    ("0000:1a:00.0", "mlx5_0", "ib0", 0),
    ("0000:3c:00.0", "mlx5_1", "ib1", 0),
    ("0000:9c:00.0", "mlx5_2", "ib2", 1),
    ("0000:bc:00.0", "mlx5_3", "ib3", 1),
)


def resource_entry(
    name: str, rdma: list[str], count: int = 4, prefix: str = PREFIX
) -> dict[str, Any]:
    return {
        "resourceName": name,
        "resourcePrefix": prefix,
        "rdmaHcaMax": count,
        "selectors": {"rdmaDevices": rdma},
    }


def three_resources(interval: int = 0) -> dict[str, Any]:
    """a: mlx5_0 + mlx5_1, b: mlx5_2, c: mlx5_3."""
    return {
        "periodicUpdateInterval": interval,
        "configList": [
            resource_entry("a", ["mlx5_0", "mlx5_1"]),
            resource_entry("b", ["mlx5_2"]),
            resource_entry("c", ["mlx5_3"]),
        ],
    }


def config_bytes(
    names: list[str], interval: int = 0, count: int = 2, prefix: str = PREFIX
) -> bytes:
    """A config file selecting Mellanox devices for each resource name."""
    entries = [
        {
            "resourceName": n,
            "resourcePrefix": prefix,
            "rdmaHcaMax": count,
            "selectors": {"vendors": ["15b3"]},
        }
        for n in names
    ]
    return json.dumps({"periodicUpdateInterval": interval, "configList": entries}).encode()


def node(root: Path, hcas: int = len(HCAS)) -> SysfsTree:
    """A simulated node under `root` with the first `hcas` ConnectX HCAs of `HCAS`."""
    tree = SysfsTree(root)
    for address, rdma, netdev, numa in HCAS[:hcas]:
        tree.add(connectx_ib(address, rdma=rdma, netdev=netdev, numa_node=numa))
    return tree


def make_candidate(
    index: int,
    numa_node: int = 0,
    port_state: str = "ACTIVE",
    present: bool = True,
    issm: bool = True,
    name: str | None = None,
) -> Candidate:
    """A ConnectX-like PCI function with uverbsN, umadN (and issmN) char devices."""
    chars = [
        CharDevice("uverbs", f"uverbs{index}", 231, 192 + index, present),
        CharDevice("umad", f"umad{index}", 231, index, present),
    ]
    if issm:
        chars.append(CharDevice("issm", f"issm{index}", 231, 64 + index, present))
    address = name or f"0000:{index + 3:02x}:00.0"
    return Candidate(
        name=address,
        pci_address=address,
        vendor="15b3",
        device_id="1017",
        driver="mlx5_core",
        numa_node=numa_node,
        netdevs=(NetDev(f"ib{index}", "infiniband", "up"),),
        rdma_devices=(
            RdmaDevice(
                name=f"mlx5_{index}",
                ports=(Port(1, port_state, "InfiniBand"),),
                char_devices=tuple(chars),
            ),
        ),
        rdma_cm_present=True,
    )


def make_resource(
    name: str = "hca_a", prefix: str = "example.com", count: int = 4
) -> ResourceConfig:
    return ResourceConfig(name, prefix, count, Selectors(vendors=("15b3",)))
