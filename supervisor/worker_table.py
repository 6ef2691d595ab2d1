"""The worker table: one record per configured resource and its state machine (supervisor process).

States (as in Supervisor's `states.py`, minus what a device plugin never needs):

    exited ----spawn----> starting --hello answered--> running
       ^                     |  \\                       |   \\
       |                     |   +--died/hung----------+----+--> backoff --delay--> starting
       |                     |                              |
       +---- stopping <------+------------stop--------------+
            exit status "config invalid" ----------> fatal --config changed--> starting

`TRANSITIONS` below is the machine itself, row by row (state, event, next state, action);
`ALLOWED` is derived from it and docs/supervisor.md shows it as a table (a test compares them).
`exited` is also where a record waits for removal (its resource left the config) or for the
supervisor to end. Illegal moves raise: they are bugs in the loop, not runtime conditions.
Readiness (registered with the kubelet) and liveness (time since the last message) are fields,
not states: a running worker may be unregistered while the kubelet restarts.

The table decides, `supervisor.lifecycle` acts: `exit_decision` is pure apart from the RNG.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from common import exitcodes
from common.config import ResourceConfig
from common.devices import Candidate
from common.messages import WorkerCounters, WorkerStatus
from supervisor.restart_policy import RestartPolicy
from supervisor.worker_process import WorkerProcess


class WorkerState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


@dataclass(frozen=True)
class Transition:
    """One row of the state machine: in `state`, on `event`, move to `next` and do `action`."""

    state: WorkerState
    event: str
    next: WorkerState
    action: str


S = WorkerState
#: The worker-table state machine; docs/supervisor.md shows it as a table (a test compares them).
TRANSITIONS: tuple[Transition, ...] = (
    Transition(S.EXITED, "spawn (configured, added, renamed)", S.STARTING, "start the process"),
    Transition(S.STARTING, "hello", S.RUNNING, "send configure with its devices"),
    Transition(
        S.STARTING,
        "died, cannot start, or no hello in time",
        S.BACKOFF,
        "clean up; restart after the policy's delay",
    ),
    Transition(S.STARTING, "exit status 3 (config invalid)", S.FATAL, "wait for its config"),
    Transition(S.STARTING, "stop", S.STOPPING, "SIGTERM (no peer yet); SIGKILL later"),
    Transition(S.RUNNING, "died or hung", S.BACKOFF, "clean up; restart after the policy's delay"),
    Transition(S.RUNNING, "exit status 3 (config invalid)", S.FATAL, "wait for its config"),
    Transition(S.RUNNING, "stop", S.STOPPING, "stop message; SIGTERM, then SIGKILL"),
    Transition(
        S.BACKOFF,
        "delay over, or early retry (config or device set changed)",
        S.STARTING,
        "start the process",
    ),
    Transition(S.BACKOFF, "stop", S.EXITED, "cancel the restart"),
    Transition(
        S.STOPPING, "exited", S.EXITED, "drop the record if removed; start again if renamed"
    ),
    Transition(S.FATAL, "config changed", S.STARTING, "start the process"),
    Transition(S.FATAL, "stop", S.EXITED, "nothing to stop"),
)
ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    state: frozenset(t.next for t in TRANSITIONS if t.state is state) for state in WorkerState
}


class IllegalWorkerMove(RuntimeError):
    pass


@dataclass
class WorkerRecord:
    config: ResourceConfig  # what the worker should serve (the newest config)
    served: ResourceConfig | None = None  # what the current process was started for
    state: WorkerState = WorkerState.EXITED
    reason: str = ""  # why it is in this state, for status and logs
    proc: WorkerProcess | None = None
    pid: int = 0
    peer: bytes | None = None  # ZeroMQ routing id, once the worker said hello
    started_at: float = 0.0  # monotonic
    last_heard: float = 0.0  # monotonic
    failures: int = 0  # consecutive quick failures, for the restart policy
    restarts: int = 0
    backoff_delay: float = 0.0  # the delay of the current (or last) backoff
    early_retry_at: float = float("-inf")  # monotonic time of the last early retry from backoff
    kill_reason: str = ""  # set when the supervisor killed it for being hung
    configured: bool = False  # a configure reached the current process
    sent_devices: tuple[Candidate, ...] | None = None
    registered: bool = False
    registered_since: float = 0.0  # Unix time, from the worker
    registered_at: float = 0.0  # monotonic time a registered=true ready arrived
    mode: str = ""
    counters: WorkerCounters = field(default_factory=WorkerCounters)
    #: The last error the current process reported ("<code>: <message>"), "" when none: a
    #: crash loop's status and log line name it.
    error: str = ""
    wanted: bool = True  # False: its resource left the config; remove once exited
    respawn_after_stop: bool = False  # stopping only to start again (renamed prefix)

    @property
    def name(self) -> str:
        return self.config.resource_name

    @property
    def full_name(self) -> str:
        return self.config.full_name

    def forget_process(self) -> None:
        self.proc = None
        self.pid = 0
        self.peer = None
        self.configured = False
        self.sent_devices = None
        self.registered = False
        self.kill_reason = ""
        self.counters = WorkerCounters()


@dataclass(frozen=True)
class ExitDecision:
    state: WorkerState  # BACKOFF or FATAL
    delay: float  # seconds before the next start (BACKOFF only)
    failures: int
    reason: str  # short label: crashed, killed, hung, start_timeout, config_invalid, exited
    description: str  # for logs and status


def exit_decision(
    code: int,
    run_seconds: float,
    previous_failures: int,
    kill_reason: str,
    policy: RestartPolicy,
    random_unit: float,
) -> ExitDecision:
    """What to do after a worker exited without being asked to."""
    described = exitcodes.describe(code)
    if code == exitcodes.CONFIG_INVALID:
        return ExitDecision(
            WorkerState.FATAL,
            0.0,
            previous_failures,
            "config_invalid",
            "exited with 'config invalid': waits for its config to change",
        )
    failures = policy.failures_after_exit(previous_failures, run_seconds)
    delay = policy.delay(failures, random_unit)
    if kill_reason:
        reason = kill_reason
    elif code < 0:
        reason = "killed"
    elif code == exitcodes.OK:
        reason = "exited"
    else:
        reason = "crashed"
    loop = " (crash loop: slow retries)" if policy.crash_looping(failures) else ""
    description = f"{kill_reason + ', ' if kill_reason else ''}{described} after {run_seconds:.1f}s"
    return ExitDecision(WorkerState.BACKOFF, delay, failures, reason, description + loop)


StateListener = Callable[[WorkerRecord, WorkerState, str], None]


class WorkerTable:
    def __init__(
        self,
        policy: RestartPolicy | None = None,
        rng: random.Random | None = None,
        on_change: StateListener | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.rng = rng or random.Random()
        self._records: dict[str, WorkerRecord] = {}
        self._on_change = on_change

    def __iter__(self) -> Iterator[WorkerRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def get(self, name: str) -> WorkerRecord | None:
        return self._records.get(name)

    def add(self, config: ResourceConfig) -> WorkerRecord:
        if config.resource_name in self._records:
            raise KeyError(f"{config.resource_name} is already in the table")
        record = WorkerRecord(config)
        self._records[config.resource_name] = record
        return record

    def remove(self, name: str) -> None:
        record = self._records[name]
        if record.state not in (WorkerState.EXITED, WorkerState.BACKOFF, WorkerState.FATAL):
            raise IllegalWorkerMove(f"{name}: removed while {record.state.value}")
        del self._records[name]

    def by_peer(self, peer: bytes) -> WorkerRecord | None:
        for record in self._records.values():
            if record.peer == peer:
                return record
        return None

    def move(self, record: WorkerRecord, state: WorkerState, reason: str = "") -> None:
        previous = record.state
        if state is previous:
            record.reason = reason or record.reason
            return
        if state not in ALLOWED[previous]:
            raise IllegalWorkerMove(f"{record.name}: {previous.value} -> {state.value}")
        record.state = state
        record.reason = reason
        if self._on_change is not None:
            self._on_change(record, previous, reason)

    def decide_exit(self, record: WorkerRecord, code: int, run_seconds: float) -> ExitDecision:
        return exit_decision(
            code, run_seconds, record.failures, record.kill_reason, self.policy, self.rng.random()
        )

    def statuses(self, devices: Callable[[str], tuple[Candidate, ...]]) -> tuple[WorkerStatus, ...]:
        rows = []
        for record in sorted(self._records.values(), key=lambda r: r.full_name):
            matched = devices(record.name)
            rows.append(
                WorkerStatus(
                    resource=record.full_name,
                    state=record.state.value,
                    pid=record.pid,
                    restarts=record.restarts,
                    devices=len(matched),
                    # What the kubelet is told: nothing is healthy while the CDI spec is not on
                    # disk.
                    healthy=0
                    if record.counters.cdi_spec_current is False
                    else sum(1 for d in matched if d.usable and d.healthy),
                    registered=record.registered,
                    registered_since=record.registered_since,
                    allocations=record.counters.allocations_ok,
                    mode=record.mode,
                    reason=record.reason,
                    failures=record.failures,
                    crash_looping=record.state is not WorkerState.RUNNING
                    and self.policy.crash_looping(record.failures),
                    cdi=describe_cdi_spec(record.counters),
                )
            )
        return tuple(rows)


def describe_cdi_spec(counters: WorkerCounters) -> str:
    """WorkerStatus.cdi from the worker's last heartbeat."""
    if counters.cdi_spec_current is None:
        return ""
    if counters.cdi_spec_current:
        return "current"
    return f"not written ({counters.cdi_error or 'pending'})"
