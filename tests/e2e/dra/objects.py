"""Hand-written DRA objects of the KEP reading (docs/dra.md, "What the control plane does").

No driver is needed to see what the scheduler does with them: the slice stands for what a driver
would publish for the drop-in way (one multi-allocatable device per config resource with a
`shares` capacity of rdmaHcaMax) and the DRA way (one device per HCA).
"""

from __future__ import annotations

from typing import Any

DRIVER = "hca.rdma-e2e.test"
EXTENDED_RESOURCE = "rdma/hca_shared_devices_a"
#: The drop-in device's class: an unchanged pod's `limits: {EXTENDED_RESOURCE: n}` maps onto it.
DROP_IN_CLASS = "hca-shared-devices-a"
#: The DRA way's class: any HCA of the driver; claims narrow it with CEL.
HCA_CLASS = "hca.rdma-e2e.test"
DROP_IN_DEVICE = "hca-shared-devices-a"
SHARES = 2


def shares(n: int) -> dict[str, Any]:
    return {
        "value": str(n),
        "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": str(n), "step": "1"}},
    }


def resource_slice(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": DROP_IN_DEVICE,
                    "allowMultipleAllocations": True,
                    "attributes": {"resourceName": {"string": "hca_shared_devices_a"}},
                    "capacity": {"shares": shares(SHARES)},
                },
                *(
                    {
                        "name": f"mlx5-{i}",
                        "allowMultipleAllocations": True,
                        "attributes": {
                            "rdmaDevice": {"string": f"mlx5_{i}"},
                            "pciAddress": {"string": f"0000:{0x3B + i:02x}:00.0"},
                            "numaNode": {"int": i},
                        },
                        "capacity": {"shares": shares(SHARES)},
                    }
                    for i in range(2)
                ),
            ],
        },
    }


def device_classes() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": DROP_IN_CLASS},
            "spec": {
                "extendedResourceName": EXTENDED_RESOURCE,
                "selectors": [
                    {
                        "cel": {
                            # Guarded: a device without the attribute (an HCA of the DRA
                            # way) is a CEL runtime error otherwise, and fails the pod.
                            "expression": f'device.driver == "{DRIVER}" && '
                            f'device.attributes["{DRIVER}"].?resourceName.orValue("") == '
                            '"hca_shared_devices_a"'
                        }
                    }
                ],
            },
        },
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": HCA_CLASS},
            "spec": {
                "selectors": [
                    {
                        "cel": {
                            "expression": f'device.driver == "{DRIVER}" && '
                            f'has(device.attributes["{DRIVER}"].rdmaDevice)'
                        }
                    }
                ]
            },
        },
    ]


def claim_template(name: str, rdma_device: str) -> dict[str, Any]:
    """One HCA chosen by CEL on its RDMA device name; one share of it (the default)."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "hca",
                            "exactly": {
                                "deviceClassName": HCA_CLASS,
                                "selectors": [
                                    {
                                        "cel": {
                                            "expression": f'device.attributes["{DRIVER}"]'
                                            f'.rdmaDevice == "{rdma_device}"'
                                        }
                                    }
                                ],
                            },
                        }
                    ]
                }
            }
        },
    }
