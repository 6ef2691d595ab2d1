"""The Helm chart in deployment/helm/rdma-shared-dp (test process).

`helm lint --strict`, then `helm template` for each kustomize overlay's options: the chart must
render the same objects as the overlay (so the two install paths cannot drift), pass
`kubernetes-validate --strict` like the overlays, and its remaining options (image, resources,
tolerations, nodeSelector, config, extra environment) must land where the plugin reads them.
helm is built from its Go module by `.ci/install-tools.sh`; without it these tests skip.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.component.test_dropin import go_flags_accept
from tests.static.test_deployment import (
    CUSTOM_KINDS,
    K8S,
    assert_schema_valid,
    daemonset_container,
    parse_container,
    render,
    tool,
    yaml,
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deployment" / "helm" / "rdma-shared-dp"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
Doc = dict[str, Any]

#: kustomize overlay -> the chart values that mean the same.
OVERLAY_VALUES: dict[str, list[str]] = {
    "base": [],
    "overlays/cdi": ["cdi.enabled=true"],
    "overlays/monitoring": ["monitoring.enabled=true"],
    "overlays/nfd": ["nfd.enabled=true"],
    "overlays/kubelet-root": ["kubeletRootDir=/data/kubelet"],
    "overlays/full": ["cdi.enabled=true", "monitoring.enabled=true", "nfd.enabled=true"],
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, timeout=120, check=False
    )


@functools.cache
def template_text(*sets: str) -> str:
    argv = ["template", "rdma", str(CHART), "--namespace", "kube-system"]
    for s in sets:
        argv += ["--set", s]
    proc = helm(*argv)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def template(*sets: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(template_text(*sets)) if d]


def normalised(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """Objects by (kind, name); JSON payloads of ConfigMaps parsed (formatting may differ)."""
    out = {}
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        if doc["kind"] == "ConfigMap":
            doc["data"] = {k: json.loads(v) for k, v in doc["data"].items()}
        if doc["kind"] == "PrometheusRule":  # kustomize re-folds multi-line PromQL differently
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    rule["expr"] = " ".join(str(rule["expr"]).split())
        out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_chart_lints_strictly() -> None:
    proc = helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "chart"
    shutil.copytree(CHART, broken, symlinks=False)
    (broken / "templates" / "daemonset.yaml").write_text("{{ .Values.nope.missing }}\n")
    assert helm("lint", "--strict", str(broken)).returncode != 0


@pytest.mark.parametrize("overlay", list(OVERLAY_VALUES), ids=list(OVERLAY_VALUES))
def test_chart_renders_what_the_kustomize_overlay_renders(overlay: str) -> None:
    chart = normalised(template(*OVERLAY_VALUES[overlay]))
    kustomize = normalised(render(K8S / overlay))
    assert sorted(chart) == sorted(kustomize)
    for key, expected in kustomize.items():
        assert chart[key] == expected, key


@pytest.mark.parametrize("overlay", list(OVERLAY_VALUES), ids=list(OVERLAY_VALUES))
def test_chart_output_passes_strict_schema_validation(overlay: str, tmp_path: Path) -> None:
    rendered = tmp_path / "chart.yaml"
    rendered.write_text(template_text(*OVERLAY_VALUES[overlay]))
    assert_schema_valid(rendered, template(*OVERLAY_VALUES[overlay]))


def test_every_kind_is_validated_or_known_custom() -> None:
    kinds = {d["kind"] for d in template(*OVERLAY_VALUES["overlays/full"])}
    assert kinds - CUSTOM_KINDS == {"ConfigMap", "DaemonSet", "Service"}


def test_the_other_options_land_where_the_plugin_reads_them() -> None:
    config = {
        "configList": [
            {"resourceName": "hca", "resourcePrefix": "example.com", "rdmaHcaMax": 10,
             "selectors": {"vendors": ["15b3"]}}
        ]
    }  # fmt: skip
    sets = (
        "image.repository=registry.example/rdma/rdma-shared-dp",
        "image.tag=9.9.9",
        "resources.limits.memory=1Gi",
        "tolerations[0].key=rdma",
        "tolerations[0].operator=Exists",
        "nodeSelector.rdma=yes",
        "extraEnv.RDMA_SHARED_DP_LOG_FORMAT=json",
        "monitoring.enabled=true",
        "monitoring.labels.release=kube-prometheus-stack",
        f"config={json.dumps(config)}",
    )
    argv = ["template", "rdma", str(CHART), "--namespace", "rdma"]
    for s in sets:
        argv += ["--set-json" if s.startswith("config=") else "--set", s]
    proc = helm(*argv)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    pod, container = daemonset_container(docs)
    assert container["image"] == "registry.example/rdma/rdma-shared-dp:9.9.9"
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert pod["tolerations"] == [{"key": "rdma", "operator": "Exists"}]
    assert pod["nodeSelector"] == {"rdma": "yes", "kubernetes.io/os": "linux"}
    args = parse_container(container)
    assert args.log_format == "json"
    assert go_flags_accept(container["args"]) == ""
    by_kind = {d["kind"]: d for d in docs if d["kind"] != "ConfigMap"}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert by_kind[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert by_kind[kind]["metadata"]["namespace"] == "rdma"
    (cm,) = [d for d in docs if d["metadata"]["name"] == "rdma-devices"]
    assert json.loads(cm["data"]["config.json"]) == config


def test_one_image_setting_and_one_version() -> None:
    """The image's name and tag are the project's: kustomize's images entry, the chart's
    values and appVersion, the Makefile and the Dockerfile's VERSION all agree."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    assert chart["version"] == chart["appVersion"] == VERSION
    assert values["image"]["tag"] == ""  # the appVersion
    assert entry == {"name": "rdma-shared-dp", "newName": values["image"]["repository"],
                     "newTag": VERSION}  # fmt: skip
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG VERSION={re.escape(VERSION)}$", dockerfile, re.M)
    _, container = daemonset_container(template())
    assert container["image"] == f"rdma-shared-dp:{VERSION}"


def test_chart_rollback_to_the_go_image_matches_the_go_rollback_overlay() -> None:
    """`helm upgrade --set image...,probes.enabled=false` is the Helm path back to Go."""
    chart = normalised(
        template(
            "image.repository=ghcr.io/mellanox/k8s-rdma-shared-dev-plugin",
            "image.tag=v1.5.2",
            "probes.enabled=false",
        )
    )
    kustomize = normalised(render(K8S / "overlays" / "go-rollback"))
    assert chart == kustomize
    _, container = daemonset_container(template("probes.enabled=false"))
    assert go_flags_accept(container["args"]) == ""
