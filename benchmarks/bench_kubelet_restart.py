"""Kubelet restart -> all re-registered, with a real kubelet, at 1, 8 and 32 resources (issue 14).

bench_scale.py measures the same figure against the kubelet simulator, which is Python: at 32
resources its own gRPC work (a dial-back and GetDevicePluginOptions per registration, one GIL)
is most of what it measures. This runs the plugin against an upstream kubelet instead (the
real-kubelet suite's rig, tests/e2e/kubelet/rig.py: containerd 1.6 and the newest kubelet of
tests/e2e/kubelet/versions.env, built by `.ci/install-kubelet-e2e.sh`) in classic mode, where the
kubelet wipes every plugin socket and each worker must register again. Per restart: from the new
kubelet's `kubelet.sock` appearing to its last "Connected to new client" (one per resource);
restarts alternate SIGTERM and SIGKILL, with 0.2-1 s between the two kubelets.

Needs root and the built kubelet; otherwise it says what is missing and exits 0 (a benchmark, not
a test). Results: stdout and benchmarks/results/kubelet_restart.json (docs/benchmarks.md quotes it).

Usage: `python benchmarks/bench_kubelet_restart.py [--sizes 1,8,32] [--restarts 10]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.kubelet import rig  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "kubelet_restart.json"


def resources(count: int) -> list[dict[str, Any]]:
    return [
        {"resourceName": f"r{i}", "rdmaHcaMax": 100, "selectors": {"ifNames": ["ib0", "ib1"]}}
        for i in range(count)
    ]


def registered_at(node: rig.Node, count: int, timeout: float) -> list[float]:
    """Registration times of every resource in the current kubelet, once all are there."""

    def times() -> dict[str, float]:
        out: dict[str, float] = {}
        for when, resource in node.kubelet.current.registrations():
            out.setdefault(resource, when)
        return out

    rig.wait_for(lambda: len(times()) >= count, timeout, lambda: node.kubelet.tail(), 0.1)
    return sorted(times().values())


def measure(version: str, image: Path, count: int, restarts: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rkb-", dir="/tmp"))
    node = rig.Node(workdir, version, image)
    try:
        node.kubelet.start()
        node.start_plugin(resources(count), "classic", log_level="info")
        registered_at(node, count, 60 + count)
        rng = random.Random(14)
        samples = []
        for i in range(restarts):
            node.kubelet.stop(signal.SIGTERM if i % 2 == 0 else signal.SIGKILL)
            time.sleep(rng.uniform(0.2, 1.0))  # the gap between two kubelets is the scenario
            inc = node.kubelet.start()
            assert inc.served is not None
            samples.append((registered_at(node, count, 30 + count)[-1] - inc.served) * 1000)
        return {
            "median_ms": statistics.median(samples),
            "p95_ms": rig.percentile(samples, 95),
            "max_ms": max(samples),
            "samples_ms": samples,
        }
    finally:
        node.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--output", default=str(RESULTS), help="JSON file ('' for none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    missing = rig.missing_capability()
    version = rig.kubelet_versions()[-1]
    if missing is None and not rig.kubelet_binary(version).exists():
        missing = f"kubelet {version} not built (bash .ci/install-kubelet-e2e.sh)"
    if missing:
        print(f"bench_kubelet_restart: skipped: {missing}")
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    load_before = os.getloadavg()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rkb-img-", dir="/tmp") as tmp:
        image = rig.build_image_archive(Path(tmp) / "busybox-oci.tar")
        results = {str(n): measure(version, image, n, args.restarts) for n in sizes}
    print(f"\nkubelet restart -> all re-registered, real kubelet {version}, classic mode")
    print("| resources | median (ms) | p95 (ms) | max (ms) |\n|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | {r['max_ms']:.0f} |")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"({time.monotonic() - began:.0f}s; restarts={args.restarts})"
    )
    if args.output:
        doc = {
            "benchmark": "bench_kubelet_restart",
            "kubelet": version,
            "mode": "classic",
            "restarts": args.restarts,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average": list(load_before),
            },
            "results": results,
        }
        Path(args.output).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"JSON: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
