"""Scale: memory, start-up, Allocate and restart figures at 1, 8, 32 and 64 resources (issue 14).

Runs the real supervisor (`rdma-shared-dp run`, tests/supervisor_rig.py) with real workers against
the kubelet simulator on a simulated node, `rdmaHcaMax` 1000 per resource, with production
timings (heartbeats, polls: the suites' faster test timings would add their own load), and
measures per run:

- PSS total: supervisor + zygote + every worker, from /proc/<pid>/smaps_rollup (what the node
  pays; shared pages counted once across the processes), and USS per worker (what one more
  resource adds);
- start -> all registered: from starting the supervisor to the kubelet's last registration;
- Allocate p50 / p99 as the kubelet sees it, round-robin over every resource while all are served;
- kubelet restart -> all re-registered: from the new kubelet serving to its last registration
  (median of the run's restarts);
- worker kill -9 -> serving: until that resource is registered again with its devices;
- the supervisor's CPU while idle (heartbeats only), to show its loop stays flat.

Each figure is the median over repeated runs, with the spread (min-max) beside it. The classic
start (every worker a fresh interpreter, `RDMA_SHARED_DP_ZYGOTE=off`) runs too at 8 resources
(and at 32 without --quick), for comparison. Results go to stdout as a table and to
benchmarks/results/scale.json (docs/benchmarks.md quotes that file).

Usage: `python benchmarks/bench_scale.py [--quick] [--runs N] [--sizes 1,8,32,64]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from cli.status_client import StatusError  # noqa: E402
from simulator.kubelet import HEALTHY  # noqa: E402
from tests.supervisor_rig import HCAS, Plant, full, resource_entry  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import SCALE_COLUMNS, scale_table  # noqa: E402 (benchmarks/figures.py)

MIB = 1024.0
RESULTS = REPO / "benchmarks" / "results" / "scale.json"
#: The issue's targets: (figure, resources, limit, unit).
TARGETS = (
    ("pss_total_mib", 8, 90.0, "MiB"),
    ("pss_total_mib", 32, 200.0, "MiB"),
    ("start_s", 8, 0.5, "s"),
    ("start_s", 32, 1.5, "s"),
    ("allocate_p99_ms", 8, 1.5, "ms"),
    ("kubelet_restart_ms", 32, 50.0, "ms"),
)
FIGURES = SCALE_COLUMNS


def config_for(count: int) -> dict[str, Any]:
    return {
        "periodicUpdateInterval": 0,
        "configList": [
            resource_entry(f"r{i}", [HCAS[i % len(HCAS)][1]], count=1000) for i in range(count)
        ],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def rollup(pid: int) -> dict[str, float]:
    """PSS and USS (KiB) of one process, read the way smem does."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = float(parts[1])
    return {"pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def memory(supervisor_pid: int) -> dict[str, Any]:
    top = psutil.Process(supervisor_pid)
    procs = [top, *top.children(recursive=True)]
    rows: list[dict[str, Any]] = []
    for proc in procs:
        try:
            cmd = proc.cmdline()
            role = (
                "supervisor"
                if proc.pid == supervisor_pid
                else "zygote"
                if "zygote" in cmd
                else "worker"
                if "workers" in cmd
                else "other"
            )
            rows.append({"pid": proc.pid, "role": role, **rollup(proc.pid)})
        except (psutil.Error, OSError):
            continue
    workers = [r for r in rows if r["role"] == "worker"]
    return {
        "pss_total_mib": sum(r["pss"] for r in rows) / MIB,
        "uss_worker_mib": statistics.median(r["uss"] for r in workers) / MIB if workers else 0.0,
        "processes": {
            role: len([r for r in rows if r["role"] == role])
            for role in ("supervisor", "zygote", "worker", "other")
        },
        "supervisor_uss_mib": sum(r["uss"] for r in rows if r["role"] == "supervisor") / MIB,
        "zygote_uss_mib": sum(r["uss"] for r in rows if r["role"] == "zygote") / MIB,
    }


def wait_status_registered(plant: Plant, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = plant.status().workers
        except StatusError:
            rows = ()
        if len(rows) == count and all(r.registered for r in rows):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {count} workers registered: {rows}")
        time.sleep(0.02)


def registrations(plant: Plant) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in plant.kubelet.registrations():
        counts[r.resource_name] = counts.get(r.resource_name, 0) + 1
    return counts


def wait_healthy(plant: Plant, names: list[str], timeout: float) -> None:
    for name in names:
        plant.kubelet.wait_for_devices(
            full(name), lambda ds: len(ds) == 1000 and ds[0].health == HEALTHY, timeout=timeout
        )


def one_run(
    count: int, zygote: bool, calls: int, restarts: int, kills: int, idle_window: float = 2.0
) -> dict[str, Any]:
    os.environ["RDMA_SHARED_DP_ZYGOTE"] = "on" if zygote else "off"
    names = [f"r{i}" for i in range(count)]
    timeout = 30.0 + count
    # Production timings (heartbeats, polls): the figures are what a node pays, not a test rig.
    plant = Plant(config_for(count), log_level="warning", timings=None)
    try:
        started = time.monotonic()
        proc = plant.start()
        last = max(
            plant.kubelet.wait_for_registration(full(n), timeout=timeout).time for n in names
        )
        start_s = last - started
        wait_status_registered(plant, count, timeout)
        wait_healthy(plant, names, timeout)

        for i in range(min(100, calls)):  # warm up the kubelet's channels
            plant.kubelet.allocate(full(names[i % count]), [["0"]])
        latencies = []
        for i in range(calls):
            t = time.perf_counter()
            plant.kubelet.allocate(full(names[i % count]), [[str(i % 1000)]])
            latencies.append((time.perf_counter() - t) * 1000)
        mem = memory(proc.pid)
        # The supervisor's loop while nothing happens but heartbeats: flat in the resource count?
        sup = psutil.Process(proc.pid)
        cpu0, wall0 = sum(sup.cpu_times()[:2]), time.monotonic()
        time.sleep(idle_window)
        idle_pct = 100 * (sum(sup.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)

        restart_ms = []
        for _ in range(restarts):
            before = registrations(plant)
            plant.kubelet.restart()
            up = time.monotonic()
            last = max(
                plant.kubelet.wait_for_registration(
                    full(n), timeout=timeout, count=before.get(full(n), 0) + 1
                ).time
                for n in names
            )
            restart_ms.append(max(0.0, last - up) * 1000)
            wait_healthy(plant, names, timeout)

        kill_ms = []
        for k in range(kills):
            name = names[(k * 7) % count]
            before_n = registrations(plant).get(full(name), 0)
            pid = plant.worker(name).pid
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            reg = plant.kubelet.wait_for_registration(
                full(name), timeout=timeout, count=before_n + 1
            )
            plant.kubelet.wait_for_devices(full(name), lambda ds: bool(ds), timeout=timeout)
            kill_ms.append((max(reg.time, time.monotonic()) - killed) * 1000)
            wait_status_registered(plant, count, timeout)
        return {
            "start_s": start_s,
            "allocate_p50_ms": percentile(latencies, 50),
            "allocate_p99_ms": percentile(latencies, 99),
            "kubelet_restart_ms": statistics.median(restart_ms) if restart_ms else None,
            "kubelet_restart_samples_ms": restart_ms,
            "kill_ms": statistics.median(kill_ms) if kill_ms else None,
            "kill_samples_ms": kill_ms,
            "supervisor_idle_cpu_pct": idle_pct,
            **mem,
        }
    finally:
        plant.close()


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, *_ in FIGURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    return out


def machine() -> dict[str, Any]:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        rev = ""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commit": rev,
    }


def print_table(results: dict[str, Any]) -> None:
    print()
    print("\n".join(scale_table(results)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 and 8 resources, 1 run")
    parser.add_argument("--runs", type=int, default=0, help="runs per size (default 3, quick 1)")
    parser.add_argument("--sizes", default="", help="comma-separated resource counts")
    parser.add_argument("--output", default=str(RESULTS), help="JSON file ('' for none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the simulator narrates every restart
    sizes = [int(s) for s in args.sizes.split(",") if s] or (
        [1, 8] if args.quick else [1, 8, 32, 64]
    )
    runs = args.runs or (1 if args.quick else 3)
    calls, restarts, kills = (300, 2, 1) if args.quick else (2000, 5, 3)
    compare = [s for s in sizes if s in ((8,) if args.quick else (8, 32))]

    before = machine()
    began = time.monotonic()
    results: dict[str, Any] = {"zygote": {}, "classic": {}}
    for mode, mode_sizes in (("zygote", sizes), ("classic", compare)):
        for count in mode_sizes:
            samples = []
            for _ in range(runs):
                samples.append(
                    one_run(
                        count, mode == "zygote", calls, restarts, kills, 1.0 if args.quick else 2.0
                    )
                )
            results[mode][str(count)] = {"runs": samples, "summary": summarize(samples)}
            print(f"  measured {mode} x{count} ({time.monotonic() - began:.0f}s)", flush=True)
    after = machine()

    print_table(results)

    verdicts = []
    for key, count, limit, unit in TARGETS:
        s = results["zygote"].get(str(count), {}).get("summary", {}).get(key)
        if s is None:
            continue
        met = s["median"] <= limit
        verdicts.append(
            {
                "figure": key,
                "resources": count,
                "limit": limit,
                "unit": unit,
                "median": s["median"],
                "met": met,
            }
        )
    print()
    for v in verdicts:
        print(
            f"target {v['figure']} at {v['resources']}: median {v['median']:.2f} {v['unit']} "
            f"<= {v['limit']} {v['unit']}: {'met' if v['met'] else 'MISSED'}"
        )
    print(
        f"\nmachine: {before['cpus']} CPUs ({before['cpu_model']}), {before['memory_gib']} GiB, "
        f"Linux {before['kernel']}, Python {before['python']}; load average "
        f"{before['load_average'][0]} before, {after['load_average'][0]} after "
        f"({time.monotonic() - began:.0f}s; runs={runs}, calls={calls}, restarts={restarts}, "
        f"kills={kills})"
    )
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "benchmark": "bench_scale",
                    "quick": args.quick,
                    "parameters": {
                        "runs": runs,
                        "calls": calls,
                        "restarts": restarts,
                        "kills": kills,
                        "rdmaHcaMax": 1000,
                        "sizes": sizes,
                    },
                    "machine": {**before, "load_average_after": after["load_average"]},
                    "results": results,
                    "targets": verdicts,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"JSON: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
