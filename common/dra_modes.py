"""Which config resources a node serves through DRA, which through workers (supervisor, DRA).

`--dra` (env `RDMA_SHARED_DP_DRA`) takes:

    off          the default: device-plugin workers only, no DRA process
    all          every config resource through DRA (a drop-in device each) and one device per HCA;
                 no device-plugin worker runs
    hcas         workers serve every resource as without DRA; DRA publishes one device per HCA
    NAME[,NAME]  these resources through DRA, every other one by a worker; devices per HCA too

KEP-5004 lets a node back an extended resource name with a device plugin or with DRA, never both:
`split` gives each config resource exactly one way (the workers get every resource DRA does not
take), so no name is backed both ways by construction; it refuses a setting or config that
cannot be served (a name not in the config, a resource whose device name is no DNS label, two
resources on one label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.config import Config, ResourceConfig

OFF, ALL, HCAS = "off", "all", "hcas"
#: Prefix of a device that stands for a whole config resource (the drop-in way).
RESOURCE_DEVICE_PREFIX = "res-"
DNS_LABEL_MAX = 63
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


class DeviceNameError(ValueError):
    """A name that cannot become a DRA device name (a DNS label)."""


def is_label(name: str) -> bool:
    return len(name) <= DNS_LABEL_MAX and bool(_LABEL.match(name))


def label(text: str) -> str:
    """Lower case, `_`, `.` and `:` as `-`: the mapping of every name onto a device name."""
    return re.sub(r"[_.:]", "-", text.lower())


def resource_device_name(resource_name: str) -> str:
    """`hca_shared_devices_a` -> `res-hca-shared-devices-a`; refused when not a label."""
    name = RESOURCE_DEVICE_PREFIX + label(resource_name)
    if not is_label(name):
        raise DeviceNameError(
            f"resource name {resource_name!r} gives DRA device name {name!r}, which is no DNS "
            f"label (letters, digits, '-', '_', '.', at most {DNS_LABEL_MAX - 4} characters, "
            "starting and ending with a letter or digit); rename the resource or serve it with "
            "the device plugin"
        )
    return name


def check_unique(pairs: list[tuple[str, str]]) -> list[str]:
    """Problems for (source, label) pairs where two sources map onto one label."""
    owners: dict[str, str] = {}
    problems = []
    for source, name in pairs:
        other = owners.setdefault(name, source)
        if other != source:
            problems.append(
                f"{source!r} and {other!r} both map onto DRA device name {name!r}; "
                "rename one of them"
            )
    return problems


class ModeError(ValueError):
    """The `--dra` setting does not fit the config; the message says what to change."""


@dataclass(frozen=True)
class Split:
    enabled: bool  # a DRA process runs
    device_plugin: tuple[ResourceConfig, ...]  # served by workers
    dra: tuple[ResourceConfig, ...]  # served by drop-in DRA devices


def parse(setting: str) -> str:
    """Normalise the flag's text; raises ModeError on an empty list entry."""
    text = setting.strip()
    if text.lower() in ("", "0", "false", "no", OFF):
        return OFF
    if text.lower() in (ALL, "1", "true", "yes", "on"):
        return ALL
    if text.lower() == HCAS:
        return HCAS
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise ModeError(f"--dra {setting!r}: an empty resource name in the list")
    return ",".join(names)


def split(config: Config, setting: str) -> Split:
    mode = parse(setting)
    resources = config.resources
    if mode == OFF:
        return Split(False, resources, ())
    if mode == HCAS:
        return Split(True, resources, ())
    if mode == ALL:
        chosen = resources
    else:
        wanted = mode.split(",")
        known = {r.resource_name for r in resources} | {r.full_name for r in resources}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ModeError(
                f"--dra names {', '.join(missing)}, not in the config "
                f"(resources: {', '.join(r.full_name for r in resources) or 'none'})"
            )
        chosen = tuple(r for r in resources if r.resource_name in wanted or r.full_name in wanted)
    problems: list[str] = []
    labels: list[tuple[str, str]] = []
    for resource in chosen:
        try:
            labels.append((resource.full_name, resource_device_name(resource.resource_name)))
        except DeviceNameError as err:
            problems.append(str(err))
    problems += check_unique(labels)
    if problems:
        raise ModeError("cannot serve these resources through DRA: " + "; ".join(problems))
    return Split(True, tuple(r for r in resources if r not in chosen), chosen)


def workers_config(config: Config, setting: str) -> Config:
    """`config` with only the resources device-plugin workers serve; raises ModeError."""
    return Config(
        config.periodic_update_interval, split(config, setting).device_plugin, config.warnings
    )
