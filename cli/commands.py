"""The CLI's subcommands other than parsing (runs in the CLI / supervisor process)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from common import dra_modes, exitcodes
from common.config import Config, ConfigError, load_config_bytes, load_config_file
from common.config.sizing import DEFAULT_MEMORY_LIMIT_MIB, memory_warning
from common.dra_modes import ModeError
from common.logs import setup_logging

if TYPE_CHECKING:
    from supervisor.arbiter import Options
    from supervisor.dra_child import DraObserver
    from supervisor.metrics.tls import TlsContext
    from supervisor.observer import Observer
    from supervisor.timings import Timings


def _print_config_errors(err: ConfigError, path: str) -> None:
    print(f"{path}: config refused ({len(err.problems)} problem(s)):", file=sys.stderr)
    for problem in err.problems:
        print(f"  - {problem}", file=sys.stderr)


#: Up to this many resource names go on the `ok` line; more are listed one per line below it.
INLINE_NAMES = 8


def validate_config(
    path: str, strict: bool = False, memory_limit_mib: int = DEFAULT_MEMORY_LIMIT_MIB
) -> int:
    """Exit 0 for a good config (warnings printed too), 3 when refused, 6 with `--strict` when
    the only problems are warnings. Warns when the resources would not fit `memory_limit_mib`."""
    try:
        config = load_config_file(path)
    except ConfigError as err:
        _print_config_errors(err, path)
        return exitcodes.CONFIG_INVALID
    warnings = [str(w) for w in config.warnings]
    memory = memory_warning(len(config.resources), memory_limit_mib)
    if memory is not None:
        warnings.append(f"configList: {memory}")
    names = [r.full_name for r in config.resources]
    warned = f", {len(warnings)} warning(s)" if warnings else ""
    if len(names) <= INLINE_NAMES:
        print(f"{path}: ok ({len(names)} resource(s): {', '.join(names)}){warned}")
    else:
        print(f"{path}: ok ({len(names)} resource(s)){warned}:")
        print("".join(f"  - {name}\n" for name in names), end="")
    sys.stdout.flush()  # the ok line first, then the warnings, also when both go to one pipe
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    if strict and warnings:
        print(f"{path}: refused under --strict: fix the warning(s) above", file=sys.stderr)
        return exitcodes.CONFIG_WARNINGS
    return exitcodes.OK


def discover(args: argparse.Namespace) -> int:
    from cli.discover_report import build_report, render_text
    from common.defaults import DEFAULT_CONFIG_FILE
    from common.discovery import scan

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
    """Run the real plugin on a simulated node, narrated (`demo`).

    The kubelet simulator speaks gRPC, and this process must stay free of it, so this process
    becomes a fresh interpreter running the demo (exec: same pid, so `kill <pid>` and Ctrl-C
    reach the demo itself, which stops everything it started). The demo starts
    `rdma-shared-dp run` as its own subprocess.
    """
    command = [sys.executable, "-m", "demo"]
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
    from cli.status_client import StatusError, fetch_status, render_json, render_text

    try:
        answer = fetch_status(args.runtime_dir)
    except StatusError as err:
        print(f"status: {err}", file=sys.stderr)
        return exitcodes.NO_SUPERVISOR
    print(render_json(answer) if args.json else render_text(answer), end="")
    return exitcodes.OK


def run(args: argparse.Namespace) -> int:
    """Load and check the config, then run the supervisor loop until SIGTERM/SIGINT."""
    # The workers' fork server imports grpc meanwhile; the arbiter takes it over.
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
        pod_resources_socket=args.pod_resources_socket,
        pod_resources_interval=getattr(args, "pod_resources_interval", 10.0),
    )
    timings = Timings.from_env(os.environ)  # production timings unless a test asks
    try:
        observer = _observer(args, timings)
    except ValueError as err:  # a metrics flag that cannot work: say so before starting
        flag = str(err.args[1]) if len(err.args) > 1 else "--metrics-address"
        print(f"{flag}: {err.args[0]}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        dra = _dra_observer(args, options, observer)
        if isinstance(dra, int):
            return dra
        served = _workers_config(dra, config)
        if served is None:
            return exitcodes.CONFIG_INVALID
        arbiter = Arbiter(options, served, data, observer=dra or observer, timings=timings)
        if dra is not None:
            arbiter.reloader.served = dra.child.workers
        return arbiter.run()
    finally:
        if observer is not None:
            observer.stopped()  # idempotent; covers a loop that never started


def _workers_config(dra: DraObserver | None, config: Config) -> Config | None:
    """The part of `config` the workers serve; None (after saying why) when --dra cannot be."""
    if dra is None:
        return config
    try:
        return dra.child.workers(config)
    except ModeError as err:
        print(f"--dra: {err}", file=sys.stderr)
        return None


def _dra_observer(
    args: argparse.Namespace, options: Options, inner: Observer | None
) -> DraObserver | int | None:
    """The DRA child's observer around `inner` (None when --dra is off), or an exit code."""
    from supervisor import dra_child
    from supervisor.observer import Observer

    try:
        setting = dra_modes.parse(getattr(args, "dra", "off"))
    except ModeError as err:
        print(f"--dra: {err}", file=sys.stderr)
        return exitcodes.USAGE
    if setting == dra_modes.OFF:
        return None
    # Our own variable in manifests (they pass only RDMA_SHARED_DP_*), NODE_NAME as usual too.
    node = os.environ.get("RDMA_SHARED_DP_NODE_NAME") or os.environ.get("NODE_NAME", "")
    if not node:
        print(
            "--dra: needs RDMA_SHARED_DP_NODE_NAME or NODE_NAME (the downward API's spec.nodeName)",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    argv = dra_child.dra_argv(
        node, options.plugins_registry_dir, options.cdi_dir, options.runtime_dir, options.host_root
    )
    child = dra_child.DraChild(argv, dict(os.environ), setting)
    return dra_child.DraObserver(inner or Observer(), child)


def _observer(args: argparse.Namespace, timings: Timings) -> Observer | None:
    """The metrics hook: the HTTP endpoint and the PodResources poller, or None when
    `--metrics-address` is empty (then neither prometheus_client nor psutil is loaded).
    A busy port is retried with backoff; only an address that does not parse raises."""
    if not args.metrics_address.strip():
        return None
    from common.loop.backoff import Backoff
    from supervisor.metrics.observer import start_metrics_observer

    retry = Backoff(initial=timings.metrics_bind_initial, cap=timings.metrics_bind_cap, jitter=0.2)
    return start_metrics_observer(
        args.metrics_address,
        retry,
        tls=_tls(args),
        pod_series=getattr(args, "pod_metrics", "on") == "on",
        host_root=getattr(args, "host_root", "/"),
        device_plugin_dir=getattr(args, "device_plugin_dir", ""),
    )


def _tls(args: argparse.Namespace) -> TlsContext | None:
    """The metrics TLS context of the flags, None without a certificate.

    Raises ValueError(message, flag) for flags that cannot work together or files that do not
    load: refused before anything starts, like an address that does not parse."""
    from supervisor.metrics.tls import TlsContext, TlsError, TlsFiles

    cert = getattr(args, "metrics_tls_cert_file", "").strip()
    key = getattr(args, "metrics_tls_key_file", "").strip()
    ca = getattr(args, "metrics_tls_client_ca_file", "").strip()
    if not cert:
        for flag, given in (("--metrics-tls-key-file", key), ("--metrics-tls-client-ca-file", ca)):
            if given:
                raise ValueError("needs --metrics-tls-cert-file (TLS) as well", flag)
        return None
    try:
        return TlsContext(TlsFiles(cert, key, ca))
    except TlsError as err:
        raise ValueError(str(err), "--metrics-tls-cert-file") from None
