"""Worker figures docs/benchmarks.md quotes, measured through the kubelet simulator (benchmark
process).

- Allocate latency as the kubelet sees it (one container, one ID, over the worker's unix socket):
  p50 and p99 over 2000 calls. Target: p99 under 2 ms.
- Kubelet restart to re-registration, median over 20 restarts. Target: under 200 ms (the Go
  plugin polls every 5 s). Two figures: from the new kubelet serving (`restart()` returned) to the
  worker registered, and from the start of `restart()` (which includes the simulator's own
  stop, socket wipe and start).
- The worker's memory once serving: USS (what it alone holds; what a second worker adds) and
  PSS, with RSS for reference (RSS counts shared libraries in full, once per process).

Run: `.venv/bin/python benchmarks/bench_worker.py [--calls N] [--restarts N] [--legacy-kubelet]`
(`--legacy-kubelet`: the simulator re-registers like kubelets 1.26-1.35, kubernetes#121994).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from figures import record  # noqa: E402 (benchmarks/figures.py)

from common.messages import Heartbeat  # noqa: E402
from simulator.kubelet import KubeletSimulator  # noqa: E402
from tests.conditions import wait_until  # noqa: E402
from tests.standin_supervisor import Rig, make_candidate, make_resource  # noqa: E402

ALLOCATE_P99_TARGET_MS = 2.0
REREGISTER_TARGET_MS = 200.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--legacy-kubelet", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the simulator narrates every restart

    resource = make_resource("hca_bench", "example.com", 1000)
    full = resource.full_name
    devices = tuple(make_candidate(i, numa_node=i % 2) for i in range(4))
    with tempfile.TemporaryDirectory(prefix="bw") as tmp:
        rig = Rig(Path(tmp), heartbeat_interval=0.5, legacy_kubelet=args.legacy_kubelet)
        kubelet: KubeletSimulator = rig.kubelet
        try:
            proc = rig.start_worker(resource, devices)
            kubelet.wait_for_registration(full, timeout=15)
            kubelet.wait_for_devices(full, lambda ds: len(ds) == 1000)

            for _ in range(100):  # warm up channels and caches
                kubelet.allocate(full, [["0"]])
            latencies: list[float] = []
            for i in range(args.calls):
                start = time.perf_counter()
                kubelet.allocate(full, [[str(i % 1000)]])
                latencies.append((time.perf_counter() - start) * 1000)
            memory = psutil.Process(proc.pid).memory_full_info()
            total = args.calls + 100

            def counted() -> Heartbeat | None:
                for m in reversed(rig.supervisor.received(resource.resource_name, Heartbeat)):
                    if (
                        isinstance(m, Heartbeat)
                        and m.counters
                        and m.counters.allocate_count >= total
                    ):
                        return m
                return None

            beat = wait_until(counted, 5, what="allocation counters")
            assert beat.counters is not None
            server_mean_us = beat.counters.allocate_seconds_sum / beat.counters.allocate_count * 1e6

            from_up: list[float] = []
            from_call: list[float] = []
            for n in range(args.restarts):
                called = time.monotonic()
                kubelet.restart()
                up = time.monotonic()
                registration = kubelet.wait_for_registration(full, timeout=5, count=n + 2)
                from_up.append(max(0.0, registration.time - up) * 1000)
                from_call.append((registration.time - called) * 1000)
                kubelet.wait_for_devices(full, lambda ds: bool(ds) and ds[0].health == "Healthy")
        finally:
            rig.close()

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    up_median, call_median = statistics.median(from_up), statistics.median(from_call)
    print(
        f"Allocate latency as the kubelet sees it, {args.calls} calls: p50 {p50:.3f} ms, "
        f"p99 {p99:.3f} ms (target p99 < {ALLOCATE_P99_TARGET_MS} ms); "
        f"inside the worker's handler: mean {server_mean_us:.0f} us"
    )
    print(
        f"Re-registration after a kubelet restart, median of {args.restarts}: "
        f"{up_median:.1f} ms from the new kubelet serving (max {max(from_up):.1f} ms; "
        f"target < {REREGISTER_TARGET_MS:.0f} ms); {call_median:.1f} ms counting the "
        "simulator's own stop, socket wipe and start"
    )
    print(
        f"Worker memory while serving: USS {memory.uss / 2**20:.1f} MiB, "
        f"PSS {memory.pss / 2**20:.1f} MiB (RSS {memory.rss / 2**20:.1f} MiB)"
    )
    for key, figure in (
        ("allocate_p50_ms", p50),
        ("allocate_p99_ms", p99),
        ("allocate_handler_us", server_mean_us),
        ("reregister_median_ms", up_median),
        ("reregister_max_ms", max(from_up)),
        ("worker_serving_uss_mib", memory.uss / 2**20),
    ):
        record(key, figure)
    ok = p99 < ALLOCATE_P99_TARGET_MS and up_median < REREGISTER_TARGET_MS
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
