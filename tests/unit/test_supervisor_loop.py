"""The supervisor's loop and timings, driven by hand: guarded handlers, bursts, callbacks."""

from __future__ import annotations

import json

import pytest

from supervisor.loop import Loop
from supervisor.restart_policy import RestartPolicy
from supervisor.timings import ENV_VAR, Timings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_handler_is_counted_and_a_burst_calls_on_burst() -> None:
    clock = Clock()
    errors: list[str] = []
    bursts: list[str] = []
    loop = Loop(Timings.fast(max_loop_errors=3), clock, errors.append, bursts.append)

    def boom() -> None:
        raise RuntimeError("a bug")

    loop.guarded("timer:x", boom)
    loop.guarded("timer:x", boom)
    assert loop.errors == {"timer:x": 2} and errors == ["timer:x", "timer:x"] and bursts == []
    clock.now += Timings().loop_error_window + 1  # the old ones left the window
    loop.guarded("message:ready", boom)
    assert bursts == []
    loop.guarded("message:ready", boom)
    loop.guarded("message:ready", boom)
    assert len(bursts) == 1 and "3 handler errors" in bursts[0]


def test_turn_runs_due_timer_callbacks_and_a_raising_recurring_one_stays_armed() -> None:
    clock = Clock()
    loop = Loop(Timings.fast(max_poll_wait=0.0), clock)
    calls: list[str] = []

    def tick() -> None:
        calls.append("tick")
        raise RuntimeError("every time")

    loop.timers.every(("tick",), 1.0, tick)
    loop.timers.call_later(("once",), 0.5, lambda: calls.append("once"))
    clock.now += 1.0
    loop.turn()
    clock.now += 1.0
    loop.turn()
    assert calls == ["once", "tick", "tick"]
    assert loop.errors == {"timer:tick": 2}


def test_timings_from_the_environment() -> None:
    assert Timings.from_env({}) == Timings()
    assert Timings.from_env({ENV_VAR: "fast"}) == Timings.fast()
    raw = json.dumps({"heartbeat_interval": 0.5, "restart": {"initial_delay": 0.01}})
    timings = Timings.from_env({ENV_VAR: raw})
    assert timings.heartbeat_interval == 0.5
    assert timings.restart == RestartPolicy(initial_delay=0.01)
    with pytest.raises(TypeError):
        Timings.from_env({ENV_VAR: json.dumps({"no_such_timing": 1})})


def test_fast_timings_keep_the_production_order() -> None:
    for t in (Timings(), Timings.fast()):
        assert t.stop_term_after < t.stop_kill_after < t.shutdown_budget
        assert t.hung_after_beats * t.heartbeat_interval < t.start_timeout
