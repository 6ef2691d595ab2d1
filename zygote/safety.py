"""What makes the zygote safe to fork, checked before every fork (zygote process).

A fork copies one thread and every lock as it is. gRPC's core starts threads and takes locks
once a channel or server exists (its fork support is off in Python), and a ZeroMQ context owns
an I/O thread: a child forked after either would inherit half-held locks and threads that are
not there. So the zygote only imports; nothing it runs before forking creates a thread, a gRPC
object or a ZeroMQ context. `thread_count()` is the cheap guard run before every fork (a
thread is what any of those would start); `scan_objects()` looks for the objects themselves and
runs in a throw-away fork (walking the collector's lists would write to every shared page).
"""

from __future__ import annotations

import gc
import os
import sys


class ForkUnsafe(RuntimeError):
    """The zygote holds something a fork must not copy; the worker is started another way."""


def thread_count() -> int:
    """Threads of this process as the kernel sees them (C threads included, not only Python's)."""
    return len(os.listdir("/proc/self/task"))


def check_before_fork() -> None:
    threads = thread_count()
    if threads != 1:
        raise ForkUnsafe(f"the zygote runs {threads} threads; forking it is not safe")


#: gRPC core objects that exist only once the core runs (import creates only enums and states).
CORE_TYPES = ("Channel", "Server", "CompletionQueue", "Call", "SegregatedCall", "AioChannel")


def scan_objects() -> dict[str, int]:
    """ZeroMQ contexts and gRPC channels, servers and core objects alive in this process.

    Includes frozen objects (gc.unfreeze), so run it only in a child that exits afterwards.
    """
    gc.unfreeze()
    zmq_contexts = grpc_objects = 0
    zmq = sys.modules.get("zmq")
    grpc = sys.modules.get("grpc")
    context_type = getattr(zmq, "Context", None) if zmq is not None else None
    core = sys.modules.get("grpc._cython.cygrpc")
    grpc_types = tuple(
        t
        for t in (
            *(getattr(grpc, name, None) for name in ("Channel", "Server") if grpc is not None),
            *(getattr(core, name, None) for name in CORE_TYPES if core is not None),
        )
        if isinstance(t, type)
    )
    for obj in gc.get_objects():
        if context_type is not None and isinstance(obj, context_type):
            zmq_contexts += 1
        elif grpc_types and isinstance(obj, grpc_types):
            grpc_objects += 1
    if zmq is not None and getattr(zmq.Context, "_instance", None) is not None:
        zmq_contexts = max(zmq_contexts, 1)
    return {"zmq_contexts": zmq_contexts, "grpc_objects": grpc_objects}
