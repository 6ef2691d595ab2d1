"""Removing what a killed worker could not (supervisor process).

A worker removes its own socket and CDI spec when it stops. One the supervisor had to SIGKILL
could not, so the supervisor removes them after it is gone: the worker's socket in the
device-plugin and plugins-registry folders (only if it is a socket), and a CDI spec of this
plugin (file name starts with the `rdma-shared-dp_` producer tag) whose `kind` is the resource's.
Nothing else is ever touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat

from common.config import ResourceConfig
from common.messages import WorkerSettings

LOG = logging.getLogger(__name__)

CDI_PRODUCER_TAG = "rdma-shared-dp_"


def worker_sockets(resource: ResourceConfig, settings: WorkerSettings) -> list[str]:
    name = f"{resource.resource_name}.sock"
    folders = [settings.device_plugin_dir, settings.plugins_registry_dir]
    return [os.path.join(folder, name) for folder in folders if folder]


def cdi_specs(resource: ResourceConfig, cdi_dir: str) -> list[str]:
    """This plugin's CDI spec files in `cdi_dir` whose kind is `resource`'s."""
    found = []
    try:
        names = os.listdir(cdi_dir)
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
            continue
        if kind == resource.full_name:
            found.append(path)
    return found


def remove_leftovers(resource: ResourceConfig, settings: WorkerSettings) -> list[str]:
    """Remove a killed worker's socket(s) and CDI spec; the paths removed."""
    removed = []
    for path in worker_sockets(resource, settings):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
                removed.append(path)
    if settings.use_cdi:
        for path in cdi_specs(resource, settings.cdi_dir):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    if removed:
        LOG.info(
            "removed what a killed worker left resource=%s files=%s",
            resource.full_name,
            ",".join(removed),
        )
    return removed
