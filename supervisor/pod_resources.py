"""Which pods hold which devices, from the kubelet's PodResources API (supervisor process).

The API is gRPC and the supervisor never imports grpc, so a tiny child process
(`python -m podresources.poller`) makes the calls and writes one JSON line per poll to a
pipe; `PodResourcesReader` owns that child and parses its lines without ever blocking.

The pipe is created here once and handed to every incarnation of the child as its stdout, so
`fileno()` stays the same for the reader's whole life (the supervisor registers it in its poller
once). Because the reader keeps the pipe's write end open, a dead child is noticed by
`Popen.poll()`, not by end of file: call `read()` whenever `fileno()` is readable AND at least
every `timeout()` seconds, and it restarts a dead child after a short backoff.

Line format (one JSON object per poll):
    {"available": bool, "rows": [{"namespace", "pod", "container", "resource_name",
     "device_ids": [str, ...]}, ...], "error": str}

`read()` returns every resource the kubelet reports; keeping only the plugin's own resources is
the caller's job (it knows the current config). An unavailable API (no socket, kubelet down)
yields an empty list: no series rather than stale ones.

`supervisor.pods.PodResources` owns the reader and the snapshot for the whole supervisor.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor.children import ChildSpec

LOG = logging.getLogger(__name__)

#: Restart delays of a dead poller: doubles from the first to the cap; reset after a stable run.
RESTART_FIRST = 0.5
RESTART_CAP = 30.0
STABLE_RUN = 60.0
#: A line longer than this is garbage (a kubelet with thousands of pods stays far below it).
MAX_LINE = 16 * 1024 * 1024
#: Environment variables the child keeps; everything else is left behind on purpose.
_ENV_KEEP = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class PodAllocation:
    """Devices of one extended resource allocated to one container."""

    namespace: str
    pod: str
    container: str
    resource: str  # the extended resource name, "<prefix>/<name>"
    count: int  # unique device IDs
    #: The unique IDs, sorted. The kubelet lists an ID once per NUMA node of its topology, so a
    #: device on two nodes appears twice in PodResources: counting the raw list double counts.
    device_ids: tuple[str, ...] = field(default=(), compare=False)


def parse_snapshot(line: bytes) -> tuple[bool, list[PodAllocation], str] | None:
    """(available, rows, error) of one poller line, or None when it is not a valid snapshot.

    Malformed rows are skipped, not fatal: one odd entry must not hide every other pod.
    """
    try:
        data: Any = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("available"), bool):
        return None
    raw_rows = data.get("rows", [])
    if not isinstance(raw_rows, list):
        return None
    error = data.get("error", "")
    rows = [row for row in (_row(r) for r in raw_rows) if row is not None]
    return data["available"], rows, error if isinstance(error, str) else str(error)


def _row(raw: object) -> PodAllocation | None:
    if not isinstance(raw, dict):
        return None
    texts = [raw.get(k) for k in ("namespace", "pod", "container", "resource_name")]
    ids = raw.get("device_ids")
    if not all(isinstance(t, str) and t for t in texts) or not isinstance(ids, list):
        return None
    ns, pod, container, resource = (str(t) for t in texts)
    unique = tuple(sorted({str(i) for i in ids if isinstance(i, str) and i}))
    return PodAllocation(ns, pod, container, resource, len(unique), unique)


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


class PodResourcesReader:
    """Runs the poller child and turns its lines into `PodAllocation` lists."""

    def __init__(
        self,
        socket_path: str,
        interval: float = 10.0,
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        supervise: bool = True,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"PodResources poll interval must be > 0, not {interval!r}")
        self.socket_path = socket_path
        self.interval = interval
        self._python = python
        self._env = _child_env(env)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._buffer = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._delay = RESTART_FIRST
        self._restart_at: float | None = None
        self._stopped = False
        #: From the last valid line: whether the API answered, and its error if not.
        self.available = False
        self.last_error = ""
        #: Whether the first state was logged: an absent socket (the Network Operator mounts
        #: none) is said once at start, then only changes are.
        self._reported = False
        #: False: the supervisor's lifecycle runs the child (`child_spec`), this only reads.
        self._supervising = supervise
        if supervise:
            self._spawn()

    def child_spec(self) -> ChildSpec:
        """The poller as a helper child for the supervisor's lifecycle to run."""
        return ChildSpec(
            name="PodResources poller",
            argv=tuple(self._argv()),
            env=self._env,
            stdout=self._write_fd,
            restart_first=RESTART_FIRST,
            restart_cap=RESTART_CAP,
            stable_after=STABLE_RUN,
            on_start=self._restart_lines,
        )

    def _restart_lines(self) -> None:
        # Whatever the last child left half-written is not the start of the next one's line.
        self._drain()
        self._buffer = b""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def fileno(self) -> int:
        """Readable when the poller wrote something; the same descriptor for the reader's life."""
        return self._read_fd

    def timeout(self) -> float:
        """Seconds until `read()` must be called even if nothing is readable (restart checks)."""
        if self._restart_at is not None:
            return max(0.0, self._restart_at - time.monotonic())
        return 1.0

    def read(self) -> list[PodAllocation] | None:
        """The newest complete snapshot since the last call, or None if there is none.

        Never blocks. Also restarts the poller when it died and its backoff has passed.
        """
        if self._stopped:
            return None
        newest = self._drain()
        if self._supervising:
            self._supervise()
        return newest

    def stop(self) -> None:
        """Stop the poller and close the pipe (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._terminate()
        os.close(self._read_fd)
        os.close(self._write_fd)

    # -- internals ---------------------------------------------------------------------------

    def _drain(self) -> list[PodAllocation] | None:
        chunks = [self._buffer]
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:  # cannot happen while we hold the write end; be safe anyway
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        *lines, self._buffer = data.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            LOG.warning("PodResources poller wrote %d bytes without a newline; dropped", MAX_LINE)
            self._buffer = b""
        newest: list[PodAllocation] | None = None
        for line in lines:
            if not line.strip():
                continue
            parsed = parse_snapshot(line)
            if parsed is None:
                LOG.warning("PodResources poller wrote an invalid line, ignored: %.200r", line)
                continue
            available, rows, error = parsed
            if not self._reported or available != self.available or error != self.last_error:
                self._reported = True
                if available:
                    LOG.info("PodResources API answering socket=%s", self.socket_path)
                else:
                    LOG.info(
                        "PodResources API not available socket=%s error=%s (pod allocation "
                        "series are empty until it answers)",
                        self.socket_path,
                        error or "no socket",
                    )
            self.available, self.last_error = available, error
            newest = rows if available else []
        return newest

    def _supervise(self) -> None:
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self._restart_at = None
                self._spawn()
            return
        if self._proc is None or self._proc.poll() is None:
            return
        code = self._proc.returncode
        if now - self._started_at >= STABLE_RUN:
            self._delay = RESTART_FIRST
        LOG.warning("PodResources poller exited code=%s; restarting in %.1fs", code, self._delay)
        self._restart_at = now + self._delay
        self._delay = min(RESTART_CAP, self._delay * 2)

    def _argv(self) -> list[str]:
        return [
            self._python,
            "-m",
            "podresources.poller",
            "--socket",
            self.socket_path,
            "--interval",
            repr(self.interval),
        ]

    def _spawn(self) -> None:
        self._restart_lines()
        try:
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=self._write_fd,
                start_new_session=True,
                close_fds=True,
                env=self._env,
            )
        except OSError as exc:
            LOG.error("cannot start the PodResources poller: %s; retrying", exc)
            self._proc = None
            self._restart_at = time.monotonic() + self._delay
            self._delay = min(RESTART_CAP, self._delay * 2)
            return
        self._started_at = time.monotonic()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
