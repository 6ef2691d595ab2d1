"""Drop-in through the channels operators use: the Network Operator's DaemonSet, and rollback to
the Go plugin from ours and back (test process).

The Network Operator's DaemonSet is rebuilt here from the facts in the reference notes (our own
copy of its shape, not its template file) and checked against our real parser, our Dockerfile's
image layout, and a real run with its arguments, no environment and no pod-resources socket.
Rollback is checked by rendering: every args list our manifests pass must be accepted by the Go
binary's flag set (emulated below from its known flags, with Go's `flag` package rules), and the
Go plugin's own DaemonSet must be accepted by ours.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from cli import parser as cli
from common.config import load_config_file
from simulator.kubelet import KubeletSimulator
from simulator.sysfs import SysfsTree, connectx_ib
from tests.conditions import hard_timeout, wait_until
from tests.static.test_deployment import (
    ALL_KUSTOMIZATIONS,
    K8S,
    KUSTOMIZATION_IDS,
    container_env,
    daemonset_container,
    mount_holding,
    mounts_by_path,
    parse_run_args,
    render,
)
from tests.static.test_dockerfile import DOCKERFILE, PYPROJECT, stages
from tests.supervisor_rig import HCAS, three_resources

REPO = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]

OPERATOR_COMMAND = "/bin/k8s-rdma-shared-dp"
INIT_SCRIPT = "until lsmod | grep mlx5_core; do echo waiting for mlx5_core; sleep 30; done"
#: The only selectors the Network Operator's admission webhook lets through.
OPERATOR_SELECTORS = {"vendors", "deviceIDs", "drivers", "ifNames", "linkTypes"}


# --- the Go binary's command line -----------------------------------------------------------------

GO_BOOL_FLAGS = {"version", "v", "use-cdi"}
GO_STRING_FLAGS = {"config-file", "kubelet-root-dir"}
GO_BOOLS = {"1", "0", "t", "f", "T", "F", "true", "false", "TRUE", "FALSE", "True", "False"}


def go_flags_accept(args: list[str]) -> str:
    """'' if the Go plugin's flag set parses `args` (Go's `flag` rules), else its complaint."""
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if len(arg) < 2 or arg[0] != "-":
            return ""  # the first non-flag ends parsing, as in Go
        if arg == "--":
            return ""
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            return f"bad flag syntax: {arg}"
        name, has_value, value = name.partition("=")
        if name in GO_BOOL_FLAGS:
            if has_value and value not in GO_BOOLS:
                return f"invalid boolean value {value!r} for -{name}"
        elif name in GO_STRING_FLAGS:
            if not has_value:
                if not rest:
                    return f"flag needs an argument: -{name}"
                rest.pop(0)
        else:
            return f"flag provided but not defined: -{name}"
    return ""


def test_go_flag_emulation_can_fail() -> None:
    assert go_flags_accept(["-config-file", "/x", "--use-cdi", "-kubelet-root-dir=/k", "-v"]) == ""
    assert "not defined" in go_flags_accept(["--device-plugin-dir=/x"])
    assert "not defined" in go_flags_accept(["--metrics-address", ":9478"])
    assert "boolean" in go_flags_accept(["-use-cdi=yes"])
    assert "argument" in go_flags_accept(["-config-file"])


# --- rollback: our manifests with the Go image ----------------------------------------------------


@pytest.mark.parametrize("folder", ALL_KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_every_manifest_passes_only_flags_the_go_binary_knows(folder: Path) -> None:
    _, container = daemonset_container(render(folder))
    assert go_flags_accept(container.get("args", [])) == "", container.get("args")
    # Everything else is environment, which the Go binary never reads; ours only by prefix.
    for name in container_env(container):
        assert name.startswith(cli.ENV_PREFIX), name


def test_the_base_would_crash_loop_the_go_binary_without_the_env_split() -> None:
    """What the base passed before: each of these flags ends the Go binary at start."""
    old = ["--device-plugin-dir=/var/lib/kubelet/device-plugins", "--metrics-address=:9478"]
    assert go_flags_accept(old) != ""


def test_go_rollback_overlay_runs_the_go_image_with_what_it_needs() -> None:
    pod, container = daemonset_container(render(K8S / "overlays" / "go-rollback"))
    assert "rdma-shared-dp" not in container["image"].split("/")[-1].split(":")[0]
    # Fully qualified: a bare name resolves to docker.io/library and fails to pull mid-incident.
    registry = container["image"].split("/")[0]
    assert "/" in container["image"] and ("." in registry or ":" in registry), container["image"]
    # The Go binary serves no HTTP: no probe may point at it.
    assert not {"startupProbe", "livenessProbe", "readinessProbe"} & set(container)
    assert go_flags_accept(container["args"]) == ""
    mounts = mounts_by_path(pod, container)
    for path in ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet/plugins_registry", "/dev"):
        assert mounts[path][1]["hostPath"]["path"] == path
    assert mounts["/k8s-rdma-shared-dev-plugin"][1]["configMap"]["name"] == "rdma-devices"
    # Same object and selector: applying it is an in-place rolling update, not a new DaemonSet.
    base_pod, base_container = daemonset_container(render(K8S / "base"))
    assert base_container["name"] == container["name"]
    assert {v["name"] for v in base_pod["volumes"]} == {v["name"] for v in pod["volumes"]}


# --- the other direction: the Go plugin's own DaemonSet with our image ---------------------------


def go_plugin_daemonset_container() -> tuple[Doc, Doc]:
    """The Go plugin's DaemonSet as its users run it (reference notes): no args at all."""
    volumes = [
        {"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}},
        {"name": "plugins-registry", "hostPath": {"path": "/var/lib/kubelet/plugins_registry"}},
        {"name": "config", "configMap": {"name": "rdma-devices"}},
        {"name": "devs", "hostPath": {"path": "/dev/"}},
    ]
    container = {
        "name": "k8s-rdma-shared-dp-ds",
        "image": "rdma-shared-dp:0.1.0",
        "securityContext": {"privileged": True},
        "volumeMounts": [
            {"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"},
            {"name": "plugins-registry", "mountPath": "/var/lib/kubelet/plugins_registry"},
            {"name": "config", "mountPath": "/k8s-rdma-shared-dev-plugin"},
            {"name": "devs", "mountPath": "/dev/"},
        ],
    }
    pod = {"hostNetwork": True, "containers": [container], "volumes": volumes}
    return pod, container


def test_the_go_plugins_own_daemonset_runs_our_image() -> None:
    pod, container = go_plugin_daemonset_container()
    args = parse_run_args(container.get("args", []), container_env(container))
    assert args.command == "run"
    assert mount_holding(args.config_file, pod, container)[1]["configMap"]["name"] == "rdma-devices"
    for folder in (args.device_plugin_dir, args.plugins_registry_dir):
        assert mounts_by_path(pod, container)[folder][1]["hostPath"]["path"] == folder


# --- the Network Operator's DaemonSet ------------------------------------------------------------


def operator_daemonset(cdi: bool, kubelet_root: str | None) -> Doc:
    """The DaemonSet the Network Operator renders around an image (facts from its template)."""
    root = kubelet_root or "/var/lib/kubelet"
    args = (["--use-cdi"] if cdi else []) + ([f"--kubelet-root-dir={root}"] if kubelet_root else [])
    volumes: list[Doc] = [
        {"name": "device-plugin", "hostPath": {"path": f"{root}/device-plugins"}},
        {"name": "plugins-registry", "hostPath": {"path": f"{root}/plugins_registry"}},
        {"name": "devs", "hostPath": {"path": "/dev/"}},
        {
            "name": "config",
            "configMap": {
                "name": "rdma-devices",
                "items": [{"key": "config.json", "path": "config.json"}],
            },
        },
    ]
    mounts: list[Doc] = [
        {"name": "device-plugin", "mountPath": f"{root}/device-plugins"},
        {"name": "plugins-registry", "mountPath": f"{root}/plugins_registry"},
        {"name": "devs", "mountPath": "/dev/"},
        {"name": "config", "mountPath": "/k8s-rdma-shared-dev-plugin"},
    ]
    if cdi:
        volumes += [
            {
                "name": "dynamic-cdi",
                "hostPath": {"path": "/var/run/cdi", "type": "DirectoryOrCreate"},
            },
            {"name": "host-config-volume", "hostPath": {"path": "/etc/pcidp"}},
        ]
        mounts += [
            {"name": "dynamic-cdi", "mountPath": "/var/run/cdi"},
            {"name": "host-config-volume", "mountPath": "/host/etc/pcidp/"},
        ]
    container: Doc = {
        "name": "rdma-shared-dp",
        "image": "rdma-shared-dp:0.1.0",
        "command": [OPERATOR_COMMAND],
        "args": args,
        "securityContext": {"privileged": True},
        "volumeMounts": mounts,
    }
    init: Doc = {
        "name": "install-mlx5-check",
        "image": "rdma-shared-dp:0.1.0",
        "command": ["sh", "-c", INIT_SCRIPT],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "rdma-shared-dp-ds", "namespace": "nvidia-network-operator"},
        "spec": {
            "selector": {"matchLabels": {"app": "rdma-shared-dp"}},
            "template": {
                "metadata": {"labels": {"app": "rdma-shared-dp"}},
                "spec": {
                    "hostNetwork": True,
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "initContainers": [init],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def final_stage_runs() -> list[str]:
    return [rest for word, rest in stages(DOCKERFILE.read_text())[-1] if word == "RUN"]


OPERATOR_CASES = [(False, None), (True, None), (False, "/data/kubelet"), (True, "/data/kubelet")]
OPERATOR_IDS = ["plain", "cdi", "kubelet-root", "cdi+kubelet-root"]


@pytest.mark.parametrize(("cdi", "root"), OPERATOR_CASES, ids=OPERATOR_IDS)
def test_network_operator_daemonset_resolves_against_parser_and_image(
    cdi: bool, root: str | None
) -> None:
    ds = operator_daemonset(cdi, root)
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    # command: the Go image's path exists in ours, as the console script (Dockerfile).
    (command,) = container["command"]
    script = "rdma-shared-dp"
    assert script in PYPROJECT["project"]["scripts"]
    assert any(
        re.search(rf"ln -s /opt/rdma-shared-dp/bin/{script} {re.escape(command)}\b", run)
        for run in final_stage_runs()
    ), f"the Dockerfile does not put {command} in the image"
    assert any(
        word == "COPY" and "/opt/rdma-shared-dp" in rest
        for word, rest in stages(DOCKERFILE.read_text())[-1]
    )

    # args: the real parser, with no environment at all (the operator sets none).
    assert "env" not in container
    args = parse_run_args(container["args"], {})
    assert args.command == "run"
    assert args.use_cdi is cdi
    kubelet = root or "/var/lib/kubelet"
    assert args.device_plugin_dir == f"{kubelet}/device-plugins"
    assert args.plugins_registry_dir == f"{kubelet}/plugins_registry"

    # Every path the plugin uses resolves to a mount, at the host's own path.
    mounts = mounts_by_path(pod, container)
    assert mount_holding(args.config_file, pod, container)[1]["configMap"]["name"] == "rdma-devices"
    for folder in (args.device_plugin_dir, args.plugins_registry_dir):
        assert mounts[folder][1]["hostPath"]["path"] == folder
    assert args.host_root == "/"  # privileged: the host's /sys, and /dev is mounted
    assert mount_holding("/dev/infiniband/uverbs0", pod, container)[1]["hostPath"]["path"] in (
        "/dev",
        "/dev/",
    )
    if cdi:
        assert mounts[args.cdi_dir][1]["hostPath"]["path"] == args.cdi_dir
    # No pod-resources socket: the plugin must run without (test below) and with no probes.
    with pytest.raises(AssertionError, match="not inside any volume mount"):
        mount_holding(args.pod_resources_socket, pod, container)
    assert not {"startupProbe", "livenessProbe", "readinessProbe"} & set(container)
    # The runtime folder lives in the container's own (writable) filesystem there.
    assert not container["securityContext"].get("readOnlyRootFilesystem", False)

    # The init container's script needs sh, lsmod and grep in the image: the Dockerfile checks.
    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["sh", "-c"]
    check = "command -v sh && command -v grep && command -v lsmod"
    assert any(check in run for run in final_stage_runs())
    subprocess.run(["sh", "-n", "-c", init["command"][2]], check=True)


def test_operator_webhook_selectors_cover_the_shipped_config() -> None:
    """The shipped example stays within what the operator's webhook admits."""
    config = json.loads((K8S / "base" / "config.json").read_text())
    for entry in config["configList"]:
        assert set(entry.get("selectors", {})) <= OPERATOR_SELECTORS, entry
    load_config_file(str(K8S / "base" / "config.json"))


def test_the_operator_shape_really_runs_with_no_env_and_no_pod_resources_socket() -> None:
    """A real run with the operator's args (kubelet root and CDI), an empty environment, no
    probes and no pod-resources socket. Only what a test needs to stay off the real host is
    added: a simulated sysfs, the config path, the runtime, CDI and metrics locations."""
    root = Path(tempfile.mkdtemp(prefix="op-", dir="/tmp"))
    node = root / "node"
    tree = SysfsTree(node)
    for address, rdma, netdev, numa in HCAS:
        tree.add(connectx_ib(address, rdma=rdma, netdev=netdev, numa_node=numa))
    config = root / "config.json"
    config.write_text(json.dumps(three_resources()))
    kubelet = KubeletSimulator(root / "device-plugins", root / "plugins_registry")
    kubelet.start()
    log = root / "plugin.log"
    argv = [
        sys.executable,
        "-m",
        "supervisor",
        "--use-cdi",
        f"--kubelet-root-dir={root}",
        # not the operator's; keeps the test off the host:
        f"--config-file={config}",
        f"--host-root={node}",
        f"--runtime-dir={root}/run",
        f"--cdi-dir={root}/cdi",
        "--metrics-address=127.0.0.1:0",
        "--uevent-source=off",
    ]
    proc: subprocess.Popen[bytes] | None = None
    try:
        with hard_timeout(90), log.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, stdout=out, stderr=out
            )
            for name in ("a", "b", "c"):
                kubelet.wait_for_registration(f"example.com/{name}", timeout=30)

            def pod_resources_lines() -> list[str]:
                # Its availability, not the lifecycle's started/stopped lines.
                return [
                    x
                    for x in log.read_text().splitlines()
                    if "PodResources" in x and "supervisor.children" not in x
                ]

            lines = wait_until(pod_resources_lines, 20, what="the PodResources log line")
            assert len(lines) == 1, lines
            assert "not available" in lines[0] and f"{root}/pod-resources/kubelet.sock" in lines[0]
            assert len(list((root / "cdi").iterdir())) == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            text = log.read_text()
            assert len(pod_resources_lines()) == 1, text
            assert "Traceback" not in text, text
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        kubelet.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_unknown_flag_from_a_future_operator_is_refused_clearly() -> None:
    """A flag we do not know ends the run with a usage error naming it (no silent ignore)."""
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "--resource-prefix=x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert proc.returncode == 2
    assert "--resource-prefix" in proc.stderr
