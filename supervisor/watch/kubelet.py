"""Notices a kubelet restart: `kubelet.sock` created again (supervisor process).

What counts as a restart is `common.kubelet_socket`, shared with the workers: a new
`kubelet.sock`, seen either as an inotify creation (created or moved in) of that name, or as a
changed (device, inode). A real kubelet killed and started again re-creates its socket at the
same inode number, so the creation event is what catches it; the identity covers a missed event
(no inotify, a queue overflow). A chmod or chown moves only the ctime and sends no creation
event: not a restart. The socket going away is not one yet either. Workers notice on their own
too; this is the node-wide watch that counts restarts for the metrics.

`poll()` reads the inotify queue without blocking and is called from the loop's timer; a folder
that cannot be watched (missing at start, or removed) is watched again at a later poll.
"""

from __future__ import annotations

import logging
import os

from common.kubelet_socket import KUBELET_SOCKET, KubeletChange, KubeletSocket
from common.loop.inotify import Change, DirWatch

LOG = logging.getLogger(__name__)

SOCKET_NAME = KUBELET_SOCKET
_NEW = (KubeletChange.APPEARED, KubeletChange.REPLACED)


class KubeletSocketWatch:
    def __init__(self, device_plugin_dir: str | os.PathLike[str], watch: bool = True) -> None:
        """`watch=False` takes the baseline only; `open()` starts the inotify watch later."""
        self.folder = os.fspath(device_plugin_dir)
        self._socket = KubeletSocket(self.folder)
        self.socket = self._socket.path
        self._dir: DirWatch | None = None
        if watch:
            self.open()

    def open(self) -> None:
        if self._dir is not None:
            return
        try:
            self._dir = DirWatch(self.folder)
        except OSError as err:
            LOG.debug("cannot watch %s yet: %s", self.folder, err)
            self._dir = None

    def _created(self) -> bool:
        """Whether the queued events include a creation of kubelet.sock that is still there."""
        if self._dir is None:
            self.open()
            return False
        created = False
        for event in self._dir.read():
            if event.change is Change.CREATED and event.name == SOCKET_NAME:
                created = self._socket.created() in _NEW or created
            elif event.change is Change.GONE:
                self._dir.close()
                self._dir = None
                break
        return created

    def poll(self) -> bool:
        """True once for each new `kubelet.sock` since the last poll (not for it going away)."""
        created = self._created()
        return self._socket.poll() in _NEW or created

    def close(self) -> None:
        if self._dir is not None:
            self._dir.close()
            self._dir = None
