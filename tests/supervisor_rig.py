"""A real `rdma-shared-dp run` on a simulated node with the kubelet simulator (tests, benchmarks).

Runs in the test or benchmark process: it writes a sysfs tree and a config into a short temp
folder (unix socket paths are limited to 107 bytes), serves the kubelet simulator in-process,
starts the supervisor as a real subprocess, and asks it for its status over the control socket
the way `rdma-shared-dp status` does. `close()` stops everything and kills whatever is left, so a
failing test leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from cli.status_client import StatusError, fetch_status
from common.messages import Status, WorkerStatus
from common.private_socket import KEPT_DIR
from simulator.kubelet import KubeletSimulator
from simulator.sysfs import SysfsTree, connectx_ib
from supervisor.control import endpoint_for
from supervisor.timings import ENV_VAR as TIMINGS_ENV
from tests.conditions import wait_until
from tests.factories import HCAS as HCAS  # re-exported for older imports
from tests.factories import PREFIX as PREFIX
from tests.factories import resource_entry as resource_entry  # re-exported for older imports
from tests.factories import three_resources as three_resources

REPO = Path(__file__).resolve().parent.parent
#: Timings of a supervisor under test (`supervisor.timings.Timings` fields): faster heartbeats,
#: polls and liveness than production, with margins a loaded 2-core machine keeps; the stop ladder
#: stays as in production (tests time it).
E2E_TIMINGS = {
    "heartbeat_interval": 0.5,
    "hung_after_beats": 6,
    "config_poll_interval": 0.25,
    "kubelet_poll_interval": 0.1,
    "runtime_check_interval": 0.5,
}


def full(name: str) -> str:
    return f"{PREFIX}/{name}"


class Plant:
    def __init__(
        self,
        config: dict[str, Any],
        *,
        use_cdi: bool = False,
        uevents: str = "off",
        hcas: int = len(HCAS),
        log_level: str = "info",
        mode: str = "classic",
        timings: dict[str, float] | None = E2E_TIMINGS,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
        self.node = self.root / "node"
        self.dp_dir = self.root / "dp"
        self.cdi_dir = self.root / "cdi"
        self.runtime_dir = self.root / "run"
        self.config_path = self.root / "config.json"
        self.log_path = self.root / "supervisor.log"
        self.use_cdi = use_cdi
        self.uevents = uevents
        self.log_level = log_level
        self.tree = SysfsTree(self.node)
        for address, rdma, netdev, numa in HCAS[:hcas]:
            self.tree.add(connectx_ib(address, rdma=rdma, netdev=netdev, numa_node=numa))
        self.write_config(config)
        self.mode = mode
        #: `supervisor.timings.Timings` overrides; None: production timings (benchmarks measure
        #: what a node runs, heartbeats and polls included).
        self.timings = timings
        # auto and watcher: the kubelet simulator also runs the plugin watcher on the registry.
        self.kubelet = KubeletSimulator(
            self.dp_dir, self.root / "registry" if mode != "classic" else None
        )
        self.kubelet.start()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.endpoint = endpoint_for(str(self.runtime_dir))

    # ---- the supervisor ------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "supervisor",
            "run",
            "--config-file",
            str(self.config_path),
            "--host-root",
            str(self.node),
            "--device-plugin-dir",
            str(self.dp_dir),
            "--plugins-registry-dir",
            str(self.root / "registry"),
            "--registration-mode",
            self.mode,
            "--cdi-dir",
            str(self.cdi_dir),
            "--runtime-dir",
            str(self.runtime_dir),
            "--metrics-address",
            "",
            # No PodResources poller unless a test asks (MetricsPlant): off the host's kubelet.
            "--pod-resources-socket",
            "",
            "--log-level",
            self.log_level,
        ]
        return [*args, "--use-cdi"] if self.use_cdi else args

    def start(self) -> subprocess.Popen[bytes]:
        if self._log_file is None:
            self._log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO,
            env={
                **{k: v for k, v in os.environ.items() if k != TIMINGS_ENV},
                "RDMA_SHARED_DP_UEVENT_SOURCE": self.uevents,
                **({} if self.timings is None else {TIMINGS_ENV: json.dumps(self.timings)}),
            },
            stdout=self._log_file,
            stderr=self._log_file,
            start_new_session=True,
        )
        return self.proc

    def wait_registered(self, names: list[str], timeout: float = 10.0, count: int = 1) -> None:
        for name in names:
            self.kubelet.wait_for_registration(full(name), timeout=timeout, count=count)

    def registrations(self, name: str) -> int:
        return len([r for r in self.kubelet.registrations() if r.resource_name == full(name)])

    def status(self) -> Status:
        return fetch_status(str(self.runtime_dir))

    def worker(self, name: str) -> WorkerStatus:
        for row in self.status().workers:
            if row.resource == full(name):
                return row
        raise KeyError(f"{full(name)} is not in the worker table")

    def has_worker(self, name: str) -> bool:
        return any(row.resource == full(name) for row in self.status().workers)

    def wait_state(self, name: str, state: str, timeout: float = 10.0) -> WorkerStatus:
        def check() -> WorkerStatus | None:
            with contextlib.suppress(KeyError, StatusError):
                row = self.worker(name)
                return row if row.state == state else None
            return None

        return wait_until(check, timeout, what=f"{full(name)} in state {state}")

    def write_config(self, config: dict[str, Any] | str) -> None:
        """Replace the config file atomically, as a ConfigMap update does."""
        text = config if isinstance(config, str) else json.dumps(config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_processes(self) -> list[psutil.Process]:
        """Every live worker process connected to this rig's control endpoint."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmd = proc.info.get("cmdline") or []
            if self.endpoint in cmd and proc.info.get("status") != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    def sockets(self) -> list[str]:
        """Every name in the device-plugin folder but kubelet.sock; the workers' kept private
        names (common.private_socket) as `.rdma-shared-dp/.<pid>.sock` for pids no longer live."""
        if not self.dp_dir.exists():
            return []
        names = [p.name for p in self.dp_dir.iterdir() if p.name not in ("kubelet.sock", KEPT_DIR)]
        kept = self.dp_dir / KEPT_DIR
        live = {p.pid for p in self.worker_processes()}
        if kept.is_dir():
            for p in kept.iterdir():
                pid = p.name.removeprefix(".").removesuffix(".sock")
                if not (pid.isdigit() and int(pid) in live):
                    names.append(f"{KEPT_DIR}/{p.name}")
        return sorted(names)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM the supervisor; its exit status and how long it took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(6)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for proc in self.worker_processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.kubelet.stop()
        if self._log_file is not None:
            self._log_file.close()
        shutil.rmtree(self.root, ignore_errors=True)
