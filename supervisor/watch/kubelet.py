"""Notices a kubelet restart: `kubelet.sock` created again (supervisor process).

One definition, shared with the workers (docs/architecture.md): a restart is a new
`kubelet.sock`, seen either as an inotify creation (created or moved in) of that name, or as a
changed (device, inode) (`common.loop.file_identity`). A real kubelet killed and started again
re-creates its socket at the same inode number, so the creation event is what catches it; the
identity covers a missed event (no inotify, a queue overflow). A chmod or chown moves only the
ctime and sends no creation event: not a restart. The socket going away is not one yet either.

`poll()` reads the inotify queue without blocking and is called from the loop's timer; a folder
that cannot be watched (missing at start, or removed) is watched again at a later poll.
"""

from __future__ import annotations

import logging
import os

from common.loop.file_identity import FileId, file_id
from common.loop.inotify import Change, DirWatch

LOG = logging.getLogger(__name__)

SOCKET_NAME = "kubelet.sock"


class KubeletWatch:
    def __init__(self, device_plugin_dir: str | os.PathLike[str], watch: bool = True) -> None:
        """`watch=False` takes the baseline only; `open()` starts the inotify watch later."""
        self.folder = os.fspath(device_plugin_dir)
        self.socket = os.path.join(self.folder, SOCKET_NAME)
        self._dir: DirWatch | None = None
        if watch:
            self.open()
        self._seen: FileId | None = file_id(self.socket)

    def open(self) -> None:
        if self._dir is not None:
            return
        try:
            self._dir = DirWatch(self.folder)
        except OSError as err:
            LOG.debug("cannot watch %s yet: %s", self.folder, err)
            self._dir = None

    def _created(self) -> bool:
        """Whether the queued events include a creation of kubelet.sock."""
        if self._dir is None:
            self.open()
            return False
        created = False
        for event in self._dir.read():
            if event.change is Change.CREATED and event.name == SOCKET_NAME:
                created = True
            elif event.change is Change.GONE:
                self._dir.close()
                self._dir = None
                break
        return created

    def poll(self) -> bool:
        """True once for each new `kubelet.sock` since the last poll (not for it going away)."""
        created = self._created()
        now = file_id(self.socket)
        restarted = now is not None and (created or now != self._seen)
        self._seen = now
        return restarted

    def close(self) -> None:
        if self._dir is not None:
            self._dir.close()
            self._dir = None
