"""Hot-unplug of a PCI function from a simulated sysfs tree (runs in whatever process changes
one: tests, the demo). `simulator.sysfs.SysfsTree.remove_function` calls it.

Removed, as the kernel removes them: the function's real folder, every link into it (class,
bus and driver links), its char-device folders kept elsewhere (`char_devices="class"`) and, when
asked, its `dev/infiniband` nodes. Standard library only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from simulator.sysfs_specs import CHAR_CLASSES, CHAR_NAME

#: Folders below sys/ holding links to devices, and those holding one folder of links per driver.
_LINK_FOLDERS = ("class/net", "class/infiniband", "bus/auxiliary/devices")
_DRIVER_FOLDERS = ("bus/pci/drivers", "bus/auxiliary/drivers")


def unplug_function(
    root: Path, address: str, remove_dev_node: Callable[[str], None] | None
) -> None:
    """Remove PCI function `address` under `root`; `remove_dev_node(name)` (if given) for each of
    its char devices' dev nodes. KeyError if there is no such function."""
    link = root / "sys/bus/pci/devices" / address
    if not link.is_dir():
        raise KeyError(f"no PCI function {address}")
    target = os.path.realpath(link)
    sys_dir = root / "sys"
    _remove_char_devices(sys_dir, target, _rdma_names(target), remove_dev_node)
    for links in _LINK_FOLDERS:
        _unlink_into(sys_dir / links, target)
    for drivers in _DRIVER_FOLDERS:
        for driver in os.listdir(sys_dir / drivers):
            _unlink_into(sys_dir / drivers / driver, target)
    link.unlink()
    shutil.rmtree(target)


def _rdma_names(target: str) -> set[str]:
    """The RDMA devices anywhere below the function (its own and its auxiliary devices')."""
    return {
        d
        for dirpath, dirnames, _ in os.walk(target)
        if os.path.basename(dirpath) == "infiniband"
        for d in dirnames
    }


def _remove_char_devices(
    sys_dir: Path,
    target: str,
    rdma_names: set[str],
    remove_dev_node: Callable[[str], None] | None,
) -> None:
    for folder in CHAR_CLASSES:
        for name in os.listdir(sys_dir / "class" / folder):
            entry = sys_dir / "class" / folder / name
            if not _belongs_to(entry, name, rdma_names):
                continue
            real = os.path.realpath(entry)
            entry.unlink()
            if not _inside(real, target):
                shutil.rmtree(real)
            if remove_dev_node is not None:
                remove_dev_node(name)


def _belongs_to(entry: Path, name: str, rdma_names: set[str]) -> bool:
    """A char-device folder (uverbsN, umadN, ...) whose `ibdev` is one of `rdma_names`."""
    if not entry.is_dir() or CHAR_NAME.match(name) is None:
        return False
    try:
        ibdev = (entry / "ibdev").read_text().strip()
    except OSError:
        return False
    return ibdev in rdma_names


def _unlink_into(folder: Path, target: str) -> None:
    """Remove the links in `folder` that point into `target`."""
    for name in os.listdir(folder):
        entry = folder / name
        if entry.is_symlink() and _inside(os.path.realpath(entry), target):
            entry.unlink()


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)
