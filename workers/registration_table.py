"""The registration state machine's states and transition table (worker process).

`TRANSITIONS` lists, for every (state, event kind) the machine acts on, the states it may move
to; a pair that is not listed is ignored. docs/worker.md shows the same table (a test checks).
"""

from __future__ import annotations

import enum

from workers.registration_io import Kind


class State(enum.Enum):
    UNSERVED = "unserved"  # no server on our socket: serve (now, or when the timer fires)
    SELF_CHECKING = "self-checking"  # served; asking our own socket whether it answers
    REGISTERING = "registering"  # classic: a Register is in flight
    AWAITING_WATCHER = "awaiting-watcher"  # watcher: served and checked; the kubelet is to call
    ADOPTING = "adopting"  # a Register for a replaced server succeeded: waiting for its stream
    REGISTERED = "registered"
    BACKING_OFF = "backing-off"  # an attempt failed (kubelet absent): retry when the timer fires
    REFUSED = "refused"  # the kubelet said no: retry with the slow backoff
    STOPPED = "stopped"


S, K = State, Kind
_SERVED = (S.SELF_CHECKING, S.REGISTERING, S.AWAITING_WATCHER, S.ADOPTING, S.REGISTERED)
_LIVE = (*_SERVED, S.BACKING_OFF, S.REFUSED)
_ALL_BUT_STOPPED = (S.UNSERVED, *_LIVE)


def _fs(*states: State) -> frozenset[State]:
    return frozenset(states)


TRANSITIONS: dict[tuple[State, Kind], frozenset[State]] = {
    **{(s, K.RESET): _fs(S.UNSERVED) for s in _ALL_BUT_STOPPED},
    (S.UNSERVED, K.SERVED): _fs(S.SELF_CHECKING, S.REGISTERING, S.ADOPTING, S.REGISTERED),
    (S.UNSERVED, K.SERVE_FAILED): _fs(S.UNSERVED),
    (S.UNSERVED, K.TIMER): _fs(S.UNSERVED),
    (S.BACKING_OFF, K.TIMER): _fs(S.REGISTERING),
    (S.REFUSED, K.TIMER): _fs(S.REGISTERING, S.UNSERVED),
    (S.ADOPTING, K.TIMER): _fs(S.REGISTERING),
    (S.AWAITING_WATCHER, K.TIMER): _fs(S.AWAITING_WATCHER, S.UNSERVED),
    (S.REGISTERED, K.TIMER): _fs(S.REGISTERED, S.REGISTERING),
    (S.SELF_CHECKING, K.SELF_CHECK_OK): _fs(
        S.SELF_CHECKING, S.AWAITING_WATCHER, S.REGISTERING, S.ADOPTING, S.REGISTERED
    ),
    (S.SELF_CHECKING, K.SELF_CHECK_FAILED): _fs(S.SELF_CHECKING, S.UNSERVED),
    (S.REGISTERING, K.REGISTER_OK): _fs(S.REGISTERING, S.REGISTERED, S.ADOPTING),
    (S.UNSERVED, K.REGISTER_OK): _fs(S.UNSERVED),
    (S.SELF_CHECKING, K.REGISTER_OK): _fs(S.SELF_CHECKING),
    (S.REGISTERING, K.REGISTER_FAILED): _fs(S.REGISTERING, S.BACKING_OFF, S.REFUSED),
    (S.UNSERVED, K.REGISTER_FAILED): _fs(S.UNSERVED),
    (S.SELF_CHECKING, K.REGISTER_FAILED): _fs(S.SELF_CHECKING),
    **{(s, K.STREAM_OPENED): _fs(s) for s in _LIVE},
    (S.ADOPTING, K.STREAM_OPENED): _fs(S.ADOPTING, S.REGISTERED),
    **{(s, K.STREAM_LOST): _fs(s) for s in _LIVE},
    (S.SELF_CHECKING, K.STREAM_LOST): _fs(S.SELF_CHECKING, S.UNSERVED),
    (S.AWAITING_WATCHER, K.STREAM_LOST): _fs(S.AWAITING_WATCHER),
    (S.ADOPTING, K.STREAM_LOST): _fs(S.ADOPTING, S.REGISTERING),
    (S.REGISTERED, K.STREAM_LOST): _fs(S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
    (S.SELF_CHECKING, K.WATCHER_REGISTERED): _fs(S.SELF_CHECKING, S.REGISTERED),
    (S.AWAITING_WATCHER, K.WATCHER_REGISTERED): _fs(S.AWAITING_WATCHER, S.REGISTERED),
    (S.REGISTERED, K.WATCHER_REGISTERED): _fs(S.REGISTERED),
    (S.SELF_CHECKING, K.WATCHER_REFUSED): _fs(S.SELF_CHECKING, S.REFUSED),
    (S.AWAITING_WATCHER, K.WATCHER_REFUSED): _fs(S.AWAITING_WATCHER, S.REFUSED),
    (S.REGISTERED, K.WATCHER_REFUSED): _fs(S.REGISTERED, S.REFUSED),
    (S.UNSERVED, K.KUBELET_RESTART): _fs(S.UNSERVED),
    (S.SELF_CHECKING, K.KUBELET_RESTART): _fs(S.SELF_CHECKING),
    (S.REGISTERING, K.KUBELET_RESTART): _fs(S.REGISTERING),
    (S.AWAITING_WATCHER, K.KUBELET_RESTART): _fs(S.AWAITING_WATCHER),
    (S.ADOPTING, K.KUBELET_RESTART): _fs(S.REGISTERING),
    (S.REGISTERED, K.KUBELET_RESTART): _fs(S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
    (S.BACKING_OFF, K.KUBELET_RESTART): _fs(S.REGISTERING),
    (S.REFUSED, K.KUBELET_RESTART): _fs(S.REGISTERING, S.UNSERVED),
    (S.REGISTERED, K.KUBELET_GONE): _fs(S.REGISTERED, S.REGISTERING, S.AWAITING_WATCHER),
    (S.UNSERVED, K.OWN_SOCKET_GONE): _fs(S.UNSERVED),
    **{(s, K.OWN_SOCKET_GONE): _fs(S.UNSERVED) for s in (*_SERVED, S.BACKING_OFF)},
    (S.REFUSED, K.OWN_SOCKET_GONE): _fs(S.REFUSED, S.UNSERVED),
    (S.SELF_CHECKING, K.REREGISTER): _fs(S.SELF_CHECKING),
    (S.REGISTERING, K.REREGISTER): _fs(S.REGISTERING),
    (S.AWAITING_WATCHER, K.REREGISTER): _fs(S.AWAITING_WATCHER),
    (S.ADOPTING, K.REREGISTER): _fs(S.ADOPTING),
    (S.REGISTERED, K.REREGISTER): _fs(S.REGISTERED, S.REGISTERING, S.UNSERVED),
    (S.BACKING_OFF, K.REREGISTER): _fs(S.REGISTERING),
    (S.REFUSED, K.REREGISTER): _fs(S.REGISTERING, S.UNSERVED),
    **{(s, K.STOP): _fs(S.STOPPED) for s in _ALL_BUT_STOPPED},
}


class IllegalTransition(RuntimeError):
    """A handler moved somewhere the table does not allow: a bug in this module."""


class StreamSeen(enum.Enum):
    NONE = "none"  # the kubelet's stream of the current claim has not opened (yet)
    LIVE = "live"
    ENDED = "ended"
