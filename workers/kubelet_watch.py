"""Notices, by polling two paths, that the kubelet has lost this worker (worker process).

A restarting kubelet deletes every socket in the device-plugins folder (ours too) and creates a
new `kubelet.sock`. Polling two `stat` calls every 50 ms is cheap and notices both well inside
the 100 ms budget; the third signal, a broken ListAndWatch stream, arrives as an event.
"""

from __future__ import annotations

import os
import stat

#: How often the main loop looks; the budget for noticing a kubelet restart is 100 ms.
POLL_INTERVAL = 0.05

Identity = tuple[int, int, int]


def socket_identity(path: str) -> Identity | None:
    """(device, inode, ctime) of the socket at `path`, or None when it is absent or not a socket.

    The inode number alone can be reused by a socket created right after the old one went away;
    the change time tells those apart.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


class KubeletSocketWatch:
    """Tracks `kubelet.sock`: `poll()` says whether it appeared, was replaced, or went away."""

    def __init__(self, kubelet_socket: str) -> None:
        self.path = kubelet_socket
        self.current = socket_identity(kubelet_socket)

    def poll(self) -> str:
        """ "" when unchanged, else "appeared", "replaced" or "gone"."""
        now = socket_identity(self.path)
        before, self.current = self.current, now
        if now == before:
            return ""
        if now is None:
            return "gone"
        return "appeared" if before is None else "replaced"
