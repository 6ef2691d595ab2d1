"""Command line of `rdma-shared-dp` (runs in the supervisor process; never imports grpc).

With no subcommand it runs the plugin, so an image entrypoint reads like the Go plugin's, whose
single-dash flags (`-config-file`, `-use-cdi`, `-version`) are accepted too. Every flag of `run`
can also come from an `RDMA_SHARED_DP_<FLAG>` environment variable (flag wins).

`--kubelet-root-dir DIR` (the Go plugin's and the Network Operator's flag) moves the three kubelet
paths under DIR (`DIR/device-plugins`, `DIR/plugins_registry`, `DIR/pod-resources/kubelet.sock`)
unless a path is given explicitly, by flag or environment variable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from common import exitcodes
from common.config.sizing import DEFAULT_MEMORY_LIMIT_MIB
from common.defaults import (  # re-exported: tests and tools read them from here too
    DEFAULT_CDI_DIR,
    DEFAULT_CONFIG_FILE,
    DEFAULT_HOST_ROOT,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_METRICS_PORT,
    DEFAULT_RUNTIME_DIR,
    HEALTHZ_PATH,
    READYZ_PATH,
    VERSION,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_METRICS_ADDRESS",
    "DEFAULT_METRICS_PORT",
    "HEALTHZ_PATH",
    "READYZ_PATH",
    "VERSION",
    "build_parser",
    "main",
]
SUBCOMMANDS = ("run", "discover", "validate-config", "demo", "version", "status")
ENV_PREFIX = "RDMA_SHARED_DP_"
DEFAULT_KUBELET_ROOT = "/var/lib/kubelet"
#: Flag -> its path under the kubelet's root folder (used unless the path is given explicitly).
KUBELET_PATHS = {
    "device_plugin_dir": "device-plugins",
    "plugins_registry_dir": "plugins_registry",
    "pod_resources_socket": "pod-resources/kubelet.sock",
}
#: What the Go binary (and so the Network Operator) spells `--version`.
VERSION_FLAGS = ("-v", "-version", "--version")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _env_or_none(name: str) -> str | None:
    """The variable's value if it is set at all (an empty value is explicit too)."""
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _env_flag(name: str) -> bool:
    return _env(name, "").strip().lower() in ("1", "true", "yes", "on")


