"""The chart's values.schema.json against `validate-config`'s own rules (test process).

The schema must never refuse a config the plugin accepts (with keys spelled as documented), and
must refuse what the plugin refuses wherever a JSON schema can say it: names, prefixes, numbers,
selector values, unknown keys. Checked value by value with hypothesis (jsonschema here; helm's
own validator runs the refusals in tests/static/test_helm.py), and its limits are the plugin's
constants.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from common.config import (
    MAX_PERIODIC_UPDATE_INTERVAL,
    MAX_RDMA_HCA_MAX,
    MAX_RESOURCE_NAME_LENGTH,
    MAX_RESOURCE_PREFIX_LENGTH,
    ConfigError,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "deployment/helm/rdma-shared-dp/values.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
Draft202012Validator.check_schema(SCHEMA)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ASCII without the line breaks: Python's `$` (jsonschema here) also matches before a final
# newline where Go's (helm) does not, so a newline would test the two regex engines, not the
# rules. Non-ASCII white space differs between engines the same way.
TEXT = st.text(alphabet=string.ascii_letters + string.digits + "_-.:/ \t@", max_size=70)


def schema_accepts_config(config: dict[str, Any]) -> bool:
    return bool(VALIDATOR.is_valid({"config": config}))


def plugin_accepts(config: dict[str, Any]) -> bool:
    try:
        parse_config(config)
    except ConfigError:
        return False
    return True


def one(**entry: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceName": "hca", "rdmaHcaMax": 10,
                                "selectors": {"vendors": ["15b3"]}}  # fmt: skip
    resource.update(entry)
    return {"configList": [{k: v for k, v in resource.items() if v is not None}]}


def agree(config: dict[str, Any]) -> None:
    assert schema_accepts_config(config) == plugin_accepts(config), config


@given(TEXT)
@example("hca_shared_devices_a")
@example("_a")
@example("x" * 64)
@PROPERTY
def test_resource_names(name: str) -> None:
    agree(one(resourceName=name))


@given(st.one_of(TEXT.map(str.lower), st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True)))
@example("example_prefix")
@example("rdma.kubernetes.io")
@example("requests.rdma")
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 54)
@example("")
@PROPERTY
def test_resource_prefixes(prefix: str) -> None:
    agree(one(resourcePrefix=prefix))


@given(st.one_of(st.integers(), TEXT, st.booleans(), st.none()))
@example(MAX_RDMA_HCA_MAX)
@example(MAX_RDMA_HCA_MAX + 1)
@PROPERTY
def test_rdma_hca_max(value: Any) -> None:
    if value is None:
        return  # a missing rdmaHcaMax is a warning, not a refusal; None would mean "null"
    agree(one(rdmaHcaMax=value))


@given(st.integers(min_value=-5, max_value=MAX_PERIODIC_UPDATE_INTERVAL + 5) | TEXT)
@example(MAX_PERIODIC_UPDATE_INTERVAL)
@example(MAX_PERIODIC_UPDATE_INTERVAL + 1)
@PROPERTY
def test_periodic_update_interval(value: Any) -> None:
    config = one()
    config["periodicUpdateInterval"] = value
    agree(config)


SELECTOR_TEXT = st.one_of(
    TEXT,
    st.from_regex(r"(0x)?[0-9a-fA-F]{1,5}", fullmatch=True),
    st.from_regex(r"([0-9a-f]{1,8}:)?[0-9a-f]{1,3}:[0-9a-f]{1,2}\.[0-9]", fullmatch=True),
)


@given(
    st.sampled_from(["vendors", "deviceIDs", "drivers", "ifNames", "pciAddresses", "rdmaDevices"]),
    SELECTOR_TEXT,
)
@example("ifNames", "0000:3b:00.0")
@example("ifNames", "..")
@example("pciAddresses", "3b:20.0")
@example("vendors", "0X15B3")
@PROPERTY
def test_selector_values(key: str, value: str) -> None:
    agree(one(selectors={key: [value]}))


@pytest.mark.parametrize(
    "config",
    [
        one(selectors={}),
        one(selectors=None),
        one(selectors={"vendors": ["15b3"]}, unknown=1),
        one(selectors={"colour": ["blue"]}),
        {"configList": []},
        {"configList": [{}]},
        {"periodicUpdateInterval": 5},
        {"configList": "hca"},
    ],
    ids=lambda c: json.dumps(c)[:60],
)
def test_shapes_the_plugin_refuses_the_schema_refuses(config: dict[str, Any]) -> None:
    assert not plugin_accepts(config)
    assert not schema_accepts_config(config)


def test_every_shipped_config_is_accepted() -> None:
    configs = [
        REPO / "deployment/k8s/base/config.json",
        *REPO.glob("deployment/examples/**/*.json"),
    ]
    for path in configs:
        config = json.loads(path.read_text())
        assert plugin_accepts(config) and schema_accepts_config(config), path
    assert VALIDATOR.is_valid({"config": {}})  # {}: the chart's shipped example


def test_the_schema_limits_are_the_plugins() -> None:
    resource = SCHEMA["$defs"]["resource"]["properties"]
    assert resource["rdmaHcaMax"]["maximum"] == MAX_RDMA_HCA_MAX
    assert resource["resourceName"]["maxLength"] == MAX_RESOURCE_NAME_LENGTH
    prefix_rules = resource["resourcePrefix"]["anyOf"][1]["allOf"]
    assert {"maxLength": MAX_RESOURCE_PREFIX_LENGTH} in prefix_rules
    interval = SCHEMA["$defs"]["config"]["properties"]["periodicUpdateInterval"]
    assert interval["maximum"] == MAX_PERIODIC_UPDATE_INTERVAL
