"""`rdma-shared-dp demo`: the real plugin on a simulated node, narrated (demo process).

Runs in its own interpreter (the CLI execs `python -m demo`) because the kubelet
simulator speaks gRPC and the supervisor must never load it. This process builds the simulated
node (`simulator.sysfs.build_demo_node`; its config is `demo.config`), serves the
kubelet simulator in-process, and starts the real `rdma-shared-dp run` as a subprocess, then walks
through a scenario (printed by `demo.narration`; signals: `demo.signals`):

1. the plugin starts: one worker per resource registers with the "kubelet";
2. each resource's `ListAndWatch` snapshot: device IDs, health, NUMA nodes;
3. an `Allocate` answer for one container;
4. a port goes DOWN: its resource turns Unhealthy; back ACTIVE: Healthy again;
5. a worker is killed: only it restarts, the other streams stay open;
6. the kubelet restarts: every resource registers again;
7. `rdma-shared-dp status`, then SIGTERM: everything stops and nothing is left behind.

It takes about 10 s; `--keep-running` leaves the plugin up until Ctrl-C (or SIGTERM) and
prints the exact `status` and `curl` commands to look at it; the plugin's metrics endpoint runs on
a free loopback port.

Stopping: SIGTERM, SIGINT or SIGHUP to this process, from a terminal or `kill`, stops everything
it started (the plugin's supervisor and workers, the kubelet simulator) before it exits; further
signals are ignored during that stop, which is bounded (STEP_TIMEOUT, then SIGKILL). The CLI's
`rdma-shared-dp demo` execs this module, so its pid is this process's.

`--json` prints one JSON object per line instead of prose, for tests and tools:
`{"event": "step", "t": s, "step": n, "title": str}`, `{"event": "say", "t": s, "text": str}`, and
facts: `plugin_started` {pid}, `registered` {resource, seconds}, `devices` {resource, ids, hcas},
`metrics` {url}, `inspect` {status_command, curl_commands, supervisor_pid, worker_pids} (only with
`--keep-running`), `interrupted` {signal}, `stopped` {exit_status, sockets_left}, `finished`
{seconds, exit_code}, `failed` {error}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from demo.config import DEMO_CONFIG, RESOURCES
from demo.narration import Narrator, cli_command, hcas_text, summarise, wrap
from demo.signals import STOP_SIGNALS, Interrupted, interrupt, signals_deferred
from simulator.kubelet import HEALTHY, KubeletSimulator
from simulator.sysfs import SysfsTree, build_demo_node

T = TypeVar("T")

STEP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parent.parent
METRICS_LINE = re.compile(r"serving /metrics /healthz /readyz address=\S+ port=(\d+)")


class DemoFailed(Exception):
    pass


def wait_for(predicate: Callable[[], T], what: str, timeout: float = STEP_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Demo:
    def __init__(self, workdir: Path, keep_running: bool, as_json: bool = False) -> None:
        self.workdir = workdir
        self.keep_running = keep_running
        self.node = workdir / "node"
        self.dp_dir = workdir / "device-plugins"
        self.runtime_dir = workdir / "run"
        self.config_path = workdir / "config.json"
        self.log_path = workdir / "plugin.log"
        self.kubelet = KubeletSimulator(self.dp_dir)
        self.plugin: subprocess.Popen[bytes] | None = None
        self.say = Narrator(as_json)
        self.metrics_url = ""

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "supervisor", *args]

    def run(self) -> int:
        n = self.say
        n.title(f"Building a simulated GPU node in {self.node}")
        build_demo_node(self.node)
        self.config_path.write_text(json.dumps(DEMO_CONFIG, indent=2))
        n.say("4 ConnectX-7 InfiniBand HCAs, 2 ConnectX-6 Dx RoCE ports (+1 sub-function),")
        n.say(
            "an Intel E810 with irdma, a management NIC and 4 GPUs; config: " + ", ".join(RESOURCES)
        )
        self.kubelet.start()
        n.say(f"kubelet simulator serving {self.kubelet.kubelet_socket}")

        n.title("Starting the plugin: rdma-shared-dp run (one worker process per resource)")
        started = time.monotonic()
        with signals_deferred():
            self.plugin = self.start_plugin()
        n.event("plugin_started", pid=self.plugin.pid)
        for resource in RESOURCES:
            reg = self.kubelet.wait_for_registration(resource, timeout=STEP_TIMEOUT)
            n.event("registered", resource=resource, seconds=round(reg.time - started, 3))
            n.say(
                f"{resource:<14} registered after {reg.time - started:.2f}s "
                f"(endpoint {reg.endpoint}, API {reg.version})"
            )
        port = wait_for(self.metrics_port, "the plugin's metrics endpoint (plugin log)")
        self.metrics_url = f"http://127.0.0.1:{port}"
        n.event("metrics", url=self.metrics_url)

        n.title("What the kubelet sees (ListAndWatch snapshots)")
        hcas = self.hca_counts()
        for resource in RESOURCES:
            devices = self.kubelet.wait_for_devices(resource, bool, STEP_TIMEOUT)
            n.event("devices", resource=resource, ids=len(devices), hcas=hcas.get(resource, 0))
            n.say(f"{resource:<14} {summarise(devices)}, on {hcas_text(hcas.get(resource, 0))}")
        ib_ids, ib_hcas = DEMO_CONFIG["configList"][0]["rdmaHcaMax"], hcas.get(RESOURCES[0], 0)
        n.say(
            f"A device ID is a pod slot, not a piece of hardware: rdmaHcaMax {ib_ids} lets "
            f"{ib_ids} containers hold"
        )
        n.say(
            f"{RESOURCES[0]} at once, and each of them gets all {ib_hcas} HCAs the resource "
            "selects (shared,"
        )
        n.say(
            f"not split). So the kubelet counts {ib_ids} devices while `status` shows DEVICES "
            f"{ib_hcas}: the HCAs."
        )

        n.title("A pod asks for rdma/hca_ib: Allocate(['0'])")
        answer = self.kubelet.allocate("rdma/hca_ib", [["0"]])
        container = answer.container_responses[0]
        paths = [d.container_path for d in container.devices]
        n.say(f"{len(paths)} device nodes, permissions {container.devices[0].permissions}:")
        for line in wrap(paths, 84):
            n.say(f"  {line}")

        tree = SysfsTree(self.node)
        n.title("Port 1 of irdma0 goes DOWN (the E810 behind rdma/irdma)")
        tree.set_port_state("irdma0", 1, "DOWN")
        changed = time.monotonic()
        devices = self.kubelet.wait_for_devices(
            "rdma/irdma", lambda ds: all(d.health != HEALTHY for d in ds), STEP_TIMEOUT
        )
        n.say(f"rdma/irdma     {summarise(devices)} after {time.monotonic() - changed:.2f}s")
        n.say("(found by the periodic rescan, 1 s here; a kernel uevent triggers it at once)")
        tree.set_port_state("irdma0", 1, "ACTIVE")
        changed = time.monotonic()
        devices = self.kubelet.wait_for_devices(
            "rdma/irdma", lambda ds: all(d.health == HEALTHY for d in ds), STEP_TIMEOUT
        )
        n.say(f"back ACTIVE:   {summarise(devices)} after {time.monotonic() - changed:.2f}s")

        n.title("The worker of rdma/hca_roce is killed (kill -9)")
        victim = self.worker_pid("rdma/hca_roce")
        regs_before = len(
            [r for r in self.kubelet.registrations() if r.resource_name == "rdma/hca_roce"]
        )
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        self.kubelet.wait_for_registration("rdma/hca_roce", STEP_TIMEOUT, count=regs_before + 1)
        n.say(
            f"pid {victim} killed; a new worker registered after {time.monotonic() - killed:.2f}s"
        )
        others = [r for r in RESOURCES if r != "rdma/hca_roce"]
        open_streams = [r for r in others if self.kubelet.stream_open(r)]
        n.say(f"streams of {', '.join(open_streams)} stayed open (not restarted)")

        n.title("The kubelet restarts (sockets wiped, new kubelet.sock)")
        counts = {
            r: len([x for x in self.kubelet.registrations() if x.resource_name == r])
            for r in RESOURCES
        }
        restarted = time.monotonic()
        self.kubelet.restart()
        for resource in RESOURCES:
            self.kubelet.wait_for_registration(resource, STEP_TIMEOUT, count=counts[resource] + 1)
        took = time.monotonic() - restarted
        n.say(f"all {len(RESOURCES)} resources registered again {took:.2f}s after the restart")

        n.title("rdma-shared-dp status")
        out = subprocess.run(
            self.command("status", "--runtime-dir", str(self.runtime_dir)),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        for line in out.stdout.splitlines():
            n.say(line)

        if self.keep_running:
            self.inspect()

        n.title("Stopping: SIGTERM to the supervisor")
        stop_started = time.monotonic()
        self.plugin.send_signal(signal.SIGTERM)
        code = self.plugin.wait(STEP_TIMEOUT)
        left = sorted(p.name for p in self.dp_dir.iterdir() if p.name != "kubelet.sock")
        n.event("stopped", exit_status=code, sockets_left=left)
        n.say(
            f"exit status {code} after {time.monotonic() - stop_started:.2f}s; "
            f"plugin sockets left: {', '.join(left) or 'none'}"
        )
        self.plugin = None
        exit_code = 0 if code == 0 and not left else 1
        n.event("finished", seconds=round(time.monotonic() - n.t0, 3), exit_code=exit_code)
        if not n.as_json:
            print(f"\ndemo finished in {time.monotonic() - n.t0:.1f}s", flush=True)
        return exit_code

    def start_plugin(self) -> subprocess.Popen[bytes]:
        """`rdma-shared-dp run` on the simulated node, logging to plugin.log."""
        return subprocess.Popen(
            self.command(
                "run",
                "--config-file",
                str(self.config_path),
                "--host-root",
                str(self.node),
                "--device-plugin-dir",
                str(self.dp_dir),
                "--plugins-registry-dir",
                str(self.workdir / "plugins_registry"),
                "--cdi-dir",
                str(self.workdir / "cdi"),
                "--runtime-dir",
                str(self.runtime_dir),
                # A free loopback port (the log names it), no PodResources poller: the
                # simulator does not serve that API.
                "--metrics-address",
                "127.0.0.1:0",
                "--pod-resources-socket",
                "",
            ),
            cwd=REPO,
            env={**os.environ, "RDMA_SHARED_DP_UEVENT_SOURCE": "off"},
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("wb"),
            # Its own session: a terminal's Ctrl-C reaches only this process, which then
            # stops the plugin in order (SIGTERM, wait) instead of both racing.
            start_new_session=True,
        )

    def inspect(self) -> None:
        """--keep-running: say how to look at the running plugin, then wait for a signal."""
        n = self.say
        assert self.plugin is not None
        n.title(f"Running until Ctrl-C or SIGTERM to pid {os.getpid()}")
        status = f"{cli_command()} status --runtime-dir {self.runtime_dir}"
        curls = [
            f"curl -s {self.metrics_url}/metrics | grep '^rdma_shared_dp_resource'",
            f"curl -s {self.metrics_url}/readyz",
        ]
        n.say("In another terminal:")
        for command in (status, *curls):
            n.say(f"  {command}")
        n.say(f"plugin log: {self.log_path}")
        workers = [int(w["pid"]) for w in self.status_json()["workers"] if w["pid"]]
        n.event(
            "inspect",
            status_command=status,
            curl_commands=curls,
            supervisor_pid=self.plugin.pid,
            worker_pids=workers,
        )
        try:
            while True:
                signal.pause()
        except Interrupted as got:
            n.event("interrupted", signal=str(got))
            n.say(f"got {got}")

    def metrics_port(self) -> int | None:
        with contextlib.suppress(OSError):
            found = METRICS_LINE.search(self.log_path.read_text(errors="replace"))
            if found:
                return int(found[1])
        return None

    def status_json(self) -> dict[str, Any]:
        out = subprocess.run(
            self.command("status", "--json", "--runtime-dir", str(self.runtime_dir)),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        if out.returncode != 0:
            raise DemoFailed(f"status failed: {out.stderr.strip()}")
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def hca_counts(self) -> dict[str, int]:
        """Resource -> HCAs it matched, as `status` shows them (DEVICES)."""
        return {w["resource"]: int(w["devices"]) for w in self.status_json()["workers"]}

    def worker_pid(self, resource: str) -> int:
        for worker in self.status_json()["workers"]:
            if worker["resource"] == resource and worker["pid"]:
                return int(worker["pid"])
        raise DemoFailed(f"no running worker for {resource}")

    def close(self) -> None:
        if self.plugin is not None and self.plugin.poll() is None:
            self.plugin.send_signal(signal.SIGTERM)
            try:
                self.plugin.wait(STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.plugin.kill()
                self.plugin.wait()
        self.kubelet.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run the real rdma-shared-dp on a simulated node with a kubelet simulator.",
    )
    parser.add_argument("--workdir", default=None, help="folder to use (default: a temp folder)")
    parser.add_argument(
        "--keep-running", action="store_true", help="stay up after the scenario until Ctrl-C"
    )
    parser.add_argument("--json", action="store_true", help="one JSON event per line")
    args = parser.parse_args(argv)
    for s in STOP_SIGNALS:  # first, so that nothing it starts can outlive a signal
        signal.signal(s, interrupt)
    # Unix socket paths are limited to 107 bytes: keep the temp folder short.
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rdp-demo-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "node").exists():
        print(f"demo: {workdir} holds an earlier demo; pick an empty --workdir", file=sys.stderr)
        return 2
    # The simulator's own log (streams ending, ...) goes to a file, not into the narration.
    handler = logging.FileHandler(workdir / "kubelet-simulator.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    demo = Demo(workdir.absolute(), args.keep_running, args.json)
    try:
        return demo.run()
    except Interrupted as got:
        demo.say.event("interrupted", signal=str(got))
        print(f"\ndemo: {got}: stopping everything it started", file=sys.stderr)
        return 128 + got.signum
    except (DemoFailed, TimeoutError, OSError) as err:
        demo.say.event("failed", error=str(err))
        print(f"\ndemo failed: {err}\nplugin log: {demo.log_path}", file=sys.stderr)
        with contextlib.suppress(OSError):
            tail = demo.log_path.read_text(errors="replace").splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
        args.workdir = str(workdir)  # keep the evidence
        return 1
    finally:
        for s in STOP_SIGNALS:  # nothing may interrupt the cleanup itself
            signal.signal(s, signal.SIG_IGN)
        demo.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
