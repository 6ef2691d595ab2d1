"""The config the demo runs with on the simulated node of `simulator.sysfs.build_demo_node`."""

from __future__ import annotations

from typing import Any


def demo_config() -> dict[str, Any]:
    """Three resources a GPU cluster would define: IB fabric, RoCE ports, ConnectX-7 HCAs."""
    return {
        "periodicUpdateInterval": 30,
        "configList": [
            {
                "resourceName": "hca_shared_devices_ib",
                "resourcePrefix": "rdma",
                "rdmaHcaMax": 100,
                "selectors": {"vendors": ["15b3"], "linkTypes": ["infiniband"]},
            },
            {
                "resourceName": "hca_shared_devices_roce",
                "rdmaHcaMax": 50,
                "selectors": {"linkTypes": ["ether"], "drivers": ["mlx5_core", "ice"]},
            },
            {
                "resourceName": "hca_shared_devices_a",
                "rdmaHcaMax": 1000,
                "selectors": {"vendors": ["15b3"], "deviceIDs": ["1021"]},
            },
        ],
    }
