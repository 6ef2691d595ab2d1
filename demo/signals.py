"""How the demo stops on a signal (demo process, `demo`).

SIGTERM, SIGINT or SIGHUP raises `Interrupted` in the main thread, once: later signals are
ignored so that they cannot cut the cleanup short. Inside `signals_deferred()` a signal waits
until the block is done, so a child started there is remembered (and stopped) before unwinding.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

#: What stops the demo; each stops everything it started.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived; a BaseException so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_deferred: list[int] = []  # non-empty while a signal must wait (see signals_deferred)
_DEFERRING = -1


def interrupt(signum: int, frame: FrameType | None) -> None:
    # Only the first signal interrupts: a second Ctrl-C must not cut the cleanup short.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if _deferred:
        _deferred.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold a stop signal until the block is done: a child started in it must be remembered
    (and so stopped) before the interruption unwinds."""
    _deferred.append(_DEFERRING)
    try:
        yield
    finally:
        _deferred.remove(_DEFERRING)
        # Blocks nest (a narrated line inside a deferred block): only the outermost one raises.
        if _deferred and _DEFERRING not in _deferred:
            signum = _deferred.pop()
            _deferred.clear()
            raise Interrupted(signum)
