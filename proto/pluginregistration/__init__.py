"""The kubelet plugin-watcher registration API; imported by the worker in watcher mode."""
