"""Command-line entry of `rdma-shared-dp` (runs in the supervisor process)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print("not yet", args)
    return 0
