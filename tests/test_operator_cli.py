"""The operator's first hour (issue 13): warnings, exit codes, fix-naming messages, `--help`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import exitcodes
from supervisor.cli.parser import ENV_PREFIX, build_parser

REPO = Path(__file__).resolve().parent.parent


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
    return sub.choices["run"]


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
