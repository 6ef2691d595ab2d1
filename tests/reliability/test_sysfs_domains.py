"""Random sysfs contents through discovery, selection, the supervisor-to-worker message, the
worker's plan, the servicer's protobuf messages and the CDI spec: nothing raises anywhere, every
value that leaves discovery is inside the kernel's domain, and anything outside it is a
ScanProblem with a known reason (hypothesis, real trees in temp folders).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import ResourceConfig, Selectors
from common.devices import MAX_NUMA_NODES, Candidate
from common.discovery import (
    MAX_AUX_NAME,
    MAX_DRIVER_NAME,
    MAX_MAJOR,
    MAX_MINOR,
    MAX_NETDEV_NAME,
    MAX_PORT,
    MAX_RDMA_NAME,
    MAX_WORD,
    OPERSTATES,
    PROBLEM_REASONS,
    scan,
)
from common.messages import Devices, decode, encode
from common.selectors import select
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from simulator.sysfs import (
    FunctionSpec,
    NetdevSpec,
    RdmaSpec,
    SysfsTree,
    connectx_ib,
    connectx_roce,
)
from tests.reliability.footprint import scale
from workers import cdi, servicer
from workers.plan import make_plan

ROCE = "0000:3b:00.0"
IB = "0000:5e:00.0"
FUZZ = settings(
    max_examples=scale(120, 3000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: Trees are built in memory where possible: each names example builds one of ~100 files.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
#: Each names example builds a tree of its own: fewer of them.
NAMES_FUZZ = settings(FUZZ, max_examples=scale(30, 1000))
RESOURCE = ResourceConfig("hca_all", "example.com", 16, Selectors())


def _base(root: Path) -> SysfsTree:
    tree = SysfsTree(root)
    tree.add(
        connectx_roce(ROCE, rdma="mlx5_1", netdev="p0", sub_functions=[(2, "p0s2", "mlx5_2")]),
        connectx_ib(IB, rdma="mlx5_0", netdev="ib0"),
    )
    return tree


def _attribute_files() -> list[str]:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        _base(Path(tmp))
        return sorted(
            os.path.relpath(os.path.join(d, f), tmp)
            for d, _, names in os.walk(Path(tmp) / "sys")
            for f in names
            if not os.path.islink(os.path.join(d, f))
        )


FILES = _attribute_files()
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([-2, -1, 0, 1023, 1024, 4095, 4096, 2**20, 2**31, 2**63, 2**64]),
).map(lambda n: str(n).encode())
CONTENT = st.one_of(
    NUMBERS,
    st.tuples(NUMBERS, NUMBERS).map(lambda t: t[0] + b":" + t[1]),
    st.binary(max_size=80),
    st.text(max_size=200).map(lambda t: t.encode()),
    st.sampled_from([b"4: ACTIVE", b"up", b"InfiniBand", b"0x020700", b"9" * 5000, b"\x00"]),
)
NAMES = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", codec="utf-8"),
    min_size=1,
    max_size=70,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 200)


def assert_in_domain(c: Candidate) -> None:
    assert -1 <= c.numa_node < MAX_NUMA_NODES
    assert len(c.name) <= MAX_AUX_NAME and c.name.isprintable()
    assert len(c.driver) <= MAX_DRIVER_NAME
    assert len(c.vendor) == 4 and len(c.device_id) == 4
    for n in c.netdevs:
        assert 0 < len(n.name.encode()) <= MAX_NETDEV_NAME
        assert n.operstate in OPERSTATES and len(n.link_type) <= 20
    for r in c.rdma_devices:
        assert 0 < len(r.name.encode()) <= MAX_RDMA_NAME and r.name.isprintable()
        for p in r.ports:
            assert 0 <= p.number <= MAX_PORT and len(p.state) <= MAX_WORD
            assert len(p.link_layer) <= MAX_WORD
        for ch in r.char_devices:
            assert ch.major is None or 0 <= ch.major <= MAX_MAJOR
            assert ch.minor is None or 0 <= ch.minor <= MAX_MINOR
    json.dumps(c.to_json()).encode("utf-8")  # no lone surrogates


def through_everything(root: Path) -> None:
    """Discovery -> message -> selection -> plan -> protobuf and CDI, as the processes do."""
    result = scan(root)
    assert all(p.reason in PROBLEM_REASONS for p in result.problems)
    for candidate in result.candidates:
        assert_in_domain(candidate)
    shipped = decode(encode(Devices(result.candidates)))
    assert isinstance(shipped, Devices) and shipped.devices == result.candidates
    matched = select(RESOURCE, shipped.devices).selected
    for use_cdi in (False, True):
        plan = make_plan(RESOURCE, matched, use_cdi)
        published = servicer.publish(plan)
        published.snapshot.SerializeToString()
        dp.AllocateResponse(container_responses=[published.container_answer]).SerializeToString()
        spec = cdi.build_spec(RESOURCE, plan.usable)
        if spec is not None:
            cdi.render(spec)


@pytest.fixture(scope="module")
def base_tree() -> Iterator[Path]:
    """One tree for every example: each restores what it changed (building costs ~100 files)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        _base(Path(tmp))
        yield Path(tmp)


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(FILES), CONTENT), min_size=1, max_size=6))
def test_random_attribute_contents(base_tree: Path, changes: list[tuple[str, bytes]]) -> None:
    originals = {rel: (base_tree / rel).read_bytes() for rel, _ in changes}
    try:
        for rel, content in changes:
            (base_tree / rel).write_bytes(content)
        through_everything(base_tree)
    finally:
        for rel, content in originals.items():
            (base_tree / rel).write_bytes(content)


