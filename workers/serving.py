"""Serving our socket: one gRPC server per "generation" (worker process, main thread).

gRPC unlinks whatever is at its unix path when its server stops (and before it binds), even a
socket another process put there since. So a server binds a private name
(`common.private_socket`), which is hard-linked to the real name (EEXIST if someone got there
first): gRPC only ever touches the private name. In the device-plugin folder the private name is
kept in a hidden subfolder the kubelet's wipe skips, so after a kubelet restart the real name is
re-linked to the server we run (`relink`) instead of building a new one; in the plugins-registry
folder it is removed once linked. A socket at our path is deleted only when nothing answers a
connect() there; a live one belongs to another process (an old worker outliving a restarted
supervisor, the Go plugin during a migration) and is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from common.config import ResourceConfig
from common.loop.file_identity import ContentStamp, content_stamp
from common.messages import WorkerSettings
from common.private_socket import private_socket
from workers.events import EventQueue
from workers.servicer import Counters, StreamHub, add_services
from workers.timings import WorkerTimings

LOG = logging.getLogger("workers.serving")

#: sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def choose_mode(settings: WorkerSettings) -> str:
    """Classic or watcher: `auto` is the watcher where the kubelet made its plugins registry."""
    if settings.registration_mode != "auto":
        return settings.registration_mode
    registry = settings.plugins_registry_dir
    return "watcher" if registry and os.path.isdir(registry) else "classic"


def serving_key(settings: WorkerSettings, resource: ResourceConfig) -> tuple[str, ...]:
    """What decides where our socket lives and what we register as."""
    return (
        settings.device_plugin_dir,
        settings.plugins_registry_dir,
        settings.registration_mode,
        resource.full_name,
    )


class SocketInUse(OSError):
    """Our socket path is held by a live server that is not ours."""


def socket_answers(path: str) -> bool:
    """Whether something accepts connections on the unix socket at `path`.

    Only "refused" and "no such file" mean nobody is there; anything else (a full backlog,
    no permission) may be a live server, which we must not delete.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    return True


@dataclass
class Server:
    generation: int
    grpc_server: grpc.Server
    socket_path: str
    #: Our socket as we made it. Its mtime tells apart a socket someone re-created at our path
    #: with a reused inode number; a chmod does not move it.
    stamp: ContentStamp | None
    #: The private name kept for the server's life (device-plugin folder), and its identity.
    kept: str | None = None
    kept_id: tuple[int, int] | None = None

    def intact(self) -> bool:
        return self.stamp is not None and content_stamp(self.socket_path) == self.stamp

    def kept_socket(self) -> str | None:
        """The kept private name, if it is still the socket this server bound."""
        if self.kept is None:
            return None
        try:
            st = os.lstat(self.kept)
        except OSError:
            return None
        return self.kept if (st.st_dev, st.st_ino) == self.kept_id else None


