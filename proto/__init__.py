"""The kubelet's gRPC APIs: `.proto` files and the Python modules generated from them."""
