"""The supervisor's private runtime folder (supervisor process).

Holds the control socket and a lock file, mode 0700 so only the supervisor's user can talk to
its workers. The lock (flock on `supervisor.lock`, holding the pid) refuses a second supervisor on
the same folder; it is released by the kernel when the holder dies, however it dies, so a stale
lock never blocks a restart. Files a previous run left (its control socket) are removed at start.

Workers of a previous supervisor that was killed exit by themselves within 5 s (they hear no
heartbeats); `orphaned_workers` finds any still alive so a new supervisor can stop them before its
own workers bind the same sockets.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import time

from common.loop.file_identity import FileId, file_id

LOG = logging.getLogger(__name__)

LOCK_NAME = "supervisor.lock"
#: What a previous supervisor may have left here; removed at start and at stop.
STALE_NAMES = ("control.sock",)


class RuntimeDirError(Exception):
    pass


class RuntimeDir:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._lock_fd: int | None = None
        self._lock_id: FileId | None = None

    def intact(self) -> bool:
        """Whether the folder and our lock file are still where we made them.

        Someone may remove the folder under a running supervisor (a tmpfs cleaner, an operator's
        `rm -rf`): then the control socket is gone too and no new worker could connect.
        """
        return self._lock_fd is not None and file_id(self._lock_path) == self._lock_id

    def restore(self) -> None:
        """Make the folder (0700) and the lock again after they were removed; raises
        RuntimeDirError when that fails or another supervisor took the folder meanwhile."""
        old = self._lock_fd
        self._lock_fd = None
        try:
            self.acquire(clean=False)
        finally:
            if old is not None:
                os.close(old)

    @property
    def _lock_path(self) -> str:
        return os.path.join(self.path, LOCK_NAME)

    def acquire(self, clean: bool = True) -> None:
        """Create (0700), lock and clean the folder; RuntimeDirError says what to do if not."""
        try:
            with contextlib.suppress(FileExistsError):  # a file in the way is named below
                os.makedirs(self.path, mode=0o700)
            st = os.lstat(self.path)
        except OSError as err:
            raise RuntimeDirError(f"cannot create runtime dir {self.path}: {err}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeDirError(f"runtime dir {self.path} exists and is not a folder")
        if st.st_uid != os.geteuid():
            raise RuntimeDirError(
                f"runtime dir {self.path} belongs to uid {st.st_uid}, not to this user; "
                "pick another --runtime-dir"
            )
        lock_path = os.path.join(self.path, LOCK_NAME)
        try:
            os.chmod(self.path, 0o700)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise RuntimeDirError(f"cannot lock runtime dir {self.path}: {err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeDirError(
                f"another supervisor (pid {holder}) is running with runtime dir {self.path}; "
                "stop it first or pick another --runtime-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        st = os.fstat(fd)
        self._lock_id = FileId(st.st_dev, st.st_ino)
        for name in STALE_NAMES if clean else ():
            path = os.path.join(self.path, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                LOG.info("removed stale %s from a previous run", path)

    def release(self) -> None:
        """Remove what this run created (the folder itself stays if anything else is in it)."""
        for name in STALE_NAMES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, name))
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, LOCK_NAME))
            os.close(self._lock_fd)
            self._lock_fd = None
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def orphaned_workers(endpoint: str) -> list[int]:
    """Pids of worker processes still connected to `endpoint` that are not our children.

    Reads /proc directly: psutil would cost the supervisor's steady state 0.6 MiB for one look.
    """
    me = os.getpid()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread
        if ppid != me and b"workers" in cmd and b"-m" in cmd and endpoint.encode() in cmd:
            found.append(int(entry))
    return found


def stop_processes(pids: list[int], grace: float) -> None:
    """SIGTERM each, wait up to `grace` seconds for them to go, SIGKILL the rest."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.02)  # start-up only: nothing else is running in the loop yet
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_orphaned_workers(endpoint: str, grace: float) -> None:
    """Stop workers a killed supervisor left on `endpoint`, before ours take the sockets."""
    try:
        pids = orphaned_workers(endpoint)
    except OSError as err:  # no /proc: the orphans exit by themselves anyway
        LOG.warning("cannot look for orphaned workers: %s", err)
        return
    if not pids:
        return
    LOG.warning(
        "stopping %d orphaned worker(s) of a previous supervisor pids=%s",
        len(pids),
        ",".join(map(str, pids)),
    )
    stop_processes(pids, grace)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
