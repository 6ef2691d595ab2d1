"""The DRA driver process for tests: started with its folders in one temp folder, fed state
lines on its stdin like the supervisor feeds it, its status lines collected (tests only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dra.feed import NodeState
from dra.names import DEFAULT_DRIVER_NAME
from tests.conditions import wait_until

DRIVER = DEFAULT_DRIVER_NAME
REPO = Path(__file__).resolve().parents[1]


@dataclass
class DriverProcess:
    tmp: Path
    api_url: str
    node: str
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    statuses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dra_sock(self) -> str:
        return str(self.tmp / "plugins" / DRIVER / "dra.sock")

    @property
    def reg_sock(self) -> str:
        return str(self.tmp / "registry" / f"{DRIVER}-reg.sock")

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "dra", "--node-name", self.node,
            "--plugins-dir", str(self.tmp / "plugins"),
            "--plugins-registry-dir", str(self.tmp / "registry"),
            "--cdi-dir", str(self.tmp / "cdi"), "--state-dir", str(self.tmp / "state"),
            "--host-root", str(self.tmp / "host"), "--api-server", self.api_url,
            "--status-interval", "0.2", *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
        out = self.proc.stdout
        assert out is not None
        threading.Thread(target=self._read, args=(out,), daemon=True).start()
        wait_until(lambda: os.path.exists(self.reg_sock), 20, what="registration socket")

    def _read(self, out: Any) -> None:
        for line in out:
            self.statuses.append(json.loads(line))

    def feed(self, state: NodeState) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(state.to_line())
        self.proc.stdin.flush()

    def last(self) -> dict[str, Any]:
        return self.statuses[-1] if self.statuses else {}

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(10)
