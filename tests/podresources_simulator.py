"""A kubelet PodResources API simulator: `PodResourcesLister` over a real gRPC unix socket.

Runs in the test process. Tests set which containers hold which devices (`set_pods`), can make
the next calls fail (`fail_with`), and read how many `List` calls arrived. Socket paths are limited
to 107 bytes, so use a short folder (see `short_tmp_dir`).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from proto.podresources.v1 import api_pb2, api_pb2_grpc


@dataclass(frozen=True)
class PodDevices:
    """One pod's containers and, per container, device IDs by resource name."""

    namespace: str
    name: str
    containers: Mapping[str, Mapping[str, Sequence[str]]]


class PodResourcesSimulator:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._pods: list[PodDevices] = []
        self._error: grpc.StatusCode | None = None
        self.list_calls = 0
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="podresources-sim")
        self._server: Any = grpc.server(self._pool)
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self._server)
        if self._server.add_insecure_port(f"unix:{socket_path}") == 0:
            raise RuntimeError(f"cannot serve PodResources on {socket_path}")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()
        self._pool.shutdown(wait=True)

    def set_pods(self, pods: Sequence[PodDevices]) -> None:
        with self._lock:
            self._pods = list(pods)

    def fail_with(self, code: grpc.StatusCode | None) -> None:
        """Answer every List with this error from now on (None: answer normally again)."""
        with self._lock:
            self._error = code

    # PodResourcesLister
    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: Any
    ) -> api_pb2.ListPodResourcesResponse:
        with self._lock:
            self.list_calls += 1
            pods, error = list(self._pods), self._error
        if error is not None:
            context.abort(error, "simulated failure")
        return api_pb2.ListPodResourcesResponse(
            pod_resources=[
                api_pb2.PodResources(
                    name=pod.name,
                    namespace=pod.namespace,
                    containers=[
                        api_pb2.ContainerResources(
                            name=container,
                            devices=[
                                api_pb2.ContainerDevices(resource_name=res, device_ids=list(ids))
                                for res, ids in by_resource.items()
                            ],
                        )
                        for container, by_resource in pod.containers.items()
                    ],
                )
                for pod in pods
            ]
        )

    def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: Any
    ) -> api_pb2.AllocatableResourcesResponse:
        return api_pb2.AllocatableResourcesResponse()


@contextmanager
def short_tmp_dir() -> Iterator[Path]:
    """A folder under /tmp short enough for unix socket paths, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="prs-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
