"""The worker's registration with the kubelet as a state machine (worker process, main thread).

Pure: events in, actions out, an injected clock; no gRPC, no ZeroMQ, no files. The shell
(`workers.worker`) turns actions into serving, helper threads and messages, and feeds back what
happened. The states and `TRANSITIONS` are `workers.registration_table` (a pair not listed there
is ignored: no move, no action; a handler moving elsewhere raises), the events and actions
`workers.registration_io`. docs/worker.md shows the same table, and a test checks they agree.

Rules the table encodes:
- One Register in flight at a time (two make the kubelet replace our endpoint back and forth).
  A `reregister` or a kubelet-restart signal while one is in flight never cancels it: its outcome
  decides. Only one still running `stuck_attempt` after a *later* restart signal is abandoned.
- Only the kubelet's stream counts: each registration has a claim number; the first stream opened
  after the claim was armed (right before Register is sent, or by the plugin watcher's GetInfo)
  is the kubelet's, and only its opening and end reach this machine (`StreamHub`).
- The kubelet's live stream proves the registration: a `reregister`, a kubelet-restart signal or
  kubelet.sock going away is then only noted. Registering again beside a live stream makes
  kubelets 1.26-1.35 drop the *new* registration when the old stream ends (kubernetes#121994).
- Every restart signal (a new kubelet.sock, our socket removed, the kubelet's stream lost) resets
  the backoff: the new kubelet is tried at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.loop.backoff import Backoff
from common.loop.throttle import LogThrottle
from workers.events import RegisterDone, SelfCheckDone, StreamLost, StreamOpened, WatcherStatus
from workers.registration_io import (
    Action,
    CancelTimer,
    Count,
    Event,
    KubeletGone,
    KubeletRestart,
    OwnSocketGone,
    Register,
    ReportError,
    ReportReady,
    ReregisterRequested,
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
from workers.registration_table import TRANSITIONS, IllegalTransition, State, StreamSeen
from workers.timings import WorkerTimings

LOG = logging.getLogger("workers.registration")


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
        #: A self-check of one of our servers passed (and no refusal since): classic mode skips
        #: the self-check of the next one.
        self.server_trusted = False
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
        # One handler per kind, named for it: _on_reset, _on_served, ...
        handler: Callable[[Event], list[Action]] = getattr(self, f"_on_{kind.name.lower()}")
        actions = handler(event)
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
        if self.mode == "classic" and self.server_trusted:
            # Our servers answer (one did): after a kubelet's wipe every millisecond counts
            # before its re-admission of pods, and the kubelet's dial-back checks this one.
            return self._checked()
        self._move(State.SELF_CHECKING)
        return [SelfCheck(ev.generation)]

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
        if state is State.AWAITING_WATCHER:
            LOG.warning(
                "no plugin watcher called within %.1fs; serving afresh", self.t.stream_grace
            )
            return self._serve_afresh("no plugin watcher")
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
        self.server_trusted = True
        if self.mode == "watcher":
            self._move(State.AWAITING_WATCHER)
            return []
        return self._checked()

    def _checked(self) -> list[Action]:
        """Classic, the current server known to answer: register (or wait, or adopt)."""
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
        self.server_trusted = False
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
        if ev.refused:
            self.server_trusted = False  # perhaps the kubelet could not dial us: check the next
        self._move(State.REFUSED if self.refused else State.BACKING_OFF)
        return actions

    def _on_stream_opened(self, ev: StreamOpened) -> list[Action]:
        if self.mode == "watcher" and self._current(ev.generation):
            # The plugin watcher armed this claim with its GetInfo: a kubelet (perhaps a
            # restarted one) is registering the socket we serve.
            self.claim = ev.claim
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
        if self.mode == "watcher" and state in (State.AWAITING_WATCHER, State.REGISTERED):
            # A restarted kubelet's plugin watcher finds the socket we serve and calls GetInfo;
            # only if none does within the grace is the socket made anew for it to see.
            LOG.warning("ListAndWatch stream broke: the kubelet lost us; waiting for its watcher")
            self._move(State.AWAITING_WATCHER, "stream broke")
            return [SetTimer(self.t.stream_grace)]
        if self.mode == "watcher" and state is State.SELF_CHECKING:
            return self._serve_afresh("stream broke")
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
            return self._restart_while_registered(ev)
        if state is State.REGISTERING:
            return self._restart_while_registering(ev)
        if state is State.UNSERVED:
            return [Serve()]
        if state is State.REFUSED and self.mode == "watcher":
            self._move(State.UNSERVED)
            return [Serve()]
        if state in (State.ADOPTING, State.BACKING_OFF, State.REFUSED):
            return self._register()
        return []

    def _restart_while_registered(self, ev: KubeletRestart) -> list[Action]:
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

    def _restart_while_registering(self, ev: KubeletRestart) -> list[Action]:
        inflight = self.inflight
        if inflight is not None and ev.at <= inflight.started:
            return []  # that Register went out after the new kubelet.sock appeared
        if inflight is not None and self.clock() - inflight.started > self.t.stuck_attempt:
            LOG.warning("abandoning a Register stuck since before the kubelet restarted")
            self.inflight = None
            return self._register()
        self.restart_pending = True
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
