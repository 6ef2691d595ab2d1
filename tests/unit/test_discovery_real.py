"""Discovery on a sysfs tree captured from a real host (tests/fixtures/real-sysfs/SOURCE.md).

The committed copy stores each symlink as a file holding its relative target; `materialise` turns
those back into real symlinks in a temp folder, then the test adds the dev nodes the note asks for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from common.devices import CharDevice, NetDev, Port
from common.discovery import scan

FIXTURE = Path(__file__).parent.parent / "fixtures" / "real-sysfs" / "hwloc-stampede-mlx4"
# A flattened link is short; real attribute files never hold just a "../" path.
_MAX_LINK_FILE = 4096


def _link_target(path: Path) -> str | None:
    """The relative target a flattened link file stands for, or None for an ordinary file."""
    if path.stat().st_size > _MAX_LINK_FILE:
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("../") and "\n" not in text.strip() and text == text.strip():
        return text
    return None


def materialise(src: Path, dest: Path) -> int:
    """Copy `src` to `dest`, turning flattened link files into relative symlinks; returns the
    number of links made."""
    links = 0
    for dirpath, _, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            source = Path(dirpath) / name
            target = _link_target(source)
            if target is None:
                shutil.copyfile(source, dest / rel / name)
            else:
                os.symlink(target, dest / rel / name)
                links += 1
    return links


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    assert materialise(FIXTURE, root) == 25
    (root / "dev/infiniband").mkdir(parents=True)
    for node in ("uverbs0", "umad0", "issm0", "rdma_cm"):
        (root / "dev/infiniband" / node).touch()
    return root


def test_links_point_inside_the_tree(host: Path) -> None:
    # Only `driver` and `subsystem` links dangle: their targets were not captured.
    dangling = []
    for dirpath, dirnames, filenames in os.walk(host):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not path.exists():
                dangling.append(path.relative_to(host).as_posix())
    assert {p.rsplit("/", 1)[1] for p in dangling} == {"driver", "subsystem"}
    assert (host / "sys/bus/pci/devices/0000:82:00.0/infiniband/mlx4_0").is_dir()
    assert (host / "sys/class/net/ib0/device").resolve() == (
        host / "sys/bus/pci/devices/0000:82:00.0"
    ).resolve()


def test_mlx4_hca_as_the_source_note_states(host: Path) -> None:
    result = scan(host)
    assert result.problems == ()
    assert [c.name for c in result.candidates] == ["0000:02:00.0", "0000:82:00.0"]
    hca = result.candidates[1]
    assert hca.pci_address == "0000:82:00.0"
    assert (hca.vendor, hca.device_id, hca.driver, hca.numa_node) == (
        "15b3",
        "1003",
        "mlx4_core",
        1,
    )
    assert hca.netdevs == (NetDev("ib0", "infiniband", "up"),)
    assert not hca.auxiliary
    assert [r.name for r in hca.rdma_devices] == ["mlx4_0"]
    mlx4 = hca.rdma_devices[0]
    assert mlx4.ports == (Port(1, "ACTIVE", "InfiniBand"),)
    assert mlx4.char_devices == (
        CharDevice("uverbs", "uverbs0", 231, 192, True),
        CharDevice("umad", "umad0", 231, 0, True),
        CharDevice("issm", "issm0", 231, 64, True),
    )
    assert hca.rdma_cm_present
    assert hca.usable
    assert hca.healthy


def test_igb_function_has_no_rdma_device(host: Path) -> None:
    igb = scan(host).candidates[0]
    assert (igb.pci_address, igb.vendor, igb.device_id) == ("0000:02:00.0", "8086", "1521")
    assert (igb.driver, igb.numa_node) == ("igb", 0)
    assert igb.netdevs == (NetDev("eth0", "ether", "up"),)
    assert igb.rdma_devices == ()
    assert not igb.usable


def test_without_dev_nodes_the_hca_is_not_usable(host: Path) -> None:
    (host / "dev/infiniband/uverbs0").unlink()
    hca = scan(host).candidates[1]
    assert [c.present for c in hca.char_devices] == [False, True, True]
    assert not hca.usable


def test_committed_copy_is_still_flattened() -> None:
    # The committed fixture must stay byte-identical to the capture: no real symlinks in it.
    link_file = FIXTURE / "sys/bus/pci/devices/0000:82:00.0"
    assert not link_file.is_symlink()
    assert link_file.read_text() == "../../../devices/pci0000:80/0000:80:02.2/0000:82:00.0"


def test_flattened_copy_is_refused_cleanly() -> None:
    # Scanning the committed copy as it is (links stored as files) must explain, not crash.
    result = scan(FIXTURE)
    assert result.candidates == ()
    assert {(p.reason, p.path) for p in result.problems} == {
        ("not_a_dir", "sys/bus/pci/devices/0000:02:00.0"),
        ("not_a_dir", "sys/bus/pci/devices/0000:82:00.0"),
    }
