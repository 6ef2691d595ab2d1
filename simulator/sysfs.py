"""Write sysfs and /dev trees laid out the way the Linux kernel lays them out (tests, demo, CLI).

Runs in whatever process calls it: the tests, `rdma-shared-dp demo`, and `python -m simulator.sysfs
DIR` (which writes `build_demo_node(DIR)` for the README's quick start). Standard library only.
The parts: `simulator.sysfs_specs` (specs, presets), `simulator.sysfs_tree` (`SysfsTree`),
`simulator.sysfs_unplug` (hot-unplug); every public name is importable from here.

Describe functions with the spec dataclasses (or the presets `connectx_ib`, `connectx_roce`,
`e810`, `igb`, `gpu`, `virtio_net`) and add them to a `SysfsTree`::

    tree = SysfsTree(tmp_path)                      # creates dev/infiniband/rdma_cm
    tree.add(connectx_ib("0000:3b:00.0", rdma="mlx5_0", netdev="ib0", numa_node=0))
    tree.add(FunctionSpec("0000:5e:00.0", netdevs=[NetdevSpec("ens1f0")],
                          rdma=[RdmaSpec("mlx5_1", ports=[PortSpec(link_layer="Ethernet")])]))
    tree.add(virtio_net("0000:00:03.0", netdev="eth0"))
    tree.add_software_rdma("rxe0", "eth0")          # rdma link add rxe0 type rxe netdev eth0
    tree.set_port_state("mlx5_0", 1, "DOWN")
    tree.remove_dev_node("uverbs0")
    tree.remove_function("0000:5e:00.0")

What gets written, relative to the root:

- `sys/devices/pci<domain>:<root bus>/<bridge>/<bdf>/` real folders holding `class`, `vendor`,
  `device`, `numa_node`, `driver` (a relative link to `sys/bus/pci/drivers/<drv>`), `net/<if>/`,
  `infiniband/<dev>/ports/<n>/`, `infiniband_verbs/uverbsN/`, `infiniband_mad/umadN|issmN/`,
  `infiniband_cm/ucmN/`, and auxiliary device folders (`mlx5_core.sf.2/`, `ice.roce.0/`);
- relative links to those from `sys/bus/pci/devices/<bdf>`, `sys/bus/auxiliary/devices/<aux>`,
  `sys/class/net/<if>`, `sys/class/infiniband/<dev>`, `sys/class/infiniband_verbs/uverbsN`,
  `sys/class/infiniband_mad/umadN`, `sys/class/infiniband_cm/ucmN`;
- `dev/infiniband/<name>` nodes and `dev/infiniband/rdma_cm`. They are plain empty files unless
  `SysfsTree(root, mknod=True)` (which needs root), so the tree can be written by any user;
  discovery only checks that the node exists.

Char devices are numbered per tree as the kernel numbers them: uverbsN gets 231:192+N, umadN
231:N with one umad per port, issmN (same N, InfiniBand ports only) 231:64+N, ucmN 231:224+N;
numbers past the fixed minor range get a dynamic major, as on big hosts.

Breaking things on purpose (for discovery's broken-entry tests): `remove(rel)`, `write(rel,
content)`, `replace_with_dir(rel)`, `dangle(rel)`, with `function_dir(bdf)` for the paths. All
writes of state go through a rename, so a concurrent scan never reads half a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from simulator.sysfs_specs import (
    ARPHRD_ETHER,
    ARPHRD_INFINIBAND,
    IRDMA_ROCE_GIDS,
    MLX5_ROCE_GIDS,
    PORT_STATES,
    AuxSpec,
    FunctionSpec,
    NetdevSpec,
    PortSpec,
    RdmaSpec,
    connectx_ib,
    connectx_roce,
    e810,
    gpu,
    igb,
    virtio_net,
)
from simulator.sysfs_tree import SysfsTree

__all__ = [
    "ARPHRD_ETHER",
    "ARPHRD_INFINIBAND",
    "IRDMA_ROCE_GIDS",
    "MLX5_ROCE_GIDS",
    "PORT_STATES",
    "AuxSpec",
    "FunctionSpec",
    "NetdevSpec",
    "PortSpec",
    "RdmaSpec",
    "SysfsTree",
    "build_demo_node",
    "connectx_ib",
    "connectx_roce",
    "e810",
    "gpu",
    "igb",
    "main",
    "virtio_net",
]


# -- the demo node ---------------------------------------------------------------------------------


def build_demo_node(root: str | os.PathLike[str]) -> None:
    """Write a GPU training node: 4 ConnectX-7 IB HCAs on 2 NUMA nodes, 2 ConnectX-6 Dx RoCE ports
    (the first with sub-function mlx5_core.sf.2), an E810 with irdma, an igb management NIC and 4
    GPUs. rdma_cm exists; every port is ACTIVE; RoCE ports have GID tables (255 and 32)."""
    tree = SysfsTree(root)
    tree.add(
        gpu("0000:19:00.0", numa_node=0),
        connectx_ib("0000:1a:00.0", rdma="mlx5_0", netdev="ib0", numa_node=0),
        gpu("0000:3b:00.0", numa_node=0),
        connectx_ib("0000:3c:00.0", rdma="mlx5_1", netdev="ib1", numa_node=0),
        gpu("0000:9b:00.0", numa_node=1),
        connectx_ib("0000:9c:00.0", rdma="mlx5_2", netdev="ib2", numa_node=1),
        gpu("0000:bb:00.0", numa_node=1),
        connectx_ib("0000:bc:00.0", rdma="mlx5_3", netdev="ib3", numa_node=1),
        connectx_roce(
            "0000:b1:00.0",
            rdma="mlx5_4",
            netdev="ens1f0np0",
            numa_node=1,
            sub_functions=[(2, "ens1f0npf0sf2", "mlx5_6")],
            gids=MLX5_ROCE_GIDS,
        ),
        connectx_roce(
            "0000:b1:00.1", rdma="mlx5_5", netdev="ens1f1np1", numa_node=1, gids=MLX5_ROCE_GIDS
        ),
        e810("0000:ca:00.0", netdev="ens2f0", rdma="irdma0", numa_node=1, gids=IRDMA_ROCE_GIDS),
        igb("0000:05:00.0", netdev="eno1", numa_node=0),
    )
    tree.set_netns_mode(shared=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.sysfs",
        description="Write a simulated GPU training node (sys/ and dev/) into DIR.",
    )
    parser.add_argument("dir", metavar="DIR", help="folder to write; must not hold sys/ or dev/")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    for sub in ("sys", "dev"):
        if (root / sub).exists():
            print(f"error: {root / sub} already exists; pick an empty folder", file=sys.stderr)
            return 2
    try:
        build_demo_node(root)
    except OSError as err:
        print(f"error: cannot write {root}: {err}", file=sys.stderr)
        return 1
    print(f"wrote a simulated node to {root}; try: rdma-shared-dp discover --host-root {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
