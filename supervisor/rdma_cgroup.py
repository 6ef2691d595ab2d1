"""Per-pod RDMA usage from the rdma cgroup controller (cgroup v2), supervisor process.

The kernel counts, per cgroup and RDMA device, the verbs handles (`hca_handle`: user contexts)
and objects (`hca_object`: PDs, QPs, CQs, MRs, ...) its processes hold, in `rdma.current`, and
their limit in `rdma.max` ("max" when unlimited):

    rxe0 hca_handle=2 hca_object=17

A pod's cgroup is found under `<host-root>/sys/fs/cgroup` where the kubelet puts it, for both
of its cgroup drivers (at most three levels down):

- systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid, "-" as "_">.slice`
  (guaranteed pods sit directly in `kubepods.slice`);
- cgroupfs: `kubepods/<qos>/pod<uid>` (guaranteed: `kubepods/pod<uid>`).

Which pods hold which of our resources comes from the kubelet's device-manager checkpoint
(`<device-plugin-dir>/kubelet_internal_checkpoint`: pod UID, resource, device IDs), the one place
that names pods by UID as cgroups do. A row is reported only for a device one of the pod's
resources serves; lines for other devices (another plugin's HCA, a host process) are skipped.
A cgroup that vanishes between listing and reading (the pod just ended), an unreadable or
garbled file: that row is skipped with a log line, never an exception.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

CHECKPOINT = "kubelet_internal_checkpoint"
CGROUP_ROOT = "sys/fs/cgroup"
KINDS = ("hca_handle", "hca_object")
#: How deep below the cgroup root a pod's cgroup can sit (kubepods / qos / pod).
_DEPTH = 3
_POD = re.compile(
    r"^(?:kubepods(?:-[a-z]+)?-pod(?P<slice>[0-9a-f_]{36})\.slice|pod(?P<fs>[0-9a-f-]{36}))$"
)
_MAX_FILE = 65536


@dataclass(frozen=True)
class PodRdmaUsage:
    """One pod's use of one RDMA device, with the cgroup's limits (None = unlimited)."""

    pod_uid: str
    resource: str
    device: str
    hca_handle: int
    hca_object: int
    max_hca_handle: int | None
    max_hca_object: int | None


def pods_of_resources(device_plugin_dir: str, resources: set[str]) -> dict[str, set[str]]:
    """Pod UID -> which of `resources` it holds, from the kubelet's checkpoint ({} if none)."""
    path = os.path.join(device_plugin_dir, CHECKPOINT)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(64 * 1024 * 1024))
        entries = data["Data"]["PodDeviceEntries"] or []
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        LOG.warning(
            "cannot read the kubelet's checkpoint path=%s: %s; no pod RDMA usage", path, err
        )
        return {}
    pods: dict[str, set[str]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        uid, resource = entry.get("PodUID"), entry.get("ResourceName")
        if isinstance(uid, str) and resource in resources:
            pods.setdefault(uid, set()).add(resource)
    return pods


def pod_cgroups(host_root: str) -> dict[str, str]:
    """Pod UID -> its cgroup folder, for every pod cgroup under the kubelet's layouts."""
    root = os.path.join(host_root, CGROUP_ROOT)
    found: dict[str, str] = {}
    for top in ("kubepods.slice", "kubepods"):
        for path, name in _walk(os.path.join(root, top), _DEPTH - 1):
            match = _POD.match(name)
            if match:
                uid = (
                    match.group("slice").replace("_", "-") if match.group("slice") else match["fs"]
                )
                found[uid] = path
    return found


def _walk(folder: str, depth: int) -> Iterator[tuple[str, str]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return  # absent layout, or removed while listing
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield entry.path, entry.name
            if depth > 0 and not _POD.match(entry.name):
                yield from _walk(entry.path, depth - 1)


def parse_rdma(text: str) -> dict[str, dict[str, int | None]]:
    """`rdma.current` / `rdma.max` -> device -> kind -> value (None for "max").

    Raises ValueError for a line that is not `<device> hca_handle=N hca_object=N`."""
    out: dict[str, dict[str, int | None]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        device, *pairs = line.split()
        values: dict[str, int | None] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in KINDS:
                raise ValueError(f"unexpected {pair!r} in {line!r}")
            if value == "max":
                values[key] = None
            elif value.isascii() and value.isdigit() and len(value) <= 19:
                values[key] = int(value)
            else:
                raise ValueError(f"unexpected value {value!r} in {line!r}")
        out[device] = values
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_FILE).decode("ascii")
    except FileNotFoundError:
        return None  # the pod ended between listing and reading: nothing to report
    except (OSError, UnicodeDecodeError) as err:
        LOG.warning("cannot read %s: %s; that pod's RDMA usage is skipped", path, err)
        return None


def pod_usage(
    host_root: str, device_plugin_dir: str, served: Mapping[str, set[str]]
) -> list[PodRdmaUsage]:
    """Usage rows for the pods holding our resources; `served`: resource -> its RDMA devices."""
    pods = pods_of_resources(device_plugin_dir, set(served))
    if not pods:
        return []
    cgroups = pod_cgroups(host_root)
    rows: list[PodRdmaUsage] = []
    for uid in sorted(pods):
        folder = cgroups.get(uid)
        if folder is None:
            continue  # not started yet, or already gone
        current_text = _read(os.path.join(folder, "rdma.current"))
        max_text = _read(os.path.join(folder, "rdma.max"))
        if current_text is None:
            continue
        try:
            current = parse_rdma(current_text)
            limits = parse_rdma(max_text or "")
        except ValueError as err:
            LOG.warning("pod_uid=%s: rdma cgroup files unparsable (%s); row skipped", uid, err)
            continue
        for device, values in sorted(current.items()):
            resource = next((r for r in sorted(pods[uid]) if device in served.get(r, ())), None)
            if resource is None:
                LOG.debug("pod_uid=%s device=%s: not a device we serve; skipped", uid, device)
                continue
            limit = limits.get(device, {})
            rows.append(
                PodRdmaUsage(
                    pod_uid=uid,
                    resource=resource,
                    device=device,
                    hca_handle=values.get("hca_handle") or 0,
                    hca_object=values.get("hca_object") or 0,
                    max_hca_handle=limit.get("hca_handle"),
                    max_hca_object=limit.get("hca_object"),
                )
            )
    return rows
