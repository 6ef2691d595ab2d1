"""Harness of the real-kubelet suite (test process): containerd, an upstream kubelet and the plugin.

Everything runs on this machine as root, from one temp folder per node, and is started and
stopped by pid. `Node.close()` leaves nothing behind: pods are stopped through the kubelet, then
tasks and shims, then containerd; the mounts under the folder (and the kubelet's bind mount of
its root onto itself) are unmounted, the cgroups the pods got are removed, and so are the
`/dev/infiniband` nodes made for the simulated devices.

The facts this is built on (seen on this VM): containerd 1.6 needs `restrict_oom_score_adj`; no
image registry is reachable, so a static busybox is packed as an OCI archive and imported with
`ctr`; the kubelet runs standalone from static pod manifests (no API server), and its read-only
port serves the pods with their status.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psutil

from simulator.sysfs import SysfsTree, connectx_ib
from tests.conditions import wait_until

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("E2E_CACHE", "/var/cache/rdma-shared-dp-e2e"))
IMAGE = "rdma-e2e.local/busybox:1"
PREFIX = "rdma.e2e"
NODE_NAME = "e2e-node"
#: The device manager's folder is a constant in the kubelet: it does not follow --root-dir.
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOGS_DIR = Path("/var/log/containers")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    message: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> Any:
    """wait_until, with a message computed when it fails (logs of the processes involved)."""
    try:
        return wait_until(predicate, timeout=timeout, interval=interval)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{message() if message else ''}") from None


def _versions_file() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (Path(__file__).parent / "versions.env").read_text().splitlines():
        m = re.fullmatch(r'\s*([A-Z0-9_]+)="?([^"]*)"?\s*', line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def kubelet_versions() -> list[str]:
    return _versions_file()["KUBELET_VERSIONS"].split()


def containerd2_version() -> str:
    return _versions_file()["CONTAINERD2_VERSION"]


def kubelet_binary(version: str) -> Path:
    return CACHE / f"kubelet-{version}"


def containerd2_dir() -> Path:
    return CACHE / f"containerd-{containerd2_version()}"


def missing_capability() -> str | None:
    """Why this machine cannot run the suite, or None. Each reason names what is missing."""
    if os.geteuid() != 0:
        return "needs root (containerd, kubelet, mknod, mounts)"
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (bash .ci/install-kubelet-e2e.sh installs it)"
    if not Path("/usr/share/doc/busybox-static").exists() or not Path("/bin/busybox").exists():
        return "busybox-static not installed (bash .ci/install-kubelet-e2e.sh installs it)"
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        return "no cgroup filesystem at /sys/fs/cgroup"
    probe = Path("/dev") / f".rdma-e2e-probe-{os.getpid()}"
    try:
        os.mknod(probe, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError as exc:
        return f"cannot make char device nodes under /dev ({exc.strerror})"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- image ----------------------------------------------------------------------------------------


def build_image_archive(dest: Path) -> Path:
    """An OCI archive of one layer: Debian's static busybox and its applet links."""
    busybox = Path("/bin/busybox").read_bytes()
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "out"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(busybox), 0o755
        tar.addfile(info, io.BytesIO(busybox))
        for name in applets:
            if name == "busybox" or "/" in name:
                continue
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    layer_bytes = layer.getvalue()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest, len(data)

    layer_digest, layer_size = blob(layer_bytes)
    # The sandbox ("pause") runs the image's own command: wait for a signal and exit on TERM.
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": [
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
            ],
            "Env": ["PATH=/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {
                    "io.containerd.image.name": IMAGE,
                    "org.opencontainers.image.ref.name": IMAGE.rsplit(":", 1)[1],
                },
            }
        ],
    }
    with tarfile.open(dest, "w") as tar:

        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        put("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        put("index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            put(f"blobs/sha256/{digest.split(':', 1)[1]}", data)
    return dest


# -- processes ------------------------------------------------------------------------------------


def _stop_pid(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


class Containerd:
    """One containerd on private sockets and folders under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        v2: bool = False,
        cdi_dir: Path | None = None,
        network_ready: bool = False,
    ) -> None:
        self.dir = workdir
        self.v2 = v2
        self.cdi_dir = cdi_dir
        #: A CNI network config (never used: pods are hostNetwork) makes the CRI report the
        #: network ready, which a kubelet registered with an API server needs for a Ready node.
        self.network_ready = network_ready
        self.address = workdir / "c.sock"
        self.binary = containerd2_dir() / "containerd" if v2 else Path("/usr/bin/containerd")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "containerd.log"

    def _config(self) -> str:
        d = self.dir
        common = f"""
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.address}"
[ttrpc]
  address = "{self.address}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""
        if not self.v2:
            # containerd 1.6 knows no CDI: CDI names in an Allocate answer are dropped silently.
            return (
                "version = 2\n"
                + common
                + f"""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
"""
            )
        cdi = self.cdi_dir or d / "cdi"
        return (
            "version = 3\n"
            + common
            + f"""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  enable_cdi = true
  cdi_spec_dirs = ["{cdi}"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{d}/cni-bin"]
    conf_dir = "{d}/cni-conf"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        )

    def ctr(self, *args: str, check: bool = True) -> str:
        res = subprocess.run(
            ["ctr", "--address", str(self.address), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    def start(self, image_archive: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "config.toml"
        cfg.write_text(self._config())
        if self.network_ready:
            conf = self.dir / "cni-conf"
            conf.mkdir(exist_ok=True)
            (conf / "10-loopback.conflist").write_text(
                json.dumps(
                    {"cniVersion": "1.0.0", "name": "e2e", "plugins": [{"type": "loopback"}]}
                )
            )
        env = dict(os.environ)
        if self.v2:  # its own runc shim first
            env["PATH"] = f"{containerd2_dir()}:{env.get('PATH', '/usr/sbin:/usr/bin')}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(cfg)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        wait_for(
            lambda: self.address.exists() and self.ctr("version", check=False) != "",
            timeout=60,
            message=lambda: f"containerd did not start: {self.log.read_text()[-2000:]}",
        )
        self.ctr("images", "import", "--snapshotter", "overlayfs", str(image_archive))

    def _task_stopped(self, task: str) -> bool:
        return "STOPPED" in self.ctr("tasks", "ls", check=False) or task not in self.ctr(
            "tasks", "ls", "-q", check=False
        )

    def remove_all(self) -> None:
        """Kill and delete every task and container left in the k8s.io namespace."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for line in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", line, check=False)
        for line in self.ctr("tasks", "ls", "-q", check=False).split():
            with contextlib.suppress(Exception):
                wait_for(functools.partial(self._task_stopped, line), timeout=10)
            self.ctr("tasks", "delete", "-f", line, check=False)
        for line in self.ctr("containers", "ls", "-q", check=False).split():
            self.ctr("containers", "rm", line, check=False)

    def stop(self) -> None:
        if self.proc is not None:
            self.remove_all()
            _stop_pid(self.proc)
        # Shims outlive containerd; ours name our socket on their command line.
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if any(str(self.address) in a for a in cmd) and p.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    p.kill()
                    p.wait(10)


# -- kubelet --------------------------------------------------------------------------------------

_KLOG = re.compile(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6})\s+\d+ \S+\] (.*)$")


