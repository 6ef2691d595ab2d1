"""A crash loop is never silent: a worker that fails reports why before it exits, and the
supervisor shows the cause in `status`, in the log line of each exit, and counts the quick exits
in a row in `rdma_shared_dp_worker_consecutive_failures`.

The fault is injected into a real worker process (its configure handler raises, as a value the
protobuf layer refused once did); everything else is the real supervisor loop, run in-process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from cli.status_client import render_text
from common import exitcodes
from common.config import load_config_bytes
from common.messages import Error, WorkerStatus
from simulator.sysfs import SysfsTree, connectx_ib
from supervisor import worker_process
from supervisor.arbiter import Arbiter, Options
from supervisor.metrics.exporter import Metrics
from supervisor.metrics.http_server import Probes
from supervisor.metrics.observer import MetricsObserver
from supervisor.restart_policy import RestartPolicy
from tests.conditions import hard_timeout
from tests.standin_supervisor import REPO, Rig, WorkerSetup, make_candidate, make_resource

#: Quick exits in a row after which the restart policy calls it a crash loop.
LOOP = RestartPolicy().crash_loop_after
INJECTED = "injected: numa_node 18446744073709551616 does not fit int64"
CRASHING_WORKER = f"""
import sys
import workers.main as m
import workers.worker as w

def apply(self, *args):
    raise ValueError({INJECTED!r})

w.Worker._apply = apply
sys.exit(m.main())
"""


def crashing_command(resource_name: str, endpoint: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        CRASHING_WORKER,
        "--resource",
        resource_name,
        "--control",
        endpoint,
    ]


@pytest.fixture(autouse=True)
def _hard_timeout() -> Iterator[None]:
    with hard_timeout(60):
        yield


def test_a_failing_worker_tells_the_supervisor_why(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        rig.supervisor.set_setup(WorkerSetup(make_resource(), rig.settings, (make_candidate(0),)))
        log = tmp_path / "crash.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                crashing_command("hca_a", rig.supervisor.endpoint),
                cwd=REPO,
                env={"PATH": os.environ.get("PATH", "/usr/bin"), "PYTHONPATH": str(REPO)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            assert proc.wait(20) == exitcodes.FATAL
        error = rig.supervisor.wait_for("hca_a", lambda m: isinstance(m, Error), timeout=5)
        assert isinstance(error, Error) and error.code == "crashed"
        assert error.message == f"ValueError: {INJECTED}"
        assert "worker failed; shutting down" in log.read_text() and INJECTED in log.read_text()
    finally:
        rig.close()


class Watch(MetricsObserver):
    """The real metrics observer; stops the loop once the worker has failed `until` times."""

    def __init__(self, until: int) -> None:
        super().__init__(Metrics("test"), Probes())
        self.until = until
        self.arbiter: Arbiter | None = None
        self.seen: WorkerStatus | None = None
        self.metrics_text = ""
        self.status_text = ""

    def loop_turned(self, readable: Collection[int]) -> None:
        super().loop_turned(readable)
        arbiter = self.arbiter
        if arbiter is None or arbiter.stopping:
            return
        for row in arbiter.worker_statuses():
            if row.failures >= self.until and row.state == "backoff":
                self.seen = row
                self.metrics_text = self.metrics.render().decode()
                self.status_text = render_text(arbiter._status("x"))  # what `status` prints
                arbiter.begin_shutdown("test done")


def test_a_crash_loop_shows_its_cause_in_status_metric_and_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Fresh interpreters, not forks from the zygote: the fault is injected through the command.
    monkeypatch.setenv("RDMA_SHARED_DP_ZYGOTE", "off")
    monkeypatch.setattr(worker_process, "worker_command", crashing_command)
    caplog.set_level(logging.WARNING)
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        root = Path(d)
        SysfsTree(root / "node").add(connectx_ib("0000:1a:00.0", rdma="mlx5_0", netdev="ib0"))
        entry = {
            "resourceName": "a",
            "resourcePrefix": "example.com",
            "rdmaHcaMax": 2,
            "selectors": {"vendors": ["15b3"]},
        }
        data = json.dumps({"periodicUpdateInterval": 0, "configList": [entry]}).encode()
        (root / "c.json").write_bytes(data)
        options = Options(
            config_file=str(root / "c.json"),
            host_root=str(root / "node"),
            runtime_dir=str(root / "run"),
            device_plugin_dir=str(root / "dp"),
            plugins_registry_dir="",
            registration_mode="classic",
            use_cdi=False,
            cdi_dir=str(root / "cdi"),
            uevent_source="off",
        )
        watch = Watch(until=LOOP)
        arbiter = Arbiter(options, load_config_bytes(data), data, observer=watch)
        watch.arbiter = arbiter
        arbiter.run()
    row = watch.seen
    assert row is not None, f"the worker never failed {LOOP} times in a row"
    cause = f"last error: crashed: ValueError: {INJECTED}"
    # status: the state, the exit, the crash loop and the cause
    assert row.state == "backoff" and "crash loop" in row.reason and cause in row.reason
    assert cause in watch.status_text and "not serving:" in watch.status_text
    # the metric
    series = 'rdma_shared_dp_worker_consecutive_failures{resource="example.com/a"}'
    assert f"{series} {LOOP}.0" in watch.metrics_text
    # the log line of each exit
    exits = [
        r.getMessage() for r in caplog.records if "worker exited unexpectedly" in r.getMessage()
    ]
    assert len(exits) >= 4 and all(cause in line for line in exits)


def test_a_stable_run_ends_the_run_of_quick_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.messages import WorkerCounters
    from supervisor.metrics import observer as metrics_observer

    monkeypatch.setattr(metrics_observer, "STABLE_AFTER", 0.0)
    watch = Watch(until=99)
    watch._hca_max = {"example.com/a": 2}
    watch.metrics.worker_failures("example.com/a", 6)
    series = 'rdma_shared_dp_worker_consecutive_failures{resource="example.com/a"}'
    assert f"{series} 6.0" in watch.metrics.render().decode()
    watch.heartbeat("example.com/a", 10, WorkerCounters())  # first beat of this process
    assert f"{series} 6.0" in watch.metrics.render().decode()
    watch.heartbeat("example.com/a", 10, WorkerCounters())  # it has run the stable time
    assert f"{series} 0.0" in watch.metrics.render().decode()
