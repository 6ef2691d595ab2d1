"""The registration machine's memory and the moves its handlers share (worker process, main
thread).

`workers.registration_fsm.RegistrationMachine` builds on this: the attempt in flight, the claim
whose stream is the kubelet's, the backoffs, and the steps (register, serve afresh, registered,
failed) every handler takes. Pure, like the machine: an injected clock, no I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.loop import backoff
from common.loop.backoff import Backoff
from common.loop.throttle import LogThrottle
from workers.registration_io import (
    Action,
    Count,
    Register,
    ReportError,
    Serve,
    SetTimer,
    StopServer,
)
from workers.registration_table import State, StreamSeen
from workers.timings import WorkerTimings

LOG = logging.getLogger("workers.registration")


@dataclass(frozen=True)
class _Attempt:
    number: int
    generation: int
    claim: int
    started: float


class MachineCore:
    """State and shared moves; the handlers are in the subclasses."""

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

    def stream_live(self) -> bool:
        return self.stream is StreamSeen.LIVE

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
        if not self.refused and self.clock() - self.kubelet_at < self.t.young_kubelet:
            delay = min(
                delay,
                backoff.delay(
                    self.backoff.failures - 1, initial=self.t.young_retry, cap=self.t.backoff_cap
                ),
            )
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

    def _watcher_grace_left(self) -> float:
        """Seconds until the newest kubelet has had the full grace to call GetInfo."""
        return max(0.0, self.kubelet_at + self.t.stream_grace - self.clock())

    def _current(self, generation: int, claim: int | None = None) -> bool:
        return generation == self.generation and (claim is None or claim == self.claim)

    def _take_inflight(self, attempt: int) -> _Attempt | None:
        current = self.inflight
        if current is None or current.number != attempt:
            return None  # abandoned, or older
        self.inflight = None
        return current
