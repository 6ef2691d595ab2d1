"""What CDI mode needs from the container runtime (supervisor process: run, discover, status).

With `--use-cdi` the plugin answers Allocate with CDI device names and no device nodes. A runtime
without CDI support drops those names without a word, and the container starts with no RDMA
device at all: seen with containerd 1.6 and a real kubelet. The plugin cannot ask the
runtime what it supports, so it says so wherever an operator looks.
"""

from __future__ import annotations

CDI_RUNTIME_REQUIREMENT = (
    "CDI mode needs a CDI-capable container runtime: containerd >= 1.7 with enable_cdi "
    "(on by default from 2.0) or CRI-O >= 1.23; with containerd 1.6 pods silently get no "
    "RDMA devices"
)
