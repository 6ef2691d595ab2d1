"""Simulated node parts for the demo and the tests: a sysfs tree builder and a kubelet simulator."""
