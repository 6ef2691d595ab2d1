"""Atomic file writes for the DRA process's CDI specs and checkpoint."""

from __future__ import annotations

import contextlib
import os


def write_atomic(folder: str, name: str, data: bytes, mode: int = 0o644) -> None:
    """Temp file, fsync, rename, fsync of the folder: a reader sees the old or the new file."""
    os.makedirs(folder, mode=0o755, exist_ok=True)
    # A dot name without .json: CDI caches never read a half-written file.
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
