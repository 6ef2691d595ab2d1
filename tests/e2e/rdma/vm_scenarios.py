"""The scenarios of `make e2e-rdma`, run inside the soft-RoCE VM against its real kernel.

Started by vm_session.sh (root, rxe0 on eth0 and rxe1 on eth1 already made). Each scenario is
recorded in `<out>/results.json` as ok or failed with a detail; the host's tests
(test_soft_roce_vm.py) assert on them. The plugin runs as `rdma-shared-dp run` against the kubelet
simulator; containers are made by runc from bundles built from our `Allocate` answer and CDI spec.
Nothing here sleeps to synchronise: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.devices import Candidate
from common.discovery import scan
from simulator.kubelet import AdvertisedDevice, KubeletSimulator

WORK = Path("/run/rdma-e2e")
RESOURCE_A = "rdma/rxe_a"  # rxe0: traffic
RESOURCE_B = "rdma/rxe_b"  # rxe1: device changes
METRICS = "127.0.0.1:9478"
HCA_MAX = 4
#: Kernel objects copied into the fixture, relative to /sys (links kept as links).
CAPTURE_ROOTS = (
    "class/infiniband/rxe0",
    "class/infiniband/rxe1",
    "class/net/eth0",
    "class/net/eth1",
    "class/infiniband_verbs",
    "class/infiniband_mad",
    "class/infiniband_cm",
    "module/ib_core/parameters",
)
ROOTS = frozenset(CAPTURE_ROOTS)
#: Folders left out of the capture: large, or nothing discovery reads.
CAPTURE_SKIP = {
    "power", "queues", "statistics", "hw_counters", "counters", "msi_irqs", "subsystem",
    "firmware_node", "config", "rom", "remove", "rescan", "reset",
}  # fmt: skip
CAPTURE_SKIP_PREFIXES = ("resource",)
CAPTURE_GIDS = 4


class Results:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict[str, Any] = {"scenarios": {}, "figures": {}, "kernel": os.uname().release}

    @contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        print(f"rdma-vm: scenario {name} ...", flush=True)
        try:
            yield
        except Exception as err:  # a failed scenario is a result, not the end of the run
            detail = f"{type(err).__name__}: {err}"
            self.data["scenarios"][name] = {"ok": False, "detail": detail}
            traceback.print_exc()
        else:
            self.data["scenarios"][name] = {"ok": True, "detail": ""}
        took = time.monotonic() - start
        self.data["scenarios"][name]["seconds"] = round(took, 2)
        print(f"rdma-vm: scenario {name}: {self.data['scenarios'][name]}", flush=True)
        self.save()

    def save(self) -> None:
        tmp = self.out / ".results.json"
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.out / "results.json")


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout}s")
        time.sleep(0.02)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def must(*args: str, timeout: float = 60) -> str:
    done = run(*args, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: rc={done.returncode} {done.stderr.strip()}")
    return done.stdout


# -- capture ----------------------------------------------------------------------------------


def capture(dest: Path) -> None:
    """Copy what discovery reads of the rxe devices, their netdevs and the network PCI functions
    into `dest/sys` (links as links, attributes as text) and `/dev/infiniband`'s numbers into
    `dest/dev`. Only the roots' own links and `device` links are followed: sysfs links reach
    the whole machine otherwise."""
    seen: set[str] = set()
    for rel in CAPTURE_ROOTS:
        _copy("/sys", rel, dest / "sys", seen, follow=True)
    for bdf in sorted(os.listdir("/sys/bus/pci/devices")):
        rel = f"bus/pci/devices/{bdf}"
        pci_class = Path(f"/sys/{rel}/class").read_text()
        _copy("/sys", rel, dest / "sys", seen, follow=pci_class.startswith("0x02"))
        # Discovery reads every function's class: keep it for the others too.
        own = dest / "sys" / os.path.relpath(os.path.realpath(f"/sys/{rel}"), "/sys")
        own.mkdir(parents=True, exist_ok=True)
        (own / "class").write_text(pci_class)
    (dest / "dev/infiniband").mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir("/dev/infiniband")):
        st = os.stat(f"/dev/infiniband/{name}")
        numbers = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}\n"
        (dest / "dev/infiniband" / name).write_text(numbers)


def _copy(src_root: str, rel: str, dest_root: Path, seen: set[str], *, follow: bool) -> None:
    if rel in seen:
        return
    seen.add(rel)
    path = os.path.join(src_root, rel)
    target = dest_root / rel
    name = os.path.basename(rel)
    if os.path.islink(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(target):
            os.symlink(os.readlink(path), target)
        resolved = os.path.relpath(os.path.realpath(path), src_root)
        if (follow or name == "device") and not resolved.startswith(".."):
            _copy(src_root, resolved, dest_root, seen, follow=False)
        return
    if os.path.isdir(path):
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(os.listdir(path)):
            if entry in CAPTURE_SKIP or entry.startswith(CAPTURE_SKIP_PREFIXES):
                continue
            if _gid_beyond(rel, entry):
                continue
            # The entries of a class or bus folder are links to the devices: follow them.
            _copy(src_root, f"{rel}/{entry}", dest_root, seen, follow=follow and rel in ROOTS)
        return
    try:
        with open(path, "rb") as f:
            data = f.read(65536)
    except OSError:
        return  # write-only or unreadable attributes (uevent triggers, resets)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _gid_beyond(rel: str, entry: str) -> bool:
    # A GID table has 1024 entries (and as many ndevs and types): keep the first few.
    last = rel.rsplit("/", 1)[-1]
    return last in ("gids", "ndevs", "types") and entry.isdigit() and int(entry) >= CAPTURE_GIDS


# -- the plugin ---------------------------------------------------------------------------------


class Plugin:
    def __init__(self, *, use_cdi: bool) -> None:
        for sub in ("dp", "cdi", "rt"):
            shutil.rmtree(WORK / sub, ignore_errors=True)
        self.dp = WORK / "dp"
        self.cdi = WORK / "cdi"
        self.dp.mkdir(parents=True)
        config = {
            "periodicUpdateInterval": 1,
            "configList": [
                {
                    "resourceName": "rxe_a",
                    "rdmaHcaMax": HCA_MAX,
                    "selectors": {"rdmaDevices": ["rxe0"], "vendors": ["1af4"]},
                },
                {
                    "resourceName": "rxe_b",
                    "rdmaHcaMax": HCA_MAX,
                    "selectors": {"ifNames": ["eth1"]},
                },
            ],
        }
        self.config = WORK / "config.json"
        self.config.write_text(json.dumps(config))
        self.kubelet = KubeletSimulator(self.dp)
        self.kubelet.start()
        self.log_path = WORK / ("plugin-cdi.log" if use_cdi else "plugin.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "run", "--config-file", str(self.config),
             "--device-plugin-dir", str(self.dp), "--cdi-dir", str(self.cdi),
             *(["--use-cdi"] if use_cdi else []),
             "--runtime-dir", str(WORK / "rt"), "--metrics-address", METRICS,
             "--registration-mode", "classic", "--log-level", "info"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def healthy(self, resource: str) -> Callable[[list[AdvertisedDevice]], bool]:
        return lambda ds: len(ds) == HCA_MAX and all(d.health == "Healthy" for d in ds)

    def wait_healthy(self, resource: str, timeout: float) -> None:
        self.kubelet.wait_for_registration(resource, timeout=timeout)
        self.kubelet.wait_for_devices(resource, self.healthy(resource), timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{METRICS}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """Stop it; its exit status (None when it had to be killed)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
        self.kubelet.stop()
        self.log.close()
        return rc


