"""When to restart a worker that died: a pure policy, no clocks or processes (supervisor process).

Capped exponential backoff with jitter (`common.loop.backoff.delay`, the project's one backoff),
so a worker that crashes on a transient problem is back well under a second and a crash loop
cannot burn the node's CPU. A run that lasted `stable_after` seconds resets the count. After
`crash_loop_after` quick failures in a row the worker is retried slowly, never given up on: the
fault may be outside it (a kubelet being upgraded, a driver reloading).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.loop import backoff


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 0.1
    factor: float = 2.0
    max_delay: float = 10.0
    jitter: float = 0.2  # fraction of the delay, applied as +/-
    stable_after: float = 30.0  # seconds of running that count as a healthy start
    crash_loop_after: int = 6  # quick failures in a row before slow retries
    slow_delay: float = 60.0

    def failures_after_exit(self, previous_failures: int, run_seconds: float) -> int:
        """The consecutive-failure count after a worker that ran `run_seconds` exited."""
        return 1 if run_seconds >= self.stable_after else previous_failures + 1

    def crash_looping(self, failures: int) -> bool:
        return failures >= self.crash_loop_after

    def delay(self, failures: int, random_unit: float) -> float:
        """Seconds to wait before restart number `failures` (>= 1).

        `random_unit` is a number in [0, 1) from the caller's RNG, so tests can pin it.
        """
        if failures < 1:
            return 0.0
        if self.crash_looping(failures):
            slow = self.slow_delay
            return backoff.delay(
                0, initial=slow, cap=slow * (1 + self.jitter), jitter=self.jitter, rand=random_unit
            )
        return backoff.delay(
            failures - 1,
            initial=self.initial_delay,
            cap=self.max_delay,
            factor=self.factor,
            jitter=self.jitter,
            rand=random_unit,
        )
