"""The state machines in the docs are the ones in the code (static: reads files only)."""

from __future__ import annotations

import re
from pathlib import Path

from supervisor.worker_table import ALLOWED, TRANSITIONS, WorkerState

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _table(doc: Path, marker: str) -> list[tuple[str, str, str, str]]:
    text = doc.read_text()
    start = text.index(f"<!-- {marker}")
    end = text.index(f"<!-- end of {marker}", start)
    rows = []
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            state, event, following, action = cells
            rows.append((state.strip("`"), event, following.strip("`"), action))
    return rows


def test_the_worker_table_in_docs_supervisor_md_is_the_code_s() -> None:
    documented = _table(DOCS / "supervisor.md", "worker-table transitions")
    in_code = [(t.state.value, t.event, t.next.value, t.action) for t in TRANSITIONS]
    assert documented == in_code


def test_every_state_is_documented_and_every_allowed_move_has_a_row() -> None:
    states = set(re.findall(r"^\| `(\w+)` \|", (DOCS / "supervisor.md").read_text(), re.M))
    assert {s.value for s in WorkerState} <= states
    for state, targets in ALLOWED.items():
        rows = {t.next for t in TRANSITIONS if t.state is state}
        assert rows == targets, state
