"""Reading one network or RDMA device's facts from sysfs (supervisor and CLI).

`DeviceReader` adds to `SysfsReader` the fields of a PCI function (IDs, driver, NUMA node), of a
netdev (link type, operstate), of an RDMA device (ports) and its char devices (`uverbsN`,
`umadN`, `issmN`, `ucmN`, with major:minor and whether the node exists under `<host-root>/dev`).
Every value is checked against `common.sysfs_domains` before it leaves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from common.config import ARPHRD_NAMES
from common.devices import CHAR_DEVICE_KINDS, MAX_NUMA_NODES, CharDevice, NetDev, Port, RdmaDevice
from common.sysfs_domains import (
    MAX_CHAR_DIGITS,
    MAX_DRIVER_NAME,
    MAX_LINK_TYPE,
    MAX_MAJOR,
    MAX_MINOR,
    MAX_PORT,
    MAX_RDMA_NAME,
    MAX_WORD,
    OPERSTATES,
)
from common.sysfs_reader import (
    SysfsReader,
    is_name,
    is_number,
    is_utf8,
    parse_hex,
    parse_int,
    shown,
)

# Link type names come from the config's table, so what discovery reports is what a
# `linkTypes` selector can name (768 is `ipip`, as iproute2 and today's plugin call it).
_LINK_TYPES = ARPHRD_NAMES

# Folder beside `infiniband/` -> kinds it holds. Order of kinds follows CHAR_DEVICE_KINDS.
_CHAR_FOLDERS: dict[str, tuple[str, ...]] = {
    "infiniband_verbs": ("uverbs",),
    "infiniband_mad": ("umad", "issm"),
    "infiniband_cm": ("ucm",),
}
_CHAR_NAME = re.compile(r"^(uverbs|umad|issm|ucm)([0-9]+)$")
_KIND_ORDER = {kind: i for i, kind in enumerate(CHAR_DEVICE_KINDS)}


@dataclass
class Owner:
    """A device folder holding `infiniband/`, with its listing and its char devices by folder."""

    rel: str
    names: list[str]
    char_index: dict[str, dict[str, list[CharDevice]] | None] = field(default_factory=dict)


class DeviceReader(SysfsReader):
    """Field readers shared by every kind of device discovery finds."""

    def __init__(self, host_root: str) -> None:
        super().__init__(host_root)
        self.dev_nodes: frozenset[str] = frozenset()
        # folder -> ibdev -> char devices of sys/class/<folder>; filled on first need.
        self._class_index: dict[str, dict[str, list[CharDevice]]] = {}

    def hex_id(self, rel: str) -> str | None:
        text = self.read(rel)
        if text is None:
            return None
        value = parse_hex(text)
        if value is None or not 0 <= value <= 0xFFFF:
            self.problem("bad_value", rel, f"{text!r} is not a 16-bit hex ID")
            return None
        return f"{value:04x}"

    def driver(self, rel: str) -> str:
        path = self.prefix + rel
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            return ""  # unbound function
        except OSError as err:
            if os.path.lexists(path):
                self.problem("not_a_link", rel, "driver is not a symlink; treated as unbound")
            else:
                self.problem("unreadable", rel, f"cannot read link: {err.strerror or err}")
            return ""
        name = os.path.basename(target.rstrip("/"))
        if not name or not is_utf8(name) or not is_name(name):
            self.problem("bad_value", rel, "driver link has no usable name; treated as unbound")
            return ""
        if len(name) > MAX_DRIVER_NAME:
            self.problem(
                "out_of_range",
                rel,
                f"driver name is {len(name)} characters, more than {MAX_DRIVER_NAME}; "
                "treated as unbound",
            )
            return ""
        return name

    def numa_node(self, rel: str) -> int:
        text = self.read(rel, optional=True)
        if text is None:
            return -1
        value = parse_int(text)
        if value is None:
            self.problem("bad_value", rel, f"NUMA node {shown(text)} is not a number; using -1")
            return -1
        if not -1 <= value < MAX_NUMA_NODES:
            self.problem(
                "out_of_range",
                rel,
                f"NUMA node {shown(text)} is outside -1..{MAX_NUMA_NODES - 1}; using -1",
            )
            return -1
        return value

    def netdev(self, rel: str, name: str) -> NetDev | None:
        ok, type_text = self.read_in(rel, "type", "netdev")
        if not ok:
            return None
        link_type = ""  # matches no linkTypes selector: safer than guessing
        if type_text is not None:
            number = parse_int(type_text)
            if number is None:
                self.problem(
                    "bad_value", f"{rel}/type", f"link type {shown(type_text)} is not a number"
                )
            elif not 0 <= number <= MAX_LINK_TYPE:
                self.problem(
                    "out_of_range", f"{rel}/type", f"link type {shown(type_text)} is not 16 bits"
                )
            else:
                link_type = _LINK_TYPES.get(number, f"unknown{number}")
        operstate = self.read(f"{rel}/operstate")
        if operstate is not None and operstate not in OPERSTATES:
            self.problem(
                "bad_value", f"{rel}/operstate", f"operstate {shown(operstate)} is not RFC 2863"
            )
            operstate = None
        return NetDev(name=name, link_type=link_type, operstate=operstate or "unknown")

    def rdma_device(self, owner: Owner, name: str) -> RdmaDevice | None:
        rel = f"{owner.rel}/infiniband/{name}"
        entries = self.listdir(f"{rel}/ports")
        if entries is None and not os.path.lexists(self.prefix + rel + "/ports"):
            if not self.is_dir(rel, "RDMA device"):
                return None
            self.problem("missing_file", f"{rel}/ports", "ports folder is missing")
        numbers = []
        for entry in entries or ():
            if not is_number(entry):
                self.problem("bad_value", f"{rel}/ports/{entry}", "port folder is not a number")
            elif len(entry) > 3 or int(entry) > MAX_PORT:
                self.problem(
                    "out_of_range", f"{rel}/ports/{shown(entry)}", f"port number above {MAX_PORT}"
                )
            else:
                numbers.append(int(entry))
        ports: list[Port] = []
        for number in sorted(numbers):
            port = self.port(f"{rel}/ports/{number}", number)
            if port is not None:
                ports.append(port)
        return RdmaDevice(
            name=name, ports=tuple(ports), char_devices=self.char_devices(owner, name)
        )

    def port(self, rel: str, number: int) -> Port | None:
        ok, state_text = self.read_in(rel, "state", "port")
        if not ok:
            return None
        state = "UNKNOWN"  # not ACTIVE, so an unreadable port never counts as healthy
        if state_text is not None:
            # "4: ACTIVE"; tolerate a bare word from odd drivers.
            word = state_text.partition(":")[2].strip() if ":" in state_text else state_text
            if (
                word
                and len(word) <= MAX_WORD
                and word.replace("_", "").isascii()
                and (word.replace("_", "").isalpha())
            ):
                state = word.upper()
            else:
                self.problem(
                    "bad_value", f"{rel}/state", f"port state {shown(state_text)} unparsable"
                )
        link_layer = self.read(f"{rel}/link_layer") or ""
        if link_layer and (len(link_layer) > MAX_WORD or not is_name(link_layer)):
            self.problem(
                "bad_value", f"{rel}/link_layer", f"link layer {shown(link_layer)} unparsable"
            )
            link_layer = ""
        return Port(number=number, state=state, link_layer=link_layer)

    # -- char devices ---------------------------------------------------------------------------

    def char_devices(self, owner: Owner, ibdev: str) -> tuple[CharDevice, ...]:
        found: list[CharDevice] = []
        for folder in _CHAR_FOLDERS:
            by_dev = self.owner_folder(owner, folder)
            if by_dev is None:
                by_dev = self.class_folder(folder)
            found.extend(by_dev.get(ibdev, ()))
        found.sort(key=_char_sort_key)
        return tuple(found)

    def owner_folder(self, owner: Owner, folder: str) -> dict[str, list[CharDevice]] | None:
        if folder not in owner.char_index:
            index = None
            if folder in owner.names:
                rel = f"{owner.rel}/{folder}"
                names = self.listdir(rel)
                index = None if names is None else self.index(rel, names, folder)
            owner.char_index[folder] = index
        return owner.char_index[folder]

    def class_folder(self, folder: str) -> dict[str, list[CharDevice]]:
        if folder not in self._class_index:
            rel = f"sys/class/{folder}"
            self._class_index[folder] = self.index(rel, self.listdir(rel) or [], folder)
        return self._class_index[folder]

    def index(self, rel: str, names: list[str], folder: str) -> dict[str, list[CharDevice]]:
        """ibdev -> char devices, for the char-device entries of one folder."""
        by_dev: dict[str, list[CharDevice]] = {}
        kinds = _CHAR_FOLDERS[folder]
        for name in names:
            match = _CHAR_NAME.match(name)
            if match is None or match.group(1) not in kinds:
                continue  # abi_version, the per-device cm folder, ...
            entry = f"{rel}/{name}"
            if len(match.group(2)) > MAX_CHAR_DIGITS:
                self.problem("out_of_range", entry, "char device number has too many digits")
                continue
            ok, ibdev = self.read_in(entry, "ibdev", "char device")
            if not ok or not ibdev:
                continue
            if not self.name_ok(f"{entry}/ibdev", ibdev, MAX_RDMA_NAME, "RDMA device"):
                continue
            major, minor = self.dev_numbers(f"{entry}/dev")
            by_dev.setdefault(ibdev, []).append(
                CharDevice(
                    kind=match.group(1),
                    name=name,
                    major=major,
                    minor=minor,
                    present=name in self.dev_nodes,
                )
            )
        return by_dev

    def dev_numbers(self, rel: str) -> tuple[int | None, int | None]:
        text = self.read(rel)
        if text is None:
            return None, None
        major, sep, minor = text.partition(":")
        if sep and is_number(major) and is_number(minor):
            if len(major) > 4 or len(minor) > 7 or int(major) > MAX_MAJOR or int(minor) > MAX_MINOR:
                self.problem(
                    "out_of_range",
                    rel,
                    f"device number {shown(text)} is outside {MAX_MAJOR}:{MAX_MINOR}",
                )
                return None, None
            return int(major), int(minor)
        self.problem("bad_value", rel, f"device number {shown(text)} is not MAJOR:MINOR")
        return None, None


def _char_sort_key(char: CharDevice) -> tuple[int, int]:
    match = _CHAR_NAME.match(char.name)
    return _KIND_ORDER[char.kind], int(match.group(2)) if match else 0