def klog_time(line: str) -> tuple[float, str] | None:
    """(Unix time, message) of one klog line; the kubelet runs with TZ=UTC."""
    m = _KLOG.match(line)
    if not m:
        return None
    month, day, hh, mm, ss, us = (int(g) for g in m.groups()[:6])
    now = datetime.now(UTC)
    when = datetime(now.year, month, day, hh, mm, ss, us, tzinfo=UTC)
    return when.timestamp(), m.group(7)


class SocketCreations:
    """Wall-clock times at which a file named `name` was created in `folder` (inotify)."""

    IN_CREATE = 0x100
    IN_MOVED_TO = 0x80

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name.encode()
        self.times: list[float] = []
        self._lock = threading.Lock()
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        folder.mkdir(parents=True, exist_ok=True)
        self._fd = libc.inotify_init1(os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if (
            libc.inotify_add_watch(
                self._fd, str(folder).encode(), self.IN_CREATE | self.IN_MOVED_TO
            )
            < 0
        ):
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self._r, self._w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while True:
            ready, _, _ = select.select([self._fd, self._r], [], [])
            if self._r in ready:
                return
            stamp = time.time()
            data = os.read(self._fd, 65536)
            off = 0
            while off < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, off)
                name = data[off + 16 : off + 16 + length].rstrip(b"\0")
                off += 16 + length
                if name == self.name:
                    with self._lock:
                        self.times.append(stamp)

    def count(self) -> int:
        with self._lock:
            return len(self.times)

    def last(self) -> float:
        with self._lock:
            return self.times[-1]

    def close(self) -> None:
        os.write(self._w, b"x")
        self._thread.join(5)
        for fd in (self._fd, self._r, self._w):
            os.close(fd)


