"""The supervisor's end of the control channel: a ZeroMQ ROUTER on ipc:// (supervisor process).

Workers and `rdma-shared-dp status` connect DEALERs; each frame is one message of
`common.messages`. A frame that is not a valid message is answered with an `error` and logged;
nothing a peer sends can raise out of `receive`. ROUTER_MANDATORY makes a send to a peer that is
gone fail loudly (and be logged) instead of vanishing.
"""

from __future__ import annotations

import contextlib
import logging
import os

import zmq

from common.loop.file_identity import file_id
from common.messages import Error, Message, ProtocolError, decode, encode, type_name

LOG = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
#: Messages queued per peer before sends to it fail (a worker that stopped reading).
HIGH_WATER_MARK = 1000
#: Most messages one `receive` call reads (one loop turn).
RECEIVE_BATCH = 256


def endpoint_for(runtime_dir: str) -> str:
    return f"ipc://{os.path.join(os.path.abspath(runtime_dir), SOCKET_NAME)}"


class ControlChannel:
    def __init__(self, runtime_dir: str) -> None:
        self.path = os.path.join(os.path.abspath(runtime_dir), SOCKET_NAME)
        self.endpoint = f"ipc://{self.path}"
        self._ctx = zmq.Context()
        self.socket = self._ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A peer that reconnects under its id (same worker process) takes the id over at once.
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        self.socket.bind(self.endpoint)
        os.chmod(self.path, 0o600)
        self._bound = file_id(self.path)

    def intact(self) -> bool:
        """Whether the socket file we bound is still there (not removed or replaced).

        A ZeroMQ ROUTER keeps serving the peers it has when its ipc:// file is unlinked, but no
        new peer can connect: the loop checks this and binds again.
        """
        return self._bound is not None and file_id(self.path) == self._bound

    def receive(self) -> list[tuple[bytes, Message]]:
        """Messages waiting now, as (routing id, message); bad frames are answered.

        At most RECEIVE_BATCH per call: a worker flooding the socket must not starve timers and
        signals. The poller reports the socket readable again, so nothing is lost.
        """
        received: list[tuple[bytes, Message]] = []
        for _ in range(RECEIVE_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2:
                LOG.warning("control message with %d frames dropped (expected 1)", len(frames) - 1)
                continue
            peer, frame = frames
            try:
                received.append((peer, decode(frame)))
            except ProtocolError as err:
                LOG.error("refused a control message peer=%s: %s", _peer_name(peer), err)
                self.send(peer, Error("protocol", str(err)))
        return received

    def send(self, peer: bytes, msg: Message) -> bool:
        """Queue `msg` for `peer`; False (logged at debug) when the peer is gone or full."""
        try:
            self.socket.send_multipart([peer, encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as err:  # EHOSTUNREACH: peer gone; EAGAIN: its queue is full
            LOG.debug("cannot send %s to peer=%s: %s", type_name(msg), _peer_name(peer), err)
            return False

    def close(self) -> None:
        self.socket.close(0)
        self._ctx.term()
        if self.intact():  # never remove a socket someone else bound at our path meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _peer_name(peer: bytes) -> str:
    return peer.decode("utf-8", "replace")
