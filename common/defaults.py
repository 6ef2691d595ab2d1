"""Names and defaults several rooms share (the CLI, the metrics server, the supervisor).

Kept here, below every package, so no room imports the CLI for a constant (that made an import
circle: cli -> commands -> metrics -> http_server -> cli).
"""

from __future__ import annotations

VERSION = "0.1.0"
DEFAULT_CONFIG_FILE = "/k8s-rdma-shared-dev-plugin/config.json"
DEFAULT_METRICS_PORT = 9478
DEFAULT_METRICS_ADDRESS = f":{DEFAULT_METRICS_PORT}"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
DEFAULT_HOST_ROOT = "/"
DEFAULT_DEVICE_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_PLUGINS_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
DEFAULT_CDI_DIR = "/var/run/cdi"
DEFAULT_RUNTIME_DIR = "/run/rdma-shared-dp"
