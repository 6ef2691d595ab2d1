"""The one place memory and timing figures come from: `benchmarks/figures.json`.

`make bench` runs every benchmark with `RDMA_SHARED_DP_FIGURES` naming that file; each benchmark
calls `record(key, value)` next to what it prints, and `record` merges the figure into the file
(without the variable it does nothing, so a benchmark run by hand changes no committed file). Then
`python benchmarks/figures.py --render docs/benchmarks.md` rewrites that doc's "Measured" table
(between the `<!-- figures:begin -->` and `<!-- figures:end -->` markers) from the file, and
the scale block (`<!-- scale:begin -->`) from `results/scale.json` (and its Python 3.12 twin and the
real-kubelet restart block from theirs, `generated_blocks`). `tests/static/test_figures.py` fails
when either is not what the files render, and when a doc quotes its own memory or timing figures
instead of linking to that table.
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
#: The scale table (issue 14) comes from its own file, written by `bench_scale.py`.
SCALE = Path(__file__).resolve().parent / "results" / "scale.json"
SCALE_BEGIN = "<!-- scale:begin -->"
SCALE_END = "<!-- scale:end -->"
#: The same benchmark run by the Python of the default image (3.12), where the zygote's objects
#: are made immortal: `bench_scale.py --output benchmarks/results/scale-py312.json`, run by 3.12.
SCALE_312 = SCALE.with_name("scale-py312.json")
SCALE_312_BEGIN = "<!-- scale-py312:begin -->"
SCALE_312_END = "<!-- scale-py312:end -->"
#: Kubelet restart -> all re-registered with a real kubelet (`bench_kubelet_restart.py`).
KUBELET_RESTART = SCALE.with_name("kubelet_restart.json")
KUBELET_RESTART_BEGIN = "<!-- kubelet-restart:begin -->"
KUBELET_RESTART_END = "<!-- kubelet-restart:end -->"
#: (summary key, column, unit, digits) of the scale table.
SCALE_COLUMNS = (
    ("pss_total_mib", "PSS total", "MiB", 1),
    ("uss_worker_mib", "USS/worker", "MiB", 1),
    ("start_s", "start->all reg.", "s", 2),
    ("allocate_p50_ms", "Allocate p50", "ms", 2),
    ("allocate_p99_ms", "Allocate p99", "ms", 2),
    ("kubelet_restart_ms", "kubelet restart->all reg.", "ms", 0),
    ("kill_ms", "worker kill->serving", "ms", 0),
    ("supervisor_idle_cpu_pct", "supervisor idle CPU", "%", 1),
)

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
        "gRPC alone, CPU per re-registration in Python, no plugin code (`bench_grpc_floor.py`)",
        "plugin side {grpc_floor_plugin_ms:.2f} ms (on `grpc.aio`: {grpc_floor_plugin_aio_ms:.2f} "
        "ms), a Python kubelet's {grpc_floor_kubelet_ms:.2f} ms: 32 resources on these cores "
        "need >= {grpc_floor_restart32_go_ms:.0f} ms with a Go kubelet, >= "
        "{grpc_floor_restart32_sim_ms:.0f} ms with the simulator",
        "the floor under issue 14's 50 ms",
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
    (
        "DRA `NodePrepareResources`, one fresh claim per call, stand-in API server over HTTP "
        "(`bench_dra.py`)",
        "p50 {dra_prepare_p50_ms:.1f} ms, p99 {dra_prepare_p99_ms:.1f} ms",
        "<= 10 / 50 ms",
    ),
    (
        "DRA: 100 claims prepared at once (100 concurrent calls)",
        "{dra_burst_100_s:.2f} s",
        "all within 2 s",
    ),
    (
        "DRA: an HCA gone -> ResourceSlice updated on the server",
        "{dra_device_change_ms:.0f} ms",
        "<= 1 s",
    ),
    (
        "DRA: ResourceSlice writes when the driver restarts with nothing changed",
        "{dra_restart_writes:.0f}",
        "0",
    ),
    (
        "DRA driver process PSS after 300 prepared claims",
        "{dra_pss_mib:.1f} MiB",
        "<= 45 MiB",
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
    """docs/benchmarks.md's Measured table, markers included."""
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


