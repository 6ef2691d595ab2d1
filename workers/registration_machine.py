"""The worker's registration with the kubelet as a state machine (worker process, main thread).

Pure: events in, actions out, an injected clock; no gRPC, no ZeroMQ, no files. The shell
(`workers.worker`) turns actions into serving, helper threads and messages, and feeds back what
happened; the events and actions are `workers.registration_io`.

Read it top to bottom: the states, the machine's memory and the moves its handlers share, the
handlers (one per row, or per group of rows that do the same), the two registration modes as
small policies (`Classic`, `Watcher`: everything the modes do differently), and last `TABLE`,
which maps (state, event kind) to its handler, the states it may move to and the actions it may
emit. A pair not in the table is ignored (no move, no action); a handler that moves elsewhere or
emits an action its row does not name raises `RegistrationError`. Two rules apply to every row,
in `RegistrationMachine.handle`: a move to another state cancels the timer (unless the handler
set one), and a move into or out of `registered` reports `ready`. docs/worker.md shows `TABLE`
(a test checks they agree).

Rules the table encodes:
- One Register in flight at a time (two make the kubelet replace our endpoint back and forth).
  A new `kubelet.sock` created after it went out (a newer kubelet) abandons it at once.
- Only the kubelet's stream counts: each registration has a claim number; the first stream opened
  after the claim was armed (right before Register is sent, or by the plugin watcher's GetInfo)
  is the kubelet's, and only its opening and end reach this machine (`StreamHub`).
- The kubelet's live stream proves the registration: a kubelet-restart signal or kubelet.sock
  going away is then only noted. Registering again beside a live stream makes kubelets
  1.26-1.35 drop the *new* registration when the old stream ends (kubernetes#121994).
- Every restart signal (a new kubelet.sock, our socket removed, the kubelet's stream lost) resets
  the backoff: the new kubelet is tried at once.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.loop import backoff
from common.loop.backoff import Backoff
from common.loop.throttle import LogThrottle
from workers.events import RegisterDone, SelfCheckDone, StreamLost, StreamOpened, WatcherStatus
from workers.registration_io import (
    Action,
    CancelTimer,
    Count,
    Event,
    Kind,
    KubeletGone,
    KubeletRestart,
    OwnSocketGone,
    Register,
    ReportError,
    ReportReady,
    Reset,
    SelfCheck,
    Serve,
    Served,
    ServeFailed,
    SetTimer,
    Stop,
    StopServer,
    TimerDue,
    kind_of,
)
from workers.timings import WorkerTimings

LOG = logging.getLogger("workers.registration")


class State(enum.Enum):
    UNSERVED = "unserved"  # no server on our socket: serve (now, or when the timer fires)
    SELF_CHECKING = "self-checking"  # served; asking our own socket whether it answers
    REGISTERING = "registering"  # classic: a Register is in flight
    AWAITING_WATCHER = "awaiting-watcher"  # watcher: served and checked; the kubelet is to call
    ADOPTING = "adopting"  # a Register for a replaced server succeeded: waiting for its stream
    REGISTERED = "registered"
    BACKING_OFF = "backing-off"  # an attempt failed (kubelet absent): retry when the timer fires
    REFUSED = "refused"  # the kubelet said no: retry with the slow backoff
    STOPPED = "stopped"


class StreamSeen(enum.Enum):
    NONE = "none"  # the kubelet's stream of the current claim has not opened (yet)
    LIVE = "live"
    ENDED = "ended"


class RegistrationError(RuntimeError):
    """A handler moved or acted where its row in `TABLE` does not allow: a bug in this module."""


@dataclass(frozen=True)
class _Attempt:
    number: int
    generation: int
    claim: int
    started: float


class RegistrationMachine:
    """`handle` one event, get the actions."""

    def __init__(self, timings: WorkerTimings, clock: Callable[[], float] = time.monotonic) -> None:
        self.t = timings
        self.clock = clock
        self.state = State.UNSERVED
        self.policy: Policy = CLASSIC
        self.generation = -1  # the server serving our socket now; -1: none
        self.attempt = 0
        self.claim = 0  # the registration whose stream is the kubelet's
        self.stream = StreamSeen.NONE
        self.inflight: _Attempt | None = None
        self.restart_pending = False  # a restart signal arrived while `inflight` was out
        self.sent_at = float("-inf")  # when the Register of the current registration was sent
        self.kubelet_at = float("-inf")  # when the newest kubelet.sock appeared (our clock)
        self.adoptable: tuple[_Attempt, float] | None = None  # (attempt, until)
        self.backoff = Backoff(timings.backoff_first, timings.backoff_cap)
        self.serve_backoff = Backoff(timings.backoff_first, timings.backoff_cap)
        self.refused = False  # this run of failures includes a refusal: the slow cap applies
        self.refusal_reported = False
        #: A self-check of one of our servers passed (and no refusal since): classic mode skips
        #: the self-check of the next one.
        self.server_trusted = False
        self.reason = ""
        self._throttle = LogThrottle(timings.log_repeat, clock)

    @property
    def registered(self) -> bool:
        return self.state is State.REGISTERED

    @property
    def mode(self) -> str:
        return self.policy.name

    # ---- the one entry point ------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        kind = kind_of(event)
        before = self.state
        row = TABLE.get((before, kind))
        if row is None:
            LOG.debug("ignored %s in state %s", kind.value, before.value)
            return []
        actions = row.handler(self, event)
        if self.state not in row.to:
            raise RegistrationError(f"{before.value} --{kind.value}--> {self.state.value}")
        stray = {type(a).__name__ for a in actions} - {a.__name__ for a in row.emits}
        if stray:
            raise RegistrationError(f"{before.value} --{kind.value}--> emitted {sorted(stray)}")
        if self.state is not before:
            LOG.debug("%s --%s--> %s", before.value, kind.value, self.state.value)
            if not any(isinstance(a, SetTimer) for a in actions):
                actions.insert(0, CancelTimer())
            if (before is State.REGISTERED) != (self.state is State.REGISTERED):
                actions.append(ReportReady(self.registered, self.reason))
        return actions

    # ---- the moves the handlers share ---------------------------------------------------------

    def move(self, state: State, reason: str = "") -> None:
        self.state = state
        if reason:
            self.reason = reason

    def register(self, reason: str = "") -> list[Action]:
        self.attempt += 1
        self.claim += 1
        self.stream = StreamSeen.NONE
        self.restart_pending = False
        self.inflight = _Attempt(self.attempt, self.generation, self.claim, self.clock())
        self.move(State.REGISTERING, reason)
        return [Register(self.attempt, self.generation, self.claim)]

    def serve_afresh(self, reason: str) -> list[Action]:
        actions: list[Action] = [StopServer()] if self.generation >= 0 else []
        self.generation = -1
        self.stream = StreamSeen.NONE
        self.move(State.UNSERVED, reason)
        return [*actions, Serve()]

    def serve_now(self) -> list[Action]:
        """From a state without a server of ours: serve (no server to stop)."""
        self.move(State.UNSERVED)
        return [Serve()]

    def await_watcher(self, reason: str) -> list[Action]:
        self.move(State.AWAITING_WATCHER, reason)
        return []

    def reset_backoff(self) -> None:
        """A restart signal: whatever the previous kubelet said, the new one is tried at once."""
        self.backoff.reset()
        self.serve_backoff.reset()
        self.refused = False
        self.refusal_reported = False

    def registered_now(self, reason: str) -> list[Action]:
        self.backoff.reset()
        self.refused = False
        self.refusal_reported = False
        self.adoptable = None
        self._throttle.clear("register")
        self.move(State.REGISTERED, reason)
        return [Count("registrations_ok")]

    def failed(self, error: str, refused: bool) -> list[Action]:
        self.refused = self.refused or refused
        self.backoff.cap = self.t.refused_backoff_cap if self.refused else self.t.backoff_cap
        delay = self.backoff.next_delay()
        if not self.refused and self.clock() - self.kubelet_at < self.t.young_kubelet:
            delay = min(
                delay,
                backoff.delay(
                    self.backoff.failures - 1, initial=self.t.young_retry, cap=self.t.backoff_cap
                ),
            )
        actions: list[Action] = [Count("registrations_failed"), SetTimer(delay)]
        log = LOG.warning if self._throttle.allow("register") else LOG.debug
        log(
            "registration failed (%d in a row, next try in %.2fs): %s",
            self.backoff.failures,
            delay,
            error,
        )
        if refused and not self.refusal_reported:
            self.refusal_reported = True
            actions.append(ReportError("register_refused", error))
        return actions

    def checked(self) -> list[Action]:
        """Classic, the current server known to answer: register (or wait, or adopt)."""
        if self.inflight is not None:
            self.move(State.REGISTERING)  # the Register still out decides
            return []
        if self.adoptable is not None and self.clock() < self.adoptable[1]:
            if self.stream is StreamSeen.LIVE:
                return self.registered_now("registered")
            remaining = self.adoptable[1] - self.clock()
            self.move(State.ADOPTING)
            return [SetTimer(remaining)]
        self.adoptable = None
        return self.register()

    def watcher_grace_left(self) -> float:
        """Seconds until the newest kubelet has had the full grace to call GetInfo."""
        return max(0.0, self.kubelet_at + self.t.stream_grace - self.clock())

    def current(self, generation: int, claim: int | None = None) -> bool:
        return generation == self.generation and (claim is None or claim == self.claim)

    def take_inflight(self, attempt: int) -> _Attempt | None:
        current = self.inflight
        if current is None or current.number != attempt:
            return None  # abandoned, or older
        self.inflight = None
        return current


# ---- handlers: (machine, event) -> actions ------------------------------------------------------
# Serving.


def reset(m: RegistrationMachine, ev: Reset) -> list[Action]:
    m.policy = WATCHER if ev.mode == "watcher" else CLASSIC
    m.inflight = m.adoptable = None
    m.reset_backoff()
    return m.serve_afresh(ev.reason)


def served(m: RegistrationMachine, ev: Served) -> list[Action]:
    m.generation = ev.generation
    m.serve_backoff.reset()
    m.stream = StreamSeen.NONE
    return m.policy.served(m)


def serve_failed(m: RegistrationMachine, ev: ServeFailed) -> list[Action]:
    delay = m.t.in_use_retry if ev.in_use else m.serve_backoff.next_delay()
    return [SetTimer(delay)]


def serve_again(m: RegistrationMachine, ev: Any) -> list[Action]:
    return [Serve()]


def self_check_ok(m: RegistrationMachine, ev: SelfCheckDone) -> list[Action]:
    if not m.current(ev.generation):
        return []
    m.server_trusted = True
    return m.policy.self_check_ok(m)


def self_check_failed(m: RegistrationMachine, ev: SelfCheckDone) -> list[Action]:
    if not m.current(ev.generation):
        return []
    LOG.error("%s; serving afresh", ev.error)
    m.server_trusted = False
    actions = [StopServer(), *m.failed(ev.error, False)]
    m.generation = -1
    m.move(State.UNSERVED)
    return actions


# Timers.


def retry(m: RegistrationMachine, ev: Any) -> list[Action]:
    return m.register()


def retry_refused(m: RegistrationMachine, ev: Any) -> list[Action]:
    return m.policy.retry_refused(m)


def watcher_grace_over(m: RegistrationMachine, ev: TimerDue) -> list[Action]:
    left = m.watcher_grace_left()
    if left > 0:
        return [SetTimer(left)]  # a kubelet arrived since the timer was set
    LOG.warning("no plugin watcher called within %.1fs; serving afresh", m.t.stream_grace)
    return m.serve_afresh("no plugin watcher")


def adoption_expired(m: RegistrationMachine, ev: TimerDue) -> list[Action]:
    m.adoptable = None
    return m.register("adoption expired")


def stream_grace_over(m: RegistrationMachine, ev: TimerDue) -> list[Action]:
    return m.policy.stream_grace_over(m)


# A Register's outcome.


def register_ok(m: RegistrationMachine, ev: RegisterDone) -> list[Action]:
    done = m.take_inflight(ev.attempt)
    if done is None:
        return []
    m.sent_at = ev.sent_at
    if done.generation != m.generation:
        if m.stream is StreamSeen.LIVE:
            return m.registered_now("registered")
        m.adoptable = (done, m.clock() + m.t.adopt_wait)
        m.move(State.ADOPTING)
        return [SetTimer(m.t.adopt_wait)]
    if m.stream is StreamSeen.ENDED:
        LOG.warning("the kubelet ended our new stream during Register; registering again")
        return m.register("stream broke")
    actions = m.registered_now("registered")
    if m.stream is StreamSeen.NONE:
        # The kubelet opens ListAndWatch right after Register returns.
        actions.append(SetTimer(m.t.stream_grace))
    return actions


def register_ok_while_serving(m: RegistrationMachine, ev: RegisterDone) -> list[Action]:
    done = m.take_inflight(ev.attempt)
    if done is not None:
        # Registered while our server was being replaced: the kubelet dials the socket path
        # (retrying for up to 10 s), so it may well reach the new server.
        m.adoptable = (done, m.clock() + m.t.adopt_wait)
    return []


def register_failed(m: RegistrationMachine, ev: RegisterDone) -> list[Action]:
    done = m.take_inflight(ev.attempt)
    if done is None:
        return []
    if ev.superseded or done.generation != m.generation:
        return m.register()  # it said nothing about the current server
    if m.restart_pending:
        return m.register()  # sent before a restart signal: try the new kubelet now
    actions = m.failed(ev.error, ev.refused)
    if ev.refused:
        m.server_trusted = False  # perhaps the kubelet could not dial us: check the next
    m.move(State.REFUSED if m.refused else State.BACKING_OFF)
    return actions


def register_failed_while_serving(m: RegistrationMachine, ev: RegisterDone) -> list[Action]:
    m.take_inflight(ev.attempt)
    return []


# The kubelet's stream and the plugin watcher.


def stream_opened(m: RegistrationMachine, ev: StreamOpened) -> list[Action]:
    m.policy.stream_opened(m, ev)
    if m.current(ev.generation, ev.claim):
        m.stream = StreamSeen.LIVE
    return []


def stream_opened_adopting(m: RegistrationMachine, ev: StreamOpened) -> list[Action]:
    if not m.current(ev.generation, ev.claim):
        return []
    m.stream = StreamSeen.LIVE
    return m.registered_now("registered")


def _stream_ended(m: RegistrationMachine, ev: StreamLost) -> bool:
    """The kubelet's stream of the current claim ended: noted, the backoff reset."""
    if not m.current(ev.generation, ev.claim):
        return False
    m.stream = StreamSeen.ENDED
    m.reset_backoff()
    return True


