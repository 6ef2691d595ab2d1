"""The plugin's config file: the Go plugin's format, read exactly, validated with better errors.

Runs in the supervisor (and the CLI). Workers receive an already validated ResourceConfig.

The format is the Go plugin's (`{"periodicUpdateInterval": N, "configList": [...]}`), decoded the
way Go's encoding/json decodes it: keys match without regard to case, wrong JSON types are errors,
an integer field takes only an integer literal. Where the Go plugin silently did something useless
(an unknown key ignored, `"0x15B3"` that never matches, a prefix the kubelet refuses at
registration) this loader refuses the file instead and says how to fix it. Every problem is
collected, each with its JSON path, so one run of `validate-config` shows them all.
docs/configuration.md is the operator's description of every rule here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_RESOURCE_PREFIX = "rdma"
DEFAULT_PERIODIC_UPDATE_INTERVAL = 60

#: Upper bound of rdmaHcaMax. 10000 devices make one ListAndWatchResponse of about 0.5 MB even with
#: 5-character IDs, "Unhealthy" and 8 NUMA nodes each: 8x below the kubelet's 4 MiB gRPC receive
#: limit (the arithmetic is in docs/configuration.md and checked by tests/test_config.py).
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


# --- public entry points -----------------------------------------------------------------------


def load_config_file(path: str | Path) -> Config:
    """Read and validate the config file at `path`; ConfigError names every problem."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"config file {_q(source)} does not exist; mount the ConfigMap (key "
                    "config.json) there or pass --config-file",
                )
            ],
            source,
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [ConfigProblem("", f"{_q(source)} is a folder; --config-file must name the JSON file")],
            source,
        ) from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            [ConfigProblem("", f"cannot read config file {_q(source)}: {reason}")], source
        ) from None
    return load_config_bytes(data, source)


def load_config_bytes(data: bytes, source: str = "<config>") -> Config:
    """Validate a config file's content; ConfigError names every problem."""
    obj = _decode(data, source)
    return parse_config(obj, source)


def parse_config(obj: object, source: str = "<config>") -> Config:
    """Validate an already parsed JSON value (dicts, lists, str, int, float, bool, None)."""
    ctx = _Context()
    try:
        config = _document(ctx, obj)
    except RecursionError:
        ctx.error("", "the value is nested too deeply to be a config")
        config = None
    except Exception as e:  # a loader bug must refuse the file, never crash the supervisor
        ctx.error("", f"{INTERNAL_ERROR}: {type(e).__name__}")
        config = None
    if ctx.problems or config is None:
        raise ConfigError(ctx.problems or [ConfigProblem("", "invalid config")], source)
    return config


def resource_from_json(obj: object) -> ResourceConfig:
    """Read back one `ResourceConfig.to_json()` value, with the same checks as the file."""
    ctx = _Context()
    resource = _resource(ctx, "", obj)
    if ctx.problems or resource is None:
        raise ConfigError(ctx.problems or [ConfigProblem("", "invalid resource")])
    return resource


# --- decoding ----------------------------------------------------------------------------------


class _HugeInt:
    """An integer literal too long to be a number any field takes (Python would refuse it)."""

    __slots__ = ("digits",)

    def __init__(self, digits: str) -> None:
        self.digits = digits


class _NonStandard:
    """NaN / Infinity: Python's json reads them, JSON (and Go) do not."""

    __slots__ = ("word",)

    def __init__(self, word: str) -> None:
        self.word = word


