"""Software RDMA devices: soft-RoCE (`rxe`) and soft-iWARP (`siw`) (supervisor and CLI).

A software RDMA device hangs off no PCI function: `sys/class/infiniband/<dev>` has no `device`
link, and its `parent` file names the netdev it runs over. Each becomes a candidate of its own
(`Candidate.software` = "rxe" or "siw"), with that netdev, and, when the netdev itself sits below a
PCI function (`sys/class/net/<if>/device` -> `.../0000:00:03.0/virtio0`), that function's
address, vendor, device ID, driver and NUMA node, so selectors can name them as for any HCA.
Its char devices are found in `sys/class/infiniband_{verbs,mad,cm}` (matched on `ibdev`).

A netdev renamed or removed between reading `parent` and reading the netdev skips the device
with a problem; the next scan sees it again under its new name.
"""

from __future__ import annotations

import os

from common.device_reader import DeviceReader, Owner
from common.devices import Candidate
from common.sysfs_domains import BDF, MAX_NETDEV_NAME, MAX_RDMA_NAME

_CLASS = "sys/class/infiniband"
#: `node_type` of a soft-iWARP device; soft-RoCE reports "1: CA".
_RNIC = "4: RNIC"


def software_candidates(reader: DeviceReader) -> list[Candidate]:
    """A candidate per software RDMA device under `sys/class/infiniband`, in name order."""
    found: list[Candidate] = []
    for name in reader.listdir(_CLASS) or ():
        rel = f"{_CLASS}/{name}"
        # Silent checks: a broken hardware entry is the PCI walk's to report, once.
        base = reader.prefix + rel
        if os.path.lexists(base + "/device") or not os.path.exists(base + "/parent"):
            continue  # a hardware device: found through its PCI function
        if not reader.name_ok(rel, name, MAX_RDMA_NAME, "RDMA device"):
            continue
        candidate = _candidate(reader, rel, name)
        if candidate is not None:
            found.append(candidate)
    return found


def _candidate(reader: DeviceReader, rel: str, name: str) -> Candidate | None:
    parent = reader.read(f"{rel}/parent")
    if not parent or not reader.name_ok(f"{rel}/parent", parent, MAX_NETDEV_NAME, "netdev"):
        return None
    net_rel = f"sys/class/net/{parent}"
    if not os.path.lexists(reader.prefix + net_rel):
        reader.problem(
            "missing_file",
            net_rel,
            f"{name}'s netdev {parent} is gone (renamed or removed mid-scan); skipped until the "
            "next scan",
        )
        return None
    netdev = reader.netdev(net_rel, parent)
    rdma = reader.rdma_device(Owner("sys/class", []), name)
    if netdev is None or rdma is None:
        return None
    node_type = reader.read(f"{rel}/node_type", optional=True)
    function = pci_function_of(reader, net_rel)
    vendor = device_id = driver = ""
    numa = -1
    if function is not None:
        vendor = reader.hex_id(f"{function}/vendor") or ""
        device_id = reader.hex_id(f"{function}/device") or ""
        driver = reader.driver(f"{function}/driver")
        numa = reader.numa_node(f"{function}/numa_node")
    return Candidate(
        name=name,
        pci_address=os.path.basename(function) if function else "",
        vendor=vendor,
        device_id=device_id,
        driver=driver,
        numa_node=numa,
        netdevs=(netdev,),
        rdma_devices=(rdma,),
        rdma_cm_present="rdma_cm" in reader.dev_nodes,
        software="siw" if node_type == _RNIC else "rxe",
    )


def pci_function_of(reader: DeviceReader, net_rel: str) -> str | None:
    """The folder (relative to the root) of the PCI function a netdev sits below, or None.

    The netdev's `device` link points at its parent device: the function itself (most NICs), or
    a device below it (`virtio0` of a virtio-net function). Virtual netdevs (veth, bridges,
    loopback) have no `device` link.
    """
    link = reader.prefix + net_rel + "/device"
    if not os.path.lexists(link):
        return None
    root = os.path.realpath(reader.prefix or "/")
    path = os.path.realpath(link)
    devices = os.path.join(root, "sys", "devices")
    while path.startswith(devices + os.sep):
        if BDF.match(os.path.basename(path)):
            return os.path.relpath(path, root)
        path = os.path.dirname(path)
    return None
