"""What the simulated kubelet checks and records (test and demo processes, never the plugin's).

Its constants (API version, socket names, the timings a real kubelet showed), the records tests
read (`Registration`, `SimPod`, `Admission`, `AdvertisedDevice`), the connection to one
registered plugin (`Endpoint`), and the kubelet's rule for extended resource names. The kubelet
itself is `simulator.kubelet`; its plugin watcher `simulator.plugin_watcher`; its pods
`simulator.kubelet_pods`.
"""

from __future__ import annotations

import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from proto.deviceplugin.v1beta1 import api_pb2 as dp

VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT_FILE = "kubelet_internal_checkpoint"
PLUGIN_TYPE = "DevicePlugin"
GET_INFO_TIMEOUT = 1.0
NOTIFY_TIMEOUT = 1.0
# The kubelet reacts to fsnotify events; polling this often is close enough for tests.
REGISTRY_POLL_INTERVAL = 0.02
# The kubelet's plugin manager retries a failed watcher registration with this backoff
# (nestedpendingoperations: 500 ms, doubling, at most 2 min 2 s).
WATCHER_RETRY_INITIAL = 0.5
WATCHER_RETRY_MAX = 122.0
DIAL_RETRY_INTERVAL = 0.02
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: After it starts serving, a real kubelet admitted non-running pods again this much later (s).
READMIT_DELAY = (0.023, 0.099)
#: How often `same_inode` restarts retry for the old inode number before giving up.
SAME_INODE_ATTEMPTS = 16
REJECTED = "UnexpectedAdmissionError"

Mode = Literal["classic", "watcher"]

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class KubeletSimulatorError(Exception):
    """A simulator call that cannot be made (resource not registered, stream stopped, bad dir)."""


class RegistrationRefused(Exception):
    """A registration refused for the reason in the message (what the kubelet would answer)."""


@dataclass(frozen=True)
class Registration:
    """One successful registration, as the kubelet saw it.

    `endpoint` is the socket name relative to the device-plugin dir in classic mode and the
    absolute socket path in watcher mode. `options` come from `GetDevicePluginOptions` (the kubelet
    uses those); `request_options` are what `RegisterRequest` carried (classic mode only).
    """

    resource_name: str
    endpoint: str
    version: str
    options: dp.DevicePluginOptions
    mode: Mode
    time: float
    request_options: dp.DevicePluginOptions | None = None


@dataclass(frozen=True)
class SimPod:
    """A pod the simulated kubelet holds devices for (PodResources lists it)."""

    name: str
    resource: str
    device_ids: tuple[str, ...]
    running: bool = True
    namespace: str = "default"
    container: str = "main"


@dataclass(frozen=True)
class Admission:
    """One re-admission of a non-running pod after a start: admitted, or rejected and why."""

    pod: str
    admitted: bool
    reason: str  # "" or "UnexpectedAdmissionError"
    message: str
    after_serving: float  # seconds after kubelet.sock was served


@dataclass(frozen=True)
class AdvertisedDevice:
    """One device of a `ListAndWatch` snapshot."""

    id: str
    health: str
    numa_nodes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, device: dp.Device) -> AdvertisedDevice:
        return cls(
            id=device.ID,
            health=device.health,
            numa_nodes=tuple(node.ID for node in device.topology.nodes),
        )


def resource_name_problem(name: str) -> str | None:
    """Why the kubelet refuses `name` as an extended resource name, or None when it accepts it."""
    if "/" not in name:
        return f"resource name {name!r} has no domain prefix (expected prefix/name)"
    if "kubernetes.io/" in name:
        return f"resource name {name!r} uses the reserved kubernetes.io/ domain"
    if name.startswith("requests."):
        return f"resource name {name!r} must not start with 'requests.'"
    prefix, _, short = name.partition("/")
    if "/" in short:
        return f"resource name {name!r} has more than one '/'"
    # The kubelet validates "requests." + name as a qualified name, hence the shorter limit.
    if len(prefix) > 253 - len("requests.") or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
        return (
            f"resource name prefix {prefix!r} is not a DNS-1123 subdomain "
            "(lower-case letters, digits, '-' and '.')"
        )
    if len(short) > 63 or not _QUALIFIED_NAME.fullmatch(short):
        return (
            f"resource name part {short!r} must be 1-63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def rpc_reason(err: grpc.RpcError) -> str:
    code = err.code()
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {err.details()}"


class Endpoint:
    """The kubelet's connection to one registered plugin and its single ListAndWatch stream."""

    def __init__(
        self, resource: str, socket_path: Path, channel: grpc.Channel, stub: Any, mode: Mode
    ) -> None:
        self.resource = resource
        self.socket_path = socket_path
        self.channel = channel
        self.stub = stub
        self.mode = mode
        self.call: Any = None
        self.thread: threading.Thread | None = None
        self.stream_open = False
        # Set once the stream has ended: like the kubelet, the endpoint is then unusable.
        self.stopped = False
        self.closed = False
