"""Every command the README and docs show that can run here is run, and its output compared.

Fenced blocks are read from README.md and docs/*.md. A block with `$ ` lines is a transcript: its
commands run in order and the lines after the last one are what it printed (`...` stands for
lines left out); each shown line must be in the real output, compared with white space collapsed
and, failing that, with times and absolute paths made neutral (and, for `status`, whose pids and
counters differ on every run, numbers too). Other blocks' lines that
start with `rdma-shared-dp`, and the install commands that need no cluster (`helm template`,
`helm lint`, `helm package`, `helm show`, `kubectl kustomize`: the chart and overlays in this
checkout), must exit 0. Commands that need a cluster, a container engine or a network
(`kubectl apply`, `helm install`, `docker`, `curl`, `make`) and synopses with placeholders are
not run, and the test says which were skipped. The README's quick start is run too: `make demo`
into a fresh venv must install the runtime dependencies only and print no warning.

The commands run against what the docs assume: the demo's simulated node at `/tmp/node` (built in
a temp folder instead), the shipped config as `config.json` / `my-config.json`, and for `status`
a running `rdma-shared-dp demo --keep-running`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conditions import missing
from tests.static.test_deployment import tool

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```[^\n]*\n(.*?)^\1```", re.DOTALL | re.MULTILINE)
CLI = re.compile(r"^(?:\.venv/bin/)?rdma-shared-dp\b")
DEMO = [sys.executable, "-m", "supervisor", "demo", "--keep-running", "--json"]
NOT_HERE = ("kubectl", "docker", "curl", "make", "journalctl", "helm", "skopeo", "buildah")
#: Install commands that run here: they only read the chart and overlays of this checkout.
INSTALL = re.compile(r"^(helm (template|lint|package|show)|kubectl kustomize) ")
PLACEHOLDER = re.compile(r"<[\w ./-]+>|\.\.\.|\$\(")


def runnable(line: str) -> bool:
    """A line this test runs: the plugin's CLI, or an install command without placeholders."""
    return bool(CLI.match(line)) or (bool(INSTALL.match(line)) and not PLACEHOLDER.search(line))


