"""What counts as a kubelet restart, in one place (supervisor and workers).

A kubelet restart is **a new `kubelet.sock`**: an entry of that name created or moved into the
device-plugin folder (inotify), or, by the stat fallback, the socket appearing where there was
none or with another (device, inode). Nothing else is: a chmod, chown or hard link moves the
socket's ctime but is no restart, so ctime is never compared. The stat fallback alone misses a
kubelet killed and started again on ext4, which usually gets the *same* inode number for its new
socket; the inotify creation event does not.

`KubeletSocket` is fed both ways and reports each new socket once: a creation seen by inotify
updates the identity, so the next stat look does not count the same socket again.
"""

from __future__ import annotations

import enum
import os

from common.loop.file_identity import FileId, file_id

KUBELET_SOCKET = "kubelet.sock"


class KubeletChange(enum.Enum):
    APPEARED = "appeared"  # there was no kubelet.sock before: a kubelet (re)started
    REPLACED = "replaced"  # a new kubelet.sock: a kubelet restart
    GONE = "gone"  # kubelet.sock removed: the kubelet is stopping (or was wiped by hand)


class KubeletSocket:
    """Tracks `<device-plugin-dir>/kubelet.sock`."""

    def __init__(self, device_plugin_dir: str | os.PathLike[str]) -> None:
        self.path = os.path.join(os.fspath(device_plugin_dir), KUBELET_SOCKET)
        self.current: FileId | None = file_id(self.path)

    def created(self) -> KubeletChange | None:
        """inotify said an entry named kubelet.sock was created or moved in.

        A restart even when the identity is unchanged (an inode number reused). None when the
        entry is gone again already: the removal event that follows in the queue tells.
        """
        now = file_id(self.path)
        if now is None:
            return None
        before, self.current = self.current, now
        return KubeletChange.APPEARED if before is None else KubeletChange.REPLACED

    def removed(self) -> KubeletChange | None:
        """inotify said kubelet.sock was deleted or moved out.

        None when a kubelet.sock is there again: its creation event follows in the queue.
        """
        if file_id(self.path) is not None:
            return None
        before, self.current = self.current, None
        return KubeletChange.GONE if before is not None else None

    def poll(self) -> KubeletChange | None:
        """The stat fallback: compare (device, inode) with what was seen last."""
        now = file_id(self.path)
        before, self.current = self.current, now
        if now == before:
            return None
        if now is None:
            return KubeletChange.GONE
        return KubeletChange.APPEARED if before is None else KubeletChange.REPLACED
