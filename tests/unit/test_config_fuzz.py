"""Property tests of common/config.py: for any input, a Config or a ConfigError, nothing else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import (
    INTERNAL_ERROR,
    MAX_RDMA_HCA_MAX,
    Config,
    ConfigError,
    Selectors,
    load_config_bytes,
    parse_config,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REAL_KEYS = [
    "configList",
    "periodicUpdateInterval",
    "resourceName",
    "resourcePrefix",
    "rdmaHcaMax",
    "devices",
    "selectors",
    "vendors",
    "deviceIDs",
    "drivers",
    "ifNames",
    "linkTypes",
    "pciAddresses",
    "rdmaDevices",
    # near misses and other spellings
    "ResourceName",
    "RDMAHCAMAX",
    "rdmaHcMax",
    "vendor",
    "lin\u212aTypes",
]
REAL_STRINGS = [
    "15b3",
    "0x15B3",
    "1017",
    "mlx5_core",
    "ib0",
    "ether",
    "InfiniBand",
    "ethernet",
    "3B:00.0",
    "0000:3b:00.0",
    "mlx5_0",
    "rdma_a",
    "example.com",
    "example_prefix",
    "",
    "a/b",
    "\ud800",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.builds(lambda sign: sign * 10**5000, st.sampled_from([1, -1]))  # str() of it raises
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(REAL_STRINGS)
)
keys = st.sampled_from(REAL_KEYS) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def anything_or(realistic: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a realistic value, sometimes anything at all."""
    return st.integers(0, 9).flatmap(lambda n: json_values if n == 0 else realistic)


GOOD_VALUES = {
    "vendors": ["15b3", "0x15B3", "8086"],
    "deviceIDs": ["1017", "101B"],
    "drivers": ["mlx5_core", "irdma"],
    "ifNames": ["ib0", "ib1", "enp59s0f0np0"],
    "linkTypes": ["ether", "InfiniBand"],
    "pciAddresses": ["3B:00.0", "0000:3b:00.1"],
    "rdmaDevices": ["mlx5_0", "mlx5_1"],
}


def selector_values(key: str) -> st.SearchStrategy[list[str]]:
    good = st.sampled_from(GOOD_VALUES[key])
    any_string = st.sampled_from(REAL_STRINGS)
    one = st.integers(0, 9).flatmap(lambda n: any_string if n == 0 else good)
    return st.lists(one, min_size=1, max_size=3)


selector_lists = st.fixed_dictionaries(
    {"vendors": anything_or(selector_values("vendors"))},
    optional={k: anything_or(selector_values(k)) for k in GOOD_VALUES if k != "vendors"},
)
entries = st.fixed_dictionaries(
    {
        "resourceName": anything_or(st.from_regex(r"[a-zA-Z0-9]{1,3}", fullmatch=True)),
        "selectors": anything_or(selector_lists),
    },
    optional={
        "resourcePrefix": anything_or(st.sampled_from(["rdma", "example.com", "Bad_Prefix", ""])),
        "rdmaHcaMax": anything_or(st.integers(min_value=-1, max_value=MAX_RDMA_HCA_MAX + 1)),
        "devices": anything_or(st.lists(st.sampled_from(["ib0", "ib1", ""]), max_size=2)),
    },
)
near_valid_documents = st.fixed_dictionaries(
    {"configList": anything_or(st.lists(anything_or(entries), min_size=1, max_size=3))},
    optional={"periodicUpdateInterval": anything_or(st.integers(min_value=-1, max_value=600))},
)


def encode(value: Any) -> bytes | None:
    """JSON bytes of `value`; None where Python cannot print one of its numbers."""
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except ValueError:
        return None


