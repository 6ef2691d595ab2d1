"""Storms against a real `rdma-shared-dp run` (supervisor, three workers, kubelet simulator):
kubelet restart storms, random worker kills, sysfs churn (periodic rescans, and real kernel
uevents), config churn and folders that vanish and come back. Each storm ends with the right
final state (every resource registered with its devices, one worker each, no stray socket) and no
growth in the supervisor's or the workers' threads, fds or memory (psutil on the real processes).

One plant serves the storms in turn (starting one costs seconds): each storm restores what it
changed, so each begins from the same state. RDMA_SHARED_DP_SOAK=1 runs every storm far longer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from common.messages import WorkerStatus
from simulator.kubelet import HEALTHY
from simulator.sysfs import connectx_ib
from tests.conditions import hard_timeout, missing, wait_until
from tests.reliability.footprint import Footprint, scale, soak
from tests.supervisor_rig import Plant, full, resource_entry, three_resources

ABC = ["a", "b", "c"]
DEVICES = {"a": 2, "b": 1, "c": 1}
SEED = int(os.environ.get("RDMA_SHARED_DP_SEED", "1211"))
#: Per storm, normal run; a soak has no short budget.
HARD_TIMEOUT = 600 if soak() else 60
#: Worker memory: a replaced worker starts afresh, so the bound is per live worker.
WORKER_MEMORY = 40 * 2**20


@pytest.fixture(autouse=True)
def _hard_timeout() -> Iterator[None]:
    with hard_timeout(HARD_TIMEOUT):
        yield


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    rig = Plant(three_resources(interval=1))
    try:
        rig.start()
        rig.wait_registered(ABC, timeout=20)
        settle(rig)
        warm_up(rig)
        yield rig
    finally:
        print(rig.log()[-6000:])
        rig.close()


def settle(rig: Plant, timeout: float = 30.0) -> None:
    """The right final state: one running, registered worker per resource with its devices, each
    advertised Healthy on one open stream, and nothing else."""
    for name in ABC:
        rig.kubelet.wait_for_devices(
            full(name),
            lambda ds: len(ds) == 4 and all(d.health == HEALTHY for d in ds),
            timeout=timeout,
        )
    wait_until(
        lambda: all(rig.kubelet.stream_open(full(n)) for n in ABC), timeout, what="streams open"
    )

    def table_right() -> bool:
        rows = {w.resource: w for w in rig.status().workers}
        return set(rows) == {full(n) for n in ABC} and all(
            w.state == "running" and w.registered and w.devices == DEVICES[n]
            for n, w in ((n, rows[full(n)]) for n in ABC)
        )

    wait_until(table_right, timeout, what="status: every worker running and registered")
    wait_until(lambda: len(rig.worker_processes()) == 3, timeout, what="exactly 3 workers")
    # A worker binds a private name and links it to its own: give that a moment.
    wait_until(
        lambda: rig.sockets() == ["a.sock", "b.sock", "c.sock"], timeout, what="no stray socket"
    )
    assert rig.proc is not None and rig.proc.poll() is None


def warm_up(rig: Plant) -> None:
    """One of each disturbance, so caches and allocator arenas are full before we measure."""
    rig.kubelet.restart()
    os.kill(rig.worker("c").pid, signal.SIGKILL)
    settle(rig)


def footprints(rig: Plant) -> tuple[Footprint, dict[str, Footprint]]:
    assert rig.proc is not None
    workers = {w.resource: Footprint.of(w.pid) for w in rig.status().workers}
    return Footprint.of(rig.proc.pid), workers


def assert_no_growth(
    rig: Plant, before: tuple[Footprint, dict[str, Footprint]], what: str, replaced: bool = False
) -> None:
    supervisor, workers = before
    now_supervisor, now_workers = footprints(rig)
    print(
        f"\n[reliability] {what}: supervisor {supervisor.describe()} -> {now_supervisor.describe()}"
    )
    supervisor.assert_bounded(now_supervisor, f"supervisor after {what}")
    for name, later in now_workers.items():
        if replaced or name not in workers:
            # A new process: bound it absolutely (a fresh worker is ~20 MiB USS).
            assert later.memory < WORKER_MEMORY, f"{name}: {later.describe()}"
            assert later.threads <= 20 and later.fds <= 40, f"{name}: {later.describe()}"
        else:
            workers[name].assert_bounded(later, f"worker {name} after {what}")


def test_kubelet_restart_storm(plant: Plant) -> None:
    before = footprints(plant)
    pids = {w.resource: w.pid for w in plant.status().workers}
    rounds = scale(10, 200)
    rng = random.Random(SEED)
    for _ in range(rounds):
        plant.kubelet.restart()
        if rng.random() < 0.5:  # sometimes let them register, sometimes restart at once
            plant.wait_registered(ABC, timeout=10, count=1)
    settle(plant)
    # A kubelet restart never costs a worker its process.
    assert {w.resource: w.pid for w in plant.status().workers} == pids
    assert_no_growth(plant, before, f"{rounds} kubelet restarts")


def test_random_worker_kills(plant: Plant) -> None:
    before = footprints(plant)
    rng = random.Random(SEED)
    kills = scale(6, 100)
    for _ in range(kills):
        name = rng.choice(ABC)
        row = wait_until(functools.partial(_running, plant, name), 30, what=f"{name} running")
        assert row is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(row.pid, signal.SIGKILL)
        if rng.random() < 0.3:
            plant.wait_registered([name], timeout=30, count=1)
    settle(plant, timeout=60)
    assert_no_growth(plant, before, f"{kills} worker kills", replaced=True)
    assert all(p.status() != psutil.STATUS_ZOMBIE for p in plant.worker_processes())


def _running(plant: Plant, name: str) -> WorkerStatus | None:
    row = plant.worker(name)
    return row if row.pid and row.state == "running" else None


def _churn_sysfs(plant: Plant, rng: random.Random, steps: int, poke: object = None) -> None:
    """Random changes: a function vanishes and comes back, ports flap, netdevs go down."""
    removed: set[str] = set()
    hcas = {"0000:9c:00.0": ("mlx5_2", "ib2", 1), "0000:bc:00.0": ("mlx5_3", "ib3", 1)}
    for _ in range(steps):
        action = rng.randrange(3)
        address = rng.choice(sorted(hcas))
        rdma, netdev, numa = hcas[address]
        if action == 0 and address not in removed:
            plant.tree.remove_function(address)
            removed.add(address)
        elif action == 0:
            plant.tree.add(connectx_ib(address, rdma=rdma, netdev=netdev, numa_node=numa))
            removed.discard(address)
        elif address not in removed:
            plant.tree.set_port_state(rdma, 1, rng.choice(["DOWN", "ACTIVE", "INIT"]))
        if callable(poke):
            poke()
        time.sleep(rng.random() * 0.1)  # the churn's own pace, not a synchronisation
    for address in sorted(removed):
        rdma, netdev, numa = hcas[address]
        plant.tree.add(connectx_ib(address, rdma=rdma, netdev=netdev, numa_node=numa))
    for rdma in ("mlx5_2", "mlx5_3"):
        plant.tree.set_port_state(rdma, 1, "ACTIVE")
    if callable(poke):
        poke()


def test_sysfs_churn_seen_by_periodic_rescans(plant: Plant) -> None:
    before = footprints(plant)
    steps = scale(30, 1000)
    _churn_sysfs(plant, random.Random(SEED), steps)
    settle(plant)
    assert_no_growth(plant, before, f"{steps} sysfs changes (periodic rescans)")


def test_config_churn(plant: Plant) -> None:
    before = footprints(plant)
    rng = random.Random(SEED)
    steps = scale(12, 300)
    for _ in range(steps):
        config = three_resources(interval=1)
        pick = rng.randrange(5)
        if pick == 0:
            config["configList"].append(resource_entry("d", ["mlx5_3"]))
        elif pick == 1:
            config["configList"][2]["rdmaHcaMax"] = rng.randint(1, 8)
        elif pick == 2:
            del config["configList"][1]
        elif pick == 3:
            plant.write_config("{ not json")
            continue
        plant.write_config(config)
        time.sleep(rng.random() * 0.3)  # the churn's own pace
    plant.write_config(three_resources(interval=1))
    wait_until(lambda: not plant.has_worker("d"), 20, what="d gone")
    settle(plant)
    assert "d.sock" not in plant.sockets()
    assert_no_growth(plant, before, f"{steps} config changes", replaced=True)


def _removed(folder: Path) -> bool:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return True
    except OSError:  # ENOTEMPTY: something was created in it meanwhile
        return False
    return True


def test_folders_missing_and_appearing(plant: Plant) -> None:
    """The device-plugin folder and the PCI bus folder vanish and come back."""
    before = footprints(plant)
    rounds = scale(2, 30)
    for _ in range(rounds):
        # The whole device-plugin folder goes (sockets and kubelet.sock with it); a kubelet
        # starting again re-creates it, as a real one does.
        plant.kubelet.stop()
        # The workers' kept private names go too (they serve anew); a worker may re-create the
        # folder while it goes, so it is removed until it is gone in one pass.
        wait_until(lambda: _removed(plant.dp_dir), 10, what="device-plugin folder removed")
        wait_until(
            lambda: any(not w.registered for w in plant.status().workers), 10, what="noticed"
        )
        plant.kubelet.start()
        settle(plant)
        # No PCI bus at all (sysfs not mounted yet), then back.
        bus = plant.node / "sys/bus/pci/devices"
        hidden = plant.node / "sys/bus/pci/devices.hidden"
        os.rename(bus, hidden)
        for name in ABC:
            plant.kubelet.wait_for_devices(full(name), lambda ds: ds == [], timeout=10)
        os.rename(hidden, bus)
        settle(plant)
    assert "no_pci_bus" in plant.log() or "no PCI device folder" in plant.log()
    assert_no_growth(plant, before, f"{rounds} rounds of folders missing and back")


@pytest.mark.root
def test_sysfs_churn_with_kernel_uevents() -> None:
    uevent = "/sys/class/net/lo/uevent"
    if os.geteuid() != 0 or not os.access(uevent, os.W_OK):
        missing("needs root to write /sys/class/net/lo/uevent (a real kernel uevent)")
    rig = Plant(three_resources(interval=0), uevents="kernel")  # only uevents trigger rescans
    try:
        rig.start()
        rig.wait_registered(ABC, timeout=20)
        if "uevent monitor unavailable" in rig.log():
            missing("no netlink uevent socket here: " + rig.log()[-300:])
        settle(rig)
        warm_up(rig)
        before = footprints(rig)

        def poke() -> None:
            with open(uevent, "w") as f:
                f.write("change")

        steps = scale(30, 1000)
        _churn_sysfs(rig, random.Random(SEED), steps, poke)
        settle(rig)
        assert_no_growth(rig, before, f"{steps} sysfs changes (kernel uevents)")
    finally:
        rig.close()