def _h(flag: str, text: str, default: str | None = None) -> str:
    """A run flag's help: what it does, its built-in default and its environment variable."""
    env = ENV_PREFIX + flag.upper().replace("-", "_")
    shown = "off" if default == "" else f"{default!r}" if default is not None else "off"
    return f"{text} (default: {shown}; env {env})"


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config-file",
        "-config-file",
        default=_env("config-file", DEFAULT_CONFIG_FILE),
        help=_h(
            "config-file", "the JSON config (the ConfigMap's config.json)", DEFAULT_CONFIG_FILE
        ),
    )
    p.add_argument(
        "--use-cdi",
        "-use-cdi",
        action="store_true",
        default=_env_flag("use-cdi"),
        help=_h(
            "use-cdi",
            "answer Allocate with CDI device names and write CDI specs; the "
            "variable takes 1/true/yes/on",
        ),
    )
    p.add_argument(
        "--host-root",
        default=_env("host-root", DEFAULT_HOST_ROOT),
        help=_h(
            "host-root",
            "the host's root: sysfs is read under <host-root>/sys, char devices "
            "checked under <host-root>/dev",
            "/",
        ),
    )
    p.add_argument(
        "--kubelet-root-dir",
        "-kubelet-root-dir",
        default=_env("kubelet-root-dir", DEFAULT_KUBELET_ROOT),
        help=_h(
            "kubelet-root-dir",
            "the kubelet's --root-dir (the Go plugin's flag); the three kubelet paths below "
            "default to folders in it unless given by flag or variable",
            DEFAULT_KUBELET_ROOT,
        ),
    )
    # None until resolve_kubelet_paths(): given explicitly (flag or env), or under the root.
    p.add_argument(
        "--device-plugin-dir",
        default=_env_or_none("device-plugin-dir"),
        help=_h(
            "device-plugin-dir",
            "where kubelet.sock is and plugin sockets go",
            "<kubelet-root-dir>/device-plugins",
        ),
    )
    p.add_argument(
        "--plugins-registry-dir",
        default=_env_or_none("plugins-registry-dir"),
        help=_h(
            "plugins-registry-dir",
            "the kubelet's plugin-watcher folder (watcher mode)",
            "<kubelet-root-dir>/plugins_registry",
        ),
    )
    p.add_argument(
        "--registration-mode",
        choices=("auto", "classic", "watcher"),
        default=_env("registration-mode", "auto"),
        help=_h(
            "registration-mode",
            "classic: register through kubelet.sock; watcher: a socket "
            "in the plugins-registry folder; auto: watcher when that folder exists",
            "auto",
        ),
    )
    p.add_argument(
        "--cdi-dir",
        default=_env("cdi-dir", DEFAULT_CDI_DIR),
        help=_h("cdi-dir", "where CDI specs are written with --use-cdi", DEFAULT_CDI_DIR),
    )
    p.add_argument(
        "--runtime-dir",
        default=_env("runtime-dir", DEFAULT_RUNTIME_DIR),
        help=_h(
            "runtime-dir",
            "the supervisor's private folder (control socket, lock)",
            DEFAULT_RUNTIME_DIR,
        ),
    )
    p.add_argument(
        "--metrics-address",
        default=_env("metrics-address", DEFAULT_METRICS_ADDRESS),
        help=_h(
            "metrics-address",
            "host:port for /metrics, /healthz and /readyz; empty turns the HTTP server off",
            DEFAULT_METRICS_ADDRESS,
        ),
    )
    for flag, what in (
        ("metrics-tls-cert-file", "PEM certificate (chain) for the metrics address: turns TLS on"),
        ("metrics-tls-key-file", "PEM private key of that certificate, unless it is in the file"),
        (
            "metrics-tls-client-ca-file",
            "PEM CA bundle: /metrics then answers only clients with a certificate it signed "
            "(/healthz and /readyz answer any client)",
        ),
    ):
        p.add_argument(f"--{flag}", default=_env(flag, ""), help=_h(flag, what, ""))
    p.add_argument(
        "--pod-metrics",
        choices=("on", "off"),
        default=_env("pod-metrics", "on"),
        help=_h("pod-metrics", "per-pod series (rdma_shared_dp_pod_allocations)", "on"),
    )
    p.add_argument(
        "--pod-resources-socket",
        default=_env_or_none("pod-resources-socket"),
        help=_h(
            "pod-resources-socket",
            "the kubelet's PodResources API, for per-pod metrics; empty turns them off",
            "<kubelet-root-dir>/pod-resources/kubelet.sock",
        ),
    )
    p.add_argument(
        "--pod-resources-interval",
        type=float,
        default=_env("pod-resources-interval", "10"),
        help=_h(
            "pod-resources-interval",
            "seconds between PodResources polls (pod series, IDs held above rdmaHcaMax)",
            "10",
        ),
    )
    p.add_argument(
        "--dra",
        default=_env("dra", "off"),
        help=_h(
            "dra",
            "serve through DRA too (docs/dra.md): off, or hcas (one DRA device per HCA beside "
            "the workers; needs NODE_NAME)",
            "off",
        ),
    )
    p.add_argument(
        "--uevent-source",
        choices=("kernel", "udev", "off"),
        default=_env("uevent-source", "kernel"),
        help=_h(
            "uevent-source",
            "where device-change hints come from: the kernel's netlink "
            "socket (works without udevd), udevd's processed events, or off (periodic "
            "rescans only)",
            "kernel",
        ),
    )
    _add_log_flags(p)


