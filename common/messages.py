"""Control messages between the supervisor and its workers (used by both processes).

This docstring is the protocol spec.

Transport
    ZeroMQ over `ipc://` in the supervisor's private runtime folder. The supervisor binds a ROUTER;
    each worker connects a DEALER whose routing id is `<resourceName>/<pid>`. Every ZeroMQ message
    is a single frame (on the worker's side; the ROUTER adds the routing-id frame in front) holding
    one UTF-8 JSON object, the envelope.

Envelope (version 1)
    {"v": 1, "id": "<uuid4 hex>", "type": "<type>", "parent": "<id>" | null, "body": {...}}

    `parent` is the id of the message this one answers, when it answers one (a Configure answers a
    Hello, an Error answers the message it refuses). Keys in `body` that this version does not know
    are ignored, so a field can be added without a version bump; a missing or wrongly typed field,
    an unknown `type` or any `v` other than 1 is refused with `ProtocolError` (the receiver logs it
    and answers with an `error` message). `decode` never raises anything else.

Messages (type: direction, body)
    hello       worker -> supervisor  {resource, pid}
                Sent at start, and again whenever the worker wants the full state (every second
                until a configure arrives). No message is load-bearing on its own: a worker that
                missed anything says hello and gets everything again.
    configure   supervisor -> worker  {resource: ResourceConfig, settings: WorkerSettings,
                devices: [Candidate, ...]}
                The answer to hello: the resource's config, how to serve it, and the matched set.
                `resource.rdma_hca_max` must be 0..MAX_RDMA_HCA_MAX (common.config), as the config
                loader requires; anything else is refused as a protocol error.
    devices     supervisor -> worker  {devices: [Candidate, ...]}
                The resource's new matched device set (always the full set).
    stop        supervisor -> worker  {reason}
                Shut down cleanly: end streams, stop serving, remove socket and CDI spec, exit 0.
    ready       worker -> supervisor  {registered, mode, since, reason}
                Sent whenever the registration state changes. `since` is the Unix time of that
                change; `mode` is "classic" or "watcher" ("" before configure).
    heartbeat   both directions       {counters: WorkerCounters | null}
                Every `heartbeat_interval` seconds from each side. The worker's carries its
                counters (totals since the worker process started); the supervisor's has null.
                A worker that hears nothing at all from the supervisor for 2.5 intervals shuts down
                cleanly and exits with `SUPERVISOR_LOST`: no orphan keeps serving.
    error       both directions       {code, message}
                Something was refused or went wrong; `code` is a short stable label.
    status_request  CLI -> supervisor  {}
                `rdma-shared-dp status` asks the running supervisor for its worker table, over a
                DEALER of its own on the same control socket (any routing id).
    status      supervisor -> CLI     {pid, started, config_file, config_loaded, grpc_loaded,
                workers: [WorkerStatus, ...], last_reload: ReloadStatus | null,
                rdma_netns_mode, use_cdi (optional, false), metrics_endpoint (optional, ""),
                node_problem (optional, ""), dra: DraStatus | null (optional; with `run --dra`)}
                The answer to status_request (`parent` is the request's id).

Value shapes
    ResourceConfig  {resource_name, resource_prefix, rdma_hca_max, selectors: {vendors: [..], ...},
                    retained_ids: [str, ...] (optional: IDs above rdma_hca_max that pods still
                    hold; the worker advertises them too)}
    Candidate       as `common.devices.Candidate.to_json()` produces.
    WorkerSettings  see the dataclass below.
    WorkerStatus    see the dataclass below.
    ReloadStatus    see the dataclass below.
    DraStatus       see the dataclass below.
    WorkerCounters  see the dataclass below; the histogram buckets are cumulative counts per upper
                    bound in `ALLOCATE_BUCKETS` (seconds), Prometheus style; `+Inf` is
                    `allocate_count`. `cdi_spec_current` is null outside CDI mode, else whether
                    the current device set's spec is on disk; `cdi_write_errors` counts failed
                    writes per reason in `CDI_ERROR_REASONS` order.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any

from common.config import MAX_RDMA_HCA_MAX, ResourceConfig
from common.devices import Candidate
from common.typed_json import ShapeError, fields_from_json, to_json

PROTOCOL_VERSION = 1

#: Upper bounds (seconds) of the Allocate latency histogram the worker reports.
ALLOCATE_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25)
#: Why a CDI spec write failed (a metric label): EROFS, ENOSPC/EDQUOT, EACCES/EPERM,
#: ENOENT/ENOTDIR (the folder's parent is gone), anything else.
CDI_ERROR_REASONS: tuple[str, ...] = (
    "read_only",
    "no_space",
    "permission",
    "missing_folder",
    "other",
)

REGISTRATION_MODES: tuple[str, ...] = ("auto", "classic", "watcher")


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class _Envelope:
    """Envelope fields every message carries (keyword-only, after the body fields)."""

    _: KW_ONLY
    id: str = field(default_factory=new_id)
    parent: str | None = None


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker serves its resource; node-wide, from the supervisor's command line."""

    device_plugin_dir: str
    plugins_registry_dir: str
    registration_mode: str  # one of REGISTRATION_MODES
    use_cdi: bool
    cdi_dir: str
    heartbeat_interval: float  # seconds, > 0


