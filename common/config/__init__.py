"""The plugin's config file: the Go plugin's format, read exactly, validated with better errors.

Runs in the supervisor (and the CLI). Workers receive an already validated ResourceConfig.

The format is the Go plugin's (`{"periodicUpdateInterval": N, "configList": [...]}`), decoded the
way Go's encoding/json decodes it: keys match without regard to case, wrong JSON types are errors,
an integer field takes only an integer literal. Where the Go plugin silently did something useless
(an unknown key ignored, `"0x15B3"` that never matches, a prefix the kubelet refuses at
registration) this loader refuses the file instead and says how to fix it. Every problem is
collected, each with its JSON path, so one run of `validate-config` shows them all.
docs/configuration.md is the operator's description of every rule here.

The package, by role: `model` (limits and frozen values), `json_reader` (the strict JSON reader),
`validation` and `values` (the checks and their messages), `shapes` (the problem collector and
JSON helpers). Every public name stays importable from `common.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.config.json_reader import _decode
from common.config.model import (
    ARPHRD_NAMES,
    DEFAULT_PERIODIC_UPDATE_INTERVAL,
    DEFAULT_RESOURCE_PREFIX,
    INTERNAL_ERROR,
    LINK_TYPES,
    MAX_CONFIG_BYTES,
    MAX_IF_NAME_BYTES,
    MAX_PERIODIC_UPDATE_INTERVAL,
    MAX_RDMA_DEVICE_NAME_LENGTH,
    MAX_RDMA_HCA_MAX,
    MAX_RESOURCE_NAME_LENGTH,
    MAX_RESOURCE_PREFIX_LENGTH,
    Config,
    ConfigError,
    ConfigProblem,
    ResourceConfig,
    Selectors,
)
from common.config.shapes import _Context, _q
from common.config.validation import _document, _resource

if TYPE_CHECKING:
    from pathlib import Path

# --- public entry points -----------------------------------------------------------------------


def load_config_file(path: str | Path) -> Config:
    """Read and validate the config file at `path`; ConfigError names every problem."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"config file {_q(source)} does not exist; mount the ConfigMap (key "
                    "config.json) there or pass --config-file",
                )
            ],
            source,
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [ConfigProblem("", f"{_q(source)} is a folder; --config-file must name the JSON file")],
            source,
        ) from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            [ConfigProblem("", f"cannot read config file {_q(source)}: {reason}")], source
        ) from None
    return load_config_bytes(data, source)


def load_config_bytes(data: bytes, source: str = "<config>") -> Config:
    """Validate a config file's content; ConfigError names every problem."""
    obj = _decode(data, source)
    return parse_config(obj, source)


def parse_config(obj: object, source: str = "<config>") -> Config:
    """Validate an already parsed JSON value (dicts, lists, str, int, float, bool, None)."""
    ctx = _Context()
    try:
        config = _document(ctx, obj)
    except RecursionError:
        ctx.error("", "the value is nested too deeply to be a config")
        config = None
    except Exception as e:  # a loader bug must refuse the file, never crash the supervisor
        ctx.error("", f"{INTERNAL_ERROR}: {type(e).__name__}")
        config = None
    if ctx.problems or config is None:
        raise ConfigError(ctx.problems or [ConfigProblem("", "invalid config")], source)
    return config


def resource_from_json(obj: object) -> ResourceConfig:
    """Read back one `ResourceConfig.to_json()` value, with the same checks as the file."""
    ctx = _Context()
    resource = _resource(ctx, "", obj)
    if ctx.problems or resource is None:
        raise ConfigError(ctx.problems or [ConfigProblem("", "invalid resource")])
    return resource


__all__ = [
    "ARPHRD_NAMES",
    "DEFAULT_PERIODIC_UPDATE_INTERVAL",
    "DEFAULT_RESOURCE_PREFIX",
    "INTERNAL_ERROR",
    "LINK_TYPES",
    "MAX_CONFIG_BYTES",
    "MAX_IF_NAME_BYTES",
    "MAX_PERIODIC_UPDATE_INTERVAL",
    "MAX_RDMA_DEVICE_NAME_LENGTH",
    "MAX_RDMA_HCA_MAX",
    "MAX_RESOURCE_NAME_LENGTH",
    "MAX_RESOURCE_PREFIX_LENGTH",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ResourceConfig",
    "Selectors",
    "load_config_bytes",
    "load_config_file",
    "parse_config",
    "resource_from_json",
]
