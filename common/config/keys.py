"""The config format's key names (per level) and the patterns its values must match."""

from __future__ import annotations

import re

_TOP_KEYS = ("periodicUpdateInterval", "configList")
_ENTRY_KEYS = ("resourceName", "resourcePrefix", "rdmaHcaMax", "devices", "selectors")
# (attribute, key) pairs in the order of the Selectors dataclass
_SELECTOR_FIELDS = (
    ("vendors", "vendors"),
    ("device_ids", "deviceIDs"),
    ("drivers", "drivers"),
    ("if_names", "ifNames"),
    ("link_types", "linkTypes"),
    ("pci_addresses", "pciAddresses"),
    ("rdma_devices", "rdmaDevices"),
)
_SELECTOR_KEYS = tuple(key for _, key in _SELECTOR_FIELDS)
_WHERE = {
    "top": "at the top level",
    "entry": "inside each configList entry",
    "selectors": "inside selectors",
}
_KEYS_BY_LEVEL = {"top": _TOP_KEYS, "entry": _ENTRY_KEYS, "selectors": _SELECTOR_KEYS}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESOURCE_NAME = re.compile(r"[a-zA-Z0-9_]+")  # the Go plugin's rule
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HEX4 = re.compile(r"[0-9a-f]{4}")
_PCI_ADDRESS = re.compile(
    r"(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):(?P<dev>[0-9a-f]{1,2})\.(?P<fn>[0-7])"
)
_UNKNOWN_LINK_TYPE = re.compile(r"unknown[0-9]{1,5}")