@dataclass(frozen=True)
class WorkerCounters:
    """Totals since the worker process started (a new pid starts again from zero)."""

    allocations_ok: int = 0
    allocations_refused: int = 0
    allocate_seconds_sum: float = 0.0
    allocate_count: int = 0
    allocate_buckets: tuple[int, ...] = (0,) * len(ALLOCATE_BUCKETS)  # cumulative
    registrations_ok: int = 0
    registrations_failed: int = 0
    stream_open: bool = False
    cdi_spec_current: bool | None = None  # None: not in CDI mode
    cdi_write_errors: tuple[int, ...] = ()  # per CDI_ERROR_REASONS; () before the first write
    cdi_error: str = ""  # reason of the failure going on now, "" when none


@dataclass(frozen=True)
class Hello(_Envelope):
    resource: str
    pid: int


@dataclass(frozen=True)
class Configure(_Envelope):
    resource: ResourceConfig
    settings: WorkerSettings
    devices: tuple[Candidate, ...]


@dataclass(frozen=True)
class Devices(_Envelope):
    devices: tuple[Candidate, ...]


@dataclass(frozen=True)
class Stop(_Envelope):
    reason: str = ""


@dataclass(frozen=True)
class Ready(_Envelope):
    registered: bool
    mode: str
    since: float
    reason: str = ""


@dataclass(frozen=True)
class Heartbeat(_Envelope):
    counters: WorkerCounters | None = None


@dataclass(frozen=True)
class Error(_Envelope):
    code: str
    message: str


@dataclass(frozen=True)
class StatusRequest(_Envelope):
    pass


@dataclass(frozen=True)
class WorkerStatus:
    """One row of the supervisor's worker table, as `rdma-shared-dp status` shows it."""

    resource: str  # <prefix>/<name>
    state: str  # starting, running, backoff, stopping, exited, fatal
    pid: int  # 0 when no process is running
    restarts: int
    devices: int  # matched devices
    healthy: int  # matched devices that are usable and healthy
    registered: bool
    registered_since: float  # Unix time of the last registration change; 0 when never
    allocations: int  # successful Allocate calls of the current process
    mode: str = ""  # classic or watcher, once the worker reported it
    reason: str = ""  # why the worker is in this state (last exit, refusal, ...)
    failures: int = 0  # quick failures in a row (reset by a stable run)
    crash_looping: bool = False  # so many quick failures that restarts are slow now
    #: "" outside CDI mode, "current" when the spec of the current device set is on disk, else
    #: "not written (<reason>)": Allocate is refused and every device advertised Unhealthy.
    cdi: str = ""


@dataclass(frozen=True)
class ReloadStatus:
    """The last config reload the supervisor tried (a changed file or SIGHUP with a change)."""

    at: float  # Unix time
    ok: bool  # applied (True) or refused, the running config staying (False)
    problems: int = 0  # how many problems refused it
    first_problem: str = ""


@dataclass(frozen=True)
class DraStatus:
    """The DRA driver child (`run --dra`), as its last status line said."""

    pid: int = 0  # 0: no line yet
    registered: bool = False  # the kubelet accepted its registration
    registration_error: str = ""
    published: bool = False  # the node's ResourceSlices say what it publishes
    generation: int = 0
    devices: int = 0
    publish_error: str = ""
    prepared_claims: int = 0


@dataclass(frozen=True)
class Status(_Envelope):
    pid: int
    started: float  # Unix time
    config_file: str
    config_loaded: float  # Unix time the running config was loaded
    grpc_loaded: bool  # never true: the supervisor does not import grpc
    workers: tuple[WorkerStatus, ...]
    last_reload: ReloadStatus | None = None  # None until a changed file was read
    rdma_netns_mode: str = ""  # shared, exclusive, unknown (common.rdma_netns); "" not read yet
    use_cdi: bool = False  # CDI mode: `status` reminds what the runtime must support
    metrics_endpoint: str = ""  # where /metrics serves, or why not yet ("" when turned off)
    node_problem: str = ""  # why this node serves no device at all ("" when it does)
    dra: DraStatus | None = None  # with `run --dra` only