@dataclass
class Incarnation:
    log: Path
    proc: subprocess.Popen[bytes]
    started: float
    served: float | None = None  # when kubelet.sock was created
    inode: int | None = None

    def lines(self) -> list[tuple[float, str]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            parsed = klog_time(line)
            if parsed is not None:
                out.append(parsed)
        return out

    def registrations(self) -> list[tuple[float, str]]:
        """(time, resource) of every registration the device manager completed (it logs
        "Connected to new client" once it has dialled the plugin back, in both modes)."""
        out = []
        for when, msg in self.lines():
            if msg.startswith('"Connected to new client"'):
                m = re.search(r'resource="([^"]+)"', msg)
                if m:
                    out.append((when, m.group(1)))
        return out


class Kubelet:
    """A kubelet on loopback: standalone (static pods from `manifests`, no API server), or, with
    a `kubeconfig`, registered as a Node with an API server (static pods still work)."""

    def __init__(
        self, binary: Path, workdir: Path, runtime: Containerd, kubeconfig: Path | None = None
    ) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.dir = workdir
        self.root = workdir / "root"
        self.manifests = workdir / "manifests"
        self.runtime = runtime
        self.read_only_port = free_port()
        self.port = free_port()
        self.healthz_port = free_port()
        self.incarnations: list[Incarnation] = []
        self.creations = SocketCreations(self.device_plugin_dir, "kubelet.sock")

    @property
    def device_plugin_dir(self) -> Path:
        return DEVICE_PLUGIN_DIR

    @property
    def plugins_registry_dir(self) -> Path:
        return self.root / "plugins_registry"

    @property
    def pod_resources_socket(self) -> Path:
        return self.root / "pod-resources" / "kubelet.sock"

    @property
    def checkpoint_path(self) -> Path:
        return self.device_plugin_dir / "kubelet_internal_checkpoint"

    @property
    def current(self) -> Incarnation:
        return self.incarnations[-1]

    def _config(self) -> str:
        d = self.dir
        return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {self.manifests}
fileCheckFrequency: 1s
syncFrequency: 10s
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
makeIPTablesUtilChains: false
address: 127.0.0.1
port: {self.port}
readOnlyPort: {self.read_only_port}
healthzBindAddress: 127.0.0.1
healthzPort: {self.healthz_port}
containerRuntimeEndpoint: unix://{self.runtime.address}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/volume-plugins
resolvConf: ""
shutdownGracePeriod: 0s
registerNode: {"true" if self.kubeconfig else "false"}
"""

    def start(self) -> Incarnation:
        self.manifests.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "kubelet.yaml"
        cfg.write_text(self._config())
        log = self.dir / f"kubelet-{len(self.incarnations)}.log"
        created_before = self.creations.count()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TZ": "UTC"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config={cfg}",
                    f"--root-dir={self.root}",
                    f"--cert-dir={self.dir}/pki",
                    f"--hostname-override={NODE_NAME}",
                    "--v=2",
                    *(
                        [f"--kubeconfig={self.kubeconfig}", "--node-ip=127.0.0.1"]
                        if self.kubeconfig
                        else []
                    ),
                ],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        inc = Incarnation(log=log, proc=proc, started=time.time())
        self.incarnations.append(inc)
        wait_for(
            lambda: self.creations.count() > created_before or proc.poll() is not None,
            timeout=60,
            message=lambda: f"kubelet did not serve kubelet.sock: {self.tail()}",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"kubelet exited {proc.returncode}: {self.tail()}")
        inc.served = self.creations.last()
        with contextlib.suppress(OSError):
            inc.inode = (self.device_plugin_dir / "kubelet.sock").stat().st_ino
        return inc

    def tail(self, n: int = 3000) -> str:
        if not self.incarnations:
            return ""
        return self.current.log.read_text(errors="replace")[-n:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.incarnations:
            _stop_pid(self.current.proc, sig)

    def running(self) -> bool:
        return bool(self.incarnations) and self.current.proc.poll() is None

    # -- what the kubelet says ------------------------------------------------------------------

    def pods(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.read_only_port}/pods"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return list(json.load(resp).get("items") or [])

    def pod(self, name: str) -> dict[str, Any] | None:
        full = f"{name}-{NODE_NAME}"
        with contextlib.suppress(OSError, ValueError):
            for p in self.pods():
                if p["metadata"]["name"] == full:
                    return p
        return None

    def pod_status(self, name: str) -> dict[str, Any]:
        p = self.pod(name)
        return dict(p.get("status") or {}) if p else {}

    def wait_running(self, name: str, timeout: float = 60) -> dict[str, Any]:
        def running() -> bool:
            st = self.pod_status(name)
            cs = st.get("containerStatuses") or []
            return (
                st.get("phase") == "Running"
                and bool(cs)
                and all("running" in (c.get("state") or {}) for c in cs)
            )

        wait_for(
            running,
            timeout=timeout,
            message=lambda: f"pod {name} not running: {self.pod_status(name)}\n{self.tail()}",
        )
        return self.pod_status(name)

    def checkpoint(self) -> dict[str, Any]:
        try:
            data = json.loads(self.checkpoint_path.read_text())
        except (OSError, ValueError):
            return {}
        return dict(data.get("Data") or {})

    def checkpoint_devices(self, pod_uid: str, resource: str) -> set[str]:
        ids: set[str] = set()
        for e in self.checkpoint().get("PodDeviceEntries") or []:
            if e["PodUID"] == pod_uid and e["ResourceName"] == resource:
                for numa_ids in (e.get("DeviceIDs") or {}).values():
                    ids.update(numa_ids)
        return ids

    def registered_devices(self, resource: str) -> set[str]:
        return set((self.checkpoint().get("RegisteredDevices") or {}).get(resource) or [])

    def pod_resources(self) -> list[tuple[str, str, str, list[str]]]:
        """(pod, container, resource, device IDs as listed, repeats kept) from PodResources List."""
        import grpc

        from proto.podresources.v1 import api_pb2, api_pb2_grpc

        with grpc.insecure_channel(f"unix:{self.pod_resources_socket}") as ch:
            stub = api_pb2_grpc.PodResourcesListerStub(ch)
            resp = stub.List(api_pb2.ListPodResourcesRequest(), timeout=5)
        out: dict[tuple[str, str, str], list[str]] = {}
        for pod in resp.pod_resources:
            for c in pod.containers:
                for d in c.devices:
                    out.setdefault((pod.name, c.name, d.resource_name), []).extend(d.device_ids)
        return [(p, c, r, ids) for (p, c, r), ids in out.items()]

    def write_pod(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        tmp = self.manifests / f".{name}.json"
        tmp.write_text(json.dumps(manifest))
        tmp.rename(self.manifests / f"{name}.json")

    def delete_pod(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.manifests / f"{name}.json").unlink()


def settled(kubelet: Kubelet, name: str) -> dict[str, Any]:
    """The pod's status once this kubelet has decided on it (a new kubelet says Pending first),
    or {} until then: Failed (for example rejected at admission) or Running."""
    status = kubelet.pod_status(name)
    return status if status.get("phase") not in (None, "Pending") else {}


def pod_manifest(
    name: str,
    resources: dict[str, int],
    out_dir: Path,
    *,
    command: str | None = None,
    restart: str = "Always",
) -> dict[str, Any]:
    """A static pod whose container writes its own view of /dev/infiniband to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    view = (
        "ls -ln /dev/infiniband > /out/view.tmp 2>&1; mv /out/view.tmp /out/view; "
        "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"
    )
    limits = {f"{PREFIX}/{r}": str(n) for r, n in resources.items()}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", command or view],
                    "resources": {"limits": limits, "requests": limits},
                    "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                }
            ],
            "volumes": [{"name": "out", "hostPath": {"path": str(out_dir)}}],
        },
    }


