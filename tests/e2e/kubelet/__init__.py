"""The real-kubelet suite: upstream kubelet and containerd on this machine (docs/e2e-kubelet.md)."""