class _JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers keys given twice (Go silently keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    dups: list[str] = []
    for key, value in pairs:
        if key in obj:
            dups.append(key)
        obj[key] = value
    if dups:
        obj.duplicates = tuple(dups)
    return obj


def _parse_int(text: str) -> int | _HugeInt:
    # Python refuses int() of more than 4300 digits; nothing here needs more than 20.
    return _HugeInt(text) if len(text.lstrip("-")) > 30 else int(text)


def _decode(data: bytes, source: str) -> object:
    def fail(message: str) -> ConfigError:
        return ConfigError([ConfigProblem("", message)], source)

    if len(data) > MAX_CONFIG_BYTES:
        raise fail(
            f"the file is larger than {MAX_CONFIG_BYTES} bytes (a ConfigMap's limit); "
            "this is not a config file"
        )
    if not data.strip():
        raise fail(
            'the file is empty; it must hold a JSON object such as {"configList": '
            '[{"resourceName": "hca_shared_devices_a", "rdmaHcaMax": 1000, '
            '"selectors": {"vendors": ["15b3"]}}]}'
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise fail("the file is UTF-16 encoded; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        raise fail("the file starts with a UTF-8 byte-order mark, which JSON forbids; remove it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _line_col(data[: e.start].decode("utf-8", "replace"))
        raise fail(
            f"the file is not UTF-8: byte 0x{data[e.start]:02x} at line {line}, column {col} "
            f"(offset {e.start}); save the file as UTF-8"
        ) from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_int=_parse_int,
            parse_constant=_NonStandard,
        )
    except json.JSONDecodeError as e:
        raise fail(
            f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}{_json_hint(text, e.pos)}"
        ) from None
    except RecursionError:
        raise fail("the JSON is nested too deeply to be a config") from None
    except ValueError as e:  # defensive: any other refusal of the decoder
        raise fail(f"not valid JSON: {e}") from None


def _line_col(prefix: str) -> tuple[int, int]:
    line = prefix.count("\n") + 1
    return line, len(prefix) - (prefix.rfind("\n") + 1) + 1


#: A Kubernetes manifest rather than the JSON inside it.
_CONFIGMAP_YAML = re.compile(r"^\s*kind:\s*['\"]?ConfigMap\b|^\s*apiVersion:\s*\S", re.MULTILINE)


def _json_hint(text: str, pos: int) -> str:
    """A guess at the usual mistakes, so the operator need not know JSON's grammar by heart."""
    before = text[:pos].rstrip()
    here = text[pos : pos + 1]
    stripped = text.lstrip()
    if _CONFIGMAP_YAML.search(text) and not stripped.startswith(("{", "[")):
        return (
            ' (this is a whole ConfigMap in YAML; the config is its data["config.json"] value: '
            "kubectl -n kube-system get configmap rdma-devices -o jsonpath='{.data.config\\.json}')"
        )
    if re.match(r"[A-Za-z_]+\s*:", stripped) and not stripped.startswith(("{", "[")):
        return " (this looks like YAML; the config must be JSON)"
    if before.endswith(",") and here in ("}", "]"):
        return " (remove the comma before the closing bracket: JSON allows no trailing comma)"
    if here == "'":
        return " (JSON strings and keys need double quotes)"
    if text[pos : pos + 2] in ("//", "/*") or here == "#":
        return " (JSON has no comments; remove them)"
    if pos >= len(text.rstrip()):
        return " (the file ends early: is a closing } or ] missing?)"
    return ""


# --- validation --------------------------------------------------------------------------------


class _Context:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ConfigProblem(path, message))


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


