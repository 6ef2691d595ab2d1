"""What `rdma-shared-dp discover` prints: per resource, the devices it selects and why others not.

Runs in the CLI process. The JSON shape (documented in README, "discover --json") is:

    {"host_root": str, "config_file": str | null, "rdma_netns_mode": "shared" | "exclusive" |
     "unknown", "warnings": [str],
     "resources": [{"resource": "<prefix>/<name>", "rdma_hca_max": int | null,
                    "gid_capacity": int | null, "warnings": [str],
                    "selected": [Device], "rejected": [{"device": Device, "reason": str,
                                                         "detail": str}]}],
     "problems": [{"reason": str, "path": str, "detail": str}]}

    Device = {"name", "pci_address", "vendor", "device_id", "driver", "netdev", "link_type",
              "rdma_devices": [str], "numa_node": int, "char_devices": [str], "usable": bool,
              "healthy": bool, "auxiliary": bool, "kind": "pci" | "auxiliary" | "software",
              "software": "" | "rxe" | "siw", "health": "healthy" | "unhealthy" | "unusable",
              "why": [str], "ports": [Port]}
    Port = {"rdma_device", "port", "state", "link_layer", "gid_table_size": int | null,
            "gid_capacity": int | null}

`rdma_hca_max` is null for the catch-all resource shown without a config (it advertises nothing).
`why` says, for a device that is not healthy, what is missing and what fixes it.

RoCE GID tables. Each pod that gets a netdev on a RoCE port (macvlan, ipvlan) adds GID entries to
that port's table: one per IP address and RoCE version (v1 and v2), so 2 per pod with one IP
address. The first pair is the port's own link-local GID. A table of N entries therefore carries
N // 2 - 1 pods: 63 of 128 (the figure NVIDIA's network operator uses), 126 of mlx5's 255, 15 of
irdma's 32. Pods with IPv6 addresses take more. The table size is the number of entries in
`sys/class/infiniband/<dev>/ports/<n>/gids/`, read here only (discovery's scan does not need it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from common.config import Config, ResourceConfig, Selectors
from common.devices import DOWN_OPERSTATES, RDMA_CM_PATH, Candidate, Scan
from common.rdma_netns import EXCLUSIVE, EXCLUSIVE_WARNING, read_netns_mode
from common.selectors import select

#: Stands in for a config when none is given, so discover still shows every candidate.
CATCH_ALL = ResourceConfig(
    resource_name="all", resource_prefix="(no config)", rdma_hca_max=0, selectors=Selectors()
)
#: GID entries one pod's netdev takes on a RoCE port (one IP address, RoCE v1 and v2).
GIDS_PER_POD = 2
#: The port's own link-local GID pair is not available to pods.
RESERVED_GID_PAIRS = 1
#: The kernel module that creates each char device kind (and rdma_cm).
CHAR_MODULES = {"uverbs": "ib_uverbs", "umad": "ib_umad", "rdma_cm": "rdma_ucm"}


def gid_capacity(table_size: int) -> int:
    """How many pods with one IP address each a RoCE port's GID table carries."""
    return max(0, table_size // GIDS_PER_POD - RESERVED_GID_PAIRS)


def gid_table_size(host_root: str, rdma_device: str, port: int) -> int | None:
    try:
        entries = os.listdir(
            os.path.join(host_root, "sys/class/infiniband", rdma_device, "ports", str(port), "gids")
        )
    except OSError:
        return None
    return sum(1 for e in entries if e.isdigit()) or None


def why_not_healthy(c: Candidate) -> list[str]:
    """What keeps `c` from being usable and healthy, each with what fixes it."""
    why: list[str] = []
    if not c.rdma_devices:
        return why  # a rejection says that
    if not c.rdma_cm_present:
        why.append(f"{RDMA_CM_PATH} is missing: load {CHAR_MODULES['rdma_cm']}")
    for kind in ("uverbs", "umad"):
        chars = [ch for ch in c.char_devices if ch.kind == kind]
        if not chars:
            why.append(f"no {kind} char device: load {CHAR_MODULES[kind]}")
        elif not any(ch.present for ch in chars):
            names = ",".join(ch.path for ch in chars)
            why.append(
                f"{names} missing under /dev although the kernel created it: is the host's /dev "
                "mounted (hostPath /dev), and is udev creating nodes?"
            )
    if why:
        return why
    ports = [(r.name, p) for r in c.rdma_devices for p in r.ports]
    netdev_down = bool(c.netdevs) and c.netdevs[0].operstate in DOWN_OPERSTATES
    if ports and not any(p.up for _, p in ports):
        why += [f"{name} port {p.number} is {p.state}" for name, p in ports]
        if netdev_down:  # a cable or switch-port problem shows on both; say so
            why.append(f"netdev {c.netdevs[0].name} is {c.netdevs[0].operstate} (operstate)")
    elif not ports and netdev_down:
        why.append(f"netdev {c.netdevs[0].name} is {c.netdevs[0].operstate} (operstate)")
    return why


def device_json(c: Candidate, host_root: str) -> dict[str, Any]:
    ports = []
    for r in c.rdma_devices:
        for p in r.ports:
            size = (
                gid_table_size(host_root, r.name, p.number) if p.link_layer == "Ethernet" else None
            )
            ports.append(
                {
                    "rdma_device": r.name,
                    "port": p.number,
                    "state": p.state,
                    "link_layer": p.link_layer,
                    "gid_table_size": size,
                    "gid_capacity": None if size is None else gid_capacity(size),
                }
            )
    return {
        "name": c.name,
        "pci_address": c.pci_address,
        "vendor": c.vendor,
        "device_id": c.device_id,
        "driver": c.driver,
        "netdev": c.if_name,
        "link_type": c.link_type,
        "rdma_devices": [r.name for r in c.rdma_devices],
        "numa_node": c.numa_node,
        "char_devices": [ch.path for ch in c.char_devices],
        "usable": c.usable,
        "healthy": c.healthy,
        "auxiliary": c.auxiliary,
        "kind": c.kind,
        "software": c.software,
        "health": "healthy" if c.healthy else "unhealthy" if c.usable else "unusable",
        "why": why_not_healthy(c),
        "ports": ports,
    }


def _capacity(devices: list[dict[str, Any]]) -> int | None:
    caps = [p["gid_capacity"] for d in devices for p in d["ports"] if p["gid_capacity"] is not None]
    return min(caps) if caps else None


def build_report(
    config: Config | None, scan: Scan, host_root: str, config_file: str | None
) -> dict[str, Any]:
    resources = config.resources if config is not None else (CATCH_ALL,)
    out: list[dict[str, Any]] = []
    for resource in resources:
        sel = select(resource, scan.candidates)
        selected = [device_json(c, host_root) for c in sel.selected]
        capacity = _capacity(selected)
        warnings = []
        if config is not None and capacity is not None and resource.rdma_hca_max > capacity:
            warnings.append(
                f"rdmaHcaMax {resource.rdma_hca_max} exceeds the {capacity} pods the smallest "
                f"RoCE GID table of its devices carries ({GIDS_PER_POD} GIDs per pod with one IP "
                "address): pods beyond that on a RoCE netdev get no GID; lower rdmaHcaMax to "
                f"{capacity} or less"
            )
        out.append(
            {
                "resource": resource.full_name,
                "rdma_hca_max": resource.rdma_hca_max if config is not None else None,
                "gid_capacity": capacity,
                "warnings": warnings,
                "selected": selected,
                "rejected": [
                    {
                        "device": device_json(r.candidate, host_root),
                        "reason": r.reason,
                        "detail": r.detail,
                    }
                    for r in sel.rejected
                ],
            }
        )
    mode = read_netns_mode(host_root)
    return {
        "host_root": host_root,
        "config_file": config_file or None,
        "rdma_netns_mode": mode,
        "warnings": [EXCLUSIVE_WARNING] if mode == EXCLUSIVE else [],
        "resources": out,
        "problems": [
            {"reason": p.reason, "path": p.path, "detail": p.detail} for p in scan.problems
        ],
    }


def _gids(d: dict[str, Any]) -> str:
    sizes = [str(p["gid_table_size"]) for p in d["ports"] if p["gid_table_size"] is not None]
    return ",".join(sizes) or "-"


_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    # a sub-function is shown under its parent's address: 0000:b1:00.0/mlx5_core.sf.2
    ("PCI ADDRESS", lambda d: _name(d)),
    ("VENDOR:DEVICE", lambda d: f"{d['vendor']}:{d['device_id']}"),
    ("DRIVER", lambda d: d["driver"] or "-"),
    ("NETDEV", lambda d: d["netdev"] or "-"),
    ("LINK", lambda d: d["link_type"] or "-"),
    ("RDMA", lambda d: ",".join(d["rdma_devices"]) or "-"),
    ("NUMA", lambda d: str(d["numa_node"])),
    ("CHAR DEVICES", lambda d: ",".join(p.rsplit("/", 1)[-1] for p in d["char_devices"]) or "-"),
    ("GIDS", _gids),
    ("USABLE", lambda d: "yes" if d["usable"] else "no"),
    ("HEALTH", lambda d: d["health"]),
)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def _name(d: dict[str, Any]) -> str:
    # A sub-function or a software RDMA device is shown under its (netdev's) PCI function:
    # 0000:b1:00.0/mlx5_core.sf.2, 0000:00:03.0/rxe0 (software rxe).
    if d.get("kind") == "software":
        where = f"{d['pci_address']}/{d['name']}" if d["pci_address"] else d["name"]
        return f"{where} (software {d['software']})"
    return f"{d['pci_address']}/{d['name']}" if d["auxiliary"] else d["name"]


