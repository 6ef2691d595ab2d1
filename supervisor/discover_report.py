"""What `rdma-shared-dp discover` prints: per resource, the devices it selects and why others not.

Runs in the CLI process. The JSON shape (documented in README, "discover --json") is:

    {"host_root": str, "config_file": str | null,
     "resources": [{"resource": "<prefix>/<name>", "rdma_hca_max": int,
                    "selected": [Device], "rejected": [{"device": Device, "reason": str,
                                                         "detail": str}]}],
     "problems": [{"reason": str, "path": str, "detail": str}]}

    Device = {"name", "pci_address", "vendor", "device_id", "driver", "netdev", "link_type",
              "rdma_devices": [str], "numa_node": int, "char_devices": [str], "usable": bool,
              "healthy": bool, "auxiliary": bool}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.config import Config, ResourceConfig, Selectors
from common.devices import Candidate, Scan
from common.selectors import select

#: Stands in for a config when none is given, so discover still shows every candidate.
CATCH_ALL = ResourceConfig(
    resource_name="all", resource_prefix="(no config)", rdma_hca_max=0, selectors=Selectors()
)


def device_json(c: Candidate) -> dict[str, Any]:
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
    }


def build_report(
    config: Config | None, scan: Scan, host_root: str, config_file: str | None
) -> dict[str, Any]:
    resources = config.resources if config is not None else (CATCH_ALL,)
    out: list[dict[str, Any]] = []
    for resource in resources:
        sel = select(resource, scan.candidates)
        out.append(
            {
                "resource": resource.full_name,
                "rdma_hca_max": resource.rdma_hca_max,
                "selected": [device_json(c) for c in sel.selected],
                "rejected": [
                    {"device": device_json(r.candidate), "reason": r.reason, "detail": r.detail}
                    for r in sel.rejected
                ],
            }
        )
    return {
        "host_root": host_root,
        "config_file": config_file,
        "resources": out,
        "problems": [
            {"reason": p.reason, "path": p.path, "detail": p.detail} for p in scan.problems
        ],
    }


_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    # a sub-function is shown under its parent's address: 0000:b1:00.0/mlx5_core.sf.2
    ("PCI ADDRESS", lambda d: f"{d['pci_address']}/{d['name']}" if d["auxiliary"] else d["name"]),
    ("VENDOR:DEVICE", lambda d: f"{d['vendor']}:{d['device_id']}"),
    ("DRIVER", lambda d: d["driver"] or "-"),
    ("NETDEV", lambda d: d["netdev"] or "-"),
    ("LINK", lambda d: d["link_type"] or "-"),
    ("RDMA", lambda d: ",".join(d["rdma_devices"]) or "-"),
    ("NUMA", lambda d: str(d["numa_node"])),
    ("CHAR DEVICES", lambda d: ",".join(p.rsplit("/", 1)[-1] for p in d["char_devices"]) or "-"),
    ("USABLE", lambda d: "yes" if d["usable"] else "no"),
)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def render_text(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for res in report["resources"]:
        n = len(res["selected"])
        usable = sum(1 for d in res["selected"] if d["usable"])
        lines.append(
            f"resource {res['resource']} (rdmaHcaMax {res['rdma_hca_max']}): "
            f"{n} device{'s' if n != 1 else ''} selected, {usable} usable"
        )
        if res["selected"]:
            header = [name for name, _ in _COLUMNS]
            body = [[get(d) for _, get in _COLUMNS] for d in res["selected"]]
            lines.extend(_table([header, *body]))
        if res["rejected"]:
            lines.append("  rejected:")
            for r in res["rejected"]:
                d = r["device"]
                label = d["name"] + (f" ({d['netdev']})" if d["netdev"] else "")
                lines.append(f"    {label}: {r['reason']}: {r['detail']}")
        lines.append("")
    if report.get("cdi", {}).get("enabled"):
        lines.append(f"note: {report['cdi']['runtime_requirement']}")
        lines.append("")
    if report["problems"]:
        lines.append("skipped sysfs entries:")
        lines.extend(f"  {p['path']}: {p['reason']}: {p['detail']}" for p in report["problems"])
    return "\n".join(lines).rstrip() + "\n"
