"""`SysfsTree`: writes a sysfs + /dev tree the way the kernel lays it out (runs in whatever
process builds one: tests, the demo, the CLI).

The layout it writes and how to use it: the docstring of `simulator.sysfs`, from where callers
import it. Hot-unplug is `simulator.sysfs_unplug`. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from simulator.sysfs_specs import (
    ARPHRD_INFINIBAND,
    CHAR_CLASSES,
    CHAR_NAME,
    PORT_STATES,
    AuxSpec,
    FunctionSpec,
    NetdevSpec,
    PortSpec,
    RdmaSpec,
)
from simulator.sysfs_unplug import unplug_function

# kind -> (folder beside infiniband/, fixed major, first fixed minor, fixed minors, dynamic major)
_CHAR_LAYOUT: dict[str, tuple[str, int, int, int, int]] = {
    "uverbs": ("infiniband_verbs", 231, 192, 32, 510),
    "umad": ("infiniband_mad", 231, 0, 64, 511),
    "issm": ("infiniband_mad", 231, 64, 64, 511),
    "ucm": ("infiniband_cm", 231, 224, 32, 509),
}
_ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"
_BDF = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


class SysfsTree:
    """A sysfs + /dev tree under `root`; reopening an existing root continues its numbering."""

    def __init__(
        self, root: str | os.PathLike[str], *, rdma_cm: bool = True, mknod: bool = False
    ) -> None:
        self.root = Path(root)
        self.mknod = mknod
        for rel in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/bus/auxiliary/devices",
                    "sys/bus/auxiliary/drivers", "sys/class/net", "sys/class/infiniband",
                    "sys/devices", "dev/infiniband"):  # fmt: skip
            (self.root / rel).mkdir(parents=True, exist_ok=True)
        for folder, abi in (("infiniband_verbs", "6"), ("infiniband_mad", "5")):
            (self.root / "sys/class" / folder).mkdir(exist_ok=True)
            self._put(f"sys/class/{folder}/abi_version", abi)
        (self.root / "sys/class/infiniband_cm").mkdir(exist_ok=True)
        self._next: dict[str, int] = {"uverbs": 0, "umad": 0, "ucm": 0}
        for folder in CHAR_CLASSES:
            for name in os.listdir(self.root / "sys/class" / folder):
                match = CHAR_NAME.match(name)
                if match:
                    kind = "umad" if match.group(1) == "issm" else match.group(1)
                    self._next[kind] = max(self._next[kind], int(match.group(2)) + 1)
        self._ifindex = len(os.listdir(self.root / "sys/class/net")) + 2
        if rdma_cm:
            self.add_dev_node("rdma_cm", 10, 58)

    # -- adding --------------------------------------------------------------------------------

    def add(self, *specs: FunctionSpec) -> None:
        """Write PCI functions with everything below them."""
        for spec in specs:
            self._add_function(spec)

    def _add_function(self, spec: FunctionSpec) -> None:
        match = _BDF.match(spec.address)
        if match is None:
            raise ValueError(f"PCI address {spec.address!r} is not like 0000:3b:00.0")
        rel = f"sys/devices/{spec.parent or _default_parent(spec.address)}/{spec.address}"
        if (self.root / rel).exists():
            raise ValueError(f"PCI function {spec.address} already exists")
        self._put(f"{rel}/class", f"0x{spec.pci_class:06x}")
        self._put(f"{rel}/vendor", f"0x{spec.vendor}")
        self._put(f"{rel}/device", f"0x{spec.device}")
        self._put(f"{rel}/subsystem_vendor", f"0x{spec.vendor}")
        self._put(f"{rel}/subsystem_device", "0x0001")
        self._put(f"{rel}/local_cpulist", "0-63")
        if spec.numa_node is not None:
            self._put(f"{rel}/numa_node", str(spec.numa_node))
        uevent = f"PCI_CLASS={spec.pci_class:X}\nPCI_ID={spec.vendor}:{spec.device}\n".upper()
        self._put(f"{rel}/uevent", f"{uevent}PCI_SLOT_NAME={spec.address}\n")
        self._link(f"{rel}/subsystem", "sys/bus/pci")
        if spec.driver:
            self._bind(rel, "sys/bus/pci/drivers", spec.driver, spec.address)
        self._link(f"sys/bus/pci/devices/{spec.address}", rel)
        if spec.netdev_holder is not None:
            holder, holder_driver = spec.netdev_holder
            self._bind(f"{rel}/{holder}", "sys/bus/virtio/drivers", holder_driver, holder)
            for netdev in spec.netdevs:
                self._add_netdev(f"{rel}/{holder}", netdev)
            self._contents(rel, [], spec.rdma)
        else:
            self._contents(rel, spec.netdevs, spec.rdma)
        for aux in spec.aux:
            self._add_aux(rel, aux)

    def _add_aux(self, parent: str, spec: AuxSpec) -> None:
        name = self._aux_name(spec.name)
        rel = f"{parent}/{name}"
        self._put(f"{rel}/uevent", f"MODALIAS=auxiliary:{name.rsplit('.', 1)[0]}\n")
        self._link(f"{rel}/subsystem", "sys/bus/auxiliary")
        if spec.driver:
            self._bind(rel, "sys/bus/auxiliary/drivers", spec.driver, name)
        self._link(f"sys/bus/auxiliary/devices/{name}", rel)
        self._contents(rel, spec.netdevs, spec.rdma)
        for child in spec.children:
            self._add_aux(rel, child)

    def _aux_name(self, pattern: str) -> str:
        devices = self.root / "sys/bus/auxiliary/devices"
        if "{n}" not in pattern:
            if os.path.lexists(devices / pattern):
                raise ValueError(f"auxiliary device {pattern} already exists")
            return pattern
        number = 0
        while os.path.lexists(devices / pattern.format(n=number)):
            number += 1
        return pattern.format(n=number)

    def _bind(self, rel: str, drivers: str, driver: str, name: str) -> None:
        self._put(f"{drivers}/{driver}/bind", "")
        self._link(f"{rel}/driver", f"{drivers}/{driver}")
        self._link(f"{drivers}/{driver}/{name}", rel)

    def _contents(self, owner: str, netdevs: list[NetdevSpec], rdma: list[RdmaSpec]) -> None:
        for netdev in netdevs:
            self._add_netdev(owner, netdev)
        for dev in rdma:
            self._add_rdma(owner, dev)

    def _add_netdev(self, owner: str, spec: NetdevSpec) -> None:
        rel = f"{owner}/net/{spec.name}"
        self._ifindex += 1
        infiniband = spec.link_type == ARPHRD_INFINIBAND
        self._put(f"{rel}/type", str(spec.link_type))
        self._put(f"{rel}/operstate", spec.operstate)
        self._put(f"{rel}/ifindex", str(self._ifindex))
        self._put(f"{rel}/mtu", "4092" if infiniband else "1500")
        self._put(f"{rel}/carrier", "1" if spec.operstate == "up" else "0")
        self._put(f"{rel}/address", _mac(spec.name, 20 if infiniband else 6))
        self._put(f"{rel}/uevent", f"INTERFACE={spec.name}\nIFINDEX={self._ifindex}\n")
        self._link(f"{rel}/device", owner)
        self._link(f"{rel}/subsystem", "sys/class/net")
        self._link(f"sys/class/net/{spec.name}", rel)

    def add_software_rdma(
        self, name: str, netdev: str, *, kind: str = "rxe", state: str | None = None
    ) -> None:
        """A software RDMA device over `netdev`, as `rdma link add <name> type rxe|siw netdev
        <netdev>` makes it: `sys/devices/virtual/infiniband/<name>` with a `parent` file and no
        `device` link, one port (ACTIVE when the netdev is up, unless `state`), char devices
        under `sys/devices/virtual`: uverbs, umad and issm (a real 6.1 kernel makes an issm for
        rxe's Ethernet port too: tests/fixtures/real-sysfs/debian12-rxe)."""
        net = self.root / "sys/class/net" / netdev
        if not net.is_dir():
            raise KeyError(f"no netdev {netdev!r}")
        if os.path.lexists(self.root / "sys/class/infiniband" / name):
            raise ValueError(f"RDMA device {name} already exists")
        if state is None:
            up = (net / "operstate").read_text().strip() == "up"
            state = "ACTIVE" if up else "DOWN"
        port = PortSpec(1, state, "Ethernet", gids=32)
        spec = RdmaSpec(name, ports=[port], issm=True, char_devices="class")
        self._add_rdma("sys/devices/virtual", spec, parent=netdev, siw=kind == "siw")

    def remove_software_rdma(self, name: str) -> None:
        """`rdma link delete <name>`: the device, its char devices and their dev nodes."""
        rel = f"sys/devices/virtual/infiniband/{name}"
        if not (self.root / rel).is_dir():
            raise KeyError(f"no software RDMA device {name!r}")
        for folder in CHAR_CLASSES:
            base = self.root / "sys/devices/virtual" / folder
            for entry in sorted(os.listdir(base)) if base.is_dir() else ():
                ibdev = base / entry / "ibdev"
                if ibdev.is_file() and ibdev.read_text().strip() == name:
                    self.remove(f"sys/class/{folder}/{entry}")
                    self.remove(f"sys/devices/virtual/{folder}/{entry}")
                    self.remove_dev_node(entry)
        self.remove(f"sys/class/infiniband/{name}")
        self.remove(rel)

    def _add_rdma(
        self, owner: str, spec: RdmaSpec, *, parent: str | None = None, siw: bool = False
    ) -> None:
        rel = f"{owner}/infiniband/{spec.name}"
        self._put(f"{rel}/node_type", "4: RNIC" if siw else "1: CA")
        self._put(f"{rel}/fw_ver", "28.39.1002")
        self._put(f"{rel}/node_guid", _guid(spec.name))
        self._put(f"{rel}/uevent", f"NAME={spec.name}\n")
        if parent is not None:
            self._put(f"{rel}/parent", parent)
        else:
            self._link(f"{rel}/device", owner)
        self._link(f"{rel}/subsystem", "sys/class/infiniband")
        for port in spec.ports:
            prel = f"{rel}/ports/{port.number}"
            self._put(f"{prel}/state", _port_state(port.state))
            self._put(f"{prel}/phys_state", _phys_state(port.state))
            self._put(f"{prel}/link_layer", port.link_layer)
            self._put(f"{prel}/rate", "400 Gb/sec (4X NDR)")
            for index in range(port.gids):
                # The first pair is the port's own link-local GID (RoCE v1 and v2); the rest free.
                gid = "fe80:0000:0000:0000:0000:00ff:fe00:0001" if index < 2 else _ZERO_GID
                self._put(f"{prel}/gids/{index}", gid)
        self._link(f"sys/class/infiniband/{spec.name}", rel)
        if spec.char_devices == "none":
            return
        uverbs = self._take("uverbs")
        self._add_char(owner, spec, "uverbs", uverbs, None)
        for port in spec.ports:
            umad = self._take("umad")
            self._add_char(owner, spec, "umad", umad, port.number)
            wants_issm = port.link_layer == "InfiniBand" if spec.issm is None else spec.issm
            if wants_issm:
                self._add_char(owner, spec, "issm", umad, port.number)
        if spec.ucm:
            self._add_char(owner, spec, "ucm", self._take("ucm"), None)

    def _take(self, kind: str) -> int:
        number = self._next[kind]
        self._next[kind] += 1
        return number

    def _add_char(
        self, owner: str, spec: RdmaSpec, kind: str, number: int, port: int | None
    ) -> None:
        folder, major, first, fixed, dynamic = _CHAR_LAYOUT[kind]
        name = f"{kind}{number}"
        if number < fixed:
            major, minor = major, first + number
        else:
            major, minor = dynamic, number - fixed
        base = owner if spec.char_devices == "device" else "sys/devices/virtual"
        rel = f"{base}/{folder}/{name}"
        self._put(f"{rel}/dev", f"{major}:{minor}")
        self._put(f"{rel}/ibdev", spec.name)
        self._put(f"{rel}/uevent", f"MAJOR={major}\nMINOR={minor}\nDEVNAME=infiniband/{name}\n")
        if port is not None:
            self._put(f"{rel}/port", str(port))
        if kind == "uverbs":
            self._put(f"{rel}/abi_version", "1")
        if spec.char_devices == "device":
            self._link(f"{rel}/device", owner)
        self._link(f"{rel}/subsystem", f"sys/class/{folder}")
        self._link(f"sys/class/{folder}/{name}", rel)
        if spec.dev_nodes:
            self.add_dev_node(name, major, minor)

    # -- changing state ------------------------------------------------------------------------

    def set_port_state(self, rdma: str, port: int, state: str) -> None:
        """Set `ports/<port>/state` of an RDMA device ("ACTIVE", "DOWN", "INIT", ...)."""
        base = f"sys/class/infiniband/{rdma}/ports/{port}"
        if not (self.root / base).is_dir():
            raise KeyError(f"no port {port} on RDMA device {rdma!r}")
        self._put(f"{base}/state", _port_state(state))
        self._put(f"{base}/phys_state", _phys_state(state))

    def set_netns_mode(self, shared: bool) -> None:
        """Write ib_core's `netns_mode` parameter ("Y" shared, "N" exclusive), as `rdma system
        set netns` changes it."""
        self._put("sys/module/ib_core/parameters/netns_mode", "Y\n" if shared else "N\n")

    def set_operstate(self, netdev: str, operstate: str) -> None:
        """Set a netdev's `operstate` ("up", "down", "lowerlayerdown", ...)."""
        base = f"sys/class/net/{netdev}"
        if not (self.root / base).is_dir():
            raise KeyError(f"no netdev {netdev!r}")
        self._put(f"{base}/operstate", operstate)
        self._put(f"{base}/carrier", "1" if operstate == "up" else "0")

    def add_dev_node(self, name: str, major: int = 231, minor: int = 0) -> None:
        """Create `dev/infiniband/<name>` (a char node with mknod=True, else an empty file)."""
        path = self.root / "dev/infiniband" / name
        if os.path.lexists(path):
            return
        if self.mknod:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        else:
            path.touch()

    def remove_dev_node(self, name: str) -> None:
        """Remove `dev/infiniband/<name>` (as when udev drops a node); absent is fine."""
        path = self.root / "dev/infiniband" / name
        if os.path.lexists(path):
            path.unlink()

    def remove_function(self, address: str, *, dev_nodes: bool = True) -> None:
        """Hot-unplug a PCI function: its folder, every link into it and (default) its dev nodes."""
        unplug_function(self.root, address, self.remove_dev_node if dev_nodes else None)

    # -- breaking things -----------------------------------------------------------------------

    def function_dir(self, address: str) -> str:
        """Path of a function's real folder, relative to the root ("sys/devices/.../<bdf>")."""
        real = os.path.realpath(self.root / "sys/bus/pci/devices" / address)
        return os.path.relpath(real, os.path.realpath(self.root))

    def remove(self, rel: str) -> None:
        """Delete a file, link or folder."""
        path = self.root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()

    def write(self, rel: str, content: str | bytes) -> None:
        """Write a file (bytes as given, so non-UTF-8 content is possible); replaces a link."""
        self.remove(rel)
        self._put(rel, content)

    def replace_with_dir(self, rel: str) -> None:
        """Put an empty folder where a file (or link) was."""
        self.remove(rel)
        (self.root / rel).mkdir(parents=True)

    def dangle(self, rel: str) -> None:
        """Replace an entry with a relative link whose target does not exist."""
        self.remove(rel)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("../gone/" + path.name, path)

    # -- low level -----------------------------------------------------------------------------

    def _put(self, rel: str, content: str | bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        if isinstance(content, str) and content and not content.endswith("\n"):
            data += b"\n"  # sysfs attributes end with a newline
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _link(self, rel: str, target_rel: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (self.root / target_rel).mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(self.root / target_rel, path.parent), path)


def _default_parent(address: str) -> str:
    match = _BDF.match(address)
    assert match is not None
    domain, bus = match.group(1), int(match.group(2), 16)
    root_bus = bus & 0xF0
    root = f"pci{domain}:{root_bus:02x}"
    if bus == root_bus:
        return root
    return f"{root}/{domain}:{root_bus:02x}:{bus - root_bus:02x}.0"


def _port_state(state: str) -> str:
    word = state.upper()
    if word not in PORT_STATES:
        raise ValueError(f"unknown port state {state!r}; one of {', '.join(PORT_STATES)}")
    return f"{PORT_STATES[word]}: {word}"


def _phys_state(state: str) -> str:
    return "3: Disabled" if state.upper() == "DOWN" else "5: LinkUp"


def _mac(name: str, length: int) -> str:
    seed = sum(name.encode()) & 0xFF
    return ":".join(f"{(seed + i * 17) & 0xFF:02x}" for i in range(length))


def _guid(name: str) -> str:
    seed = sum(name.encode())
    return f"b8ce:f603:00{seed & 0xFF:02x}:{seed:04x}"
