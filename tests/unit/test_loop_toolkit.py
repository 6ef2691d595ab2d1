"""The loop toolkit in common/loop/: timers, backoff, throttle, file identity, inotify."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from common.loop import backoff
from common.loop.file_identity import content_stamp, file_id
from common.loop.inotify import Change, DirWatch
from common.loop.throttle import LogNow, LogThrottle
from common.loop.timers import Timers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_call_at_fires_once_and_every_rearms_before_running() -> None:
    clock = Clock()
    t = Timers(clock)
    fired: list[str] = []
    t.call_at("once", 101.0, lambda: fired.append("once"))
    t.every("tick", 0.5, lambda: fired.append("tick"))
    clock.now = 101.0
    for d in t.take_due():
        assert d.callback is not None
        d.callback()
    assert sorted(fired) == ["once", "tick"]
    assert not t.pending("once")
    assert t.pending("tick")  # re-armed even though nobody ran anything special


def test_every_after_a_stall_does_not_burst() -> None:
    clock = Clock()
    t = Timers(clock)
    t.every("tick", 1.0, lambda: None)
    clock.now = 200.0  # a long stall: one call, then the next one interval later
    assert [d.key for d in t.take_due()] == ["tick"]
    assert t.take_due() == []
    assert t.next_deadline() == pytest.approx(201.0)


def test_replacing_and_cancelling_keys() -> None:
    clock = Clock()
    t = Timers(clock)
    t.set("a", 105.0)
    t.set("a", 102.0)
    t.set_once("a", 150.0)  # keeps 102
    t.set("b", 103.0)
    t.cancel("b")
    assert t.pop_due(110.0) == ["a"]
    assert t.next_deadline() is None
    assert t.timeout(3.0) == 3.0
    t.set("c", 101.0)
    assert t.timeout(3.0) == pytest.approx(1.0)
    clock.now = 102.0
    assert t.timeout(3.0) == 0.0


def test_every_refuses_a_zero_interval() -> None:
    with pytest.raises(ValueError):
        Timers().every("x", 0, lambda: None)


def test_backoff_doubles_caps_and_resets() -> None:
    b = backoff.Backoff(initial=0.1, cap=1.0)
    assert [round(b.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)


def test_backoff_survives_huge_failure_counts_and_jitter_stays_in_band() -> None:
    assert backoff.delay(10**6, initial=0.05, cap=30.0) == 30.0
    b = backoff.Backoff(initial=1.0, cap=60.0, jitter=0.2, rng=random.Random(4))
    b.failures = 3
    for _ in range(100):
        assert 6.4 <= b.peek() <= 9.6
    with pytest.raises(ValueError):
        backoff.delay(-1, initial=1, cap=2)


def test_throttle_logs_first_then_once_per_interval_with_the_count() -> None:
    clock = Clock()
    th = LogThrottle(10.0, clock)
    assert th.allow("cdi") == LogNow(0)
    assert th.allow("cdi") is None
    assert th.allow("cdi") is None
    clock.now += 10.0
    assert th.allow("cdi") == LogNow(2)
    assert th.active("cdi")
    assert th.clear("cdi") is True
    assert th.clear("cdi") is False
    assert th.allow("cdi")  # a new run logs at once: the answer is true


def test_file_id_ignores_chmod_but_content_stamp_sees_writes(tmp_path: Path) -> None:
    f = tmp_path / "kubelet.sock"
    assert file_id(f) is None
    f.write_text("x")
    before, stamp = file_id(f), content_stamp(f)
    os.chmod(f, 0o600)
    if os.geteuid() == 0:
        os.chown(f, 0, 0)
    assert file_id(f) == before
    f.write_text("longer")
    assert content_stamp(f) != stamp


def test_dirwatch_sees_recreation_at_the_same_name(tmp_path: Path) -> None:
    sock = tmp_path / "kubelet.sock"
    sock.write_text("")
    with DirWatch(tmp_path) as w:
        assert w.read() == []
        sock.unlink()
        sock.write_text("")
        os.rename(sock, tmp_path / "moved")
        changes = [(e.change, e.name) for e in w.read()]
        assert changes == [
            (Change.REMOVED, "kubelet.sock"),
            (Change.CREATED, "kubelet.sock"),
            (Change.REMOVED, "kubelet.sock"),
            (Change.CREATED, "moved"),
        ]


def test_dirwatch_reports_its_folder_gone_once(tmp_path: Path) -> None:
    folder = tmp_path / "dp"
    folder.mkdir()
    w = DirWatch(folder)
    folder.rmdir()
    events = w.read()
    assert [e.change for e in events] == [Change.GONE]
    assert w.read() == []
    w.close()
    w.close()  # idempotent


def test_dirwatch_of_a_missing_folder_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        DirWatch(tmp_path / "missing")
