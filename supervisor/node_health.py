"""Node-level failures: a scan that leaves the whole node without devices (supervisor process).

A resource that matches nothing on one node is ordinary (one config for a mixed pool). A node
where *every* configured resource matches nothing is not: the usual causes are a `--host-root`
without the host's `/sys` mounted, a sysfs the plugin may not read, or a config written for other
hardware. The workers then register and advertise zero devices, which looks healthy to the
kubelet, so the supervisor says it instead: `/readyz` fails with the reason, `status` prints it,
and `rdma_shared_dp_node_problem{reason}` drives the `RdmaSharedDpNodeHasNoDevices` alert.

`node_problem()` is a pure function of one scan and the running config's selections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.devices import Candidate, Scan

PCI_BUS = "sys/bus/pci/devices"

#: Stable labels of the metric, in the order the checks run.
NO_PCI_BUS = "no_pci_bus"
SYSFS_UNREADABLE = "sysfs_unreadable"
NO_DEVICES = "no_devices"
REASONS = (NO_PCI_BUS, SYSFS_UNREADABLE, NO_DEVICES)


@dataclass(frozen=True)
class NodeProblem:
    reason: str  # one of REASONS
    text: str  # one line for /readyz, `status` and the log, with what to check


def node_problem(
    scan: Scan, selections: Mapping[str, tuple[Candidate, ...]], host_root: str
) -> NodeProblem | None:
    """Why this node serves no device at all, or None when it serves some (or none is asked)."""
    sysfs = f"{host_root.rstrip('/')}/{PCI_BUS}"
    for problem in scan.problems:
        if problem.reason == "no_pci_bus":
            return NodeProblem(
                NO_PCI_BUS,
                f"no PCI bus at {sysfs}: is the host's /sys mounted there, and does --host-root "
                "point at the host's root?",
            )
        if problem.reason == "unreadable" and problem.path == PCI_BUS:
            return NodeProblem(
                SYSFS_UNREADABLE,
                f"cannot read {sysfs} ({problem.detail}): the plugin needs read access to the "
                "host's sysfs (privileged, or the host /sys mounted readable)",
            )
    if not selections or any(selections.values()):
        return None
    rdma = sum(1 for c in scan.candidates if c.rdma_devices)
    return NodeProblem(
        NO_DEVICES,
        f"none of the {len(selections)} configured resource(s) matches a device on this node "
        f"({len(scan.candidates)} network function(s), {rdma} with RDMA, seen): check the "
        "selectors with `rdma-shared-dp discover`, or keep the plugin off nodes without HCAs",
    )
