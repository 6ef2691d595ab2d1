"""common/config.py: every rule of the Go plugin's config, and every rule this project adds."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from common.config import (
    ARPHRD_NAMES,
    DEFAULT_PERIODIC_UPDATE_INTERVAL,
    MAX_CONFIG_BYTES,
    MAX_RDMA_HCA_MAX,
    Config,
    ConfigError,
    ConfigProblem,
    ResourceConfig,
    Selectors,
    load_config_bytes,
    load_config_file,
    parse_config,
    resource_from_json,
)

# The example config of the Go plugin as given in ../shared/reference/upstream-plugin.md.
UPSTREAM_EXAMPLE = """\
{"periodicUpdateInterval": 300,
 "configList": [
   {"resourceName": "hca_shared_devices_a", "resourcePrefix": "example.com", "rdmaHcaMax": 1000,
    "devices": ["ib0", "ib1"]},
   {"resourceName": "hca_shared_devices_b", "rdmaHcaMax": 500,
    "selectors": {"vendors": ["15b3"], "deviceIDs": ["1017"], "ifNames": ["ib3", "ib4"]}}]}
"""


def entry(**overrides: Any) -> dict[str, Any]:
    """A valid configList entry; keyword overrides replace keys, a value of DROP removes one."""
    e: dict[str, Any] = {
        "resourceName": "rdma_a",
        "rdmaHcaMax": 10,
        "selectors": {"vendors": ["15b3"]},
    }
    for key, value in overrides.items():
        if value is DROP:
            e.pop(key, None)
        else:
            e[key] = value
    return e


DROP = object()


def doc(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"configList": list(entries) if entries else [entry()]}
    d.update(top)
    return d


def load(document: object) -> Config:
    """Load through the byte path (the one the plugin uses) when the value is JSON-encodable."""
    if isinstance(document, bytes):
        return load_config_bytes(document)
    if isinstance(document, str):
        return load_config_bytes(document.encode())
    return load_config_bytes(json.dumps(document).encode())


def problems(document: object) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load(document)
    assert info.value.problems, "a ConfigError must name at least one problem"
    return list(info.value.problems)


def the_problem(document: object) -> ConfigProblem:
    found = problems(document)
    assert len(found) == 1, found
    return found[0]


def selectors_of(**sel: Any) -> Selectors:
    return load(doc(entry(selectors=sel))).resources[0].selectors


# --- the compatibility contract ----------------------------------------------------------------


def test_upstream_example_loads_to_the_expected_config() -> None:
    config = load(UPSTREAM_EXAMPLE)
    assert config == Config(
        periodic_update_interval=300,
        resources=(
            ResourceConfig(
                "hca_shared_devices_a", "example.com", 1000, Selectors(if_names=("ib0", "ib1"))
            ),
            ResourceConfig(
                "hca_shared_devices_b",
                "rdma",
                500,
                Selectors(vendors=("15b3",), device_ids=("1017",), if_names=("ib3", "ib4")),
            ),
        ),
    )
    assert config.resources[0].full_name == "example.com/hca_shared_devices_a"
    assert config.resources[1].full_name == "rdma/hca_shared_devices_b"
    # `devices` still works but is reported as deprecated.
    assert [w.path for w in config.warnings] == ["configList[0].devices"]


def test_upstream_readme_prefix_example_prefix_is_refused_with_the_kubelets_reason() -> None:
    p = the_problem(doc(entry(resourcePrefix="example_prefix")))
    assert p.path == "configList[0].resourcePrefix"
    assert "refused by the kubelet" in p.message
    assert "DNS-1123" in p.message
    assert '"example-prefix"' in p.message  # the fix


def test_load_config_file_reads_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(UPSTREAM_EXAMPLE)
    assert load_config_file(path) == load(UPSTREAM_EXAMPLE)
    assert load_config_file(str(path)) == load(UPSTREAM_EXAMPLE)


@pytest.mark.parametrize(
    "spelling",
    [
        {"ResourceName": "rdma_a", "RDMAHCAMAX": 5, "Selectors": {"VENDORS": ["15b3"]}},
        {"resourcename": "rdma_a", "rdmahcamax": 5, "selectors": {"vendors": ["15b3"]}},
        # Go folds KELVIN SIGN onto k and LONG S onto s; so does the loader.
        {"re\u017fourceName": "rdma_a", "rdmaHcaMax": 5, "selectors": {"vendors": ["15b3"]}},
    ],
)
def test_keys_match_without_regard_to_case(spelling: dict[str, Any]) -> None:
    config = load({"CONFIGLIST": [spelling], "PeriodicUpdateInterval": 7})
    assert config.periodic_update_interval == 7
    assert config.resources == (ResourceConfig("rdma_a", "rdma", 5, Selectors(vendors=("15b3",))),)


def test_kelvin_sign_folds_onto_k_in_link_types_key() -> None:
    sel = selectors_of(**{"lin\u212aTypes": ["ether"]})
    assert sel.link_types == ("ether",)


def test_periodic_update_interval_defaults_to_60() -> None:
    assert load(doc()).periodic_update_interval == DEFAULT_PERIODIC_UPDATE_INTERVAL == 60


@pytest.mark.parametrize("value", [0, 1, 300, 86400])
def test_periodic_update_interval_accepts_whole_seconds_and_zero(value: int) -> None:
    assert load(doc(periodicUpdateInterval=value)).periodic_update_interval == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, ">= 0"),
        (True, "not true"),
        (1.5, "fractions"),
        (60.0, "write 60 without a decimal point"),
        ("60", "remove the quotes"),
        (None, "remove the key to use the default"),
        ([60], "not a list"),
        (10**10, "too large"),
    ],
)
def test_periodic_update_interval_refuses(value: object, fragment: str) -> None:
    p = the_problem(doc(periodicUpdateInterval=value))
    assert p.path == "periodicUpdateInterval"
    assert fragment in p.message


def test_config_list_is_required() -> None:
    p = the_problem({"periodicUpdateInterval": 5})
    assert p.path == "configList"
    assert "required" in p.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [([], "must not be empty"), (None, "not null"), ({"a": 1}, "not an object"), ("x", "list")],
)
def test_config_list_must_be_a_non_empty_list(value: object, fragment: str) -> None:
    p = the_problem({"configList": value})
    assert p.path == "configList"
    assert fragment in p.message


@pytest.mark.parametrize("value", [None, 3, "rdma_a", ["x"], True])
def test_each_config_list_entry_must_be_an_object(value: object) -> None:
    p = the_problem({"configList": [entry(), value]})
    assert p.path == "configList[1]"
    assert "must be an object" in p.message


@pytest.mark.parametrize("name", ["a", "hca_shared_devices_a", "A1_b2", "x" * 63, "0"])
def test_resource_name_accepts_letters_digits_underscore(name: str) -> None:
    assert load(doc(entry(resourceName=name))).resources[0].resource_name == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "is empty"),
        ("a-b", 'characters other than letters, digits and _: "-"'),
        ("a.b", "other than letters"),
        ("a b", "other than letters"),
        ("caf\u00e9", "other than letters"),
        ("a\n", "other than letters"),  # Go's $ does not match before a final newline
        ("x" * 64, "at most 63"),
        ("_a", "start and end with a letter or digit"),
        ("a_", "start and end with a letter or digit"),
        (5, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_resource_name_refuses(name: object, fragment: str) -> None:
    p = the_problem(doc(entry(resourceName=name)))
    assert p.path == "configList[0].resourceName"
    assert fragment in p.message


def test_resource_name_is_required() -> None:
    p = the_problem(doc(entry(resourceName=DROP)))
    assert p.path == "configList[0].resourceName"
    assert "required" in p.message


def test_resource_names_are_unique_even_with_different_prefixes() -> None:
    p = the_problem(doc(entry(), entry(resourceName="rdma_b"), entry(resourcePrefix="example.com")))
    assert p.path == "configList[2].resourceName"
    assert "already used by configList[0]" in p.message
    assert ".sock" in p.message


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (DROP, "rdma"),
        ("", "rdma"),  # the Go plugin treats "" as "use the default"
        ("example.com", "example.com"),
        ("nvidia.com", "nvidia.com"),
        ("a-b.c-d.io", "a-b.c-d.io"),
        ("requests", "requests"),
        ("0rdma", "0rdma"),
        ("a" * 244, "a" * 244),
    ],
)
def test_resource_prefix_default_and_valid(prefix: object, expected: str) -> None:
    config = load(doc(entry(resourcePrefix=prefix)))
    assert config.resources[0].resource_prefix == expected


@pytest.mark.parametrize(
    ("prefix", "fragment"),
    [
        ("example_prefix", "DNS-1123"),
        ("Example.com", "DNS-1123"),
        ("-a.com", "DNS-1123"),
        ("a..com", "DNS-1123"),
        ("a.com.", "DNS-1123"),
        ("a/b", "DNS-1123"),
        ("kubernetes.io", "reserved for Kubernetes"),
        ("foo.kubernetes.io", "reserved for Kubernetes"),
        ("requests.example.com", "reserved for quota"),
        ("a" * 245, "longer than 244"),
    ],
)
def test_resource_prefix_refused_where_the_kubelet_refuses_it(prefix: str, fragment: str) -> None:
    p = the_problem(doc(entry(resourcePrefix=prefix)))
    assert p.path == "configList[0].resourcePrefix"
    assert fragment in p.message
    assert "refused by the kubelet" in p.message


def test_resource_prefix_must_be_a_string() -> None:
    p = the_problem(doc(entry(resourcePrefix=3)))
    assert p.path == "configList[0].resourcePrefix"
    assert "must be a string" in p.message


def test_rdma_hca_max_absent_means_zero_devices_with_a_warning() -> None:
    config = load(doc(entry(rdmaHcaMax=DROP)))
    assert config.resources[0].rdma_hca_max == 0
    assert [w.path for w in config.warnings] == ["configList[0].rdmaHcaMax"]


@pytest.mark.parametrize("value", [0, 1, 1000, MAX_RDMA_HCA_MAX])
def test_rdma_hca_max_accepts_zero_to_the_bound(value: int) -> None:
    assert load(doc(entry(rdmaHcaMax=value))).resources[0].rdma_hca_max == value


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("-1", "must be >= 0"),
        (str(MAX_RDMA_HCA_MAX + 1), "at most 10000"),
        ("true", "not true"),
        ("1000.0", "write 1000 without a decimal point"),
        ("1e3", "write 1000 without a decimal point"),
        ('"1000"', "remove the quotes"),
        ("null", "not null"),
        ("9" * 5000, "out of range"),  # Python's int() would refuse this many digits
        ("-Infinity", "not valid JSON"),
    ],
)
def test_rdma_hca_max_refuses(raw: str, fragment: str) -> None:
    text = '{"configList": [{"resourceName": "a", "selectors": {"vendors": ["15b3"]}, '
    text += f'"rdmaHcaMax": {raw}}}]}}'
    p = the_problem(text)
    assert p.path == "configList[0].rdmaHcaMax"
    assert fragment in p.message


def test_both_selectors_and_devices_is_an_error() -> None:
    p = the_problem(doc(entry(devices=["ib0"])))
    assert p.path == "configList[0]"
    assert 'both "selectors" and "devices"' in p.message


@pytest.mark.parametrize(
    "overrides",
    [
        {"selectors": DROP},
        {"selectors": {}},
        {"selectors": {"vendors": [], "ifNames": []}},
        {"selectors": DROP, "devices": []},
        {"selectors": {}, "devices": []},
    ],
)
def test_neither_selectors_nor_devices_is_an_error(overrides: dict[str, Any]) -> None:
    p = the_problem(doc(entry(**overrides)))
    assert p.path == "configList[0]"
    assert "selects no devices" in p.message


def test_devices_means_if_names_even_next_to_an_empty_selectors() -> None:
    config = load(doc(entry(selectors={"vendors": []}, devices=["ib0", "ib1"])))
    assert config.resources[0].selectors == Selectors(if_names=("ib0", "ib1"))
    assert [w.path for w in config.warnings] == ["configList[0].devices"]


def test_empty_devices_next_to_selectors_is_fine() -> None:
    config = load(doc(entry(devices=[])))
    assert config.resources[0].selectors == Selectors(vendors=("15b3",))
    assert config.warnings == ()


def test_a_new_selector_alone_counts_as_a_selector() -> None:
    sel = selectors_of(rdmaDevices=["mlx5_0"])
    assert sel == Selectors(rdma_devices=("mlx5_0",))


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("selectors", None, "not null"),
        ("selectors", ["15b3"], "not a list"),
        ("devices", None, "not null"),
        ("devices", "ib0", 'wrap it in brackets: ["ib0"]'),
    ],
)
def test_null_or_wrong_type_where_a_list_or_object_is_expected(
    key: str, value: object, fragment: str
) -> None:
    p = the_problem(doc(entry(**{key: value})))
    assert p.path == f"configList[0].{key}"
    assert fragment in p.message


def test_devices_values_are_checked_like_if_names() -> None:
    p = the_problem(doc(entry(selectors=DROP, devices=["ib0", "a/b"])))
    assert p.path == "configList[0].devices[1]"


# --- unknown and repeated keys -------------------------------------------------------------------


def test_unknown_key_suggests_the_closest_valid_key() -> None:
    p = the_problem(doc(entry(rdmaHcMax=1)))
    assert p.path == "configList[0].rdmaHcMax"
    assert p.message == 'unknown key "rdmaHcMax"; did you mean "rdmaHcaMax"?'


@pytest.mark.parametrize(
    ("where", "key", "suggestion"),
    [
        ("top", "periodicUpdateIntervall", "periodicUpdateInterval"),
        ("top", "configlists", "configList"),
        ("entry", "resourcePrefx", "resourcePrefix"),
        ("entry", "selector", "selectors"),
        ("selectors", "vendor", "vendors"),
        ("selectors", "deviceID", "deviceIDs"),
        ("selectors", "pciAddress", "pciAddresses"),
        ("selectors", "linkType", "linkTypes"),
    ],
)
def test_unknown_key_suggestions(where: str, key: str, suggestion: str) -> None:
    if where == "top":
        d = doc(**{key: 1})
        path = key
    elif where == "entry":
        d = doc(entry(**{key: 1}))
        path = f"configList[0].{key}"
    else:
        d = doc(entry(selectors={"vendors": ["15b3"], key: ["x"]}))
        path = f"configList[0].selectors.{key}"
    found = problems(d)
    assert any(p.path == path and f'did you mean "{suggestion}"' in p.message for p in found), found


def test_a_key_at_the_wrong_level_says_where_it_belongs() -> None:
    p = the_problem(doc(entry(vendors=["15b3"])))
    assert p.path == "configList[0].vendors"
    assert "belongs inside selectors" in p.message


def test_an_unrelated_unknown_key_lists_the_valid_keys() -> None:
    p = the_problem(doc(zzz=1))
    assert p.path == "zzz"
    assert "valid keys at the top level: periodicUpdateInterval, configList" in p.message


def test_an_odd_unknown_key_gets_a_bracketed_path() -> None:
    p = the_problem(doc(**{"a b": 1}))
    assert p.path == '["a b"]'


def test_a_key_given_twice_differing_in_case_is_an_error() -> None:
    p = the_problem(doc(entry(ResourceName="rdma_b")))
    assert p.path == "configList[0].ResourceName"
    assert "given twice" in p.message
    assert '"resourceName" and "ResourceName"' in p.message


def test_a_key_given_twice_exactly_is_an_error() -> None:
    text = '{"configList": [{"resourceName": "a", "resourceName": "b", "rdmaHcaMax": 1, '
    text += '"selectors": {"vendors": ["15b3"]}}]}'
    p = the_problem(text)
    assert p.path == "configList[0].resourceName"
    assert "given twice" in p.message


# --- selector values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw", "normalised"),
    [
        ("vendors", ["0x15B3", "8086"], ("15b3", "8086")),
        ("vendors", ["15B3"], ("15b3",)),
        ("vendors", ["0X15b3"], ("15b3",)),
        ("deviceIDs", ["0x1017", "101B"], ("1017", "101b")),
        ("linkTypes", ["InfiniBand", "ETHER"], ("infiniband", "ether")),
        ("linkTypes", ["loopback", "ieee802", "unknown42"], ("loopback", "ieee802", "unknown42")),
        ("pciAddresses", ["3B:00.0"], ("0000:3b:00.0",)),
        ("pciAddresses", ["0000:3B:00.1"], ("0000:3b:00.1",)),
        ("pciAddresses", ["10000:01:1f.7"], ("10000:01:1f.7",)),
        ("rdmaDevices", ["mlx5_0", "irdma-rdma0"], ("mlx5_0", "irdma-rdma0")),
        ("ifNames", ["ib0", "enp59s0f0np0"], ("ib0", "enp59s0f0np0")),
        ("drivers", ["mlx5_core", "irdma"], ("mlx5_core", "irdma")),
    ],
)
def test_selector_values_are_normalised(key: str, raw: list[str], normalised: tuple[str]) -> None:
    sel = selectors_of(**{key: raw})
    attr = {
        "vendors": "vendors",
        "deviceIDs": "device_ids",
        "drivers": "drivers",
        "ifNames": "if_names",
        "linkTypes": "link_types",
        "pciAddresses": "pci_addresses",
        "rdmaDevices": "rdma_devices",
    }[key]
    assert getattr(sel, attr) == normalised


VALID = {
    "vendors": "15b3",
    "deviceIDs": "1017",
    "drivers": "mlx5_core",
    "ifNames": "ib0",
    "linkTypes": "ether",
    "pciAddresses": "0000:3b:00.0",
    "rdmaDevices": "mlx5_0",
}


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("vendors", "15b", 'pad with zeros: "015b"'),
        ("vendors", "15b33", "4 hex digits"),
        ("vendors", "0x", "4 hex digits"),
        ("vendors", "mellanox", 'write the vendor\'s PCI ID: "15b3"'),
        ("vendors", "15b3:1017", 'put "15b3" in vendors and "1017" in deviceIDs'),
        ("deviceIDs", "zzzz", "4 hex digits"),
        ("linkTypes", "ethernet", 'did you mean "ether"?'),
        ("linkTypes", "Ethernet", 'did you mean "ether"?'),
        ("linkTypes", "eth", 'did you mean "ether"?'),
        ("linkTypes", "ib", 'did you mean "infiniband"?'),
        ("linkTypes", "IB", 'did you mean "infiniband"?'),
        ("linkTypes", "infiniban", 'did you mean "infiniband"?'),
        ("linkTypes", "qqqqq", '"ether" (Ethernet, RoCE) or "infiniband"'),
        ("pciAddresses", "3b:00", "domain:bus:device.function"),
        ("pciAddresses", "0000:3b:00.8", "domain:bus:device.function"),
        ("pciAddresses", "0000:3b:20.0", "at most 1f"),
        ("pciAddresses", "0000:3g:00.0", "domain:bus:device.function"),
        ("rdmaDevices", "mlx5/0", "contains '/'"),
        ("rdmaDevices", "m" * 64, "longer than 63"),
        ("ifNames", "a/b", "not a Linux interface name"),
        ("ifNames", "a:1", "not a Linux interface name"),
        ("ifNames", "..", "not a Linux interface name"),
        ("ifNames", "abcdefghijklmnop", "longer than 15 bytes"),
        ("drivers", "mlx5/core", "contains '/'"),
        ("drivers", "", "empty string"),
        ("ifNames", "", "empty string"),
        ("rdmaDevices", "", "empty string"),
        ("vendors", "", "empty string"),
        ("ifNames", " ib0", "white space"),
        ("vendors", 5571, 'must be a string, not the number 5571; put it in double quotes: "5571"'),
        ("ifNames", None, "must be a string, not null"),
        ("ifNames", ["ib0"], "must be a string, not a list"),
        ("ifNames", "\ud800", "surrogate"),
    ],
)
def test_selector_values_refused_with_a_hint(key: str, value: object, fragment: str) -> None:
    p = the_problem(doc(entry(selectors={key: [VALID[key], value]})))
    assert p.path == f"configList[0].selectors.{key}[1]"
    assert fragment in p.message


@pytest.mark.parametrize("value", [None, "15b3", {"a": 1}, 3])
def test_a_selector_must_be_a_list(value: object) -> None:
    p = the_problem(doc(entry(selectors={"vendors": value})))
    assert p.path == "configList[0].selectors.vendors"
    assert "must be a list of strings" in p.message


def test_duplicate_selector_values_are_dropped_with_a_warning() -> None:
    config = load(doc(entry(selectors={"vendors": ["15b3", "0x15B3", "8086", "15B3"]})))
    assert config.resources[0].selectors.vendors == ("15b3", "8086")
    assert [w.path for w in config.warnings] == [
        "configList[0].selectors.vendors[1]",
        "configList[0].selectors.vendors[3]",
    ]


@pytest.mark.parametrize("name", sorted(set(ARPHRD_NAMES.values())))
def test_every_kernel_link_type_name_is_accepted(name: str) -> None:
    assert selectors_of(linkTypes=[name.upper()]).link_types == (name,)


def test_link_type_table_has_the_kernels_names_for_ether_and_infiniband() -> None:
    assert ARPHRD_NAMES[1] == "ether"
    assert ARPHRD_NAMES[32] == "infiniband"
    assert ARPHRD_NAMES[772] == "loopback"


# --- bad documents -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "the file is empty"),
        (b"  \n\t\n", "the file is empty"),
        (b'{"configList": [\n  {"resourceName": "a",,\n', "line 2, column 24"),
        (b'{"configList": [1,]}', "no trailing comma"),
        (b"{'configList': []}", "double quotes"),
        (b'{"configList": [] // hi\n}', "no comments"),
        (b'{"configList": [', "ends early"),
        (b"configList:\n  - resourceName: a\n", "looks like YAML"),
        (b'{"configList": [{"resourceName": "a\xff"}]}', "not UTF-8: byte 0xff at line 1"),
        (b"\n\n  \xc3(", "line 3, column 3"),
        (b'\xef\xbb\xbf{"configList": []}', "byte-order mark"),
        ('{"configList": []}'.encode("utf-16"), "UTF-16"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"configList"', "must be a JSON object"),
        (b"42", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"configList": [{"resourceName": NaN}]}', "NaN (not valid JSON)"),
    ],
)
def test_bad_documents_get_clear_errors(data: bytes, fragment: str) -> None:
    found = problems(data)
    assert any(fragment in str(p) for p in found), found


def test_a_list_at_the_top_level_is_told_to_wrap_it() -> None:
    p = the_problem([entry()])
    assert p.path == ""
    assert 'wrap it: {"configList": [...]}' in p.message


def test_a_file_larger_than_a_config_map_is_refused() -> None:
    data = b'{"configList": [], "x": "' + b"a" * MAX_CONFIG_BYTES + b'"}'
    assert "larger than" in the_problem(data).message


def test_missing_file_and_folder_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "nope.json")
    assert "does not exist" in str(info.value)
    assert info.value.source == str(tmp_path / "nope.json")
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path)
    assert "is a folder" in str(info.value)
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "secret.json"
        unreadable.write_text("{}")
        unreadable.chmod(0)
        with pytest.raises(ConfigError, match="cannot read"):
            load_config_file(unreadable)


def test_error_messages_are_printable_even_for_hostile_keys() -> None:
    text = '{"configList": [], "\\ud800": 1, "' + "k" * 10_000 + '": 2}'
    with pytest.raises(ConfigError) as info:
        load(text)
    str(info.value).encode("ascii")  # quoted with escapes, never a raw surrogate
    assert max(len(p.message) for p in info.value.problems) < 400


# --- the whole picture -------------------------------------------------------------------------


def test_every_problem_is_reported_together_with_its_path() -> None:
    d = {
        "periodicUpdateInterval": -5,
        "configList": [
            entry(selectors={"vendors": ["15b3", "0x8086", "nvidiaa"], "linkTypes": ["eth"]}),
            entry(resourceName="rdma_b", rdmaHcaMax=-1, resourcePrefix="Bad_Prefix"),
            entry(resourceName="rdma_a", rdmaHcMax=3),
        ],
    }
    paths = sorted(p.path for p in problems(d))
    assert paths == sorted(
        [
            "periodicUpdateInterval",
            "configList[0].selectors.vendors[2]",
            "configList[0].selectors.linkTypes[0]",
            "configList[1].rdmaHcaMax",
            "configList[1].resourcePrefix",
            "configList[2].rdmaHcMax",
            "configList[2].resourceName",
        ]
    )


def test_the_error_message_lists_one_problem_per_line() -> None:
    with pytest.raises(ConfigError) as info:
        load(doc(entry(rdmaHcaMax=-1, resourceName="a-b")))
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("configList[0].") for line in lines)


def test_the_config_is_frozen_and_made_of_tuples() -> None:
    config = load(UPSTREAM_EXAMPLE)
    assert isinstance(config.resources, tuple)
    for r in config.resources:
        for f in dataclasses.fields(Selectors):
            assert isinstance(getattr(r.selectors, f.name), tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.periodic_update_interval = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.resources[0].selectors.vendors = ("x",)  # type: ignore[misc]
    hash(config)  # usable as a dict key / in sets


def test_parse_config_takes_an_already_parsed_value_and_does_not_change_it() -> None:
    d = json.loads(UPSTREAM_EXAMPLE)
    before = copy.deepcopy(d)
    assert parse_config(d) == load(UPSTREAM_EXAMPLE)
    assert d == before


def test_parse_config_refuses_non_json_python_values() -> None:
    with pytest.raises(ConfigError, match="not a JSON value"):
        parse_config({"configList": [entry(selectors={"vendors": ("15b3",)})]})
    with pytest.raises(ConfigError, match="not a string"):
        parse_config({"configList": [entry()], 3: 4})


def test_round_trip_through_to_json() -> None:
    config = load(UPSTREAM_EXAMPLE)
    assert parse_config(config.to_json()) == config
    for r in config.resources:
        assert resource_from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(ConfigError):
        resource_from_json({"resourceName": "a"})


def test_warnings_do_not_take_part_in_equality() -> None:
    a = load(doc(entry(selectors={"vendors": ["15b3", "15b3"]})))
    b = load(doc())
    assert a.warnings and not b.warnings
    assert a == b


# --- the rdmaHcaMax bound: the arithmetic in docs/configuration.md -------------------------------


def _device_plugin_messages() -> tuple[Any, Any]:
    """ListAndWatchResponse and Device built from the field table of the reference."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="bound_check.proto", package="v1beta1")
    fdp.syntax = "proto3"

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("NUMANode", ("ID", 1, F.TYPE_INT64, opt, ""))
    message("TopologyInfo", ("nodes", 1, F.TYPE_MESSAGE, rep, ".v1beta1.NUMANode"))
    message(
        "Device",
        ("ID", 1, F.TYPE_STRING, opt, ""),
        ("health", 2, F.TYPE_STRING, opt, ""),
        ("topology", 3, F.TYPE_MESSAGE, opt, ".v1beta1.TopologyInfo"),
    )
    message("ListAndWatchResponse", ("devices", 1, F.TYPE_MESSAGE, rep, ".v1beta1.Device"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return (
        get(pool.FindMessageTypeByName("v1beta1.ListAndWatchResponse")),
        get(pool.FindMessageTypeByName("v1beta1.Device")),
    )


def test_rdma_hca_max_bound_keeps_list_and_watch_far_below_4_mib() -> None:
    response_cls, device_cls = _device_plugin_messages()
    response = response_cls()
    for i in range(MAX_RDMA_HCA_MAX):
        d = response.devices.add(ID=f"{i:05d}", health="Unhealthy")
        for node in range(8):
            d.topology.nodes.add(ID=node)
    one = device_cls(ID="00000", health="Unhealthy")
    for node in range(8):
        one.topology.nodes.add(ID=node)
    # The figures docs/configuration.md states.
    assert one.ByteSize() == 50
    assert response.ByteSize() == 52 * MAX_RDMA_HCA_MAX == 520_000
    assert response.ByteSize() * 8 < 4 * 1024 * 1024
