"""docs/compatibility.md against what CI really builds and runs (test process).

Each "tested by CI" cell must name exactly the versions the CI scripts take (kubelets and
containerd from tests/e2e/kubelet/versions.env, helm from .ci/install-tools.sh, the image's
Debian suite from .ci/build-image.sh), the "supported" minimums must be pyproject's and the
chart's, and no other doc may name a kubelet or containerd 2 release CI does not test.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "compatibility.md"


def matrix() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("component", "---"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def versions_env() -> dict[str, str]:
    text = (REPO / "tests" / "e2e" / "kubelet" / "versions.env").read_text()
    return {k: shlex.split(v)[0] if v else "" for k, v in re.findall(r"^(\w+)=(.*)$", text, re.M)}


def test_the_matrix_has_every_component() -> None:
    assert set(matrix()) >= {"Kubernetes (kubelet)", "container runtime", "kernel", "Python",
                             "Helm", "kubectl", "NVIDIA Network Operator"}  # fmt: skip


def test_kubelets_are_the_ones_the_real_kubelet_suite_builds() -> None:
    tested = set(re.findall(r"v\d+\.\d+\.\d+", matrix()["Kubernetes (kubelet)"][1]))
    assert tested == set(versions_env()["KUBELET_VERSIONS"].split())


def test_runtimes_are_the_ones_the_real_kubelet_suite_runs() -> None:
    tested = matrix()["container runtime"][1]
    assert set(re.findall(r"v\d+\.\d+\.\d+", tested)) == {versions_env()["CONTAINERD2_VERSION"]}
    script = (REPO / ".ci" / "install-kubelet-e2e.sh").read_text()
    assert "containerd 1.6" in tested and "containerd 1.6" in script


def test_helm_versions_are_the_ones_install_tools_builds() -> None:
    built = set(
        re.findall(r"^build_helm (v[\d.]+) ", (REPO / ".ci/install-tools.sh").read_text(), re.M)
    )
    assert set(re.findall(r"v\d+\.\d+\.\d+", matrix()["Helm"][1])) == built
    assert len(built) == 2  # one per major


def test_python_and_kubernetes_minimums_are_the_projects() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    minimum = re.search(r"\d+\.\d+", pyproject["project"]["requires-python"])
    assert minimum and matrix()["Python"][0].startswith(f"{minimum[0]}+")
    chart = (REPO / "deployment/helm/rdma-shared-dp/Chart.yaml").read_text()
    declared = re.search(r'^kubeVersion: "(>=(\d+\.\d+)\S*)"$', chart, re.M)
    assert declared, "the chart declares a kubeVersion"
    assert matrix()["Kubernetes (kubelet)"][0].startswith(f"{declared[2]} or newer")
    assert f"`kubeVersion: {declared[1]}`" in matrix()["Helm"][0]


def test_the_image_python_is_the_default_suites() -> None:
    script = (REPO / ".ci" / "build-image.sh").read_text()
    suite = re.search(r'^BASE_SUITE="\$\{BASE_SUITE:-(\w+)\}"', script, re.M)
    assert suite is not None
    python_by_suite = {"trixie": "3.13", "bookworm": "3.11"}  # Debian's python3 in each
    assert f"Debian {suite[1]}'s python3 {python_by_suite[suite[1]]}" in matrix()["Python"][1]


def test_no_doc_names_a_release_ci_does_not_test() -> None:
    env = versions_env()
    allowed = set(env["KUBELET_VERSIONS"].split()) | {env["CONTAINERD2_VERSION"]}
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        for found in re.findall(r"(?:kubelet|containerd) (v\d+\.\d+\.\d+)", text, re.I):
            assert found in allowed, f"{doc.name} names {found}, which CI does not test"
        for found in re.findall(r"[Kk]ubelet v(\d+\.\d+)\b(?!\.)", text):
            assert any(v.startswith(f"v{found}.") for v in allowed), f"{doc.name}: kubelet v{found}"
