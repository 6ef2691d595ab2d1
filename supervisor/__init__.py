"""The supervisor: the one process the DaemonSet starts. It never imports grpc."""
