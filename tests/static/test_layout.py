"""The rooms keep their shape: no import circles, floors respected, long modules pointed out.

Reads the source files only (static). The map these rules keep true is docs/architecture.md.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "common",
    "supervisor",
    "cli",
    "demo",
    "workers",
    "podresources",
    "dra",
    "zygote",
    "simulator",
    "benchmarks",
    "proto",
)
#: A module holds one concept, whatever its length: past this many lines it is worth a look
#: (a warning), never a reason on its own to cut it.
LOOK_AT_LINES = 600
#: Which package may import which (besides itself); proto is generated code.
MAY_IMPORT = {
    "common": set(),
    "supervisor": {"common"},
    "podresources": {"common", "proto"},
    "dra": {"common", "proto"},
    "workers": {"common", "proto"},
    # The fork server preloads the worker's modules, so forked workers share their pages.
    "zygote": {"common", "workers", "proto"},
    "simulator": {"common", "proto"},
    # The operator's commands: `run` starts the supervisor in this process.
    "cli": {"common", "supervisor"},
    # The product's demo: the real plugin (a subprocess) on the simulated node and kubelet.
    "demo": {"common", "simulator"},
    "benchmarks": {
        "common",
        "supervisor",
        "cli",
        "demo",
        "workers",
        "simulator",
        "podresources",
        "dra",
        "zygote",
        "proto",
        "tests",
    },
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out.update(n for n in names if n in modules)
    return out


def test_long_modules_are_pointed_out() -> None:
    for path in _modules().values():
        lines = len(path.read_text().splitlines())
        if lines > LOOK_AT_LINES and "_pb2" not in path.name:
            rel = path.relative_to(REPO)
            warnings.warn(f"{rel} has {lines} lines: does it hold one concept?", stacklevel=1)


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ importing its own submodules is no circle of roles: skip those edges.
    for name, deps in graph.items():
        graph[name] = {
            d
            for d in deps
            if not (modules[name].name == "__init__.py" and d.startswith(name + "."))
        }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                circle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_supervisor_core_never_reads_from_metrics() -> None:
    """Metrics watch the supervisor; no fact the supervisor acts on may live in them (held IDs
    once read pod rows from the metrics observer, so `--metrics-address ""` turned them off)."""
    modules = _modules()
    wrong = [
        f"{name} imports {dep}"
        for name, path in modules.items()
        if name.startswith("supervisor.") and not name.startswith(("supervisor.metrics", "cli"))
        for dep in _imports(path, modules)
        if dep == "supervisor.metrics" or dep.startswith("supervisor.metrics.")
    ]
    assert wrong == []


#: The only supervisor modules that write to a `WorkerRecord`: the table's moves and the
#: lifecycle's methods.
RECORD_WRITERS = {"supervisor/lifecycle.py", "supervisor/worker_table.py"}


def test_worker_records_change_only_through_the_lifecycle() -> None:
    wrong = []
    for path in sorted((REPO / "supervisor").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in RECORD_WRITERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in _flat(target)]
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = _flat(node.target)
            wrong += [
                f"{rel}:{t.lineno} writes record.{t.attr}"
                for t in targets
                if isinstance(t, ast.Attribute)
                and isinstance(t.value, ast.Name)
                and t.value.id in ("record", "found")
            ]
    assert wrong == []


def _flat(target: ast.expr) -> list[ast.expr]:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [t for item in target.elts for t in _flat(item)]
    return [target]


#: Entry points that only hand over to another package: `python -m supervisor` is the console
#: script `rdma-shared-dp` (cli/).
ENTRY_SHIMS = {"supervisor.__main__": {"cli"}}


def test_packages_import_only_the_floors_below() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        package = name.split(".")[0]
        allowed = MAY_IMPORT.get(package, set()) | ENTRY_SHIMS.get(name, set())
        for dep in _imports(path, modules):
            other = dep.split(".")[0]
            if other != package and other not in allowed:
                wrong.append(f"{name} imports {dep}")
    assert wrong == []


def test_the_map_shows_every_package() -> None:
    """docs/architecture.md is where to start: every package of the product is on it."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [p for p in PACKAGES if f"`{p}/`" not in text]
    assert missing == []


#: Class names still defined in two packages: the worker's `Stop` (an action of its registration,
#: beside the control message `common.messages.Stop`) waits for the worker's renaming. Do not add.
SHARED_CLASS_NAMES_FOR_NOW = {"Stop"}


def test_no_two_packages_name_a_class_alike() -> None:
    """One name, one meaning: a reader (or a grep) must not find two unrelated classes."""
    homes: dict[str, set[str]] = {}
    for name, path in _modules().items():
        if name.startswith("proto"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                homes.setdefault(node.name, set()).add(name.split(".")[0])
    shared = {cls for cls, packages in homes.items() if len(packages) > 1}
    assert shared <= SHARED_CLASS_NAMES_FOR_NOW, sorted(shared - SHARED_CLASS_NAMES_FOR_NOW)
