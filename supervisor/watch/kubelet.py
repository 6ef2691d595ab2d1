"""Notices a kubelet restart by a new `kubelet.sock` (supervisor process).

A restarting kubelet deletes every socket in the device-plugins folder and creates a new
`kubelet.sock`. What counts as a restart is `common.kubelet_socket`, shared with the workers: a
chmod or chown of the socket is none. Workers notice on their own too (with inotify); this is the
node-wide signal that also counts restarts for the metrics.
"""

from __future__ import annotations

import os

from common.kubelet_socket import KubeletChange, KubeletSocket


class KubeletWatch:
    def __init__(self, device_plugin_dir: str | os.PathLike[str]) -> None:
        self._socket = KubeletSocket(device_plugin_dir)
        self.socket = self._socket.path

    def poll(self) -> bool:
        """True once for each new `kubelet.sock` since the last poll (not for it going away)."""
        return self._socket.poll() in (KubeletChange.APPEARED, KubeletChange.REPLACED)
