"""simulator.sysfs writes trees shaped like the kernel's, and its state helpers do what they say."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.sysfs import (
    FunctionSpec,
    RdmaSpec,
    SysfsTree,
    build_demo_node,
    connectx_ib,
    connectx_roce,
    e810,
    main,
)
from tests.conditions import missing

IB = "0000:3b:00.0"


def all_links(root: Path) -> dict[str, str]:
    links = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                links[path.relative_to(root).as_posix()] = os.readlink(path)
    return links


def test_demo_links_are_relative_and_resolve(tmp_path: Path) -> None:
    build_demo_node(tmp_path)
    links = all_links(tmp_path)
    assert len(links) > 100
    assert all(not target.startswith("/") for target in links.values())
    dangling = [rel for rel in links if not (tmp_path / rel).exists()]
    assert dangling == []
    # The tree works from another place too: nothing points outside it.
    root = os.path.realpath(tmp_path)
    assert all(os.path.realpath(tmp_path / rel).startswith(root + os.sep) for rel in links)


def test_pci_function_layout(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(connectx_ib(IB, rdma="mlx5_0", netdev="ib0", numa_node=1))
    fn = tree.function_dir(IB)
    assert fn == f"sys/devices/pci0000:30/0000:30:0b.0/{IB}"
    assert not (tmp_path / fn).is_symlink() and (tmp_path / fn).is_dir()
    assert os.readlink(tmp_path / "sys/bus/pci/devices" / IB) == f"../../../devices/{fn[12:]}"
    assert os.readlink(tmp_path / fn / "driver") == "../../../../bus/pci/drivers/mlx5_core"
    assert (tmp_path / fn / "class").read_text() == "0x020700\n"
    assert (tmp_path / fn / "vendor").read_text() == "0x15b3\n"
    assert (tmp_path / fn / "numa_node").read_text() == "1\n"
    assert (tmp_path / "sys/class/net/ib0/type").read_text() == "32\n"
    assert (tmp_path / "sys/class/net/ib0").resolve() == (tmp_path / fn / "net/ib0").resolve()
    assert (tmp_path / "sys/class/infiniband/mlx5_0/ports/1/state").read_text() == "4: ACTIVE\n"
    verbs = tmp_path / "sys/class/infiniband_verbs/uverbs0"
    assert verbs.resolve() == (tmp_path / fn / "infiniband_verbs/uverbs0").resolve()
    assert (verbs / "ibdev").read_text() == "mlx5_0\n"
    assert (verbs / "dev").read_text() == "231:192\n"
    assert (tmp_path / "sys/class/infiniband_mad/issm0/dev").read_text() == "231:64\n"
    for node in ("uverbs0", "umad0", "issm0", "rdma_cm"):
        assert (tmp_path / "dev/infiniband" / node).is_file()


def test_auxiliary_devices_are_children_of_the_function(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(
        connectx_roce(IB, rdma="mlx5_0", netdev="p0", sub_functions=[(4, "p0s4", "mlx5_1")]),
        e810("0000:ca:00.0", netdev="ens2f0"),
    )
    aux = tmp_path / "sys/bus/auxiliary/devices"
    assert sorted(os.listdir(aux)) == [
        "ice.roce.0",
        "mlx5_core.eth.0",
        "mlx5_core.eth.1",
        "mlx5_core.rdma.0",
        "mlx5_core.rdma.1",
        "mlx5_core.sf.4",
    ]
    fn = tmp_path / tree.function_dir(IB)
    assert (aux / "mlx5_core.sf.4").resolve() == (fn / "mlx5_core.sf.4").resolve()
    assert (fn / "mlx5_core.sf.4/mlx5_core.eth.1").is_dir()  # below the SF, as mlx5 nests them
    assert (fn / "mlx5_core.sf.4/net/p0s4/type").is_file()
    assert os.readlink(fn / "mlx5_core.sf.4/driver").endswith("bus/auxiliary/drivers/mlx5_core.sf")
    ice = tmp_path / tree.function_dir("0000:ca:00.0") / "ice.roce.0"
    assert (ice / "infiniband/irdma0/ports/1/link_layer").read_text() == "Ethernet\n"
    assert os.readlink(ice / "driver").endswith("/irdma")


def test_numbering_continues_when_reopened(tmp_path: Path) -> None:
    SysfsTree(tmp_path).add(connectx_ib(IB, rdma="mlx5_0", ports=2))
    SysfsTree(tmp_path).add(connectx_ib("0000:5e:00.0", rdma="mlx5_1", netdev="ib1"))
    names = sorted(os.listdir(tmp_path / "sys/class/infiniband_mad"))
    assert names == ["abi_version", "issm0", "issm1", "issm2", "umad0", "umad1", "umad2"]
    assert (tmp_path / "sys/class/infiniband_verbs/uverbs1/ibdev").read_text() == "mlx5_1\n"


def test_numbers_past_the_fixed_range_get_a_dynamic_major(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(
        *(FunctionSpec(f"0000:{bus:02x}:00.0", rdma=[RdmaSpec(f"m{bus}")]) for bus in range(33))
    )
    assert (tmp_path / "sys/class/infiniband_verbs/uverbs31/dev").read_text() == "231:223\n"
    assert (tmp_path / "sys/class/infiniband_verbs/uverbs32/dev").read_text() == "510:0\n"


def test_state_helpers(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(connectx_ib(IB, rdma="mlx5_0", netdev="ib0"))
    tree.set_port_state("mlx5_0", 1, "down")
    assert (tmp_path / "sys/class/infiniband/mlx5_0/ports/1/state").read_text() == "1: DOWN\n"
    tree.set_operstate("ib0", "lowerlayerdown")
    assert (tmp_path / "sys/class/net/ib0/operstate").read_text() == "lowerlayerdown\n"
    tree.remove_dev_node("umad0")
    assert not (tmp_path / "dev/infiniband/umad0").exists()
    tree.add_dev_node("umad0")
    assert (tmp_path / "dev/infiniband/umad0").exists()
    with pytest.raises(ValueError, match="unknown port state"):
        tree.set_port_state("mlx5_0", 1, "SLEEPY")
    with pytest.raises(KeyError):
        tree.set_port_state("mlx5_9", 1, "DOWN")
    with pytest.raises(KeyError):
        tree.set_operstate("ib9", "up")
    # No temp files left behind by the atomic writes.
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_remove_function_leaves_nothing_behind(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(
        connectx_roce(IB, rdma="mlx5_0", netdev="p0", sub_functions=[(2, "p0s2", "mlx5_1")]),
        connectx_ib("0000:5e:00.0", rdma="mlx5_2", netdev="ib0"),
        FunctionSpec("0000:86:00.0", rdma=[RdmaSpec("mlx5_3", char_devices="class")]),
    )
    tree.remove_function(IB)
    tree.remove_function("0000:86:00.0")
    assert all((tmp_path / rel).exists() for rel in all_links(tmp_path))
    assert sorted(os.listdir(tmp_path / "sys/class/infiniband")) == ["mlx5_2"]
    assert sorted(os.listdir(tmp_path / "sys/bus/auxiliary/devices")) == [
        "mlx5_core.eth.2",  # .0 is the removed PF's, .1 its sub-function's
        "mlx5_core.rdma.2",
    ]
    assert sorted(os.listdir(tmp_path / "dev/infiniband")) == [
        "issm2",
        "rdma_cm",
        "umad2",
        "uverbs2",
    ]
    assert not (tmp_path / "sys/devices/virtual/infiniband_verbs/uverbs3").exists()
    with pytest.raises(KeyError):
        tree.remove_function(IB)


def test_bad_specs_are_refused(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    with pytest.raises(ValueError, match="not like"):
        tree.add(FunctionSpec("3b:00.0"))
    tree.add(FunctionSpec(IB))
    with pytest.raises(ValueError, match="already exists"):
        tree.add(FunctionSpec(IB))


def test_breaking_helpers(tmp_path: Path) -> None:
    tree = SysfsTree(tmp_path)
    tree.add(FunctionSpec(IB))
    fn = tree.function_dir(IB)
    tree.replace_with_dir(f"{fn}/vendor")
    assert (tmp_path / fn / "vendor").is_dir()
    tree.write(f"{fn}/vendor", b"\xff")
    assert (tmp_path / fn / "vendor").read_bytes() == b"\xff"
    tree.dangle(f"{fn}/vendor")
    assert (tmp_path / fn / "vendor").is_symlink() and not (tmp_path / fn / "vendor").exists()
    tree.remove(f"{fn}/vendor")
    assert not os.path.lexists(tmp_path / fn / "vendor")


@pytest.mark.root
def test_mknod_makes_char_nodes(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("mknod of a char device needs root")
    SysfsTree(tmp_path, mknod=True).add(connectx_ib(IB, rdma="mlx5_0"))
    info = os.stat(tmp_path / "dev/infiniband/uverbs0")
    assert stat.S_ISCHR(info.st_mode)
    assert (os.major(info.st_rdev), os.minor(info.st_rdev)) == (231, 192)


def test_command_line_writes_the_demo_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "node"
    done = subprocess.run(
        [sys.executable, "-m", "simulator.sysfs", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "sys/class/infiniband/mlx5_6").is_dir()
    assert main([str(target)]) == 2
