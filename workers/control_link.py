"""The worker's end of the control channel: a ZeroMQ DEALER to the supervisor (worker process).

Frames are `common.messages` envelopes. A frame that does not decode is answered with
`error protocol` and skipped; anything heard at all counts as a sign of life.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import zmq

from common.messages import Error, Message, ProtocolError, decode, encode, type_name

LOG = logging.getLogger("workers.control")


class ControlLink:
    def __init__(
        self, resource_name: str, endpoint: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{resource_name}/{os.getpid()}".encode())
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.connect(endpoint)
        self.last_heard = clock()
        self.closed = False

    def send(self, msg: Message) -> None:
        if self.closed:
            return
        try:
            self.sock.send(encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            LOG.warning("control channel full; dropped %s", type_name(msg))

    def receive(self) -> list[Message]:
        """Every message queued so far (never blocks)."""
        messages: list[Message] = []
        while not self.closed:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.last_heard = self.clock()
            try:
                messages.append(decode(frame))
            except ProtocolError as exc:
                LOG.error("refused a control message: %s", exc)
                self.send(Error("protocol", str(exc)))
        return messages

    def silent_for(self) -> float:
        return self.clock() - self.last_heard

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close(linger=200)
