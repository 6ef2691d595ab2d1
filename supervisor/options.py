"""What `rdma-shared-dp run` was told: folders, modes, logging (supervisor process)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.messages import WorkerSettings


@dataclass(frozen=True)
class Options:
    config_file: str
    host_root: str
    runtime_dir: str
    device_plugin_dir: str
    plugins_registry_dir: str
    registration_mode: str
    use_cdi: bool
    cdi_dir: str
    log_level: str = "info"
    log_format: str = "text"
    uevent_source: str = "kernel"  # kernel, udev or off
    pod_resources_socket: str = ""  # the kubelet's PodResources API; "" turns pods off
    pod_resources_interval: float = 10.0

    def worker_settings(self, heartbeat_interval: float) -> WorkerSettings:
        return WorkerSettings(
            device_plugin_dir=os.path.abspath(self.device_plugin_dir),
            plugins_registry_dir=os.path.abspath(self.plugins_registry_dir)
            if self.plugins_registry_dir
            else "",
            registration_mode=self.registration_mode,
            use_cdi=self.use_cdi,
            cdi_dir=os.path.abspath(self.cdi_dir),
            heartbeat_interval=heartbeat_interval,
        )
