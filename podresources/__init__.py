"""The PodResources poller: a small gRPC client process the supervisor starts, so the
supervisor itself never loads grpc. Not a worker: it serves no resource."""
