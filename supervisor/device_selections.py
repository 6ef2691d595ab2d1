"""From a sysfs scan to each resource's matched device set, and what changed (supervisor process).

A full scan is the truth; this module only remembers the last one and each resource's selection,
so the loop sends a `devices` message to exactly the resources whose set or health moved.
Candidates are frozen values that carry port states, operstates and char-device presence, so
plain equality covers "health changed" too. `moved` keeps apart the resources whose device *set*
changed (a device came or went), which is what justifies restarting a worker in backoff early;
a health change alone does not (a flapping port must not defeat the backoff).
"""

from __future__ import annotations

from collections.abc import Iterable

from common.config import ResourceConfig
from common.devices import Candidate, Scan
from common.selectors import select


def healthy_count(devices: Iterable[Candidate]) -> int:
    return sum(1 for d in devices if d.usable and d.healthy)


def device_names(devices: Iterable[Candidate]) -> frozenset[str]:
    """A device set without its health: which functions, not in what state."""
    return frozenset(d.name for d in devices)


class DeviceSelections:
    def __init__(self) -> None:
        self.scan = Scan()
        self._selected: dict[str, tuple[Candidate, ...]] = {}  # resource name -> matched set
        #: Names whose matched device set (not just health) changed in the last update/reselect.
        self.moved: set[str] = set()

    def selected(self, resource_name: str) -> tuple[Candidate, ...]:
        return self._selected.get(resource_name, ())

    def update(self, scan: Scan, resources: Iterable[ResourceConfig]) -> set[str]:
        """Take a new scan; the names of resources whose matched set or health changed."""
        self.scan = scan
        return self.reselect(resources)

    def reselect(self, resources: Iterable[ResourceConfig]) -> set[str]:
        """Select again from the last scan (after a config change); names whose set changed.

        Resources no longer configured are forgotten and do not count as changed.
        """
        before = self._selected
        self._selected = {
            r.resource_name: select(r, self.scan.candidates).selected for r in resources
        }
        self.moved = {
            name
            for name, devices in self._selected.items()
            if name not in before or device_names(before[name]) != device_names(devices)
        }
        return {
            name
            for name, devices in self._selected.items()
            if name not in before or before[name] != devices
        }
