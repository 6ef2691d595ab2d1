"""`python -m workers`: the command line of the per-resource worker process.

`python -m workers --resource NAME --control ipc://...`; started by the supervisor, never by
hand. The worker itself is `workers.worker.Worker`; its registration with the kubelet is
`workers.registration_machine`.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import zmq

from common import exitcodes
from workers.timings import ENV as TIMINGS_ENV
from workers.timings import WorkerTimings
from workers.worker import Worker

LOG = logging.getLogger("workers")

#: --resource becomes a file name (<name>.sock) and a routing id.
RESOURCE_ARG = re.compile(r"[A-Za-z0-9_]+\Z")


def _setup_logging(resource: str, level: str, fmt: str) -> None:
    from common.logs import setup_logging

    setup_logging(level, fmt, process="worker", fields={"resource": resource})


USAGE = (
    "usage: python -m workers --resource NAME --control ENDPOINT [--connect-timeout SECONDS]\n"
    "                         [--log-level LEVEL] [--log-format text|json]\n"
    "One rdma-shared-dp worker: serves one resource to the kubelet. Started by the supervisor,\n"
    "never by hand."
)
_OPTIONS = ("--resource", "--control", "--connect-timeout", "--log-level", "--log-format")


def parse_args(argv: list[str]) -> dict[str, str]:
    """`--name value` or `--name=value` for the options above; ValueError says what is wrong.

    A few lines instead of argparse: the worker is started by the supervisor with a fixed
    command line, and argparse (with gettext) costs every worker about 0.4 MiB.
    """
    values: dict[str, str] = {}
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in _OPTIONS:
            raise ValueError(f"unknown argument {arg!r}")
        if not eq:
            if not rest:
                raise ValueError(f"{name} needs a value")
            value = rest.pop(0)
        values[name[2:].replace("-", "_")] = value
    return values


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return exitcodes.OK
    try:
        values = parse_args(args)
        resource = values.get("resource", "")
        control = values.get("control", "")
        if not RESOURCE_ARG.match(resource):
            raise ValueError(
                f"--resource must be set to letters, digits and '_' only, not {resource!r}"
            )
        if not control.startswith(("ipc://", "tcp://", "inproc://")):
            raise ValueError("--control must be a ZeroMQ endpoint (ipc://...)")
        timeout = float(values.get("connect_timeout", "10"))
        if not timeout > 0:
            raise ValueError("--connect-timeout must be a positive number of seconds")
        log_format = values.get("log_format", os.environ.get("RDMA_SHARED_DP_LOG_FORMAT", "text"))
        if log_format not in ("text", "json"):
            raise ValueError(f"--log-format must be text or json, not {log_format!r}")
        log_level = values.get("log_level", os.environ.get("RDMA_SHARED_DP_LOG_LEVEL", "INFO"))
        timings = WorkerTimings.parse(os.environ.get(TIMINGS_ENV, ""))
        _setup_logging(resource, log_level, log_format)
    except ValueError as exc:
        print(f"{USAGE}\nerror: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        worker = Worker(resource, control, timeout, timings)
    except zmq.ZMQError as exc:
        LOG.error("cannot connect to the supervisor at %s: %s", control, exc)
        return exitcodes.USAGE
    return worker.run()