# -- containers ---------------------------------------------------------------------------------


def bundle(
    name: str, args: list[str], nodes: list[dict[str, Any]], cgroup: str | None = None
) -> Path:
    """An OCI bundle: the VM's /usr and /etc read-only, host network, the given device nodes
    (path, major, minor) and a device cgroup that allows only them."""
    path = WORK / "bundles" / name
    rootfs = path / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        if not os.path.lexists(rootfs / link):
            os.symlink(f"usr/{link}", rootfs / link)
    ro = ["rbind", "ro"]
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "cwd": "/",
            "env": ["PATH=/usr/bin:/usr/sbin"],
            "rlimits": [{"type": "RLIMIT_MEMLOCK", "hard": 2**63 - 1, "soft": 2**63 - 1}],
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ro},
            {"destination": "/etc", "type": "bind", "source": "/etc", "options": ro},
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
            "cgroupsPath": cgroup or f"/rdma-e2e/{name}",
            "devices": [
                {
                    "path": n["path"],
                    "type": "c",
                    "major": n["major"],
                    "minor": n["minor"],
                    "fileMode": 0o666,
                    "uid": 0,
                    "gid": 0,
                }
                for n in nodes
            ],
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    *(
                        {
                            "allow": True,
                            "type": "c",
                            "major": n["major"],
                            "minor": n["minor"],
                            "access": "rwm",
                        }
                        for n in nodes
                    ),
                ]
            },
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def nodes_from_allocate(paths: list[str]) -> list[dict[str, Any]]:
    """Device nodes for the DeviceSpecs' host paths, with the host's real numbers."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": p, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev)})
    return out


def nodes_from_cdi(spec: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """The device nodes a CDI-aware runtime would add for `device`: its edits and the spec's."""
    edits = [d["containerEdits"] for d in spec["devices"] if d["name"] == device]
    edits.append(spec.get("containerEdits", {}))
    out = []
    for e in edits:
        for n in e.get("deviceNodes", []):
            if "major" not in n:  # the runtime reads them from the host node
                st = os.stat(n["path"])
                n = {**n, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev)}
            out.append({"path": n["path"], "major": n["major"], "minor": n["minor"]})
    return out


