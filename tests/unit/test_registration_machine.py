"""The worker's registration state machine, in-process: every state x event pair, then the
behaviours that matter after a kubelet restart. No gRPC, no processes, a hand-driven clock."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from workers import registration_io
from workers import registration_io as f
from workers.events import RegisterDone, SelfCheckDone, StreamLost, StreamOpened, WatcherStatus
from workers.registration_io import Kind
from workers.registration_machine import (
    TABLE,
    RegistrationError,
    RegistrationMachine,
    Row,
    State,
    StreamSeen,
)
from workers.timings import WorkerTimings

DOC = Path(__file__).resolve().parents[2] / "docs" / "worker.md"
TIMINGS = WorkerTimings()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _machine(mode: str) -> tuple[RegistrationMachine, Clock]:
    clock = Clock()
    m = RegistrationMachine(TIMINGS, clock)
    m.handle(f.Reset(mode, "configured"))
    return m, clock


def _registers(actions: list[registration_io.Action]) -> list[registration_io.Register]:
    return [a for a in actions if isinstance(a, f.Register)]


def _timer(actions: list[registration_io.Action]) -> float | None:
    timers = [a.delay for a in actions if isinstance(a, f.SetTimer)]
    return timers[-1] if timers else None


def drive(state: State, mode: str) -> tuple[RegistrationMachine, Clock]:  # noqa: C901 (one branch per state, read top to bottom)
    """A machine brought into `state` by the events that lead there in real life."""
    m, clock = _machine(mode)
    if state is State.UNSERVED:
        return m, clock
    if state is State.STOPPED:
        m.handle(f.Stop())
        return m, clock
    m.handle(f.Served(1))
    if state is State.SELF_CHECKING:
        return m, clock
    if mode == "watcher":
        m.handle(SelfCheckDone(1))
        if state is State.REGISTERED:
            m.handle(StreamOpened(1, m.claim))
            m.handle(WatcherStatus(1, True, ""))
        elif state is State.REFUSED:
            m.handle(WatcherStatus(1, False, "no"))
    else:
        m.handle(SelfCheckDone(1))  # -> registering, attempt 1
        clock.advance(0.01)
        if state is State.REGISTERED:
            m.handle(StreamOpened(1, m.claim))
            m.handle(RegisterDone(1, 1, sent_at=clock.now))
        elif state is State.BACKING_OFF:
            m.handle(RegisterDone(1, 1, "UNAVAILABLE: nobody there"))
        elif state is State.REFUSED:
            m.handle(RegisterDone(1, 1, "UNKNOWN: no", refused=True))
        elif state is State.ADOPTING:
            m.handle(f.OwnSocketGone("wiped"))  # attempt 1 (for server 1) still out
            m.handle(f.Served(2))
            m.handle(SelfCheckDone(2))
            m.handle(RegisterDone(1, 1, sent_at=clock.now))
    clock.advance(0.01)
    assert m.state is state
    return m, clock


def relevant_event(kind: Kind, m: RegistrationMachine, clock: Clock) -> registration_io.Event:
    """An event of `kind` that concerns the machine's current server, attempt and stream."""
    attempt = m.inflight.number if m.inflight is not None else m.attempt
    generation = m.inflight.generation if m.inflight is not None else m.generation
    events: dict[Kind, registration_io.Event] = {
        Kind.RESET: f.Reset(m.mode, "test"),
        Kind.SERVED: f.Served(m.generation + 1),
        Kind.SERVE_FAILED: f.ServeFailed(False),
        Kind.TIMER: f.TimerDue(),
        Kind.SELF_CHECK_OK: SelfCheckDone(m.generation),
        Kind.SELF_CHECK_FAILED: SelfCheckDone(m.generation, "does not answer"),
        Kind.REGISTER_OK: RegisterDone(attempt, generation, sent_at=clock.now),
        Kind.REGISTER_FAILED: RegisterDone(attempt, generation, "UNAVAILABLE: gone"),
        Kind.STREAM_OPENED: StreamOpened(m.generation, m.claim),
        Kind.STREAM_LOST: StreamLost(m.generation, m.claim),
        Kind.WATCHER_REGISTERED: WatcherStatus(m.generation, True, ""),
        Kind.WATCHER_REFUSED: WatcherStatus(m.generation, False, "no"),
        Kind.KUBELET_RESTART: f.KubeletRestart("kubelet.sock replaced", clock.now),
        Kind.KUBELET_GONE: f.KubeletGone(),
        Kind.OWN_SOCKET_GONE: f.OwnSocketGone("removed"),
        Kind.STOP: f.Stop(),
    }
    assert set(events) == set(Kind)
    return events[kind]