def _add_log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=_env("log-level", "info"),
        help=_h("log-level", "least severe level logged", "info"),
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=_env("log-format", "text"),
        help=_h("log-format", "text lines, or one JSON object per line", "text"),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdma-shared-dp",
        description="Kubernetes device plugin sharing a node's RDMA HCAs among pods.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    _add_run_flags(sub.add_parser("run", help="run the plugin (default)", allow_abbrev=False))

    discover = sub.add_parser(
        "discover", help="show what each resource's selectors match", allow_abbrev=False
    )
    discover.add_argument(
        "--config-file",
        "-config-file",
        default=None,
        help=f"config to match against (default {DEFAULT_CONFIG_FILE} if it exists, "
        "else every candidate is shown under one catch-all resource; '' forces that)",
    )
    discover.add_argument("--host-root", default=_env("host-root", DEFAULT_HOST_ROOT))
    discover.add_argument(
        "--use-cdi",
        "-use-cdi",
        action="store_true",
        default=_env_flag("use-cdi"),
        help="show the CDI device names each resource hands out (and what CDI needs)",
    )
    discover.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _add_log_flags(discover)

    validate = sub.add_parser("validate-config", help="check a config file", allow_abbrev=False)
    validate.add_argument("path", help="the config file (the ConfigMap's config.json value)")
    validate.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (missing rdmaHcaMax, deprecated devices, ...) as failures: exit 6",
    )
    validate.add_argument(
        "--memory-limit-mib",
        type=_positive_int,
        default=DEFAULT_MEMORY_LIMIT_MIB,
        help="the container's memory limit to check the resource count against, in MiB "
        f"(default: {DEFAULT_MEMORY_LIMIT_MIB}, the shipped DaemonSet's)",
    )

    demo = sub.add_parser(
        "demo", help="run on a built-in simulated node with a kubelet simulator", allow_abbrev=False
    )
    demo.add_argument("--workdir", default=None, help="where to build the node (default: temp)")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="stay up after the scenario until Ctrl-C or SIGTERM, and print the status and curl "
        "commands to look at it",
    )
    demo.add_argument("--json", action="store_true", help="one JSON event per line (for tests)")

    sub.add_parser("version", help="print the version")

    status = sub.add_parser("status", help="ask the running supervisor for its worker table")
    status.add_argument("--runtime-dir", default=_env("runtime-dir", DEFAULT_RUNTIME_DIR))
    status.add_argument("--json", action="store_true")
    return parser


def resolve_kubelet_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in each kubelet path not given explicitly from `--kubelet-root-dir`."""
    root = args.kubelet_root_dir.rstrip("/") or "/"
    for name, relative in KUBELET_PATHS.items():
        if getattr(args, name) is None:
            setattr(args, name, os.path.join(root, relative))
    return args


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse as `main` does, kubelet paths resolved (tests and manifests check flags with it)."""
    args = build_parser().parse_args(_normalise_argv(argv))
    return resolve_kubelet_paths(args) if args.command == "run" else args


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    """`run` is the default subcommand; Go's `-v`/`-version`/`--version` mean `version`."""
    args = list(argv)
    if any(a in VERSION_FLAGS for a in args):
        return ["version"]
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        return ["run", *args]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from supervisor import pid1

    if argv is None and pid1.should_become_init():
        pid1.become_init()  # only the child returns; PID 1 reaps and forwards until it exits
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "version":
        print(f"rdma-shared-dp {VERSION}")
        return exitcodes.OK
    if args.command == "validate-config":
        from cli.commands import validate_config

        return validate_config(args.path, args.strict, args.memory_limit_mib)
    if args.command == "discover":
        from cli.commands import discover

        return discover(args)
    if args.command == "demo":
        from cli.commands import demo

        return demo(args)
    if args.command == "status":
        from cli.commands import status

        return status(args)
    from cli.commands import run

    return run(args)
