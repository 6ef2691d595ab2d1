"""The observer hooks fire from the real loop, in order, with what metrics need.

The arbiter runs in a subprocess (it owns signal handlers and must stay free of grpc); a
recording observer there writes every event as JSON, and shuts the supervisor down once it has
seen registrations, heartbeats and a refused reload. The kubelet simulator runs here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.supervisor_rig import REPO, Plant, three_resources

SCRIPT = r"""
import json, os, sys
from common.config import load_config_file
from common.logs import setup_logging
from supervisor.arbiter import Arbiter, Options
from supervisor.observer import Observer
from supervisor.timings import Timings

config_path, node, dp, run, out = sys.argv[1:6]
setup_logging("info")

class Recorder(Observer):
    def __init__(self):
        self.events, self.source, self.ready, self.beats, self.reloads = [], None, set(), set(), 0

    def _check(self):
        if len(self.ready) == 3 and len(self.beats) == 3 and self.reloads:
            arbiter.begin_shutdown("recorder saw enough")

    def started(self, source):
        self.source = source
        self.events.append(["started", [w.resource for w in source.worker_statuses()]])
        with open(config_path, "w") as f:
            f.write("{ broken")

    def scan_finished(self, trigger, scan, seconds, selections):
        self.events.append(["scan", trigger, {k: len(v) for k, v in selections.items()}])

    def worker_state_changed(self, resource, state, previous, reason):
        self.events.append(["state", resource, previous, state])

    def worker_ready(self, resource, registered, mode):
        self.events.append(["ready", resource, registered, mode])
        if registered:
            self.ready.add(resource)
        self._check()

    def heartbeat(self, resource, pid, counters):
        if not counters.registrations_ok:
            return  # a beat from before the registration
        if resource not in self.beats:
            self.events.append(["heartbeat", resource, pid > 0, counters.registrations_ok])
        self.beats.add(resource)
        self._check()

    def config_reloaded(self, ok, problems):
        self.events.append(["reload", ok, len(problems)])
        self.reloads += 1
        self._check()

    def config_applied(self, config):
        self.events.append(["config", [r.full_name for r in config.resources]])

    def poll_fds(self):
        self.pipe = os.pipe()
        os.write(self.pipe[1], b"x")  # readable at once: the loop must say so
        return [self.pipe[0]]

    def loop_turned(self, readable):
        if self.pipe[0] in readable:
            os.read(self.pipe[0], 1)
            self.events.append(["readable"])

    def stopped(self):
        self.events.append(["stopped"])
        with open(out, "w") as f:
            json.dump(self.events, f)

recorder = Recorder()
options = Options(
    config_path, node, run, dp, "", "classic", False, "/nonexistent", uevent_source="off"
)
with open(config_path, "rb") as f:
    data = f.read()
# Faster heartbeats and config polls than production: what this test waits for.
timings = Timings(heartbeat_interval=0.4, config_poll_interval=0.2)
arbiter = Arbiter(
    options, load_config_file(config_path), data, observer=recorder, timings=timings
)
sys.exit(arbiter.run())
"""


@pytest.fixture
def rig() -> Iterator[Plant]:
    plant = Plant(three_resources())
    try:
        yield plant
    finally:
        plant.close()


def test_observer_hooks_fire_in_order(rig: Plant) -> None:
    out = rig.root / "events.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(rig.config_path),
            str(rig.node),
            str(rig.dp_dir),
            str(rig.runtime_dir),
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = json.loads(Path(out).read_text())
    kinds = [e[0] for e in events]
    assert events[0] == ["config", ["example.com/a", "example.com/b", "example.com/c"]]
    assert events[1] == [
        "scan",
        "start",
        {"example.com/a": 2, "example.com/b": 1, "example.com/c": 1},
    ]
    assert kinds.index("started") < kinds.index("ready") < kinds.index("stopped")
    for name in ("a", "b", "c"):
        r = f"example.com/{name}"
        states = [e[2:] for e in events if e[0] == "state" and e[1] == r]
        assert states == [
            ["exited", "starting"],
            ["starting", "running"],
            ["running", "stopping"],
            ["stopping", "exited"],
        ]
        assert ["ready", r, True, "classic"] in events
        assert ["heartbeat", r, True, 1] in events
    assert ["reload", False, 1] in events
    assert kinds.count("readable") == 1
    assert kinds.index("config") < kinds.index("scan") < kinds.index("started")
    assert events[-1] == ["stopped"]