class Serving:
    """The current server, if any, and how to make and stop one."""

    def __init__(
        self,
        hub: StreamHub,
        counters: Counters,
        events: EventQueue,
        timings: WorkerTimings,
        report: Callable[[str, str], None],
        threads: int = 8,
    ) -> None:
        self.hub = hub
        self.counters = counters
        self.events = events
        self.t = timings
        self.report = report  # (error code, message) to the supervisor
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="grpc")
        self.server: Server | None = None
        self.generation = 0
        self.in_use = False  # the last serve failed because another live server holds the path
        self._reported = ""  # error code told to the supervisor in this run of failures

    def serve(self, path: str, full_name: str, watcher: bool) -> Server | None:
        """Serve on `path`, never deleting or replacing a socket someone else serves."""
        self.in_use = False
        folder = os.path.dirname(path)
        # Kept where the kubelet wipes (the device-plugin folder), if the longer name fits.
        keep = not watcher
        private = private_socket(folder, os.getpid(), keep)
        if keep and len(os.fsencode(private)) > MAX_SOCKET_PATH:
            keep, private = False, private_socket(folder, os.getpid(), False)
        longest = max(len(os.fsencode(path)), len(os.fsencode(private)))
        if longest > MAX_SOCKET_PATH:
            return self._failed(
                path,
                f"socket path is {longest} bytes, more than the {MAX_SOCKET_PATH} a unix socket "
                "allows; use a shorter folder",
            )
        try:
            os.makedirs(folder, exist_ok=True)
            if keep:
                os.makedirs(os.path.dirname(private), mode=0o700, exist_ok=True)
            self._remove_stale(path)
        except SocketInUse as exc:
            return self._failed(path, str(exc), "socket_in_use")
        except OSError as exc:
            return self._failed(path, str(exc))
        self.generation += 1
        server = grpc.server(self.pool, options=[("grpc.so_reuseport", 0)])
        add_services(
            server,
            self.hub,
            self.counters,
            self.events,
            self.generation,
            full_name,
            path if watcher else None,
        )
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(private)  # a leftover of ours: the name has our pid
            if not self._bind(server, private, keep):
                raise RuntimeError("gRPC could not bind")
            server.start()
            st = os.lstat(private)
            try:
                os.link(private, path)
            finally:
                if not keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(private)
        except FileExistsError:
            self._stop_unlinked(server, private)
            return self._failed(path, f"another process created {path} just now", "socket_in_use")
        except (RuntimeError, OSError) as exc:
            self._stop_unlinked(server, private)
            return self._failed(path, f"{exc} (is the folder writable?)")
        self._reported = ""
        kept = (private, (st.st_dev, st.st_ino)) if keep else (None, None)
        self.server = Server(self.generation, server, path, content_stamp(path), *kept)
        LOG.info("serving socket=%s generation=%d", path, self.generation)
        return self.server

    def relink(self) -> Server | None:
        """Give our public name back to the server we run (after a kubelet's wipe); None when
        that cannot be done (no kept private name, or someone else's socket is there now)."""
        server = self.server
        kept = server.kept_socket() if server is not None else None
        if server is None or kept is None:
            return None
        try:
            os.link(kept, server.socket_path)
        except OSError:
            return None  # EEXIST: another socket is there now; serving anew sorts that out
        server.stamp = content_stamp(server.socket_path)
        LOG.info("re-linked socket=%s generation=%d", server.socket_path, server.generation)
        return server

    @staticmethod
    def _bind(server: grpc.Server, private: str, keep: bool) -> bool:
        for _ in range(2):
            try:
                if server.add_insecure_port(f"unix:{private}") != 0:
                    return True
            except RuntimeError:  # newer gRPC raises instead of returning 0
                pass
            if not keep or os.path.isdir(os.path.dirname(private)):
                return False
            # Another worker, stopping, removed the shared folder as it was empty: once more.
            os.makedirs(os.path.dirname(private), mode=0o700, exist_ok=True)
        return False

    @staticmethod
    def _stop_unlinked(server: grpc.Server, private: str) -> None:
        server.stop(None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private)

    def _failed(self, path: str, problem: str, code: str = "serve_failed") -> Server | None:
        # Told once per run of failures (again if the reason changes); the log repeats.
        self.in_use = code == "socket_in_use"
        LOG.error("cannot serve on %s: %s; retrying", path, problem)
        if self._reported != code:
            self._reported = code
            self.report(code, f"{path}: {problem}")
        return None

    def _remove_stale(self, path: str) -> None:
        """Delete a socket nobody serves; a live one is another process's (SocketInUse)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it by hand")
        if socket_answers(path):
            raise SocketInUse(
                f"another live server holds {path} (another instance of this plugin, or the Go "
                f"plugin?); not deleting it, looking again every {self.t.in_use_retry:.0f}s"
            )
        os.unlink(path)
        LOG.info("removed stale socket %s", path)

    def replaced_by_live_server(self) -> bool:
        """Our path holds a socket that is not ours and answers."""
        server = self.server
        if server is None:
            return False
        path = server.socket_path
        return content_stamp(path) is not None and socket_answers(path)

    def stop(self) -> None:
        current = self.server
        if current is None:
            return
        self.server = None
        self.hub.end_generation(current.generation)
        current.grpc_server.stop(self.t.stop_grace).wait(self.t.stop_budget)
        # Only ours: a replaced socket belongs to whoever made it.
        if current.intact():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(current.socket_path)
        if current.kept_socket() is not None:  # gRPC unlinks it itself; this is the backstop
            with contextlib.suppress(FileNotFoundError):
                os.unlink(current.kept or "")

    def close(self) -> None:
        current = self.server
        self.hub.end_generation(None)
        self.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if current is not None and current.kept is not None:
            # The shared folder of kept names goes with the last worker (others keep it busy).
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(current.kept))
