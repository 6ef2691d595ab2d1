"""What the supervisor tells the DRA process, one JSON line at a time on its stdin.

The supervisor scans sysfs once for everything; after each scan and config change it writes

    {"v": 1, "dra_resources": [ResourceConfig...], "resources": [ResourceConfig...],
     "candidates": [Candidate...]}

(`ResourceConfig` in the config file's form, `Candidate` as `common.devices` encodes it):
the resources this node serves through DRA, every config resource (their rdmaHcaMax bounds the
per-HCA devices), and every network function found. Each line is the full state; a line that
cannot be read is logged and skipped, the previous state stays. End of input means the
supervisor is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.config import ResourceConfig, resource_from_json
from common.devices import Candidate
from common.typed_json import fields_from_json

VERSION = 1


class FeedError(ValueError):
    pass


@dataclass(frozen=True)
class NodeState:
    dra_resources: tuple[ResourceConfig, ...]
    resources: tuple[ResourceConfig, ...]
    candidates: tuple[Candidate, ...]

    def to_line(self) -> bytes:
        body = {
            "v": VERSION,
            "dra_resources": [r.to_json() for r in self.dra_resources],
            "resources": [r.to_json() for r in self.resources],
            "candidates": [c.to_json() for c in self.candidates],
        }
        return (json.dumps(body, separators=(",", ":")) + "\n").encode()


def parse_line(line: bytes) -> NodeState:
    try:
        obj: Any = json.loads(line)
        if not isinstance(obj, dict) or obj.get("v") != VERSION:
            raise FeedError(f"not a version {VERSION} state line")
        return NodeState(
            tuple(resource_from_json(r) for r in obj["dra_resources"]),
            tuple(resource_from_json(r) for r in obj["resources"]),
            tuple(
                Candidate(**fields_from_json(Candidate, c, "candidate")) for c in obj["candidates"]
            ),
        )
    except FeedError:
        raise
    except Exception as err:  # any malformed part: the whole line is refused
        raise FeedError(f"unreadable state line: {type(err).__name__}: {err}") from err
