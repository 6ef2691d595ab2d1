"""Where a worker binds its gRPC socket before linking it to its public name (worker and
supervisor).

gRPC unlinks its own unix path when a server stops (and before it binds), so a worker never binds
its public name: it binds a private one and hard-links the public name to it. In the kubelet's
device-plugin folder the private name lives in a hidden subfolder, which a restarting kubelet's
wipe (every *socket* in the folder; folders are skipped) leaves alone: the worker then only
re-links its public name to the server it already runs. In the plugins-registry folder (watcher
mode, never wiped) it is a dot name beside the public one, removed once linked; the plugin
watcher ignores dot names. The supervisor removes a killed worker's private name.
"""

from __future__ import annotations

import os

#: The hidden subfolder of the device-plugin folder that holds the private names.
KEPT_DIR = ".rdma-shared-dp"


def private_socket(folder: str, pid: int, keep: bool) -> str:
    """The private name of worker `pid` for a public socket in `folder`; `keep`: it stays for
    the server's life (the device-plugin folder), else it is removed once linked."""
    if keep:
        return os.path.join(folder, KEPT_DIR, f".{pid}.sock")
    return os.path.join(folder, f".{pid}.sock")


def private_sockets(folder: str, pid: int) -> list[str]:
    """Both places worker `pid` may have left a private name in `folder`."""
    return [private_socket(folder, pid, keep) for keep in (False, True)]
