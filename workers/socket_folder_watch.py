"""Noticing that the kubelet may have lost this worker (worker process, main thread).

A restarting kubelet deletes every socket in the device-plugin folder (ours too, in classic mode)
and creates a new `kubelet.sock`, usually at the *same inode number* on ext4 when the old kubelet
was killed. So the primary signals are inotify events (`common.loop.inotify.DirWatch`) on the
device-plugin folder (`kubelet.sock` created or moved in, or gone) and on the folder of our own
socket (the plugins-registry folder in watcher mode): an entry of our socket's name removed or
created. What a new `kubelet.sock` means is `common.kubelet_socket` (shared with the supervisor).
The stat checks stay as the fallback: every `poll_interval` (50 ms) while a folder cannot be
watched (missing, no inotify), when they are the only signal, and every `watched_poll_interval`
(1 s) as a backstop otherwise; watching is tried again every `rewatch_interval`.
The third signal, the kubelet's ListAndWatch stream ending, arrives as an event.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from common.kubelet_socket import KUBELET_SOCKET, KubeletChange, KubeletSocket
from common.loop.inotify import Change, DirWatch

LOG = logging.getLogger("workers.socket_folder_watch")


@dataclass
class Seen:
    """What one look found."""

    kubelet: list[KubeletChange] = field(default_factory=list)
    own_touched: bool = False  # our socket's name was created or removed: check it
    rescan: bool = False  # events were lost (or a folder went): compare by stat at once


class SocketFolderWatch:
    def __init__(self, device_plugin_dir: str, own_socket: str) -> None:
        self.device_plugin_dir = os.path.abspath(device_plugin_dir)
        self.own_dir, self.own_name = os.path.split(os.path.abspath(own_socket))
        self.kubelet = KubeletSocket(self.device_plugin_dir)
        self._watches: dict[str, DirWatch] = {}
        self._warned: set[str] = set()
        self.ensure()

    def folders(self) -> list[str]:
        return sorted({self.device_plugin_dir, self.own_dir})

    def ensure(self) -> bool:
        """Watch every folder not watched yet; True when the set of descriptors changed."""
        changed = False
        for folder in self.folders():
            current = self._watches.get(folder)
            if current is not None and not current.gone:
                continue
            if current is not None:
                current.close()
                del self._watches[folder]
                changed = True
            try:
                self._watches[folder] = DirWatch(folder)
            except OSError as exc:
                if folder not in self._warned:
                    self._warned.add(folder)
                    LOG.warning(
                        "cannot watch %s (%s); noticing kubelet restarts by polling only",
                        folder,
                        exc,
                    )
                continue
            changed = True
            if folder in self._warned:
                self._warned.discard(folder)
                LOG.info("watching %s again", folder)
        return changed

    def filenos(self) -> list[int]:
        return [w.fileno() for w in self._watches.values() if not w.gone]

    def read(self) -> Seen:
        """Everything the watches queued so far (never blocks)."""
        seen = Seen()
        for folder, watch in list(self._watches.items()):
            for event in watch.read():
                if event.change in (Change.OVERFLOW, Change.GONE):
                    seen.rescan = True
                    continue
                if folder == self.device_plugin_dir and event.name == KUBELET_SOCKET:
                    change = (
                        self.kubelet.created()
                        if event.change is Change.CREATED
                        else self.kubelet.removed()
                    )
                    if change is not None:
                        seen.kubelet.append(change)
                if folder == self.own_dir and event.name == self.own_name:
                    seen.own_touched = True
        if seen.rescan:
            seen.kubelet.extend(self.poll().kubelet)
            seen.own_touched = True
        return seen

    def poll(self) -> Seen:
        """The stat fallback for kubelet.sock (our socket is checked by the caller)."""
        change = self.kubelet.poll()
        return Seen(kubelet=[change] if change is not None else [], own_touched=True)

    def close(self) -> None:
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()
