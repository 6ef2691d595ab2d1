"""What the zygote does for its workers' memory before forking (issue 14): warm-up and immortality.

Real processes: each check runs in a fresh interpreter (`python -OO`, as the zygote), since
making objects immortal cannot be undone in the test process. Page sharing is read from
/proc/<pid>/pagemap, which shows page frames to root only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import messages, typed_json
from zygote import immortal

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-OO", "-c", script, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- type hints, resolved once --------------------------------------------------------------


def test_hints_are_resolved_once_per_class_and_warm_reaches_nested_dataclasses() -> None:
    typed_json.warm(messages.MESSAGE_TYPES.values())
    for cls in messages.MESSAGE_TYPES.values():
        assert typed_json.type_hints(cls) is typed_json.type_hints(cls)
    # Configure's body nests dataclasses (the resource, its selectors, the settings): a decode
    # resolves their hints too, so the warm-up must have.
    nested = {
        hint
        for cls in messages.MESSAGE_TYPES.values()
        for hint in typed_json.type_hints(cls).values()
        if isinstance(hint, type) and hint not in messages.MESSAGE_TYPES.values()
    }
    dataclasses = {c for c in nested if hasattr(c, "__dataclass_fields__")}
    assert dataclasses, "no message has a dataclass field: the nesting check checks nothing"
    assert dataclasses <= set(typed_json._HINTS)


# ---- the zygote's preparation stays fork-safe -----------------------------------------------

PREPARE = """
import gc, json, sys
gc.disable()
from zygote import immortal, safety, server
server.preload()
server.warm()
count = immortal.immortalize()
gc.freeze()
print(json.dumps({"threads": safety.thread_count(), "count": count, **safety.scan_objects()}))
"""


def test_warm_up_and_immortality_start_no_thread_and_no_grpc_or_zmq_object() -> None:
    facts = _run(PREPARE)
    assert (facts["threads"], facts["zmq_contexts"], facts["grpc_objects"]) == (1, 0, 0)
    # Tens of thousands of objects where the interpreter has immortal objects, none elsewhere.
    count = facts["count"]
    assert isinstance(count, int)
    assert count > 20_000 if immortal.supported() else count == 0


# ---- immortality ------------------------------------------------------------------------------

IMMORTAL = """
import gc, json, sys
gc.disable()
import json as target
from zygote import immortal
before = sys.getrefcount(target.dumps)
count = immortal.immortalize()
keep = [target.dumps] * 1000
grew = sys.getrefcount(target.dumps) - before
marked = immortal.is_immortal(target.dumps) and immortal.is_immortal(target.dumps.__code__)
print(json.dumps({"count": count, "immortal": marked, "grew": grew}))
"""


def test_immortalize_does_exactly_what_this_interpreter_supports() -> None:
    facts = _run(IMMORTAL)
    if immortal.supported():
        assert facts["count"] and facts["immortal"] is True
        assert facts["grew"] != 1000  # 1000 references more, and the count did not move by them
    else:
        assert (facts["count"], facts["immortal"], facts["grew"]) == (0, False, 1000)


def test_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(immortal.ENV_SWITCH, "off")
    assert not immortal.enabled()
    monkeypatch.setenv(immortal.ENV_SWITCH, "on")
    assert immortal.enabled() == immortal.supported()


SHARING = """
import gc, json, os, struct, sys
gc.disable()
import json as target
from zygote import immortal
if sys.argv[1] == "on":
    immortal.immortalize()
gc.freeze()

def frame(pid, address):
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(address // 4096 * 8)
        entry = struct.unpack("Q", f.read(8))[0]
    return entry & ((1 << 55) - 1) if entry >> 63 else 0

# What a call of json.dumps touches: functions, the classes and modules it uses. Not their code:
# the specializing interpreter writes its counters into the code it runs, immortal or not (and
# a version tag, once, into a function or class it specializes a call for).
used = [target, target.encoder, target.encoder.JSONEncoder, target.dumps]
used += [getattr(target.encoder.JSONEncoder, n) for n in ("__init__", "encode", "iterencode")]
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
child = os.fork()
if child == 0:
    for _ in range(1000):
        target.dumps([1, "a"])  # what a worker does: call what the zygote imported
    os.write(ready_w, b"x")
    os.read(go_r, 1)
    os._exit(0)
os.read(ready_r, 1)
pages = {id(o) // 4096 * 4096 for o in used}
copied = sum(frame(os.getpid(), p) != frame(child, p) for p in pages)
os.write(go_w, b"x")
os.waitpid(child, 0)
print(json.dumps({"pages": len(pages), "copied": copied}))
"""


@pytest.mark.skipif(not immortal.supported(), reason="no immortal objects before CPython 3.12")
@pytest.mark.skipif(os.geteuid() != 0, reason="/proc/<pid>/pagemap shows page frames to root only")
def test_a_child_that_calls_an_immortal_function_shares_its_pages() -> None:
    # Without: each call writes the reference counts of what it touches, copying their pages.
    # With: most stay shared (see SHARING for the writes that remain).
    off, on = _run(SHARING, "off"), _run(SHARING, "on")
    assert off["pages"] == on["pages"]
    assert off["copied"] == off["pages"]
    assert isinstance(on["copied"], int) and isinstance(off["copied"], int)
    assert on["copied"] <= off["copied"] // 2