def _document(ctx: _Context, obj: object) -> Config | None:
    if not isinstance(obj, dict):
        hint = ""
        if isinstance(obj, list):
            hint = '; if this is the list of resources, wrap it: {"configList": [...]}'
        ctx.error(
            "",
            f'the config must be a JSON object such as {{"configList": [...]}}, not '
            f"{_describe(obj)}{hint}",
        )
        return None
    fields = _fields(ctx, obj, "", "top")

    interval = DEFAULT_PERIODIC_UPDATE_INTERVAL
    if "periodicUpdateInterval" in fields:
        path, value = fields["periodicUpdateInterval"]
        got = _integer(
            ctx, path, value, "a whole number of seconds", f"{DEFAULT_PERIODIC_UPDATE_INTERVAL}"
        )
        if got is not None:
            if got < 0:
                ctx.error(
                    path,
                    f"must be >= 0 seconds, got {_num(got)}; use 0 to turn periodic rescans off, "
                    f"or leave it out for the default ({DEFAULT_PERIODIC_UPDATE_INTERVAL})",
                )
            elif got > MAX_PERIODIC_UPDATE_INTERVAL:
                ctx.error(
                    path,
                    f"{_num(got)} seconds is too large (at most {MAX_PERIODIC_UPDATE_INTERVAL}); "
                    "use 0 to turn periodic rescans off",
                )
            else:
                interval = got

    resources: list[ResourceConfig] = []
    if "configList" not in fields:
        ctx.error(
            "configList",
            'is required: add "configList": [ {"resourceName": ..., "selectors": {...}} ] '
            "with one entry per resource",
        )
    else:
        path, value = fields["configList"]
        entries = _list(ctx, path, value, "a list of resource objects")
        if entries is not None and not entries:
            ctx.error(path, "must not be empty: add at least one resource")
        owners: dict[str, int] = {}
        for i, entry in enumerate(entries or ()):
            entry_path = f"{path}[{i}]"
            resource = _resource(ctx, entry_path, entry)
            name = _raw_resource_name(entry)
            if name is not None:
                if name in owners:
                    ctx.error(
                        f"{entry_path}.resourceName",
                        f"{_q(name)} is already used by {path}[{owners[name]}]; resource names "
                        "must be unique, even with different prefixes, because each resource's "
                        "socket file is <resourceName>.sock",
                    )
                else:
                    owners[name] = i
            if resource is not None:
                resources.append(resource)

    if ctx.problems:
        return None
    return Config(interval, tuple(resources), tuple(ctx.warnings))


def _raw_resource_name(entry: object) -> str | None:
    """The resource name as written (for the uniqueness check, even if the entry has errors)."""
    if not isinstance(entry, dict):
        return None
    names = [v for k, v in entry.items() if isinstance(k, str) and _fold(k) == "resourcename"]
    name = names[-1] if names else None
    return name if isinstance(name, str) and name else None


def _resource(ctx: _Context, path: str, value: object) -> ResourceConfig | None:
    if not isinstance(value, dict):
        ctx.error(
            path,
            f'each configList entry must be an object such as {{"resourceName": "rdma_a", '
            f'"selectors": {{"vendors": ["15b3"]}}}}, not {_describe(value)}',
        )
        return None
    before = len(ctx.problems)
    fields = _fields(ctx, value, path, "entry")

    name = ""
    name_path = _join(path, "resourceName")
    if "resourceName" not in fields:
        ctx.error(name_path, 'is required: add "resourceName": "<name>" (letters, digits, _)')
    else:
        name_path, raw = fields["resourceName"]
        got = _string(ctx, name_path, raw)
        if got is not None:
            name = got
            _check_resource_name(ctx, name_path, name)

    prefix = DEFAULT_RESOURCE_PREFIX
    if "resourcePrefix" in fields:
        prefix_path, raw = fields["resourcePrefix"]
        got = _string(ctx, prefix_path, raw)
        if got:  # "" means the default, as in the Go plugin
            prefix = got
            _check_resource_prefix(ctx, prefix_path, prefix)

    hca_max = 0
    if "rdmaHcaMax" not in fields:
        ctx.warn(
            _join(path, "rdmaHcaMax"),
            "not set, so this resource advertises 0 devices (as the Go plugin does); "
            "set it to the number of pods that may share the devices",
        )
    else:
        max_path, raw = fields["rdmaHcaMax"]
        count = _integer(ctx, max_path, raw, "a whole number of devices", "1000")
        if count is not None:
            if count < 0:
                ctx.error(max_path, f"must be >= 0, got {_num(count)} (0 advertises no devices)")
            elif count > MAX_RDMA_HCA_MAX:
                ctx.error(
                    max_path,
                    f"{_num(count)} is too large: at most {MAX_RDMA_HCA_MAX}, so that one "
                    "ListAndWatch message stays far below the kubelet's 4 MiB gRPC limit",
                )
            else:
                hca_max = count

    # None: present but unusable (already reported), so "missing" would only add noise.
    selectors = Selectors()
    selectors_given: bool | None = False
    if "selectors" in fields:
        sel_path, raw = fields["selectors"]
        parsed = _selectors(ctx, sel_path, raw)
        selectors_given = None
        if parsed is not None:
            selectors, selectors_given = parsed
    devices: tuple[str, ...] = ()
    devices_given: bool | None = False
    if "devices" in fields:
        dev_path, raw = fields["devices"]
        items = _list(ctx, dev_path, raw, 'a list of interface names, e.g. ["ib0"]')
        devices_given = None
        if items is not None:
            devices_given = bool(items)
            devices = _values(ctx, dev_path, items, _if_name)

    # The Go plugin's rule: a selector with at least one non-empty list, or a non-empty
    # `devices`, but not both. Judged on what was written, so a bad value is not also "missing".
    if selectors_given and devices_given:
        ctx.error(
            path,
            'has both "selectors" and "devices"; use only "selectors" (move the names of '
            '"devices" into "selectors": {"ifNames": [...]})',
        )
    elif selectors_given is False and devices_given is False:
        ctx.error(
            path,
            'selects no devices: add "selectors" with at least one non-empty list, e.g. '
            '"selectors": {"vendors": ["15b3"]} (the Go plugin refused this too)',
        )
    elif devices_given and not selectors_given:
        ctx.warn(
            _join(path, "devices"),
            'is deprecated; write "selectors": {"ifNames": [...]} instead (same meaning)',
        )
        selectors = Selectors(if_names=devices)

    if len(ctx.problems) > before:
        return None
    return ResourceConfig(name, prefix, hca_max, selectors)