def _label(d: dict[str, Any]) -> str:
    return _name(d) + (f" ({d['netdev']})" if d["netdev"] else "")


def render_text(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for res in report["resources"]:
        n = len(res["selected"])
        usable = sum(1 for d in res["selected"] if d["usable"])
        healthy = sum(1 for d in res["selected"] if d["healthy"])
        limit = "" if res["rdma_hca_max"] is None else f" (rdmaHcaMax {res['rdma_hca_max']})"
        lines.append(
            f"resource {res['resource']}{limit}: {n} device{'s' if n != 1 else ''} selected, "
            f"{usable} usable, {healthy} healthy"
        )
        if res["selected"]:
            header = [name for name, _ in _COLUMNS]
            body = [[get(d) for _, get in _COLUMNS] for d in res["selected"]]
            lines.extend(_table([header, *body]))
        not_ok = [d for d in res["selected"] if d["why"]]
        if not_ok:
            lines.append("  not healthy:")
            lines.extend(f"    {_label(d)}: {'; '.join(d['why'])}" for d in not_ok)
        if res["gid_capacity"] is not None:
            lines.append(
                f"  RoCE GID tables carry {res['gid_capacity']} pods (one IP address each)"
            )
        lines.extend(f"  warning: {w}" for w in res["warnings"])
        if res["rejected"]:
            lines.append("  rejected:")
            for r in res["rejected"]:
                lines.append(f"    {_label(r['device'])}: {r['reason']}: {r['detail']}")
        lines.append("")
    lines.append(f"RDMA netns mode: {report['rdma_netns_mode']}")
    lines.extend(f"warning: {w}" for w in report["warnings"])
    lines.append("")
    if report.get("cdi", {}).get("enabled"):
        lines.append(f"note: {report['cdi']['runtime_requirement']}")
        lines.append("")
    if report["problems"]:
        lines.append("skipped sysfs entries:")
        lines.extend(f"  {p['path']}: {p['reason']}: {p['detail']}" for p in report["problems"])
    return "\n".join(lines).rstrip() + "\n"
