"""Names the DRA side makes: device names (DNS labels), CDI names, slice names (DRA process, CLI).

A ResourceSlice device name must be a DNS label (lower-case letters, digits and '-', starting and
ending with a letter or digit, at most 63 characters). Config resource names and PCI or auxiliary
device names are mapped onto labels here, and a name that cannot be mapped (or two names that map
onto one label) is refused with a message that says which and why, never silently changed into
something else.
"""

from __future__ import annotations

import re

from common.dra_modes import DeviceNameError, is_label, label, resource_device_name

__all__ = ["DeviceNameError", "is_label", "resource_device_name"]

DEFAULT_DRIVER_NAME = "rdma.shared-dp.io"
#: Prefix of a device that is one HCA (the DRA way).
HCA_DEVICE_PREFIX = "hca-"
#: Spec files of prepared claims; never starting with the workers' CDI tag ("rdma-shared-dp"),
#: whose stale files the supervisor removes.
CLAIM_SPEC_PREFIX = "rdma-dra-claim_"
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def check_driver_name(name: str) -> str:
    if len(name) > 63 or not _SUBDOMAIN.match(name) or "." not in name:
        raise DeviceNameError(
            f"DRA driver name {name!r} must be a DNS subdomain with a dot, at most 63 "
            "characters (e.g. rdma.example.com)"
        )
    return name


def hca_device_name(candidate_name: str) -> str:
    """`0000:3b:00.0` -> `hca-0000-3b-00-0`, `mlx5_core.sf.2` -> `hca-mlx5-core-sf-2`."""
    name = HCA_DEVICE_PREFIX + label(candidate_name)
    if not is_label(name):
        raise DeviceNameError(f"device {candidate_name!r} gives no DNS label ({name!r})")
    return name


def claim_spec_file(claim_uid: str) -> str:
    return f"{CLAIM_SPEC_PREFIX}{claim_uid}.json"


def claim_uid_of_spec(file_name: str) -> str | None:
    if file_name.startswith(CLAIM_SPEC_PREFIX) and file_name.endswith(".json"):
        return file_name[len(CLAIM_SPEC_PREFIX) : -len(".json")] or None
    return None
