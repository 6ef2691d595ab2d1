"""Tests of the Kubernetes manifests in deployment/ (run in the test process only).

Every kustomization is rendered with the real `kubectl kustomize`, validated against the
Kubernetes schemas with `kubernetes-validate --strict`, and checked against the plugin itself:
the flags it passes go through the real argument parser, the probes hit the real health paths,
the shipped config passes the real `validate-config`. Custom resources the schema validator does
not know (NodeFeatureRule, NetworkAttachmentDefinition here; the monitoring ones in
test_monitoring_manifests.py) get their required fields checked here.

Tools come from `.ci/install-tools.sh`; a test skips, saying which tool, only where one is missing.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from cli import parser as cli
from common.config.sizing import DEFAULT_MEMORY_LIMIT_MIB
from tests.conditions import missing

yaml = pytest.importorskip("yaml", reason="PyYAML missing: run .ci/install-tools.sh")

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "deployment"
K8S = DEPLOYMENT / "k8s"
EXAMPLES = DEPLOYMENT / "examples"
BASE_CONFIG = K8S / "base" / "config.json"
VENV_BIN = Path(sys.executable).parent

# Kinds the schema validator has no schema for; their fields are checked by our own tests.
CUSTOM_KINDS = {
    "ServiceMonitor",
    "PrometheusRule",
    "NodeFeatureRule",
    "NetworkAttachmentDefinition",
}

Doc = dict[str, Any]


def tool(name: str) -> str:
    """The venv's copy of a tool first (what install-tools.sh installs), then PATH; else skip."""
    local = VENV_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        missing(f"{name} not found in {VENV_BIN} or on PATH: run .ci/install-tools.sh")
    return found


