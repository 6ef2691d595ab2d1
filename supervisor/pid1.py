"""Init duties when the plugin itself is PID 1 (the CLI process, before anything else starts).

The image's entrypoint puts tini in front of the plugin, but the NVIDIA Network Operator's
DaemonSet sets `command: ["/bin/k8s-rdma-shared-dp"]`, which replaces the entrypoint: the plugin
then runs as PID 1 of the container. PID 1 has two duties no ordinary process has:

- it adopts every orphan in the PID namespace (a `kubectl exec` session's background job, a
  worker whose supervisor died) and must reap them, or zombies pile up;
- the kernel drops signals to PID 1 that it has no handler for, so SIGTERM from the kubelet
  must be caught and acted on, never left to its default.

The supervisor's loop reaps only its own `Popen` children by pid (worker exit codes are a
contract; a `waitpid(-1)` there would steal them). So, like tini, `become_init()` forks once: the
parent stays PID 1 and does nothing but reap every child and forward signals to the one child it
started, which goes on to run the plugin exactly as it would under tini. When that child exits,
the rest of the namespace gets SIGTERM, a short grace, then SIGKILL, and PID 1 exits with the
child's status (128 + N when signal N killed it, as a shell reports it).

The fork happens at CLI entry, before any thread, socket or library exists, so it is safe; the
parent keeps only what the CLI had imported (a few MiB, mostly shared with the child).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time

#: Signals PID 1 passes on to the plugin (tini forwards the same set, less the job-control ones).
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
#: After the plugin exited: how long the rest of the namespace gets to stop after SIGTERM.
ORPHAN_GRACE = 2.0
#: Set in the plugin's environment when it runs under this init, so it never forks a second one.
MARKER = "RDMA_SHARED_DP_UNDER_PID1"


def should_become_init(pid: int | None = None) -> bool:
    """True when this process is PID 1 and no init of ours is already in front of it."""
    return (os.getpid() if pid is None else pid) == 1 and MARKER not in os.environ


def become_init() -> None:
    """Fork; return in the child (which runs the plugin); never return in the parent (PID 1)."""
    watched: set[int] = {*FORWARDED, signal.SIGCHLD}
    # Blocked before the fork, so no signal can arrive between the fork and the first wait: the
    # kernel queues a blocked signal even for PID 1 (it drops only unhandled, unblocked ones).
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.environ[MARKER] = "1"
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return
    os._exit(serve(child, watched))


def serve(child: int, watched: set[int]) -> int:
    """PID 1's loop: reap everything, forward signals to `child`; its exit status when it ends."""
    status: int | None = None
    while status is None:
        info = signal.sigwaitinfo(watched)
        if info.si_signo != signal.SIGCHLD:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, info.si_signo)
        status = reap_all(child)
    stop_the_rest(ORPHAN_GRACE)
    return status


def reap_all(child: int) -> int | None:
    """Reap every exited child without blocking; `child`'s exit status if it was among them."""
    found: int | None = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = exit_status(wait_status)


def exit_status(wait_status: int) -> int:
    """The shell's view of a wait status: the exit code, or 128 + signal number."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def stop_the_rest(grace: float) -> None:
    """SIGTERM every other process of the namespace, reap them, SIGKILL what outlives `grace`."""
    if not _signal_all(signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap_all(-1)
        if not _has_children():
            return
        # sigtimedwait on SIGCHLD (still blocked here) is the wait: no busy loop, no sleep guess.
        signal.sigtimedwait({signal.SIGCHLD}, max(0.0, deadline - time.monotonic()))
    _signal_all(signal.SIGKILL)
    reap_all(-1)


def _signal_all(signum: int) -> bool:
    """kill(-1): every process in the namespace but PID 1 itself; False when there is none."""
    try:
        os.kill(-1, signum)
    except OSError as err:
        if err.errno == errno.ESRCH:
            return False
        raise
    return True


def _has_children() -> bool:
    """Whether any child is left (exited or not), without reaping it."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True
