from __future__ import annotations

import pytest

from supervisor.restart_policy import RestartPolicy

P = RestartPolicy()


def test_first_retry_is_well_under_a_second_even_with_full_jitter() -> None:
    assert P.delay(1, 0.999) < 0.2


def test_backoff_doubles_then_caps() -> None:
    delays = [P.delay(n, 0.5) for n in range(1, 6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    capped = RestartPolicy(max_delay=1.0, crash_loop_after=100)
    assert capped.delay(20, 0.5) == pytest.approx(1.0)


def test_jitter_spreads_both_ways() -> None:
    assert P.delay(3, 0.0) == pytest.approx(0.4 * 0.8)
    assert P.delay(3, 1.0) == pytest.approx(0.4 * 1.2)


def test_crash_loop_retries_slowly_but_never_gives_up() -> None:
    assert not P.crash_looping(P.crash_loop_after - 1)
    assert P.crash_looping(P.crash_loop_after)
    assert P.delay(1000, 0.5) == pytest.approx(P.slow_delay)


def test_a_stable_run_resets_the_count() -> None:
    assert P.failures_after_exit(5, run_seconds=P.stable_after) == 1
    assert P.failures_after_exit(5, run_seconds=1.0) == 6


def test_no_failures_means_no_delay() -> None:
    assert P.delay(0, 0.7) == 0.0
