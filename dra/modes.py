"""Which config resources a node serves through DRA, and which through device-plugin workers.

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

from dataclasses import dataclass

from common.config import Config, ResourceConfig
from dra.names import DeviceNameError, check_unique, resource_device_name

OFF, ALL, HCAS = "off", "all", "hcas"


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
    problems = []
    labels = []
    for resource in chosen:
        try:
            labels.append((resource.full_name, resource_device_name(resource.resource_name)))
        except DeviceNameError as err:
            problems.append(str(err))
    problems += check_unique(labels)
    if problems:
        raise ModeError("cannot serve these resources through DRA: " + "; ".join(problems))
    return Split(True, tuple(r for r in resources if r not in chosen), chosen)
