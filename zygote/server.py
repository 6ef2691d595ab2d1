"""The zygote's loop, and what each forked worker does first (zygote process, then worker).

`python -m zygote --fd N` imports everything a worker imports (`PRELOAD`), freezes it for the
collector (`gc.freeze()`: a collection would otherwise write to every object header and unshare
the pages), on CPython 3.12/3.13 marks it immortal (`zygote.immortal`: a reference count written
unshares a page too), says `ready` on the socket fd N, and then forks one worker per `fork` request
(protocol: `common.zygote_protocol`). It never runs worker code itself: nothing here creates a
thread, a gRPC object or a ZeroMQ context (`zygote.safety` checks before every fork).

Each worker is forked twice: the zygote forks an intermediate process, which forks the worker and
exits at once. The worker is then an orphan, re-parented to the nearest subreaper, the supervisor
(PR_SET_CHILD_SUBREAPER), which reaps it and sees its real exit status exactly as it would for
a worker it had started itself. The worker starts a session of its own, closes the zygote's
socket, takes a worker's command line (`ps`, and the supervisor's orphan scan, see
`python -m workers --resource R --control E`) and runs `workers.main.main`.

The zygote exits when its socket closes (the supervisor stopped or died) or on SIGTERM.
"""

from __future__ import annotations

import gc

# Off before the heavy imports: a collection between them leaves holes in the object heap that
# each worker's first allocations would fill, copying those shared pages. Each worker turns it
# back on; what the zygote imported stays frozen, out of the collector's reach.
gc.disable()

import contextlib  # noqa: E402
import ctypes  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

# gRPC's C core narrates connection churn at INFO level on stderr (as workers/__main__.py sets).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from common import exitcodes, zygote_protocol  # noqa: E402
from common.logs import setup_logging  # noqa: E402
from zygote import immortal, safety  # noqa: E402

LOG = logging.getLogger("zygote")

#: What a worker imports, up front and lazily (grpc loads its server and channel modules on first
#: use): anything imported after the fork is private to that worker.
PRELOAD = (
    "workers.main",
    "workers.cdi",
    "workers.registration",
    "workers.servicer",
    "grpc._server",
    "grpc._channel",
    "grpc._interceptor",
    "grpc._simple_stubs",
    "grpc.experimental",
    "concurrent.futures.thread",
    "json",
)
PR_SET_PDEATHSIG = 1


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def warm() -> None:
    """First-use work every worker would repeat, done once here (pure Python: starts nothing).

    The type hints of every control message (resolving them compiles each annotation), and the
    ctypes functions of inotify: 0.2 MiB less in each worker.
    """
    from common import messages, typed_json
    from common.loop import inotify

    typed_json.warm(messages.MESSAGE_TYPES.values())
    inotify.resolve()


def _prctl(option: int, value: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the socket's EOF is the only way we learn the supervisor went


def set_command_line(args: list[str]) -> None:
    """Show `args` as this process's command line (/proc/<pid>/cmdline, ps).

    The kernel reads the command line from the memory the original argv strings occupy, so it
    is rewritten in place; the zygote's own command line reserves the room (`--argv-room`).
    What does not fit is cut off at an argument boundary.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49: arg_start, arg_end
    except (OSError, IndexError, ValueError):
        return
    room = end - start
    encoded = b""
    for arg in args:
        piece = os.fsencode(arg) + b"\0"
        if len(encoded) + len(piece) > room:
            break
        encoded += piece
    left = room - len(encoded)
    if left:
        # One last argument of spaces, ending in a NUL: a command line whose last byte is not a
        # NUL makes the kernel read on into the environment.
        encoded += b" " * (left - 1) + b"\0"
    ctypes.memmove(start, encoded, room)


def worker_argv(resource: str, control: str) -> list[str]:
    return ["--resource", resource, "--control", control]


def become_worker(resource: str, control: str, sock: socket.socket) -> None:
    """The forked worker's start: never returns."""
    code: int = exitcodes.FATAL
    try:
        os.setsid()  # as start_new_session: a terminal's Ctrl-C reaches the supervisor only
        sock.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        set_command_line([sys.executable, "-OO", "-m", "workers", *worker_argv(resource, control)])
        gc.enable()
        from workers.main import main as worker_main

        code = worker_main(worker_argv(resource, control))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else exitcodes.FATAL
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def fork_workers(resources: list[str], control: str, sock: socket.socket) -> dict[str, int]:
    """Fork one worker per resource through one intermediate process; their pids, re-parented.

    One intermediate for the whole batch: a start of 64 workers costs 65 forks and a single
    round trip, not 64 of them, each waiting for a loaded CPU to schedule the zygote again.
    """
    safety.check_before_fork()
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            # Each worker waits at this gate until the last one is forked: started at once,
            # they would take the CPU from the forking (3x slower forks, measured under load).
            gate_r, gate_w = os.pipe()
            for resource in resources:
                pid = os.fork()
                if pid == 0:
                    os.close(write_end)
                    os.close(gate_w)
                    os.read(gate_r, 1)  # EOF once the intermediate has closed its end
                    os.close(gate_r)
                    become_worker(resource, control, sock)
                os.write(write_end, f"{pid}\n".encode())
            os.close(gate_w)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
    finally:
        os.close(read_end)
    # Reaped before the answer: once the intermediate is gone, each worker's parent is the
    # supervisor, so the supervisor may waitpid() them as soon as it reads the pids.
    _, status = os.waitpid(middle, 0)
    pids = [int(line) for line in data.split()]
    if len(pids) != len(resources):
        # The ones that were forked run anyway; unclaimed, the supervisor stops them at hello.
        raise OSError(f"forked {len(pids)} of {len(resources)} workers (status {status})")
    return dict(zip(resources, pids, strict=True))


def probe(sock_forks: int) -> dict[str, Any]:
    """Fork-safety facts: threads here, objects counted in a throw-away child."""
    threads = safety.thread_count()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.write(write_end, zygote_protocol.encode("scan", **safety.scan_objects()))
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 4096):
        data += chunk
    os.close(read_end)
    os.waitpid(child, 0)
    scanned = zygote_protocol.decode(data) if data else {"zmq_contexts": -1, "grpc_objects": -1}
    return {
        "pid": os.getpid(),
        "threads": threads,
        "zmq_contexts": scanned["zmq_contexts"],
        "grpc_objects": scanned["grpc_objects"],
        "forks": sock_forks,
    }