def _check_resource_name(ctx: _Context, path: str, name: str) -> None:
    if not _RESOURCE_NAME.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[a-zA-Z0-9_]", c)})
        what = (
            "is empty"
            if not name
            else f"has characters other than letters, digits and _: {_q(''.join(bad))}"
        )
        ctx.error(path, f"{_q(name)} {what}; use only a-z, A-Z, 0-9 and _ (e.g. hca_shared_a)")
        return
    if len(name) > MAX_RESOURCE_NAME_LENGTH:
        ctx.error(
            path,
            f"is {len(name)} characters; the kubelet accepts at most {MAX_RESOURCE_NAME_LENGTH}",
        )
    if name.startswith("_") or name.endswith("_"):
        ctx.error(
            path,
            f"{_q(name)} must start and end with a letter or digit: the kubelet refuses other "
            f"names at registration (try {_q(name.strip('_') or 'rdma_a')})",
        )


def _check_resource_prefix(ctx: _Context, path: str, prefix: str) -> None:
    reasons: list[str] = []
    if len(prefix) > MAX_RESOURCE_PREFIX_LENGTH:
        reasons.append(f"it is longer than {MAX_RESOURCE_PREFIX_LENGTH} characters")
    if not all(_DNS_LABEL.fullmatch(label) for label in prefix.split(".")):
        reasons.append(
            "it is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'; each "
            "dot-separated part starts and ends with a letter or digit)"
        )
    if prefix.endswith("kubernetes.io"):
        reasons.append("the kubernetes.io domain is reserved for Kubernetes' own resources")
    if prefix.startswith("requests."):
        reasons.append('names starting with "requests." are reserved for quota')
    if not reasons:
        return
    message = f"{_q(prefix)} is refused by the kubelet at registration: {'; '.join(reasons)}"
    fixed = re.sub(r"[^a-z0-9.-]+", "-", prefix.lower())
    fixed = ".".join(part.strip("-") for part in fixed.split(".") if part.strip("-"))
    if fixed and fixed != prefix and _prefix_ok(fixed):
        message += f"; try {_q(fixed)}"
    ctx.error(path, message)