def stream_lost_noted(m: RegistrationMachine, ev: StreamLost) -> list[Action]:
    _stream_ended(m, ev)
    return []  # in flight: the Register's outcome decides (it sees ENDED)


def stream_lost_self_checking(m: RegistrationMachine, ev: StreamLost) -> list[Action]:
    return m.policy.stream_lost_self_checking(m) if _stream_ended(m, ev) else []


def stream_lost_registered(m: RegistrationMachine, ev: StreamLost) -> list[Action]:
    return m.policy.stream_lost(m) if _stream_ended(m, ev) else []


def stream_lost_adopting(m: RegistrationMachine, ev: StreamLost) -> list[Action]:
    if not _stream_ended(m, ev):
        return []
    LOG.warning("ListAndWatch stream broke: the kubelet lost us; registering again")
    return m.register("stream broke")


def watcher_registered(m: RegistrationMachine, ev: WatcherStatus) -> list[Action]:
    if not m.current(ev.generation) or m.state is State.REGISTERED:
        return []
    return m.registered_now("registered by the plugin watcher")


def watcher_refused(m: RegistrationMachine, ev: WatcherStatus) -> list[Action]:
    if not m.current(ev.generation):
        return []
    error = ev.error or "no reason given"
    LOG.error("the kubelet refused the registration: %s; retrying with a new socket", error)
    actions: list[Action] = [StopServer(), *m.failed(error, True)]
    m.generation = -1
    m.stream = StreamSeen.NONE
    m.move(State.REFUSED, f"refused: {error}")
    return actions