def cell(summary: dict[str, Any], key: str, digits: int) -> str:
    """Median with the spread over the runs: `0.59 (0.43-1.48)`."""
    s = summary.get(key)
    if s is None:
        return "-"
    if s["n"] == 1 or round(s["min"], digits) == round(s["max"], digits):
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def scale_table(results: dict[str, Any]) -> list[str]:
    """The scale table's markdown lines: one row per start mode and resource count."""
    header = ["resources", "start mode", *(f"{c} ({u})" for _, c, u, _ in SCALE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode in ("zygote", "classic"):
        for count, data in results.get(mode, {}).items():
            s = data["summary"]
            cells = [count, mode, *(cell(s, key, d) for key, _, _, d in SCALE_COLUMNS)]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def render_scale(data: dict[str, Any], begin: str = SCALE_BEGIN, end: str = SCALE_END) -> str:
    """docs/benchmarks.md's scale block, markers included: machine, table, each target's verdict."""
    m = data["machine"]
    lines = [
        begin,
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}; load average {m['load_average'][0]} before the "
        f"run, {m['load_average_after'][0]} after (commit {m['commit']}).",
        "",
        *scale_table(data["results"]),
        "",
    ]
    for v in data["targets"]:
        verdict = "met" if v["met"] else "**missed**"
        lines.append(
            f"- {v['figure']} at {v['resources']} resources: {v['median']:.2f} {v['unit']} "
            f"(target <= {v['limit']:g} {v['unit']}): {verdict}"
        )
    lines.append(end)
    return "\n".join(lines)


def render_kubelet_restart(data: dict[str, Any]) -> str:
    """docs/benchmarks.md's real-kubelet restart block, markers included."""
    m = data["machine"]
    lines = [
        KUBELET_RESTART_BEGIN,
        f"Kubelet {data['kubelet']}, {data['mode']} mode, {data['restarts']} restarts per size; "
        f"{m['cpus']} CPUs, Python {m['python']}, load average {m['load_average'][0]:.2f} before "
        "the run.",
        "",
        "| resources | kubelet restart -> all re-registered: median (ms) | p95 (ms) | max (ms) |",
        "|---|---|---|---|",
    ]
    for count, r in data["results"].items():
        lines.append(f"| {count} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | {r['max_ms']:.0f} |")
    lines.append(KUBELET_RESTART_END)
    return "\n".join(lines)


def generated_blocks() -> list[tuple[str, str, str]]:
    """(begin, end, rendered block) of every generated block whose results file exists."""
    blocks = [(BEGIN, END, render(load()))]
    if SCALE.exists():
        blocks.append((SCALE_BEGIN, SCALE_END, render_scale(load(SCALE))))
    if SCALE_312.exists():
        blocks.append(
            (
                SCALE_312_BEGIN,
                SCALE_312_END,
                render_scale(load(SCALE_312), SCALE_312_BEGIN, SCALE_312_END),
            )
        )
    if KUBELET_RESTART.exists():
        blocks.append(
            (
                KUBELET_RESTART_BEGIN,
                KUBELET_RESTART_END,
                render_kubelet_restart(load(KUBELET_RESTART)),
            )
        )
    return blocks


def splice(document: str, table: str, begin: str = BEGIN, end: str = END) -> str:
    start, stop = document.index(begin), document.index(end) + len(end)
    return document[:start] + table + document[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", metavar="MARKDOWN", help="rewrite this file's figures table")
    args = parser.parse_args(argv)
    if args.render:
        path = Path(args.render)
        text = path.read_text()
        for begin, end, block in generated_blocks():
            if begin in text:
                text = splice(text, block, begin, end)
        path.write_text(text)
    else:
        print(render(load()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