def runc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run("runc", "--root", str(WORK / "runc"), *args, timeout=timeout)


def start_container(name: str, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["runc", "--root", str(WORK / "runc"), "run", "--bundle", str(path), name],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def container_state(name: str) -> str:
    done = runc("state", name, timeout=30)
    return json.loads(done.stdout)["status"] if done.returncode == 0 else "gone"


BW = re.compile(r"^\s*\d+\s+\d+\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s*$", re.M)


def write_bw(
    nodes_server: list[dict[str, Any]], nodes_client: list[dict[str, Any]], tag: str
) -> float:
    """ib_write_bw between two containers over rxe0; the average bandwidth in MB/s."""
    # Duration mode (-D): under emulation an iteration count can finish within the timer's
    # resolution and report 0.00 MB/s; two seconds of traffic always measure.
    common = ["ib_write_bw", "-d", "rxe0", "-x", "1", "-s", "65536", "-D", "2", "-F", "-p"]
    port = "18515" if tag == "deviceplugin" else "18516"
    server = start_container(f"srv-{tag}", bundle(f"srv-{tag}", [*common, port], nodes_server))
    try:
        wait_until(lambda: _listening(int(port)), 120, "ib_write_bw server listening")
        client_bundle = bundle(f"cli-{tag}", [*common, port, "127.0.0.1"], nodes_client)
        client = runc("run", "--bundle", str(client_bundle), f"cli-{tag}", timeout=300)
        out, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    if client.returncode != 0:
        raise RuntimeError(
            f"client rc={client.returncode}: {client.stdout[-800:]}{client.stderr[-400:]}"
        )
    match = BW.search(client.stdout)
    if match is None or float(match.group(1)) <= 0:
        shown = f"{client.stdout[-800:]} / server: {out[-400:]}"
        raise RuntimeError(f"no bandwidth above 0 in: {shown}")
    return float(match.group(1))


def _listening(port: int) -> bool:
    with open("/proc/net/tcp") as f4, open("/proc/net/tcp6") as f6:
        text = f4.read() + f6.read()
    return (
        f":{port:04X} 00000000:0000 0A" in text
        or f":{port:04X} 00000000000000000000000000000000:0000 0A" in text
    )


# -- the run ------------------------------------------------------------------------------------


def main(out: Path) -> int:
    res = Results(out)
    WORK.mkdir(parents=True, exist_ok=True)
    with res.scenario("capture"):
        # Written to tmpfs, then moved out as one archive: thousands of small 9p writes are slow.
        dest = WORK / "capture"
        shutil.rmtree(dest, ignore_errors=True)
        capture(dest)
        (dest / "KERNEL").write_text(os.uname().release + "\n")
        must("tar", "-C", str(WORK), "-cf", str(out / "capture.tar"), "capture")

    with res.scenario("discovery"):
        found = {c.name: c for c in scan("/").candidates}
        res.data["figures"]["devices"] = len([c for c in found.values() if c.software])
        check_discovery(found)

    for use_cdi, steps in ((False, device_spec_scenarios), (True, cdi_scenarios)):
        plugin = Plugin(use_cdi=use_cdi)
        try:
            steps(res, plugin)
        finally:
            rc = plugin.stop()
            key = "plugin_cdi" if use_cdi else "plugin"
            res.data[f"{key}_log_tail"] = plugin.log_text()[-4000:]
            res.data[f"{key}_exit"] = rc
            res.save()
    failed = [n for n, s in res.data["scenarios"].items() if not s["ok"]]
    return 1 if failed else 0


def check_discovery(found: dict[str, Candidate]) -> None:
    for name, netdev in (("rxe0", "eth0"), ("rxe1", "eth1")):
        c = found[name]
        assert (c.kind, c.software, c.if_name) == ("software", "rxe", netdev), c
        assert (c.vendor, c.device_id, c.driver) == ("1af4", "1000", "virtio-pci"), c
        assert c.usable and c.healthy, c
        for char in c.char_devices:
            st = os.stat(char.path)
            assert (char.major, char.minor) == (os.major(st.st_rdev), os.minor(st.st_rdev)), char


def device_spec_scenarios(res: Results, plugin: Plugin) -> None:
    """The plugin without CDI: DeviceSpecs in Allocate, containers built from them."""
    allocated: list[str] = []
    with res.scenario("registration_allocate"):
        plugin.wait_healthy(RESOURCE_A, 180)
        plugin.wait_healthy(RESOURCE_B, 60)
        reply = plugin.kubelet.allocate(RESOURCE_A, [["0"]], timeout=30).container_responses[0]
        paths = [d.host_path for d in reply.devices]
        assert [d.container_path for d in reply.devices] == paths, reply
        want = ["/dev/infiniband/uverbs0", "/dev/infiniband/umad0", "/dev/infiniband/issm0",
                "/dev/infiniband/rdma_cm"]  # fmt: skip
        assert sorted(paths) == sorted(want), paths
        allocated = paths

    with res.scenario("traffic"):
        nodes = nodes_from_allocate(allocated)
        bw = write_bw(nodes, nodes, "deviceplugin")
        res.data["figures"]["ib_write_bw_mb_s"] = bw
        assert bw > 0

    with res.scenario("traffic_without_our_devices_fails"):
        args = ["ib_write_bw", "-d", "rxe0", "-x", "1"]
        done = runc("run", "--bundle", str(bundle("nodev", args, [])), "nodev")
        text = done.stdout + done.stderr
        assert done.returncode != 0, text
        res.data["figures"]["without_devices"] = (text.strip().splitlines() or [""])[-1].strip()


def cdi_scenarios(res: Results, plugin: Plugin) -> None:
    """The plugin with --use-cdi: containers built from its CDI spec, then device changes."""
    with res.scenario("cdi_allocate_traffic"):
        plugin.wait_healthy(RESOURCE_A, 180)
        plugin.wait_healthy(RESOURCE_B, 60)
        reply = plugin.kubelet.allocate(RESOURCE_A, [["1"]], timeout=30).container_responses[0]
        cdi_names = [d.name for d in reply.cdi_devices]
        assert len(cdi_names) == 1 and not reply.devices, reply
        kind, _, device = cdi_names[0].partition("=")
        spec = next(
            json.loads(f.read_text()) for f in plugin.cdi.iterdir() if f.suffix == ".json"
            and json.loads(f.read_text())["kind"] == kind
        )  # fmt: skip
        nodes = nodes_from_cdi(spec, device)
        for n in nodes:
            st = os.stat(n["path"])
            assert (n["major"], n["minor"]) == (os.major(st.st_rdev), os.minor(st.st_rdev)), n
        assert [n["path"] for n in nodes].count("/dev/infiniband/rdma_cm") == 1, nodes
        bw = write_bw(nodes, nodes, "cdi")
        res.data["figures"]["ib_write_bw_cdi_mb_s"] = bw
        assert bw > 0
    with res.scenario("rdma_cgroup_usage"):
        rdma_cgroup_usage(res, plugin, nodes)
    device_changes(res, plugin)

    with res.scenario("netns_exclusive"):
        must("rdma", "system", "set", "netns", "exclusive")
        try:
            wait_until(
                lambda: "exclusive network-namespace mode" in plugin.log_text(), 30, "warning"
            )
            _, metrics = plugin.http("/metrics")
            assert "rdma_shared_dp_rdma_netns_exclusive 1.0" in metrics, "metric not 1"
            _, ready = plugin.http("/readyz")
            assert "exclusive" in ready, ready
            status = run(
                sys.executable, "-m", "supervisor", "status", "--runtime-dir", str(WORK / "rt")
            )
            assert "exclusive" in status.stdout + status.stderr, status.stdout
        finally:
            must("rdma", "system", "set", "netns", "shared")
        wait_until(
            lambda: "again: devices can be shared" in plugin.log_text(), 30, "back to shared"
        )
        _, metrics = plugin.http("/metrics")
        assert "rdma_shared_dp_rdma_netns_exclusive 0.0" in metrics, "metric not back to 0"
        assert plugin.alive()


def device_changes(res: Results, plugin: Plugin) -> None:
    uevents = UeventListener()
    from_command: list[float] = []
    from_uevent: list[float] = []

    def change(args: list[str], pred: Callable[[list[AdvertisedDevice]], bool]) -> None:
        mark = uevents.mark()
        start = time.monotonic()
        must(*args, timeout=60)
        plugin.kubelet.wait_for_devices(RESOURCE_B, pred, timeout=30)
        seen = time.monotonic()
        from_command.append(seen - start)
        first = uevents.first_after(mark)
        if first is not None:
            from_uevent.append(seen - first)

    gone = lambda ds: all(d.health != "Healthy" for d in ds)  # noqa: E731
    healthy = plugin.healthy(RESOURCE_B)
    with res.scenario("rdma_link_delete_add"):
        change(["rdma", "link", "delete", "rxe1"], gone)
        change(["rdma", "link", "add", "rxe1", "type", "rxe", "netdev", "eth1"], healthy)
        plugin.kubelet.wait_for_devices(RESOURCE_A, plugin.healthy(RESOURCE_A), timeout=5)
        assert plugin.alive()

    with res.scenario("netdev_down_up"):
        change(["ip", "link", "set", "eth1", "down"], gone)
        change(["ip", "link", "set", "eth1", "up"], healthy)
        assert plugin.alive()

    with res.scenario("netdev_renamed"):
        # rxe_b selects ifNames [eth1]: renamed, rxe1 follows its netdev's new name (the
        # kernel's `parent` does) and leaves the resource; named back, it returns.
        must("ip", "link", "set", "eth1", "down")
        must("ip", "link", "set", "eth1", "name", "lan1")
        plugin.kubelet.wait_for_devices(RESOURCE_B, lambda ds: not ds, timeout=30)
        renamed = {c.name: c for c in scan("/").candidates}["rxe1"]
        assert renamed.if_name == "lan1", renamed
        must("ip", "link", "set", "lan1", "name", "eth1")
        change(["ip", "link", "set", "eth1", "up"], healthy)
        assert plugin.alive()

    with res.scenario("delete_while_allocated"):
        held_by_container(res, plugin, change, gone, healthy)
    uevents.close()
    figures = res.data["figures"]
    for key, values in (("uevent_latency_s", from_uevent), ("command_latency_s", from_command)):
        if values:
            ordered = sorted(values)
            figures[key] = {
                "max": round(ordered[-1], 3),
                "median": round(ordered[len(ordered) // 2], 3),
            }


def held_by_container(
    res: Results,
    plugin: Plugin,
    change: Callable[[list[str], Callable[[list[AdvertisedDevice]], bool]], None],
    gone: Callable[[list[AdvertisedDevice]], bool],
    healthy: Callable[[list[AdvertisedDevice]], bool],
) -> None:
    """`rdma link delete rxe1` while a container holds rxe1 open (an ib_write_bw server waiting
    for its client). The kernel's unregister waits for user contexts rxe cannot disassociate,
    so the delete may block until the holder exits: both outcomes are recorded; the holder must
    be left running by us and the plugin must not crash."""
    reply = plugin.kubelet.allocate(RESOURCE_B, [["2"]], timeout=30).container_responses[0]
    kind, _, device = reply.cdi_devices[0].name.partition("=")
    spec = next(
        json.loads(f.read_text()) for f in plugin.cdi.iterdir() if f.suffix == ".json"
        and json.loads(f.read_text())["kind"] == kind
    )  # fmt: skip
    args = ["ib_write_bw", "-d", "rxe1", "-x", "1", "-p", "18517"]
    holder = start_container("holder", bundle("holder", args, nodes_from_cdi(spec, device)))
    try:
        wait_until(lambda: _listening(18517), 120, "holder listening on rxe1")
        deleting = subprocess.Popen(["rdma", "link", "delete", "rxe1"])
        try:
            deleting.wait(15)
            blocked = False
        except subprocess.TimeoutExpired:
            blocked = True
        res.data["figures"]["delete_waits_for_holder"] = blocked
        assert container_state("holder") == "running" or not blocked, "holder gone"
        held_running = container_state("holder") == "running"
        res.data["figures"]["holder_running_after_delete"] = held_running
    finally:
        runc("kill", "holder", "KILL", timeout=30)
        holder.wait(60)
        runc("delete", "--force", "holder", timeout=30)
    deleting.wait(60)
    plugin.kubelet.wait_for_devices(RESOURCE_B, gone, timeout=30)
    assert plugin.alive(), "the plugin died"
    change(["rdma", "link", "add", "rxe1", "type", "rxe", "netdev", "eth1"], healthy)


POD_UID = "0a1b2c3d-0000-4000-8000-00000000e2e0"


def rdma_cgroup_usage(res: Results, plugin: Plugin, nodes: list[dict[str, Any]]) -> None:
    """A container in a pod cgroup laid out as the kubelet's cgroupfs driver does, holding rxe0
    open; the kubelet's checkpoint (written here: the simulator keeps none) names the pod. The
    rdma controller's real counters must show its handle and objects, and the limit set on the
    pod's cgroup."""
    from supervisor.rdma_cgroup import pod_usage

    cg = Path("/sys/fs/cgroup")
    for folder in (cg, cg / "kubepods", cg / "kubepods/besteffort"):
        folder.mkdir(exist_ok=True)
        (folder / "cgroup.subtree_control").write_text("+rdma")
    pod = cg / f"kubepods/besteffort/pod{POD_UID}"
    pod.mkdir(exist_ok=True)
    (pod / "rdma.max").write_text("rxe0 hca_handle=4 hca_object=1000\n")
    entry = {"PodUID": POD_UID, "ContainerName": "c", "ResourceName": RESOURCE_A,
             "DeviceIDs": {"-1": ["1"]}}  # fmt: skip
    checkpoint = {"Data": {"PodDeviceEntries": [entry], "RegisteredDevices": {}}, "Checksum": 0}
    (plugin.dp / "kubelet_internal_checkpoint").write_text(json.dumps(checkpoint))
    # ibv_rc_pingpong makes its PD, MR, CQ and QP before it waits for a peer (ib_write_bw's
    # server waits first and holds only its context: hca_handle=1, hca_object=0).
    args = ["ibv_rc_pingpong", "-d", "rxe0", "-g", "1", "-p", "18518"]
    cgroup = f"/kubepods/besteffort/pod{POD_UID}/ctr"
    holder = start_container("podctr", bundle("podctr", args, nodes, cgroup=cgroup))
    try:
        wait_until(lambda: _listening(18518), 120, "pod container listening on rxe0")
        served = {RESOURCE_A: {"rxe0"}, RESOURCE_B: {"rxe1"}}
        rows = pod_usage("/", str(plugin.dp), served)
        res.data["figures"]["pod_rdma_current"] = (pod / "rdma.current").read_text()
        res.data["figures"]["pod_rdma_usage"] = [r.__dict__ for r in rows]
        [row] = rows
        assert (row.pod_uid, row.resource, row.device) == (POD_UID, RESOURCE_A, "rxe0"), row
        assert row.hca_handle == 1 and row.hca_object >= 4, row
        assert (row.max_hca_handle, row.max_hca_object) == (4, 1000), row
        # The same through the plugin's own /metrics (read on each scrape).
        _, metrics = plugin.http("/metrics")
        mine = [line for line in metrics.splitlines() if POD_UID in line]
        assert any(line.startswith("rdma_shared_dp_pod_rdma_usage{") for line in mine), mine
        assert any(line.startswith("rdma_shared_dp_pod_rdma_limit{") for line in mine), mine
        res.data["figures"]["pod_rdma_metric_lines"] = mine
    finally:
        runc("kill", "podctr", "KILL", timeout=30)
        holder.wait(60)
        runc("delete", "--force", "podctr", timeout=30)
    # The pod ended: its counters drop back (the kernel uncharges on close).
    wait_until(lambda: "hca_handle=0" in (pod / "rdma.current").read_text(), 30, "uncharge")


class UeventListener:
    """Kernel uevents (NETLINK_KOBJECT_UEVENT) with their arrival times, read by a thread."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
        self.sock.bind((0, 1))
        self.times: list[float] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
            except OSError:
                return
            self.times.append(time.monotonic())

    def mark(self) -> int:
        return len(self.times)

    def first_after(self, mark: int) -> float | None:
        return self.times[mark] if len(self.times) > mark else None

    def close(self) -> None:
        self.sock.close()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
