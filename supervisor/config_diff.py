"""What a config reload changes, resource by resource (supervisor process).

A resource is identified by `<prefix>/<name>`: that is what the kubelet knows it by, so a changed
name or prefix is a removal plus an addition (a new worker and a new registration). A changed
`rdmaHcaMax` or selector keeps the worker, which only gets a new device set.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import Config, ResourceConfig


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[ResourceConfig, ...]
    removed: tuple[ResourceConfig, ...]
    changed: tuple[tuple[ResourceConfig, ResourceConfig], ...]  # (old, new)
    unchanged: tuple[ResourceConfig, ...]
    interval_changed: bool

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.interval_changed)


def diff_configs(old: Config | None, new: Config) -> ConfigDiff:
    before = {r.full_name: r for r in old.resources} if old else {}
    after = {r.full_name: r for r in new.resources}
    return ConfigDiff(
        added=tuple(r for key, r in after.items() if key not in before),
        removed=tuple(r for key, r in before.items() if key not in after),
        changed=tuple(
            (before[key], r) for key, r in after.items() if key in before and before[key] != r
        ),
        unchanged=tuple(r for key, r in after.items() if before.get(key) == r),
        interval_changed=old is None
        or old.periodic_update_interval != new.periodic_update_interval,
    )