# Kubelet restarts and sockets gone.


def _restarted(m: RegistrationMachine, ev: KubeletRestart) -> None:
    m.reset_backoff()
    m.kubelet_at = max(m.kubelet_at, ev.at)


def restart_noted(m: RegistrationMachine, ev: KubeletRestart) -> list[Action]:
    _restarted(m, ev)
    return []


def restart_serve_now(m: RegistrationMachine, ev: KubeletRestart) -> list[Action]:
    _restarted(m, ev)
    return [Serve()]


def restart_register_now(m: RegistrationMachine, ev: KubeletRestart) -> list[Action]:
    _restarted(m, ev)
    return m.register()


def restart_refused(m: RegistrationMachine, ev: KubeletRestart) -> list[Action]:
    _restarted(m, ev)
    return m.policy.retry_refused(m)


def restart_awaiting_watcher(m: RegistrationMachine, ev: KubeletRestart) -> list[Action]:
    # The grace for its plugin watcher counts from the new kubelet's arrival: counted from the
    # stream's end, it ran out while the kubelet was still away and the socket was made anew
    # just as the watcher found the old one (~1 s lost with a real kubelet).
    _restarted(m, ev)
    return [SetTimer(m.watcher_grace_left())]


def restart_registering(m: RegistrationMachine, ev: KubeletRestart) -> list[Action]:
    _restarted(m, ev)
    inflight = m.inflight
    if inflight is not None and ev.at <= inflight.started:
        return []  # that Register went out after the new kubelet.sock appeared
    if inflight is not None:
        # kubelet.sock is newer than our Register: that call went to the kubelet before, which
        # may never answer (a kubelet stopping holds the call until it dies). Waiting for it
        # cost ~1 s per restart with a real kubelet; the new kubelet gets its own Register now.
        LOG.info("%s after our Register went out: registering with the new kubelet", ev.reason)
        m.inflight = None
        return m.register()
    m.restart_pending = True
    return []


