"""Logging setup shared by every process: plain text or one JSON object per line.

Supervisor and workers use the same shape, so one log query covers both: JSON lines carry `ts`,
`level`, `logger`, `msg`, `process` (supervisor or worker), `pid`, and fields such as `resource`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str = "", fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.process = process
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.process:
            entry["process"] = self.process
        entry["pid"] = record.process
        entry.update(self.fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    process: str = "",
    fields: Mapping[str, str] | None = None,
) -> None:
    """Configure the root logger once per process; `process` and `fields` tag every line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process, fields))
    else:
        tags = "".join(f" {k}={v}" for k, v in (fields or {}).items())
        tag = f" {process}{tags} pid=%(process)d" if process else tags
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
