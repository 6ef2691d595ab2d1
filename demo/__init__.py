"""`rdma-shared-dp demo`: the real plugin on a simulated node, narrated (`python -m demo`)."""