def restart_registered(m: RegistrationMachine, ev: KubeletRestart) -> list[Action]:
    _restarted(m, ev)
    if ev.at <= m.sent_at:
        LOG.info("%s; already registered with this kubelet", ev.reason)
        return []
    if m.stream is StreamSeen.LIVE:
        LOG.info("%s, but the kubelet holds our live stream: it still has us", ev.reason)
        return []
    LOG.info("%s: the kubelet (re)started; registering again", ev.reason)
    return m.policy.kubelet_lost(m, "kubelet restarted")


def kubelet_gone(m: RegistrationMachine, ev: KubeletGone) -> list[Action]:
    if m.stream is StreamSeen.LIVE:
        LOG.warning("kubelet.sock went away, but our stream is live; watching")
        return []
    LOG.warning("kubelet.sock went away; waiting for the kubelet")
    return m.policy.kubelet_lost(m, "kubelet.sock gone")


def own_socket_free(m: RegistrationMachine, ev: OwnSocketGone) -> list[Action]:
    m.reset_backoff()
    return [Serve()]


def own_socket_gone(m: RegistrationMachine, ev: OwnSocketGone) -> list[Action]:
    m.reset_backoff()
    if m.generation < 0:
        return []  # refused in watcher mode: we removed it ourselves
    LOG.warning("%s; serving again", ev.reason)
    m.generation = -1
    m.stream = StreamSeen.NONE
    m.move(State.UNSERVED, "own socket removed")
    return [Serve(relink=True)]


