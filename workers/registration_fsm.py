"""The worker's registration with the kubelet as a state machine (worker process, main thread).

Pure: events in, actions out, an injected clock; no gRPC, no ZeroMQ, no files. The shell
(`workers.worker`) turns actions into serving, helper threads and messages, and feeds back what
happened. `TRANSITIONS` lists, for every (state, event kind) the machine acts on, the states it
may move to; a pair that is not listed is ignored (no move, no action). docs/worker.md shows the
same table, and a test checks the two agree.

Rules the table encodes:
- One Register in flight at a time (two make the kubelet replace our endpoint back and forth).
  A `reregister` or a kubelet-restart signal while one is in flight never cancels it: its outcome
  decides. Only one still running `stuck_attempt` after a *later* restart signal is abandoned.
- Only the kubelet's stream counts: each registration has a claim number; the first stream opened
  after the claim was armed (right before Register is sent, or once served in watcher mode) is the
  kubelet's, and only its opening and end reach this machine (`StreamHub`).
- The kubelet's live stream proves the registration: a `reregister`, a kubelet-restart signal or
  kubelet.sock going away is then only noted. Registering again beside a live stream makes
  kubelets 1.26-1.35 drop the *new* registration when the old stream ends (kubernetes#121994).
- Every restart signal (a new kubelet.sock, our socket removed, the kubelet's stream lost) resets
  the backoff: the new kubelet is tried at once.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.loop.backoff import Backoff
from common.loop.throttle import LogThrottle
from workers.events import Event as ThreadEvent
from workers.events import RegisterDone, SelfCheckDone, StreamLost, StreamOpened, WatcherStatus
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


class Kind(enum.Enum):
    RESET = "reset"
    SERVED = "served"
    SERVE_FAILED = "serve failed"
    TIMER = "timer"
    SELF_CHECK_OK = "self-check ok"
    SELF_CHECK_FAILED = "self-check failed"
    REGISTER_OK = "register ok"
    REGISTER_FAILED = "register failed"
    STREAM_OPENED = "stream opened"
    STREAM_LOST = "stream lost"
    WATCHER_REGISTERED = "watcher registered"
    WATCHER_REFUSED = "watcher refused"
    KUBELET_RESTART = "kubelet restart"
    KUBELET_GONE = "kubelet gone"
    OWN_SOCKET_GONE = "own socket gone"
    REREGISTER = "reregister"
    STOP = "stop"


# ---- events the shell feeds in (besides the helper threads' `workers.events`) ---------------


@dataclass(frozen=True)
class Reset:
    """Configured, or where/how we register changed: serve afresh in `mode`."""

    mode: str  # "classic" or "watcher"
    reason: str


@dataclass(frozen=True)
class Served:
    generation: int


@dataclass(frozen=True)
class ServeFailed:
    in_use: bool  # another live server holds our socket path


@dataclass(frozen=True)
class TimerDue:
    pass


@dataclass(frozen=True)
class KubeletRestart:
    reason: str
    #: When the new kubelet.sock appeared (the clock's time; its ctime, converted): a
    #: registration sent after that went to the new kubelet already.
    at: float


@dataclass(frozen=True)
class KubeletGone:
    pass


@dataclass(frozen=True)
class OwnSocketGone:
    """Our server's socket was removed or replaced (or, unserved, the path came free)."""

    reason: str


@dataclass(frozen=True)
class ReregisterRequested:
    reason: str


@dataclass(frozen=True)
class Stop:
    pass


Event = (
    ThreadEvent
    | Reset
    | Served
    | ServeFailed
    | TimerDue
    | KubeletRestart
    | KubeletGone
    | OwnSocketGone
    | ReregisterRequested
    | Stop
)

# ---- actions the shell carries out ------------------------------------------------------------


@dataclass(frozen=True)
class Serve:
    pass


@dataclass(frozen=True)
class StopServer:
    pass


@dataclass(frozen=True)
class SelfCheck:
    generation: int


