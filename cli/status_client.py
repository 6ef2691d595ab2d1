"""`rdma-shared-dp status`: ask the running supervisor for its worker table (CLI process).

Connects a DEALER to the supervisor's control socket, sends one `status_request` and prints the
`status` answer as a table or JSON. The runtime folder is mode 0700, so this works for the
supervisor's user (root in the DaemonSet: `kubectl exec` into the pod).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict

import zmq

from common.messages import (
    DraStatus,
    ProtocolError,
    ReloadStatus,
    Status,
    StatusRequest,
    decode,
    encode,
)
from common.rdma_netns import EXCLUSIVE, EXCLUSIVE_WARNING
from supervisor.cdi_runtime import CDI_RUNTIME_REQUIREMENT
from supervisor.control import SOCKET_NAME, endpoint_for

TIMEOUT = 3.0


class StatusError(Exception):
    pass


def fetch_status(runtime_dir: str, timeout: float = TIMEOUT) -> Status:
    path = os.path.join(runtime_dir, SOCKET_NAME)
    try:
        os.stat(path)
    except PermissionError:
        raise StatusError(_denied(path)) from None
    except OSError:
        raise StatusError(
            f"no supervisor control socket at {path}: is `rdma-shared-dp run` running with "
            "this --runtime-dir?"
        ) from None
    if not os.access(path, os.R_OK | os.W_OK):
        raise StatusError(_denied(path))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        # Unique per call: a ROUTER refuses a new peer whose id is still held by an old one.
        sock.setsockopt(zmq.ROUTING_ID, f"status/{os.getpid()}/{uuid.uuid4().hex[:12]}".encode())
        sock.connect(endpoint_for(runtime_dir))
        request = StatusRequest()
        sock.send(encode(request))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                break
            try:
                msg = decode(sock.recv())
            except ProtocolError as err:
                raise StatusError(f"the supervisor answered something unreadable: {err}") from None
            if isinstance(msg, Status) and msg.parent == request.id:
                return msg
        raise StatusError(f"no answer from the supervisor at {path} within {timeout:.0f}s")
    finally:
        sock.close(0)
        ctx.term()


def _denied(path: str) -> str:
    return (
        f"permission denied on the supervisor control socket {path}: run this as the "
        "supervisor's user (root in the DaemonSet: `kubectl exec` into the pod)"
    )


def _when(unix: float) -> str:
    if not unix > 0:  # also NaN
        return "-"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
    except (OverflowError, OSError, ValueError):  # a time no calendar here can show
        return f"?({unix:g})"


def render_text(status: Status) -> str:
    header = (
        "RESOURCE",
        "STATE",
        "PID",
        "RESTARTS",
        "DEVICES",
        "HEALTHY",
        "REGISTERED SINCE",
        "ALLOCATIONS",
    )
    rows = [header]
    for w in status.workers:
        since = _when(w.registered_since) if w.registered else "no"
        rows.append(
            (
                w.resource,
                w.state,
                str(w.pid or "-"),
                str(w.restarts),
                str(w.devices),
                str(w.healthy),
                since,
                str(w.allocations),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"supervisor pid {status.pid}, up since {_when(status.started)}, config "
        f"{status.config_file} (loaded {_when(status.config_loaded)})",
        f"last reload: {_reload(status.last_reload)}",
        f"RDMA netns mode: {status.rdma_netns_mode or 'not read yet'}",
    ]
    if status.rdma_netns_mode == EXCLUSIVE:
        lines.append(f"warning: {EXCLUSIVE_WARNING}")
    if status.metrics_endpoint:
        lines.append(f"metrics endpoint: {status.metrics_endpoint}")
    if status.node_problem:
        lines.append(f"node serves no device: {status.node_problem}")
    if status.dra is not None:
        lines.append(_dra(status.dra))
    lines.append("")
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    notes = [
        f"  {w.resource}: {w.state}: {w.reason}"
        for w in status.workers
        if w.state in ("backoff", "fatal") and w.reason
    ]
    # Registered but refusing Allocate: the CDI spec of its devices is not on disk.
    notes += [
        f"  {w.resource}: CDI spec {w.cdi}; Allocate is refused and its devices are advertised "
        "Unhealthy until it is written"
        for w in status.workers
        if w.cdi.startswith("not written")
    ]
    if notes:
        lines += ["", "not serving:", *notes]
    looping = [
        f"  {w.resource}: {w.failures} quick failures in a row; retried slowly ({w.reason})"
        for w in status.workers
        if w.crash_looping
    ]
    if looping:
        lines += ["", "crash-looping:", *looping]
    if status.use_cdi:
        lines += ["", f"note: {CDI_RUNTIME_REQUIREMENT}"]
    return "\n".join(lines) + "\n"


def _reload(reload: ReloadStatus | None) -> str:
    if reload is None:
        return "none since start"
    if reload.ok:
        return f"{_when(reload.at)} applied"
    return (
        f"{_when(reload.at)} refused ({reload.problems} problem(s)), the running config stays; "
        f"first: {reload.first_problem}"
    )


def _dra(dra: DraStatus) -> str:
    if not dra.pid:
        return "DRA driver: starting"
    registered = (
        "registered"
        if dra.registered
        else (f"not registered ({dra.registration_error or 'waiting for the kubelet'})")
    )
    published = (
        f"slices published (generation {dra.generation}, {dra.devices} devices)"
        if dra.published
        else f"slices not published ({dra.publish_error or '?'})"
    )
    claims = f"{dra.prepared_claims} prepared claims"
    return f"DRA driver pid {dra.pid}: {registered}, {published}, {claims}"


def render_json(status: Status) -> str:
    data = asdict(status)
    data.pop("id", None)
    data.pop("parent", None)
    return json.dumps(data, indent=2) + "\n"