def kustomizations() -> list[Path]:
    """Every folder under deployment/ whose kustomization is a Kustomization (not a Component)."""
    found = []
    for f in sorted(DEPLOYMENT.rglob("kustomization.yaml")):
        if yaml.safe_load(f.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(f.parent)
    return found


def components() -> list[Path]:
    return [
        f.parent
        for f in sorted(DEPLOYMENT.rglob("kustomization.yaml"))
        if yaml.safe_load(f.read_text()).get("kind") == "Component"
    ]


@functools.cache
def render_text(folder: Path) -> str:
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {folder} failed:\n{proc.stderr}"
    return proc.stdout


def render(folder: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(render_text(folder)) if d]


def only(docs: list[Doc], kind: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def daemonset_container(docs: list[Doc]) -> tuple[Doc, Doc]:
    """The DaemonSet's pod spec and its single container."""
    pod = only(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod, pod["containers"][0]


def parse_run_args(args: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    """Parse container args as `rdma-shared-dp` does (no subcommand means `run`), with exactly
    the container's environment (the parser reads its RDMA_SHARED_DP_* defaults from it)."""
    with mock.patch.dict(os.environ, env or {}, clear=True):
        try:
            return cli.parse_args(args)
        except SystemExit as exc:  # argparse reports the bad flag on stderr, then exits
            raise AssertionError(f"rdma-shared-dp refuses the manifest's args {args}") from exc


def container_env(container: Doc) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field is not None and set(item) == {"name", "valueFrom"}:  # the downward API
            env[item["name"]] = f"<{field}>"
            continue
        assert set(item) == {"name", "value"}, f"env from a source the test cannot see: {item}"
        env[item["name"]] = item["value"]
    return env


def parse_container(container: Doc) -> argparse.Namespace:
    """The plugin's view of a container: its args and its environment, nothing else."""
    return parse_run_args(container.get("args", []), container_env(container))


def mounts_by_path(pod: Doc, container: Doc) -> dict[str, tuple[Doc, Doc]]:
    """mountPath -> (volumeMount, volume)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}


def mount_holding(path: str, pod: Doc, container: Doc) -> tuple[Doc, Doc]:
    """The volume mount whose folder contains `path` (the longest match)."""
    best: tuple[str, tuple[Doc, Doc]] | None = None
    for mount_path, pair in mounts_by_path(pod, container).items():
        inside = path == mount_path or path.startswith(mount_path.rstrip("/") + "/")
        if inside and (best is None or len(mount_path) > len(best[0])):
            best = (mount_path, pair)
    assert best is not None, f"{path} is not inside any volume mount of the container"
    return best[1]


ALL_KUSTOMIZATIONS = kustomizations()
KUSTOMIZATION_IDS = [str(p.relative_to(DEPLOYMENT)) for p in ALL_KUSTOMIZATIONS]
# Those that run our image (the go-rollback overlay runs the Go one:
# tests/component/test_dropin.py).
OUR_KUSTOMIZATIONS = [p for p in ALL_KUSTOMIZATIONS if p.name != "go-rollback"]
OUR_IDS = [str(p.relative_to(DEPLOYMENT)) for p in OUR_KUSTOMIZATIONS]


# --- rendering and schema validation -------------------------------------------------------------


def test_the_expected_overlays_exist() -> None:
    names = {str(p.relative_to(K8S)) for p in ALL_KUSTOMIZATIONS}
    for wanted in ("base", "overlays/cdi", "overlays/monitoring", "overlays/nfd"):
        assert wanted in names
    assert "overlays/kubelet-root" in names
    assert "overlays/metrics-port" in names


@pytest.mark.parametrize("folder", ALL_KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_every_kustomization_renders(folder: Path) -> None:
    docs = render(folder)
    assert docs, f"{folder} renders nothing"
    kinds = [d["kind"] for d in docs]
    assert "DaemonSet" in kinds and "ConfigMap" in kinds


def test_every_component_is_used_by_an_overlay() -> None:
    # Components cannot be rendered alone; this makes sure each one is rendered through some
    # overlay by test_every_kustomization_renders.
    used: set[Path] = set()
    for folder in ALL_KUSTOMIZATIONS:
        spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
        used.update((folder / c).resolve() for c in spec.get("components", []))
    for comp in components():
        assert comp.resolve() in used, f"component {comp} is not used by any overlay"


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_schema_valid(path: Path, docs: list[Doc]) -> None:
    proc = kubernetes_validate(path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"kubernetes-validate --strict refused {path}:\n{out}"
    for doc in docs:
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        if doc["kind"] in CUSTOM_KINDS:
            assert f"Couldn't find schema for kind {doc['kind']}" in out
        else:
            assert f"passed for resource {name}" in out, f"{name} was not validated:\n{out}"


@pytest.mark.parametrize("folder", ALL_KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_rendered_objects_pass_strict_schema_validation(folder: Path, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_text(folder))
    assert_schema_valid(rendered, render(folder))


def example_files() -> list[Path]:
    return sorted(EXAMPLES.rglob("*.yaml"))


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_examples_pass_strict_schema_validation(path: Path) -> None:
    assert_schema_valid(path, [d for d in yaml.safe_load_all(path.read_text()) if d])


def test_schema_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    docs = render(K8S / "base")
    ds = only(docs, "DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(ds))
    assert kubernetes_validate(bad).returncode != 0


# --- the plugin accepts what the manifests say ---------------------------------------------------


@pytest.mark.parametrize("folder", ALL_KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_container_args_are_accepted_by_the_real_parser(folder: Path) -> None:
    pod, container = daemonset_container(render(folder))
    # `command` would replace the image's tini entrypoint as well as the program.
    assert "command" not in container
    args = parse_container(container)
    assert args.command == "run"

    # Every folder the flags name is mounted, and the kubelet folders at the host's own paths.
    assert mount_holding(args.config_file, pod, container)[1].get("configMap") is not None
    for kubelet_dir in (args.device_plugin_dir, args.plugins_registry_dir):
        mount, volume = mounts_by_path(pod, container)[kubelet_dir]
        assert volume["hostPath"]["path"] == kubelet_dir
        assert not mount.get("readOnly", False)
    _, pr_volume = mount_holding(args.pod_resources_socket, pod, container)
    assert "hostPath" in pr_volume
    _, runtime_volume = mounts_by_path(pod, container)[args.runtime_dir]
    assert "emptyDir" in runtime_volume
    if args.use_cdi:
        mount, volume = mounts_by_path(pod, container)[args.cdi_dir]
        assert volume["hostPath"]["path"] == args.cdi_dir
        assert not mount.get("readOnly", False)


def test_parser_check_can_fail() -> None:
    with pytest.raises(AssertionError, match="refuses"):
        parse_run_args(["--config-flie=/x"])


def wanted_metrics_port(folder: Path) -> int:
    """The overlay's own port (its local-config `rdma-shared-dp-metrics-port`), else the default."""
    source = folder / "metrics-port.yaml"
    if source.exists():
        return int(yaml.safe_load(source.read_text())["data"]["port"])
    return cli.DEFAULT_METRICS_PORT


def metrics_ports(docs: list[Doc]) -> dict[str, int]:
    """Every place of a rendering that names the metrics port -> the port it names."""
    _, container = daemonset_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    found = {"containerPort": ports["metrics"]}
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        found[probe] = ports[port] if isinstance(port, str) else port
    address = parse_container(container).metrics_address
    found["--metrics-address"] = int(address.rsplit(":", 1)[1])
    for service in (d for d in docs if d["kind"] == "Service"):
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
        assert port["targetPort"] == "metrics"  # the pod's port by name: follows containerPort
        found["Service"] = port["port"]
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]  # by name
    return found


@pytest.mark.parametrize("folder", OUR_KUSTOMIZATIONS, ids=OUR_IDS)
def test_one_metrics_port_drives_flag_container_port_probes_and_service(folder: Path) -> None:
    docs = render(folder)
    _, container = daemonset_container(docs)
    expected = {
        "livenessProbe": cli.HEALTHZ_PATH,
        "startupProbe": cli.HEALTHZ_PATH,
        "readinessProbe": cli.READYZ_PATH,
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"]["path"] == path, probe
    found = metrics_ports(docs)
    port = wanted_metrics_port(folder)
    assert found == dict.fromkeys(found, port), found


def test_the_metrics_port_overlay_moves_the_port() -> None:
    folder = K8S / "overlays" / "metrics-port"
    assert wanted_metrics_port(folder) != cli.DEFAULT_METRICS_PORT
    found = metrics_ports(render(folder))
    assert {"Service", "--metrics-address", "containerPort"} <= found.keys()
    assert "rdma-shared-dp-metrics-port" not in render_text(folder)  # local-config: not applied


def test_metrics_port_check_can_fail() -> None:
    docs = copy.deepcopy(render(K8S / "overlays" / "monitoring"))
    _, container = daemonset_container(docs)
    container["ports"][0]["containerPort"] = 9999
    found = metrics_ports(docs)
    assert found != dict.fromkeys(found, cli.DEFAULT_METRICS_PORT)


def test_config_file_path_is_the_plugin_default() -> None:
    _, container = daemonset_container(render(K8S / "base"))
    assert parse_container(container).config_file == cli.DEFAULT_CONFIG_FILE


def validate_config(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "validate-config", *flags, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


@pytest.mark.parametrize("folder", ALL_KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_configmap_config_passes_validate_config_strictly(folder: Path, tmp_path: Path) -> None:
    docs = render(folder)
    configmap = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rdma-devices"
    )
    assert configmap["metadata"]["namespace"] == "kube-system"
    config = tmp_path / "config.json"
    config.write_text(configmap["data"]["config.json"])
    _, container = daemonset_container(docs)
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    # Our own strictest check, against the pod's own memory limit: no warning at all.
    proc = validate_config(config, "--strict", "--memory-limit-mib", limit.removesuffix("Mi"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr, proc.stderr


def test_the_sizing_default_is_the_shipped_memory_limit() -> None:
    _, container = daemonset_container(render(K8S / "base"))
    assert container["resources"]["limits"]["memory"] == f"{DEFAULT_MEMORY_LIMIT_MIB}Mi"


def test_strict_check_of_the_shipped_config_can_fail(tmp_path: Path) -> None:
    warned = json.loads(BASE_CONFIG.read_text())
    del warned["configList"][0]["rdmaHcaMax"]  # works, with a warning
    path = tmp_path / "config.json"
    path.write_text(json.dumps(warned))
    assert validate_config(path).returncode == 0
    assert validate_config(path, "--strict").returncode != 0


def test_validate_config_check_can_fail(tmp_path: Path) -> None:
    # A warning (the deprecated `devices`) fails it too: the shipped config has none.
    warned = json.loads(BASE_CONFIG.read_text())
    warned["configList"][0]["devices"] = warned["configList"][0].pop("selectors")["ifNames"]
    (tmp_path / "warned.json").write_text(json.dumps(warned))
    assert validate_config(tmp_path / "warned.json", "--strict").returncode != 0
    # The Go plugin's README prefix, which the kubelet refuses.
    bad = json.loads(BASE_CONFIG.read_text())
    bad["configList"][0]["resourcePrefix"] = "example_prefix"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(bad))
    assert validate_config(path).returncode != 0


# --- the DaemonSet the issue asks for ------------------------------------------------------------


def test_base_daemonset_shape() -> None:
    docs = render(K8S / "base")
    ds = only(docs, "DaemonSet")
    assert ds["metadata"]["namespace"] == "kube-system"
    # The Go plugin's names: applying over its DaemonSet is an in-place update.
    assert ds["metadata"]["name"] == "rdma-shared-dp-ds"
    assert ds["spec"]["selector"] == {"matchLabels": {"name": "rdma-shared-dp-ds"}}
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"

    pod, container = daemonset_container(docs)
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert container["securityContext"]["privileged"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])

    mounts = mounts_by_path(pod, container)
    assert mounts["/sys"][0]["readOnly"] is True
    assert mounts["/sys"][1]["hostPath"]["path"] == "/sys"
    assert mounts["/dev"][1]["hostPath"]["path"] == "/dev"
    assert mounts["/k8s-rdma-shared-dev-plugin"][1]["configMap"]["name"] == "rdma-devices"
    assert "emptyDir" in mounts["/run/rdma-shared-dp"][1]


def test_image_is_set_through_kustomize_images() -> None:
    _, container = daemonset_container(render(K8S / "base"))
    assert container["image"] == "rdma-shared-dp:0.1.0"


def test_cdi_overlay_passes_the_flag() -> None:
    _, container = daemonset_container(render(K8S / "overlays" / "cdi"))
    assert parse_container(container).use_cdi is True


def test_kubelet_root_overlay_moves_only_what_follows_the_root_folder() -> None:
    base_pod, base_container = daemonset_container(render(K8S / "base"))
    pod, container = daemonset_container(render(K8S / "overlays" / "kubelet-root"))
    args = parse_container(container)
    # device-plugins does not follow --root-dir: the kubelet serves kubelet.sock there always.
    assert args.device_plugin_dir == "/var/lib/kubelet/device-plugins"
    assert args.plugins_registry_dir == "/data/kubelet/plugins_registry"
    _, volume = mount_holding(args.pod_resources_socket, pod, container)
    assert volume["hostPath"]["path"] == "/data/kubelet/pod-resources"
    base_args = parse_container(base_container)
    _, base_volume = mount_holding(base_args.pod_resources_socket, base_pod, base_container)
    assert base_volume["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"


# --- Node Feature Discovery ----------------------------------------------------------------------


def test_nfd_rule_sets_the_label_the_daemonset_selects() -> None:
    docs = render(K8S / "overlays" / "nfd")
    pod, _ = daemonset_container(docs)
    rule_obj = only(docs, "NodeFeatureRule")
    assert rule_obj["apiVersion"] == "nfd.k8s-sigs.io/v1alpha1"
    # Cluster-scoped: a namespace here would be a kustomize transformer's mistake.
    assert "namespace" not in rule_obj["metadata"]
    rules = rule_obj["spec"]["rules"]
    assert rules
    labels_set: dict[str, str] = {}
    modules: set[str] = set()
    for rule in rules:
        assert rule["name"]
        assert rule.get("labels"), "a rule that sets no label does nothing here"
        labels_set.update(rule["labels"])
        assert rule["matchFeatures"]
        for term in rule["matchFeatures"]:
            assert term["feature"]
            for name, expr in term["matchExpressions"].items():
                assert expr["op"] in {"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"}
                if term["feature"] == "kernel.loadedmodule":
                    modules.add(name)
    key = "feature.node.kubernetes.io/custom-rdma.available"
    assert labels_set[key] == "true"
    assert pod["nodeSelector"][key] == "true"
    assert {"ib_uverbs", "rdma_ucm"} <= modules


# --- examples ------------------------------------------------------------------------------------


def provided_resources() -> set[str]:
    config = json.loads(BASE_CONFIG.read_text())
    return {
        f"{entry.get('resourcePrefix', 'rdma')}/{entry['resourceName']}"
        for entry in config["configList"]
    }


def example_pods() -> list[tuple[Path, Doc]]:
    return [
        (path, doc)
        for path in example_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "Pod"
    ]


def test_examples_cover_the_issue() -> None:
    names = {str(p.relative_to(EXAMPLES)) for p in example_files()}
    assert "test-pod.yaml" in names
    for net in ("macvlan", "ipoib"):
        assert f"{net}/network-attachment-definition.yaml" in names
        assert f"{net}/rdma-app-pod.yaml" in names


@pytest.mark.parametrize(
    "path,pod",
    example_pods(),
    ids=lambda x: str(x.relative_to(EXAMPLES)) if isinstance(x, Path) else "",
)
def test_example_pods_request_a_shipped_resource_with_ipc_lock(path: Path, pod: Doc) -> None:
    provided = provided_resources()
    for container in pod["spec"]["containers"]:
        limits = container["resources"]["limits"]
        rdma = [r for r in limits if "/" in r]
        assert rdma, f"{path}: no RDMA resource requested"
        for resource in rdma:
            assert resource in provided, f"{path}: {resource} is not in the shipped config"
            assert str(limits[resource]) == "1"
        assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]


def test_test_pod_lists_dev_infiniband() -> None:
    pod = yaml.safe_load((EXAMPLES / "test-pod.yaml").read_text())
    assert "/dev/infiniband" in " ".join(pod["spec"]["containers"][0]["command"])


@pytest.mark.parametrize("net,cni_type", [("macvlan", "macvlan"), ("ipoib", "ipoib")])
def test_network_attachment_definitions(net: str, cni_type: str) -> None:
    folder = EXAMPLES / net
    nad = yaml.safe_load((folder / "network-attachment-definition.yaml").read_text())
    assert nad["apiVersion"] == "k8s.cni.cncf.io/v1"
    assert nad["kind"] == "NetworkAttachmentDefinition"
    config = json.loads(nad["spec"]["config"])
    for field in ("cniVersion", "name", "type", "master", "ipam"):
        assert field in config, field
    assert config["type"] == cni_type
    assert config["name"] == nad["metadata"]["name"]
    # The standalone CNI config beside it says the same.
    (conf_file,) = folder.glob("*.conf")
    assert json.loads(conf_file.read_text()) == config
    # The application pod attaches exactly this network.
    pod = yaml.safe_load((folder / "rdma-app-pod.yaml").read_text())
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == nad["metadata"]["name"]


def test_metrics_tls_overlay_wires_files_probes_and_servicemonitor() -> None:
    docs = render(K8S / "overlays" / "metrics-tls")
    pod, container = daemonset_container(docs)
    args = parse_container(container)
    for path in (
        args.metrics_tls_cert_file,
        args.metrics_tls_key_file,
        args.metrics_tls_client_ca_file,
    ):
        mount, volume = mount_holding(path, pod, container)
        assert mount.get("readOnly") is True
        assert volume["secret"]["secretName"] == "rdma-shared-dp-metrics-tls"
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    (endpoint,) = only(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    tls = endpoint["tlsConfig"]
    assert {tls["ca"]["secret"]["name"], tls["cert"]["secret"]["name"]} == {
        tls["keySecret"]["name"]
    }
    assert tls["serverName"] == "rdma-shared-dp-metrics.kube-system.svc"
    # Without the component nothing of it: plain HTTP, as the Go plugin's operators expect.
    _, plain = daemonset_container(render(K8S / "overlays" / "monitoring"))
    assert parse_container(plain).metrics_tls_cert_file == ""
    assert "scheme" not in plain["readinessProbe"]["httpGet"]
