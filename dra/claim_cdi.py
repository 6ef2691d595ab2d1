"""One CDI spec per prepared claim (DRA process).

The spec file `rdma-dra-claim_<uid>.json` in the CDI folder has kind `<driver>/claim` and one
CDI device per allocated device, named `<uid>-<device>`, whose edits are the char devices of the
HCAs the device stands for; `/dev/infiniband/rdma_cm` is a spec-wide edit. The kubelet gets the
fully qualified names (`<driver>/claim=<uid>-<device>`) and hands them to the runtime.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from common.devices import RDMA_CM_PATH
from dra.devices import DraDevice
from dra.files import remove, write_atomic
from dra.names import claim_spec_file

CDI_VERSION = "0.5.0"  # device names may start with a digit (claim UIDs do)
CDI_CLASS = "claim"


def kind(driver: str) -> str:
    return f"{driver}/{CDI_CLASS}"


def device_id(driver: str, uid: str, device: str) -> str:
    return f"{kind(driver)}={uid}-{device}"


def build(driver: str, uid: str, devices: Sequence[DraDevice]) -> dict[str, Any]:
    spec_devices = []
    seen: set[str] = set()
    for device in devices:
        if device.name in seen:
            continue
        seen.add(device.name)
        nodes = []
        for candidate in device.members:
            for char in candidate.char_devices:
                if char.present:
                    node: dict[str, Any] = {"path": char.path, "type": "c", "permissions": "rwm"}
                    if char.major is not None and char.minor is not None:
                        node |= {"major": char.major, "minor": char.minor}
                    nodes.append(node)
        spec_devices.append(
            {"name": f"{uid}-{device.name}", "containerEdits": {"deviceNodes": nodes}}
        )
    return {
        "cdiVersion": CDI_VERSION,
        "kind": kind(driver),
        "devices": spec_devices,
        "containerEdits": {
            "deviceNodes": [{"path": RDMA_CM_PATH, "type": "c", "permissions": "rwm"}]
        },
    }


def write(cdi_dir: str, uid: str, spec: dict[str, Any]) -> None:
    data = (json.dumps(spec, indent=2) + "\n").encode()
    write_atomic(cdi_dir, claim_spec_file(uid), data)


def delete(cdi_dir: str, uid: str) -> bool:
    return remove(os.path.join(cdi_dir, claim_spec_file(uid)))
