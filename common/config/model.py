"""The config's model: limits, link-type names and the frozen values a loaded config is made of.

Nothing here reads or checks anything (`common.config.validation` does); workers import these
types to receive an already validated `ResourceConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config.keys import _SELECTOR_FIELDS

DEFAULT_RESOURCE_PREFIX = "rdma"
DEFAULT_PERIODIC_UPDATE_INTERVAL = 60

#: Upper bound of rdmaHcaMax. 10000 devices make one ListAndWatchResponse of about 0.5 MB even with
#: 5-character IDs, "Unhealthy" and 8 NUMA nodes each: 8x below the kubelet's 4 MiB gRPC receive
#: limit (the arithmetic is in docs/configuration.md and checked by tests/unit/test_config.py).
MAX_RDMA_HCA_MAX = 10000
#: The Go plugin multiplies the interval by time.Second in an int64; larger values overflowed there.
MAX_PERIODIC_UPDATE_INTERVAL = 9_223_372_036
#: A ConfigMap holds at most 1 MiB; a bigger file is not a config someone wrote.
MAX_CONFIG_BYTES = 1024 * 1024
#: Prefix of the problem reported when the loader itself failed (tests assert it never appears).
INTERNAL_ERROR = "the config loader failed on this input (a bug: please report it)"
#: The kubelet's limit on the name part of an extended resource name.
MAX_RESOURCE_NAME_LENGTH = 63
#: The kubelet checks "requests." + "<prefix>/<name>" as a qualified name: its prefix part is a
#: DNS-1123 subdomain of at most 253 characters, so the prefix itself has 253 - 9 left.
MAX_RESOURCE_PREFIX_LENGTH = 253 - len("requests.")
#: Linux interface names are at most IFNAMSIZ - 1 bytes.
MAX_IF_NAME_BYTES = 15
#: RDMA device names are at most IB_DEVICE_NAME_MAX - 1 characters.
MAX_RDMA_DEVICE_NAME_LENGTH = 63

#: ARPHRD number -> link-type name, as the Go plugin's netlink library names them (the names its
#: `linkTypes` selector compared against). Discovery reports these names, or `unknown<N>`.
ARPHRD_NAMES: dict[int, str] = {
    1: "ether",
    2: "eether",
    3: "ax25",
    4: "pronet",
    5: "chaos",
    6: "ieee802",
    7: "arcnet",
    8: "atalk",
    15: "dlci",
    19: "atm",
    23: "metricom",
    24: "ieee1394",
    27: "eui64",
    32: "infiniband",
    256: "slip",
    257: "cslip",
    258: "slip6",
    259: "cslip6",
    260: "rsrvd",
    264: "adapt",
    270: "rose",
    271: "x25",
    272: "hwx25",
    280: "can",
    512: "ppp",
    513: "hdlc",
    516: "lapb",
    517: "ddcmp",
    518: "rawhdlc",
    519: "rawip",
    768: "ipip",
    769: "tunnel6",
    770: "frad",
    771: "skip",
    772: "loopback",
    773: "ltalk",
    774: "fddi",
    775: "bif",
    776: "sit",
    777: "ip/ddp",
    778: "gre",
    779: "pimreg",
    780: "hippi",
    781: "ash",
    782: "econet",
    783: "irda",
    784: "fcpp",
    785: "fcal",
    786: "fcpl",
    800: "tr",
    801: "ieee802.11",
    802: "ieee802.11/prism",
    803: "ieee802.11/radiotap",
    804: "ieee802.15.4",
    823: "ip6gre",
    824: "netlink",
    825: "6lowpan",
    826: "vsockmon",
    65534: "none",
    65535: "void",
}
#: Names a linkTypes selector accepts: the kernel's names, which discovery reports too.
LINK_TYPES: frozenset[str] = frozenset(ARPHRD_NAMES.values())

# Words people write for a link type that are not the kernel's name for it.
_LINK_TYPE_ALIASES = {
    "eth": "ether",
    "ethernet": "ether",
    "roce": "ether",
    "en": "ether",
    "ib": "infiniband",
    "ipoib": "infiniband",
    "tunnel": "ipip",
    "lo": "loopback",
    "wifi": "ieee802.11",
    "wlan": "ieee802.11",
}

# Vendor names people write instead of the PCI vendor ID.
_VENDOR_NAMES = {
    "mellanox": "15b3",
    "nvidia": "15b3",
    "intel": "8086",
    "broadcom": "14e4",
    "chelsio": "1425",
}


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

    def is_empty(self) -> bool:
        return not any(getattr(self, attr) for attr, _ in _SELECTOR_FIELDS)

    def to_json(self) -> dict[str, list[str]]:
        """The config-file form (camelCase keys), leaving out empty lists."""
        return {
            key: list(getattr(self, attr)) for attr, key in _SELECTOR_FIELDS if getattr(self, attr)
        }


@dataclass(frozen=True)
class ResourceConfig:
    resource_name: str
    resource_prefix: str
    rdma_hca_max: int
    selectors: Selectors
    #: Not part of the file: IDs above rdmaHcaMax that running pods still hold, which the worker
    #: keeps advertising until they are released (supervisor/held_ids.py). Empty when loaded.
    retained_ids: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        """The extended resource name the kubelet sees: `<prefix>/<name>`."""
        return f"{self.resource_prefix}/{self.resource_name}"

    def to_json(self) -> dict[str, Any]:
        """One configList entry in the file's format; `resource_from_json` reads it back."""
        return {
            "resourceName": self.resource_name,
            "resourcePrefix": self.resource_prefix,
            "rdmaHcaMax": self.rdma_hca_max,
            "selectors": self.selectors.to_json(),
        }


@dataclass(frozen=True)
class Config:
    periodic_update_interval: int  # seconds; 0 turns periodic rescans off
    resources: tuple[ResourceConfig, ...]
    # Things that load but deserve a log line (deprecated `devices`, dropped duplicates, ...).
    # Not part of equality: a reload that only changes warnings changes nothing.
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The file's format; loading it gives back an equal Config."""
        return {
            "periodicUpdateInterval": self.periodic_update_interval,
            "configList": [r.to_json() for r in self.resources],
        }


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
