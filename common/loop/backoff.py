"""The one capped exponential backoff (supervisor and workers).

Every retry in the project (worker restarts, registration attempts, re-serving a socket, the
PodResources poller) is a `Backoff`: `initial * factor**failures`, capped, optionally with
jitter so that many processes retrying the same thing do not do it in step. `delay()` is the pure
function underneath, so a policy can be tested without an object or a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def delay(
    failures: int,
    *,
    initial: float,
    cap: float,
    factor: float = 2.0,
    jitter: float = 0.0,
    rand: float = 0.5,
) -> float:
    """Seconds to wait after `failures` consecutive failures (0 = the first retry).

    `jitter` is a fraction: the result is spread over `[d * (1 - jitter), d * (1 + jitter)]` by
    `rand` in [0, 1), and never exceeds `cap`.
    """
    if failures < 0:
        raise ValueError("failures must be >= 0")
    # Cap the exponent first: factor**failures overflows a float long before failures does.
    steps = 0
    base = initial
    while steps < failures and base < cap:
        base *= factor
        steps += 1
    base = min(base, cap)
    spread = base * jitter * (2.0 * rand - 1.0)
    return max(0.0, min(cap, base + spread))


@dataclass
class Backoff:
    """Consecutive failures of one thing, and how long to wait before trying it again."""

    initial: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    failures: int = 0

    def next_delay(self) -> float:
        """Record one more failure and return the wait before the next try."""
        d = self.peek()
        self.failures += 1
        return d

    def peek(self) -> float:
        """The wait the next failure would get, without recording it."""
        return delay(
            self.failures,
            initial=self.initial,
            cap=self.cap,
            factor=self.factor,
            jitter=self.jitter,
            rand=self.rng.random() if self.jitter else 0.5,
        )

    def reset(self) -> None:
        """A success (or a fresh reason to try at once): the next failure starts from `initial`."""
        self.failures = 0