MODES_OF = {
    State.UNSERVED: ("classic", "watcher"),
    State.SELF_CHECKING: ("classic", "watcher"),
    State.REGISTERING: ("classic",),
    State.AWAITING_WATCHER: ("watcher",),
    State.ADOPTING: ("classic",),
    State.REGISTERED: ("classic", "watcher"),
    State.BACKING_OFF: ("classic",),
    State.REFUSED: ("classic", "watcher"),
    State.STOPPED: ("classic", "watcher"),
}
PAIRS = [
    pytest.param(state, kind, mode, id=f"{mode}-{state.value}-{kind.value}")
    for state, kind in itertools.product(State, Kind)
    for mode in MODES_OF[state]
]


def test_every_state_can_be_reached() -> None:
    assert set(MODES_OF) == set(State)


@pytest.mark.parametrize(("state", "kind", "mode"), PAIRS)
def test_every_state_and_event(state: State, kind: Kind, mode: str) -> None:
    m, clock = drive(state, mode)
    clock.advance(TIMINGS.stream_grace + 0.1)  # timers that are due are due
    actions = m.handle(relevant_event(kind, m, clock))
    row = TABLE.get((state, kind))
    if row is None:
        assert actions == [] and m.state is state, "a pair not in the table is ignored"
    else:
        assert m.state in row.to
    # Whatever happened, at most one Register is in flight, and it is the one the machine waits on.
    registers = _registers(actions)
    assert len(registers) <= 1
    if registers:
        assert m.inflight is not None and m.inflight.number == registers[0].attempt
        assert m.state is State.REGISTERING
    # The server is only stopped on the way to a state without one.
    if any(isinstance(a, f.StopServer) for a in actions):
        assert m.state in (State.UNSERVED, State.REFUSED) and m.generation == -1
    # The supervisor hears of every change of "registered", and only of those.
    reports = [a for a in actions if isinstance(a, f.ReportReady)]
    changed = (state is State.REGISTERED) != (m.state is State.REGISTERED)
    assert len(reports) == int(changed)
    if reports:
        assert reports[0].registered is (m.state is State.REGISTERED) and reports[0].reason


def test_the_table_names_only_real_states_and_kinds() -> None:
    for (state, kind), row in TABLE.items():
        assert isinstance(state, State) and isinstance(kind, Kind) and row.to and row.what
    assert all((s, Kind.STOP) in TABLE for s in State if s is not State.STOPPED)
    assert not [k for (s, k) in TABLE if s is State.STOPPED]


@pytest.mark.parametrize("wrong", ["state", "action"])
def test_an_illegal_move_or_action_raises(wrong: str) -> None:
    m, clock = drive(State.REGISTERED, "classic")
    pair = (State.REGISTERED, Kind.KUBELET_RESTART)
    original = TABLE[pair]
    if wrong == "state":
        TABLE[pair] = Row(original.handler, frozenset({State.STOPPED}), original.emits, "")
    else:
        TABLE[pair] = Row(original.handler, original.to, frozenset(), "")
    try:
        m.stream = StreamSeen.NONE
        with pytest.raises(RegistrationError):
            m.handle(f.KubeletRestart("kubelet.sock replaced", clock.now + 1))
    finally:
        TABLE[pair] = original


