"""The per-pod RDMA usage series: `rdma_shared_dp_pod_rdma_usage` and `..._pod_rdma_limit`
(supervisor process; filled on each scrape, in the HTTP thread).

The rows come from `supervisor.rdma_cgroup.pod_usage` (the pods' rdma cgroups, mapped to pods by
the kubelet's checkpoint). `RdmaUsageSource` is what the exporter calls: the loop tells it which
RDMA devices each resource serves after every scan (`set_served`), the scrape reads the files. A
read that fails in any way costs the scrape these series only, with a log line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from supervisor.rdma_cgroup import KINDS, PodRdmaUsage, pod_usage

LOG = logging.getLogger(__name__)

_Add = Callable[[str, Sequence[str], float], None]


class RdmaUsageSource:
    """Per-pod usage rows for the resources of the running config."""

    def __init__(self, host_root: str, device_plugin_dir: str) -> None:
        self.host_root = host_root
        self.device_plugin_dir = device_plugin_dir
        self._lock = threading.Lock()
        self._served: dict[str, set[str]] = {}

    def set_served(self, served: Mapping[str, set[str]]) -> None:
        """Resource -> the RDMA devices it serves now (replaces what was)."""
        with self._lock:
            self._served = {name: set(devices) for name, devices in served.items()}

    def __call__(self) -> Sequence[PodRdmaUsage]:
        with self._lock:
            served = dict(self._served)
        if not served:
            return ()
        return pod_usage(self.host_root, self.device_plugin_dir, served)


def collect_pod_rdma(source: Callable[[], Sequence[PodRdmaUsage]], add: _Add) -> None:
    try:
        rows = source()
    except Exception as err:  # a scrape must never fail because of one family
        LOG.warning("per-pod RDMA usage not collected: %s", err)
        return
    for row in rows:
        for kind in KINDS:
            labels = (row.resource, row.pod_uid, row.device, kind)
            add("pod_rdma_usage", labels, getattr(row, kind))
            limit = getattr(row, f"max_{kind}")
            if limit is not None:
                add("pod_rdma_limit", labels, limit)
