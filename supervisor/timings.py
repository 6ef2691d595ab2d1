"""Every delay the supervisor waits, in one value passed in (supervisor process).

The loop, the lifecycle of child processes, device sync and the watches read their timings from
one `Timings`, never from module constants, so tests run the real code with fast timings
(`Timings.fast()`) instead of real seconds. The defaults are the production values; each is
explained where it is used. `from_env` reads `RDMA_SHARED_DP_TIMINGS` (JSON object of field
overrides), a test hook for supervisors started as a process: the CLI itself is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from supervisor.restart_policy import RestartPolicy

ENV_VAR = "RDMA_SHARED_DP_TIMINGS"


@dataclass(frozen=True)
class Timings:
    #: Seconds between heartbeats, both ways. A worker that hears nothing for 2.5 of them exits,
    #: so a killed supervisor leaves no worker behind for long.
    heartbeat_interval: float = 1.0
    #: A running worker silent for this many heartbeat intervals is hung: killed and restarted.
    hung_after_beats: int = 5
    #: A worker that has not said hello this long after spawning is killed and restarted.
    start_timeout: float = 15.0
    config_poll_interval: float = 1.0
    #: Fallback stat poll of kubelet.sock (inotify is the main trigger).
    kubelet_poll_interval: float = 0.2
    #: A worker not registered this long after a kubelet restart is reported (never nudged).
    kubelet_report_after: float = 30.0
    #: uevents come in bursts (a function going away sends dozens); one rescan per burst.
    rescan_debounce: float = 0.1
    #: Stop ladder, from the stop message: SIGTERM, then SIGKILL (a worker stops within 2 s).
    stop_term_after: float = 2.5
    stop_kill_after: float = 3.5
    #: The whole supervisor stop, signal to exit, stays under 5 s.
    shutdown_budget: float = 4.2
    #: Past the stop budget by this much, the loop gives up on the ladder and kills what is left.
    stop_overrun: float = 1.0
    #: Waiting for a previous supervisor's orphaned workers to go before ours bind their sockets.
    orphan_wait: float = 3.0
    #: The loop wakes at least this often (observers' liveness, /healthz).
    max_poll_wait: float = 1.0
    #: Periodic look at the runtime folder and control socket (inotify is the fast trigger).
    runtime_check_interval: float = 1.0
    #: Handler errors within `loop_error_window` seconds that make the supervisor stop.
    max_loop_errors: int = 20
    loop_error_window: float = 10.0
    #: A metrics address that cannot be bound is retried after this, doubling up to the cap.
    metrics_bind_initial: float = 1.0
    metrics_bind_cap: float = 30.0
    #: Worker restarts.
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    @classmethod
    def fast(cls, **overrides: object) -> Timings:
        """Timings for tests: every wait a fraction of production, same proportions."""
        base = cls(
            heartbeat_interval=0.1,
            start_timeout=5.0,
            config_poll_interval=0.1,
            kubelet_poll_interval=0.05,
            kubelet_report_after=3.0,
            rescan_debounce=0.02,
            stop_term_after=1.5,
            stop_kill_after=2.5,
            shutdown_budget=3.5,
            orphan_wait=2.0,
            max_poll_wait=0.2,
            runtime_check_interval=0.1,
            metrics_bind_initial=0.05,
            metrics_bind_cap=0.5,
            restart=RestartPolicy(initial_delay=0.02, max_delay=0.5, stable_after=5.0),
        )
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Timings:
        """Production timings, with the overrides of `RDMA_SHARED_DP_TIMINGS` (tests only)."""
        raw = env.get(ENV_VAR, "").strip()
        if not raw:
            return cls()
        if raw == "fast":
            return cls.fast()
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"{ENV_VAR} must be a JSON object")
        restart = data.pop("restart", None)
        timings = dataclasses.replace(cls(), **data)
        if isinstance(restart, dict):
            timings = dataclasses.replace(timings, restart=RestartPolicy(**restart))
        return timings
