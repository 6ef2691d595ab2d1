"""Worker processes: one per resource, each serving the kubelet's device-plugin API over gRPC."""
