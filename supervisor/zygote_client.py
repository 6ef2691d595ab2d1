"""The supervisor's side of the zygote, the workers' fork server (supervisor process).

A fresh `python -m workers` imports grpc, protobuf and pyzmq on its own: about 0.3 s of CPU and
18-24 MiB that no other worker shares. The zygote (`python -OO -m zygote`, package `zygote/`)
imports them once; each worker forked from it shares those pages copy-on-write. Measured with 8
resources (`benchmarks/bench_scale.py`): 6.3 MiB USS per worker instead of 18.1, PSS of the whole
plugin 97 MiB instead of 175, all registered in 0.6 s instead of 1.6 s.

The supervisor still never imports grpc, and the lifecycle does not change: the supervisor is a
child subreaper (PR_SET_CHILD_SUBREAPER), the zygote double-forks, so each worker is re-parented
to the supervisor, which reaps it with waitpid and sees its real exit status. `ForkedWorker` is a
`WorkerProcess` over a bare pid. Whatever goes wrong with the zygote (not ready yet, dead, an
answer late or refused) costs one thing only: that worker is started the classic way
(`subprocess.Popen`), and the zygote is started again after a backoff.

`RDMA_SHARED_DP_ZYGOTE=off` turns the zygote off (every worker a fresh interpreter).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from common import zygote_protocol
from common.config import MAX_RESOURCE_NAME_LENGTH
from common.loop.backoff import Backoff
from supervisor.worker_process import WorkerProcess, worker_command, worker_env

LOG = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
#: How long start-up waits for the zygote's imports (0.3 s idle; much more on a loaded node).
READY_TIMEOUT = 10.0
#: A fork takes milliseconds; an answer this late means the zygote is stuck.
REPLY_TIMEOUT = 2.0
#: Closing the socket ends the zygote; after this long it is killed.
STOP_WAIT = 1.0
ENV_SWITCH = "RDMA_SHARED_DP_ZYGOTE"
#: A worker forked ahead and not taken by then is stopped (its start was called off).
PREFORK_CLAIM_WITHIN = 5.0


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def set_subreaper(on: bool) -> bool:
    """Make orphaned descendants this process's children; whether the kernel agreed."""
    try:
        return int(_libc().prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(int(on)), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    value = ctypes.c_int(0)
    try:
        if _libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return bool(value.value)


class ForkedWorker(WorkerProcess):
    """A worker the zygote forked: our child by re-parenting, so waitpid works as for Popen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._code: int | None = None

    def poll(self) -> int | None:
        if self._code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Not our child (someone else reaped it): gone, status unknown; count it as a
                # kill, so its socket and CDI spec are cleaned up.
                self._code = -signal.SIGKILL
                return self._code
            if pid:
                self._code = os.waitstatus_to_exitcode(status)
        return self._code

    def _signal(self, signum: int) -> None:
        if self._code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


class Zygote:
    """One zygote process and the socket to it; restarted after a backoff when it fails."""

    def __init__(
        self,
        endpoint: str,
        log_level: str,
        log_format: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.log_level = log_level
        self.log_format = log_format
        self.clock = clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.is_ready = False
        self.starts = 0
        self.forks = 0
        self.fallbacks = 0
        self.backoff = Backoff(initial=1.0, cap=60.0)
        self.next_start_at = 0.0
        self._next_id = 0
        #: Workers forked ahead by `prefork`, until `spawn` hands them out: (name, endpoint) ->
        #: (pid, when forked).
        self._preforked: dict[tuple[str, str], tuple[int, float]] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self, fd: int) -> list[str]:
        # Room for the longest worker command line, which each forked worker writes over ours.
        room = len("\0".join(worker_command("x" * MAX_RESOURCE_NAME_LENGTH, self.endpoint)))
        return [sys.executable, "-OO", "-m", "zygote", "--fd", str(fd), "--argv-room=" + "." * room]

    def start(self) -> bool:
        """Start the zygote (no wait: it says `ready` when its imports are done)."""
        self._discard()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                self.command(child.fileno()),
                cwd="/",
                env=worker_env(self.log_level, self.log_format),
                stdin=subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as err:
            parent.close()
            LOG.warning("cannot start the zygote: %s; workers start as fresh processes", err)
            self._failed()
            return False
        finally:
            child.close()
        self.sock = parent
        self.starts += 1
        LOG.info("zygote started pid=%d", self.proc.pid)
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Whether the zygote is ready, waiting up to `timeout` seconds for it to say so."""
        if self.is_ready:
            return True
        if self.sock is None:
            return False
        try:
            self.sock.settimeout(max(0.0, timeout))
            msg = zygote_protocol.decode(self.sock.recv(zygote_protocol.MAX_PACKET))
        except (TimeoutError, BlockingIOError):
            return False
        except (OSError, zygote_protocol.ZygoteProtocolError) as err:
            self._broken(f"no ready message ({err})")
            return False
        if msg.get("type") != "ready":
            self._broken(f"said {msg.get('type')!r} instead of ready")
            return False
        self.is_ready = True
        self.backoff.reset()
        LOG.info("zygote ready pid=%s", msg.get("pid"))
        return True

    def prefork(self, resource_names: list[str], endpoint: str) -> int:
        """Fork the workers of a start in one request; `spawn` then hands them out. How many."""
        if not resource_names or not self._usable():
            return 0
        pids = self._fork(resource_names, endpoint)
        now = self.clock()
        for name, pid in pids.items():
            self._preforked[(name, endpoint)] = (pid, now)
        return len(pids)

    def spawn(self, resource_name: str, endpoint: str) -> ForkedWorker | None:
        """A worker forked by the zygote, or None: start it another way."""
        ahead = self._preforked.pop((resource_name, endpoint), None)
        if ahead is not None:
            self.forks += 1
            return ForkedWorker(ahead[0])
        if not self._usable():
            self.fallbacks += 1
            return None
        pid = self._fork([resource_name], endpoint).get(resource_name)
        if pid is None:
            self.fallbacks += 1
            return None
        self.forks += 1
        return ForkedWorker(pid)

    def _fork(self, resource_names: list[str], endpoint: str) -> dict[str, int]:
        try:
            answer = self._ask("fork", resources=resource_names, control=endpoint)
        except _Failed as err:
            LOG.warning(
                "the zygote did not fork resource=%s: %s; starting as fresh processes",
                ",".join(resource_names),
                err,
            )
            return {}
        pids = answer.get("pids")
        if (
            not isinstance(pids, dict)
            or set(pids) != set(resource_names)
            or not all(isinstance(p, int) and p > 0 for p in pids.values())
        ):
            self._broken(f"answered a fork with {pids!r}")
            return {}
        return pids

    def maintain(self) -> None:
        """Notice a dead zygote and start a new one when its backoff is over (every heartbeat);
        stop workers forked ahead that nobody took."""
        self._usable()
        self._drop_preforked(older_than=PREFORK_CLAIM_WITHIN)

    def probe(self) -> dict[str, Any]:
        """The zygote's fork-safety facts (see `common.zygote_protocol`)."""
        if not self._usable():
            raise RuntimeError("the zygote is not running")
        return self._ask("probe")

    def close(self) -> None:
        self._drop_preforked(older_than=0.0)
        self._discard()

    def _drop_preforked(self, older_than: float) -> None:
        now = self.clock()
        for key, (pid, forked_at) in list(self._preforked.items()):
            if now - forked_at >= older_than:
                del self._preforked[key]
                worker = ForkedWorker(pid)
                worker.kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    # ---- internals -----------------------------------------------------------------------

    def _usable(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self._broken(f"exited with status {self.proc.returncode}")
        if self.proc is None:
            if self.clock() >= self.next_start_at:
                self.start()
            return False
        return self.wait_ready(0.0)

    def _ask(self, kind: str, **fields: Any) -> dict[str, Any]:
        assert self.sock is not None
        self._next_id += 1
        msg_id = self._next_id
        try:
            self.sock.settimeout(REPLY_TIMEOUT)
            self.sock.send(zygote_protocol.encode(kind, id=msg_id, **fields))
            answer = zygote_protocol.decode(self.sock.recv(zygote_protocol.MAX_PACKET))
        except (OSError, zygote_protocol.ZygoteProtocolError) as err:
            why = "no answer in time" if isinstance(err, TimeoutError) else str(err) or "closed"
            self._broken(why)
            raise _Failed(why) from None
        if answer.get("id") != msg_id:
            self._broken(f"answered request {answer.get('id')!r} instead of {msg_id}")
            raise _Failed("out of step")
        if answer.get("type") == "error":
            if answer.get("code") == "fork_unsafe":  # it will not get better: a new zygote
                self._broken(str(answer.get("message")))
            raise _Failed(str(answer.get("message")))
        return answer

    def _broken(self, why: str) -> None:
        pid = self.pid
        self._discard()
        delay = self._failed()
        LOG.warning("zygote pid=%s %s; starting it again in %.0fs", pid, why, delay)

    def _failed(self) -> float:
        delay = self.backoff.next_delay()
        self.next_start_at = self.clock() + delay
        return delay

    def _discard(self) -> None:
        """Close the socket (the zygote exits on EOF), then make sure the process is gone."""
        was_ready, self.is_ready = self.is_ready, False
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if not was_ready:  # still importing (or never will): it holds nothing worth a wait
            proc.kill()
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Failed(Exception):
    pass


_installed: Zygote | None = None
_was_subreaper = False


def install(endpoint: str, log_level: str, log_format: str) -> Zygote | None:
    """Start the zygote (or take the one `start_early` started for these settings); the
    supervisor's spawner forks through it (`worker_process.start_worker`). None when it is off."""
    global _installed, _was_subreaper
    if _installed is not None:
        if (_installed.endpoint, _installed.log_level, _installed.log_format) == (
            endpoint,
            log_level,
            log_format,
        ):
            LOG.info("zygote started early pid=%s", _installed.pid)  # logging is set up now
            return _installed
        uninstall()
    if os.environ.get(ENV_SWITCH, "on").lower() in ("off", "0", "false", "no"):
        LOG.info("zygote off (%s); every worker starts as a fresh process", ENV_SWITCH)
        return None
    _was_subreaper = is_subreaper()
    if not _was_subreaper and not set_subreaper(True):
        LOG.warning("cannot become a child subreaper; workers start as fresh processes")
        return None
    zygote = Zygote(endpoint, log_level, log_format)
    zygote.start()
    _installed = zygote
    return zygote


def start_early(runtime_dir: str, log_level: str, log_format: str) -> None:
    """Start the zygote before the supervisor's own imports and config, so they overlap (the
    CLI's first step); `install` then takes it. Any failure here is only a later start."""
    try:
        from supervisor.control import endpoint_for

        install(endpoint_for(runtime_dir), log_level, log_format)
    except Exception as err:
        LOG.debug("early zygote start failed: %s", err)


def uninstall() -> None:
    """Stop the zygote (shutdown hook); idempotent."""
    global _installed
    if _installed is not None:
        _installed.close()
        _installed = None
        if not _was_subreaper:
            set_subreaper(False)
