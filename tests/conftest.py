"""Shared fixtures and the folder markers (tests).

- `short_tmp`: a fresh folder under /tmp with a short path (unix socket paths are limited to
  107 bytes, and pytest's own tmp_path is long);
- `root`: a `short_tmp` laid out like a node: `dp/` (device plugins), `cdi/`, `node/` (sysfs root);
- a hard timeout on every test (SIGALRM, `HARD_TIMEOUT` seconds, or the `hard_timeout(seconds)`
  marker), so a hung test fails with a traceback instead of hanging the run;
- each test gets the marker of its folder (unit, component, e2e, static), so `-m unit` selects a
  folder's tests wherever they are run from; property tests (hypothesis) also get `fuzz`, which
  `make test-fast` leaves out (hundreds of examples each: seconds, not milliseconds).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conditions import hard_timeout

HARD_TIMEOUT = 300
FOLDERS = ("unit", "component", "e2e", "static")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        try:
            folder = Path(item.fspath).relative_to(here).parts[0]
        except ValueError:
            continue
        if folder in FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.fuzz)


@pytest.fixture(autouse=True)
def _hard_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("hard_timeout")
    seconds = int(marker.args[0]) if marker is not None else HARD_TIMEOUT
    with hard_timeout(seconds):
        yield


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="dp") as d:
        yield Path(d)


@pytest.fixture
def root(short_tmp: Path) -> Path:
    for sub in ("dp", "cdi", "node"):
        (short_tmp / sub).mkdir()
    return short_tmp