# ---- behaviours ------------------------------------------------------------------------------


def test_a_slow_kubelet_registers_exactly_once() -> None:
    # The kubelet takes seconds to dial back inside Register; meanwhile the stat backstop
    # reports the kubelet.sock it restarted with (older than our Register). The attempt in
    # flight must not be lost, nor the new stream ended.
    m, clock = drive(State.REGISTERING, "classic")
    claim = m.claim
    clock.advance(1.5)
    assert m.handle(f.KubeletRestart("kubelet.sock replaced", clock.now - 2.0)) == []
    clock.advance(2.0)
    assert m.handle(StreamOpened(1, claim)) == []
    actions = m.handle(RegisterDone(1, 1, sent_at=clock.now - 3.5))
    assert m.state is State.REGISTERED
    assert not _registers(actions) and not any(isinstance(a, f.StopServer) for a in actions)
    assert f.ReportReady(True, "registered") in actions
    # And once registered with a live stream, a newer restart signal is only noted.
    assert m.handle(f.KubeletRestart("kubelet.sock replaced", clock.now)) == []
    assert m.state is State.REGISTERED


def test_a_restart_before_our_register_went_out_does_not_cancel_it() -> None:
    # A restart before the Register went out concerns the kubelet it went to: nothing to do.
    m, clock = drive(State.REGISTERING, "classic")
    assert m.handle(f.KubeletRestart("kubelet.sock created", clock.now - 1.0)) == []
    assert not m.restart_pending and m.inflight is not None


def test_a_register_sent_to_the_previous_kubelet_is_abandoned_at_once() -> None:
    # A real kubelet stopping can hold our Register until it dies: ~1 s lost per restart.
    m, clock = drive(State.REGISTERING, "classic")
    clock.advance(0.05)
    actions = m.handle(f.KubeletRestart("kubelet.sock replaced", clock.now))
    (register,) = _registers(actions)
    assert register.attempt == 2
    # The abandoned one's late answer changes nothing.
    assert m.handle(RegisterDone(1, 1, sent_at=clock.now)) == []
    assert m.state is State.REGISTERING


@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(lambda m, c: f.KubeletRestart("kubelet.sock created", c.now), id="restart"),
        pytest.param(lambda m, c: f.OwnSocketGone("wiped"), id="own-socket-gone"),
    ],
)
def test_every_restart_signal_resets_the_backoff(signal) -> None:  # type: ignore[no-untyped-def]
    m, clock = drive(State.BACKING_OFF, "classic")
    for _ in range(8):  # the kubelet stays away: the backoff grows to its cap
        clock.advance(5)
        (register,) = _registers(m.handle(f.TimerDue()))
        delay = _timer(m.handle(RegisterDone(register.attempt, register.generation, "absent")))
    assert delay == TIMINGS.backoff_cap
    clock.advance(0.1)
    actions = m.handle(signal(m, clock))
    if isinstance(actions[-1], f.Serve):  # our socket was wiped: serve afresh first
        actions = m.handle(f.Served(m.generation + 2))  # no self-check: one passed already
    (register,) = _registers(actions)  # tried at once, not after the 1 s cap
    delay = _timer(m.handle(RegisterDone(register.attempt, register.generation, "absent")))
    young = m.kubelet_at == clock.now  # a new kubelet.sock: its kubelet may not listen yet
    assert delay == (TIMINGS.young_retry if young else TIMINGS.backoff_first)