def stop(m: RegistrationMachine, ev: Stop) -> list[Action]:
    m.move(State.STOPPED, "stopped")
    return []


# ---- the two registration modes -----------------------------------------------------------------


class Classic:
    """`Register` on kubelet.sock; the kubelet dials back and opens ListAndWatch."""

    name = "classic"

    def served(self, m: RegistrationMachine) -> list[Action]:
        if m.server_trusted:
            # Our servers answer (one did): after a kubelet's wipe every millisecond counts
            # before its re-admission of pods, and the kubelet's dial-back checks this one.
            return m.checked()
        m.move(State.SELF_CHECKING)
        return [SelfCheck(m.generation)]

    def self_check_ok(self, m: RegistrationMachine) -> list[Action]:
        return m.checked()

    def retry_refused(self, m: RegistrationMachine) -> list[Action]:
        return m.register()

    def stream_grace_over(self, m: RegistrationMachine) -> list[Action]:
        if m.stream is not StreamSeen.NONE:
            return []
        LOG.warning(
            "no ListAndWatch stream %.1fs after registering: the kubelet lost us; "
            "registering again",
            m.t.stream_grace,
        )
        return m.register("no stream")

    def stream_opened(self, m: RegistrationMachine, ev: StreamOpened) -> None:
        pass  # the claim was armed right before our Register

    def stream_lost(self, m: RegistrationMachine) -> list[Action]:
        LOG.warning("ListAndWatch stream broke: the kubelet lost us; registering again")
        return m.register("stream broke")

    def stream_lost_self_checking(self, m: RegistrationMachine) -> list[Action]:
        return []  # the check's outcome leads to a Register anyway

    def kubelet_lost(self, m: RegistrationMachine, reason: str) -> list[Action]:
        return m.register(reason)  # fails fast until kubelet.sock is back


