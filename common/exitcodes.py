"""Exit codes: a contract between workers and the supervisor, and of every CLI command.

The supervisor decodes a worker's exit status with 0-5 and decides what to do next. The CLI's
commands use the same codes, plus two of their own (6, 7) that no worker ever exits with; README
("Exit codes") has the one table of which command exits with what.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    #: Clean shutdown (stop message or SIGTERM). Restart only if the resource is still wanted.
    OK = 0
    #: Bad command line: a bug in whoever started the process. Do not restart in a loop.
    USAGE = 2
    #: The resource's config cannot be served (e.g. no valid CDI kind can be made from it).
    #: The supervisor does not restart the worker until that resource's config changes.
    CONFIG_INVALID = 3
    #: Nothing heard from the supervisor for 3 heartbeat periods (or no configure at start):
    #: the worker shut down cleanly so that no orphan keeps serving. Restart normally.
    SUPERVISOR_LOST = 4
    #: An unexpected error the worker could not recover from. Restart with backoff.
    FATAL = 5
    #: CLI only: `validate-config --strict` found warnings (and no errors).
    CONFIG_WARNINGS = 6
    #: CLI only: `status` found no supervisor to ask (no control socket, no answer, no access).
    NO_SUPERVISOR = 7


OK = ExitCode.OK
USAGE = ExitCode.USAGE
CONFIG_INVALID = ExitCode.CONFIG_INVALID
SUPERVISOR_LOST = ExitCode.SUPERVISOR_LOST
FATAL = ExitCode.FATAL
CONFIG_WARNINGS = ExitCode.CONFIG_WARNINGS
NO_SUPERVISOR = ExitCode.NO_SUPERVISOR


def describe(code: int) -> str:
    """A short label for an exit status (negative: killed by that signal number)."""
    if code < 0:
        return f"killed by signal {-code}"
    try:
        return ExitCode(code).name.lower()
    except ValueError:
        return f"exit status {code}"
