"""Folder events as a readable file descriptor (supervisor and workers), via Linux inotify.

Why: a kubelet killed and started again re-creates `kubelet.sock`, usually at the same inode
number on ext4, so polling (device, inode) misses most restarts. The creation itself is the
reliable evidence. `DirWatch` watches one folder for entries created, moved in, deleted or moved
out, and for the folder itself going away; its `fileno()` goes into the caller's poller.

No thread, no library: inotify is three libc calls, reached with ctypes. A folder that cannot
be watched (missing, no inotify) raises `OSError` from the constructor; callers then keep their
stat polling as the only trigger and try again later.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import struct
from dataclasses import dataclass

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of NUL-padded name)
_WATCH_MASK = (
    IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)


class Change(enum.Enum):
    CREATED = "created"  # created or moved in: a new file under that name
    REMOVED = "removed"  # deleted or moved out
    OVERFLOW = "overflow"  # the kernel dropped events: rescan, assume anything happened
    GONE = "gone"  # the watched folder itself was removed or moved: watch again


@dataclass(frozen=True)
class DirEvent:
    change: Change
    name: str  # entry name in the folder; "" for OVERFLOW and GONE


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # The symbols of the running interpreter, libc among them: `ctypes.util.find_library`
        # would import subprocess and shutil (~0.6 MiB in every worker) and run ldconfig.
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def resolve() -> None:
    """Look up libc and its inotify calls now (ctypes builds a function type for each).

    The zygote does it before forking, so its workers share them instead of each building its
    own; elsewhere the first `DirWatch` does it.
    """
    lib = _lib()
    for name in ("inotify_init1", "inotify_add_watch"):
        getattr(lib, name)


class DirWatch:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = os.fspath(folder)
        lib = _lib()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        wd = lib.inotify_add_watch(fd, os.fsencode(self.folder), _WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {self.folder}: {os.strerror(err)}")
        self._fd: int | None = fd
        self.gone = False

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("DirWatch is closed")
        return self._fd

    def read(self) -> list[DirEvent]:
        """Every event queued so far (never blocks; [] when none)."""
        if self._fd is None:
            return []
        events: list[DirEvent] = []
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return events
            events.extend(self._parse(data))

    def _parse(self, data: bytes) -> list[DirEvent]:
        out: list[DirEvent] = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = os.fsdecode(raw.rstrip(b"\0"))
            if mask & IN_Q_OVERFLOW:
                out.append(DirEvent(Change.OVERFLOW, ""))
            elif mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                if not self.gone:
                    self.gone = True
                    out.append(DirEvent(Change.GONE, ""))
            elif mask & (IN_CREATE | IN_MOVED_TO):
                out.append(DirEvent(Change.CREATED, name))
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                out.append(DirEvent(Change.REMOVED, name))
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
