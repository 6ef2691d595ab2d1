"""Make every object the zygote holds immortal before it forks (zygote process, CPython 3.12+).

A forked worker shares the zygote's pages only until it writes to them, and CPython writes to
every object it touches: each `Py_INCREF`/`Py_DECREF` changes the object's reference count, so a
worker that merely calls a function copies the page of the function, of its code object and of
each constant it loads. That, not malloc arenas or thread stacks, is nearly all of a forked
worker's private memory (`benchmarks/worker_memory.py`: ~6.5 of its 7.2 MiB on 3.11 are pages
copied from the zygote, ~0.8 MiB are new). Since 3.12 (PEP 683) an object whose reference count
reads as "immortal" is never counted up or down, and PEP 683 names this very use: a pre-fork
server marking its objects immortal so its children stop copying them. Measured on 3.12: 5.9 ->
3.9 MiB per worker.

What it costs: the objects are never freed, in the zygote or in a worker. They are what the
zygote imported, which lives as long as the process anyway; a worker that drops one (replaces a
module-level value, say) keeps its memory, as it would keep the copied page.

Where it does nothing: before 3.12 (no immortal objects: the count would just keep growing from
the value written, harmless and useless), after 3.13 (the layout is checked per version, not
assumed), and in a free-threaded build (another reference-count layout).
`RDMA_SHARED_DP_ZYGOTE_IMMORTAL=off` turns it off.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import sysconfig
import types

ENV_SWITCH = "RDMA_SHARED_DP_ZYGOTE_IMMORTAL"
#: The low 32 bits of `ob_refcnt` on a 64-bit 3.12/3.13 build: `_Py_IsImmortal` tests them as
#: a negative int32, `Py_INCREF` stops when they would wrap to zero, `Py_DECREF` skips them.
IMMORTAL_REFCNT = 0xFFFFFFFF


def supported() -> bool:
    return (
        sys.implementation.name == "cpython"
        and (3, 12) <= sys.version_info[:2] <= (3, 13)
        and sys.maxsize > 2**32
        and sys.byteorder == "little"
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
    )


def enabled() -> bool:
    return supported() and os.environ.get(ENV_SWITCH, "on").lower() not in (
        "off",
        "0",
        "false",
        "no",
    )


def _code_parts(code: types.CodeType) -> list[object]:
    # Code objects are not tracked by the collector, and `gc.get_referents` does not see into
    # them: their constants (nested code included) and names are reached here. Only attributes
    # the code object stores: `co_varnames` and the like are built anew on each access, and a
    # temporary made immortal would never be freed. Not the line and exception tables: the
    # interpreter reads them in place, without a reference.
    return [*code.co_consts, *code.co_names, code.co_filename, code.co_name, code.co_qualname]


def reachable() -> dict[int, object]:
    """Every object the collector tracks, and everything those refer to (by address)."""
    found: dict[int, object] = {}
    todo: list[object] = gc.get_objects()
    code_type = types.CodeType
    while todo:
        obj = todo.pop()
        if id(obj) in found:
            continue
        found[id(obj)] = obj
        todo.extend(_code_parts(obj) if type(obj) is code_type else gc.get_referents(obj))
    return found


def immortalize() -> int:
    """Mark everything reachable immortal; how many objects. Run before `gc.freeze()`.

    Only in a process that is about to fork and has no other thread: the reference counts are
    written without the interpreter knowing.
    """
    if not supported():
        return 0
    found = reachable()
    cell = ctypes.c_uint32.from_address
    for address in found:
        cell(address).value = IMMORTAL_REFCNT
    count = len(found)
    found.clear()
    return count


def is_immortal(obj: object) -> bool:
    return supported() and ctypes.c_uint32.from_address(id(obj)).value == IMMORTAL_REFCNT
