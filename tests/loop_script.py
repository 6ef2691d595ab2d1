"""Driving a real supervisor loop from its own observer hook (tests).

A `Script` is an observer whose `loop_turned` runs the current step on the loop's own thread:
the test acts between two passes of the real loop, with no thread and no sleep.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Collection

from supervisor.arbiter import Arbiter
from supervisor.observer import Observer

Step = Callable[[Arbiter], bool]


class Script(Observer):
    """Runs the first step on every loop turn until it returns True, then the next one; stops the
    arbiter after the last, or when the deadline passes. A failing step is recorded rather than
    raised (the loop swallows observer errors) and `_run` re-raises it."""

    def __init__(self, steps: list[Step], timeout: float = 15.0) -> None:
        self.steps = steps
        self.timeout = timeout
        self.arbiter: Arbiter | None = None
        self.failure = ""
        self.deadline = 0.0

    def started(self, source: object) -> None:
        self.deadline = time.monotonic() + self.timeout

    def poll_timeout(self) -> float | None:
        return 0.02  # look at the current step often

    def loop_turned(self, readable: Collection[int]) -> None:
        arbiter = self.arbiter
        if arbiter is None or arbiter.stopping or not self.steps:
            return
        if time.monotonic() > self.deadline:
            self.failure = f"timed out in step {self.steps[0].__name__}"
            arbiter.begin_shutdown("test timed out")
            return
        try:
            done = self.steps[0](arbiter)
        except Exception:
            self.failure = traceback.format_exc()
            arbiter.begin_shutdown("test step failed")
            return
        if done:
            self.steps.pop(0)
            if not self.steps:
                arbiter.begin_shutdown("test done")
