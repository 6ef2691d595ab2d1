"""DeviceClasses for a config: what a cluster installs so pods can ask for our devices.

`python -m dra.device_classes --config-file config.json [--driver-name NAME] [--resources ...]`
prints them as a YAML stream (each document is JSON, which YAML reads as is): one class per
config resource for the drop-in way, whose `extendedResourceName` is `<prefix>/<name>` so an
unchanged pod's `limits: {<prefix>/<name>: 1}` is served through DRA on nodes that run the
resource in DRA mode (nodes that serve it with a device plugin keep doing so: the scheduler
prefers a node's device plugin, KEP-5004), and one class for the DRA way (any HCA of the driver;
claims narrow it with CEL). Used by the kustomize overlay and checked against Helm's rendering.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from common.config import ConfigError, ResourceConfig, load_config_file
from common.dra_modes import DeviceNameError, label
from dra.names import DEFAULT_DRIVER_NAME


def class_name(resource: ResourceConfig, driver: str) -> str:
    """`hca-shared-devices-a.rdma.shared-dp.io`: a DNS subdomain, unique per resource name."""
    name = f"{label(resource.resource_name)}.{driver}"
    if len(name) > 253:
        raise DeviceNameError(f"DeviceClass name {name!r} is longer than 253 characters")
    return name


def drop_in_class(resource: ResourceConfig, driver: str) -> dict[str, Any]:
    # has(): per-HCA devices carry no resourceName, and a missing key is a CEL runtime error
    # that fails the scheduling of the whole pod (seen on a real scheduler), not a false.
    attrs = f'device.attributes["{driver}"]'
    expression = (
        f'device.driver == "{driver}" && has({attrs}.resourceName) && '
        f'{attrs}.resourceName == "{resource.full_name}"'
    )
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": class_name(resource, driver)},
        "spec": {
            "extendedResourceName": resource.full_name,
            "selectors": [{"cel": {"expression": expression}}],
        },
    }


def hca_class(driver: str) -> dict[str, Any]:
    expression = f'device.driver == "{driver}" && device.attributes["{driver}"].kind == "hca"'
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": driver},
        "spec": {"selectors": [{"cel": {"expression": expression}}]},
    }


def device_classes(resources: Sequence[ResourceConfig], driver: str) -> list[dict[str, Any]]:
    return [*(drop_in_class(r, driver) for r in resources), hca_class(driver)]


def render(classes: Sequence[dict[str, Any]]) -> str:
    return "".join("---\n" + json.dumps(c, indent=2) + "\n" for c in classes)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dra.device_classes", description=__doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME)
    args = p.parse_args(argv)
    try:
        config = load_config_file(args.config_file)
        text = render(device_classes(config.resources, args.driver_name))
    except (ConfigError, DeviceNameError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
