"""What the demo prints: prose for people or one JSON event per line (demo process,
`demo`), and the small formatters its sentences use.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from demo.signals import signals_deferred
from simulator.kubelet import AdvertisedDevice


def _line(text: str) -> None:
    """One whole line: a stop signal waits until it is out (`print` writes the text and the
    newline separately, and JSON readers must never see two events on one line)."""
    if threading.current_thread() is not threading.main_thread():
        print(text, flush=True)  # signals interrupt the main thread only
        return
    with signals_deferred():
        print(text, flush=True)


class Narrator:
    def __init__(self, as_json: bool = False) -> None:
        self.t0 = time.monotonic()
        self.step = 0
        self.as_json = as_json

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def title(self, text: str) -> None:
        self.step += 1
        if self.as_json:
            self.event("step", step=self.step, title=text)
        else:
            _line(f"\n[{self._now():5.2f}s] {self.step}. {text}")

    def say(self, text: str) -> None:
        if self.as_json:
            self.event("say", text=text)
        else:
            _line(f"         {text}")

    def event(self, name: str, **data: Any) -> None:
        """A fact for `--json` readers; prose readers get it through `say`."""
        if self.as_json:
            _line(json.dumps({"event": name, "t": self._now(), **data}))


def summarise(devices: list[AdvertisedDevice]) -> str:
    if not devices:
        return "no devices"
    healths = sorted({d.health for d in devices})
    numa = sorted({n for d in devices for n in d.numa_nodes})
    ids = f"{devices[0].id}..{devices[-1].id}" if len(devices) > 1 else devices[0].id
    return (
        f"{len(devices)} device IDs ({ids}), {'/'.join(healths)}, "
        f"NUMA {','.join(map(str, numa)) or 'unknown'}"
    )


def wrap(items: list[str], width: int) -> list[str]:
    lines, line = [], ""
    for item in items:
        if line and len(line) + 1 + len(item) > width:
            lines.append(line)
            line = item
        else:
            line = f"{line} {item}".strip()
    return [*lines, line] if line else lines


def hcas_text(count: int) -> str:
    return f"{count} HCA{'s' if count != 1 else ''}"


def cli_command() -> str:
    """How to run the CLI from another terminal: the console script beside this Python."""
    script = Path(sys.executable).parent / "rdma-shared-dp"
    return str(script) if script.exists() else f"{sys.executable} -m supervisor"
