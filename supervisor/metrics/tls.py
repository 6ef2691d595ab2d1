"""TLS for the metrics endpoint, and client certificates for `/metrics` (supervisor process).

The endpoint listens on every node address (host network) and `/metrics` carries per-pod series,
so it can be protected: `--metrics-tls-cert-file` (and `--metrics-tls-key-file` when the key is
not in the same PEM file) turns on TLS; `--metrics-tls-client-ca-file` in addition makes
`/metrics` answer only clients whose certificate that CA signed (403 for the others).

Client certificates are asked for but not required at the TLS level (`CERT_OPTIONAL`): the
kubelet's HTTPS probes present none, and `/healthz` and `/readyz` must still answer them. A
certificate that *is* presented must verify, or the handshake fails.

Certificates rotate (cert-manager renews into the same Secret): the files are looked at again at
most every `RELOAD_CHECK` seconds, from the connection threads, and a changed set builds a new
context that new connections use; a set that does not load is logged and the previous context
stays. Only TLS 1.2 and newer is offered.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

#: Seconds between looks at the certificate files for a renewal.
RELOAD_CHECK = 10.0


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used."""


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str = ""  # "" when the key is in cert_file
    client_ca_file: str = ""  # "" serves /metrics to any client


def _identity(paths: tuple[str, ...]) -> tuple[tuple[int, int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0, 0))
        else:
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def build_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context from the files; raises TlsError naming the file and what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file or None)
    except (OSError, ssl.SSLError) as err:
        key = f" and key {files.key_file!r}" if files.key_file else ""
        raise TlsError(
            f"cannot load the metrics TLS certificate {files.cert_file!r}{key}: {err}"
        ) from None
    if files.client_ca_file:
        try:
            context.load_verify_locations(cafile=files.client_ca_file)
        except (OSError, ssl.SSLError) as err:
            raise TlsError(
                f"cannot load the metrics client CA {files.client_ca_file!r}: {err}"
            ) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class TlsContext:
    """The current server context, rebuilt when the files change (thread-safe)."""

    def __init__(self, files: TlsFiles, clock: Callable[[], float] = time.monotonic) -> None:
        self.files = files
        self._clock = clock
        self._paths = tuple(p for p in (files.cert_file, files.key_file, files.client_ca_file) if p)
        self._lock = threading.Lock()
        self._seen = _identity(self._paths)
        self._context = build_context(files)  # raises TlsError: refused before serving
        self._checked = clock()

    @property
    def client_auth(self) -> bool:
        """True when /metrics needs a client certificate."""
        return bool(self.files.client_ca_file)

    def context(self) -> ssl.SSLContext:
        with self._lock:
            now = self._clock()
            if now - self._checked >= RELOAD_CHECK:
                self._checked = now
                self._reload_if_changed()
            return self._context

    def _reload_if_changed(self) -> None:
        seen = _identity(self._paths)
        if seen == self._seen:
            return
        try:
            context = build_context(self.files)
        except TlsError as err:  # half-written during a renewal, most likely: try again later
            LOG.error("%s; serving with the previous certificate", err)
            return
        self._seen, self._context = seen, context
        LOG.info("metrics TLS certificate files changed: loaded cert=%s", self.files.cert_file)
