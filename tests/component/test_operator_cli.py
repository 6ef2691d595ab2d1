"""The operator's first hour (issue 13): warnings, exit codes, fix-naming messages, `--help`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cli.parser import ENV_PREFIX, build_parser
from common import exitcodes

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)},
    )


def _write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


WARNED = {
    "configList": [
        {"resourceName": "a", "devices": ["ib0"], "rdmaHcaMax": 3},
        {"resourceName": "b", "selectors": {"vendors": ["15b3"]}},
    ]
}


def test_validate_config_prints_every_warning(tmp_path: Path) -> None:
    out = _cli("validate-config", str(_write(tmp_path, "c.json", WARNED)))
    assert out.returncode == exitcodes.OK, out.stderr
    assert "2 warning(s)" in out.stdout
    assert "configList[0].devices: is deprecated" in out.stderr
    assert "configList[1].rdmaHcaMax: not set" in out.stderr


def test_validate_config_strict_fails_on_warnings_only(tmp_path: Path) -> None:
    out = _cli("validate-config", "--strict", str(_write(tmp_path, "c.json", WARNED)))
    assert out.returncode == exitcodes.CONFIG_WARNINGS == 6
    assert "refused under --strict" in out.stderr
    clean = {
        "configList": [{"resourceName": "a", "rdmaHcaMax": 1, "selectors": {"vendors": ["15b3"]}}]
    }
    out = _cli("validate-config", "--strict", str(_write(tmp_path, "ok.json", clean)))
    assert out.returncode == exitcodes.OK and "warning" not in out.stdout + out.stderr


def test_status_without_a_supervisor_exits_no_supervisor(tmp_path: Path) -> None:
    out = _cli("status", "--runtime-dir", str(tmp_path))
    assert out.returncode == exitcodes.NO_SUPERVISOR == 7
    assert "no supervisor control socket" in out.stderr


def test_a_pci_address_in_devices_suggests_pci_addresses(tmp_path: Path) -> None:
    config = {"configList": [{"resourceName": "a", "rdmaHcaMax": 1, "devices": ["0000:3b:00.0"]}]}
    out = _cli("validate-config", str(_write(tmp_path, "c.json", config)))
    assert out.returncode == exitcodes.CONFIG_INVALID
    assert "is a PCI address" in out.stderr and '"pciAddresses": ["0000:3b:00.0"]' in out.stderr


def test_a_whole_configmap_says_to_extract_config_json(tmp_path: Path) -> None:
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rdma-devices\ndata:\n"
        '  config.json: |\n    {"configList": []}\n'
    )
    out = _cli("validate-config", str(_write(tmp_path, "cm.yaml", manifest)))
    assert out.returncode == exitcodes.CONFIG_INVALID
    assert "whole ConfigMap" in out.stderr and 'data["config.json"]' in out.stderr
    assert "jsonpath='{.data.config\\.json}'" in out.stderr


def _run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["run"]
    return parser


def test_run_help_documents_every_flag_default_and_variable() -> None:
    actions = [a for a in _run_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(actions) >= 12
    for action in actions:
        text = action.help or ""
        variable = ENV_PREFIX + action.dest.upper()
        assert "default: " in text and f"env {variable}" in text, (action.dest, text)
    out = _cli("run", "--help")
    assert out.returncode == 0
    assert "RDMA_SHARED_DP_METRICS_ADDRESS" in out.stdout.replace("\n", " ")


# ---- discover: why, health, GID tables, netns mode (items 2 and 3) ----------------------------


def _demo_node(tmp_path: Path) -> Path:
    from simulator.sysfs import build_demo_node

    root = tmp_path / "node"
    build_demo_node(root)
    return root


def _discover(
    root: Path, config: Path | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    return _cli("discover", "--host-root", str(root), "--config-file", str(config or ""), *extra)


def test_discover_says_what_is_missing_and_what_loads_it(tmp_path: Path) -> None:
    root = _demo_node(tmp_path)
    (root / "dev/infiniband/rdma_cm").unlink()
    (root / "dev/infiniband/umad0").unlink()
    report = json.loads(_discover(root, None, "--json").stdout)
    assert report["config_file"] is None
    [res] = report["resources"]
    assert res["rdma_hca_max"] is None  # the catch-all advertises nothing: no misleading 0
    by_name = {d["name"]: d for d in res["selected"]}
    first = by_name["0000:1a:00.0"]
    assert first["health"] == "unusable"
    assert "/dev/infiniband/rdma_cm is missing: load rdma_ucm" in first["why"]
    assert any("umad0" in w and "/dev" in w for w in first["why"])
    text = _discover(root).stdout
    assert "HEALTH" in text.splitlines()[1] and "unusable" in text
    assert "(rdmaHcaMax" not in text.splitlines()[0]
    assert "0000:1a:00.0 (ib0): /dev/infiniband/rdma_cm is missing: load rdma_ucm" in text


def test_discover_reports_a_down_port_and_the_driver_hint_only_for_rdma_nics(
    tmp_path: Path,
) -> None:
    from simulator.sysfs import SysfsTree

    root = _demo_node(tmp_path)
    SysfsTree(root).set_port_state("mlx5_1", 1, "DOWN")
    report = json.loads(_discover(root, None, "--json").stdout)
    [res] = report["resources"]
    down = next(d for d in res["selected"] if d["name"] == "0000:3c:00.0")
    assert down["health"] == "unhealthy" and down["why"] == ["mlx5_1 port 1 is DOWN"]
    [igb] = [r for r in res["rejected"] if r["device"]["driver"] == "igb"]
    assert "modprobe" not in igb["detail"] and "most likely cannot do RDMA" in igb["detail"]
    # An mlx5 function whose RDMA half is missing gets the module to load.
    from common.config import Selectors
    from common.devices import Candidate
    from common.selectors import first_rejection

    bare = Candidate("0000:01:00.0", "0000:01:00.0", "15b3", "1017", "mlx5_core", 0)
    assert first_rejection(Selectors(), bare) == (
        "no RDMA device",
        "is its RDMA driver loaded? (modprobe mlx5_ib)",
    )


def test_discover_shows_gid_tables_and_warns_over_capacity(tmp_path: Path) -> None:
    from cli.discover_report import gid_capacity

    assert gid_capacity(128) == 63  # NVIDIA's network operator's figure
    assert gid_capacity(255) == 126 and gid_capacity(32) == 15 and gid_capacity(1) == 0
    root = _demo_node(tmp_path)
    config = {
        "configList": [
            {
                "resourceName": "roce",
                "rdmaHcaMax": 200,
                "selectors": {"vendors": ["15b3"], "linkTypes": ["ether"]},
            },
            {"resourceName": "ib", "rdmaHcaMax": 200, "selectors": {"linkTypes": ["infiniband"]}},
        ]
    }
    path = _write(tmp_path, "c.json", config)
    report = json.loads(_discover(root, path, "--json").stdout)
    roce, ib = report["resources"]
    assert roce["gid_capacity"] == 126 and ib["gid_capacity"] is None
    assert roce["selected"][0]["ports"][0]["gid_table_size"] == 255
    assert len(roce["warnings"]) == 1 and "exceeds the 126 pods" in roce["warnings"][0]
    assert ib["warnings"] == []
    text = _discover(root, path).stdout
    assert "RoCE GID tables carry 126 pods" in text and "warning: rdmaHcaMax 200 exceeds" in text


def test_discover_shows_the_rdma_netns_mode(tmp_path: Path) -> None:
    from simulator.sysfs import SysfsTree

    root = _demo_node(tmp_path)
    assert json.loads(_discover(root, None, "--json").stdout)["rdma_netns_mode"] == "shared"
    SysfsTree(root).set_netns_mode(shared=False)
    out = _discover(root)
    assert out.returncode == 0
    assert "RDMA netns mode: exclusive" in out.stdout
    assert "rdma system set netns shared" in out.stdout
    (root / "sys/module/ib_core/parameters/netns_mode").unlink()
    assert json.loads(_discover(root, None, "--json").stdout)["rdma_netns_mode"] == "unknown"


# ---- status: reloads, crash loops, netns mode (items 3 and 5) ---------------------------------


def test_status_marks_crash_looping_workers_and_shows_the_last_reload() -> None:
    from cli.status_client import render_text
    from common.config import ResourceConfig, Selectors
    from common.messages import ReloadStatus, Status
    from supervisor.worker_table import WorkerState, WorkerTable

    table = WorkerTable()
    record = table.add(ResourceConfig("a", "rdma", 4, Selectors(vendors=("15b3",))))
    record.state, record.reason, record.failures = WorkerState.BACKOFF, "crashed (exit 5)", 7
    [row] = table.statuses(lambda name: ())
    assert row.crash_looping and row.failures == 7
    record.state = WorkerState.RUNNING  # running again: not looping now, whatever the count
    assert not table.statuses(lambda name: ())[0].crash_looping
    record.state = WorkerState.BACKOFF
    status = Status(
        pid=1,
        started=1e9,
        config_file="/c.json",
        config_loaded=1e9,
        grpc_loaded=False,
        workers=table.statuses(lambda name: ()),
        last_reload=ReloadStatus(1e9 + 60, False, 2, "configList[0].rdmaHcaMax: must be >= 0"),
        rdma_netns_mode="exclusive",
    )
    text = render_text(status)
    assert "last reload: 2001-09-09T01:47:40Z refused (2 problem(s))" in text
    assert "first: configList[0].rdmaHcaMax: must be >= 0" in text
    assert "RDMA netns mode: exclusive" in text and "warning: the RDMA subsystem" in text
    assert "crash-looping:\n  rdma/a: 7 quick failures in a row; retried slowly" in text


def test_discover_names_a_down_netdev_beside_a_down_port(tmp_path: Path) -> None:
    from simulator.sysfs import SysfsTree

    root = _demo_node(tmp_path)
    tree = SysfsTree(root)
    tree.set_port_state("mlx5_5", 1, "DOWN")
    tree.set_operstate("ens1f1np1", "down")
    report = json.loads(_discover(root, None, "--json").stdout)
    [res] = report["resources"]
    dev = next(d for d in res["selected"] if d["name"] == "0000:b1:00.1")
    assert dev["why"] == ["mlx5_5 port 1 is DOWN", "netdev ens1f1np1 is down (operstate)"]
