"""The wire between the supervisor and its zygote (fork server) (both processes).

One `SOCK_SEQPACKET` socketpair, one JSON object per packet, every object with `v` (version) and
`type`. The supervisor asks, the zygote answers; the zygote speaks first once, when it is ready:

- zygote -> `{"type": "ready", "pid": P}`: everything is imported and frozen; forks may begin.
- `{"type": "fork", "id": N, "resources": [R, ...], "control": E}` -> `{"type": "forked",
  "id": N, "pids": {R: W, ...}}`: each worker W runs `python -m workers --resource R --control E`,
  already re-parented to the supervisor (which reaps it) and in a session of its own. A start
  asks for every resource in one request.
- `{"type": "probe", "id": N}` -> `{"type": "probe", "id": N, "pid": P, "threads": T,
  "zmq_contexts": Z, "grpc_objects": G, "forks": F}`: the fork-safety facts (tests, benchmarks).
- any request -> `{"type": "error", "id": N, "code": C, "message": M}` when it cannot be done;
  code `fork_unsafe` means this zygote will never fork again (it is replaced).

An unknown version or type is answered with an error. A closed socket ends the zygote.
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 1
#: Packets are small; one recv of this size always reads a whole one.
MAX_PACKET = 65536


class ZygoteProtocolError(ValueError):
    """A packet that is not a message of this protocol."""


def encode(kind: str, **fields: Any) -> bytes:
    return json.dumps({"v": VERSION, "type": kind, **fields}, separators=(",", ":")).encode()


def decode(packet: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(packet)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZygoteProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ZygoteProtocolError("not an object with a type")
    if msg.get("v") != VERSION:
        raise ZygoteProtocolError(f"version {msg.get('v')!r}, this side speaks {VERSION}")
    return msg
