"""The CLI's subcommands other than parsing (runs in the CLI / supervisor process)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from common import exitcodes
from common.config import Config, ConfigError, load_config_file
from common.logs import setup_logging


def _print_config_errors(err: ConfigError, path: str) -> None:
    print(f"{path}: config refused ({len(err.problems)} problem(s)):", file=sys.stderr)
    for problem in err.problems:
        print(f"  - {problem}", file=sys.stderr)


def validate_config(path: str) -> int:
    try:
        config = load_config_file(path)
    except ConfigError as err:
        _print_config_errors(err, path)
        return exitcodes.CONFIG_INVALID
    names = ", ".join(r.full_name for r in config.resources)
    print(f"{path}: ok ({len(config.resources)} resource(s): {names})")
    return exitcodes.OK


def discover(args: argparse.Namespace) -> int:
    from common.discovery import scan
    from supervisor.cli import DEFAULT_CONFIG_FILE
    from supervisor.discover_report import build_report, render_text

    setup_logging(args.log_level, args.log_format)
    config_file: str | None = args.config_file
    if config_file is None and os.path.exists(DEFAULT_CONFIG_FILE):
        config_file = DEFAULT_CONFIG_FILE
    config: Config | None = None
    if config_file:  # "" asks for no config: every candidate under one catch-all resource
        try:
            config = load_config_file(config_file)
        except ConfigError as err:
            _print_config_errors(err, config_file)
            return exitcodes.CONFIG_INVALID
    report = build_report(config, scan(args.host_root), args.host_root, config_file)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report), end="")
    return exitcodes.OK


def demo(args: argparse.Namespace) -> int:
    """Build the simulated node and show what the plugin sees on it.

    The supervisor (`run`) is not built yet; until it is, the demo stops at discovery.
    """
    from simulator.demo_config import demo_config
    from simulator.sysfs import build_demo_node

    workdir = args.workdir or tempfile.mkdtemp(prefix="rdma-shared-dp-demo-")
    build_demo_node(workdir)
    config_path = os.path.join(workdir, "config.json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(demo_config(), f, indent=2)
    print(f"simulated node written to {workdir} (config {config_path})\n")
    ns = argparse.Namespace(
        config_file=config_path,
        host_root=workdir,
        json=False,
        log_level="warning",
        log_format="text",
    )
    return discover(ns)


def status(args: argparse.Namespace) -> int:
    print("status: the supervisor is not built yet (issue 4)", file=sys.stderr)
    return exitcodes.USAGE


def run(args: argparse.Namespace) -> int:
    print("run: the supervisor is not built yet (issue 4)", file=sys.stderr)
    return exitcodes.USAGE