class Watcher:
    """Our socket in the plugins-registry folder; the kubelet's plugin watcher calls GetInfo."""

    name = "watcher"

    def served(self, m: RegistrationMachine) -> list[Action]:
        m.move(State.SELF_CHECKING)
        return [SelfCheck(m.generation)]

    def self_check_ok(self, m: RegistrationMachine) -> list[Action]:
        return m.await_watcher("")

    def retry_refused(self, m: RegistrationMachine) -> list[Action]:
        return m.serve_now()  # the server was stopped at the refusal: a new socket to see

    def stream_grace_over(self, m: RegistrationMachine) -> list[Action]:
        return []  # not armed in this mode: the plugin watcher's answer is the proof

    def stream_opened(self, m: RegistrationMachine, ev: StreamOpened) -> None:
        if m.current(ev.generation):
            # The plugin watcher armed this claim with its GetInfo: a kubelet (perhaps a
            # restarted one) is registering the socket we serve.
            m.claim = ev.claim

    def stream_lost(self, m: RegistrationMachine) -> list[Action]:
        # A restarted kubelet's plugin watcher finds the socket we serve and calls GetInfo;
        # only if none does within the grace is the socket made anew for it to see.
        LOG.warning("ListAndWatch stream broke: the kubelet lost us; waiting for its watcher")
        m.move(State.AWAITING_WATCHER, "stream broke")
        return [SetTimer(m.t.stream_grace)]

    def stream_lost_self_checking(self, m: RegistrationMachine) -> list[Action]:
        return m.serve_afresh("stream broke")

    def kubelet_lost(self, m: RegistrationMachine, reason: str) -> list[Action]:
        return m.await_watcher(reason)


Policy = Classic | Watcher
CLASSIC, WATCHER = Classic(), Watcher()


# ---- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    handler: Callable[[RegistrationMachine, Any], list[Action]]
    to: frozenset[State]  # the states it may move to
    emits: frozenset[type]  # the actions it may return (besides the two rules of `handle`)
    what: str  # what it does, for docs/worker.md


def _row(
    handler: Callable[[RegistrationMachine, Any], list[Action]],
    to: tuple[State, ...],
    emits: tuple[type, ...],
    what: str,
) -> Row:
    return Row(handler, frozenset(to), frozenset(emits), what)


S, K = State, Kind
_SERVED = (S.SELF_CHECKING, S.REGISTERING, S.AWAITING_WATCHER, S.ADOPTING, S.REGISTERED)
_LIVE = (*_SERVED, S.BACKING_OFF, S.REFUSED)
_ALL_BUT_STOPPED = (S.UNSERVED, *_LIVE)

