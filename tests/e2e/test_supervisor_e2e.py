"""End to end: a real `rdma-shared-dp run`, real workers and the kubelet simulator.

Each test starts its own supervisor on a simulated node (tests/supervisor_rig.py) and checks what
the kubelet sees. Every test has a hard timeout, and the rig's finalizer kills whatever is left.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from common import exitcodes
from common.messages import WorkerStatus
from simulator.kubelet import HEALTHY, UNHEALTHY
from tests.conditions import hard_timeout, missing, wait_until
from tests.supervisor_rig import REPO, Plant, full, resource_entry, three_resources

HARD_TIMEOUT = 45
ABC = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _hard_timeout() -> Iterator[None]:
    with hard_timeout(HARD_TIMEOUT):
        yield


@pytest.fixture
def plant(request: pytest.FixtureRequest) -> Iterator[Plant]:
    """Three resources (a: 2 HCAs, b: 1, c: 1), started and registered."""
    params = getattr(request, "param", {})
    rig = Plant(three_resources(params.get("interval", 0)), **params.get("rig", {}))
    try:
        rig.start()
        rig.wait_registered(ABC)
        settled(rig)
        yield rig
    finally:
        print(rig.log()[-8000:])  # pytest shows it only when the test failed
        rig.close()


def settled(rig: Plant) -> None:
    """Every stream open with its first snapshot, every registration known to the supervisor."""
    for name in ABC:
        rig.kubelet.wait_for_devices(full(name), bool)
    wait_until(lambda: all(rig.kubelet.stream_open(full(n)) for n in ABC), what="streams open")
    wait_until(
        lambda: all(w.registered for w in rig.status().workers), what="workers report registered"
    )


def _streams(rig: Plant) -> dict[str, int]:
    return {n: rig.kubelet.streams_opened(full(n)) for n in ABC}


def _pids(rig: Plant) -> dict[str, int]:
    return {row.resource: row.pid for row in rig.status().workers}


def test_three_resources_start_register_and_report_status(plant: Plant) -> None:
    # The kubelet sees a registration a moment before the worker's ready reaches the supervisor.
    status = wait_until(
        lambda: (s := plant.status()) and all(w.registered for w in s.workers) and s,
        what="every worker reported registered",
    )
    assert [w.resource for w in status.workers] == [full(n) for n in ABC]
    assert all(w.state == "running" and w.pid > 0 for w in status.workers)
    assert [(w.devices, w.healthy) for w in status.workers] == [(2, 2), (1, 1), (1, 1)]
    for name in ABC:
        devices = plant.kubelet.wait_for_devices(full(name), lambda ds: len(ds) == 4)
        assert {d.health for d in devices} == {HEALTHY}
    # The supervisor never loads grpc: it says so, and its memory map agrees.
    assert status.grpc_loaded is False
    assert plant.proc is not None and status.pid == plant.proc.pid
    maps = Path(f"/proc/{status.pid}/maps").read_text()
    assert "grpc" not in maps and "cygrpc" not in maps
    # ...while each worker does (so the check above can fail).
    worker_maps = Path(f"/proc/{status.workers[0].pid}/maps").read_text()
    assert "cygrpc" in worker_maps
    assert stat.S_IMODE(os.stat(plant.runtime_dir).st_mode) == 0o700
    # Workers run in their own session: a terminal's Ctrl-C reaches only the supervisor.
    assert os.getsid(status.workers[0].pid) == status.workers[0].pid


def test_status_command_text_and_json(plant: Plant) -> None:
    cmd = [sys.executable, "-m", "supervisor", "status", "--runtime-dir", str(plant.runtime_dir)]
    text = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=10)
    assert text.returncode == 0, text.stderr
    assert "RESOURCE" in text.stdout and "REGISTERED SINCE" in text.stdout
    assert all(full(n) in text.stdout for n in ABC)
    js = subprocess.run([*cmd, "--json"], cwd=REPO, capture_output=True, text=True, timeout=10)
    data = json.loads(js.stdout)
    assert {w["resource"] for w in data["workers"]} == {full(n) for n in ABC}
    assert data["grpc_loaded"] is False
    missing = subprocess.run(
        [*cmd[:-1], str(plant.root / "nowhere")], cwd=REPO, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "no supervisor control socket" in missing.stderr


def test_kill_9_restarts_only_that_worker(plant: Plant) -> None:
    pids, streams = _pids(plant), _streams(plant)
    os.kill(pids[full("b")], signal.SIGKILL)
    plant.wait_registered(["b"], count=2)
    after = wait_until(lambda: plant.worker("b").state == "running" and plant.worker("b"))
    assert after.pid != pids[full("b")] and after.restarts == 1
    # The others kept their process and their one stream.
    now = _pids(plant)
    assert now[full("a")] == pids[full("a")] and now[full("c")] == pids[full("c")]
    assert plant.kubelet.stream_open(full("a")) and plant.kubelet.stream_open(full("c"))
    assert _streams(plant)["a"] == streams["a"] and _streams(plant)["c"] == streams["c"]
    assert plant.registrations("a") == 1 and plant.registrations("c") == 1


def test_config_edits_disturb_only_what_changed(plant: Plant) -> None:
    pids, streams = _pids(plant), _streams(plant)
    config = three_resources()
    # a: new rdmaHcaMax (same process, new snapshot); b: new prefix (new process and name);
    # c: removed; d: added.
    config["configList"][0]["rdmaHcaMax"] = 6
    config["configList"][1]["resourcePrefix"] = "other.example.com"
    del config["configList"][2]
    config["configList"].append(resource_entry("d", ["mlx5_3"]))
    plant.write_config(config)

    plant.kubelet.wait_for_devices(full("a"), lambda ds: len(ds) == 6)
    plant.kubelet.wait_for_registration("other.example.com/b", timeout=10)
    plant.wait_registered(["d"])
    wait_until(lambda: not plant.has_worker("c"), what="c leaves the worker table")
    wait_until(lambda: "c.sock" not in plant.sockets(), what="c's socket removed")
    status = {w.resource: w for w in plant.status().workers}
    assert set(status) == {full("a"), "other.example.com/b", full("d")}
    assert status[full("a")].pid == pids[full("a")]  # no new process for a
    assert plant.kubelet.streams_opened(full("a")) == streams["a"]  # nor a new stream
    assert plant.registrations("a") == 1
    assert status["other.example.com/b"].pid != pids[full("b")]
    assert not psutil.pid_exists(pids[full("c")]) or psutil.Process(pids[full("c")]).status() == (
        psutil.STATUS_ZOMBIE
    )


def test_bad_config_is_refused_and_everything_keeps_serving(plant: Plant) -> None:
    pids, streams = _pids(plant), _streams(plant)
    bad = three_resources()
    bad["configList"][0]["rdmaHcaMax"] = "lots"
    bad["configList"][1]["resourceName"] = "no spaces allowed"
    plant.write_config(bad)
    wait_until(lambda: "config problem" in plant.log(), what="the refusal in the log")
    log = plant.log()
    assert "rdmaHcaMax" in log and "resourceName" in log  # every problem, not just the first
    plant.write_config("{ not json")
    wait_until(lambda: plant.log().count("refused") >= 2, what="the second refusal")
    assert _pids(plant) == pids and _streams(plant) == streams
    assert all(plant.kubelet.stream_open(full(n)) for n in ABC)
    # SIGHUP with the same bad file changes nothing either; a good file then applies.
    assert plant.proc is not None
    plant.proc.send_signal(signal.SIGHUP)
    good = three_resources()
    good["configList"][2]["rdmaHcaMax"] = 2
    plant.write_config(good)
    plant.kubelet.wait_for_devices(full("c"), lambda ds: len(ds) == 2)
    assert _pids(plant) == pids


@pytest.mark.root
def test_device_removed_seen_through_a_real_uevent() -> None:
    uevent = "/sys/class/net/lo/uevent"
    if os.geteuid() != 0 or not os.access(uevent, os.W_OK):
        missing("needs root to write /sys/class/net/lo/uevent (a real kernel uevent)")
    rig = Plant(three_resources(interval=0), uevents="kernel")  # no periodic rescan at all
    try:
        rig.start()
        rig.wait_registered(ABC)
        for name in ABC:
            rig.kubelet.wait_for_devices(full(name), lambda ds: len(ds) == 4)
        if "uevent monitor unavailable" in rig.log():
            missing("no netlink uevent socket here: " + rig.log()[-300:])
        before = {n: len(rig.kubelet.snapshots(full(n))) for n in ABC}
        rig.tree.remove_function("0000:9c:00.0")  # mlx5_2: resource b
        started = time.monotonic()
        with open(uevent, "w") as f:
            f.write("change")  # the kernel announces a change on the net subsystem
        rig.kubelet.wait_for_devices(full("b"), lambda ds: ds == [], timeout=5)
        took = time.monotonic() - started
        assert took < 1.0, f"uevent -> new snapshot took {took:.2f}s"
        assert len(rig.kubelet.snapshots(full("a"))) == before["a"]
        assert len(rig.kubelet.snapshots(full("c"))) == before["c"]
        assert rig.worker("b").devices == 0
    finally:
        rig.close()


def _periodic_scans(rig: Plant) -> int:
    return rig.log().count("device scan trigger=periodic")


@pytest.mark.parametrize("plant", [{"interval": 1, "rig": {"log_level": "debug"}}], indirect=True)
def test_device_removed_seen_by_the_periodic_rescan(plant: Plant) -> None:
    for name in ABC:
        plant.kubelet.wait_for_devices(full(name), lambda ds: len(ds) == 4)
    before = {n: len(plant.kubelet.snapshots(full(n))) for n in ABC}
    plant.tree.remove_function("0000:1a:00.0")  # mlx5_0: one of a's two
    wait_until(lambda: plant.worker("a").devices == 1, timeout=5, what="a down to one HCA")
    wait_until(lambda: len(plant.kubelet.snapshots(full("a"))) > before["a"], what="a new snapshot")
    assert len(plant.kubelet.snapshots(full("b"))) == before["b"]
    assert len(plant.kubelet.snapshots(full("c"))) == before["c"]
    plant.tree.remove_function("0000:3c:00.0")  # a has no device left: an empty list
    plant.kubelet.wait_for_devices(full("a"), lambda ds: ds == [], timeout=5)
    # A broken sysfs entry is logged once, not at every rescan.
    plant.tree.write(plant.tree.function_dir("0000:bc:00.0") + "/numa_node", b"\xff\xfe")
    wait_until(lambda: "device scan skipped an entry" in plant.log(), timeout=5, what="warning")
    scans = _periodic_scans(plant)
    wait_until(lambda: _periodic_scans(plant) >= scans + 2, timeout=5, what="two more scans")
    assert plant.log().count("device scan skipped an entry") == 1
    assert "numa_node" in plant.log()


@pytest.mark.parametrize("plant", [{"interval": 1}], indirect=True)
def test_port_down_turns_unhealthy_and_back(plant: Plant) -> None:
    plant.tree.set_port_state("mlx5_3", 1, "DOWN")
    devices = plant.kubelet.wait_for_devices(
        full("c"), lambda ds: len(ds) == 4 and all(d.health == UNHEALTHY for d in ds), timeout=5
    )
    assert devices and plant.worker("c").healthy == 0
    assert {d.health for d in plant.kubelet.devices(full("b")) or []} == {HEALTHY}
    plant.tree.set_port_state("mlx5_3", 1, "ACTIVE")
    plant.kubelet.wait_for_devices(
        full("c"), lambda ds: len(ds) == 4 and all(d.health == HEALTHY for d in ds), timeout=5
    )
    assert plant.worker("c").healthy == 1


def test_kubelet_restart_is_followed_by_reregistration_of_all(plant: Plant) -> None:
    plant.kubelet.restart()
    # The supervisor's own watch saw it (the workers also notice by themselves).
    wait_until(lambda: "kubelet.sock was replaced" in plant.log(), timeout=5, what="the watch")
    plant.wait_registered(ABC, count=2)
    for name in ABC:
        plant.kubelet.wait_for_devices(full(name), lambda ds: len(ds) == 4)
    wait_until(lambda: all(w.registered for w in plant.status().workers), what="all registered")


@pytest.mark.parametrize("plant", [{"rig": {"use_cdi": True}}], indirect=True)
def test_sigterm_leaves_no_socket_cdi_file_or_process(plant: Plant) -> None:
    wait_until(lambda: len(list(plant.cdi_dir.glob("*.json"))) == 3, what="3 CDI specs")
    assert plant.sockets() == ["a.sock", "b.sock", "c.sock"]
    assert len(plant.worker_processes()) == 3
    code, took = plant.terminate()
    assert code == 0
    assert took < 5.0
    assert plant.sockets() == []
    assert list(plant.cdi_dir.glob("*.json")) == []
    assert plant.worker_processes() == []
    assert not plant.runtime_dir.exists()


def test_sigkill_of_the_supervisor_leaves_no_process_and_a_new_one_starts(plant: Plant) -> None:
    workers = plant.worker_processes()
    assert len(workers) == 3 and plant.proc is not None
    plant.proc.kill()
    plant.proc.wait(5)
    started = time.monotonic()
    _, alive = psutil.wait_procs(workers, timeout=8)
    assert alive == [], f"workers still alive: {alive}"
    assert time.monotonic() - started < 5.0  # the issue: every worker exits by itself within 5 s
    assert plant.worker_processes() == []
    # A new supervisor on the same folders comes up cleanly.
    plant.start()
    plant.wait_registered(ABC, count=2)
    assert [w.state for w in plant.status().workers] == ["running"] * 3


def test_a_new_supervisor_stops_orphans_of_a_killed_one(plant: Plant) -> None:
    old = plant.worker_processes()
    assert plant.proc is not None
    plant.proc.kill()
    plant.proc.wait(5)
    plant.start()  # at once: the orphans are still serving
    plant.wait_registered(ABC, count=2)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in old)
    assert "orphaned worker" in plant.log()
    wait_until(lambda: all(w.registered for w in plant.status().workers), what="registered")


def test_second_supervisor_on_the_same_runtime_dir_is_refused(plant: Plant) -> None:
    second = subprocess.run(plant.command(), cwd=REPO, capture_output=True, text=True, timeout=10)
    assert second.returncode != 0
    assert "another supervisor" in second.stderr
    assert plant.status().workers[0].state == "running"


def test_invalid_config_at_start_prints_every_error_and_exits() -> None:
    rig = Plant({"periodicUpdateInterval": "soon", "configList": [{"rdmaHcaMax": -1}]})
    try:
        out = subprocess.run(rig.command(), cwd=REPO, capture_output=True, text=True, timeout=10)
        assert out.returncode == exitcodes.CONFIG_INVALID
        assert "periodicUpdateInterval" in out.stderr
        assert "resourceName" in out.stderr and "rdmaHcaMax" in out.stderr
        assert not rig.runtime_dir.exists()
    finally:
        rig.close()


def test_worker_that_cannot_serve_its_config_waits_in_fatal() -> None:
    config = three_resources(interval=1)  # periodic scans: the clock this test waits on
    config["configList"][2]["resourceName"] = "9c"  # valid for the kubelet, not as a CDI kind
    rig = Plant(config, use_cdi=True, log_level="debug")
    try:
        rig.start()
        rig.wait_registered(["a", "b"])
        row = rig.wait_state("9c", "fatal")
        assert row.pid == 0 and "config invalid" in row.reason
        starts = rig.log().count("worker started resource=example.com/9c")
        assert starts == 1
        # No restart loop: still one start two periodic scans (over a second) later...
        scans = _periodic_scans(rig)
        wait_until(lambda: _periodic_scans(rig) >= scans + 2, timeout=5, what="two more scans")
        assert rig.log().count("worker started resource=example.com/9c") == 1
        assert rig.worker("9c").state == "fatal"
        # ...until its config changes.
        config["configList"][2]["rdmaHcaMax"] = 2
        rig.write_config(config)
        wait_until(
            lambda: rig.log().count("worker started resource=example.com/9c") == 2,
            what="a new start after the config change",
        )
        rig.wait_state("9c", "fatal")
        assert rig.worker("a").state == "running" and rig.worker("a").restarts == 0
    finally:
        rig.close()


def test_hung_worker_is_killed_and_replaced(plant: Plant) -> None:
    pid = plant.worker("c").pid
    os.kill(pid, signal.SIGSTOP)  # alive, but silent
    try:
        plant.wait_registered(["c"], count=2, timeout=12)
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    row = wait_until(lambda: plant.worker("c").state == "running" and plant.worker("c"))
    assert row.pid != pid and row.restarts == 1
    assert "hung" in plant.log() or "silent" in plant.log()
    assert plant.worker("a").restarts == 0


def test_auto_mode_uses_the_plugin_watcher_when_its_folder_exists() -> None:
    rig = Plant(three_resources(), mode="auto")
    try:
        rig.start()
        rig.wait_registered(ABC)

        def all_registered() -> tuple[WorkerStatus, ...]:
            workers = rig.status().workers
            return workers if all(w.registered for w in workers) else ()

        rows = wait_until(all_registered, what="every worker registered")
        assert {w.mode for w in rows} == {"watcher"}
        assert sorted(p.name for p in (rig.root / "registry").iterdir()) == [
            "a.sock",
            "b.sock",
            "c.sock",
        ]
        code, _ = rig.terminate()
        assert code == 0 and list((rig.root / "registry").iterdir()) == []
    finally:
        rig.close()


@pytest.mark.parametrize("plant", [{"rig": {"use_cdi": True}}], indirect=True)
def test_a_stuck_worker_is_killed_within_the_stop_budget_and_cleaned_up(plant: Plant) -> None:
    wait_until(lambda: len(list(plant.cdi_dir.glob("*.json"))) == 3, what="3 CDI specs")
    stuck = plant.worker("b").pid
    os.kill(stuck, signal.SIGSTOP)  # ignores the stop message and SIGTERM alike
    code, took = plant.terminate()
    assert code == 0
    assert 3.0 < took < 5.0  # it waited for the SIGKILL step, and no longer than the budget
    assert "SIGKILL" in plant.log()
    assert plant.sockets() == []  # b's socket removed by the supervisor
    assert list(plant.cdi_dir.glob("*.json")) == []  # and its CDI spec
    assert plant.worker_processes() == []


def _snapshots(rig: Plant) -> dict[str, int]:
    return {n: len(rig.kubelet.snapshots(full(n))) for n in ABC}


def test_a_reload_leaves_unchanged_resources_alone(plant: Plant) -> None:
    pids, streams, snapshots = _pids(plant), _streams(plant), _snapshots(plant)
    config = three_resources()
    config["configList"][1]["rdmaHcaMax"] = 2  # b changes; a and c do not
    plant.write_config(config)
    plant.kubelet.wait_for_devices(full("b"), lambda ds: len(ds) == 2)
    config["configList"][2]["rdmaHcaMax"] = 3  # then c; a still not
    plant.write_config(config)
    plant.kubelet.wait_for_devices(full("c"), lambda ds: len(ds) == 3)
    assert _pids(plant) == pids  # a changed rdmaHcaMax needs no new process either
    assert _streams(plant) == streams
    # a got no new snapshot through either reload (b and c got one each, then the next).
    assert len(plant.kubelet.snapshots(full("a"))) == snapshots["a"]
    assert plant.registrations("a") == 1


def test_a_selector_change_keeps_the_process_and_sends_the_new_device_set(plant: Plant) -> None:
    pids = _pids(plant)
    before = plant.kubelet.devices(full("a")) or []
    assert {d.numa_nodes for d in before} == {(0,)}  # mlx5_0 and mlx5_1 sit on NUMA node 0
    config = three_resources()
    config["configList"][0]["selectors"] = {"rdmaDevices": ["mlx5_2"]}  # on NUMA node 1
    plant.write_config(config)
    plant.kubelet.wait_for_devices(
        full("a"), lambda ds: len(ds) == 4 and {d.numa_nodes for d in ds} == {(1,)}
    )
    wait_until(lambda: plant.worker("a").devices == 1, what="a down to one HCA in the status")
    assert _pids(plant) == pids
    assert plant.registrations("a") == 1


@pytest.mark.parametrize("plant", [{"rig": {"use_cdi": True}}], indirect=True)
def test_removing_a_resource_removes_its_cdi_spec(plant: Plant) -> None:
    def kinds() -> set[str]:
        found = set()
        for path in plant.cdi_dir.glob("*.json"):
            found.add(json.loads(path.read_text())["kind"])
        return found

    wait_until(lambda: kinds() == {full(n) for n in ABC}, what="3 CDI specs")
    config = three_resources()
    del config["configList"][2]
    plant.write_config(config)
    wait_until(lambda: not plant.has_worker("c"), what="c leaves the worker table")
    assert kinds() == {full("a"), full("b")}
    assert plant.sockets() == ["a.sock", "b.sock"]