@NAMES_FUZZ
@given(netdev=NAMES, rdma=NAMES, numa=st.integers(-(2**70), 2**70))
def test_random_names_and_numa(netdev: str, rdma: str, numa: int) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        tree = SysfsTree(Path(tmp))
        tree.add(
            FunctionSpec(
                ROCE,
                pci_class=0x020000,
                numa_node=0,
                netdevs=[NetdevSpec(netdev)],
                rdma=[RdmaSpec(rdma)],
            )
        )
        tree.write(f"{tree.function_dir(ROCE)}/numa_node", str(numa))
        through_everything(Path(tmp))
        result = scan(Path(tmp))
        function = {c.name: c for c in result.candidates}[ROCE]
        in_range = -1 <= numa < MAX_NUMA_NODES
        assert function.numa_node == (numa if in_range else -1)
        problems = {(p.reason, p.path.rsplit("/", 1)[-1]) for p in result.problems}
        assert in_range or ("out_of_range", "numa_node") in problems


def test_a_numa_node_too_big_for_protobuf_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    tree = _base(tmp_path)
    tree.write(f"{tree.function_dir(IB)}/numa_node", str(2**64))
    result = scan(tmp_path)
    assert {c.name: c for c in result.candidates}[IB].numa_node == -1
    assert [(p.reason, p.path) for p in result.problems] == [
        ("out_of_range", f"sys/bus/pci/devices/{IB}/numa_node")
    ]
    through_everything(tmp_path)


@FUZZ
@given(numa=st.integers(-(2**80), 2**80))
def test_the_plan_bounds_numa_nodes_that_arrive_another_way(numa: int) -> None:
    from tests.standin_supervisor import make_candidate

    plan = make_plan(RESOURCE, (make_candidate(0, numa_node=numa),), use_cdi=False)
    assert all(0 <= n < MAX_NUMA_NODES for n in plan.numa_nodes)
    servicer.publish(plan).snapshot.SerializeToString()


def _only_problem(root: Path, caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    caplog.clear()
    result = scan(root)
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert f"reason={problem.reason} path={problem.path}" in caplog.text
    through_everything(root)
    return problem.reason, problem.path.rsplit("/", 1)[-1]


def test_each_domain_check_is_a_logged_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = _base(tmp_path)
    ib = tree.function_dir(IB)
    verbs = f"{ib}/infiniband_verbs/uverbs2/dev"
    cases = [
        (f"{ib}/numa_node", b"-2", ("out_of_range", "numa_node")),
        (f"{ib}/numa_node", b"1024", ("out_of_range", "numa_node")),
        (f"{ib}/numa_node", b"1_0", ("bad_value", "numa_node")),
        (f"{ib}/class", b"0x1020700", ("out_of_range", "class")),
        (verbs, b"4096:0", ("out_of_range", "dev")),
        (verbs, b"231:1048576", ("out_of_range", "dev")),
        (f"{ib}/net/ib0/type", b"65536", ("out_of_range", "type")),
        (f"{ib}/net/ib0/operstate", b"up\x00down", ("bad_value", "operstate")),
        (f"{ib}/infiniband/mlx5_0/ports/1/link_layer", b"Infini Band", ("bad_value", "link_layer")),
        (f"{ib}/infiniband/mlx5_0/ports/1/state", b"4: " + b"A" * 33, ("bad_value", "state")),
    ]
    for rel, content, expected in cases:
        original = (tmp_path / rel).read_bytes()
        (tmp_path / rel).write_bytes(content)
        assert _only_problem(tmp_path, caplog) == expected, rel
        (tmp_path / rel).write_bytes(original)
    assert scan(tmp_path).problems == ()


@pytest.mark.parametrize(
    ("netdev", "rdma", "expected"),
    [
        ("a" * 16, "mlx5_0", ("out_of_range", "a" * 16)),
        ("é" * 8, "mlx5_0", ("out_of_range", "é" * 8)),  # 16 bytes
        ("ib 0", "mlx5_0", ("bad_value", "ib 0")),
        ("ib0", "m" * 64, ("out_of_range", "m" * 64)),
        ("ib0", "mlx5\t0", ("bad_value", "mlx5\t0")),
    ],
)
def test_names_outside_the_kernels_limits_are_skipped(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    netdev: str,
    rdma: str,
    expected: tuple[str, str],
) -> None:
    SysfsTree(tmp_path).add(
        FunctionSpec(IB, netdevs=[NetdevSpec(netdev)], rdma=[RdmaSpec(rdma, dev_nodes=False)])
    )
    # The char devices name the RDMA device too (ibdev): one problem per place it appears.
    result = scan(tmp_path)
    assert {(p.reason, p.path.rsplit("/", 1)[-1]) for p in result.problems} == {expected} or (
        expected[1] == rdma and {p.reason for p in result.problems} == {expected[0]}
    )
    assert all(f"reason={p.reason}" in caplog.text for p in result.problems)
    function = {c.name: c for c in result.candidates}[IB]
    assert netdev not in [n.name for n in function.netdevs] or rdma not in [
        r.name for r in function.rdma_devices
    ]
    through_everything(tmp_path)
