"""The real-kubelet suite: an upstream kubelet and containerd on this machine (see docs/e2e-kubelet.md)."""
