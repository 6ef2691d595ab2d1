"""Notices a kubelet restart by `kubelet.sock` being replaced (supervisor process).

A restarting kubelet deletes every socket in the device-plugins folder and creates a new
`kubelet.sock`, so its (device, inode, ctime) changes. Workers notice on their own too; this is the
node-wide signal that also counts restarts for the metrics.
"""

from __future__ import annotations

import os


def _identity(path: str) -> tuple[int, int, int] | None:
    # The inode number alone can be reused by a socket created right after the old one went away;
    # the change time tells those apart.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


class KubeletWatch:
    def __init__(self, device_plugin_dir: str | os.PathLike[str]) -> None:
        self.socket = os.path.join(os.fspath(device_plugin_dir), "kubelet.sock")
        self._seen = _identity(self.socket)

    def poll(self) -> bool:
        """True once for each new `kubelet.sock` since the last poll (not for it going away)."""
        now = _identity(self.socket)
        changed = now is not None and now != self._seen
        self._seen = now
        return changed
