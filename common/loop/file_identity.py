"""What "the same file" means, in one place (supervisor, workers, PodResources poller).

A socket's identity is its (device, inode). Not its ctime: chmod, chown and hard links move the
ctime, and none of them is a restart of whoever serves the socket. Inode numbers are reused (a
kubelet killed and started again on ext4 gets the same inode for its new `kubelet.sock`), so an
unchanged identity does not prove nothing happened: pair it with `inotify` events where missing a
re-creation matters. A file's *content* stamp adds mtime and size, for files we rewrite
(CDI specs) where "someone changed it" is the question.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class FileId(NamedTuple):
    dev: int
    ino: int


class ContentStamp(NamedTuple):
    dev: int
    ino: int
    mtime_ns: int
    size: int


def file_id(path: str | os.PathLike[str]) -> FileId | None:
    """(device, inode) of `path` (not following a final symlink), or None when it is missing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return FileId(st.st_dev, st.st_ino)


def content_stamp(path: str | os.PathLike[str]) -> ContentStamp | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return ContentStamp(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
