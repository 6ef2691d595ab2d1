"""The plugin's config file: the Go plugin's format, read exactly, validated with better errors.

Runs in the supervisor (and the CLI). Workers receive an already validated ResourceConfig.
INTERFACE ONLY for now: the loader is being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_RESOURCE_PREFIX = "rdma"
DEFAULT_PERIODIC_UPDATE_INTERVAL = 60


@dataclass(frozen=True)
class Selectors:
    """Normalised selector lists; an empty tuple does not filter."""

    vendors: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()
    drivers: tuple[str, ...] = ()
    if_names: tuple[str, ...] = ()
    link_types: tuple[str, ...] = ()
    pci_addresses: tuple[str, ...] = ()
    rdma_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceConfig:
    resource_name: str
    resource_prefix: str
    rdma_hca_max: int
    selectors: Selectors

    @property
    def full_name(self) -> str:
        """The extended resource name the kubelet sees: `<prefix>/<name>`."""
        return f"{self.resource_prefix}/{self.resource_name}"


@dataclass(frozen=True)
class Config:
    periodic_update_interval: int  # seconds; 0 turns periodic rescans off
    resources: tuple[ResourceConfig, ...]


@dataclass(frozen=True)
class ConfigProblem:
    path: str  # JSON path, e.g. "configList[1].rdmaHcaMax"; "" for the whole document
    message: str  # what is wrong and how to fix it

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The config was refused; `problems` names every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__("\n".join(str(p) for p in self.problems))


def load_config_file(path: str | Path) -> Config:
    raise NotImplementedError


def load_config_bytes(data: bytes, source: str = "<config>") -> Config:
    raise NotImplementedError