Message = Hello | Configure | Devices | Stop | Ready | Heartbeat | Error | StatusRequest | Status

MESSAGE_TYPES: dict[str, type[Any]] = {
    "hello": Hello,
    "configure": Configure,
    "devices": Devices,
    "stop": Stop,
    "ready": Ready,
    "heartbeat": Heartbeat,
    "error": Error,
    "status_request": StatusRequest,
    "status": Status,
}
_TYPE_NAMES: dict[type[Any], str] = {cls: name for name, cls in MESSAGE_TYPES.items()}
_ENVELOPE_FIELDS = frozenset({"id", "parent"})


def type_name(msg: Message) -> str:
    return _TYPE_NAMES[type(msg)]


def encode(msg: Message) -> bytes:
    """The envelope of `msg` as one UTF-8 JSON frame."""
    cls = type(msg)
    if cls not in _TYPE_NAMES:
        raise ProtocolError(f"not a message: {cls.__name__}")
    body = {f.name: to_json(getattr(msg, f.name)) for f in fields(msg)}
    envelope = {
        "v": PROTOCOL_VERSION,
        "id": body.pop("id"),
        "type": _TYPE_NAMES[cls],
        "parent": body.pop("parent"),
        "body": body,
    }
    try:
        return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:  # NaN or infinity in a float field
        raise ProtocolError(f"{_TYPE_NAMES[cls]}: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON")


def decode(data: bytes) -> Message:
    """Parse one frame; anything that is not a valid version-1 message raises ProtocolError."""
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ProtocolError) as exc:
        raise ProtocolError(f"not a JSON document: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("the envelope must be a JSON object")
    version = raw.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(f"unsupported protocol version {version!r} (this side speaks 1)")
    raw_kind = raw.get("type")
    cls = MESSAGE_TYPES.get(raw_kind) if isinstance(raw_kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {raw_kind!r}")
    kind = str(raw_kind)
    msg_id = raw.get("id")
    if not isinstance(msg_id, str) or not msg_id:
        raise ProtocolError("envelope field 'id' must be a non-empty string")
    parent = raw.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise ProtocolError("envelope field 'parent' must be a string or null")
    body = raw.get("body")
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind}: 'body' must be a JSON object")
    try:
        values = fields_from_json(cls, body, kind, skip=_ENVELOPE_FIELDS)
    except ShapeError as exc:
        raise ProtocolError(str(exc)) from None
    try:
        msg: Message = cls(**values, id=msg_id, parent=parent)
    except (TypeError, ValueError) as exc:  # pragma: no cover - fields_from_json checked them
        raise ProtocolError(f"{kind}: {exc}") from None
    _check_semantics(msg, kind)
    return msg


def _check_semantics(msg: Message, kind: str) -> None:
    """Checks a type cannot express; a worker must never act on such values."""
    if isinstance(msg, Configure):
        s = msg.settings
        if s.registration_mode not in REGISTRATION_MODES:
            raise ProtocolError(
                f"{kind}: settings.registration_mode must be one of {REGISTRATION_MODES}, "
                f"not {s.registration_mode!r}"
            )
        if not s.heartbeat_interval > 0:
            raise ProtocolError(f"{kind}: settings.heartbeat_interval must be > 0")
        if not s.device_plugin_dir:
            raise ProtocolError(f"{kind}: settings.device_plugin_dir must not be empty")
        if not 0 <= msg.resource.rdma_hca_max <= MAX_RDMA_HCA_MAX:
            # The worker builds one ID per unit: an unchecked count could exhaust its memory.
            raise ProtocolError(
                f"{kind}: resource.rdma_hca_max must be between 0 and {MAX_RDMA_HCA_MAX}"
            )
        retained = msg.resource.retained_ids
        if len(retained) > MAX_RDMA_HCA_MAX or not all(i.isdecimal() for i in retained):
            raise ProtocolError(
                f"{kind}: resource.retained_ids must be at most {MAX_RDMA_HCA_MAX} decimal IDs"
            )
        if not msg.resource.resource_name or not msg.resource.resource_prefix:
            raise ProtocolError(f"{kind}: resource name and prefix must not be empty")
