"""Messages from workers and status clients, dispatched by type (supervisor process).

What may arrive is a closed union (`Inbound`): the four messages a worker sends and the status
request of `rdma-shared-dp status`. `dispatch` matches on it and ends in `assert_never`, so a
message type added to the union without a handler is a type error, not a silent drop. Anything
else a peer sends is answered with an `unexpected` error.

A worker is known by its routing id (`<resource>/<pid>`, set by the worker) once its hello
matched a process this supervisor started; messages from other peers are a previous
supervisor's orphans (told to stop) or the last words of a worker already reaped (ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, assert_never

from common.messages import (
    Error,
    Heartbeat,
    Hello,
    Message,
    Ready,
    Status,
    StatusRequest,
    Stop,
    type_name,
)
from supervisor.lifecycle import Lifecycle
from supervisor.worker_table import WorkerRecord

LOG = logging.getLogger(__name__)

#: What a worker sends its supervisor.
FromWorker = Hello | Ready | Heartbeat | Error
#: Everything the supervisor accepts on its control socket.
Inbound = FromWorker | StatusRequest
INBOUND_TYPES = (Hello, Ready, Heartbeat, Error, StatusRequest)


def inbound(msg: Message) -> Inbound | None:
    """`msg` as one of the accepted types, or None when a supervisor does not take it."""
    return msg if isinstance(msg, INBOUND_TYPES) else None


class Peers:
    def __init__(
        self,
        lifecycle: Lifecycle,
        send: Callable[[bytes, Message], bool],
        status: Callable[[str], Status],
        observe: Callable[..., None],
        observer: Any,
    ) -> None:
        self.lifecycle = lifecycle
        self.table = lifecycle.table
        self._send = send
        self._status = status
        self._observe = observe
        self.observer = observer

    def on_message(self, peer: bytes, msg: Message) -> None:
        accepted = inbound(msg)
        if accepted is None:
            text = f"a supervisor does not accept {type_name(msg)}"
            self._send(peer, Error("unexpected", text, parent=msg.id))
            return
        self.dispatch(peer, accepted)

    def dispatch(self, peer: bytes, msg: Inbound) -> None:
        match msg:
            case StatusRequest():
                status = self._status(msg.id)
                dra = getattr(self.observer, "dra_status", None)  # with `run --dra` only
                self._send(peer, replace(status, dra=dra()) if dra is not None else status)
            case Hello():
                self._on_hello(peer, msg)
            case Heartbeat() | Ready() | Error():
                record = self.table.by_peer(peer)
                if record is None:
                    self._refuse_stranger(peer, msg)
                else:
                    self.lifecycle.heard(record)
                    self._from_worker(record, msg)
            case _:
                assert_never(msg)

    def _from_worker(self, record: WorkerRecord, msg: Heartbeat | Ready | Error) -> None:
        match msg:
            case Heartbeat():
                if msg.counters is not None:
                    self.lifecycle.counted(record, msg.counters)
                    hook = self.observer.heartbeat
                    self._observe(hook, record.full_name, record.pid, msg.counters)
            case Ready():
                self._on_ready(record, msg)
            case Error():
                self.lifecycle.reported(record, msg.code, msg.message)
                LOG.warning(
                    "worker reports an error resource=%s pid=%d code=%s: %s",
                    record.full_name,
                    record.pid,
                    msg.code,
                    msg.message,
                )
            case _:
                assert_never(msg)

    def _refuse_stranger(self, peer: bytes, msg: Heartbeat | Ready | Error) -> None:
        """A worker we did not start (a previous supervisor's orphan): tell it to stop."""
        departed = self.lifecycle.departed.get(peer)
        if departed is not None:  # its last words, read after it was reaped
            LOG.debug("%s from a worker that exited resource=%s: ignored", type_name(msg), departed)
            return
        if isinstance(msg, Error):
            LOG.warning("error from unknown peer=%s code=%s: %s", peer, msg.code, msg.message)
            return
        LOG.info("telling an unknown worker to stop peer=%s", peer.decode(errors="replace"))
        self._send(peer, Stop("not a worker of this supervisor"))

    def _on_hello(self, peer: bytes, msg: Hello) -> None:
        record = self.table.get(msg.resource)
        if record is None or record.proc is None or record.pid != msg.pid:
            LOG.info(
                "hello from a worker this supervisor did not start resource=%s pid=%d: stopping it",
                msg.resource,
                msg.pid,
            )
            self._send(peer, Stop("not a worker of this supervisor", parent=msg.id))
            return
        self.lifecycle.hello(record, peer, msg.id)

    def _on_ready(self, record: WorkerRecord, msg: Ready) -> None:
        if self.lifecycle.ready(record, msg):
            LOG.info(
                "worker %s resource=%s mode=%s (%s)",
                "registered" if msg.registered else "not registered",
                record.full_name,
                record.mode or "-",
                msg.reason,
            )
            self._observe(self.observer.worker_ready, record.full_name, msg.registered, record.mode)
