"""Prepared claims on disk, so unprepare works after any restart (DRA process).

`<state-dir>/checkpoint.json` holds every prepared claim with what was answered to the kubelet:

    {"version": 1, "claims": {"<uid>": {"namespace", "name",
      "devices": [{"request", "pool", "device", "share_id", "cdi_ids": [...]}]}}}

Written atomically after every change. A file that cannot be read or parsed is kept beside
(`checkpoint.json.bad`) and the driver starts empty: the CDI specs on disk still name their
claims, so leftovers are reconciled from the CDI folder (driver.py), and the kubelet asks again
for what it still needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

from dra.files import write_atomic

LOG = logging.getLogger(__name__)
FILE_NAME = "checkpoint.json"
VERSION = 1


@dataclass(frozen=True)
class PreparedDevice:
    request: str
    pool: str
    device: str
    share_id: str
    cdi_ids: tuple[str, ...]


@dataclass(frozen=True)
class PreparedClaim:
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]


def encode(claims: dict[str, PreparedClaim]) -> bytes:
    body = {uid: asdict(claim) for uid, claim in sorted(claims.items())}
    return (json.dumps({"version": VERSION, "claims": body}, indent=1) + "\n").encode()


def decode(data: bytes) -> dict[str, PreparedClaim]:
    """Raises ValueError (with the reason) for anything but a version-1 checkpoint."""
    obj: Any = json.loads(data)
    if not isinstance(obj, dict) or obj.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} checkpoint")
    out = {}
    for uid, claim in obj["claims"].items():
        devices = tuple(
            PreparedDevice(
                str(d["request"]),
                str(d["pool"]),
                str(d["device"]),
                str(d["share_id"]),
                tuple(str(i) for i in d["cdi_ids"]),
            )
            for d in claim["devices"]
        )
        out[str(uid)] = PreparedClaim(str(claim["namespace"]), str(claim["name"]), devices)
    return out


class Checkpoint:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, FILE_NAME)

    def load(self) -> dict[str, PreparedClaim]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        try:
            return decode(data)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            LOG.error(
                "DRA checkpoint unreadable path=%s: %s; kept as %s.bad, starting empty (leftover "
                "CDI specs are reconciled, the kubelet asks again for what it needs)",
                self.path,
                err,
                self.path,
            )
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path + ".bad")
            return {}

    def save(self, claims: dict[str, PreparedClaim]) -> None:
        write_atomic(self.folder, FILE_NAME, encode(claims), mode=0o600)
