"""The test helpers themselves: a deadline really ends a stuck test."""

from __future__ import annotations

import threading

import pytest

from tests.conditions import hard_timeout, wait_until


def test_hard_timeout_interrupts_a_blocked_wait() -> None:
    with pytest.raises(TimeoutError, match="hard timeout of 1s"), hard_timeout(1):
        threading.Event().wait(10)


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="the impossible"):
        wait_until(lambda: False, timeout=0.05, what="the impossible")
