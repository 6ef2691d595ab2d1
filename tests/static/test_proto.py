"""The committed kubelet API modules: current with their `.proto` files and true to the kubelet.

Runs in the test process. Regenerates into a temporary folder with the pinned grpcio-tools and
compares byte for byte; then checks the wire contract (service paths, field numbers) through the
descriptors, so a typo in a `.proto` file fails here rather than at a real kubelet.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from proto import generate
from proto.deviceplugin.v1beta1 import api_pb2 as dp
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.podresources.v1 import api_pb2 as podres

REGENERATE = "run `python -m proto.generate` from the repository root and commit the result"


def test_generated_modules_match_proto_files(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    problems: list[str] = []
    for name in generate.generated_files():
        committed = generate.REPO_ROOT / name
        fresh = tmp_path / name
        if not committed.is_file():
            problems.append(f"{name}: missing from the repository")
        elif not fresh.is_file():
            problems.append(f"{name}: committed but no longer generated")
        elif committed.read_bytes() != fresh.read_bytes():
            problems.append(f"{name}: differs from what the .proto file generates")
    assert not problems, "\n".join([*problems, REGENERATE])


def test_every_package_folder_is_importable() -> None:
    for name in generate.generated_files():
        folder = generate.REPO_ROOT / name
        while folder.parent != generate.REPO_ROOT:
            folder = folder.parent
            assert (folder / "__init__.py").is_file(), f"{folder} lacks __init__.py"


def _method_paths(file: object, service: str) -> list[str]:
    descriptor = file.services_by_name[service]  # type: ignore[attr-defined]
    return [f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods]


def test_full_method_names() -> None:
    assert _method_paths(dp.DESCRIPTOR, "Registration") == ["/v1beta1.Registration/Register"]
    assert _method_paths(dp.DESCRIPTOR, "DevicePlugin") == [
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/PreStartContainer",
    ]
    assert _method_paths(reg.DESCRIPTOR, "Registration") == [
        "/pluginregistration.Registration/GetInfo",
        "/pluginregistration.Registration/NotifyRegistrationStatus",
    ]
    assert _method_paths(podres.DESCRIPTOR, "PodResourcesLister") == [
        "/v1.PodResourcesLister/List",
        "/v1.PodResourcesLister/GetAllocatableResources",
    ]


def test_only_list_and_watch_streams() -> None:
    for method in dp.DESCRIPTOR.services_by_name["DevicePlugin"].methods:
        streams = (method.client_streaming, method.server_streaming)
        assert streams == (False, method.name == "ListAndWatch"), method.name


_T = FieldDescriptor
# The reference tables: message -> [(field name, number, type, repeated)]; a message type is
# given by its full name.
DEVICEPLUGIN_FIELDS: dict[str, list[tuple[str, int, int | str, bool]]] = {
    "DevicePluginOptions": [
        ("pre_start_required", 1, _T.TYPE_BOOL, False),
        ("get_preferred_allocation_available", 2, _T.TYPE_BOOL, False),
    ],
    "RegisterRequest": [
        ("version", 1, _T.TYPE_STRING, False),
        ("endpoint", 2, _T.TYPE_STRING, False),
        ("resource_name", 3, _T.TYPE_STRING, False),
        ("options", 4, "v1beta1.DevicePluginOptions", False),
    ],
    "Empty": [],
    "ListAndWatchResponse": [("devices", 1, "v1beta1.Device", True)],
    "TopologyInfo": [("nodes", 1, "v1beta1.NUMANode", True)],
    "NUMANode": [("ID", 1, _T.TYPE_INT64, False)],
    "Device": [
        ("ID", 1, _T.TYPE_STRING, False),
        ("health", 2, _T.TYPE_STRING, False),
        ("topology", 3, "v1beta1.TopologyInfo", False),
    ],
    "PreStartContainerRequest": [("devices_ids", 1, _T.TYPE_STRING, True)],
    "PreStartContainerResponse": [],
    "PreferredAllocationRequest": [
        ("container_requests", 1, "v1beta1.ContainerPreferredAllocationRequest", True)
    ],
    "ContainerPreferredAllocationRequest": [
        ("available_deviceIDs", 1, _T.TYPE_STRING, True),
        ("must_include_deviceIDs", 2, _T.TYPE_STRING, True),
        ("allocation_size", 3, _T.TYPE_INT32, False),
    ],
    "PreferredAllocationResponse": [
        ("container_responses", 1, "v1beta1.ContainerPreferredAllocationResponse", True)
    ],
    "ContainerPreferredAllocationResponse": [("deviceIDs", 1, _T.TYPE_STRING, True)],
    "AllocateRequest": [("container_requests", 1, "v1beta1.ContainerAllocateRequest", True)],
    "ContainerAllocateRequest": [("devices_ids", 1, _T.TYPE_STRING, True)],
    "CDIDevice": [("name", 1, _T.TYPE_STRING, False)],
    "AllocateResponse": [("container_responses", 1, "v1beta1.ContainerAllocateResponse", True)],
    "ContainerAllocateResponse": [
        ("envs", 1, "v1beta1.ContainerAllocateResponse.EnvsEntry", True),
        ("mounts", 2, "v1beta1.Mount", True),
        ("devices", 3, "v1beta1.DeviceSpec", True),
        ("annotations", 4, "v1beta1.ContainerAllocateResponse.AnnotationsEntry", True),
        ("cdi_devices", 5, "v1beta1.CDIDevice", True),
    ],
    "Mount": [
        ("container_path", 1, _T.TYPE_STRING, False),
        ("host_path", 2, _T.TYPE_STRING, False),
        ("read_only", 3, _T.TYPE_BOOL, False),
    ],
    "DeviceSpec": [
        ("container_path", 1, _T.TYPE_STRING, False),
        ("host_path", 2, _T.TYPE_STRING, False),
        ("permissions", 3, _T.TYPE_STRING, False),
    ],
}

PLUGINREGISTRATION_FIELDS: dict[str, list[tuple[str, int, int | str, bool]]] = {
    "InfoRequest": [],
    "PluginInfo": [
        ("type", 1, _T.TYPE_STRING, False),
        ("name", 2, _T.TYPE_STRING, False),
        ("endpoint", 3, _T.TYPE_STRING, False),
        ("supported_versions", 4, _T.TYPE_STRING, True),
    ],
    "RegistrationStatus": [
        ("plugin_registered", 1, _T.TYPE_BOOL, False),
        ("error", 2, _T.TYPE_STRING, False),
    ],
    "RegistrationStatusResponse": [],
}


def _fields(message: Descriptor) -> list[tuple[str, int, int | str, bool]]:
    out: list[tuple[str, int, int | str, bool]] = []
    for field in message.fields:
        kind: int | str = field.type
        if field.message_type is not None:
            kind = field.message_type.full_name
        # `is_repeated` is the protobuf >= 5 spelling; `label` is deprecated.
        out.append((field.name, field.number, kind, field.is_repeated))
    return out


@pytest.mark.parametrize(
    ("module", "package", "table"),
    [(dp, "v1beta1", DEVICEPLUGIN_FIELDS), (reg, "pluginregistration", PLUGINREGISTRATION_FIELDS)],
    ids=["deviceplugin", "pluginregistration"],
)
def test_fields_match_reference(
    module: object, package: str, table: dict[str, list[tuple[str, int, int | str, bool]]]
) -> None:
    file = module.DESCRIPTOR  # type: ignore[attr-defined]
    assert file.package == package
    assert sorted(file.message_types_by_name) == sorted(table)
    for name, expected in table.items():
        assert _fields(file.message_types_by_name[name]) == expected, name


def test_allocate_response_maps_are_string_to_string() -> None:
    response = dp.ContainerAllocateResponse(envs={"A": "1"}, annotations={"cdi.k8s.io/x": "y"})
    decoded = dp.ContainerAllocateResponse.FromString(response.SerializeToString())
    assert dict(decoded.envs) == {"A": "1"}
    assert dict(decoded.annotations) == {"cdi.k8s.io/x": "y"}


def test_podresources_list_shape() -> None:
    file = podres.DESCRIPTOR
    assert file.package == "v1"
    container = file.message_types_by_name["ContainerResources"]
    assert _fields(container)[:2] == [
        ("name", 1, _T.TYPE_STRING, False),
        ("devices", 2, "v1.ContainerDevices", True),
    ]
    assert _fields(file.message_types_by_name["ContainerDevices"]) == [
        ("resource_name", 1, _T.TYPE_STRING, False),
        ("device_ids", 2, _T.TYPE_STRING, True),
        ("topology", 3, "v1.TopologyInfo", False),
    ]
    assert _fields(file.message_types_by_name["PodResources"]) == [
        ("name", 1, _T.TYPE_STRING, False),
        ("namespace", 2, _T.TYPE_STRING, False),
        ("containers", 3, "v1.ContainerResources", True),
    ]


def test_dra_plugin_paths_and_fields() -> None:
    """The kubelet dials `/k8s.io.kubelet.pkg.apis.dra.<version>.DRAPlugin/...` on dra.sock."""
    from proto.dra.v1 import api_pb2 as dra_v1
    from proto.dra.v1beta1 import api_pb2 as dra_v1beta1

    for module, version in ((dra_v1, "v1"), (dra_v1beta1, "v1beta1")):
        service = f"k8s.io.kubelet.pkg.apis.dra.{version}.DRAPlugin"
        assert _method_paths(module.DESCRIPTOR, "DRAPlugin") == [
            f"/{service}/NodePrepareResources",
            f"/{service}/NodeUnprepareResources",
        ]
        messages = module.DESCRIPTOR.message_types_by_name
        package = f"k8s.io.kubelet.pkg.apis.dra.{version}"
        assert _fields(messages["Claim"]) == [
            ("namespace", 1, _T.TYPE_STRING, False),
            ("uid", 2, _T.TYPE_STRING, False),
            ("name", 3, _T.TYPE_STRING, False),
        ]
        device = [
            ("request_names", 1, _T.TYPE_STRING, True),
            ("pool_name", 2, _T.TYPE_STRING, False),
            ("device_name", 3, _T.TYPE_STRING, False),
            ("cdi_device_ids", 4, _T.TYPE_STRING, True),
        ]
        if version == "v1":
            device.append(("share_id", 5, _T.TYPE_STRING, False))
        assert _fields(messages["Device"]) == device
        assert _fields(messages["NodePrepareResourceResponse"]) == [
            ("devices", 1, f"{package}.Device", True),
            ("error", 2, _T.TYPE_STRING, False),
        ]
        assert _fields(messages["NodeUnprepareResourceResponse"]) == [
            ("error", 1, _T.TYPE_STRING, False)
        ]
        for request in ("NodePrepareResourcesRequest", "NodeUnprepareResourcesRequest"):
            assert _fields(messages[request]) == [("claims", 1, f"{package}.Claim", True)]


def test_dra_health_stream() -> None:
    from proto.drahealth.v1alpha1 import api_pb2 as health

    assert _method_paths(health.DESCRIPTOR, "DRAResourceHealth") == [
        "/v1alpha1.DRAResourceHealth/NodeWatchResources"
    ]
    assert _fields(health.DESCRIPTOR.message_types_by_name["DeviceHealth"]) == [
        ("device", 1, "v1alpha1.DeviceIdentifier", False),
        ("health", 2, _T.TYPE_ENUM, False),
        ("last_updated_time", 3, _T.TYPE_INT64, False),
    ]
    assert dict(health.HealthStatus.items()) == {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}
