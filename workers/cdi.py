"""CDI spec for one resource: names, the spec document, and its atomic writer (worker process).

One spec file per resource, named `<key>.json` where `key` is `rdma-shared-dp_<prefix>_<name>`
(shortened with a hash when it would be too long or not a valid name): the `rdma-shared-dp_` tag
means it can never collide with another producer's file, and the same key is the name part of the
`cdi.k8s.io/<key>` annotation, so two resources in one container never overwrite each other.
The naming and the document are pure; only `write_spec` and `remove_spec` touch the disk, and
they touch nothing but that one file (and its temporary sibling).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from common.config import ResourceConfig
from common.devices import RDMA_CM_PATH, Candidate

PRODUCER_TAG = "rdma-shared-dp"
ANNOTATION_PREFIX = "cdi.k8s.io/"
#: The oldest cdiVersion runtimes accept, and the one every spec declares unless it needs more.
BASE_VERSION = "0.3.0"
#: Device names that start with a digit (PCI addresses) arrived in 0.5.0.
DIGIT_NAME_VERSION = "0.5.0"

_VENDOR_OR_CLASS = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?\Z")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?\Z")
_KEY_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?\Z")
_KEY_MAX = 63  # name part of a Kubernetes annotation key


class CdiNameError(ValueError):
    """The resource's prefix or name cannot form a CDI kind."""


def kind(resource: ResourceConfig) -> str:
    """`<resourcePrefix>/<resourceName>`, checked against CDI's vendor and class rules."""
    vendor, cls = resource.resource_prefix, resource.resource_name
    bad = [
        f"{what} {value!r}"
        for what, value in (("resourcePrefix", vendor), ("resourceName", cls))
        if not _VENDOR_OR_CLASS.match(value)
    ]
    if bad:
        raise CdiNameError(
            f"cannot make a CDI kind from {resource.full_name!r}: {' and '.join(bad)} must start "
            "with a letter, end with a letter or digit and use only letters, digits, '_', '.', "
            "'-'; rename the resource or run without --use-cdi"
        )
    return f"{vendor}/{cls}"


def valid_device_name(name: str) -> bool:
    return bool(_DEVICE_NAME.match(name))


def producer_key(resource: ResourceConfig) -> str:
    """Stem of the spec file and name part of the annotation key; unique per resource."""
    key = f"{PRODUCER_TAG}_{resource.resource_prefix}_{resource.resource_name}"
    if len(key) <= _KEY_MAX and _KEY_NAME.match(key):
        return key
    digest = hashlib.sha256(resource.full_name.encode()).hexdigest()[:10]
    readable = re.sub(
        r"[^A-Za-z0-9_.-]", "-", f"{resource.resource_prefix}_{resource.resource_name}"
    )
    room = _KEY_MAX - len(PRODUCER_TAG) - 2 - len(digest)
    return f"{PRODUCER_TAG}_{readable[:room]}_{digest}"


def annotation_key(resource: ResourceConfig) -> str:
    return ANNOTATION_PREFIX + producer_key(resource)


def spec_file_name(resource: ResourceConfig) -> str:
    return producer_key(resource) + ".json"


def qualified_names(resource: ResourceConfig, devices: Iterable[Candidate]) -> tuple[str, ...]:
    k = kind(resource)
    return tuple(f"{k}={d.name}" for d in devices)


def required_version(device_names: Sequence[str]) -> str:
    """The lowest cdiVersion whose features this spec uses (it uses no hostPath or annotations)."""
    if any(n and not n[0].isalpha() for n in device_names):
        return DIGIT_NAME_VERSION
    return BASE_VERSION


def build_spec(resource: ResourceConfig, devices: Sequence[Candidate]) -> dict[str, Any] | None:
    """The spec document for the usable `devices`, or None when there is nothing to describe.

    One CDI device per matched device, named by its PCI address or auxiliary name, with a device
    node for each present char device; rdma_cm is a spec-wide edit so it appears once however many
    devices a container gets. A spec needs at least one device with at least one edit.
    """
    spec_devices: list[dict[str, Any]] = []
    for device in devices:
        nodes = [_node(c.path, c.major, c.minor) for c in device.char_devices if c.present]
        if nodes and valid_device_name(device.name):
            spec_devices.append({"name": device.name, "containerEdits": {"deviceNodes": nodes}})
    if not spec_devices:
        return None
    return {
        "cdiVersion": required_version([d["name"] for d in spec_devices]),
        "kind": kind(resource),
        "devices": spec_devices,
        "containerEdits": {"deviceNodes": [_node(RDMA_CM_PATH, None, None)]},
    }


def _node(path: str, major: int | None, minor: int | None) -> dict[str, Any]:
    # Without major/minor the runtime reads them from the host node at container creation.
    node: dict[str, Any] = {"path": path, "type": "c", "permissions": "rwm"}
    if major is not None and minor is not None:
        node["major"] = major
        node["minor"] = minor
    return node


def render(spec: dict[str, Any]) -> bytes:
    return (json.dumps(spec, indent=2, sort_keys=False) + "\n").encode()


def write_spec(cdi_dir: str, file_name: str, spec: dict[str, Any]) -> bool:
    """Write atomically (temp file, fsync, rename); False when the file already says this."""
    data = render(spec)
    path = os.path.join(cdi_dir, file_name)
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(cdi_dir, mode=0o755, exist_ok=True)
    # A dot name without .json: CDI caches never read a half-written file.
    tmp = os.path.join(cdi_dir, f".{file_name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    dir_fd = os.open(cdi_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


FileIdentity = tuple[int, int, int, int]


def spec_identity(cdi_dir: str, file_name: str) -> FileIdentity | None:
    """(device, inode, mtime, size) of the spec file, or None when there is none."""
    try:
        st = os.stat(os.path.join(cdi_dir, file_name))
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def remove_spec(cdi_dir: str, file_name: str, owned: FileIdentity | None = None) -> bool:
    """Remove our spec file (and a leftover temp file of ours); True when a spec was removed.

    With `owned`, only a file that is still the one we wrote (same inode, mtime and size) goes:
    another writer's file at that name (a newer instance of this worker) is left alone.
    """
    _unlink(os.path.join(cdi_dir, f".{file_name}.tmp{os.getpid()}"))
    if owned is not None and spec_identity(cdi_dir, file_name) != owned:
        return False
    return _unlink(os.path.join(cdi_dir, file_name))


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
