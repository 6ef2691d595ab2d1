"""Sysfs discovery of the node's network functions and their RDMA devices (supervisor and CLI).

`scan(host_root)` reads `<host_root>/sys` and `<host_root>/dev` and returns a `Scan` of frozen
values from `common.devices`. It never raises for what it finds in the tree: a broken entry is
skipped (or one field falls back to a default), logged with what to check, and reported as a
`ScanProblem` whose `reason` is one of `PROBLEM_REASONS` (stable: used as a metric label).

What is read, per PCI function `sys/bus/pci/devices/<bdf>` of class 0x02xxxx:

- `class`, `vendor`, `device` (required: a function without them is skipped), `numa_node`
  (missing -> -1, silently: kernels without NUMA have none), the `driver` link's basename (no link
  -> "", the function is unbound; the link's target need not exist);
- `net/<if>/type` and `net/<if>/operstate` of each netdev, in name order;
- `infiniband/<dev>/ports/<n>/state` and `link_layer` of each RDMA device;
- `infiniband_verbs/`, `infiniband_mad/`, `infiniband_cm/` beside `infiniband/` for the char
  devices, or `sys/class/infiniband_{verbs,mad,cm}/*` when such a folder is absent there;
- auxiliary children (folder names listed in `sys/bus/auxiliary/devices`) and their own auxiliary
  children: one with netdevs is a candidate of its own (an mlx5 sub-function), one without gives its
  RDMA devices to the function (Intel `ice.roce.N`, mlx5 `mlx5_core.rdma.N`).

Nothing else is walked: a scan of 64 RDMA functions takes about 14 ms
(benchmarks/bench_discovery.py). docs/discovery.md has the full rules and the default chosen for
each field.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from common.config import ARPHRD_NAMES
from common.devices import (
    CHAR_DEVICE_KINDS,
    MAX_NUMA_NODES,
    Candidate,
    CharDevice,
    NetDev,
    Port,
    RdmaDevice,
    Scan,
    ScanProblem,
)

log = logging.getLogger(__name__)

#: Every `ScanProblem.reason` discovery emits, with what the operator should check.
PROBLEM_REASONS: dict[str, str] = {
    "no_pci_bus": "is sysfs mounted, and does --host-root point at the host's root folder?",
    "dangling_link": "the link's target is gone; was the device removed mid-scan or the "
    "driver unloaded? rerun discovery, and check dmesg",
    "missing_file": "the kernel did not create this attribute; check the driver version and dmesg",
    "not_a_file": "a folder sits where sysfs has an attribute file; is --host-root a real sysfs?",
    "not_a_dir": "a file sits where sysfs has a folder; is --host-root a real sysfs?",
    "not_a_link": "sysfs has a symlink here; is --host-root a real sysfs or a flattened copy?",
    "bad_encoding": "the attribute is not UTF-8 text; is --host-root a real sysfs?",
    "bad_value": "the attribute's value cannot be parsed; check the driver version and dmesg",
    "out_of_range": "the value is outside what the kernel can report (a NUMA node, device "
    "number, port or name length); is --host-root a real sysfs? check dmesg",
    "unreadable": "the attribute cannot be read; check the plugin's privileges (it needs to read "
    "/sys) and dmesg for I/O errors",
}

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
_NET_CLASS = 0x02
# How deep auxiliary devices nest below a PCI function: mlx5_core.sf.N/mlx5_core.eth.N.
_AUX_DEPTH = 2
# Sysfs attributes are at most a page; reading more would only mean the tree is not sysfs.
_MAX_ATTRIBUTE = 65536

# The domain of every value that leaves discovery: what the kernel can report. A value outside it
# only comes from a tree that is not a real sysfs (or a kernel bug), and passing it on would fail
# later and further away (a protobuf field, a CDI name, a metric label), so it stops here.
#: Char device numbers: 12-bit major, 20-bit minor (MINORBITS).
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1
#: PCI class code is 24 bits; ARPHRD_* link types are 16 bits.
MAX_PCI_CLASS = 0xFFFFFF
MAX_LINK_TYPE = 0xFFFF
#: IFNAMSIZ (16) includes the NUL; IB_DEVICE_NAME_MAX (64) likewise.
MAX_NETDEV_NAME = 15
MAX_RDMA_NAME = 63
#: Port numbers: the verbs ABI carries them in a u8.
MAX_PORT = 255
#: Driver (MODULE_NAME_LEN 56) and auxiliary device names, generously; port state words and link
#: layers are one short word ("ACTIVE", "InfiniBand").
MAX_DRIVER_NAME = 64
MAX_AUX_NAME = 128
MAX_WORD = 32
#: The number in uverbsN and friends: a minor-sized number has at most 7 digits.
MAX_CHAR_DIGITS = 7
#: RFC 2863 operstates, as the kernel writes them.
OPERSTATES = frozenset(
    {"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"}
)
_BDF = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")


@dataclass
class _Found:
    """Netdevs and RDMA devices found in one device folder and its auxiliary children."""

    netdevs: list[NetDev] = field(default_factory=list)
    rdma: list[RdmaDevice] = field(default_factory=list)


@dataclass
class _Owner:
    """A device folder holding `infiniband/`, with its listing and its char devices by folder."""

    rel: str
    names: list[str]
    char_index: dict[str, dict[str, list[CharDevice]] | None] = field(default_factory=dict)


class _Scanner:
    """One scan's state: the root, the problems so far and what is read once per scan.

    Paths are handled as strings relative to the root (what problems report); a folder is listed
    once and its listing tells which sub-folders exist, so absent folders cost no system call.
    A failed read is diagnosed only then (was the entry's folder a dangling link?), so the common
    path is one open+read per attribute.
    """

    def __init__(self, host_root: str) -> None:
        self.root = host_root
        self.prefix = host_root if host_root.endswith("/") or not host_root else host_root + "/"
        self.problems: list[ScanProblem] = []
        self.aux_names: frozenset[str] = frozenset()
        self.dev_nodes: frozenset[str] = frozenset()
        # folder -> ibdev -> char devices of sys/class/<folder>; filled on first need.
        self._class_index: dict[str, dict[str, list[CharDevice]]] = {}

    # -- problems and raw reads ---------------------------------------------------------------

    def problem(self, reason: str, rel: str, detail: str) -> None:
        self.problems.append(ScanProblem(reason=reason, path=rel, detail=detail))
        log.warning(
            "sysfs problem reason=%s path=%s: %s; to check: %s",
            reason,
            rel,
            detail,
            PROBLEM_REASONS.get(reason, ""),
        )

    def read(self, rel: str, *, optional: bool = False) -> str | None:
        """The stripped text of an attribute, or None (a problem unless optional and absent)."""
        path = self.prefix + rel
        try:
            # O_NONBLOCK: a FIFO planted in the tree must not hang the scan.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(path):
                self.problem("dangling_link", rel, "attribute link points nowhere")
            elif not optional:
                self.problem("missing_file", rel, "attribute file is missing")
            return None
        except OSError as err:
            self.problem("unreadable", rel, f"cannot open: {err.strerror or err}")
            return None
        try:
            raw = os.read(fd, _MAX_ATTRIBUTE)
        except IsADirectoryError:
            self.problem("not_a_file", rel, "expected an attribute file, found a folder")
            return None
        except OSError as err:
            self.problem("unreadable", rel, f"cannot read: {err.strerror or err}")
            return None
        finally:
            os.close(fd)
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            self.problem("bad_encoding", rel, f"not UTF-8 at byte {err.start}")
            return None

    def read_in(self, entry: str, name: str, what: str) -> tuple[bool, str | None]:
        """Read `entry/name`: (False, None) when `entry` itself is broken (reported as such),
        else (True, text or None)."""
        rel = f"{entry}/{name}"
        text = self.read(rel, optional=True)
        if text is None and not os.path.lexists(self.prefix + rel):
            if not self.is_dir(entry, what):
                return False, None
            self.problem("missing_file", rel, "attribute file is missing")
        return True, text

    def listdir(self, rel: str) -> list[str] | None:
        """Sorted, UTF-8-clean entries of a folder; None when absent (silently) or broken."""
        path = self.prefix + rel
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            if os.path.islink(path):
                self.problem("dangling_link", rel, "folder link points nowhere")
            return None
        except NotADirectoryError:
            self.problem("not_a_dir", rel, "expected a folder, found a file")
            return None
        except OSError as err:
            self.problem("unreadable", rel, f"cannot list: {err.strerror or err}")
            return None
        clean = []
        for name in names:
            if name.isascii() or _is_utf8(name):
                clean.append(name)
            else:
                shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                self.problem("bad_encoding", f"{rel}/{shown}", "entry name is not UTF-8")
        clean.sort()
        return clean

    def is_dir(self, rel: str, what: str) -> bool:
        """True for a folder (or a link to one); a problem for a dangling link or a file."""
        path = self.prefix + rel
        if os.path.isdir(path):
            return True
        if os.path.islink(path) and not os.path.exists(path):
            self.problem("dangling_link", rel, f"{what} link points nowhere")
        elif os.path.lexists(path):
            self.problem("not_a_dir", rel, f"expected the {what} folder, found a file")
        else:
            self.problem("missing_file", rel, f"{what} folder vanished during the scan")
        return False

    # -- the scan -------------------------------------------------------------------------------

    def run(self) -> Scan:
        bus = "sys/bus/pci/devices"
        if not os.path.isdir(self.prefix + bus):
            self.problem("no_pci_bus", bus, f"no PCI device folder under {self.root!r}")
            return Scan(problems=tuple(self.problems))
        self.aux_names = frozenset(self.listdir("sys/bus/auxiliary/devices") or ())
        self.dev_nodes = frozenset(self.listdir("dev/infiniband") or ())
        candidates: list[Candidate] = []
        for bdf in self.listdir(bus) or ():
            candidates.extend(self.function(f"{bus}/{bdf}", bdf))
        candidates.sort(key=lambda c: c.name)
        return Scan(candidates=tuple(candidates), problems=tuple(self.problems))

    def is_network_function(self, rel: str) -> bool:
        """The function's `class` is a network controller's (0x02xxxx); problems otherwise."""
        _, cls = self.read_in(rel, "class", "PCI function")
        if cls is None:
            return False
        cls_value = _parse_hex(cls)
        if cls_value is None:
            self.problem("bad_value", f"{rel}/class", f"PCI class {_shown(cls)} is not hex")
            return False
        if not 0 <= cls_value <= MAX_PCI_CLASS:
            self.problem("out_of_range", f"{rel}/class", f"PCI class {_shown(cls)} is not 24 bits")
            return False
        return cls_value >> 16 == _NET_CLASS

    def function(self, rel: str, bdf: str) -> list[Candidate]:
        """The candidates of one PCI function: itself, and any auxiliary sub-functions."""
        if not self.is_network_function(rel):
            return []
        if not _BDF.match(bdf):
            self.problem("bad_value", rel, "folder name is not a PCI address (DDDD:BB:DD.F)")
            return []
        vendor = self.hex_id(f"{rel}/vendor")
        device_id = self.hex_id(f"{rel}/device")
        if vendor is None or device_id is None:
            return []
        driver = self.driver(f"{rel}/driver")
        numa = self.numa_node(f"{rel}/numa_node")
        rdma_cm = "rdma_cm" in self.dev_nodes

        names = self.listdir(rel) or []
        own = self.folder(rel, names)
        subs: list[Candidate] = []
        for aux in names:
            if aux not in self.aux_names:
                continue
            if not self.name_ok(f"{rel}/{aux}", aux, MAX_AUX_NAME, "auxiliary device"):
                continue
            found = self.aux_tree(f"{rel}/{aux}", _AUX_DEPTH - 1)
            if found is None:
                continue
            if found.netdevs:
                subs.append(
                    Candidate(
                        name=aux,
                        pci_address=bdf,
                        vendor=vendor,
                        device_id=device_id,
                        driver=driver,
                        numa_node=numa,
                        netdevs=tuple(sorted(found.netdevs, key=lambda n: n.name)),
                        rdma_devices=tuple(sorted(found.rdma, key=lambda r: r.name)),
                        rdma_cm_present=rdma_cm,
                        auxiliary=True,
                    )
                )
            else:
                own.rdma.extend(found.rdma)
        function = Candidate(
            name=bdf,
            pci_address=bdf,
            vendor=vendor,
            device_id=device_id,
            driver=driver,
            numa_node=numa,
            netdevs=tuple(own.netdevs),
            rdma_devices=tuple(sorted(own.rdma, key=lambda r: r.name)),
            rdma_cm_present=rdma_cm,
        )
        return [function, *subs]

    def aux_tree(self, rel: str, depth: int) -> _Found | None:
        """What an auxiliary device and (up to `depth` levels of) its own aux children hold;
        None when its folder is broken."""
        names = self.listdir(rel)
        if names is None:
            return None
        found = self.folder(rel, names)
        if depth > 0:
            for child in names:
                if child in self.aux_names and self.name_ok(
                    f"{rel}/{child}", child, MAX_AUX_NAME, "auxiliary device"
                ):
                    deeper = self.aux_tree(f"{rel}/{child}", depth - 1)
                    if deeper is not None:
                        found.netdevs.extend(deeper.netdevs)
                        found.rdma.extend(deeper.rdma)
        return found

    def folder(self, rel: str, names: list[str]) -> _Found:
        """Netdevs and RDMA devices sitting directly in one device folder (listed as `names`)."""
        found = _Found()
        if "net" in names:
            for name in self.listdir(f"{rel}/net") or ():
                if not self.name_ok(f"{rel}/net/{name}", name, MAX_NETDEV_NAME, "netdev"):
                    continue
                netdev = self.netdev(f"{rel}/net/{name}", name)
                if netdev is not None:
                    found.netdevs.append(netdev)
        if "infiniband" in names:
            owner = _Owner(rel, names)
            for name in self.listdir(f"{rel}/infiniband") or ():
                if not self.name_ok(f"{rel}/infiniband/{name}", name, MAX_RDMA_NAME, "RDMA device"):
                    continue
                rdma = self.rdma_device(owner, name)
                if rdma is not None:
                    found.rdma.append(rdma)
        return found

    # -- fields ---------------------------------------------------------------------------------

    def name_ok(self, rel: str, name: str, limit: int, what: str) -> bool:
        """A kernel object name: 1..limit bytes, printable, no whitespace; else a problem."""
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > limit:
            self.problem(
                "out_of_range", rel, f"{what} name is {size} bytes, more than the kernel's {limit}"
            )
            return False
        if not _is_name(name):
            self.problem("bad_value", rel, f"{what} name {_shown(name)} has blanks or controls")
            return False
        return True

    def hex_id(self, rel: str) -> str | None:
        text = self.read(rel)
        if text is None:
            return None
        value = _parse_hex(text)
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
        if not name or not _is_utf8(name) or not _is_name(name):
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
        value = _parse_int(text)
        if value is None:
            self.problem("bad_value", rel, f"NUMA node {_shown(text)} is not a number; using -1")
            return -1
        if not -1 <= value < MAX_NUMA_NODES:
            self.problem(
                "out_of_range",
                rel,
                f"NUMA node {_shown(text)} is outside -1..{MAX_NUMA_NODES - 1}; using -1",
            )
            return -1
        return value

    def netdev(self, rel: str, name: str) -> NetDev | None:
        ok, type_text = self.read_in(rel, "type", "netdev")
        if not ok:
            return None
        link_type = ""  # matches no linkTypes selector: safer than guessing
        if type_text is not None:
            number = _parse_int(type_text)
            if number is None:
                self.problem(
                    "bad_value", f"{rel}/type", f"link type {_shown(type_text)} is not a number"
                )
            elif not 0 <= number <= MAX_LINK_TYPE:
                self.problem(
                    "out_of_range", f"{rel}/type", f"link type {_shown(type_text)} is not 16 bits"
                )
            else:
                link_type = _LINK_TYPES.get(number, f"unknown{number}")
        operstate = self.read(f"{rel}/operstate")
        if operstate is not None and operstate not in OPERSTATES:
            self.problem(
                "bad_value", f"{rel}/operstate", f"operstate {_shown(operstate)} is not RFC 2863"
            )
            operstate = None
        return NetDev(name=name, link_type=link_type, operstate=operstate or "unknown")

    def rdma_device(self, owner: _Owner, name: str) -> RdmaDevice | None:
        rel = f"{owner.rel}/infiniband/{name}"
        entries = self.listdir(f"{rel}/ports")
        if entries is None and not os.path.lexists(self.prefix + rel + "/ports"):
            if not self.is_dir(rel, "RDMA device"):
                return None
            self.problem("missing_file", f"{rel}/ports", "ports folder is missing")
        numbers = []
        for entry in entries or ():
            if not _is_number(entry):
                self.problem("bad_value", f"{rel}/ports/{entry}", "port folder is not a number")
            elif len(entry) > 3 or int(entry) > MAX_PORT:
                self.problem(
                    "out_of_range", f"{rel}/ports/{_shown(entry)}", f"port number above {MAX_PORT}"
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
                    "bad_value", f"{rel}/state", f"port state {_shown(state_text)} unparsable"
                )
        link_layer = self.read(f"{rel}/link_layer") or ""
        if link_layer and (len(link_layer) > MAX_WORD or not _is_name(link_layer)):
            self.problem(
                "bad_value", f"{rel}/link_layer", f"link layer {_shown(link_layer)} unparsable"
            )
            link_layer = ""
        return Port(number=number, state=state, link_layer=link_layer)

    # -- char devices ---------------------------------------------------------------------------

    def char_devices(self, owner: _Owner, ibdev: str) -> tuple[CharDevice, ...]:
        found: list[CharDevice] = []
        for folder in _CHAR_FOLDERS:
            by_dev = self.owner_folder(owner, folder)
            if by_dev is None:
                by_dev = self.class_folder(folder)
            found.extend(by_dev.get(ibdev, ()))
        found.sort(key=_char_sort_key)
        return tuple(found)

    def owner_folder(self, owner: _Owner, folder: str) -> dict[str, list[CharDevice]] | None:
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
        if sep and _is_number(major) and _is_number(minor):
            if len(major) > 4 or len(minor) > 7 or int(major) > MAX_MAJOR or int(minor) > MAX_MINOR:
                self.problem(
                    "out_of_range",
                    rel,
                    f"device number {_shown(text)} is outside {MAX_MAJOR}:{MAX_MINOR}",
                )
                return None, None
            return int(major), int(minor)
        self.problem("bad_value", rel, f"device number {_shown(text)} is not MAJOR:MINOR")
        return None, None


def scan(host_root: str | os.PathLike[str] = "/") -> Scan:
    """Discover the network functions and RDMA devices under `<host_root>/sys` and `/dev`."""
    return _Scanner(os.fspath(host_root)).run()


def _parse_hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


def _char_sort_key(char: CharDevice) -> tuple[int, int]:
    match = _CHAR_NAME.match(char.name)
    return _KIND_ORDER[char.kind], int(match.group(2)) if match else 0


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_int(text: str) -> int | None:
    """A decimal integer as sysfs writes it (optional sign), without Python's extras: no "_"
    separators, no non-ASCII digits, and none so long that int() itself refuses it."""
    digits = text[1:] if text[:1] in ("-", "+") else text
    if not digits or len(digits) > 4000 or not _is_number(digits):
        return None
    return int(text)


def _is_name(name: str) -> bool:
    """Printable, without blanks: what a kernel object name (and a log field) can hold."""
    return name.isprintable() and not any(c.isspace() for c in name)


def _shown(text: str) -> str:
    """A value quoted in a log line or problem, cut short: a fake tree can hold 64 KiB."""
    return repr(text[:40] + "…" if len(text) > 40 else text)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
