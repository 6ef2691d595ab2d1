"""The command line: the real console script on real files, including the captured sysfs tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.parser import DEFAULT_CONFIG_FILE, _normalise_argv, build_parser, parse_args
from tests.unit.test_discovery_real import FIXTURE, materialise

EXAMPLE = {
    "periodicUpdateInterval": 300,
    "configList": [
        {
            "resourceName": "hca_shared_devices_a",
            "resourcePrefix": "example.com",
            "rdmaHcaMax": 1000,
            "devices": ["ib0", "ib1"],
        },
        {
            "resourceName": "hca_shared_devices_b",
            "rdmaHcaMax": 500,
            "selectors": {"vendors": ["15b3"], "deviceIDs": ["1017"], "ifNames": ["ib3", "ib4"]},
        },
    ],
}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def stampede(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    materialise(FIXTURE, root)
    (root / "dev/infiniband").mkdir(parents=True)
    for node in ("uverbs0", "umad0", "issm0", "rdma_cm"):
        (root / "dev/infiniband" / node).touch()
    return root


def test_discover_json_on_the_captured_host(stampede: Path) -> None:
    out = _cli("discover", "--host-root", str(stampede), "--json", "--config-file", "")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    [resource] = report["resources"]
    [hca] = resource["selected"]
    assert hca["name"] == "0000:82:00.0"
    assert (hca["netdev"], hca["link_type"], hca["numa_node"]) == ("ib0", "infiniband", 1)
    assert hca["rdma_devices"] == ["mlx4_0"]
    assert hca["char_devices"] == [
        "/dev/infiniband/uverbs0",
        "/dev/infiniband/umad0",
        "/dev/infiniband/issm0",
    ]
    assert hca["usable"] and hca["healthy"]
    [rejected] = resource["rejected"]
    assert rejected["device"]["name"] == "0000:02:00.0"
    assert rejected["device"]["netdev"] == "eth0"
    assert rejected["reason"] == "no RDMA device"


def test_discover_with_config_names_the_rejecting_selector(stampede: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(EXAMPLE))
    out = _cli("discover", "--host-root", str(stampede), "--config-file", str(cfg))
    assert out.returncode == 0, out.stderr
    # resource a wants ib0/ib1: mlx4_0 (ib0) matches; resource b wants device 1017: rejected.
    a, b = out.stdout.split("resource example.com/", 1)[1].split("resource rdma/", 1)
    assert "0000:82:00.0" in a and "1 device selected, 1 usable" in a
    assert "0000:82:00.0 (ib0): deviceIDs: 1003 not in [1017]" in b


def test_discover_refuses_a_bad_config(stampede: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"configList": [{"resourceName": "a", "rdmaHcMax": 5, "selectors": {}}]}')
    out = _cli("discover", "--host-root", str(stampede), "--config-file", str(cfg))
    assert out.returncode == 3
    assert "rdmaHcaMax" in out.stderr


def test_validate_config_ok_and_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(EXAMPLE))
    out = _cli("validate-config", str(good))
    assert out.returncode == 0, out.stderr
    assert "example.com/hca_shared_devices_a" in out.stdout

    bad = json.loads(json.dumps(EXAMPLE))
    bad["configList"][0]["resourcePrefix"] = "example_prefix"
    bad["configList"][1]["rdmaHcaMax"] = -1
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    out = _cli("validate-config", str(bad_file))
    assert out.returncode == 3
    assert "configList[0].resourcePrefix" in out.stderr
    assert "configList[1].rdmaHcaMax" in out.stderr


def _many(count: int) -> dict[str, object]:
    entry = {"rdmaHcaMax": 1, "selectors": {"vendors": ["15b3"]}}
    return {"configList": [{"resourceName": f"r{i}", **entry} for i in range(count)]}


def test_validate_config_warns_when_the_resources_would_not_fit_the_memory_limit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "many.json"
    path.write_text(json.dumps(_many(30)))
    out = _cli("validate-config", str(path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()  # one name per line, not one long line
    assert lines[0] == f"{path}: ok (30 resource(s)), 1 warning(s):"
    assert lines[1:] == [f"  - rdma/r{i}" for i in range(30)]
    assert "30 resources need about 630 MiB" in out.stderr
    assert "container memory limit of 512 MiB, which fits 23" in out.stderr
    assert _cli("validate-config", "--strict", str(path)).returncode == 6
    roomy = _cli("validate-config", "--strict", "--memory-limit-mib", "1024", str(path))
    assert roomy.returncode == 0 and "warning" not in roomy.stderr, roomy.stderr
    path.write_text(json.dumps(_many(23)))  # exactly what fits
    assert _cli("validate-config", "--strict", str(path)).returncode == 0


def test_validate_config_refuses_an_absurd_resource_count_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(_many(10_000)))
    out = _cli("validate-config", str(path))
    assert out.returncode == 3
    assert "has 10000 resources; at most 256 are accepted" in out.stderr
    assert "would need about 190060 MiB" in out.stderr
    assert len(out.stderr.splitlines()) == 2  # the count alone, not 10 000 entry problems
    path.write_text(json.dumps(_many(256)))
    assert _cli("validate-config", str(path)).returncode == 0


def test_validate_config_missing_file(tmp_path: Path) -> None:
    out = _cli("validate-config", str(tmp_path / "nope.json"))
    assert out.returncode == 3
    assert "nope.json" in out.stderr


def test_version_in_go_and_gnu_spelling() -> None:
    for flag in ("version", "-version", "--version"):
        out = _cli(flag)
        assert out.returncode == 0 and out.stdout.startswith("rdma-shared-dp "), flag


def test_run_is_the_default_and_go_single_dash_flags_work() -> None:
    args = build_parser().parse_args(
        _normalise_argv(["-config-file", "/etc/x.json", "-use-cdi", "--cdi-dir", "/cdi"])
    )
    assert args.command == "run"
    assert (args.config_file, args.use_cdi, args.cdi_dir) == ("/etc/x.json", True, "/cdi")
    defaults = build_parser().parse_args(_normalise_argv([]))
    assert defaults.config_file == DEFAULT_CONFIG_FILE
    assert defaults.metrics_address == ":9478"
    assert defaults.registration_mode == "auto"


def test_run_flags_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDMA_SHARED_DP_USE_CDI", "true")
    monkeypatch.setenv("RDMA_SHARED_DP_HOST_ROOT", "/host")
    monkeypatch.setenv("RDMA_SHARED_DP_METRICS_ADDRESS", "")
    args = build_parser().parse_args(["run"])
    assert (args.use_cdi, args.host_root, args.metrics_address) == (True, "/host", "")
    assert build_parser().parse_args(["run", "--host-root", "/flag"]).host_root == "/flag"


def test_unknown_flag_is_a_usage_error() -> None:
    out = _cli("run", "--no-such-flag")
    assert out.returncode == 2
    assert "--no-such-flag" in out.stderr


def test_discover_without_a_pci_bus_is_an_error(tmp_path: Path) -> None:
    out = _cli("discover", "--host-root", str(tmp_path), "--config-file", "")
    assert out.returncode == 5
    assert "no PCI bus" in out.stderr


def test_discover_table_lists_subfunctions_under_their_parent(tmp_path: Path) -> None:
    from simulator.sysfs import build_demo_node

    build_demo_node(tmp_path)
    out = _cli("discover", "--host-root", str(tmp_path), "--config-file", "")
    assert out.returncode == 0, out.stderr
    assert "0000:b1:00.0/mlx5_core.sf.2" in out.stdout
    assert out.stdout.splitlines()[1].split()[:2] == ["PCI", "ADDRESS"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--kubelet-root-dir", "/data/kubelet"],
        ["-kubelet-root-dir", "/data/kubelet"],
        ["--kubelet-root-dir=/data/kubelet/"],
        ["-kubelet-root-dir=/data/kubelet"],
        ["run", "--kubelet-root-dir", "/data/kubelet"],
    ],
)
def test_kubelet_root_dir_moves_the_three_kubelet_paths(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DEVICE_PLUGIN_DIR", "PLUGINS_REGISTRY_DIR", "POD_RESOURCES_SOCKET"):
        monkeypatch.delenv(f"RDMA_SHARED_DP_{name}", raising=False)
    args = parse_args(argv)
    assert args.device_plugin_dir == "/data/kubelet/device-plugins"
    assert args.plugins_registry_dir == "/data/kubelet/plugins_registry"
    assert args.pod_resources_socket == "/data/kubelet/pod-resources/kubelet.sock"


def test_explicit_kubelet_paths_win_over_the_root_by_flag_or_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RDMA_SHARED_DP_PLUGINS_REGISTRY_DIR", "/env/registry")
    monkeypatch.setenv("RDMA_SHARED_DP_POD_RESOURCES_SOCKET", "")  # explicit: series off
    monkeypatch.delenv("RDMA_SHARED_DP_DEVICE_PLUGIN_DIR", raising=False)
    args = parse_args(["--kubelet-root-dir=/k", "--device-plugin-dir", "/flag/dp"])
    assert args.device_plugin_dir == "/flag/dp"
    assert args.plugins_registry_dir == "/env/registry"
    assert args.pod_resources_socket == ""
    monkeypatch.delenv("RDMA_SHARED_DP_PLUGINS_REGISTRY_DIR")
    monkeypatch.delenv("RDMA_SHARED_DP_POD_RESOURCES_SOCKET")
    defaults = parse_args([])
    assert defaults.device_plugin_dir == "/var/lib/kubelet/device-plugins"
    assert defaults.plugins_registry_dir == "/var/lib/kubelet/plugins_registry"
    assert defaults.pod_resources_socket == "/var/lib/kubelet/pod-resources/kubelet.sock"


@pytest.mark.parametrize("flag", ["-v", "-version", "--version"])
def test_go_version_flags_anywhere(flag: str) -> None:
    assert parse_args(["--use-cdi", flag]).command == "version"
    out = _cli(flag)
    assert out.returncode == 0 and out.stdout.strip() == "rdma-shared-dp 0.1.0"


def test_discover_in_cdi_mode_says_what_the_runtime_must_support(stampede: Path) -> None:
    text = _cli("discover", "--host-root", str(stampede), "--config-file", "", "--use-cdi")
    assert text.returncode == 0, text.stderr
    assert "containerd >= 1.7" in text.stdout and "CRI-O >= 1.23" in text.stdout
    report = json.loads(
        _cli(
            "discover",
            "--host-root",
            str(stampede),
            "--config-file",
            "",
            "--json",
            env={"RDMA_SHARED_DP_USE_CDI": "true"},
        ).stdout
    )
    assert report["cdi"]["enabled"] is True
    assert "containerd 1.6" in report["cdi"]["runtime_requirement"]
    plain = _cli("discover", "--host-root", str(stampede), "--config-file", "")
    assert "containerd" not in plain.stdout