def _prefix_ok(prefix: str) -> bool:
    return (
        len(prefix) <= MAX_RESOURCE_PREFIX_LENGTH
        and all(_DNS_LABEL.fullmatch(label) for label in prefix.split("."))
        and not prefix.endswith("kubernetes.io")
        and not prefix.startswith("requests.")
    )


def _selectors(ctx: _Context, path: str, value: object) -> tuple[Selectors, bool | None] | None:
    """The parsed selectors and whether any list was written non-empty (None: can't tell, a
    list was of the wrong type)."""
    if not isinstance(value, dict):
        ctx.error(
            path,
            f'must be an object such as {{"vendors": ["15b3"], "ifNames": ["ib0"]}}, not '
            f"{_describe(value)}",
        )
        return None
    fields = _fields(ctx, value, path, "selectors")
    parsers: dict[str, Callable[[str], tuple[str | None, str]]] = {
        "vendors": _vendor,
        "deviceIDs": _device_id,
        "drivers": _driver,
        "ifNames": _if_name,
        "linkTypes": _link_type,
        "pciAddresses": _pci_address,
        "rdmaDevices": _rdma_device,
    }
    lists: dict[str, tuple[str, ...]] = {}
    given: bool | None = False
    broken = False
    for attr, key in _SELECTOR_FIELDS:
        if key not in fields:
            continue
        key_path, raw = fields[key]
        items = _list(ctx, key_path, raw, f"a list of strings, e.g. {_EXAMPLES[key]}")
        if items is None:
            broken = True
            continue
        given = given or bool(items)
        lists[attr] = _values(ctx, key_path, items, parsers[key])
    return Selectors(**lists), (given or None) if broken else given


_EXAMPLES = {
    "vendors": '["15b3"]',
    "deviceIDs": '["1017"]',
    "drivers": '["mlx5_core"]',
    "ifNames": '["ib0"]',
    "linkTypes": '["infiniband"]',
    "pciAddresses": '["0000:3b:00.0"]',
    "rdmaDevices": '["mlx5_0"]',
}


def _values(
    ctx: _Context,
    path: str,
    items: list[Any],
    parse: Callable[[str], tuple[str | None, str]],
) -> tuple[str, ...]:
    """Check and normalise each string of a selector list; duplicates are dropped with a warning."""
    out: list[str] = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        text = _string(ctx, item_path, item)
        if text is None:
            continue
        if text == "":
            ctx.error(item_path, "is an empty string; remove it or write a value")
            continue
        if any(c.isspace() for c in text):
            ctx.error(
                item_path, f"{_q(text)} contains white space, which no such name has; remove it"
            )
            continue
        normalised, why = parse(text)
        if normalised is None:
            ctx.error(item_path, why)
        elif normalised in out:
            ctx.warn(item_path, f"{_q(text)} repeats an earlier value; ignored")
        else:
            out.append(normalised)
    return tuple(out)


def _pci_id(text: str, what: str) -> tuple[str | None, str]:
    lowered = text.lower()
    digits = lowered[2:] if lowered.startswith("0x") else lowered
    if _HEX4.fullmatch(digits):
        return digits, ""
    hint = f"a PCI {what} is 4 hex digits, e.g. {'15b3' if what == 'vendor ID' else '1017'}"
    if ":" in text and all(_HEX4.fullmatch(p.lower().removeprefix("0x")) for p in text.split(":")):
        vendor, _, device = lowered.partition(":")
        hint = (
            f"this looks like vendor:device; put {_q(vendor)} in vendors and {_q(device)} in "
            "deviceIDs"
        )
    elif what == "vendor ID" and lowered in _VENDOR_NAMES:
        hint = f"write the vendor's PCI ID: {_q(_VENDOR_NAMES[lowered])}"
    elif re.fullmatch(r"[0-9a-f]{1,3}", digits):
        hint += f" (pad with zeros: {_q(digits.zfill(4))})"
    return None, f"{_q(text)} is not a PCI {what}: {hint} (0x and upper case are accepted)"


