"""The one place memory and timing figures come from: `benchmarks/figures.json`.

`make bench` runs every benchmark with `RDMA_SHARED_DP_FIGURES` naming that file; each benchmark
calls `record(key, value)` next to what it prints, and `record` merges the figure into the file
(without the variable it does nothing, so a benchmark run by hand changes no committed file). Then
`python benchmarks/figures.py --render README.md` rewrites the README's "Measured" table (between
the `<!-- figures:begin -->` and `<!-- figures:end -->` markers) from the file.
`tests/test_figures.py` fails when the README's table is not what the file renders, and when a
doc quotes its own memory or timing figures instead of linking to that table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parent / "figures.json"
ENV = "RDMA_SHARED_DP_FIGURES"
BEGIN = "<!-- figures:begin -->"
END = "<!-- figures:end -->"

#: (what, how it is shown with the figures' keys, target). A row whose keys are not all in the
#: file is left out, so a benchmark that could not run here (the uevent path needs root) drops
#: its row instead of showing a stale figure.
ROWS: tuple[tuple[str, str, str], ...] = (
    (
        "discovery of 64 RDMA functions (`bench_discovery.py`)",
        "median {discovery_median_ms:.1f} ms (p90 {discovery_p90_ms:.1f} ms)",
        "well under 50 ms",
    ),
    (
        "`Allocate` as the kubelet sees it, 2000 calls through the simulator (`bench_worker.py`)",
        "p50 {allocate_p50_ms:.2f} ms, p99 {allocate_p99_ms:.2f} ms ({allocate_handler_us:.0f} µs "
        "inside the handler)",
        "p99 < 2 ms",
    ),
    (
        "kubelet restart -> registered again, median of 20 (`bench_worker.py`)",
        "{reregister_median_ms:.0f} ms after the new kubelet serves (max {reregister_max_ms:.0f} "
        "ms)",
        "< 200 ms (the Go plugin polls every 5 s)",
    ),
    (
        "start -> all of 8 resources registered (`bench_supervisor.py`)",
        "median {start_all_registered_s:.2f} s",
        "< 3 s",
    ),
    (
        "worker `kill -9` -> registered and serving again",
        "median {crash_recovery_median_s:.2f} s (max {crash_recovery_max_s:.2f} s)",
        "< 1 s",
    ),
    (
        "port change + kernel uevent -> new `ListAndWatch` snapshot",
        "median {uevent_change_median_s:.3f} s (0.1 s of it is the debounce)",
        "< 1 s",
    ),
    (
        "port change without uevent -> new snapshot (`periodicUpdateInterval` 1 s)",
        "median {periodic_change_median_s:.2f} s",
        "one rescan interval",
    ),
    (
        "supervisor USS with 1 / 4 / 16 resources, metrics off",
        "{supervisor_uss_1_mib:.1f} / {supervisor_uss_4_mib:.1f} / {supervisor_uss_16_mib:.1f} MiB",
        "",
    ),
    (
        "each worker's USS once registered, as the supervisor starts it",
        "{worker_uss_mib:.1f} MiB (RSS {worker_rss_mib:.0f} MiB, mostly shared libraries)",
        "<= 20 MiB",
    ),
    (
        "a worker's USS while serving, started bare (`bench_worker.py`)",
        "{worker_serving_uss_mib:.1f} MiB",
        "",
    ),
    (
        "`Allocate` of 100 000 unknown IDs refused, as the client sees it (`bench_abuse.py`)",
        "median {abuse_refuse_median_ms:.1f} ms (max {abuse_refuse_max_ms:.1f} ms)",
        "< 50 ms",
    ),
    (
        "the kubelet's options + `Allocate` while another client has tried 50 streams",
        "p50 {abuse_kubelet_p50_ms:.2f} ms, p99 {abuse_kubelet_p99_ms:.2f} ms",
        "p99 < 100 ms",
    ),
)


def record(key: str, value: float) -> None:
    """Merge one figure into the file `RDMA_SHARED_DP_FIGURES` names (no variable: no-op)."""
    target = os.environ.get(ENV)
    if not target:
        return
    path = Path(target)
    data = load(path) if path.exists() else {"figures": {}}
    data["figures"][key] = round(float(value), 4)
    data["measured"] = time.strftime("%Y-%m-%d", time.gmtime())
    data["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load(path: Path = FIGURES) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def render(data: dict[str, Any]) -> str:
    """The README's Measured table, markers included."""
    figures = data["figures"]
    lines = [
        BEGIN,
        f"Measured {data.get('measured', '?')} on {data.get('machine', '?')}.",
        "",
        "| what | figure | target |",
        "|---|---|---|",
    ]
    for what, shown, target in ROWS:
        try:
            text = shown.format(**figures)
        except KeyError:
            continue
        lines.append(f"| {what} | {text} | {target} |")
    lines.append(END)
    return "\n".join(lines)


def splice(document: str, table: str) -> str:
    start, end = document.index(BEGIN), document.index(END) + len(END)
    return document[:start] + table + document[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", metavar="MARKDOWN", help="rewrite this file's figures table")
    args = parser.parse_args(argv)
    table = render(load())
    if args.render:
        path = Path(args.render)
        path.write_text(splice(path.read_text(), table))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
