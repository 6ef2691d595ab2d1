"""The demo's stop signal: deferred blocks nest, and a narrated line is never cut in two."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from demo.narration import Narrator
from demo.signals import STOP_SIGNALS, Interrupted, interrupt, signals_deferred


@pytest.fixture
def stop_handler() -> Iterator[None]:
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, interrupt)
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def test_a_signal_in_nested_deferred_blocks_is_raised_once_by_the_outermost(
    stop_handler: None,
) -> None:
    reached = []
    with pytest.raises(Interrupted, match="SIGTERM"), signals_deferred():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
        reached.append("inner block ended without raising")
    assert reached == ["inner block ended without raising"]


def test_nested_deferred_blocks_without_a_signal_raise_nothing(stop_handler: None) -> None:
    with signals_deferred(), signals_deferred():
        pass


def test_a_signal_during_a_json_event_leaves_whole_lines(
    stop_handler: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The signal lands between print's two writes (the text, then the newline): the line
    # comes out whole and the interruption follows it.
    import builtins

    real_print = builtins.print

    def print_then_signal(*args: object, **kwargs: object) -> None:
        real_print(*args, end="", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        real_print("", **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "print", print_then_signal)
    narrator = Narrator(as_json=True)
    with pytest.raises(Interrupted):
        narrator.event("say", text="registered")
    monkeypatch.setattr(builtins, "print", real_print)
    narrator.event("interrupted", signal="SIGTERM")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["say", "interrupted"]
