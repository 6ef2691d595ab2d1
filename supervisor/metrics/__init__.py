"""Prometheus metrics, health endpoints and the PodResources reader (supervisor process)."""
