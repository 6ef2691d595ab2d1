"""Small pure parts of the worker: its event queue, backoff, command line and message checks."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from common.config import MAX_RDMA_HCA_MAX
from common.messages import Configure, ProtocolError, WorkerSettings, decode, encode
from tests.standin_supervisor import make_candidate, make_resource
from workers.events import EventQueue, StreamLost
from workers.main import parse_args
from workers.registration_machine import RegistrationMachine
from workers.timings import WorkerTimings


def test_posts_after_close_are_dropped_and_never_hit_a_reused_descriptor() -> None:
    events = EventQueue()
    events.post(StreamLost(1, 1))
    assert events.drain() == [StreamLost(1, 1)]
    write_fd = events._write_fd
    events.close()
    events.close()  # idempotent
    # The next pipe gets the numbers close() released; a late post from a gRPC thread must not
    # write into it.
    read_fd, new_write_fd = os.pipe()
    try:
        assert write_fd in (read_fd, new_write_fd)
        os.set_blocking(read_fd, False)
        events.post(StreamLost(2, 2))
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 16)
        assert events.drain() == []
    finally:
        os.close(read_fd)
        os.close(new_write_fd)


def test_backoff_is_capped_at_one_second_while_absent_and_thirty_once_refused() -> None:
    machine = RegistrationMachine(WorkerTimings())
    delays = [machine.failed("absent", refused=False)[1] for _ in range(8)]
    assert [d.delay for d in delays[:2]] == pytest.approx([0.05, 0.1])  # type: ignore[union-attr]
    assert delays[-1].delay == 1.0  # type: ignore[union-attr]
    refused = [machine.failed("no", refused=True)[1] for _ in range(12)]
    assert 1.0 < refused[0].delay < 30.0  # type: ignore[union-attr]
    assert refused[-1].delay == 30.0  # type: ignore[union-attr]


def test_parse_args() -> None:
    assert parse_args(["--resource", "hca_a", "--control=ipc:///x"]) == {
        "resource": "hca_a",
        "control": "ipc:///x",
    }
    assert parse_args(["--connect-timeout", "2.5"]) == {"connect_timeout": "2.5"}
    with pytest.raises(ValueError, match="unknown argument"):
        parse_args(["--resourc", "x"])
    with pytest.raises(ValueError, match="needs a value"):
        parse_args(["--resource"])


def _configure(count: int) -> bytes:
    settings = WorkerSettings("/dp", "/reg", "auto", False, "/cdi", 1.0)
    resource = replace(make_resource(), rdma_hca_max=count)
    return encode(Configure(resource, settings, (make_candidate(0),)))


def test_configure_refuses_an_rdma_hca_max_beyond_the_config_limit() -> None:
    assert isinstance(decode(_configure(MAX_RDMA_HCA_MAX)), Configure)
    with pytest.raises(ProtocolError, match="rdma_hca_max"):
        decode(_configure(MAX_RDMA_HCA_MAX + 1))
    with pytest.raises(ProtocolError, match="rdma_hca_max"):
        decode(_configure(-1))
