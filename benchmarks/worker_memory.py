"""Where a worker's private memory (USS) goes: a per-mapping breakdown of real workers (issue 14).

Starts the real supervisor (`tests/supervisor_rig.py`: kubelet simulator, simulated sysfs tree,
`rdmaHcaMax` 1000) with N resources, waits until every worker is registered and healthy, makes a
few Allocate calls to each (so the gRPC paths a kubelet uses have run), and then reads
/proc/<pid>/smaps of every process. Each mapping's private pages (Private_Clean +
Private_Dirty, what `bench_scale.py` calls USS) are put into a bucket:

- `heap`: the brk heap (glibc main arena: type objects, large code objects, C libraries' data);
- `stack`: the main stack, and thread stacks (anonymous mappings right after a guard page);
- `malloc-arena`: glibc's per-thread arenas (anonymous, inside a 64 MiB reservation);
- `anon`: any other anonymous mapping: CPython's 1 MiB object arenas (pymalloc), large mallocs;
- `<file>`: a file mapping (.so data/relocations written by the dynamic linker, .pyc...).

It prints the median worker's buckets, how much of its private memory is pages copied from the
zygote (written after the fork: compared page by page with the zygote in /proc/<pid>/pagemap,
which shows page frames to root only) and how much is new, the thread names of one worker, and
the zygote's and the supervisor's USS.

--env NAME=VALUE reaches the supervisor; the zygote and the workers get an explicit environment
and see only the names in `supervisor.worker_process.PASSED_THROUGH` (such as
RDMA_SHARED_DP_ZYGOTE_IMMORTAL=off). Another interpreter: run the script with it, with the
checkout on PYTHONPATH (`PYTHONPATH=. python3.12 benchmarks/worker_memory.py`).

Usage: `python benchmarks/worker_memory.py [--resources 4] [--runs N] [--env NAME=VALUE ...]
[--json]`.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import statistics
import struct
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from tests.supervisor_rig import Plant, full  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import config_for, wait_healthy, wait_status_registered  # noqa: E402

HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")
ARENA_RESERVATION = 64 * 1024 * 1024  # glibc HEAP_MAX_SIZE on 64-bit
PAGE = os.sysconf("SC_PAGE_SIZE")


def mappings(pid: int) -> list[dict[str, Any]]:
    """Every mapping of `pid` with its size and private KiB."""
    rows: list[dict[str, Any]] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = HEADER.match(line)
            if m:
                rows.append(
                    {
                        "start": int(m.group(1), 16),
                        "end": int(m.group(2), 16),
                        "perms": m.group(3),
                        "name": m.group(4).strip(),
                        "private": 0,
                        "rss": 0,
                    }
                )
                continue
            key, _, rest = line.partition(":")
            if key in ("Private_Clean", "Private_Dirty") and rows:
                rows[-1]["private"] += int(rest.split()[0])
            elif key == "Rss" and rows:
                rows[-1]["rss"] += int(rest.split()[0])
    return rows


def bucket_of(rows: list[dict[str, Any]], i: int) -> str:
    row = rows[i]
    name = str(row["name"])
    if name == "[heap]":
        return "heap"
    if name == "[stack]":
        return "stack"
    if name.startswith("["):
        return name
    if name:
        return os.path.basename(name)
    size = row["end"] - row["start"]
    prev = rows[i - 1] if i else None
    after_guard = (
        prev is not None
        and prev["end"] == row["start"]
        and prev["perms"] == "---p"
        and not prev["name"]
    )
    nxt = rows[i + 1] if i + 1 < len(rows) else None
    before_reserve = (
        nxt is not None
        and nxt["start"] == row["end"]
        and nxt["perms"] == "---p"
        and not nxt["name"]
        and row["start"] % ARENA_RESERVATION == 0
    )
    if before_reserve or (size + (nxt["end"] - nxt["start"] if nxt else 0)) == ARENA_RESERVATION:
        return "malloc-arena"
    if after_guard and row["perms"] == "rw-p":
        return "stack"
    # CPython's object arenas are 1 MiB mmaps, which the kernel merges when they are adjacent;
    # a large malloc (> 128 KiB at first) is an mmap of its own.
    return "anon (pymalloc arenas, large mallocs)"


def breakdown(pid: int) -> dict[str, int]:
    rows = mappings(pid)
    out: collections.Counter[str] = collections.Counter()
    for i, row in enumerate(rows):
        if row["perms"] != "---p":
            out[bucket_of(rows, i)] += row["private"]
    return dict(out)


def _frames(pid: int, start: int, end: int) -> list[int]:
    """The physical page frame of each page in [start, end) (0: not present, or not root)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        data = f.read((end - start) // PAGE * 8)
    entries = struct.unpack(f"{len(data) // 8}Q", data)
    return [e & ((1 << 55) - 1) if e >> 63 else 0 for e in entries]


def copied_from(zygote: int, worker: int) -> dict[str, int] | None:
    """KiB of the worker's writable pages copied from the zygote, and new ones; None if unknown."""
    copied = new = 0
    for row in mappings(worker):
        if row["perms"][1] != "w" or row["end"] - row["start"] > 1 << 30:
            continue
        mine = _frames(worker, row["start"], row["end"])
        try:
            theirs = _frames(zygote, row["start"], row["end"])
        except OSError:
            theirs = [0] * len(mine)
        for frame, original in zip(mine, theirs, strict=True):
            if frame and original and frame != original:
                copied += PAGE // 1024
            elif frame and not original:
                new += PAGE // 1024
    if not copied and not new:
        return None  # no frames shown: not root
    return {"copied_kib": copied, "new_kib": new}


def threads(pid: int) -> list[str]:
    names = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue
    return names


def roles(supervisor_pid: int) -> dict[str, list[int]]:
    top = psutil.Process(supervisor_pid)
    out: dict[str, list[int]] = {"supervisor": [supervisor_pid], "zygote": [], "worker": []}
    for proc in top.children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "zygote" in cmd:
            out["zygote"].append(proc.pid)
        elif "workers" in cmd:
            out["worker"].append(proc.pid)
    return out


def measure(count: int) -> dict[str, Any]:
    names = [f"r{i}" for i in range(count)]
    plant = Plant(config_for(count), log_level="warning")
    try:
        proc = plant.start()
        timeout = 30.0 + count
        for n in names:
            plant.kubelet.wait_for_registration(full(n), timeout=timeout)
        wait_status_registered(plant, count, timeout)
        wait_healthy(plant, names, timeout)
        for i in range(20 * count):  # the calls a kubelet makes, on every worker
            plant.kubelet.allocate(full(names[i % count]), [[str(i % 1000)]])
        who = roles(proc.pid)
        workers = {pid: breakdown(pid) for pid in who["worker"]}
        totals = {pid: sum(b.values()) for pid, b in workers.items()}
        median_pid = sorted(totals, key=lambda p: totals[p])[len(totals) // 2]
        return {
            "resources": count,
            "worker_uss_kib": sorted(totals.values()),
            "median_worker": workers[median_pid],
            "median_worker_threads": threads(median_pid),
            "median_worker_pages": (
                copied_from(who["zygote"][0], median_pid) if who["zygote"] else None
            ),
            "zygote": {pid: sum(breakdown(pid).values()) for pid in who["zygote"]},
            "supervisor_uss_kib": sum(breakdown(proc.pid).values()),
            "bucket_medians": {
                b: statistics.median(w.get(b, 0) for w in workers.values())
                for b in {b for w in workers.values() for b in w}
            },
        }
    finally:
        plant.close()


def report(result: dict[str, Any], top: int) -> None:
    uss = result["worker_uss_kib"]
    print(
        f"{result['resources']} resources: worker USS {statistics.median(uss) / 1024:.2f} MiB "
        f"median (min {uss[0] / 1024:.2f}, max {uss[-1] / 1024:.2f}); zygote "
        f"{', '.join(f'{v / 1024:.2f}' for v in result['zygote'].values())} MiB; supervisor "
        f"{result['supervisor_uss_kib'] / 1024:.2f} MiB"
    )
    print("median over workers, KiB private per bucket:")
    buckets = sorted(result["bucket_medians"].items(), key=lambda kv: -kv[1])
    for name, kib in buckets[:top]:
        print(f"  {kib:8.0f}  {name}")
    rest = sum(kib for _, kib in buckets[top:])
    if rest:
        print(f"  {rest:8.0f}  ({len(buckets) - top} more)")
    pages = result["median_worker_pages"]
    if pages:
        print(
            f"of which pages copied from the zygote (written after the fork): "
            f"{pages['copied_kib']} KiB; new pages: {pages['new_kib']} KiB"
        )
    names = collections.Counter(result["median_worker_threads"])
    print(
        f"threads of one worker ({sum(names.values())}): "
        + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(names.items()))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--top", type=int, default=16, help="buckets to print")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the plugin")
    parser.add_argument("--zygote", choices=("on", "off"), default="on")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ["RDMA_SHARED_DP_ZYGOTE"] = args.zygote
    for pair in args.env:
        name, _, value = pair.partition("=")
        os.environ[name] = value
    results = [measure(args.resources) for _ in range(args.runs)]
    if args.json:
        print(json.dumps(results, indent=1, default=str))
        return 0
    for r in results:
        report(r, args.top)
    if len(results) > 1:
        medians = [statistics.median(r["worker_uss_kib"]) / 1024 for r in results]
        print(f"worker USS per run (MiB): {', '.join(f'{m:.2f}' for m in medians)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
