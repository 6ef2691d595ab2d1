"""Every period, delay and budget of a worker, in one place (worker process).

Tests run real workers with fast timings: the supervisor stand-in passes
`RDMA_SHARED_DP_WORKER_TIMINGS="name=seconds,name=seconds"` in the worker's environment (only
the names below; anything else is refused at start). The heartbeat interval is not here: it
comes from the supervisor's `configure`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ENV = "RDMA_SHARED_DP_WORKER_TIMINGS"


@dataclass(frozen=True)
class WorkerTimings:
    #: `hello` is repeated this often until `configure` arrives.
    hello_interval: float = 1.0
    #: Heartbeat periods of silence after which the supervisor counts as gone (with the <= 2 s
    #: shutdown, orphans are gone within 5 s of a SIGKILL).
    silent_periods: float = 2.5
    #: The stat fallback looks at our socket and kubelet.sock this often (inotify is the
    #: primary signal; this catches what it cannot see, e.g. an unwatchable folder).
    poll_interval: float = 0.05
    #: ... and this often while both folders are watched: a backstop only.
    watched_poll_interval: float = 1.0
    #: A folder that could not be watched is tried again this often.
    rewatch_interval: float = 1.0
    #: Shutdown: the gRPC server gets this grace and must be stopped within the budget.
    stop_grace: float = 0.5
    stop_budget: float = 2.0
    #: Another live server holds our socket path: look again this often (at once if it goes).
    in_use_retry: float = 5.0
    #: Serving and registering: 50 ms doubling, capped at 1 s while the kubelet is absent.
    backoff_first: float = 0.05
    backoff_cap: float = 1.0
    #: A new kubelet.sock is this young: a failed attempt is retried after `young_retry`
    #: (doubling) rather than the 50 ms backoff. A starting kubelet binds kubelet.sock a moment
    #: before it listens (longer on a loaded node), and its pods are re-admitted 23-99 ms after.
    young_kubelet: float = 1.0
    young_retry: float = 0.01
    #: When the kubelet answers "no": asking every second changes nothing and floods its log.
    refused_backoff_cap: float = 30.0
    #: A failed CDI write is retried: 50 ms doubling, at most every 2 s.
    cdi_retry_first: float = 0.05
    cdi_retry_cap: float = 2.0
    #: How long a Register waits for the streams we ended to be over (kubernetes#121994).
    end_stream_wait: float = 1.0
    #: Registered this long without the kubelet's stream: the kubelet lost us.
    stream_grace: float = 1.0
    #: A Register made for a replaced server: how long to wait for its stream on ours.
    adopt_wait: float = 0.2
    self_check_timeout: float = 2.0
    #: The kubelet may spend up to 10 s dialling us inside Register.
    register_timeout: float = 15.0
    #: A repeating failure is logged at most this often.
    log_repeat: float = 30.0

    @classmethod
    def parse(cls, text: str) -> WorkerTimings:
        """`name=seconds` pairs separated by commas; ValueError names what is wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, eq, raw = item.partition("=")
            name = name.strip()
            if not eq or name not in names:
                raise ValueError(f"{ENV}: unknown timing {item!r} (known: {', '.join(names)})")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{ENV}: {name} must be a number of seconds") from None
            if not value > 0:
                raise ValueError(f"{ENV}: {name} must be positive")
            values[name] = value
        return cls(**values)
