"""The config the demo's plugin runs with: which resources the demo node's devices form (demo
process, `demo`; the node itself is `simulator.sysfs.build_demo_node`).
"""

from __future__ import annotations

from typing import Any

#: The demo node's resources: its InfiniBand HCAs, its RoCE functions and its E810.
DEMO_CONFIG: dict[str, Any] = {
    # Short, so the demo shows a port change within a second; nodes use the default 60 s and
    # rely on kernel uevents, which a simulated tree does not produce.
    "periodicUpdateInterval": 1,
    "configList": [
        {
            "resourceName": "hca_ib",
            "resourcePrefix": "rdma",
            "rdmaHcaMax": 16,
            "selectors": {"linkTypes": ["infiniband"]},
        },
        {
            "resourceName": "hca_roce",
            "resourcePrefix": "rdma",
            "rdmaHcaMax": 8,
            "selectors": {"vendors": ["15b3"], "linkTypes": ["ether"]},
        },
        {
            "resourceName": "irdma",
            "resourcePrefix": "rdma",
            "rdmaHcaMax": 4,
            "selectors": {"drivers": ["ice"]},
        },
    ],
}
RESOURCES = tuple(f"rdma/{r['resourceName']}" for r in DEMO_CONFIG["configList"])