def container_view(out_dir: Path) -> dict[str, tuple[int, int]]:
    """{name: (major, minor)} of the char devices the container saw under /dev/infiniband."""
    view: dict[str, tuple[int, int]] = {}
    for line in (out_dir / "view").read_text().splitlines():
        m = re.match(r"^c\S*\s+\d+\s+\d+\s+\d+\s+(\d+),\s*(\d+)\s+.*\s(\S+)$", line)
        if m:
            view[m.group(3)] = (int(m.group(1)), int(m.group(2)))
    return view


# -- the plugin -----------------------------------------------------------------------------------


class KubeletPaths(Protocol):
    """Where a kubelet serves: `Kubelet` here, or the simulator's `KubeletSimulator`."""

    @property
    def device_plugin_dir(self) -> Path: ...
    @property
    def plugins_registry_dir(self) -> Path | None: ...
    @property
    def pod_resources_socket(self) -> Path | None: ...


class Plugin:
    """The real plugin (supervisor and workers) against the kubelet's folders."""

    def __init__(
        self,
        workdir: Path,
        host_root: Path,
        kubelet: KubeletPaths,
        mode: str,
        *,
        use_cdi: bool = False,
        cdi_dir: Path | None = None,
    ) -> None:
        self.dir = workdir
        self.host_root = host_root
        self.kubelet = kubelet
        self.mode = mode
        self.use_cdi = use_cdi
        self.cdi_dir = cdi_dir or workdir / "cdi"
        self.config_file = workdir / "config.json"
        self.runtime_dir = workdir / "run"
        self.metrics_port = free_port()
        self.log = workdir / "plugin.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Debug for the suite (the logs explain a slow restart); a benchmark uses info, what a
        #: node runs, since formatting debug lines costs each worker CPU on every restart.
        self.log_level = "debug"

    def write_config(self, resources: Sequence[dict[str, Any]]) -> None:
        entries = [{"resourcePrefix": PREFIX, **r} for r in resources]
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"periodicUpdateInterval": 300, "configList": entries}))
        tmp.rename(self.config_file)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "supervisor",
            "run",
            f"--config-file={self.config_file}",
            f"--host-root={self.host_root}",
            f"--device-plugin-dir={self.kubelet.device_plugin_dir}",
            f"--plugins-registry-dir={self.kubelet.plugins_registry_dir or self.dir / 'registry'}",
            f"--registration-mode={self.mode}",
            f"--cdi-dir={self.cdi_dir}",
            f"--runtime-dir={self.runtime_dir}",
            f"--metrics-address=127.0.0.1:{self.metrics_port}",
            f"--pod-resources-socket={self.kubelet.pod_resources_socket or ''}",
            "--uevent-source=off",
            "--pod-resources-interval=0.5",
            f"--log-level={self.log_level}",
        ]
        if self.use_cdi:
            args.append("--use-cdi")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDMA_SHARED_DP_")}
        env["PYTHONPATH"] = str(REPO)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, grace=20)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def ready(self) -> bool:
        """/readyz answers 200: every worker registered with the kubelet."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/readyz"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one series, or None (also while the endpoint does not answer)."""
        try:
            text = self.metrics()
        except OSError:
            return None
        for line in text.splitlines():
            if not line.startswith(f"rdma_shared_dp_{name}"):
                continue
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if not m or m.group(1) != f"rdma_shared_dp_{name}":
                continue
            got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
        return None

    def workers(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [
                c for c in psutil.Process(self.proc.pid).children() if "--resource" in c.cmdline()
            ]
        return []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# -- the node -------------------------------------------------------------------------------------


@dataclass
class HostDevices:
    """Real char nodes under /dev/infiniband for the simulated devices (containers need them)."""

    made: list[Path] = field(default_factory=list)
    made_dir: bool = False

    def add_from(self, tree_root: Path) -> None:
        src = tree_root / "dev" / "infiniband"
        dst = Path("/dev/infiniband")
        if not dst.exists():
            dst.mkdir(mode=0o755)
            self.made_dir = True
        for node in sorted(src.iterdir()):
            target = dst / node.name
            if target.exists() or target.is_symlink():
                continue
            st = node.stat()
            os.mknod(target, 0o666 | stat.S_IFCHR, st.st_rdev)
            self.made.append(target)

    def remove(self) -> None:
        for p in self.made:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.made.clear()
        if self.made_dir:
            with contextlib.suppress(OSError):
                Path("/dev/infiniband").rmdir()
            self.made_dir = False


#: Cgroups the kubelet and containerd make here: a container's (its 64-hex ID, under the root
#: since cgroupsPerQOS is off), and the kubelet's pod and QoS groups should they ever appear. Others
#: (a process manager's per-command groups on a shared machine) are not the node's business.
_NODE_CGROUP = re.compile(r"[0-9a-f]{64}|kubepods.*|pod[0-9a-f-]{36}.*")


def _cgroup_dirs() -> set[str]:
    out: set[str] = set()
    base = Path("/sys/fs/cgroup")
    for dirpath, dirnames, _ in os.walk(base):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if any(_NODE_CGROUP.fullmatch(part) for part in Path(path).relative_to(base).parts):
                out.add(path)
    return out


def _mounts_under(folder: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == str(folder) or mp.startswith(str(folder) + "/"):
            out.append(mp)
    return out


class Node:
    """containerd + kubelet + plugin on a simulated host tree, in one temp folder."""

    def __init__(
        self,
        workdir: Path,
        kubelet_version: str,
        image_archive: Path,
        *,
        containerd2: bool = False,
        hcas: int = 2,
        kubeconfig: Path | None = None,
    ) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cgroups_before = _cgroup_dirs()
        self.run_containerd_existed = Path("/run/containerd").exists()
        self.var_lib_kubelet_existed = DEVICE_PLUGIN_DIR.parent.exists()
        # The kubelet's container log links go to this constant folder, whatever --root-dir says.
        self.container_logs_existed = CONTAINER_LOGS_DIR.exists()
        live = DEVICE_PLUGIN_DIR / "kubelet.sock"
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(live))
            raise RuntimeError(f"a kubelet already serves {live}: this suite needs the host's")
        # A checkpoint of an earlier node would name pods this kubelet never saw.
        with contextlib.suppress(FileNotFoundError):
            (DEVICE_PLUGIN_DIR / "kubelet_internal_checkpoint").unlink()
        self.host_root = workdir / "host"
        self.tree = SysfsTree(self.host_root, mknod=True)
        for i in range(hcas):
            self.tree.add(
                connectx_ib(
                    f"0000:{0x3B + i:02x}:00.0", rdma=f"mlx5_{i}", netdev=f"ib{i}", numa_node=i % 2
                )
            )
        self.devices = HostDevices()
        self.devices.add_from(self.host_root)
        self.cdi_dir = workdir / "cdi"
        self.cdi_dir.mkdir(exist_ok=True)
        self.containerd = Containerd(
            workdir / "ctd",
            v2=containerd2,
            cdi_dir=self.cdi_dir,
            network_ready=kubeconfig is not None,
        )
        self.containerd.start(image_archive)
        self.kubelet = Kubelet(
            kubelet_binary(kubelet_version), workdir / "kubelet", self.containerd, kubeconfig
        )
        self.plugin: Plugin | None = None

    def expected_view(self) -> dict[str, tuple[int, int]]:
        """The nodes every container of the resource must see: all of the tree's, with numbers."""
        out = {}
        for node in (self.host_root / "dev" / "infiniband").iterdir():
            rdev = node.stat().st_rdev
            out[node.name] = (os.major(rdev), os.minor(rdev))
        return out

    def start_plugin(
        self,
        resources: Sequence[dict[str, Any]],
        mode: str = "classic",
        use_cdi: bool = False,
        log_level: str = "debug",
    ) -> Plugin:
        self.plugin = Plugin(
            self.dir / "plugin",
            self.host_root,
            self.kubelet,
            mode,
            use_cdi=use_cdi,
            cdi_dir=self.cdi_dir,
        )
        self.plugin.log_level = log_level
        self.plugin.dir.mkdir(parents=True, exist_ok=True)
        self.plugin.write_config(resources)
        self.plugin.start()
        return self.plugin

    def wait_registered(self, resource: str, count: int = 1, timeout: float = 30) -> float:
        """Time of the `count`-th registration of `resource` in the current incarnation."""
        full = f"{PREFIX}/{resource}"

        def regs() -> list[float]:
            return [t for t, r in self.kubelet.current.registrations() if r == full]

        wait_for(
            lambda: len(regs()) >= count,
            timeout=timeout,
            message=lambda: (
                f"{full} not registered:\n{self.kubelet.tail()}\n"
                + (self.plugin.log_text()[-3000:] if self.plugin else "")
            ),
        )
        return regs()[count - 1]

    def close(self) -> None:  # noqa: C901 (teardown: one guarded step per thing started)
        errors: list[str] = []
        k = self.kubelet
        with contextlib.suppress(Exception):
            if k.running():
                for f in k.manifests.glob("*.json"):
                    f.unlink()
                wait_for(
                    lambda: not self.containerd.ctr("tasks", "ls", "-q", check=False).split(),
                    timeout=30,
                )
        k.stop()
        k.creations.close()
        if self.plugin is not None:
            self.plugin.stop()
        self.containerd.stop()
        for mp in sorted(_mounts_under(self.dir), key=len, reverse=True):
            res = subprocess.run(["umount", mp], capture_output=True, text=True)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
        # The kubelet may bind-mount its root more than once (once per start).
        for _ in range(len(k.incarnations) + 2):
            if not _mounts_under(k.root):
                break
            subprocess.run(["umount", "-l", str(k.root)], capture_output=True)
        if _mounts_under(self.dir):
            errors.append(f"mounts left: {_mounts_under(self.dir)}")
        for d in sorted(_cgroup_dirs() - self.cgroups_before, key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        left = _cgroup_dirs() - self.cgroups_before
        if left:
            errors.append(f"cgroups left: {sorted(left)[:5]}")
        self.devices.remove()
        if not self.var_lib_kubelet_existed:
            shutil.rmtree(DEVICE_PLUGIN_DIR.parent, ignore_errors=True)
        else:
            for f in DEVICE_PLUGIN_DIR.glob("*"):
                if f.name == "kubelet_internal_checkpoint" or f.is_socket():
                    f.unlink()
        for link in CONTAINER_LOGS_DIR.glob("*.log"):  # links into our folder only
            if link.is_symlink() and os.readlink(link).startswith(str(self.dir) + "/"):
                link.unlink()
        if not self.container_logs_existed:
            with contextlib.suppress(OSError):
                CONTAINER_LOGS_DIR.rmdir()
        if not self.run_containerd_existed:
            shutil.rmtree("/run/containerd", ignore_errors=True)
        mine = str(self.dir)
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != os.getpid() and any(mine in a for a in (p.info["cmdline"] or [])):
                errors.append(f"process left: {p.pid} {p.info['cmdline'][:3]}")
                with contextlib.suppress(psutil.Error):
                    p.kill()
        keep = os.environ.get("RDMA_E2E_KEEP_LOGS")
        if keep:  # the plugin's and the kubelets' logs, for a timeline of what happened
            dest = Path(keep) / self.dir.name
            dest.mkdir(parents=True, exist_ok=True)
            for log in [*self.dir.glob("plugin/*.log"), *self.dir.glob("kubelet/*.log")]:
                shutil.copy(log, dest / log.name)
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("node left things behind: " + "; ".join(errors))


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[int(k)]
