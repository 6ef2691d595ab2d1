"""Notices, by polling two paths, that the kubelet may have lost this worker (worker process).

A restarting kubelet deletes every socket in the device-plugins folder (ours too) and creates a
new `kubelet.sock`. Polling two `stat` calls every 50 ms is cheap and notices both well inside
the 100 ms budget; the third signal, a broken ListAndWatch stream, arrives as an event.

Our own socket vanishing is the primary restart signal: only a kubelet's wipe (or an operator)
removes it. `kubelet.sock` is compared by (device, inode) alone, plus whether it was seen gone
in between: its ctime also moves on chmod, chown or a hard link, which are no restart. A
re-created `kubelet.sock` that reuses the old inode number inside one 50 ms look is missed here,
but then our socket was wiped and our stream broke, and either of those is noticed.
"""

from __future__ import annotations

import os
import stat

#: How often the main loop looks; the budget for noticing a kubelet restart is 100 ms.
POLL_INTERVAL = 0.05

Identity = tuple[int, int, int]
Inode = tuple[int, int]


def socket_identity(path: str) -> Identity | None:
    """(device, inode, ctime) of the socket at `path`, or None when absent or not a socket.

    For our own socket, which nothing but us has reason to chmod: the change time tells apart a
    socket someone re-created at our path with a reused inode number.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def socket_inode(path: str) -> Inode | None:
    """(device, inode) of the socket at `path`, or None when absent or not a socket."""
    identity = socket_identity(path)
    return identity[:2] if identity is not None else None


class KubeletSocketWatch:
    """Tracks `kubelet.sock`: `poll()` says whether it appeared, was replaced, or went away."""

    def __init__(self, kubelet_socket: str) -> None:
        self.path = kubelet_socket
        self.current = socket_inode(kubelet_socket)

    def poll(self) -> str:
        """ "" when unchanged, else "appeared", "replaced" or "gone"."""
        now = socket_inode(self.path)
        before, self.current = self.current, now
        if now == before:
            return ""
        if now is None:
            return "gone"
        return "appeared" if before is None else "replaced"
