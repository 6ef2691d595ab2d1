"""How long one sysfs scan takes on a host with 64 RDMA functions (run: python benchmarks/...).

Builds, in a temp folder, 32 dual-port-style ConnectX-7 IB HCAs and 32 ConnectX-6 Dx RoCE ports
(four of them with a sub-function), an E810 with irdma, two igb NICs and 8 GPUs, then times
`common.discovery.scan` after a warm-up. The figure docs/benchmarks.md quotes is the median line.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import record  # benchmarks/figures.py: the one place figures live

from common.discovery import scan
from simulator.sysfs import SysfsTree, connectx_ib, connectx_roce, e810, gpu, igb

FUNCTIONS = 64
WARMUP = 5
RUNS = 50


def build(root: Path) -> None:
    tree = SysfsTree(root)
    for i in range(FUNCTIONS // 2):
        bus = 0x10 + i * 4
        numa = 0 if i < FUNCTIONS // 4 else 1
        ib = f"0000:{bus:02x}:00.0"
        tree.add(connectx_ib(ib, rdma=f"mlx5_{i}", netdev=f"ib{i}", ports=2, numa_node=numa))
        roce = f"0000:{bus + 1:02x}:00.0"
        subs = [(i, f"p{i}s{i}", f"mlx5_sf{i}")] if i < 4 else []
        tree.add(
            connectx_roce(
                roce, rdma=f"mlx5_{i + 32}", netdev=f"ens{i}np0", numa_node=numa, sub_functions=subs
            )
        )
    tree.add(e810("0000:f0:00.0", netdev="ens9f0", rdma="irdma0"))
    tree.add(igb("0000:f1:00.0", netdev="eno1"), igb("0000:f1:00.1", netdev="eno2"))
    tree.add(*(gpu(f"0000:{0xC0 + i:02x}:00.0", numa_node=i // 4) for i in range(8)))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        root = Path(tmp)
        build(root)
        result = scan(root)
        rdma = [c for c in result.candidates if c.rdma_devices and not c.auxiliary]
        if len(rdma) != FUNCTIONS + 1 or result.problems:
            print(f"unexpected tree: {len(rdma)} RDMA functions, {result.problems}")
            return 1
        for _ in range(WARMUP):
            scan(root)
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            scan(root)
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    median = statistics.median(times)
    p90 = times[int(len(times) * 0.9) - 1]
    print(f"{len(result.candidates)} candidates ({len(rdma)} RDMA functions incl. 1 irdma, "
          f"4 sub-functions), {RUNS} runs: median {median:.2f} ms, p90 {p90:.2f} ms, "
          f"min {times[0]:.2f} ms")  # fmt: skip
    print(f"discovery of {FUNCTIONS} RDMA functions: median {median:.1f} ms")
    record("discovery_median_ms", median)
    record("discovery_p90_ms", p90)
    return 0


if __name__ == "__main__":
    sys.exit(main())
