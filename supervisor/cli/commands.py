"""The CLI's subcommands other than parsing (runs in the CLI / supervisor process)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from common import exitcodes
from common.config import Config, ConfigError, load_config_bytes, load_config_file
from common.logs import setup_logging

if TYPE_CHECKING:
    from supervisor.observer import Observer


def _print_config_errors(err: ConfigError, path: str) -> None:
    print(f"{path}: config refused ({len(err.problems)} problem(s)):", file=sys.stderr)
    for problem in err.problems:
        print(f"  - {problem}", file=sys.stderr)


def validate_config(path: str, strict: bool = False) -> int:
    """Exit 0 for a good config (warnings printed too), 3 when refused, 6 with `--strict` when
    the only problems are warnings."""
    try:
        config = load_config_file(path)
    except ConfigError as err:
        _print_config_errors(err, path)
        return exitcodes.CONFIG_INVALID
    names = ", ".join(r.full_name for r in config.resources)
    warned = f", {len(config.warnings)} warning(s)" if config.warnings else ""
    print(f"{path}: ok ({len(config.resources)} resource(s): {names}){warned}")
    sys.stdout.flush()  # the ok line first, then the warnings, also when both go to one pipe
    for warning in config.warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    if strict and config.warnings:
        print(f"{path}: refused under --strict: fix the warning(s) above", file=sys.stderr)
        return exitcodes.CONFIG_WARNINGS
    return exitcodes.OK


def discover(args: argparse.Namespace) -> int:
    from common.defaults import DEFAULT_CONFIG_FILE
    from common.discovery import scan
    from supervisor.cli.discover_report import build_report, render_text

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
    result = scan(args.host_root)
    if any(p.reason == "no_pci_bus" for p in result.problems):
        print(
            f"discover: no PCI bus under {args.host_root}/sys (is --host-root a host's root, "
            "with /sys mounted?)",
            file=sys.stderr,
        )
        return exitcodes.FATAL
    report = build_report(config, result, args.host_root, config_file)
    if getattr(args, "use_cdi", False):
        from supervisor.cdi_runtime import CDI_RUNTIME_REQUIREMENT

        report["cdi"] = {"enabled": True, "runtime_requirement": CDI_RUNTIME_REQUIREMENT}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report), end="")
    return exitcodes.OK


def demo(args: argparse.Namespace) -> int:
    """Run the real plugin on a simulated node, narrated (`simulator.demo`).

    The kubelet simulator speaks gRPC, and this process must stay free of it, so this process
    becomes a fresh interpreter running the demo (exec: same pid, so `kill <pid>` and Ctrl-C
    reach the demo itself, which stops everything it started). The demo starts
    `rdma-shared-dp run` as its own subprocess.
    """
    command = [sys.executable, "-m", "simulator.demo"]
    if args.workdir:
        command += ["--workdir", args.workdir]
    if getattr(args, "keep_running", False):
        command.append("--keep-running")
    if getattr(args, "json", False):
        command.append("--json")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def status(args: argparse.Namespace) -> int:
    from supervisor.cli.status_client import StatusError, fetch_status, render_json, render_text

    try:
        answer = fetch_status(args.runtime_dir)
    except StatusError as err:
        print(f"status: {err}", file=sys.stderr)
        return exitcodes.NO_SUPERVISOR
    print(render_json(answer) if args.json else render_text(answer), end="")
    return exitcodes.OK


def run(args: argparse.Namespace) -> int:
    """Load and check the config, then run the supervisor loop until SIGTERM/SIGINT."""
    # The workers' fork server imports grpc meanwhile (issue 14); the arbiter takes it over.
    from supervisor import zygote_client

    zygote_client.start_early(args.runtime_dir, args.log_level, args.log_format)
    try:
        return _run(args)
    finally:
        zygote_client.uninstall()


def _run(args: argparse.Namespace) -> int:
    from supervisor.arbiter import Arbiter, Options
    from supervisor.timings import Timings

    setup_logging(args.log_level, args.log_format, process="supervisor")
    try:
        with open(args.config_file, "rb") as f:
            data = f.read()
        config = load_config_bytes(data, args.config_file)
    except OSError:
        data = b""
        try:
            config = load_config_file(args.config_file)  # the loader words the OS error well
        except ConfigError as err:
            _print_config_errors(err, args.config_file)
            return exitcodes.CONFIG_INVALID
    except ConfigError as err:
        _print_config_errors(err, args.config_file)
        return exitcodes.CONFIG_INVALID
    options = Options(
        config_file=args.config_file,
        host_root=args.host_root,
        runtime_dir=args.runtime_dir,
        device_plugin_dir=args.device_plugin_dir,
        plugins_registry_dir=args.plugins_registry_dir,
        registration_mode=args.registration_mode,
        use_cdi=args.use_cdi,
        cdi_dir=args.cdi_dir,
        log_level=args.log_level,
        log_format=args.log_format,
        uevent_source=args.uevent_source,
    )
    try:
        observer = _observer(args)
    except ValueError as err:  # --metrics-address does not parse: say so before starting
        print(f"--metrics-address: {err}", file=sys.stderr)
        return exitcodes.USAGE
    except OSError as err:  # ... or cannot be bound (busy port, no such address here)
        print(f"--metrics-address: {err}", file=sys.stderr)
        return exitcodes.FATAL
    try:
        timings = Timings.from_env(os.environ)  # production timings unless a test asks
        return Arbiter(options, config, data, observer=observer, timings=timings).run()
    finally:
        if observer is not None:
            observer.stopped()  # idempotent; covers a loop that never started


def _observer(args: argparse.Namespace) -> Observer | None:
    """The metrics hook (issue 5): the HTTP endpoint and the PodResources poller, or None when
    `--metrics-address` is empty (then neither prometheus_client nor psutil is loaded)."""
    if not args.metrics_address.strip():
        return None
    from supervisor.metrics.observer import start_metrics_observer

    interval = getattr(args, "pod_resources_interval", 10.0)
    return start_metrics_observer(
        args.metrics_address,
        args.pod_resources_socket,
        interval,
        host_root=getattr(args, "host_root", "/"),
        device_plugin_dir=getattr(args, "device_plugin_dir", ""),
    )
