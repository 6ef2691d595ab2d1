"""The worker's registration with the kubelet as a state machine (worker process, main thread).

Pure: events in, actions out, an injected clock; no gRPC, no ZeroMQ, no files. The shell
(`workers.worker`) turns actions into serving, helper threads and messages, and feeds back what
happened. The states and `TRANSITIONS` are `workers.registration_table` (a pair not listed there
is ignored: no move, no action; a handler moving elsewhere raises), the events and actions
`workers.registration_io`, the machine's memory and shared moves `workers.registration_core`, the
handlers of the kubelet's signals `workers.registration_signals`. docs/worker.md shows the same
table, and a test checks they agree.

Rules the table encodes:
- One Register in flight at a time (two make the kubelet replace our endpoint back and forth).
  A `reregister` while one is in flight never cancels it: its outcome decides. A new
  `kubelet.sock` created after it went out (a newer kubelet) abandons it at once.
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

from collections.abc import Callable

from workers.events import RegisterDone, SelfCheckDone
from workers.registration_core import LOG
from workers.registration_io import (
    Action,
    CancelTimer,
    Event,
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
from workers.registration_signals import SignalHandlers
from workers.registration_table import TRANSITIONS, IllegalTransition, State, StreamSeen


class RegistrationMachine(SignalHandlers):
    """The machine: `handle` one event, get the actions. Handlers of the kubelet's signals are
    inherited from `SignalHandlers`, its memory and shared moves from `MachineCore`."""

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
            left = self._watcher_grace_left()
            if left > 0:
                return [SetTimer(left)]  # a kubelet arrived since the timer was set
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

    def _on_stop(self, ev: Stop) -> list[Action]:
        self._move(State.STOPPED, "stopped")
        return []