def test_a_failure_against_a_young_kubelet_is_retried_soon() -> None:
    """A starting kubelet binds kubelet.sock a moment before it listens (a real one, loaded, took
    tens of ms): 10 ms doubling while it is young, the usual backoff after."""
    m, clock = drive(State.BACKING_OFF, "classic")
    (register,) = _registers(m.handle(f.KubeletRestart("kubelet.sock created", clock.now)))
    delays = []
    for _ in range(4):
        delays.append(_timer(m.handle(RegisterDone(register.attempt, m.generation, "refused"))))
        clock.advance(delays[-1] or 0)
        (register,) = _registers(m.handle(f.TimerDue()))
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08])
    clock.advance(TIMINGS.young_kubelet)
    assert _timer(m.handle(RegisterDone(register.attempt, m.generation, "refused"))) == 0.8


def test_the_kubelets_stream_lost_resets_the_backoff_and_registers_at_once() -> None:
    m, _clock = drive(State.REGISTERED, "classic")
    m.backoff.failures = 10
    actions = m.handle(StreamLost(1, m.claim))
    assert len(_registers(actions)) == 1 and m.backoff.failures == 0
    assert f.ReportReady(False, "stream broke") in actions


def test_a_stream_not_the_current_registrations_is_ignored() -> None:
    m, _ = drive(State.REGISTERED, "classic")
    assert m.handle(StreamLost(1, m.claim - 1)) == []  # an older registration's
    assert m.handle(StreamLost(0, m.claim)) == []  # a replaced server's
    assert m.state is State.REGISTERED


def test_a_restart_signal_older_than_our_registration_changes_nothing() -> None:
    # kubelet.sock was re-created, we registered with the new kubelet, and only then the stat
    # look (or a late inotify read) reports the new socket: no second registration.
    m, clock = drive(State.REGISTERED, "classic")
    m.stream = StreamSeen.NONE  # its stream is not open yet
    assert m.handle(f.KubeletRestart("kubelet.sock replaced", m.sent_at - 0.001)) == []
    assert m.state is State.REGISTERED
    # A newer one, with no stream: register again.
    assert len(_registers(m.handle(f.KubeletRestart("replaced", clock.now + 1)))) == 1


def test_registered_without_the_kubelets_stream_registers_again_after_the_grace() -> None:
    m, clock = drive(State.REGISTERING, "classic")
    actions = m.handle(RegisterDone(1, 1, sent_at=clock.now))
    assert m.state is State.REGISTERED and _timer(actions) == TIMINGS.stream_grace
    clock.advance(TIMINGS.stream_grace)
    actions = m.handle(f.TimerDue())
    assert len(_registers(actions)) == 1 and f.ReportReady(False, "no stream") in actions


def test_a_stream_ended_during_register_registers_again() -> None:
    m, clock = drive(State.REGISTERING, "classic")
    m.handle(StreamOpened(1, m.claim))
    m.handle(StreamLost(1, m.claim))
    actions = m.handle(RegisterDone(1, 1, sent_at=clock.now))
    assert len(_registers(actions)) == 1 and m.state is State.REGISTERING


def test_a_success_for_a_replaced_server_is_adopted_when_the_kubelet_streams_from_ours() -> None:
    m, _clock = drive(State.ADOPTING, "classic")
    actions = m.handle(StreamOpened(2, m.claim))
    assert m.state is State.REGISTERED and f.Count("registrations_ok") in actions
    m2, clock2 = drive(State.ADOPTING, "classic")
    clock2.advance(TIMINGS.adopt_wait)
    assert len(_registers(m2.handle(f.TimerDue()))) == 1


def test_a_refusal_backs_off_slowly_and_is_reported_once() -> None:
    m, clock = drive(State.REFUSED, "classic")
    reports = 0
    for _ in range(12):
        clock.advance(60)
        (register,) = _registers(m.handle(f.TimerDue()))
        actions = m.handle(RegisterDone(register.attempt, 1, "UNKNOWN: no", refused=True))
        reports += sum(isinstance(a, f.ReportError) for a in actions)
        assert m.state is State.REFUSED
    assert reports == 0  # the first refusal (in drive) was the one report
    assert _timer(actions) == TIMINGS.refused_backoff_cap


