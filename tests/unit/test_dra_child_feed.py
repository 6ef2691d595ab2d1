"""The supervisor's feed of the DRA child: never blocking, never a torn line, last state wins."""

from __future__ import annotations

import json
import os

from common.config import Config
from dra.feed import parse_line
from supervisor.dra_child import DraChild
from tests.factories import make_candidate, make_resource


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    return data


def test_a_full_pipe_delays_lines_without_tearing_them() -> None:
    child = DraChild(["true"], {}, "all")
    served = child.workers(Config(0, (make_resource("hca_a", "rdma"),)))
    assert served.resources == ()  # `all`: nothing left for the workers
    many = [
        make_candidate(i % 200, name=f"0000:{i // 256:02x}:{i % 256:02x}.0") for i in range(400)
    ]
    for n in range(1, 20):  # each line ~100 KiB: the pipe (64 KiB) fills at once
        child.send(many[: n * 20])
    assert child.spec.stdin is not None
    received = b""
    for _ in range(200):
        received += _read_all(child.spec.stdin)
        child.flush()
    lines = received.split(b"\n")
    assert lines[-1] == b""
    states = [parse_line(line) for line in lines[:-1]]  # every line whole
    assert len(states[-1].candidates) == 380  # the last state arrived
    assert len(states) < 19  # states not yet started were replaced by newer ones
    assert [r.full_name for r in states[-1].dra_resources] == ["rdma/hca_a"]


def test_a_new_incarnation_gets_the_latest_state_again() -> None:
    child = DraChild(["true"], {}, "hcas")
    child.workers(Config(0, (make_resource("hca_a", "rdma"),)))
    child.send([make_candidate(0)])
    assert child.spec.stdin is not None
    first = _read_all(child.spec.stdin)
    assert child.spec.on_start is not None
    child.spec.on_start()
    assert _read_all(child.spec.stdin) == first
    assert json.loads(first)["dra_resources"] == []  # hcas: the resources stay with workers
