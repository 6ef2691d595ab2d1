"""Removing what a killed worker could not (supervisor process).

A worker removes its own socket and CDI spec when it stops. One the supervisor had to SIGKILL
could not, so the supervisor removes them after it is gone: the worker's socket in the
device-plugin and plugins-registry folders (only if it is a socket), and a CDI spec of this
plugin (file name starts with the `rdma-shared-dp_` producer tag) whose `kind` is the resource's.
Nothing else is ever touched.

At start, and when a resource leaves the config while no worker runs for it, the supervisor also
removes this plugin's CDI specs whose kind is no longer configured: a pod killed as a whole (tini
as PID 1 SIGKILLs every process) leaves the specs of resources a later config dropped, and no
worker would ever remove them. This assumes one supervisor per `--cdi-dir` (one per node).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Collection

from common.config import ResourceConfig
from common.messages import WorkerSettings
from common.private_socket import KEPT_DIR, private_sockets

LOG = logging.getLogger(__name__)

CDI_PRODUCER_TAG = "rdma-shared-dp_"


def worker_sockets(resource: ResourceConfig, settings: WorkerSettings) -> list[str]:
    name = f"{resource.resource_name}.sock"
    folders = [settings.device_plugin_dir, settings.plugins_registry_dir]
    return [os.path.join(folder, name) for folder in folders if folder]


def tagged_cdi_specs(cdi_dir: str) -> list[tuple[str, str]]:
    """(path, kind) of each readable CDI spec file of this plugin in `cdi_dir`."""
    found = []
    try:
        names = sorted(os.listdir(cdi_dir))
    except OSError:
        return []
    for name in names:
        if not (name.startswith(CDI_PRODUCER_TAG) and name.endswith(".json")):
            continue
        path = os.path.join(cdi_dir, name)
        try:
            with open(path, "rb") as f:
                kind = json.loads(f.read(1024 * 1024)).get("kind")
        except (OSError, ValueError, AttributeError):
            continue  # not ours to judge: a spec we cannot read stays
        if isinstance(kind, str):
            found.append((path, kind))
    return found


def cdi_specs(resource: ResourceConfig, cdi_dir: str) -> list[str]:
    """This plugin's CDI spec files in `cdi_dir` whose kind is `resource`'s."""
    return [path for path, kind in tagged_cdi_specs(cdi_dir) if kind == resource.full_name]


def remove_stale_cdi_specs(cdi_dir: str, kinds: Collection[str]) -> list[str]:
    """Remove this plugin's CDI specs whose kind is not in `kinds`; the paths removed."""
    removed = []
    for path, kind in tagged_cdi_specs(cdi_dir):
        if kind in kinds:
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
            LOG.info("removed a stale CDI spec kind=%s path=%s (not in the config)", kind, path)
    return removed


def remove_leftovers(
    resource: ResourceConfig,
    settings: WorkerSettings,
    why: str = "a killed worker left",
    pid: int = 0,
) -> list[str]:
    """Remove a killed (or gone) worker's socket(s) and CDI spec; the paths removed.

    With `pid`, also the private names the worker binds and links its name to
    (`common.private_socket`): a killed worker leaves them, and a kill storm would pile them
    up)."""
    removed = []
    private = [
        path
        for folder in (settings.device_plugin_dir, settings.plugins_registry_dir)
        if folder and pid > 0
        for path in private_sockets(folder, pid)
    ]
    for path in [*worker_sockets(resource, settings), *private]:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
                removed.append(path)
    for folder in {os.path.dirname(p) for p in private}:
        if os.path.basename(folder) == KEPT_DIR:
            with contextlib.suppress(OSError):  # only when empty: other workers' names stay
                os.rmdir(folder)
    if settings.use_cdi:
        for path in cdi_specs(resource, settings.cdi_dir):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    if removed:
        LOG.info(
            "removed what %s resource=%s files=%s",
            why,
            resource.full_name,
            ",".join(removed),
        )
    return removed