def _lines(block: str) -> list[str]:
    """The block's lines, stripped, continuation lines (a trailing backslash) joined."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines()]


@dataclass
class Block:
    doc: str
    line: int
    commands: list[str]
    output: list[str] = field(default_factory=list)
    transcript: bool = False


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            lines = _lines(m[2])
            where = text[: m.start()].count("\n") + 1
            name = str(doc.relative_to(REPO))
            if any(line.startswith("$ ") for line in lines):
                last = max(i for i, line in enumerate(lines) if line.startswith("$ "))
                commands = [line[2:] for line in lines if line.startswith("$ ")]
                found.append(Block(name, where, commands, lines[last + 1 :], transcript=True))
            else:
                commands = [line for line in lines if runnable(line)]
                if commands:
                    found.append(Block(name, where, commands))
    return found


def skipped_commands() -> list[str]:
    out = []
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text()):
            for line in _lines(m[2]):
                word = line.split(" ", 1)[0]
                if word in NOT_HERE and not runnable(line):
                    out.append(line)
    return out


def _argv(command: str, node: Path, runtime_dir: Path | None) -> list[str]:
    command = command.split("  #", 1)[0].strip()  # a trailing comment
    argv = shlex.split(command.replace("/tmp/node", str(node)))
    head = argv[0]
    if head.endswith("rdma-shared-dp"):
        argv = [sys.executable, "-m", "supervisor", *argv[1:]]
        if argv[3:4] == ["status"] and runtime_dir is not None and "--runtime-dir" not in argv:
            argv += ["--runtime-dir", str(runtime_dir)]
    elif head.endswith("/python") or head == "python":
        argv = [sys.executable, *argv[1:]]
    elif head in ("helm", "kubectl"):
        argv = [tool(head), *argv[1:]]
    return argv


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)*[\w.-]+")


def _collapse(line: str) -> str:
    return " ".join(line.split())


def _neutral(line: str, numbers: bool) -> str:
    line = _PATH.sub("PATH", _TIME.sub("TIME", _collapse(line)))
    return re.sub(r"\d+(\.\d+)?", "N", line) if numbers else line


def compare(shown: list[str], real: str, numbers: bool = False) -> list[str]:
    """The shown lines missing from the real output (empty when the doc is true); `numbers`:
    any number stands for any other."""
    exact = {_collapse(line) for line in real.splitlines()}
    neutral = {_neutral(line, numbers) for line in real.splitlines()}
    missing = []
    for line in shown:
        if not line or line == "...":
            continue
        if _collapse(line) not in exact and _neutral(line, numbers) not in neutral:
            missing.append(line)
    return missing


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(folder to run in, runtime folder of a running demo)."""
    root = tmp_path_factory.mktemp("doc-commands")
    shipped = REPO / "deployment/k8s/base/config.json"
    for name in ("config.json", "my-config.json"):
        shutil.copy(shipped, root / name)
    (root / "deployment").symlink_to(REPO / "deployment")
    workdir = Path(f"/tmp/rdp-doc-{os.getpid()}")
    demo = subprocess.Popen(
        [*DEMO, "--workdir", str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            event = json.loads(line)
            assert event["event"] != "failed", event
            if event["event"] == "inspect":
                break
        else:
            raise AssertionError("the demo ended before it was ready to inspect")
        yield root, workdir / "run"
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_docs_show_commands_to_run() -> None:
    found = blocks()
    assert sum(len(b.commands) for b in found) >= 6, found
    assert sum(1 for b in found if b.transcript) >= 3
    # What cannot run here is only what needs a cluster, an image or a network.
    assert skipped_commands(), "expected kubectl/docker examples to be skipped"


@pytest.mark.parametrize("block", blocks(), ids=lambda b: f"{b.doc}:{b.line}")
def test_doc_command_runs_and_prints_what_the_doc_shows(
    block: Block, workspace: tuple[Path, Path], tmp_path: Path
) -> None:
    root, runtime_dir = workspace
    node = tmp_path / "node"
    out = None
    for command in block.commands:
        out = subprocess.run(
            _argv(command, node, runtime_dir),
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, f"{block.doc}:{block.line}: {command}\n{out.stderr}"
    assert out is not None
    if block.transcript:
        loose = " status" in block.commands[-1]
        missing = compare(block.output, out.stdout + out.stderr, numbers=loose)
        assert not missing, (
            f"{block.doc}:{block.line}: these shown lines are not in the output of "
            f"{block.commands[-1]!r}:\n" + "\n".join(missing) + "\n--- real output:\n" + out.stdout
        )


def test_install_commands_are_found_and_placeholders_are_not_run() -> None:
    ran = [c for b in blocks() for c in b.commands]
    assert any(c.startswith("helm template") for c in ran), ran
    assert any(c.startswith("kubectl kustomize") for c in ran), ran
    assert not runnable("helm install rdma deployment/helm/rdma-shared-dp -n kube-system")
    assert not runnable("helm template rdma <chart>")
    assert runnable("helm lint --strict deployment/helm/rdma-shared-dp")
    assert _lines("helm template a \\\n    --set b=1\n") == ["helm template a --set b=1"]


def test_quick_start_make_demo_installs_the_runtime_only_and_warns_nothing(
    tmp_path: Path,
) -> None:
    """The README's first command, into a fresh venv: exactly the locked runtime dependencies
    (no test tools) and the `rdma-shared-dp` command, the demo runs, and nothing on the way
    prints a warning."""
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start") :]
    first = FENCE.search(quick)
    assert first is not None
    shown = [line.split("#", 1)[0].strip() for line in first[2].splitlines()]
    assert shown == ["make demo", "make test"], shown
    if shutil.which("make") is None:
        missing("make is not installed")
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["make", "demo", f"VENV={venv}", f"PY={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 and re.search(
        r"[Cc]onnection|resolve|Network is unreachable", proc.stderr
    ):
        missing(f"PyPI unreachable: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo finished" in proc.stdout
    noise = [line for line in (proc.stdout + proc.stderr).splitlines()
             if re.search(r"warn|deprecat", line, re.I)]  # fmt: skip
    assert noise == [], noise
    installed = {
        p.name.split("-")[0].lower() for p in venv.glob("lib/python3*/site-packages/*.dist-info")
    }
    locked = {
        n.lower().replace("-", "_")
        for n in re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / "requirements.lock").read_text(), re.M)
    }
    assert "pytest" not in installed and "hypothesis" not in installed
    assert installed - {"pip", "setuptools", "rdma_shared_dp"} <= locked, installed - locked
    version = subprocess.run(
        [str(venv / "bin" / "rdma-shared-dp"), "version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0 and version.stdout.startswith("rdma-shared-dp "), version.stderr


def test_compare_can_fail() -> None:
    real = "resource rdma/a (rdmaHcaMax 4): 1 device selected\n  0000:01:00.0  yes\n"
    assert compare(["resource rdma/a (rdmaHcaMax 4): 1 device selected", "..."], real) == []
    assert compare(["  0000:01:00.0  no"], real) == ["  0000:01:00.0  no"]
    status = "supervisor pid 12, up since 2030-01-01T00:00:00Z"
    assert compare(["supervisor pid 7, up since 2026-11-26T14:53:26Z"], status, numbers=True) == []
    assert compare(["supervisor pid 7, up since 2026-11-26T14:53:26Z"], status) != []
    assert compare(["  0000:01:00.0  yes  32"], "  0000:01:00.0  yes  31") != []