def _vendor(text: str) -> tuple[str | None, str]:
    return _pci_id(text, "vendor ID")


def _device_id(text: str) -> tuple[str | None, str]:
    return _pci_id(text, "device ID")


def _driver(text: str) -> tuple[str | None, str]:
    if "/" in text or "\0" in text:
        return None, f"{_q(text)} is not a driver name (it contains '/'); write e.g. mlx5_core"
    return text, ""


def _if_name(text: str) -> tuple[str | None, str]:
    if _PCI_ADDRESS.fullmatch(text.lower()):
        return None, (
            f"{_q(text)} is a PCI address, not an interface name; select it with "
            f'"selectors": {{"pciAddresses": [{_q(text)}]}} instead'
        )
    if "/" in text or ":" in text or "\0" in text or text in (".", ".."):
        return None, f"{_q(text)} is not a Linux interface name (no '/', ':' or . / ..)"
    if len(text.encode("utf-8")) > MAX_IF_NAME_BYTES:
        return None, (
            f"{_q(text)} is longer than {MAX_IF_NAME_BYTES} bytes, so no Linux interface has "
            "this name"
        )
    return text, ""


def _link_type(text: str) -> tuple[str | None, str]:
    lowered = text.lower()
    if lowered in LINK_TYPES or _UNKNOWN_LINK_TYPE.fullmatch(lowered):
        return lowered, ""
    suggestion = _LINK_TYPE_ALIASES.get(lowered)
    if suggestion is None:
        import difflib  # only for a suggestion in an error: workers never pay for it

        close = difflib.get_close_matches(lowered, sorted(LINK_TYPES), n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    if suggestion is not None:
        return None, (
            f"{_q(text)} is not a kernel link type; did you mean {_q(suggestion)}? "
            '(Ethernet and RoCE ports are "ether", InfiniBand ports are "infiniband")'
        )
    return None, (
        f'{_q(text)} is not a kernel link type: use "ether" (Ethernet, RoCE) or "infiniband", '
        "or another name from /sys/class/net/<if>/type as ip link shows it"
    )


def _pci_address(text: str) -> tuple[str | None, str]:
    match = _PCI_ADDRESS.fullmatch(text.lower())
    if match is None:
        return None, (
            f"{_q(text)} is not a PCI address: write domain:bus:device.function, e.g. "
            '"0000:3b:00.0" (as lspci -D shows it; the domain may be left out)'
        )
    device = int(match["dev"], 16)
    if device > 0x1F:
        return None, f"{_q(text)} is not a PCI address: the device number is at most 1f"
    domain = int(match["domain"] or "0", 16)
    return f"{domain:04x}:{int(match['bus'], 16):02x}:{device:02x}.{match['fn']}", ""


def _rdma_device(text: str) -> tuple[str | None, str]:
    if "/" in text or "\0" in text:
        return None, f"{_q(text)} is not an RDMA device name (it contains '/'); write e.g. mlx5_0"
    if len(text) > MAX_RDMA_DEVICE_NAME_LENGTH:
        return None, (
            f"{_q(text)} is longer than {MAX_RDMA_DEVICE_NAME_LENGTH} characters, so no RDMA "
            "device has this name"
        )
    return text, ""


# --- JSON shape helpers ------------------------------------------------------------------------


def _fold(key: str) -> str:
    """Go's encoding/json key folding: ASCII case, plus the two non-ASCII letters that fold
    onto ASCII ones (KELVIN SIGN -> k, LONG S -> s)."""
    return "".join(
        c.lower() if c.isascii() else {"\u212a": "k", "\u017f": "s"}.get(c, c) for c in key
    )


def _fields(
    ctx: _Context, obj: Mapping[Any, Any], path: str, level: str
) -> dict[str, tuple[str, Any]]:
    """Map each known key (canonical spelling) to (its path, its value), matching keys as Go does.

    Unknown keys, and a key given twice (exactly or differing in case), are errors.
    """
    known = _KEYS_BY_LEVEL[level]
    by_fold = {_fold(k): k for k in known}
    found: dict[str, tuple[str, Any]] = {}
    spelled: dict[str, str] = {}
    for key in getattr(obj, "duplicates", ()):
        ctx.error(
            _join(path, key),
            "is given twice in the same object; keep one (the Go plugin silently used the last)",
        )
    for key, value in obj.items():
        if not isinstance(key, str):
            ctx.error(path, f"has a key that is not a string: {_q(repr(key))}")
            continue
        canonical = by_fold.get(_fold(key))
        if canonical is None:
            ctx.error(_join(path, key), _unknown_key(key, level))
            continue
        if canonical in found:
            ctx.error(
                _join(path, key),
                f"is given twice ({_q(spelled[canonical])} and {_q(key)}: keys match without "
                "regard to case); keep one",
            )
        found[canonical] = (_join(path, canonical), value)
        spelled[canonical] = key
    return found


def _unknown_key(key: str, level: str) -> str:
    folded = _fold(key)
    for other, keys in _KEYS_BY_LEVEL.items():
        for k in keys:
            if other != level and _fold(k) == folded:
                return f"unknown key {_q(key)} here; {_q(k)} belongs {_WHERE[other]}"
    known = _KEYS_BY_LEVEL[level]
    folded_known = {_fold(k): k for k in known}
    import difflib  # only for a suggestion in an error: workers never pay for it

    close = difflib.get_close_matches(folded, list(folded_known), n=1, cutoff=0.6)
    if close:
        return f"unknown key {_q(key)}; did you mean {_q(folded_known[close[0]])}?"
    return f"unknown key {_q(key)}; valid keys {_WHERE[level]}: {', '.join(known)}"


def _join(path: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_q(key)}]"


