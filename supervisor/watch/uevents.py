"""Kernel uevents as hints that the device set may have changed (supervisor process).

The hint only triggers a debounced full sysfs rescan; the rescan is the truth, so a missed or
duplicated event costs nothing. The `kernel` source reads uevents straight from the netlink
socket, which works in containers where udevd does not run; `udev` waits for udevd's processed
events instead (useful when rules rename devices). pyudev needs libudev at run time.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

SUBSYSTEMS = ("pci", "net", "infiniband", "infiniband_verbs", "infiniband_mad", "auxiliary")


class UeventMonitor:
    """Wraps a pyudev netlink monitor: `fileno()` for the poller, `drain()` when readable."""

    def __init__(self, source: str = "kernel") -> None:
        import pyudev

        self._monitor: Any = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        for subsystem in SUBSYSTEMS:
            self._monitor.filter_by(subsystem)
        self._monitor.start()

    def fileno(self) -> int:
        fd: int = self._monitor.fileno()
        return fd

    def drain(self) -> list[str]:
        """Read every pending event; returns `action subsystem sys_name` strings for logging."""
        events: list[str] = []
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                return events
            events.append(f"{device.action} {device.subsystem} {device.sys_name}")


def open_monitor(source: str) -> UeventMonitor | None:
    """A monitor, or None (logged) where netlink or libudev is unavailable: rescans still run."""
    try:
        return UeventMonitor(source)
    except Exception as err:  # pyudev raises ImportError, OSError or its own errors
        log.warning(
            "uevent monitor unavailable (source=%s): %s; device changes are seen by the "
            "periodic rescan only, check that the pod runs with hostNetwork and libudev is present",
            source,
            err,
        )
        return None
