"""Facts about an HCA that discovery does not carry, read from sysfs by the DRA process.

Only what a DRA attribute needs: the PCIe root complex a function hangs under (the standard
`resource.kubernetes.io/pcieRoot` attribute, e.g. `pci0000:00`, so a claim can align an HCA
with a GPU on the same root) and the size of a port's GID table. One readlink and one listdir
per device: cheap, and a failure only leaves the attribute out.
"""

from __future__ import annotations

import os
import re

_ROOT = re.compile(r"pci[0-9a-f]{4}:[0-9a-f]{2}\Z")


def pcie_root(host_root: str, pci_address: str) -> str | None:
    """`pci<domain>:<bus>` of the root complex above `pci_address`, or None when unknown."""
    link = os.path.join(host_root, "sys/bus/pci/devices", pci_address)
    try:
        target = os.readlink(link)
    except OSError:
        return None
    for part in target.split("/"):
        if _ROOT.match(part):
            return part
    return None


def gid_table_size(host_root: str, rdma_device: str) -> int | None:
    """Entries in port 1's GID table (`ports/1/gids/`), or None when unreadable."""
    folder = os.path.join(host_root, "sys/class/infiniband", rdma_device, "ports/1/gids")
    try:
        return len(os.listdir(folder))
    except OSError:
        return None
