"""What the socket folders' watch sees, as events for the registration machine (worker process).

A new `kubelet.sock` (the shared definition, `common.kubelet_socket`) is a kubelet restart,
dated by its ctime (a registration sent after that went to the new kubelet already); it also
tells our socket removed or replaced (serve afresh) from the path of another live server coming
free (serve now).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from common.kubelet_socket import KubeletChange
from common.loop.timers import Timers
from workers import registration_io as fsm
from workers.serving import Serving
from workers.socket_folder_watch import Seen, SocketFolderWatch
from workers.timings import WorkerTimings

LOG = logging.getLogger("workers")


class WatchEvents:
    def __init__(
        self,
        watch: SocketFolderWatch,
        own_socket: str,
        serving: Serving,
        poller: zmq.Poller,
        feed: Callable[[fsm.Event], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watch = watch
        self.own_socket = own_socket
        self.serving = serving
        self.poller = poller
        self.feed = feed
        self.clock = clock
        self._fds: set[int] = set()
        self.rewatch()

    def rewatch(self) -> None:
        self.watch.ensure()
        fds = set(self.watch.filenos())
        for fd in self._fds - fds:
            self.poller.unregister(fd)
        for fd in fds - self._fds:
            self.poller.register(fd, zmq.POLLIN)
        self._fds = fds

    def schedule(self, timers: Timers, t: WorkerTimings) -> None:
        """Arm the rewatch timer and the stat fallback on the worker's `timers`: every 50 ms
        while a folder cannot be watched, when it is the only signal; every second otherwise
        (inotify sees everything in a watched folder)."""
        every = 0.0

        def rewatch() -> None:
            nonlocal every
            self.rewatch()
            now = t.watched_poll_interval if self.all_watched() else t.poll_interval
            if now != every:
                every = now
                timers.every("poll", every, self.poll)

        rewatch()
        timers.every("rewatch", t.rewatch_interval, rewatch)

    def ready(self, polled: dict[Any, int]) -> bool:
        """Whether one of our inotify descriptors is among what poll() found readable."""
        return any(fd in polled for fd in self._fds)

    def all_watched(self) -> bool:
        return len(self._fds) == len(self.watch.folders())

    def poll(self) -> None:
        """The stat fallback (a timer)."""
        self._on_seen(self.watch.poll())

    def read(self) -> None:
        """What inotify queued (every pass of the loop)."""
        self._on_seen(self.watch.read())

    def _on_seen(self, seen: Seen) -> None:
        if seen.rescan:
            self.rewatch()
        # Our socket first: a new kubelet wipes it before it creates kubelet.sock, and a Register
        # sent while our socket is gone costs ~1 s (the kubelet's dial-back waits out gRPC's
        # reconnect backoff), so the machine must know the socket is gone when it hears of the
        # new kubelet.
        if seen.own_touched:
            self.check_own_socket()
        for change in seen.kubelet:
            if change is KubeletChange.GONE:
                self.feed(fsm.KubeletGone())
                continue
            self.feed(fsm.KubeletRestart(f"kubelet.sock {change.value}", self._appeared_at()))

    def _appeared_at(self) -> float:
        """When kubelet.sock was created, on our clock (its ctime; now if that is unknown)."""
        try:
            ctime = os.lstat(self.watch.kubelet.path).st_ctime_ns / 1e9
        except OSError:
            return self.clock()
        return self.clock() - max(0.0, time.time() - ctime)

    def check_own_socket(self) -> None:
        """Feed `OwnSocketGone` when our socket was removed or replaced (or the path came free)."""
        server = self.serving.server
        if server is not None:
            if server.intact():
                return
            if self.serving.replaced_by_live_server():
                reason = (
                    f"own socket {server.socket_path} was replaced by another live server "
                    "(another instance of this plugin?); not taking it back"
                )
            else:
                reason = f"own socket {server.socket_path} was removed (kubelet restart?)"
            self.feed(fsm.OwnSocketGone(reason))
        elif self.serving.in_use and not os.path.lexists(self.own_socket):
            LOG.info("the other server's socket is gone; serving now")
            self.serving.in_use = False
            self.feed(fsm.OwnSocketGone("the path is free"))

    def close(self) -> None:
        for fd in self._fds:
            self.poller.unregister(fd)
        self._fds = set()
        self.watch.close()
