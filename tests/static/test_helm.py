"""The Helm chart in deployment/helm/rdma-shared-dp (test process).

`helm lint --strict`, then `helm template` for each kustomize overlay's options: the chart must
render the same objects as the overlay (so the two install paths cannot drift), pass
`kubernetes-validate --strict` like the overlays, and its remaining options (image, resources,
tolerations, nodeSelector, config, extra environment, metrics port and TLS, pod metadata) must
land where the plugin reads them. The chart is self-contained: no symlinks, its copies of the
kustomize manifests equal their sources, and the packaged `.tgz` lints and renders from another
folder, without a warning, with helm v4 (`helm`) and v3 (`helm3`). values.schema.json refusals
run through helm here; tests/static/test_helm_schema.py holds the schema to validate-config.
helm is built from its Go module by `.ci/install-tools.sh`; without it these tests skip.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tarfile
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


#: The helm majors the chart must work with: the venv's links made by .ci/install-tools.sh.
HELMS = ["helm", "helm3"]
#: Without a cluster, helm v3's `template` assumes Kubernetes 1.20, which the chart's kubeVersion
#: refuses; GitOps tools pass the cluster's version like this (v4 assumes a current one).
KUBE = ("--kube-version", "1.35.0")


def helm(*args: str, binary: str = "helm") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(binary), *args], capture_output=True, text=True, timeout=120, check=False
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


@pytest.mark.parametrize("binary", HELMS)
def test_chart_lints_strictly(binary: str) -> None:
    proc = helm("lint", "--strict", str(CHART), binary=binary)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stdout + proc.stderr


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


# --- a chart that vendors ------------------------------------------------------------------------

#: The chart's copies of kustomize manifests (`make chart-files` refreshes them) -> their sources.
CHART_COPIES = {
    "files/config.json": K8S / "base" / "config.json",
    "files/nodefeaturerule.yaml": K8S / "components" / "nfd" / "nodefeaturerule.yaml",
    **{
        f"files/{name}": K8S / "components" / "monitoring" / name
        for name in ("dashboard.json", "prometheusrule.yaml", "service.yaml", "servicemonitor.yaml")
    },
}


def test_chart_holds_no_symlinks_and_its_copies_equal_their_sources() -> None:
    links = [str(p.relative_to(CHART)) for p in CHART.rglob("*") if p.is_symlink()]
    assert links == [], f"the chart must be self-contained (helm refuses outside links): {links}"
    shipped = {str(p.relative_to(CHART)) for p in (CHART / "files").iterdir()}
    assert shipped == set(CHART_COPIES)
    stale = [n for n, src in CHART_COPIES.items() if (CHART / n).read_bytes() != src.read_bytes()]
    assert stale == [], f"{stale} differ from deployment/k8s: run `make chart-files`"


@pytest.mark.parametrize("binary", HELMS)
def test_the_packaged_chart_lints_and_renders_from_elsewhere_without_warnings(
    binary: str, tmp_path: Path
) -> None:
    build = tmp_path / "build"
    proc = helm("package", str(CHART), "--destination", str(build), binary=binary)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stdout + proc.stderr, proc.stderr
    (built,) = build.glob("*.tgz")
    assert built.name == f"rdma-shared-dp-{VERSION}.tgz"
    (tmp_path / "vendor").mkdir()  # as a vendor would: only the archive, somewhere else
    tgz = Path(shutil.copy(built, tmp_path / "vendor" / built.name))
    shutil.rmtree(build)
    lint = helm("lint", "--strict", str(tgz), binary=binary)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    proc = helm("template", "rdma", str(tgz), "--namespace", "kube-system", *KUBE, binary=binary)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no symlink (or any other) warning
    assert normalised([d for d in yaml.safe_load_all(proc.stdout) if d]) == normalised(template())
    with tarfile.open(tgz) as tar:
        names = {m.name for m in tar.getmembers()}
        assert not [m.name for m in tar.getmembers() if m.issym() or m.islnk()]
    for needed in ("values.schema.json", "templates/NOTES.txt", "files/config.json"):
        assert f"rdma-shared-dp/{needed}" in names


@pytest.mark.parametrize("binary", HELMS)
def test_kube_version_is_enforced(binary: str) -> None:
    too_old = helm("template", "rdma", str(CHART), "--kube-version", "1.24.0", binary=binary)
    assert too_old.returncode != 0
    assert "kubeVersion" in too_old.stderr or "incompatible" in too_old.stderr, too_old.stderr
    assert (
        helm("template", "rdma", str(CHART), "--kube-version", "1.25.0", binary=binary).returncode
        == 0
    )


def test_notes_say_how_to_check_the_install() -> None:
    proc = helm("install", "rdma", str(CHART), "--dry-run=client", "--namespace", "rdma")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "rollout status daemonset/rdma-shared-dp-ds" in notes
    assert "http://<node-ip>:9478" in notes
    assert "docs/security.md" in notes


# --- values.schema.json through helm ---------------------------------------------------------


def _config(**entry: Any) -> str:
    resource: dict[str, Any] = {"resourceName": "hca", "rdmaHcaMax": 10,
                                "selectors": {"vendors": ["15b3"]}}  # fmt: skip
    resource.update(entry)
    resource = {k: v for k, v in resource.items() if v is not None}  # None: leave the key out
    return "config=" + json.dumps({"configList": [resource]})


#: (values given with --set-json, the part of helm's message that must name the problem)
SCHEMA_REFUSES = {
    "prefix-not-dns": (
        _config(resourcePrefix="example_prefix"),
        "/config/configList/0/resourcePrefix",
    ),
    "prefix-kubernetes-io": (_config(resourcePrefix="rdma.kubernetes.io"), "resourcePrefix"),
    "name-with-dash": (_config(resourceName="hca-a"), "/config/configList/0/resourceName"),
    "name-underscore-end": (_config(resourceName="hca_"), "resourceName"),
    "hca-max-string": (_config(rdmaHcaMax="10"), "/config/configList/0/rdmaHcaMax"),
    "hca-max-too-large": (_config(rdmaHcaMax=10001), "rdmaHcaMax"),
    "unknown-config-key": (_config(resourceNmae="x"), "resourceNmae"),
    "vendor-not-hex": (_config(selectors={"vendors": ["mellanox"]}), "vendors/0"),
    "no-selection": (_config(selectors=None), "/config/configList/0"),
    "empty-config-list": ('config={"configList": []}', "/config/configList"),
    "unknown-value": ("metricsPort=9000", "metricsPort"),
    "port-out-of-range": ('metrics={"port": 70000}', "/metrics/port"),
    "port-string": ('metrics={"port": "9478"}', "/metrics/port"),
    "pull-secret-shape": ('imagePullSecrets=["regcred"]', "/imagePullSecrets/0"),
    "runbook-not-url": ('monitoring={"runbookBaseURL": "runbooks.md"}', "runbookBaseURL"),
}


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize("case", list(SCHEMA_REFUSES), ids=list(SCHEMA_REFUSES))
def test_the_schema_refuses_bad_values_before_anything_renders(binary: str, case: str) -> None:
    value, where = SCHEMA_REFUSES[case]
    proc = helm("template", "rdma", str(CHART), "--set-json", value, *KUBE, binary=binary)
    assert proc.returncode != 0, f"{case}: rendered\n{proc.stdout[:400]}"
    assert "schema" in proc.stderr and where in proc.stderr, proc.stderr


@pytest.mark.parametrize("binary", HELMS)
def test_the_schema_admits_a_good_config_and_every_option(binary: str) -> None:
    proc = helm(
        "template", "rdma", str(CHART), *KUBE,
        "--set-json", _config(resourcePrefix="", devices=["ib0"], selectors=None),
        "--set-json", 'imagePullSecrets=[{"name": "regcred"}]',
        "--set-json", 'metrics={"port": 9555, "perPodSeries": false, "tls": {"secretName": "t"}}',
        binary=binary,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


# --- the options added for a production rollout ------------------------------------------------


def _docs(*args: str) -> list[Doc]:
    proc = helm("template", "rdma", str(CHART), "--namespace", "rdma", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _env(container: Doc) -> dict[str, str]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"an env variable rendered twice: {names}"
    return {e["name"]: e["value"] for e in container["env"]}


def _by_kind(docs: list[Doc], kind: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_one_port_value_drives_the_address_container_port_probes_and_service() -> None:
    docs = _docs("--set", "metrics.port=9555", "--set", "monitoring.enabled=true")
    pod, container = daemonset_container(docs)
    assert parse_container(container).metrics_address.endswith(":9555")
    assert _env(container)["RDMA_SHARED_DP_METRICS_ADDRESS"] == ":9555"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9555, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
        assert "scheme" not in container[probe]["httpGet"]
    (port,) = _by_kind(docs, "Service")["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (9555, "metrics")
    (endpoint,) = _by_kind(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and "tlsConfig" not in endpoint
    assert "9478" not in json.dumps(pod)


def test_extra_env_cannot_shadow_a_variable_the_chart_sets() -> None:
    proc = helm("template", "rdma", str(CHART),
                "--set", "extraEnv.RDMA_SHARED_DP_METRICS_ADDRESS=:9000")  # fmt: skip
    assert proc.returncode != 0
    assert "extraEnv.RDMA_SHARED_DP_METRICS_ADDRESS" in proc.stderr
    assert "metrics.port" in proc.stderr


def test_metrics_tls_mounts_the_secret_and_the_service_monitor_scrapes_https() -> None:
    docs = _docs(
        "--set", "metrics.tls.secretName=rdma-metrics-tls",
        "--set", "monitoring.enabled=true",
    )  # fmt: skip
    pod, container = daemonset_container(docs)
    env = _env(container)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["metrics-tls"]["readOnly"] is True
    folder = mounts["metrics-tls"]["mountPath"]
    assert env["RDMA_SHARED_DP_METRICS_TLS_CERT_FILE"] == f"{folder}/tls.crt"
    assert env["RDMA_SHARED_DP_METRICS_TLS_KEY_FILE"] == f"{folder}/tls.key"
    assert "RDMA_SHARED_DP_METRICS_TLS_CLIENT_CA_FILE" not in env
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["metrics-tls"]["secret"]["secretName"] == "rdma-metrics-tls"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    (endpoint,) = _by_kind(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "rdma-metrics-tls", "key": "ca.crt"}}
    }


def test_client_certificates_give_prometheus_a_certificate_and_probes_a_tcp_check() -> None:
    docs = _docs(
        "--set", "metrics.tls.secretName=rdma-metrics-tls",
        "--set", "metrics.tls.clientCASecretName=rdma-metrics-clients",
        "--set", "monitoring.enabled=true",
        "--set", "monitoring.clientCertSecretName=prometheus-client",
        "--set", "monitoring.tlsConfig.serverName=rdma-shared-dp",
    )  # fmt: skip
    pod, container = daemonset_container(docs)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    ca = _env(container)["RDMA_SHARED_DP_METRICS_TLS_CLIENT_CA_FILE"]
    assert ca == f"{mounts['metrics-client-ca']}/ca.crt"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["metrics-client-ca"]["secret"]["secretName"] == "rdma-metrics-clients"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "metrics"}
        assert "httpGet" not in container[probe]
    (endpoint,) = _by_kind(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "rdma-metrics-tls", "key": "ca.crt"}},
        "cert": {"secret": {"name": "prometheus-client", "key": "tls.crt"}},
        "keySecret": {"name": "prometheus-client", "key": "tls.key"},
        "serverName": "rdma-shared-dp",
    }
    # Without a client certificate for Prometheus the chart refuses, saying what to set.
    proc = helm("template", "rdma", str(CHART),
                "--set", "metrics.tls.secretName=t", "--set", "metrics.tls.clientCASecretName=c",
                "--set", "monitoring.enabled=true")  # fmt: skip
    assert proc.returncode != 0 and "monitoring.clientCertSecretName" in proc.stderr
    proc = helm("template", "rdma", str(CHART), "--set", "metrics.tls.clientCASecretName=c")
    assert proc.returncode != 0 and "needs metrics.tls.secretName" in proc.stderr


def test_per_pod_series_switch() -> None:
    _, container = daemonset_container(_docs("--set", "metrics.perPodSeries=false"))
    assert _env(container)["RDMA_SHARED_DP_POD_METRICS"] == "off"
    _, container = daemonset_container(_docs())
    assert "RDMA_SHARED_DP_POD_METRICS" not in _env(container)  # the plugin's default: on


def test_pull_secrets_and_pod_metadata_land_on_the_pod() -> None:
    docs = _docs(
        "--set-json", 'imagePullSecrets=[{"name": "regcred"}]',
        "--set", "podAnnotations.example\\.com/team=hpc",
        "--set", "podLabels.team=hpc",
        "--set", "podLabels.name=not-the-selector",
    )  # fmt: skip
    daemonset = _by_kind(docs, "DaemonSet")
    meta = daemonset["spec"]["template"]["metadata"]
    assert daemonset["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert meta["annotations"] == {"example.com/team": "hpc"}
    assert meta["labels"]["team"] == "hpc"
    # The selector's label stays the chart's: a pod label cannot orphan the DaemonSet's pods.
    assert meta["labels"]["name"] == daemonset["spec"]["selector"]["matchLabels"]["name"]


def test_every_alert_links_its_runbook_under_the_base_url() -> None:
    base = "https://docs.example.org/rdma/runbooks.md"
    docs = _docs("--set", "monitoring.enabled=true", "--set", f"monitoring.runbookBaseURL={base}")
    rules = [r for g in _by_kind(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    shipped = yaml.safe_load((CHART_COPIES["files/prometheusrule.yaml"]).read_text())
    assert len(alerts) == sum(
        1 for g in shipped["spec"]["groups"] for r in g["rules"] if "alert" in r
    )
    anchors = (REPO / "docs" / "runbooks.md").read_text().lower()
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url == f"{base}#{alert['alert'].lower()}", url
        assert f"## {alert['alert'].lower()}" in anchors, f"docs/runbooks.md lacks {alert['alert']}"
