"""Binding the metrics endpoint without ever stopping the plugin for it (supervisor process).

The metrics port is a node-wide resource the plugin does not own: with `hostNetwork`, anything
else on the node may hold it. Losing RDMA on that node for want of a scrape target would be the
wrong trade, so a bind that fails (busy port, an address not on this host yet, no permission) is
retried with the project's capped backoff while the workers keep serving the kubelet. The first
failure of a run is logged at once, repeats at most every `LOG_EVERY` seconds with how many were
swallowed (`common.loop.throttle`), and the bind that finally works says how long it took.
`describe()` is what `rdma-shared-dp status` prints about the endpoint.

Only an address that does not parse (or whose host does not resolve) is refused before the
supervisor starts: that is a typo no retry can fix. The loop drives the retries: `due()` from
`loop_turned`, `timeout()` from `poll_timeout`; nothing here blocks or starts a thread, except the
server's own once it is bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common.loop.backoff import Backoff
from common.loop.throttle import LogThrottle
from supervisor.metrics.http_server import MetricsServer

LOG = logging.getLogger(__name__)

#: A failure that goes on is logged again at most this often.
LOG_EVERY = 300.0


class EndpointBinder:
    def __init__(
        self,
        server: MetricsServer,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self._backoff = backoff
        self._clock = clock
        self._throttle = LogThrottle(LOG_EVERY, clock)
        self._next_try: float | None = None
        self._first_failure: float | None = None
        self.error = ""  # why the last bind failed ("" once bound)
        self.attempts = 0  # failed binds since the last success

    @property
    def bound(self) -> bool:
        return self.server.running

    def attempt(self) -> bool:
        """Try to bind now; True when serving. A failure schedules the next try."""
        if self.server.running:
            return True
        now = self._clock()
        try:
            self.server.start()
        except (OSError, ValueError) as err:
            self._failed(now, str(err))
            return False
        if self._first_failure is not None:
            LOG.info(
                "metrics endpoint bound address=%s after %d failed attempt(s) over %.0fs",
                self.server.address,
                self.attempts,
                now - self._first_failure,
            )
        self._throttle.clear("bind")
        self._backoff.reset()
        self._next_try = self._first_failure = None
        self.error, self.attempts = "", 0
        return True

    def _failed(self, now: float, why: str) -> None:
        self.error = why
        self.attempts += 1
        if self._first_failure is None:
            self._first_failure = now
        wait = self._backoff.next_delay()
        self._next_try = now + wait
        swallowed = self._throttle.allow("bind")
        if swallowed is None:
            return
        LOG.error(
            "%s; the plugin keeps serving the kubelet without /metrics, /healthz and /readyz, "
            "retrying every %.0fs at most%s; free the port or move it (--metrics-address, "
            "and the containerPort and probes with it)",
            why,
            self._backoff.cap,
            f" ({swallowed} failed retries since the last report)" if swallowed else "",
        )

    def due(self) -> None:
        """Retry when the backoff is over (the loop calls this every turn)."""
        if self._next_try is not None and self._clock() >= self._next_try:
            self.attempt()

    def timeout(self) -> float | None:
        """Seconds until the next try, for the loop's poll (None when bound)."""
        if self._next_try is None:
            return None
        return max(0.0, self._next_try - self._clock())

    def describe(self) -> str:
        """One line for `status`: where the endpoint serves, or why it does not yet."""
        if self.server.running:
            return f"serving on {self.server.url}"
        if not self.error:
            return f"not bound yet ({self.server.address})"
        left = self.timeout()
        retry = f", next try in {left:.0f}s" if left is not None else ""
        return f"not serving: {self.error} ({self.attempts} attempt(s){retry})"
