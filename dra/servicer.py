"""The gRPC services on dra.sock and the registration socket (DRA process).

`DRAPlugin` is served in v1 and v1beta1 (kubelets 1.34-1.37 speak both; the messages differ only
by v1's `share_id`); `pluginregistration.Registration` answers the kubelet's plugin watcher with
type `DRAPlugin`, the driver name and the dra.sock path, as the device-plugin workers do in
watcher mode. A failure inside one claim is that claim's `error`; nothing a request holds makes
the call itself fail.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from dra.claims import ClaimRef
from dra.driver import Driver
from proto.dra.v1 import api_pb2 as v1
from proto.dra.v1 import api_pb2_grpc as v1_grpc
from proto.dra.v1beta1 import api_pb2 as v1beta1
from proto.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from proto.pluginregistration.v1 import api_pb2 as reg
from proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc

LOG = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"
SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


def _refs(request: Any) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.name, c.uid) for c in request.claims]


class _Plugin:
    def __init__(self, driver: Driver, pb: Any, with_share_id: bool) -> None:
        self._driver = driver
        self._pb = pb
        self._share = with_share_id

    def NodePrepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        pb = self._pb
        response = pb.NodePrepareResourcesResponse()
        for uid, outcome in self._driver.prepare(_refs(request)).items():
            entry = response.claims[uid]
            if outcome.error:
                entry.error = outcome.error
                continue
            for device in outcome.devices:
                out = entry.devices.add(
                    request_names=[device.request] if device.request else [],
                    pool_name=device.pool,
                    device_name=device.device,
                    cdi_device_ids=list(device.cdi_ids),
                )
                if self._share and device.share_id:
                    out.share_id = device.share_id
        return response

    def NodeUnprepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        pb = self._pb
        response = pb.NodeUnprepareResourcesResponse()
        for uid, error in self._driver.unprepare(_refs(request)).items():
            response.claims[uid].error = error
        return response


class PluginV1(_Plugin, v1_grpc.DRAPluginServicer):  # type: ignore[misc]
    def __init__(self, driver: Driver) -> None:
        super().__init__(driver, v1, with_share_id=True)


class PluginV1beta1(_Plugin, v1beta1_grpc.DRAPluginServicer):  # type: ignore[misc]
    def __init__(self, driver: Driver) -> None:
        super().__init__(driver, v1beta1, with_share_id=False)


class DriverRegistration(reg_grpc.RegistrationServicer):  # type: ignore[misc]
    """What the kubelet's plugin watcher asks on `<driver>-reg.sock`."""

    def __init__(self, driver_name: str, endpoint: str) -> None:
        self._info = reg.PluginInfo(
            type=PLUGIN_TYPE,
            name=driver_name,
            endpoint=endpoint,
            supported_versions=list(SUPPORTED_VERSIONS),
        )
        self._lock = threading.Lock()
        self.registered = False
        self.error = ""
        self.changed = threading.Event()

    def GetInfo(self, request: reg.InfoRequest, context: grpc.ServicerContext) -> reg.PluginInfo:
        return self._info

    def NotifyRegistrationStatus(
        self, request: reg.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg.RegistrationStatusResponse:
        with self._lock:
            self.registered, self.error = request.plugin_registered, request.error
        if request.plugin_registered:
            LOG.info("registered with the kubelet as DRA driver %s", self._info.name)
        else:
            LOG.error("the kubelet refused the DRA driver's registration: %s", request.error)
        self.changed.set()
        return reg.RegistrationStatusResponse()

    def state(self) -> tuple[bool, str]:
        with self._lock:
            return self.registered, self.error


def add_services(server: grpc.Server, driver: Driver, registration: DriverRegistration) -> None:
    v1_grpc.add_DRAPluginServicer_to_server(PluginV1(driver), server)
    v1beta1_grpc.add_DRAPluginServicer_to_server(PluginV1beta1(driver), server)
    reg_grpc.add_RegistrationServicer_to_server(registration, server)
