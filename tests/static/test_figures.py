"""Memory and timing figures come from one place: `make bench` -> benchmarks/figures.json.

docs/benchmarks.md's "Measured" table (and every other generated block) must be exactly what
`benchmarks/figures.py` renders from the file, and no other doc may quote measured figures of its
own (they link to that table instead).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
#: Where the evidence lives (`make bench` renders into it).
EVIDENCE = REPO / "docs" / "benchmarks.md"
RENDER = "`.venv/bin/python benchmarks/figures.py --render docs/benchmarks.md`"
#: A measurement quoted in prose: a statistic or a USS with a number and a unit.
MEASURED = re.compile(
    r"\b(median|p50|p90|p99|USS)\b[^|\n]{0,40}?\d+(\.\d+)?\s?(ms|µs|us|MiB|s)\b"
    r"|\d+(\.\d+)?\s?MiB USS",
)


def _figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("figures", REPO / "benchmarks" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measured_table_is_rendered_from_the_benchmark_figures() -> None:
    figures = _figures()
    readme = EVIDENCE.read_text()
    table = figures.render(figures.load())
    assert table in readme, "docs/benchmarks.md's Measured table differs: run `make bench` (or "
    f"{RENDER})"
    assert table.count("\n| ") >= 8  # every row's keys are in the file


def test_scale_block_is_rendered_from_the_scale_results() -> None:
    figures = _figures()
    readme = EVIDENCE.read_text()
    block = figures.render_scale(figures.load(figures.SCALE))
    assert block in readme, "docs/benchmarks.md's scale block differs: run `make bench` (or "
    f"{RENDER})"
    assert block.count("\n| ") >= 4  # header, rule and rows


def test_every_generated_block_is_in_the_evidence_doc_as_rendered() -> None:
    readme = EVIDENCE.read_text()
    for begin, _end, block in _figures().generated_blocks():
        assert block in readme, f"docs/benchmarks.md's {begin} block differs: run `make bench` (or "
        f"{RENDER})"


def _outside_the_table(text: str) -> str:
    for begin, end, _block in _figures().generated_blocks():
        if begin in text:
            start, stop = text.index(begin), text.index(end)
            text = text[:start] + text[stop:]
    return text


def test_no_doc_quotes_measured_figures_of_its_own() -> None:
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = _outside_the_table(doc.read_text())
        quoted = [m.group(0) for m in MEASURED.finditer(text)]
        assert not quoted, (
            f"{doc.name} quotes measurements {quoted}: link to docs/benchmarks.md#measured"
        )


def test_the_figure_checks_can_fail(tmp_path: Path) -> None:
    assert MEASURED.search("re-registered a median of ~6 ms after")
    assert MEASURED.search("the supervisor uses 13.1 MiB USS")
    assert not MEASURED.search("buckets 1 ms to 2.5 s; polls every 50 ms")
    figures = _figures()
    data = {"figures": {"discovery_median_ms": 1.0, "discovery_p90_ms": 2.0}}
    assert "median 1.0 ms (p90 2.0 ms)" in figures.render(data)
    assert "Allocate" not in figures.render(data)  # a row without its figures is left out
    doc = tmp_path / "x.md"
    doc.write_text(f"a\n{figures.BEGIN}\nold\n{figures.END}\nb\n")
    assert figures.splice(doc.read_text(), "NEW") == "a\nNEW\nb\n"