def _q(text: str, limit: int = 80) -> str:
    """Quote a value from the file for a message: JSON syntax, ASCII only, never huge."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text)


def _num(n: int) -> str:
    # str() of an int with more than 4300 digits raises; such numbers need no digits shown.
    if abs(n) < 10**30:
        return str(n)
    return f"{'-' if n < 0 else ''}(a number of about {int(n.bit_length() * 0.30103) + 1} digits)"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the number {_num(value)}"
    if isinstance(value, _HugeInt):
        return f"a {len(value.digits)}-digit number"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, _NonStandard):
        return f"{value.word} (not valid JSON)"
    if isinstance(value, str):
        return f"the string {_q(value, 40)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__} (not a JSON value)"


def _null_hint(value: object) -> str:
    return "; remove the key to use the default" if value is None else ""


def _integer(ctx: _Context, path: str, value: object, what: str, example: str) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    message = f"must be {what} (e.g. {example}), not {_describe(value)}"
    if isinstance(value, _HugeInt):
        message = f"{_describe(value)} is far out of range"
    elif isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        if value.is_integer():
            message += f"; write {int(value)} without a decimal point or exponent"
        else:
            message += "; fractions are not allowed"
    elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        message += f"; remove the quotes: {value.strip()}"
    ctx.error(path, message + _null_hint(value))
    return None


def _string(ctx: _Context, path: str, value: object) -> str | None:
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**30:
            hint = f"; put it in double quotes: {json.dumps(str(value))}"
        ctx.error(path, f"must be a string, not {_describe(value)}{hint}")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        ctx.error(path, "contains a \\u escape of half a surrogate pair, which is not a character")
        return None
    return value


def _list(ctx: _Context, path: str, value: object, what: str) -> list[Any] | None:
    if isinstance(value, list):
        return value
    hint = ""
    if value is None:
        hint = "; write [] for an empty list, or remove the key"
    elif isinstance(value, str):
        hint = f"; wrap it in brackets: [{_q(value)}]"
    ctx.error(path, f"must be {what}, not {_describe(value)}{hint}")
    return None
