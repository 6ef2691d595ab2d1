"""Starting and signalling one worker process (supervisor process).

A worker is never a fork of the supervisor: gRPC is not fork-safe, and a fresh process holds only
what it imports. It is forked from the zygote when one runs (a `Forker`,
supervisor.zygote_client), or else a fresh interpreter (`python -m workers`): `start_worker`,
the supervisor's production `Spawner` (the lifecycle's one injection point; tests pass stand-ins
instead). It runs in its own session, so a terminal's Ctrl-C reaches the supervisor only (which
then stops the workers in order), with only the file descriptors it needs and an explicit
environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

# The folder holding the `common`, `workers` and `supervisor` packages: set as PYTHONPATH, so a
# worker imports the same code as its supervisor even from a plain checkout.
CODE_ROOT = str(Path(__file__).resolve().parent.parent)
#: Environment variables passed through to workers (and the zygote) when set: locale and CA
#: settings, and the zygote's switch for immortal objects (zygote/immortal.py).
PASSED_THROUGH = (
    "LANG",
    "LC_ALL",
    "TZ",
    "SSL_CERT_FILE",
    "GRPC_DNS_RESOLVER",
    "RDMA_SHARED_DP_ZYGOTE_IMMORTAL",
)


def worker_env(log_level: str, log_format: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "PYTHONPATH": CODE_ROOT,
        "PYTHONUNBUFFERED": "1",
        "RDMA_SHARED_DP_LOG_LEVEL": log_level.upper(),
        "RDMA_SHARED_DP_LOG_FORMAT": log_format,
        # Two malloc arenas instead of one per thread: the worker's gRPC threads allocate little,
        # and each arena costs resident memory (measured 0.3-0.9 MiB USS per worker).
        "MALLOC_ARENA_MAX": "2",
    }
    env.update({k: os.environ[k] for k in PASSED_THROUGH if k in os.environ})
    return env


def worker_command(resource_name: str, endpoint: str) -> list[str]:
    # -OO drops docstrings a worker never shows (0.5-1 MiB USS); its asserts only guard invariants.
    return [
        sys.executable,
        "-OO",
        "-m",
        "workers",
        "--resource",
        resource_name,
        "--control",
        endpoint,
    ]


class Forker(Protocol):
    """Forks workers instead of starting fresh interpreters (supervisor.zygote_client): None
    from `spawn` means "start this one the classic way"."""

    def spawn(self, resource_name: str, endpoint: str) -> WorkerProcess | None: ...


#: (resource name, control endpoint, log level, log format) -> a started process.
Spawner = Callable[[str, str, str, str], "WorkerProcess"]


def start_worker(
    resource_name: str,
    endpoint: str,
    log_level: str,
    log_format: str,
    forker: Forker | None = None,
) -> WorkerProcess:
    """A worker forked by `forker` when it can, else a fresh interpreter."""
    if forker is not None:
        forked = forker.spawn(resource_name, endpoint)
        if forked is not None:
            return forked
    return WorkerProcess.spawn(resource_name, endpoint, log_level, log_format)


class WorkerProcess:
    """One running worker: a Popen with the few operations the supervisor needs."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    @classmethod
    def spawn(
        cls, resource_name: str, endpoint: str, log_level: str, log_format: str
    ) -> WorkerProcess:
        """A fresh interpreter running `python -m workers`."""
        proc = subprocess.Popen(
            worker_command(resource_name, endpoint),
            cwd="/",
            env=worker_env(log_level, log_format),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return cls(proc)

    def poll(self) -> int | None:
        """The exit status once it has exited (negative: killed by that signal), else None."""
        return self._proc.poll()

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)