def check_outcome(run: Any) -> None:
    """`run()` returns a well-formed Config or raises a well-formed ConfigError."""
    try:
        config = run()
    except ConfigError as e:
        assert e.problems
        for p in e.problems:
            assert isinstance(p.path, str) and isinstance(p.message, str) and p.message
            assert INTERNAL_ERROR not in p.message, p
        str(e).encode("utf-8")  # printable and loggable
        return
    assert isinstance(config, Config)
    assert isinstance(config.periodic_update_interval, int)
    assert config.periodic_update_interval >= 0
    assert isinstance(config.resources, tuple) and config.resources
    names = [r.resource_name for r in config.resources]
    assert len(set(names)) == len(names)
    for r in config.resources:
        assert 0 <= r.rdma_hca_max <= MAX_RDMA_HCA_MAX
        assert isinstance(r.selectors, Selectors) and not r.selectors.is_empty()
        for value in vars(r.selectors).values():
            assert isinstance(value, tuple)
            assert all(isinstance(v, str) and v and v.encode("utf-8") for v in value)
            assert len(set(value)) == len(value)
    # Whatever loads, its canonical form loads back to the same thing.
    assert parse_config(json.loads(json.dumps(config.to_json()))) == config


@FUZZ
@given(json_values)
def test_any_json_value(value: Any) -> None:
    check_outcome(lambda: parse_config(value))
    data = encode(value)
    if data is not None:
        check_outcome(lambda: load_config_bytes(data))


@FUZZ
@given(near_valid_documents)
def test_near_valid_documents(value: dict[str, Any]) -> None:
    check_outcome(lambda: parse_config(value))
    data = encode(value)
    if data is not None:
        check_outcome(lambda: load_config_bytes(data))


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes(data: bytes) -> None:
    check_outcome(lambda: load_config_bytes(data))


@FUZZ
@given(near_valid_documents, st.data())
def test_any_bytes_near_a_real_document(value: dict[str, Any], data: st.DataObject) -> None:
    """Cut, splice and flip bytes of a JSON document: decode errors at every position."""
    raw = bytearray(encode(value) or b"")
    if raw:
        i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[i] = data.draw(st.integers(min_value=0, max_value=255))
        raw = raw[: data.draw(st.integers(min_value=0, max_value=len(raw)))]
    check_outcome(lambda: load_config_bytes(bytes(raw)))


valid_entries = st.fixed_dictionaries(
    {
        "resourceName": st.from_regex(
            r"[a-zA-Z0-9]([a-zA-Z0-9_]{0,8}[a-zA-Z0-9])?", fullmatch=True
        ),
        "selectors": st.fixed_dictionaries(
            {"vendors": st.lists(st.sampled_from(GOOD_VALUES["vendors"]), min_size=1)},
            optional={
                k: st.lists(st.sampled_from(v), max_size=3)
                for k, v in GOOD_VALUES.items()
                if k != "vendors"
            },
        ),
    },
    optional={
        "resourcePrefix": st.sampled_from(["rdma", "example.com", "a-b.io", ""]),
        "rdmaHcaMax": st.integers(min_value=0, max_value=MAX_RDMA_HCA_MAX),
    },
)
valid_documents = st.fixed_dictionaries(
    {
        "configList": st.lists(
            valid_entries, min_size=1, max_size=4, unique_by=lambda e: e["resourceName"]
        )
    },
    optional={"periodicUpdateInterval": st.integers(min_value=0, max_value=10**9)},
)


@FUZZ
@given(valid_documents)
def test_valid_documents_load_and_keep_their_meaning(value: dict[str, Any]) -> None:
    config = load_config_bytes(json.dumps(value).encode())
    assert config.periodic_update_interval == value.get("periodicUpdateInterval", 60)
    assert [r.resource_name for r in config.resources] == [
        e["resourceName"] for e in value["configList"]
    ]
    for r, e in zip(config.resources, value["configList"], strict=True):
        assert r.resource_prefix == (e.get("resourcePrefix") or "rdma")
        assert r.rdma_hca_max == e.get("rdmaHcaMax", 0)
        assert set(r.selectors.vendors) == {
            v.lower().removeprefix("0x") for v in e["selectors"]["vendors"]
        }
    check_outcome(lambda: config)