def serve(sock: socket.socket) -> int:
    forks = 0
    sock.send(zygote_protocol.encode("ready", pid=os.getpid()))
    while True:
        packet = sock.recv(zygote_protocol.MAX_PACKET)  # EINTR is retried by Python
        if not packet:
            LOG.debug("the supervisor closed our socket; exiting")
            return exitcodes.OK
        msg_id: Any = None
        try:
            msg = zygote_protocol.decode(packet)
            msg_id = msg.get("id")
            if msg["type"] == "fork":
                resources, control = msg.get("resources"), msg.get("control")
                if (
                    not isinstance(resources, list)
                    or not resources
                    or not all(isinstance(r, str) for r in resources)
                    or not isinstance(control, str)
                ):
                    raise zygote_protocol.ZygoteProtocolError(
                        "fork needs resources (a list of names) and control"
                    )
                pids = fork_workers(resources, control, sock)
                forks += len(pids)
                answer = zygote_protocol.encode("forked", id=msg_id, pids=pids)
            elif msg["type"] == "probe":
                answer = zygote_protocol.encode("probe", id=msg_id, **probe(forks))
            else:
                raise zygote_protocol.ZygoteProtocolError(f"unknown type {msg['type']!r}")
        except (zygote_protocol.ZygoteProtocolError, safety.ForkUnsafe, OSError) as exc:
            code = "fork_unsafe" if isinstance(exc, safety.ForkUnsafe) else type(exc).__name__
            LOG.error("request refused: %s", exc)
            answer = zygote_protocol.encode("error", id=msg_id, code=code, message=str(exc))
        sock.send(answer)


USAGE = "usage: python -m zygote --fd N [--argv-room=...]  (started by the supervisor only)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd = -1
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--fd" and rest:
            try:
                fd = int(rest.pop(0))
            except ValueError:
                fd = -1
        elif not arg.startswith("--argv-room"):
            print(f"{USAGE}\nerror: unknown argument {arg!r}", file=sys.stderr)
            return exitcodes.USAGE
    if fd < 0:
        print(f"{USAGE}\nerror: --fd is required", file=sys.stderr)
        return exitcodes.USAGE
    setup_logging(
        os.environ.get("RDMA_SHARED_DP_LOG_LEVEL", "INFO"),
        os.environ.get("RDMA_SHARED_DP_LOG_FORMAT", "text"),
        process="zygote",
    )
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # gone with the supervisor, even without EOF
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        LOG.error("fd %d is not the supervisor's socket: %s", fd, exc)
        return exitcodes.USAGE
    preload()
    warm()
    if immortal.enabled():
        began = time.monotonic()
        count = immortal.immortalize()
        LOG.debug("%d objects made immortal in %.3fs", count, time.monotonic() - began)
    gc.freeze()
    try:
        return serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        LOG.debug("the supervisor closed our socket; exiting")
        return exitcodes.OK
    except Exception:
        LOG.exception("the zygote failed; the supervisor starts workers without it")
        return exitcodes.FATAL
    finally:
        sock.close()
