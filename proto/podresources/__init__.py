"""The kubelet PodResources API, for learning which pod holds which device."""
