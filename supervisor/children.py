"""Helper child processes that are not workers (the PodResources poller), supervised alike.

An observer asks for its helpers (`Observer.children()`); the supervisor's lifecycle starts each
one, reaps it on every loop pass, restarts it after `common.loop.backoff.Backoff` (reset after a
stable run), and stops it with the workers: SIGTERM at shutdown, SIGKILL after
`stop_kill_after`, within the same shutdown budget. A helper has no control channel: its output
goes to a file descriptor the observer reads (handed to every incarnation, so the observer's
poller entry never changes).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from common.loop.backoff import Backoff
from supervisor.loop import Loop
from supervisor.timings import Timings

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildSpec:
    name: str  # for logs: "PodResources poller"
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    stdout: int | None = None  # a descriptor every incarnation writes to
    stdin: int | None = None  # a descriptor every incarnation reads (None: /dev/null)
    restart_first: float = 0.5
    restart_cap: float = 30.0
    stable_after: float = 60.0  # a run this long resets the backoff
    #: Called before each start (e.g. drop what the previous incarnation half-wrote).
    on_start: Callable[[], None] | None = None


Popen = Callable[..., "subprocess.Popen[bytes]"]


class HelperChild:
    def __init__(
        self, spec: ChildSpec, loop: Loop, timings: Timings, popen: Popen = subprocess.Popen
    ) -> None:
        self.spec = spec
        self.loop = loop
        self.timings = timings
        self._popen = popen
        self.backoff = Backoff(initial=spec.restart_first, cap=spec.restart_cap)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.stopping = False
        self.restarts = 0

    @property
    def key(self) -> tuple[str, str]:
        return ("helper", self.spec.name)

    @property
    def running(self) -> bool:
        return self.proc is not None

    def start(self) -> None:
        if self.stopping:
            return
        if self.spec.on_start is not None:
            self.spec.on_start()
        try:
            self.proc = self._popen(
                list(self.spec.argv),
                stdin=subprocess.DEVNULL if self.spec.stdin is None else self.spec.stdin,
                stdout=self.spec.stdout,
                start_new_session=True,
                close_fds=True,
                env=dict(self.spec.env),
            )
        except OSError as err:
            delay = self.backoff.next_delay()
            LOG.error("cannot start the %s: %s; retrying in %.1fs", self.spec.name, err, delay)
            self.loop.timers.call_later(self.key, delay, self.start)
            return
        self.started_at = self.loop.clock()
        LOG.info("%s started pid=%d", self.spec.name, self.proc.pid)

    def reap(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        code, self.proc = self.proc.returncode, None
        self.loop.timers.cancel(("helper-kill", self.spec.name))
        if self.stopping:
            LOG.info("%s stopped code=%s", self.spec.name, code)
            return
        if self.loop.clock() - self.started_at >= self.spec.stable_after:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        self.restarts += 1
        LOG.warning("%s exited code=%s; restarting in %.1fs", self.spec.name, code, delay)
        self.loop.timers.call_later(self.key, delay, self.start)

    def stop(self) -> None:
        """SIGTERM now, SIGKILL after the ladder's last step; no restart from now on."""
        self.stopping = True
        self.loop.timers.cancel(self.key)
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        self.loop.timers.call_later(
            ("helper-kill", self.spec.name), self.timings.stop_kill_after, self.kill
        )

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)
