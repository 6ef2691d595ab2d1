"""Write sysfs and /dev trees laid out the way the Linux kernel lays them out (tests, demo, CLI).

Runs in whatever process calls it: the tests, `rdma-shared-dp demo`, and `python -m simulator.sysfs
DIR` (which writes `build_demo_node(DIR)` for the README's quick start). Standard library only.

Describe functions with the spec dataclasses (or the presets `connectx_ib`, `connectx_roce`,
`e810`, `igb`, `gpu`) and add them to a `SysfsTree`::

    tree = SysfsTree(tmp_path)                      # creates dev/infiniband/rdma_cm
    tree.add(connectx_ib("0000:3b:00.0", rdma="mlx5_0", netdev="ib0", numa_node=0))
    tree.add(FunctionSpec("0000:5e:00.0", netdevs=[NetdevSpec("ens1f0")],
                          rdma=[RdmaSpec("mlx5_1", ports=[PortSpec(link_layer="Ethernet")])]))
    tree.set_port_state("mlx5_0", 1, "DOWN")
    tree.remove_dev_node("uverbs0")
    tree.remove_function("0000:5e:00.0")

What gets written, relative to the root:

- `sys/devices/pci<domain>:<root bus>/<bridge>/<bdf>/` real folders holding `class`, `vendor`,
  `device`, `numa_node`, `driver` (a relative link to `sys/bus/pci/drivers/<drv>`), `net/<if>/`,
  `infiniband/<dev>/ports/<n>/`, `infiniband_verbs/uverbsN/`, `infiniband_mad/umadN|issmN/`,
  `infiniband_cm/ucmN/`, and auxiliary device folders (`mlx5_core.sf.2/`, `ice.roce.0/`);
- relative links to those from `sys/bus/pci/devices/<bdf>`, `sys/bus/auxiliary/devices/<aux>`,
  `sys/class/net/<if>`, `sys/class/infiniband/<dev>`, `sys/class/infiniband_verbs/uverbsN`,
  `sys/class/infiniband_mad/umadN`, `sys/class/infiniband_cm/ucmN`;
- `dev/infiniband/<name>` nodes and `dev/infiniband/rdma_cm`. They are plain empty files unless
  `SysfsTree(root, mknod=True)` (which needs root), so the tree can be written by any user;
  discovery only checks that the node exists.

Char devices are numbered per tree as the kernel numbers them: uverbsN gets 231:192+N, umadN
231:N with one umad per port, issmN (same N, InfiniBand ports only) 231:64+N, ucmN 231:224+N;
numbers past the fixed minor range get a dynamic major, as on big hosts.

Breaking things on purpose (for discovery's broken-entry tests): `remove(rel)`, `write(rel,
content)`, `replace_with_dir(rel)`, `dangle(rel)`, with `function_dir(bdf)` for the paths. All
writes of state go through a rename, so a concurrent scan never reads half a file.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ARPHRD_ETHER = 1
ARPHRD_INFINIBAND = 32

#: The numbers the kernel prints before a port state ("4: ACTIVE").
PORT_STATES: dict[str, int] = {
    "NOP": 0,
    "DOWN": 1,
    "INIT": 2,
    "ARMED": 3,
    "ACTIVE": 4,
    "ACTIVE_DEFER": 5,
}

# kind -> (folder beside infiniband/, fixed major, first fixed minor, fixed minors, dynamic major)
_CHAR_LAYOUT: dict[str, tuple[str, int, int, int, int]] = {
    "uverbs": ("infiniband_verbs", 231, 192, 32, 510),
    "umad": ("infiniband_mad", 231, 0, 64, 511),
    "issm": ("infiniband_mad", 231, 64, 64, 511),
    "ucm": ("infiniband_cm", 231, 224, 32, 509),
}
_CHAR_CLASSES = ("infiniband_verbs", "infiniband_mad", "infiniband_cm")
_ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"
#: GID table sizes of the demo node's RoCE ports: mlx5 reports 255 entries, irdma 32.
MLX5_ROCE_GIDS = 255
IRDMA_ROCE_GIDS = 32
_CHAR_NAME = re.compile(r"^(uverbs|umad|issm|ucm)([0-9]+)$")
_BDF = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


@dataclass
class PortSpec:
    number: int = 1
    state: str = "ACTIVE"  # a key of PORT_STATES
    link_layer: str = "InfiniBand"  # or "Ethernet"
    #: Entries of `gids/` (the port's GID table) to write; 0 = no `gids/` folder.
    gids: int = 0


@dataclass
class NetdevSpec:
    name: str
    link_type: int = ARPHRD_ETHER  # ARPHRD number written to `type`
    operstate: str = "up"


@dataclass
class RdmaSpec:
    name: str
    ports: list[PortSpec] = field(default_factory=lambda: [PortSpec()])
    #: issm per port: None = one for each InfiniBand port (what ib_umad does).
    issm: bool | None = None
    ucm: bool = False
    #: Where the char-device folders go: "device" (beside infiniband/, as the kernel does),
    #: "class" (only under sys/devices/virtual, reachable through sys/class), or "none".
    char_devices: str = "device"
    #: Create the dev/infiniband nodes of its char devices.
    dev_nodes: bool = True


@dataclass
class AuxSpec:
    """An auxiliary device below a PCI function (or below another auxiliary device)."""

    #: "mlx5_core.sf.2", "ice.roce.0"; a "{n}" is replaced by the lowest free number, as the
    #: kernel's per-driver ID allocator does ("mlx5_core.eth.{n}").
    name: str
    driver: str = ""  # auxiliary driver bound to it ("" = none)
    netdevs: list[NetdevSpec] = field(default_factory=list)
    rdma: list[RdmaSpec] = field(default_factory=list)
    children: list[AuxSpec] = field(default_factory=list)


@dataclass
class FunctionSpec:
    address: str  # "0000:3b:00.0", lower-case
    vendor: str = "15b3"
    device: str = "1017"
    pci_class: int = 0x020000
    driver: str | None = "mlx5_core"  # None = unbound (no driver link)
    numa_node: int | None = 0  # None = no numa_node file
    netdevs: list[NetdevSpec] = field(default_factory=list)
    rdma: list[RdmaSpec] = field(default_factory=list)
    aux: list[AuxSpec] = field(default_factory=list)
    #: Folder under sys/devices; default: a root port derived from the bus number.
    parent: str | None = None


# -- presets ---------------------------------------------------------------------------------------


def connectx_ib(
    address: str,
    *,
    rdma: str,
    netdev: str | None = "ib0",
    numa_node: int = 0,
    device: str = "1021",
    ports: int = 1,
    state: str = "ACTIVE",
) -> FunctionSpec:
    """A ConnectX HCA in InfiniBand mode (default ConnectX-7); `netdev=None` for no IPoIB."""
    return FunctionSpec(
        address,
        vendor="15b3",
        device=device,
        pci_class=0x020700,
        driver="mlx5_core",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev, ARPHRD_INFINIBAND)] if netdev else [],
        rdma=[RdmaSpec(rdma, ports=[PortSpec(n, state) for n in range(1, ports + 1)])],
        aux=_mlx5_aux(),
    )


def connectx_roce(
    address: str,
    *,
    rdma: str,
    netdev: str,
    numa_node: int = 0,
    device: str = "101d",
    sub_functions: Sequence[tuple[int, str, str]] = (),
    gids: int = 0,
) -> FunctionSpec:
    """A ConnectX Ethernet port with RoCE (default ConnectX-6 Dx).

    `sub_functions`: (sf number, netdev, rdma device) triples, laid out as mlx5 does:
    `mlx5_core.sf.N/` holding `net/` and `infiniband/`, with `mlx5_core.eth.N` and
    `mlx5_core.rdma.N` auxiliary children below it. `gids`: GID table entries per port.
    """
    spec = FunctionSpec(
        address,
        vendor="15b3",
        device=device,
        pci_class=0x020000,
        driver="mlx5_core",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev)],
        rdma=[RdmaSpec(rdma, ports=[PortSpec(1, link_layer="Ethernet", gids=gids)])],
        aux=_mlx5_aux(),
    )
    for number, sf_netdev, sf_rdma in sub_functions:
        spec.aux.append(
            AuxSpec(
                f"mlx5_core.sf.{number}",
                driver="mlx5_core.sf",
                netdevs=[NetdevSpec(sf_netdev)],
                rdma=[RdmaSpec(sf_rdma, ports=[PortSpec(1, link_layer="Ethernet", gids=gids)])],
                children=_mlx5_aux(),
            )
        )
    return spec


def e810(
    address: str,
    *,
    netdev: str,
    rdma: str | None = "irdma0",
    numa_node: int = 0,
    roce: int = 0,
    gids: int = 0,
) -> FunctionSpec:
    """An Intel E810 port (ice); with `rdma`, an `ice.roce.<roce>` child bound to irdma."""
    aux = []
    if rdma:
        aux.append(
            AuxSpec(
                f"ice.roce.{roce}",
                driver="irdma",
                rdma=[RdmaSpec(rdma, ports=[PortSpec(1, link_layer="Ethernet", gids=gids)])],
            )
        )
    return FunctionSpec(
        address,
        vendor="8086",
        device="159b",
        driver="ice",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev)],
        aux=aux,
    )


def igb(address: str, *, netdev: str, numa_node: int = 0, device: str = "1533") -> FunctionSpec:
    """An Intel 1 GbE NIC without RDMA (default I210)."""
    return FunctionSpec(
        address,
        vendor="8086",
        device=device,
        driver="igb",
        numa_node=numa_node,
        netdevs=[NetdevSpec(netdev)],
    )


def gpu(address: str, *, numa_node: int = 0, device: str = "2330") -> FunctionSpec:
    """A non-network PCI device: an NVIDIA GPU (3D controller, class 0x030200)."""
    return FunctionSpec(
        address,
        vendor="10de",
        device=device,
        pci_class=0x030200,
        driver="nvidia",
        numa_node=numa_node,
    )


def _mlx5_aux() -> list[AuxSpec]:
    # Every mlx5 PF and SF has these two children; the netdev and RDMA device sit in the parent.
    return [
        AuxSpec("mlx5_core.eth.{n}", driver="mlx5_core.eth"),
        AuxSpec("mlx5_core.rdma.{n}", driver="mlx5_ib.rdma"),
    ]


# -- the tree --------------------------------------------------------------------------------------


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
        for folder in _CHAR_CLASSES:
            for name in os.listdir(self.root / "sys/class" / folder):
                match = _CHAR_NAME.match(name)
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

    def _add_rdma(self, owner: str, spec: RdmaSpec) -> None:
        rel = f"{owner}/infiniband/{spec.name}"
        self._put(f"{rel}/node_type", "1: CA")
        self._put(f"{rel}/fw_ver", "28.39.1002")
        self._put(f"{rel}/node_guid", _guid(spec.name))
        self._put(f"{rel}/uevent", f"NAME={spec.name}\n")
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
        link = self.root / "sys/bus/pci/devices" / address
        if not link.is_dir():
            raise KeyError(f"no PCI function {address}")
        target = os.path.realpath(link)
        rdma_names = {
            d
            for dirpath, dirnames, _ in os.walk(target)
            if os.path.basename(dirpath) == "infiniband"
            for d in dirnames
        }
        sys_dir = self.root / "sys"
        for folder in _CHAR_CLASSES:
            for name in os.listdir(sys_dir / "class" / folder):
                entry = sys_dir / "class" / folder / name
                if not entry.is_dir() or _CHAR_NAME.match(name) is None:
                    continue
                try:
                    ibdev = (entry / "ibdev").read_text().strip()
                except OSError:
                    continue
                if ibdev not in rdma_names:
                    continue
                real = os.path.realpath(entry)
                entry.unlink()
                if not _inside(real, target):
                    shutil.rmtree(real)
                if dev_nodes:
                    self.remove_dev_node(name)
        for links in ("class/net", "class/infiniband", "bus/auxiliary/devices"):
            for name in os.listdir(sys_dir / links):
                entry = sys_dir / links / name
                if entry.is_symlink() and _inside(os.path.realpath(entry), target):
                    entry.unlink()
        for drivers in ("bus/pci/drivers", "bus/auxiliary/drivers"):
            for driver in os.listdir(sys_dir / drivers):
                for name in os.listdir(sys_dir / drivers / driver):
                    entry = sys_dir / drivers / driver / name
                    if entry.is_symlink() and _inside(os.path.realpath(entry), target):
                        entry.unlink()
        link.unlink()
        shutil.rmtree(target)

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


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


# -- the demo node ---------------------------------------------------------------------------------


def build_demo_node(root: str | os.PathLike[str]) -> None:
    """Write a GPU training node: 4 ConnectX-7 IB HCAs on 2 NUMA nodes, 2 ConnectX-6 Dx RoCE ports
    (the first with sub-function mlx5_core.sf.2), an E810 with irdma, an igb management NIC and 4
    GPUs. rdma_cm exists; every port is ACTIVE; RoCE ports have GID tables (255 and 32)."""
    tree = SysfsTree(root)
    tree.add(
        gpu("0000:19:00.0", numa_node=0),
        connectx_ib("0000:1a:00.0", rdma="mlx5_0", netdev="ib0", numa_node=0),
        gpu("0000:3b:00.0", numa_node=0),
        connectx_ib("0000:3c:00.0", rdma="mlx5_1", netdev="ib1", numa_node=0),
        gpu("0000:9b:00.0", numa_node=1),
        connectx_ib("0000:9c:00.0", rdma="mlx5_2", netdev="ib2", numa_node=1),
        gpu("0000:bb:00.0", numa_node=1),
        connectx_ib("0000:bc:00.0", rdma="mlx5_3", netdev="ib3", numa_node=1),
        connectx_roce(
            "0000:b1:00.0",
            rdma="mlx5_4",
            netdev="ens1f0np0",
            numa_node=1,
            sub_functions=[(2, "ens1f0npf0sf2", "mlx5_6")],
            gids=MLX5_ROCE_GIDS,
        ),
        connectx_roce(
            "0000:b1:00.1", rdma="mlx5_5", netdev="ens1f1np1", numa_node=1, gids=MLX5_ROCE_GIDS
        ),
        e810("0000:ca:00.0", netdev="ens2f0", rdma="irdma0", numa_node=1, gids=IRDMA_ROCE_GIDS),
        igb("0000:05:00.0", netdev="eno1", numa_node=0),
    )
    tree.set_netns_mode(shared=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.sysfs",
        description="Write a simulated GPU training node (sys/ and dev/) into DIR.",
    )
    parser.add_argument("dir", metavar="DIR", help="folder to write; must not hold sys/ or dev/")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    for sub in ("sys", "dev"):
        if (root / sub).exists():
            print(f"error: {root / sub} already exists; pick an empty folder", file=sys.stderr)
            return 2
    try:
        build_demo_node(root)
    except OSError as err:
        print(f"error: cannot write {root}: {err}", file=sys.stderr)
        return 1
    print(f"wrote a simulated node to {root}; try: rdma-shared-dp discover --host-root {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
