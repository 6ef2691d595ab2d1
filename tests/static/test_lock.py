"""requirements.lock, the image's dependencies with their hashes (test process).

The image installs only from it (`pip install --require-hashes`), so one commit gives one set of
dependencies. `uv pip compile` made it; run again with the command its header records (the lock
itself as the starting point, so it keeps its versions), it must come out the same: a lock that
no longer satisfies pyproject.toml, or was edited by hand, fails here. `make lock` refreshes it.
Needs PyPI, like the rest of the test setup; without it the test skips (fails under CI=true).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conditions import missing

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def header_command() -> list[str]:
    match = re.search(r"^#    (uv pip compile .*)$", LOCK.read_text(), re.MULTILINE)
    assert match, "requirements.lock has no `uv pip compile` header: regenerate it (make lock)"
    return shlex.split(match[1])


def pins() -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.MULTILINE))


def test_every_pin_has_hashes_and_every_dependency_is_pinned() -> None:
    blocks = re.split(r"\n(?=[a-z0-9_.-]+==)", LOCK.read_text())
    for block in blocks[1:]:
        assert "--hash=sha256:" in block, block.splitlines()[0]
    names = {re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0].lower().replace("_", "-")
             for dep in PYPROJECT["project"]["dependencies"]}  # fmt: skip
    assert names <= set(pins()), names - set(pins())
    assert "setuptools" in pins()  # the build backend, so the image fetches nothing unhashed


def test_the_image_and_the_demo_install_from_the_lock() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes --only-binary=:all: -r requirements.lock" in dockerfile
    assert "--no-deps --no-build-isolation --no-index /src" in dockerfile
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes -r $(LOCK)" in makefile


def test_the_lock_is_current(tmp_path: Path) -> None:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        missing("uv is not installed in the venv (the test extras have it): run make test")
    argv = header_command()
    out = argv.index("-o") + 1
    copy = tmp_path / "requirements.lock"
    shutil.copy(LOCK, copy)
    argv[out] = str(copy)
    proc = subprocess.run(
        [str(uv), *argv[1:], "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0 and re.search(r"[Cc]onnect|dns|network|offline", proc.stderr):
        missing(f"uv cannot reach the package index: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr

    def body(text: str) -> str:
        return re.sub(r"^#    uv pip compile .*$", "", text, flags=re.MULTILINE)

    assert body(copy.read_text()) == body(LOCK.read_text()), (
        "requirements.lock is not what `make lock` makes from pyproject.toml: run make lock"
    )
