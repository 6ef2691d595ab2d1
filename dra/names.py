"""Names the DRA side makes: device names (DNS labels), CDI names, slice names (DRA process, CLI).

A ResourceSlice device name must be a DNS label (lower-case letters, digits and '-', starting and
ending with a letter or digit, at most 63 characters). Config resource names and PCI or auxiliary
device names are mapped onto labels here, and a name that cannot be mapped (or two names that map
onto one label) is refused with a message that says which and why, never silently changed into
something else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_DRIVER_NAME = "rdma.shared-dp.io"
#: Prefix of a device that stands for a whole config resource (the drop-in way).
RESOURCE_DEVICE_PREFIX = "res-"
#: Prefix of a device that is one HCA (the DRA way).
HCA_DEVICE_PREFIX = "hca-"
#: Spec files of prepared claims; never starting with the workers' CDI tag ("rdma-shared-dp"),
#: whose stale files the supervisor removes.
CLAIM_SPEC_PREFIX = "rdma-dra-claim_"
DNS_LABEL_MAX = 63

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


class DeviceNameError(ValueError):
    """A name that cannot become a DRA device name."""


def is_label(name: str) -> bool:
    return len(name) <= DNS_LABEL_MAX and bool(_LABEL.match(name))


def check_driver_name(name: str) -> str:
    if len(name) > 63 or not _SUBDOMAIN.match(name) or "." not in name:
        raise DeviceNameError(
            f"DRA driver name {name!r} must be a DNS subdomain with a dot, at most 63 "
            "characters (e.g. rdma.example.com)"
        )
    return name


def _label(text: str) -> str:
    return re.sub(r"[_.:]", "-", text.lower())


def resource_device_name(resource_name: str) -> str:
    """`hca_shared_devices_a` -> `res-hca-shared-devices-a`; refused when not a label."""
    name = RESOURCE_DEVICE_PREFIX + _label(resource_name)
    if not is_label(name):
        raise DeviceNameError(
            f"resource name {resource_name!r} gives DRA device name {name!r}, which is no DNS "
            f"label (letters, digits, '-', '_', '.', at most {DNS_LABEL_MAX - 4} characters); "
            "rename the resource or serve it with the device plugin"
        )
    return name


def hca_device_name(candidate_name: str) -> str:
    """`0000:3b:00.0` -> `hca-0000-3b-00-0`, `mlx5_core.sf.2` -> `hca-mlx5-core-sf-2`."""
    name = HCA_DEVICE_PREFIX + _label(candidate_name)
    if not is_label(name):
        raise DeviceNameError(f"device {candidate_name!r} gives no DNS label ({name!r})")
    return name


def check_unique(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Problems for (source, label) pairs where two sources map onto one label."""
    owners: dict[str, str] = {}
    problems = []
    for source, label in pairs:
        other = owners.setdefault(label, source)
        if other != source:
            problems.append(
                f"{source!r} and {other!r} both map onto DRA device name {label!r}; "
                "rename one of them"
            )
    return problems


def claim_spec_file(claim_uid: str) -> str:
    return f"{CLAIM_SPEC_PREFIX}{claim_uid}.json"


def claim_uid_of_spec(file_name: str) -> str | None:
    if file_name.startswith(CLAIM_SPEC_PREFIX) and file_name.endswith(".json"):
        return file_name[len(CLAIM_SPEC_PREFIX) : -len(".json")] or None
    return None
