"""Notices when the config file's content changes (supervisor process).

Kubernetes updates a mounted ConfigMap by swapping a `..data` symlink, so watching the file itself
(inotify on its inode) misses updates; comparing a hash of what `open()` reads through the links is
what works. The supervisor calls `poll()` from its timer and on SIGHUP.
"""

from __future__ import annotations

import hashlib
import logging
import os

from common.loop.throttle import LogThrottle

LOG = logging.getLogger(__name__)

#: An unreadable config file is logged when it starts, then at most this often while it lasts.
UNREADABLE_LOG_INTERVAL = 300.0


class ConfigWatch:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._digest: str | None = None
        self._throttle = LogThrottle(UNREADABLE_LOG_INTERVAL)

    def read(self) -> tuple[bytes | None, str]:
        """The file's bytes (None when unreadable) and the reason it is unreadable."""
        try:
            with open(self.path, "rb") as f:
                return f.read(), ""
        except OSError as err:
            return None, f"cannot read {self.path}: {err.strerror or err}"

    def mark_seen(self, data: bytes) -> None:
        self._digest = hashlib.sha256(data).hexdigest()

    def poll(self) -> bytes | None:
        """New content since the last `mark_seen` or `poll`, or None when nothing changed.

        An unreadable file counts as no change: the running config stays (logged when it starts,
        then every few minutes while it lasts).
        """
        data, why = self.read()
        if data is None:
            if log := self._throttle.allow("unreadable"):
                again = f" (and {log.swallowed} times since)" if log.swallowed else ""
                LOG.warning(
                    "%s; keeping the running config until it is readable again%s", why, again
                )
            return None
        if self._throttle.clear("unreadable"):
            LOG.info("config file %s is readable again", self.path)
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        return data
