"""The DRA driver as a helper child of the supervisor, fed after every scan (supervisor process).

`--dra` (docs/dra.md) starts `python -m dra` once per node through the lifecycle that runs the
PodResources poller: started, reaped, restarted with backoff, stopped with the workers. A crash
touches no worker. The supervisor never imports the driver's modules (it would load grpc): it
builds the state line itself, the same JSON `dra.feed` reads, from its one scan:

    {"v": 1, "dra_resources": [...], "resources": [...], "candidates": [...]}

and writes it to the child's stdin pipe without blocking (a line the pipe cannot take now is
finished on the next loop turn; a newer state replaces one not yet started). Each incarnation
gets the latest state again at its start. The child's status lines (stdout) are kept as
`DraChild.status` and their changes logged.

`DraObserver` joins this to the loop through the observer hooks, around the observer the
supervisor already has (metrics or none): every hook goes to that one too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from common import dra_modes
from common.config import Config, ResourceConfig
from common.devices import Candidate, Scan
from common.messages import DraStatus
from supervisor.children import ChildSpec
from supervisor.observer import Observer

LOG = logging.getLogger(__name__)
FEED_VERSION = 1


def state_line(
    dra_resources: Sequence[ResourceConfig],
    resources: Sequence[ResourceConfig],
    candidates: Sequence[Candidate],
) -> bytes:
    body = {
        "v": FEED_VERSION,
        "dra_resources": [r.to_json() for r in dra_resources],
        "resources": [r.to_json() for r in resources],
        "candidates": [c.to_json() for c in candidates],
    }
    return (json.dumps(body, separators=(",", ":")) + "\n").encode()


class DraChild:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], setting: str) -> None:
        self.setting = setting
        read_in, self._write = os.pipe()
        fcntl.fcntl(self._write, fcntl.F_SETFL, os.O_NONBLOCK)
        self._read_out, write_out = os.pipe()
        fcntl.fcntl(self._read_out, fcntl.F_SETFL, os.O_NONBLOCK)
        self.spec = ChildSpec(
            name="DRA driver",
            argv=tuple(argv),
            env=dict(env),
            stdout=write_out,
            stdin=read_in,
            on_start=self.resend,
        )
        self.resources: tuple[ResourceConfig, ...] = ()
        self.dra_resources: tuple[ResourceConfig, ...] = ()
        self._latest: bytes | None = None
        self._in_flight = b""  # the rest of a line the pipe took in part
        self._queued: bytes | None = None
        self._partial_out = b""
        self.status: dict[str, Any] = {}

    def workers(self, config: Config) -> Config:
        """The part of `config` the workers serve; the rest is ours from now on (ModeError when
        the setting does not fit the config: the caller refuses the config)."""
        split = dra_modes.split(config, self.setting)
        self.resources, self.dra_resources = config.resources, split.dra
        return dra_modes.workers_config(config, self.setting)

    @property
    def status_fd(self) -> int:
        return self._read_out

    def send(self, candidates: Sequence[Candidate]) -> None:
        self._latest = state_line(self.dra_resources, self.resources, candidates)
        self._queued = self._latest
        self.flush()

    def resend(self) -> None:
        """A new incarnation starts: it gets the latest state (after any half-sent line)."""
        if self._latest is not None:
            self._queued = self._latest
        self.flush()

    def flush(self) -> None:
        while True:
            if not self._in_flight:
                if self._queued is None:
                    return
                self._in_flight, self._queued = self._queued, None
            try:
                written = os.write(self._write, self._in_flight)
            except BlockingIOError:
                return  # the child reads slower than we scan: finish on a later turn
            except OSError as err:
                LOG.warning("cannot feed the DRA driver: %s", err)
                self._in_flight = b""
                return
            self._in_flight = self._in_flight[written:]

    def read_status(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self._read_out, 1 << 16):
                self._partial_out += chunk
        *lines, self._partial_out = self._partial_out.split(b"\n")
        for line in lines[-1:]:
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if isinstance(status, dict):
                self._changed(status)

    def _changed(self, status: dict[str, Any]) -> None:
        for key in ("registered", "published", "publish_error", "registration_error"):
            if status.get(key) != self.status.get(key):
                LOG.info("DRA driver %s=%s", key, status.get(key))
        self.status = status


class DraObserver(Observer):
    """Runs the DRA child beside `inner`'s hooks and children."""

    def __init__(self, inner: Observer, child: DraChild) -> None:
        self.inner = inner
        self.child = child
        # With metrics on, the DRA figures join /metrics and /readyz (supervisor/metrics/dra.py).
        inner.dra_reported(self.child.status)
        for name in dir(Observer):
            if not name.startswith("_") and name not in type(self).__dict__:
                setattr(self, name, getattr(inner, name))

    def children(self) -> Sequence[ChildSpec]:
        return (*self.inner.children(), self.child.spec)

    def poll_fds(self) -> Sequence[int]:
        return (*self.inner.poll_fds(), self.child.status_fd)

    def config_applied(self, config: Config) -> None:
        # `config` is the workers' part; DraChild.workers kept the whole and our part.
        self.inner.config_applied(config)

    def scan_finished(
        self,
        trigger: str,
        scan: Scan,
        seconds: float,
        selections: Mapping[str, tuple[Candidate, ...]],
    ) -> None:
        self.child.send(scan.candidates)
        self.inner.scan_finished(trigger, scan, seconds, selections)

    def loop_turned(self, readable: Collection[int]) -> None:
        if self.child.status_fd in readable:
            self.child.read_status()
            self.inner.dra_reported(self.child.status)
        self.child.flush()
        self.inner.loop_turned(readable)

    def dra_status(self) -> DraStatus:
        """For `rdma-shared-dp status`: the child's last status line."""
        st = self.child.status
        return DraStatus(
            pid=int(st.get("pid") or 0),
            registered=bool(st.get("registered")),
            registration_error=str(st.get("registration_error") or ""),
            published=bool(st.get("published")),
            generation=int(st.get("generation") or 0),
            devices=int(st.get("devices") or 0),
            publish_error=str(st.get("publish_error") or ""),
            prepared_claims=int(st.get("prepared_claims") or 0),
        )


def dra_argv(
    node_name: str, plugins_registry_dir: str, cdi_dir: str, runtime_dir: str, host_root: str
) -> list[str]:
    plugins_dir = os.path.join(os.path.dirname(plugins_registry_dir.rstrip("/")), "plugins")
    return [
        sys.executable, "-m", "dra", "--node-name", node_name,
        "--plugins-dir", plugins_dir, "--plugins-registry-dir", plugins_registry_dir,
        "--cdi-dir", cdi_dir, "--state-dir", os.path.join(runtime_dir, "dra"),
        "--host-root", host_root,
    ]  # fmt: skip