@dataclass(frozen=True)
class Register:
    """End the open streams, wait until they are over, arm `claim`, send Register."""

    attempt: int
    generation: int
    claim: int


@dataclass(frozen=True)
class ClaimStream:
    """Watcher mode: the next stream to open is the kubelet's, of registration `claim`."""

    claim: int


@dataclass(frozen=True)
class SetTimer:
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    pass


@dataclass(frozen=True)
class ReportReady:
    registered: bool
    reason: str


@dataclass(frozen=True)
class ReportError:
    code: str
    message: str


@dataclass(frozen=True)
class Count:
    name: str  # a `Counters` field: registrations_ok, registrations_failed


Action = (
    Serve
    | StopServer
    | SelfCheck
    | Register
    | ClaimStream
    | SetTimer
    | CancelTimer
    | ReportReady
    | ReportError
    | Count
)


def kind_of(event: Event) -> Kind:
    if isinstance(event, SelfCheckDone):
        return Kind.SELF_CHECK_FAILED if event.error else Kind.SELF_CHECK_OK
    if isinstance(event, RegisterDone):
        return Kind.REGISTER_FAILED if event.error or event.superseded else Kind.REGISTER_OK
    if isinstance(event, WatcherStatus):
        return Kind.WATCHER_REGISTERED if event.registered else Kind.WATCHER_REFUSED
    return _KINDS[type(event)]


_KINDS: dict[type, Kind] = {
    Reset: Kind.RESET,
    Served: Kind.SERVED,
    ServeFailed: Kind.SERVE_FAILED,
    TimerDue: Kind.TIMER,
    StreamOpened: Kind.STREAM_OPENED,
    StreamLost: Kind.STREAM_LOST,
    KubeletRestart: Kind.KUBELET_RESTART,
    KubeletGone: Kind.KUBELET_GONE,
    OwnSocketGone: Kind.OWN_SOCKET_GONE,
    ReregisterRequested: Kind.REREGISTER,
    Stop: Kind.STOP,
}

S, K = State, Kind
_SERVED = (S.SELF_CHECKING, S.REGISTERING, S.AWAITING_WATCHER, S.ADOPTING, S.REGISTERED)
_LIVE = (*_SERVED, S.BACKING_OFF, S.REFUSED)
_ALL_BUT_STOPPED = (S.UNSERVED, *_LIVE)


def _fs(*states: State) -> frozenset[State]:
    return frozenset(states)


