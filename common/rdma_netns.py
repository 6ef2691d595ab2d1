"""The RDMA subsystem's network-namespace mode (supervisor and CLI).

In *shared* mode (the kernel's default) every RDMA device is visible in every network namespace,
which is what lets one HCA serve many pods. In *exclusive* mode an RDMA device belongs to exactly
one namespace (the host's, unless moved), so a pod in its own namespace sees no device at all and
sharing cannot work. The Go plugin exits in that mode; this plugin warns (log, `discover`,
`status`, `/readyz`, the `rdma_shared_dp_rdma_netns_exclusive` metric) and keeps running, so a
node that is switched back works without a restart.

Where the kernel exposes it: netlink (`rdma system show`, RDMA_NLDEV_SYS_ATTR_NETNS_MODE) and the
module parameter `/sys/module/ib_core/parameters/netns_mode`. Both are the same kernel variable:
`rdma system set netns exclusive` changes what the parameter file reads. The parameter file is
read here because it lives under `--host-root` like the rest of discovery (netlink would answer
for the plugin's own kernel view, not the tree it was pointed at). A bool module parameter reads
"Y" or "N"; "1" and "0" are accepted too.
"""

from __future__ import annotations

import os

SHARED = "shared"
EXCLUSIVE = "exclusive"
#: ib_core not loaded, or a kernel older than 5.3 (no such parameter; those are always shared).
UNKNOWN = "unknown"
PARAMETER = "sys/module/ib_core/parameters/netns_mode"

EXCLUSIVE_WARNING = (
    "the RDMA subsystem is in exclusive network-namespace mode: each RDMA device belongs to one "
    "network namespace, so pods in their own namespaces see no RDMA device and sharing cannot "
    "work; fix: run `rdma system set netns shared` on the node (and make it last with "
    "`options ib_core netns_mode=1` in /etc/modprobe.d); the plugin keeps running"
)


def read_netns_mode(host_root: str | os.PathLike[str] = "/") -> str:
    """SHARED, EXCLUSIVE or UNKNOWN, from `<host_root>/sys/module/ib_core/parameters/netns_mode`."""
    try:
        with open(os.path.join(host_root, PARAMETER), "rb") as f:
            text = f.read(16).decode("ascii", "replace").strip().upper()
    except OSError:
        return UNKNOWN
    if text in ("Y", "1"):
        return SHARED
    if text in ("N", "0"):
        return EXCLUSIVE
    return UNKNOWN
