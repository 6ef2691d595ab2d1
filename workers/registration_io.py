"""Events in and actions out of the registration state machine (worker process).

Plain frozen dataclasses: the helper threads' events are `workers.events`; these are the ones
the shell feeds in, and the actions it carries out. `kind_of` names an event for the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from workers.events import Event as ThreadEvent
from workers.events import RegisterDone, SelfCheckDone, StreamLost, StreamOpened, WatcherStatus


class Kind(enum.Enum):
    RESET = "reset"
    SERVED = "served"
    SERVE_FAILED = "serve failed"
    TIMER = "timer"
    SELF_CHECK_OK = "self-check ok"
    SELF_CHECK_FAILED = "self-check failed"
    REGISTER_OK = "register ok"
    REGISTER_FAILED = "register failed"
    STREAM_OPENED = "stream opened"
    STREAM_LOST = "stream lost"
    WATCHER_REGISTERED = "watcher registered"
    WATCHER_REFUSED = "watcher refused"
    KUBELET_RESTART = "kubelet restart"
    KUBELET_GONE = "kubelet gone"
    OWN_SOCKET_GONE = "own socket gone"
    STOP = "stop"


# ---- events the shell feeds in (besides the helper threads' `workers.events`) ---------------


@dataclass(frozen=True)
class Reset:
    """Configured, or where/how we register changed: serve afresh in `mode`."""

    mode: str  # "classic" or "watcher"
    reason: str


@dataclass(frozen=True)
class Served:
    generation: int


@dataclass(frozen=True)
class ServeFailed:
    in_use: bool  # another live server holds our socket path


@dataclass(frozen=True)
class TimerDue:
    pass


@dataclass(frozen=True)
class KubeletRestart:
    reason: str
    #: When the new kubelet.sock appeared (the clock's time; its ctime, converted): a
    #: registration sent after that went to the new kubelet already.
    at: float


@dataclass(frozen=True)
class KubeletGone:
    pass


@dataclass(frozen=True)
class OwnSocketGone:
    """Our server's socket was removed or replaced (or, unserved, the path came free)."""

    reason: str


@dataclass(frozen=True)
class Stop:
    pass


Event = (
    ThreadEvent
    | Reset
    | Served
    | ServeFailed
    | TimerDue
    | KubeletRestart
    | KubeletGone
    | OwnSocketGone
    | Stop
)

# ---- actions the shell carries out ------------------------------------------------------------


@dataclass(frozen=True)
class Serve:
    #: Our socket was only removed (a kubelet's wipe): the shell may re-link its name to the
    #: server it runs, which costs microseconds instead of a new gRPC server; else (or when that
    #: is not possible) it stops the server it runs, if any, and serves anew.
    relink: bool = False


@dataclass(frozen=True)
class StopServer:
    pass


@dataclass(frozen=True)
class SelfCheck:
    generation: int


@dataclass(frozen=True)
class Register:
    """End the open streams, wait until they are over, arm `claim`, send Register."""

    attempt: int
    generation: int
    claim: int


@dataclass(frozen=True)
class SetTimer:
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    pass


@dataclass(frozen=True)
class ReportReady:
    registered: bool
    reason: str


@dataclass(frozen=True)
class ReportError:
    code: str
    message: str


@dataclass(frozen=True)
class Count:
    name: str  # a `Counters` field: registrations_ok, registrations_failed


Action = (
    Serve
    | StopServer
    | SelfCheck
    | Register
    | SetTimer
    | CancelTimer
    | ReportReady
    | ReportError
    | Count
)


def kind_of(event: Event) -> Kind:
    if isinstance(event, SelfCheckDone):
        return Kind.SELF_CHECK_FAILED if event.error else Kind.SELF_CHECK_OK
    if isinstance(event, RegisterDone):
        return Kind.REGISTER_FAILED if event.error or event.superseded else Kind.REGISTER_OK
    if isinstance(event, WatcherStatus):
        return Kind.WATCHER_REGISTERED if event.registered else Kind.WATCHER_REFUSED
    return _KINDS[type(event)]


_KINDS: dict[type, Kind] = {
    Reset: Kind.RESET,
    Served: Kind.SERVED,
    ServeFailed: Kind.SERVE_FAILED,
    TimerDue: Kind.TIMER,
    StreamOpened: Kind.STREAM_OPENED,
    StreamLost: Kind.STREAM_LOST,
    KubeletRestart: Kind.KUBELET_RESTART,
    KubeletGone: Kind.KUBELET_GONE,
    OwnSocketGone: Kind.OWN_SOCKET_GONE,
    Stop: Kind.STOP,
}
