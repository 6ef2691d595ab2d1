"""Where docs/benchmarks.md's supervisor figures come from: restart, reaction and start times,
and memory.

Runs a real `rdma-shared-dp run` with real workers against the kubelet simulator on a simulated
node (tests/supervisor_rig.py) and measures:

- start -> all of 8 resources registered (median of 3 starts; target < 3 s);
- worker kill -9 -> registered and serving again (one kill per resource, each a first failure;
  target < 1 s);
- device change -> new ListAndWatch snapshot, through a real kernel uevent (root only) and through
  the periodic rescan (interval 1 s);
- memory (RSS, USS, PSS) of the supervisor and of each worker for 1, 4 and 16 resources (target:
  worker USS <= 20 MiB once registered), and what the supervisor's lazy imports save.

Usage: `python benchmarks/bench_supervisor.py [--quick]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import record  # benchmarks/figures.py: the one place figures live

from cli.status_client import StatusError
from simulator.kubelet import HEALTHY
from tests.supervisor_rig import HCAS, Plant, full, resource_entry

MIB = 1024 * 1024


def config_for(count: int, interval: int = 0) -> dict[str, Any]:
    return {
        "periodicUpdateInterval": interval,
        "configList": [resource_entry(f"r{i}", [HCAS[i % len(HCAS)][1]]) for i in range(count)],
    }


def names(count: int) -> list[str]:
    return [f"r{i}" for i in range(count)]


def wait_all_registered(plant: Plant, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = plant.status().workers
        except StatusError:  # not up yet
            rows = ()
        if len(rows) == count and all(r.registered for r in rows):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {count} workers registered: {rows}")
        time.sleep(0.02)


def bench_start(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        plant = Plant(config_for(8))
        try:
            started = time.monotonic()
            plant.start()
            plant.wait_registered(names(8), timeout=20)
            last = max(
                r.time for r in plant.kubelet.registrations() if r.resource_name.startswith("ex")
            )
            times.append(last - started)
        finally:
            plant.close()
    return times


def bench_crash(plant: Plant, count: int) -> list[float]:
    times = []
    for name in names(count):
        pid = plant.worker(name).pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        reg = plant.kubelet.wait_for_registration(full(name), timeout=10, count=2)
        plant.kubelet.wait_for_devices(full(name), lambda ds: bool(ds), timeout=10)
        times.append(max(reg.time, time.monotonic()) - killed)
    return times


def bench_device_change(plant: Plant, samples: int, uevent: bool) -> list[float]:
    """Flip mlx5_3's port (resource r3) and time the snapshot that shows it."""
    times = []
    state = "DOWN"
    for _ in range(samples):
        want = "Unhealthy" if state == "DOWN" else HEALTHY
        plant.tree.set_port_state("mlx5_3", 1, state)
        changed = time.monotonic()
        if uevent:
            with open("/sys/class/net/lo/uevent", "w") as f:
                f.write("change")

        def shows(ds: Sequence[Any], w: str = want) -> bool:
            return bool(ds) and ds[0].health == w

        plant.kubelet.wait_for_devices(full("r3"), shows, timeout=10)
        times.append(time.monotonic() - changed)
        state = "ACTIVE" if state == "DOWN" else "DOWN"
    return times


def memory(pid: int) -> tuple[float, float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss / MIB, info.uss / MIB, info.pss / MIB


def bench_memory(count: int, uevents: str = "off") -> dict[str, Any]:
    plant = Plant(config_for(count), uevents=uevents)
    try:
        plant.start()
        wait_all_registered(plant, count)
        status = plant.status()
        sup = memory(status.pid)
        workers = [memory(w.pid) for w in status.workers]
        return {"supervisor": sup, "workers": workers}
    finally:
        plant.close()


def baseline_uss(code: str) -> float:
    """USS of a bare interpreter that ran `code` (what an import costs on its own)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code + "\nimport sys; sys.stdout.write('ok\\n'); sys.stdout.flush()"
            "\nimport time; time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return memory(proc.pid)[1]
    finally:
        proc.kill()
        proc.wait()


def fmt(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (
        f"median {statistics.median(ms):6.0f} ms  min {ms[0]:6.0f} ms  max {ms[-1]:6.0f} ms  "
        f"(n={len(ms)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    samples = 4 if args.quick else 10
    logging.basicConfig(level=logging.ERROR)  # the simulator's notes about ended streams

    print("== start -> all of 8 resources registered")
    times = bench_start(1 if args.quick else 3)
    print("  ", fmt(times), " target < 3000 ms")
    record("start_all_registered_s", statistics.median(times))

    plant = Plant(config_for(8, interval=0), uevents="kernel")
    try:
        plant.start()
        wait_all_registered(plant, 8)
        print("== worker kill -9 -> registered and serving again (first failure of each)")
        times = bench_crash(plant, 8)
        print("  ", fmt(times), " target < 1000 ms")
        record("crash_recovery_median_s", statistics.median(times))
        record("crash_recovery_max_s", max(times))
        wait_all_registered(plant, 8)
        if os.geteuid() == 0 and os.access("/sys/class/net/lo/uevent", os.W_OK):
            print("== port change + kernel uevent -> new snapshot")
            times = bench_device_change(plant, samples, uevent=True)
            print("  ", fmt(times), " target < 1000 ms")
            record("uevent_change_median_s", statistics.median(times))
        else:
            print("== uevent path skipped: needs root to write /sys/class/net/lo/uevent")
    finally:
        plant.close()

    plant = Plant(config_for(8, interval=1), uevents="off")
    try:
        plant.start()
        wait_all_registered(plant, 8)
        print("== port change, no uevent -> new snapshot via the periodic rescan (interval 1 s)")
        times = bench_device_change(plant, max(3, samples // 2), uevent=False)
        print("  ", fmt(times))
        record("periodic_change_median_s", statistics.median(times))
    finally:
        plant.close()

    print("== memory once registered (MiB; psutil memory_full_info)")
    print(f"   {'resources':>9}  {'process':<10} {'RSS':>6} {'USS':>6} {'PSS':>6}")
    for count in (1, 4, 16):
        m = bench_memory(count)
        rss, uss, pss = m["supervisor"]
        print(f"   {count:>9}  {'supervisor':<10} {rss:6.1f} {uss:6.1f} {pss:6.1f}")
        record(f"supervisor_uss_{count}_mib", uss)
        ws = m["workers"]
        for label, pick in (("worker avg", statistics.mean), ("worker max", max)):
            vals = [pick([w[i] for w in ws]) for i in range(3)]
            print(f"   {'':>9}  {label:<10} {vals[0]:6.1f} {vals[1]:6.1f} {vals[2]:6.1f}")
            if count == 4 and label == "worker avg":
                record("worker_rss_mib", vals[0])
                record("worker_uss_mib", vals[1])
    with_udev = bench_memory(1, uevents="kernel")["supervisor"]
    print(f"   supervisor with the pyudev monitor loaded: USS {with_udev[1]:.1f} MiB")
    print("== what imports cost on their own (USS of a bare interpreter, MiB)")
    for label, code in (
        ("python", "pass"),
        ("+ zmq", "import zmq"),
        ("+ supervisor.arbiter", "import supervisor.arbiter"),
        ("+ pyudev", "import supervisor.arbiter, pyudev"),
        ("+ psutil", "import supervisor.arbiter, psutil"),
        ("+ prometheus_client", "import supervisor.arbiter, prometheus_client"),
        ("+ grpc (worker)", "import zmq, grpc"),
    ):
        print(f"   {label:<22} {baseline_uss(code):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
