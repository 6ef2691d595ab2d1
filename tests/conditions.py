"""Waiting on conditions with a deadline: the only way tests synchronise (never a bare sleep)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Literal, NoReturn, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Poll `predicate` until it returns a truthy value and return that value.

    Raises AssertionError naming `what` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


@contextlib.contextmanager
def hard_timeout(seconds: int) -> Iterator[None]:
    """Fail the enclosed block with TimeoutError after `seconds` (SIGALRM; main thread only).

    Nests: an outer hard timeout (the conftest's per-test one) is armed again on exit with what
    is left of it, and an inner one never outlives the outer.
    """

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"test ran longer than its hard timeout of {seconds}s")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expired)
    outer = signal.alarm(seconds)
    if outer and outer < seconds:  # the outer one is due first: keep it
        signal.signal(signal.SIGALRM, previous)
        signal.alarm(outer)
        yield
        return
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.alarm(max(1, outer - int(time.monotonic() - started)))


def missing(capability: str) -> NoReturn:
    """Skip: this machine lacks `capability` (the reason names it and how to get it). Under CI
    (`CI=true`, as `.ci/run` is run) it fails instead: CI must have every capability, so a test
    cannot pass there by skipping."""
    import os

    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must provide this, but: {capability}")
    pytest.skip(capability)  # the reason names the capability and how to get it; never returns