TRANSITIONS: dict[tuple[State, Kind], frozenset[State]] = {
    **{(s, K.RESET): _fs(S.UNSERVED) for s in _ALL_BUT_STOPPED},
    (S.UNSERVED, K.SERVED): _fs(S.SELF_CHECKING),
    (S.UNSERVED, K.SERVE_FAILED): _fs(S.UNSERVED),
    (S.UNSERVED, K.TIMER): _fs(S.UNSERVED),
    (S.BACKING_OFF, K.TIMER): _fs(S.REGISTERING),
    (S.REFUSED, K.TIMER): _fs(S.REGISTERING, S.UNSERVED),
    (S.ADOPTING, K.TIMER): _fs(S.REGISTERING),
    (S.REGISTERED, K.TIMER): _fs(S.REGISTERED, S.REGISTERING),
    (S.SELF_CHECKING, K.SELF_CHECK_OK): _fs(
        S.SELF_CHECKING, S.AWAITING_WATCHER, S.REGISTERING, S.ADOPTING, S.REGISTERED
    ),
    (S.SELF_CHECKING, K.SELF_CHECK_FAILED): _fs(S.SELF_CHECKING, S.UNSERVED),
    (S.REGISTERING, K.REGISTER_OK): _fs(S.REGISTERING, S.REGISTERED, S.ADOPTING),
    (S.UNSERVED, K.REGISTER_OK): _fs(S.UNSERVED),
    (S.SELF_CHECKING, K.REGISTER_OK): _fs(S.SELF_CHECKING),
    (S.REGISTERING, K.REGISTER_FAILED): _fs(S.REGISTERING, S.BACKING_OFF, S.REFUSED),
    (S.UNSERVED, K.REGISTER_FAILED): _fs(S.UNSERVED),
    (S.SELF_CHECKING, K.REGISTER_FAILED): _fs(S.SELF_CHECKING),
    **{(s, K.STREAM_OPENED): _fs(s) for s in _LIVE},
    (S.ADOPTING, K.STREAM_OPENED): _fs(S.ADOPTING, S.REGISTERED),
    **{(s, K.STREAM_LOST): _fs(s) for s in _LIVE},
    (S.SELF_CHECKING, K.STREAM_LOST): _fs(S.SELF_CHECKING, S.UNSERVED),
    (S.AWAITING_WATCHER, K.STREAM_LOST): _fs(S.AWAITING_WATCHER, S.UNSERVED),
    (S.ADOPTING, K.STREAM_LOST): _fs(S.ADOPTING, S.REGISTERING),
    (S.REGISTERED, K.STREAM_LOST): _fs(S.REGISTERED, S.REGISTERING, S.UNSERVED),
    (S.SELF_CHECKING, K.WATCHER_REGISTERED): _fs(S.SELF_CHECKING, S.REGISTERED),
    (S.AWAITING_WATCHER, K.WATCHER_REGISTERED): _fs(S.AWAITING_WATCHER, S.REGISTERED),
    (S.REGISTERED, K.WATCHER_REGISTERED): _fs(S.REGISTERED),
    (S.SELF_CHECKING, K.WATCHER_REFUSED): _fs(S.SELF_CHECKING, S.REFUSED),
    (S.AWAITING_WATCHER, K.WATCHER_REFUSED): _fs(S.AWAITING_WATCHER, S.REFUSED),
    (S.REGISTERED, K.WATCHER_REFUSED): _fs(S.REGISTERED, S.REFUSED),
    (S.UNSERVED, K.KUBELET_RESTART): _fs(S.UNSERVED),
    (S.SELF_CHECKING, K.KUBELET_RESTART): _fs(S.SELF_CHECKING),
    (S.REGISTERING, K.KUBELET_RESTART): _fs(S.REGISTERING),
    (S.AWAITING_WATCHER, K.KUBELET_RESTART): _fs(S.AWAITING_WATCHER),
    (S.ADOPTING, K.KUBELET_RESTART): _fs(S.REGISTERING),
    (S.REGISTERED, K.KUBELET_RESTART): _fs(S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
    (S.BACKING_OFF, K.KUBELET_RESTART): _fs(S.REGISTERING),
    (S.REFUSED, K.KUBELET_RESTART): _fs(S.REGISTERING, S.UNSERVED),
    (S.REGISTERED, K.KUBELET_GONE): _fs(S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
    (S.UNSERVED, K.OWN_SOCKET_GONE): _fs(S.UNSERVED),
    **{(s, K.OWN_SOCKET_GONE): _fs(S.UNSERVED) for s in (*_SERVED, S.BACKING_OFF)},
    (S.REFUSED, K.OWN_SOCKET_GONE): _fs(S.REFUSED, S.UNSERVED),
    (S.SELF_CHECKING, K.REREGISTER): _fs(S.SELF_CHECKING),
    (S.REGISTERING, K.REREGISTER): _fs(S.REGISTERING),
    (S.AWAITING_WATCHER, K.REREGISTER): _fs(S.AWAITING_WATCHER),
    (S.ADOPTING, K.REREGISTER): _fs(S.ADOPTING),
    (S.REGISTERED, K.REREGISTER): _fs(S.REGISTERED, S.REGISTERING, S.UNSERVED),
    (S.BACKING_OFF, K.REREGISTER): _fs(S.REGISTERING),
    (S.REFUSED, K.REREGISTER): _fs(S.REGISTERING, S.UNSERVED),
    **{(s, K.STOP): _fs(S.STOPPED) for s in _ALL_BUT_STOPPED},
}


class IllegalTransition(RuntimeError):
    """A handler moved somewhere the table does not allow: a bug in this module."""


class StreamSeen(enum.Enum):
    NONE = "none"  # the kubelet's stream of the current claim has not opened (yet)
    LIVE = "live"
    ENDED = "ended"


@dataclass(frozen=True)
class _Attempt:
    number: int
    generation: int
    claim: int
    started: float


class RegistrationMachine:
    def __init__(self, timings: WorkerTimings, clock: Callable[[], float] = time.monotonic) -> None:
        self.t = timings
        self.clock = clock
        self.state = State.UNSERVED
        self.mode = "classic"
        self.generation = -1  # the server serving our socket now; -1: none
        self.attempt = 0
        self.claim = 0  # the registration whose stream is the kubelet's
        self.stream = StreamSeen.NONE
        self.inflight: _Attempt | None = None
        self.restart_pending = False  # a restart signal arrived while `inflight` was out
        self.sent_at = float("-inf")  # when the Register of the current registration was sent
        self.adoptable: tuple[_Attempt, float] | None = None  # (attempt, until)
        self.backoff = Backoff(timings.backoff_first, timings.backoff_cap)
        self.serve_backoff = Backoff(timings.backoff_first, timings.backoff_cap)
        self.refused = False  # this run of failures includes a refusal: the slow cap applies
        self.refusal_reported = False
        self.reason = ""
        self._throttle = LogThrottle(timings.log_repeat, clock)

    @property
    def registered(self) -> bool:
        return self.state is State.REGISTERED

    def stream_live(self) -> bool:
        return self.stream is StreamSeen.LIVE

    # ---- the one entry point ------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        kind = kind_of(event)
        before = self.state
        allowed = TRANSITIONS.get((before, kind))
        if allowed is None:
            LOG.debug("ignored %s in state %s", kind.value, before.value)
            return []
        actions = _HANDLERS[kind](self, event)
        if self.state not in allowed:
            raise IllegalTransition(f"{before.value} --{kind.value}--> {self.state.value}")
        if self.state is not before:
            LOG.debug("%s --%s--> %s", before.value, kind.value, self.state.value)
            if not any(isinstance(a, SetTimer) for a in actions):
                actions.insert(0, CancelTimer())
            if (before is State.REGISTERED) != (self.state is State.REGISTERED):
                actions.append(ReportReady(self.registered, self.reason))
        return actions

    # ---- helpers ------------------------------------------------------------------------------

    def _move(self, state: State, reason: str = "") -> None:
        self.state = state
        if reason:
            self.reason = reason

    def _register(self, reason: str = "") -> list[Action]:
        self.attempt += 1
        self.claim += 1
        self.stream = StreamSeen.NONE
        self.restart_pending = False
        self.inflight = _Attempt(self.attempt, self.generation, self.claim, self.clock())
        self._move(State.REGISTERING, reason)
        return [Register(self.attempt, self.generation, self.claim)]

    def _serve_afresh(self, reason: str) -> list[Action]:
        actions: list[Action] = [StopServer()] if self.generation >= 0 else []
        self.generation = -1
        self.stream = StreamSeen.NONE
        self._move(State.UNSERVED, reason)
        return [*actions, Serve()]

    def _reset_backoff(self) -> None:
        """A restart signal: whatever the previous kubelet said, the new one is tried at once."""
        self.backoff.reset()
        self.serve_backoff.reset()
        self.refused = False
        self.refusal_reported = False

    def _registered(self, reason: str) -> list[Action]:
        self.backoff.reset()
        self.refused = False
        self.refusal_reported = False
        self.adoptable = None
        self._throttle.clear("register")
        self._move(State.REGISTERED, reason)
        return [Count("registrations_ok")]

    def _failed(self, error: str, refused: bool) -> list[Action]:
        self.refused = self.refused or refused
        self.backoff.cap = self.t.refused_backoff_cap if self.refused else self.t.backoff_cap
        delay = self.backoff.next_delay()
        actions: list[Action] = [Count("registrations_failed"), SetTimer(delay)]
        swallowed = self._throttle.allow("register")
        log = LOG.warning if swallowed is not None else LOG.debug
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

    def _current(self, generation: int, claim: int | None = None) -> bool:
        return generation == self.generation and (claim is None or claim == self.claim)

    # ---- handlers, one per event kind ---------------------------------------------------------

    def _on_reset(self, ev: Reset) -> list[Action]:
        self.mode = ev.mode
        self.inflight = self.adoptable = None
        self._reset_backoff()
        return self._serve_afresh(ev.reason)

    def _on_served(self, ev: Served) -> list[Action]:
        self.generation = ev.generation
        self.serve_backoff.reset()
        self.stream = StreamSeen.NONE
        self._move(State.SELF_CHECKING)
        actions: list[Action] = [SelfCheck(ev.generation)]
        if self.mode == "watcher":
            self.claim += 1
            actions.append(ClaimStream(self.claim))
        return actions

    def _on_serve_failed(self, ev: ServeFailed) -> list[Action]:
        delay = self.t.in_use_retry if ev.in_use else self.serve_backoff.next_delay()
        return [SetTimer(delay)]

    def _on_timer(self, ev: TimerDue) -> list[Action]:
        state = self.state
        if state is State.UNSERVED:
            return [Serve()]
        if state is State.REFUSED and self.mode == "watcher":
            self._move(State.UNSERVED)
            return [Serve()]
        if state is State.ADOPTING:
            self.adoptable = None
            return self._register("adoption expired")
        if state is State.REGISTERED:
            if self.mode == "classic" and self.stream is StreamSeen.NONE:
                LOG.warning(
                    "no ListAndWatch stream %.1fs after registering: the kubelet lost us; "
                    "registering again",
                    self.t.stream_grace,
                )
                return self._register("no stream")
            return []
        return self._register()

    def _on_self_check_ok(self, ev: SelfCheckDone) -> list[Action]:
        if not self._current(ev.generation):
            return []
        if self.mode == "watcher":
            self._move(State.AWAITING_WATCHER)
            return []
        if self.inflight is not None:
            self._move(State.REGISTERING)  # the Register still out decides
            return []
        if self.adoptable is not None and self.clock() < self.adoptable[1]:
            if self.stream is StreamSeen.LIVE:
                return self._registered("registered")
            remaining = self.adoptable[1] - self.clock()
            self._move(State.ADOPTING)
            return [SetTimer(remaining)]
        self.adoptable = None
        return self._register()

    def _on_self_check_failed(self, ev: SelfCheckDone) -> list[Action]:
        if not self._current(ev.generation):
            return []
        LOG.error("%s; serving afresh", ev.error)
        actions = [StopServer(), *self._failed(ev.error, False)]
        self.generation = -1
        self._move(State.UNSERVED)
        return actions

    def _take_inflight(self, attempt: int) -> _Attempt | None:
        current = self.inflight
        if current is None or current.number != attempt:
            return None  # abandoned, or older
        self.inflight = None
        return current

    def _on_register_ok(self, ev: RegisterDone) -> list[Action]:
        done = self._take_inflight(ev.attempt)
        if done is None:
            return []
        if self.state is not State.REGISTERING:
            # Registered while our server was being replaced: the kubelet dials the socket path
            # (retrying for up to 10 s), so it may well reach the new server.
            self.adoptable = (done, self.clock() + self.t.adopt_wait)
            return []
        self.sent_at = ev.sent_at
        if done.generation != self.generation:
            if self.stream is StreamSeen.LIVE:
                return self._registered("registered")
            self.adoptable = (done, self.clock() + self.t.adopt_wait)
            self._move(State.ADOPTING)
            return [SetTimer(self.t.adopt_wait)]
        if self.stream is StreamSeen.ENDED:
            LOG.warning("the kubelet ended our new stream during Register; registering again")
            return self._register("stream broke")
        actions = self._registered("registered")
        if self.mode == "classic" and self.stream is StreamSeen.NONE:
            # The kubelet opens ListAndWatch right after Register returns.
            actions.append(SetTimer(self.t.stream_grace))
        return actions

    def _on_register_failed(self, ev: RegisterDone) -> list[Action]:
        done = self._take_inflight(ev.attempt)
        if done is None or self.state is not State.REGISTERING:
            return []
        if ev.superseded or done.generation != self.generation:
            return self._register()  # it said nothing about the current server
        if self.restart_pending:
            return self._register()  # sent before a restart signal: try the new kubelet now
        actions = self._failed(ev.error, ev.refused)
        self._move(State.REFUSED if self.refused else State.BACKING_OFF)
        return actions

    def _on_stream_opened(self, ev: StreamOpened) -> list[Action]:
        if not self._current(ev.generation, ev.claim):
            return []
        self.stream = StreamSeen.LIVE
        if self.state is State.ADOPTING:
            return self._registered("registered")
        return []

    def _on_stream_lost(self, ev: StreamLost) -> list[Action]:
        if not self._current(ev.generation, ev.claim):
            return []
        self.stream = StreamSeen.ENDED
        self._reset_backoff()
        state = self.state
        if self.mode == "watcher" and state in (
            State.SELF_CHECKING,
            State.AWAITING_WATCHER,
            State.REGISTERED,
        ):
            LOG.warning("ListAndWatch stream broke: the kubelet lost us; serving afresh")
            return self._serve_afresh("stream broke")  # a new socket for the plugin watcher
        if state in (State.REGISTERED, State.ADOPTING):
            LOG.warning("ListAndWatch stream broke: the kubelet lost us; registering again")
            return self._register("stream broke")
        return []  # in flight: the Register's outcome decides (it sees ENDED)

    def _on_watcher_registered(self, ev: WatcherStatus) -> list[Action]:
        if not self._current(ev.generation) or self.state is State.REGISTERED:
            return []
        return self._registered("registered by the plugin watcher")

    def _on_watcher_refused(self, ev: WatcherStatus) -> list[Action]:
        if not self._current(ev.generation):
            return []
        error = ev.error or "no reason given"
        LOG.error("the kubelet refused the registration: %s; retrying with a new socket", error)
        actions: list[Action] = [StopServer(), *self._failed(error, True)]
        self.generation = -1
        self.stream = StreamSeen.NONE
        self._move(State.REFUSED, f"refused: {error}")
        return actions

    def _on_kubelet_restart(self, ev: KubeletRestart) -> list[Action]:
        self._reset_backoff()
        state = self.state
        if state is State.REGISTERED:
            if ev.at <= self.sent_at:
                LOG.info("%s; already registered with this kubelet", ev.reason)
                return []
            if self.stream is StreamSeen.LIVE:
                LOG.info("%s, but the kubelet holds our live stream: it still has us", ev.reason)
                return []
            LOG.info("%s: the kubelet (re)started; registering again", ev.reason)
            if self.mode == "watcher":
                self._move(State.AWAITING_WATCHER, "kubelet restarted")
                return []
            return self._register("kubelet restarted")
        if state is State.REGISTERING:
            inflight = self.inflight
            if inflight is not None and ev.at <= inflight.started:
                return []  # that Register went out after the new kubelet.sock appeared
            if inflight is not None and self.clock() - inflight.started > self.t.stuck_attempt:
                LOG.warning("abandoning a Register stuck since before the kubelet restarted")
                self.inflight = None
                return self._register()
            self.restart_pending = True
            return []
        if state is State.UNSERVED:
            return [Serve()]
        if state is State.REFUSED and self.mode == "watcher":
            self._move(State.UNSERVED)
            return [Serve()]
        if state in (State.ADOPTING, State.BACKING_OFF, State.REFUSED):
            return self._register()
        return []

    def _on_kubelet_gone(self, ev: KubeletGone) -> list[Action]:
        if self.stream is StreamSeen.LIVE:
            LOG.warning("kubelet.sock went away, but our stream is live; watching")
            return []
        LOG.warning("kubelet.sock went away; waiting for the kubelet")
        if self.mode == "watcher":
            self._move(State.AWAITING_WATCHER, "kubelet.sock gone")
            return []
        return self._register("kubelet.sock gone")

    def _on_own_socket_gone(self, ev: OwnSocketGone) -> list[Action]:
        self._reset_backoff()
        if self.state is State.UNSERVED:
            return [Serve()]
        if self.generation < 0:
            return []  # refused in watcher mode: we removed it ourselves
        LOG.warning("%s; serving afresh", ev.reason)
        return self._serve_afresh("own socket removed")

    def _on_reregister(self, ev: ReregisterRequested) -> list[Action]:
        state = self.state
        if state is State.REGISTERED and self.stream is StreamSeen.LIVE:
            LOG.info(
                "re-register request noted, not acted on (%s): the kubelet holds our live "
                "ListAndWatch stream, so it still has us",
                ev.reason,
            )
            return []
        if state not in (State.REGISTERED, State.BACKING_OFF, State.REFUSED):
            LOG.info(
                "re-register request noted, not acted on (%s): %s is in progress",
                ev.reason,
                state.value,
            )
            return []
        LOG.info("re-registering on request: %s", ev.reason)
        self._reset_backoff()
        if self.mode == "watcher":
            if self.generation < 0:
                self._move(State.UNSERVED)
                return [Serve()]
            return self._serve_afresh(ev.reason)
        return self._register(ev.reason)

    def _on_stop(self, ev: Stop) -> list[Action]:
        self._move(State.STOPPED, "stopped")
        return []


_HANDLERS: dict[Kind, Callable[[RegistrationMachine, Event], list[Action]]] = {
    Kind.RESET: RegistrationMachine._on_reset,  # type: ignore[dict-item]
    Kind.SERVED: RegistrationMachine._on_served,  # type: ignore[dict-item]
    Kind.SERVE_FAILED: RegistrationMachine._on_serve_failed,  # type: ignore[dict-item]
    Kind.TIMER: RegistrationMachine._on_timer,  # type: ignore[dict-item]
    Kind.SELF_CHECK_OK: RegistrationMachine._on_self_check_ok,  # type: ignore[dict-item]
    Kind.SELF_CHECK_FAILED: RegistrationMachine._on_self_check_failed,  # type: ignore[dict-item]
    Kind.REGISTER_OK: RegistrationMachine._on_register_ok,  # type: ignore[dict-item]
    Kind.REGISTER_FAILED: RegistrationMachine._on_register_failed,  # type: ignore[dict-item]
    Kind.STREAM_OPENED: RegistrationMachine._on_stream_opened,  # type: ignore[dict-item]
    Kind.STREAM_LOST: RegistrationMachine._on_stream_lost,  # type: ignore[dict-item]
    Kind.WATCHER_REGISTERED: RegistrationMachine._on_watcher_registered,  # type: ignore[dict-item]
    Kind.WATCHER_REFUSED: RegistrationMachine._on_watcher_refused,  # type: ignore[dict-item]
    Kind.KUBELET_RESTART: RegistrationMachine._on_kubelet_restart,  # type: ignore[dict-item]
    Kind.KUBELET_GONE: RegistrationMachine._on_kubelet_gone,  # type: ignore[dict-item]
    Kind.OWN_SOCKET_GONE: RegistrationMachine._on_own_socket_gone,  # type: ignore[dict-item]
    Kind.REREGISTER: RegistrationMachine._on_reregister,  # type: ignore[dict-item]
    Kind.STOP: RegistrationMachine._on_stop,  # type: ignore[dict-item]
}