def test_classic_self_checks_only_until_a_server_of_ours_answered() -> None:
    m, _ = drive(State.REGISTERED, "classic")
    m.handle(f.OwnSocketGone("wiped by a restarting kubelet"))
    (register,) = _registers(m.handle(f.Served(2)))  # straight to Register
    m.handle(RegisterDone(register.attempt, 2, "UNKNOWN: cannot dial", refused=True))
    m.handle(f.OwnSocketGone("wiped"))
    assert f.SelfCheck(3) in m.handle(f.Served(3))  # after a refusal: check again


def test_watcher_refusal_recreates_the_socket_after_the_backoff() -> None:
    m, _clock = drive(State.AWAITING_WATCHER, "watcher")
    actions = m.handle(WatcherStatus(1, False, "no"))
    assert f.StopServer() in actions and m.state is State.REFUSED
    assert any(isinstance(a, f.ReportError) for a in actions)
    assert m.handle(f.TimerDue()) == [f.CancelTimer(), f.Serve()]


def test_watcher_restart_signal_with_a_live_stream_is_only_noted() -> None:
    m, _ = drive(State.REGISTERED, "watcher")
    assert m.handle(f.KubeletRestart("kubelet.sock replaced", 1e9)) == []


def test_watcher_grace_counts_from_the_new_kubelets_arrival() -> None:
    """The kubelet was away longer than the grace: re-serving as it arrives made its plugin
    watcher miss the old socket (~1 s with a real kubelet), so the grace restarts with it."""
    m, clock = drive(State.REGISTERED, "watcher")
    assert _timer(m.handle(StreamLost(1, m.claim))) == TIMINGS.stream_grace
    clock.advance(0.9)
    assert _timer(m.handle(f.KubeletRestart("kubelet.sock created", clock.now))) == pytest.approx(
        TIMINGS.stream_grace
    )
    clock.advance(0.1)  # the timer set at the stream's end: the new kubelet gets the rest
    assert _timer(m.handle(f.TimerDue())) == pytest.approx(0.9)
    assert m.state is State.AWAITING_WATCHER
    m.handle(StreamOpened(1, m.claim + 1))
    m.handle(WatcherStatus(1, True, ""))
    assert m.registered


def test_watcher_without_a_call_in_the_grace_serves_afresh() -> None:
    m, clock = drive(State.REGISTERED, "watcher")
    m.handle(StreamLost(1, m.claim))
    m.handle(f.KubeletRestart("kubelet.sock created", clock.now))
    clock.advance(TIMINGS.stream_grace)
    assert f.Serve() in m.handle(f.TimerDue())
    assert m.state is State.UNSERVED


# ---- the table in docs/worker.md ------------------------------------------------------------

BEGIN = "<!-- registration-table:begin (generated from workers.registration_machine.TABLE) -->"
END = "<!-- registration-table:end -->"


def render_table() -> str:
    """`TABLE` as docs/worker.md shows it: equal rows of one event kind share a line."""
    lines: dict[tuple[Kind, Row], list[State]] = {}
    for (state, kind), row in TABLE.items():
        lines.setdefault((kind, row), []).append(state)
    out = [
        "| state | event | next state | handler | actions | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for (kind, row), states in lines.items():
        out.append(
            "| "
            + " | ".join(
                (
                    ", ".join(f"`{s.value}`" for s in states),
                    kind.value,
                    ", ".join(f"`{s.value}`" for s in sorted(row.to, key=lambda s: s.value)),
                    f"`{row.handler.__name__}`",
                    ", ".join(sorted(f"`{a.__name__}`" for a in row.emits)) or "none",
                    row.what,
                )
            )
            + " |"
        )
    return "\n".join(out)


def test_the_documented_table_is_the_codes() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text
    documented = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert documented == render_table(), (
        "docs/worker.md's registration table differs from the code; replace it with:\n"
        + render_table()
    )


if __name__ == "__main__":  # print the table for docs/worker.md
    print(render_table())
