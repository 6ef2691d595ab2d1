"""CDI spec naming, content and writing (pure parts of workers/cdi.py and workers/plan.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from common.config import ResourceConfig, Selectors
from common.devices import RDMA_CM_PATH
from tests.standin_supervisor import make_candidate, make_resource
from workers import cdi
from workers.plan import make_plan

SCHEMA_DIR = Path(__file__).parent.parent / "fixtures" / "cdi-schema"
_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")


def _validator() -> Draft7Validator:
    schema = json.loads((SCHEMA_DIR / "schema.json").read_text())
    defs = json.loads((SCHEMA_DIR / "defs.json").read_text())
    registry: Registry[Any] = Registry().with_resource(
        "defs.json", Resource.from_contents(defs, default_specification=DRAFT7)
    )
    return Draft7Validator(schema, registry=registry)


VALIDATOR = _validator()


def validate_cdi(spec: dict[str, Any]) -> None:
    """Schema-valid, and using no field newer than the cdiVersion it declares."""
    errors = sorted(VALIDATOR.iter_errors(spec), key=str)
    assert not errors, [e.message for e in errors]
    version = spec["cdiVersion"]
    assert version in _VERSIONS
    assert spec["devices"], "a spec needs at least one device"
    needs_050 = any(not d["name"][0].isalpha() for d in spec["devices"]) or any(
        "hostPath" in n
        for edits in [spec.get("containerEdits", {})]
        + [d["containerEdits"] for d in spec["devices"]]
        for n in edits.get("deviceNodes", [])
    )
    needs_060 = "annotations" in spec or any("annotations" in d for d in spec["devices"])
    minimum = "0.6.0" if needs_060 else "0.5.0" if needs_050 else "0.3.0"
    assert version == minimum, f"declares {version}, its fields need exactly {minimum}"
    for device in spec["devices"]:
        assert device["containerEdits"].get("deviceNodes"), "empty device edits are refused"


def test_the_validator_can_fail() -> None:
    with pytest.raises(AssertionError):
        validate_cdi({"cdiVersion": "0.5.0", "kind": "a/b", "devices": [{"name": "x"}]})
    with pytest.raises(AssertionError):
        validate_cdi(
            {
                "cdiVersion": "0.5.0",
                "kind": "a/b",
                "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/d"}]}}],
            }
        )


def test_spec_for_pci_devices() -> None:
    resource = make_resource("hca_a", "example.com")
    devices = (make_candidate(1, numa_node=1), make_candidate(0))
    spec = cdi.build_spec(resource, devices)
    assert spec is not None
    validate_cdi(spec)
    assert spec["kind"] == "example.com/hca_a"
    assert spec["cdiVersion"] == "0.5.0"  # PCI addresses start with a digit
    assert [d["name"] for d in spec["devices"]] == ["0000:04:00.0", "0000:03:00.0"]
    nodes = spec["devices"][1]["containerEdits"]["deviceNodes"]
    assert nodes == [
        {
            "path": "/dev/infiniband/uverbs0",
            "type": "c",
            "permissions": "rwm",
            "major": 231,
            "minor": 192,
        },
        {
            "path": "/dev/infiniband/umad0",
            "type": "c",
            "permissions": "rwm",
            "major": 231,
            "minor": 0,
        },
        {
            "path": "/dev/infiniband/issm0",
            "type": "c",
            "permissions": "rwm",
            "major": 231,
            "minor": 64,
        },
    ]
    # rdma_cm once, spec-wide, whatever the number of devices a container gets.
    assert spec["containerEdits"] == {
        "deviceNodes": [{"path": RDMA_CM_PATH, "type": "c", "permissions": "rwm"}]
    }


def test_auxiliary_names_keep_the_oldest_version() -> None:
    spec = cdi.build_spec(make_resource(), (make_candidate(0, name="mlx5_core.sf.2"),))
    assert spec is not None
    validate_cdi(spec)
    assert spec["cdiVersion"] == "0.3.0"


def test_unknown_major_minor_are_left_to_the_runtime() -> None:
    from dataclasses import replace

    device = make_candidate(0)
    rdma = device.rdma_devices[0]
    chars = tuple(replace(c, major=None, minor=None) for c in rdma.char_devices)
    device = replace(device, rdma_devices=(replace(rdma, char_devices=chars),))
    spec = cdi.build_spec(make_resource(), (device,))
    assert spec is not None
    validate_cdi(spec)
    assert all("major" not in n for n in spec["devices"][0]["containerEdits"]["deviceNodes"])


def test_no_usable_device_means_no_spec() -> None:
    assert cdi.build_spec(make_resource(), ()) is None
    absent = make_candidate(0, present=False)
    assert cdi.build_spec(make_resource(), (absent,)) is None


def test_names_are_per_resource_and_tagged() -> None:
    a = make_resource("hca_a", "example.com")
    b = make_resource("hca_b", "example.com")
    assert cdi.spec_file_name(a) == "rdma-shared-dp_example.com_hca_a.json"
    assert cdi.annotation_key(a) == "cdi.k8s.io/rdma-shared-dp_example.com_hca_a"
    assert cdi.spec_file_name(a) != cdi.spec_file_name(b)
    assert cdi.annotation_key(a) != cdi.annotation_key(b)


def test_long_or_odd_names_get_a_valid_hashed_key() -> None:
    long = ResourceConfig("r" * 63, "very-long-prefix.example.com", 1, Selectors())
    trailing = ResourceConfig("hca_", "example.com", 1, Selectors())
    keys = {cdi.producer_key(long), cdi.producer_key(trailing)}
    for key in keys:
        assert len(key) <= 63
        assert key.startswith("rdma-shared-dp_")
        assert key[-1].isalnum()
    other = ResourceConfig("r" * 62 + "s", "very-long-prefix.example.com", 1, Selectors())
    assert cdi.producer_key(long) != cdi.producer_key(other)


@pytest.mark.parametrize(
    ("prefix", "name"), [("example.com", "_hca"), ("1example.com", "hca"), ("example.com", "hca_")]
)
def test_names_that_cannot_form_a_kind_are_refused_clearly(prefix: str, name: str) -> None:
    resource = ResourceConfig(name, prefix, 1, Selectors())
    with pytest.raises(cdi.CdiNameError, match="without --use-cdi"):
        cdi.kind(resource)
    with pytest.raises(cdi.CdiNameError):
        make_plan(resource, (make_candidate(0),), use_cdi=True)
    make_plan(resource, (make_candidate(0),), use_cdi=False)  # fine without CDI


def test_write_is_atomic_and_idempotent(tmp_path: Path) -> None:
    folder = tmp_path / "cdi"
    resource = make_resource()
    name = cdi.spec_file_name(resource)
    other = folder / "vendor.com-gpu.json"
    folder.mkdir()
    other.write_text("{}")
    spec = cdi.build_spec(resource, (make_candidate(0),))
    assert spec is not None
    assert cdi.write_spec(str(folder), name, spec) is True
    assert json.loads((folder / name).read_text()) == spec
    mtime = os.stat(folder / name).st_mtime_ns
    assert cdi.write_spec(str(folder), name, spec) is False  # unchanged: not rewritten
    assert os.stat(folder / name).st_mtime_ns == mtime
    assert oct(os.stat(folder / name).st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, other.name])

    assert cdi.remove_spec(str(folder), name) is True
    assert cdi.remove_spec(str(folder), name) is False
    assert [p.name for p in folder.iterdir()] == [other.name]  # never another producer's file


def test_plan_names_match_the_spec() -> None:
    resource = make_resource("hca_a", "example.com")
    devices = (make_candidate(0), make_candidate(1), make_candidate(2, present=False))
    plan = make_plan(resource, devices, use_cdi=True)
    assert plan.cdi_devices == (
        "example.com/hca_a=0000:03:00.0",
        "example.com/hca_a=0000:04:00.0",
    )
    assert plan.cdi_annotation == (
        "cdi.k8s.io/rdma-shared-dp_example.com_hca_a",
        "example.com/hca_a=0000:03:00.0,example.com/hca_a=0000:04:00.0",
    )
    spec = cdi.build_spec(resource, plan.usable)
    assert spec is not None
    assert [f"{spec['kind']}={d['name']}" for d in spec["devices"]] == list(plan.cdi_devices)