TABLE: dict[tuple[State, Kind], Row] = {
    **{
        (s, K.RESET): _row(
            reset,
            (S.UNSERVED,),
            (StopServer, Serve),
            "take the mode; stop the server if any; forget the attempt in flight; reset the "
            "backoff; serve",
        )
        for s in _ALL_BUT_STOPPED
    },
    # Serving and checking our own socket.
    (S.UNSERVED, K.SERVED): _row(
        served,
        (S.SELF_CHECKING, S.REGISTERING, S.ADOPTING, S.REGISTERED),
        (SelfCheck, Register, SetTimer, Count),
        "classic, once a server of ours passed its self-check (and no refusal since): as after "
        "a self-check; else self-check the new server",
    ),
    (S.UNSERVED, K.SERVE_FAILED): _row(
        serve_failed,
        (S.UNSERVED,),
        (SetTimer,),
        "timer: serve backoff (5 s when another live server holds the path)",
    ),
    (S.UNSERVED, K.TIMER): _row(serve_again, (S.UNSERVED,), (Serve,), "serve"),
    (S.SELF_CHECKING, K.SELF_CHECK_OK): _row(
        self_check_ok,
        (S.SELF_CHECKING, S.AWAITING_WATCHER, S.REGISTERING, S.ADOPTING, S.REGISTERED),
        (Register, SetTimer, Count),
        "stale: nothing; watcher: wait for the plugin watcher; classic: a Register still out: "
        "wait for it; a success for the replaced server within 200 ms: adopt (registered if "
        "its stream is live); else Register",
    ),
    (S.SELF_CHECKING, K.SELF_CHECK_FAILED): _row(
        self_check_failed,
        (S.SELF_CHECKING, S.UNSERVED),
        (StopServer, Count, SetTimer),
        "stale generation: nothing; else stop the server, count a failure, serve after the backoff",
    ),
    # Timers.
    (S.ADOPTING, K.TIMER): _row(
        adoption_expired, (S.REGISTERING,), (Register,), "adoption expired: Register"
    ),
    (S.AWAITING_WATCHER, K.TIMER): _row(
        watcher_grace_over,
        (S.AWAITING_WATCHER, S.UNSERVED),
        (SetTimer, StopServer, Serve),
        "a new kubelet.sock appeared less than the grace (1 s) ago: wait out the rest; else no "
        "plugin watcher called within the grace after the kubelet's stream broke: serve "
        "afresh, a new socket for it to see",
    ),
    (S.REGISTERED, K.TIMER): _row(
        stream_grace_over,
        (S.REGISTERED, S.REGISTERING),
        (Register,),
        "classic, no stream of the kubelet since Register (grace 1 s): Register; else nothing",
    ),
    (S.BACKING_OFF, K.TIMER): _row(retry, (S.REGISTERING,), (Register,), "Register"),
    (S.REFUSED, K.TIMER): _row(
        retry_refused,
        (S.REGISTERING, S.UNSERVED),
        (Register, Serve),
        "classic: Register; watcher: serve",
    ),
    # A Register's outcome.
    (S.REGISTERING, K.REGISTER_OK): _row(
        register_ok,
        (S.REGISTERING, S.REGISTERED, S.ADOPTING),
        (Register, SetTimer, Count),
        "not the attempt in flight: nothing; for a replaced server: registered if the kubelet "
        "streams from ours, else adopting (200 ms); the claim's stream already ended: Register "
        "again; else registered (timer: stream grace)",
    ),
    (S.UNSERVED, K.REGISTER_OK): _row(
        register_ok_while_serving, (S.UNSERVED,), (), "remember it for adoption (200 ms)"
    ),
    (S.SELF_CHECKING, K.REGISTER_OK): _row(
        register_ok_while_serving, (S.SELF_CHECKING,), (), "remember it for adoption (200 ms)"
    ),
    (S.REGISTERING, K.REGISTER_FAILED): _row(
        register_failed,
        (S.REGISTERING, S.BACKING_OFF, S.REFUSED),
        (Register, Count, SetTimer, ReportError),
        "not the attempt in flight: nothing; its server replaced, or a restart signal since it "
        "went out: Register again now; else count, back off (30 s cap once refused; report "
        "`register_refused` once per run)",
    ),
    (S.UNSERVED, K.REGISTER_FAILED): _row(
        register_failed_while_serving, (S.UNSERVED,), (), "forget the attempt"
    ),
    (S.SELF_CHECKING, K.REGISTER_FAILED): _row(
        register_failed_while_serving, (S.SELF_CHECKING,), (), "forget the attempt"
    ),
    # The kubelet's stream.
    **{
        (s, K.STREAM_OPENED): _row(
            stream_opened,
            (s,),
            (),
            "the kubelet's stream of the current claim is live (watcher: the claim the plugin "
            "watcher's GetInfo armed)",
        )
        for s in _LIVE
        if s is not S.ADOPTING
    },
    (S.ADOPTING, K.STREAM_OPENED): _row(
        stream_opened_adopting,
        (S.ADOPTING, S.REGISTERED),
        (Count,),
        "on the current server: registered",
    ),
    **{
        (s, K.STREAM_LOST): _row(
            stream_lost_noted,
            (s,),
            (),
            "the claim's stream ended: nothing now (reset the backoff; a Register in flight "
            "sees it in its outcome)",
        )
        for s in (S.REGISTERING, S.BACKING_OFF, S.REFUSED)
    },
    (S.SELF_CHECKING, K.STREAM_LOST): _row(
        stream_lost_self_checking,
        (S.SELF_CHECKING, S.UNSERVED),
        (StopServer, Serve),
        "reset the backoff; watcher: serve afresh; classic: nothing",
    ),
    (S.AWAITING_WATCHER, K.STREAM_LOST): _row(
        stream_lost_registered,
        (S.AWAITING_WATCHER,),
        (SetTimer,),
        "reset the backoff; timer: grace (1 s) for a plugin watcher to call",
    ),
    (S.ADOPTING, K.STREAM_LOST): _row(
        stream_lost_adopting, (S.ADOPTING, S.REGISTERING), (Register,), "Register"
    ),
    (S.REGISTERED, K.STREAM_LOST): _row(
        stream_lost_registered,
        (S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
        (Register, SetTimer),
        "reset the backoff; classic: Register; watcher: wait 1 s for a plugin watcher's "
        "GetInfo (a restarted kubelet finds the socket we serve), then serve afresh",
    ),
    # The plugin watcher's answer.
    **{
        (s, K.WATCHER_REGISTERED): _row(
            watcher_registered, (s, S.REGISTERED), (Count,), "count; report ready"
        )
        for s in (S.SELF_CHECKING, S.AWAITING_WATCHER, S.REGISTERED)
    },
    **{
        (s, K.WATCHER_REFUSED): _row(
            watcher_refused,
            (s, S.REFUSED),
            (StopServer, Count, SetTimer, ReportError),
            "count; stop the server; report `register_refused` once; re-serve after the slow "
            "backoff",
        )
        for s in (S.SELF_CHECKING, S.AWAITING_WATCHER, S.REGISTERED)
    },
    # Kubelet restarts.
    (S.UNSERVED, K.KUBELET_RESTART): _row(
        restart_serve_now, (S.UNSERVED,), (Serve,), "reset the backoff; serve now"
    ),
    (S.SELF_CHECKING, K.KUBELET_RESTART): _row(
        restart_noted, (S.SELF_CHECKING,), (), "reset the backoff"
    ),
    (S.REGISTERING, K.KUBELET_RESTART): _row(
        restart_registering,
        (S.REGISTERING,),
        (Register,),
        "reset the backoff; the new kubelet.sock predates the Register: nothing; else the "
        "Register went to the previous kubelet: abandon it, Register",
    ),
    (S.AWAITING_WATCHER, K.KUBELET_RESTART): _row(
        restart_awaiting_watcher,
        (S.AWAITING_WATCHER,),
        (SetTimer,),
        "reset the backoff; timer: the grace (1 s) for the new kubelet's plugin watcher, "
        "counted from its kubelet.sock",
    ),
    (S.ADOPTING, K.KUBELET_RESTART): _row(
        restart_register_now, (S.REGISTERING,), (Register,), "reset the backoff; Register"
    ),
    (S.REGISTERED, K.KUBELET_RESTART): _row(
        restart_registered,
        (S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
        (Register,),
        "reset the backoff; predates our Register, or the kubelet's stream is live: only "
        "noted; else classic: Register, watcher: wait for the plugin watcher",
    ),
    (S.BACKING_OFF, K.KUBELET_RESTART): _row(
        restart_register_now, (S.REGISTERING,), (Register,), "reset the backoff; Register now"
    ),
    (S.REFUSED, K.KUBELET_RESTART): _row(
        restart_refused,
        (S.REGISTERING, S.UNSERVED),
        (Register, Serve),
        "reset the backoff; classic: Register now; watcher: serve now",
    ),
    (S.REGISTERED, K.KUBELET_GONE): _row(
        kubelet_gone,
        (S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
        (Register,),
        "the kubelet's stream live: only noted; else lose the registration (classic: "
        "Register, which fails fast until kubelet.sock is back; watcher: wait for the plugin "
        "watcher)",
    ),
    # Our own socket.
    (S.UNSERVED, K.OWN_SOCKET_GONE): _row(
        own_socket_free,
        (S.UNSERVED,),
        (Serve,),
        "the path came free: reset the backoff; serve now",
    ),
    **{
        (s, K.OWN_SOCKET_GONE): _row(
            own_socket_gone,
            (S.UNSERVED,),
            (Serve,),
            "reset the backoff; serve again: re-link our name to the server we run (its kept "
            "private name survives a kubelet's wipe), else stop it and serve anew",
        )
        for s in (*_SERVED, S.BACKING_OFF)
    },
    (S.REFUSED, K.OWN_SOCKET_GONE): _row(
        own_socket_gone,
        (S.REFUSED, S.UNSERVED),
        (Serve,),
        "watcher (our server already stopped): nothing; classic: serve afresh",
    ),
    **{
        (s, K.STOP): _row(stop, (S.STOPPED,), (), "nothing more: the shell shuts down")
        for s in _ALL_BUT_STOPPED
    },
}
