"""Discovery on a real kernel's soft-RoCE tree (tests/fixtures/real-sysfs/debian12-rxe).

Captured from the `make e2e-rdma` VM (Debian 12, kernel in KERNEL, rxe0 on eth0 and rxe1 on
eth1, two virtio-net functions); SOURCE.md says how. The VM suite checks the same things against
the live kernel in minutes; these check them against its capture in a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ResourceConfig, Selectors
from common.devices import Candidate
from common.discovery import scan
from common.rdma_netns import SHARED, read_netns_mode
from common.selectors import SOFTWARE, select
from tests.unit.test_discovery_real import materialise

FIXTURE = Path(__file__).parent.parent / "fixtures" / "real-sysfs" / "debian12-rxe"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rxe") / "host"
    assert materialise(FIXTURE, root) > 20
    return root


@pytest.fixture(scope="module")
def found(host: Path) -> dict[str, Candidate]:
    result = scan(host)
    assert result.problems == ()
    return {c.name: c for c in result.candidates}


def test_the_capture_is_of_the_kernel_it_names() -> None:
    assert (FIXTURE / "KERNEL").read_text().startswith("6.1.")


@pytest.mark.parametrize(
    ("name", "netdev", "function", "uverbs"),
    [("rxe0", "eth0", "0000:00:03.0", 0), ("rxe1", "eth1", "0000:00:04.0", 1)],
)
def test_each_rxe_is_a_software_candidate_on_its_virtio_function(
    found: dict[str, Candidate], name: str, netdev: str, function: str, uverbs: int
) -> None:
    c = found[name]
    assert (c.kind, c.software, c.if_name, c.link_type) == ("software", "rxe", netdev, "ether")
    assert (c.pci_address, c.vendor, c.device_id, c.driver) == (
        function,
        "1af4",
        "1000",
        "virtio-pci",
    )
    [rdma] = c.rdma_devices
    assert [(p.number, p.state, p.link_layer) for p in rdma.ports] == [(1, "ACTIVE", "Ethernet")]
    # The kernel's numbering: uverbsN 231:192+N, umadN 231:N and issmN 231:64+N (yes, an issm on
    # an Ethernet port), checked against the numbers the capture took from /dev/infiniband.
    assert [(ch.kind, ch.name) for ch in c.char_devices] == [
        ("uverbs", f"uverbs{uverbs}"),
        ("umad", f"umad{uverbs}"),
        ("issm", f"issm{uverbs}"),
    ]
    for ch in c.char_devices:
        node = FIXTURE / "dev/infiniband" / ch.name
        assert f"{ch.major}:{ch.minor}" == node.read_text().strip()
    assert c.usable and c.healthy


def test_the_virtio_functions_are_pci_candidates_without_rdma(found: dict[str, Candidate]) -> None:
    for function in ("0000:00:03.0", "0000:00:04.0"):
        assert found[function].kind == "pci" and found[function].rdma_devices == ()


def test_selection_on_the_real_tree(found: dict[str, Candidate]) -> None:
    def chosen(**selectors: tuple[str, ...]) -> list[str]:
        config = ResourceConfig("r", "rdma", 4, Selectors(**selectors))
        return [c.name for c in select(config, found.values()).selected]

    assert chosen() == []  # the catch-all hands out no soft-RoCE
    assert chosen(vendors=("1af4",)) == []
    assert chosen(rdma_devices=("rxe0", "rxe1"), vendors=("1af4",)) == ["rxe0", "rxe1"]
    assert chosen(if_names=("eth1",), drivers=("virtio-pci",)) == ["rxe1"]
    rejected = select(ResourceConfig("r", "rdma", 4, Selectors()), found.values()).rejected
    assert {r.reason for r in rejected if r.candidate.software} == {SOFTWARE}


def test_netns_mode_reads_shared(host: Path) -> None:
    assert read_netns_mode(host) == SHARED
