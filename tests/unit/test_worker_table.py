"""The worker table's state machine and exit decisions: pure, no processes."""

from __future__ import annotations

import random

import pytest

from common import exitcodes
from common.config import ResourceConfig, Selectors
from supervisor.restart_policy import RestartPolicy
from supervisor.worker_table import (
    ALLOWED,
    IllegalWorkerMove,
    WorkerRecord,
    WorkerState,
    WorkerTable,
    exit_decision,
)
from tests.standin_supervisor import make_candidate

S = WorkerState
POLICY = RestartPolicy()


def _resource(name: str = "a", count: int = 4) -> ResourceConfig:
    return ResourceConfig(name, "example.com", count, Selectors(vendors=("15b3",)))


def test_every_state_has_a_way_out_and_exited_is_the_start() -> None:
    assert set(ALLOWED) == set(WorkerState)
    assert all(ALLOWED[state] for state in WorkerState)
    assert WorkerRecord(_resource()).state is S.EXITED


def test_moves_are_checked_and_reported() -> None:
    seen: list[tuple[str, str, str, str]] = []
    table = WorkerTable(
        on_change=lambda r, prev, why: seen.append((r.name, prev.value, r.state.value, why))
    )
    record = table.add(_resource())
    table.move(record, S.STARTING, "configured")
    table.move(record, S.RUNNING, "hello")
    table.move(record, S.RUNNING, "again")  # same state: no event
    table.move(record, S.BACKOFF, "crashed")
    with pytest.raises(IllegalWorkerMove):
        table.move(record, S.RUNNING)  # backoff must start a process first
    with pytest.raises(IllegalWorkerMove):
        table.move(record, S.STOPPING)  # no process to stop
    assert seen == [
        ("a", "exited", "starting", "configured"),
        ("a", "starting", "running", "hello"),
        ("a", "running", "backoff", "crashed"),
    ]
    assert record.reason == "crashed"


def test_a_running_record_cannot_be_removed() -> None:
    table = WorkerTable()
    record = table.add(_resource())
    table.move(record, S.STARTING)
    with pytest.raises(IllegalWorkerMove):
        table.remove("a")
    with pytest.raises(KeyError):
        table.add(_resource())  # one record per resource name


def test_config_invalid_exit_waits_in_fatal() -> None:
    d = exit_decision(exitcodes.CONFIG_INVALID, 0.5, 0, "", POLICY, 0.5)
    assert d.state is S.FATAL and d.reason == "config_invalid"


@pytest.mark.parametrize(
    ("code", "kill_reason", "reason"),
    [
        (-9, "", "killed"),
        (-9, "hung", "hung"),
        (exitcodes.FATAL, "", "crashed"),
        (exitcodes.SUPERVISOR_LOST, "", "crashed"),
        (exitcodes.OK, "", "exited"),
    ],
)
def test_other_exits_back_off_with_a_reason(code: int, kill_reason: str, reason: str) -> None:
    d = exit_decision(code, 0.5, 0, kill_reason, POLICY, 0.5)
    assert d.state is S.BACKOFF and d.reason == reason and d.failures == 1


def test_backoff_grows_is_capped_then_slow_and_resets_after_a_stable_run() -> None:
    failures, delays = 0, []
    for _ in range(8):
        d = exit_decision(exitcodes.FATAL, 0.2, failures, "", POLICY, 0.5)
        failures = d.failures
        delays.append(d.delay)
    assert delays[0] < 0.5  # the first retry is well under a second
    assert delays[:5] == sorted(delays[:5])
    assert delays[-1] == POLICY.slow_delay  # crash loop: slow retries, never given up
    assert "crash loop" in exit_decision(exitcodes.FATAL, 0.2, 7, "", POLICY, 0.5).description
    stable = exit_decision(exitcodes.FATAL, POLICY.stable_after + 1, failures, "", POLICY, 0.5)
    assert stable.failures == 1 and stable.delay < 0.5


def test_jitter_spreads_restarts() -> None:
    rng = random.Random(7)
    delays = {
        round(exit_decision(-9, 0.1, 2, "", POLICY, rng.random()).delay, 4) for _ in range(20)
    }
    assert len(delays) > 10
    assert all(0.8 * 0.4 <= d <= 1.2 * 0.4 for d in delays)


def test_statuses_summarise_devices_and_health() -> None:
    table = WorkerTable()
    a = table.add(_resource("a"))
    table.add(_resource("b"))
    a.pid, a.registered, a.registered_since = 42, True, 1000.0
    devices = {
        "a": (make_candidate(0), make_candidate(1, port_state="DOWN")),
        "b": (),
    }
    rows = table.statuses(lambda name: devices[name])
    assert [(r.resource, r.devices, r.healthy, r.pid, r.registered) for r in rows] == [
        ("example.com/a", 2, 1, 42, True),
        ("example.com/b", 0, 0, 0, False),
    ]


def test_by_peer_and_forget_process() -> None:
    table = WorkerTable()
    record = table.add(_resource())
    record.peer, record.pid, record.configured, record.registered = b"a/1", 1, True, True
    assert table.by_peer(b"a/1") is record and table.by_peer(b"a/2") is None
    record.forget_process()
    after: tuple[object, ...] = (record.peer, record.pid, record.configured, record.registered)
    assert after == (
        None,
        0,
        False,
        False,
    )
