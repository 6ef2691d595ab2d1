"""The DRA component: DeviceClasses current with the base's config, the driver switched on."""

from __future__ import annotations

from pathlib import Path

from common.config import load_config_file
from dra.device_classes import device_classes, render
from dra.names import DEFAULT_DRIVER_NAME

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "deployment" / "k8s" / "components" / "dra"


def test_device_classes_are_generated_from_the_base_config() -> None:
    config = load_config_file(REPO / "deployment" / "k8s" / "base" / "config.json")
    text = (COMPONENT / "deviceclasses.yaml").read_text()
    body = text[text.index("---") :]
    assert body == render(device_classes(config.resources, DEFAULT_DRIVER_NAME)), (
        "regenerate: python -m dra.device_classes --config-file "
        "deployment/k8s/base/config.json (keep the header comment)"
    )


def test_the_component_switches_the_driver_on() -> None:
    patch = (COMPONENT / "driver-patch.yaml").read_text()
    for needed in ("RDMA_SHARED_DP_DRA", "value: all", "NODE_NAME", "spec.nodeName", "/plugins"):
        assert needed in patch, needed
    kustomization = (COMPONENT / "kustomization.yaml").read_text()
    assert "deviceclasses.yaml" in kustomization and "driver-patch.yaml" in kustomization
    overlay = (REPO / "deployment" / "k8s" / "overlays" / "dra" / "kustomization.yaml").read_text()
    assert "components/cdi" in overlay  # the folder the claims' CDI specs go to
