"""The simulated kubelet's pods (test and demo processes, never the plugin's).

What a real kubelet did with pods (v1.32-1.37 with containerd): pods added with
`running=False` (crash-looping) are admitted again shortly after every start of the kubelet; one
whose resource is not registered by then, or whose devices are not all healthy, is rejected with
the kubelet's `UnexpectedAdmissionError` message and dropped. With a PodResources socket, `List`
names each held device once per NUMA node of its topology, in one `ContainerDevices` per node.
The kubelet (`simulator.kubelet`) says what an admission finds (`problem`) and which NUMA nodes
each device has (`topology`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from proto.podresources.v1 import api_pb2 as pr
from proto.podresources.v1 import api_pb2_grpc as pr_grpc
from simulator.kubelet_records import REJECTED, Admission, KubeletSimulatorError, SimPod

LOG = logging.getLogger(__name__)

#: (resource, device ID) -> the NUMA nodes the plugin last advertised for it.
Topology = Mapping[tuple[str, str], tuple[int, ...]]


class SimulatedPods:
    """The kubelet's pods; guarded by the kubelet's own condition, so its waits see them too."""

    def __init__(self, changed: threading.Condition) -> None:
        self._changed = changed
        self._pods: dict[str, SimPod] = {}
        self._admissions: list[Admission] = []
        self._server: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def add(
        self,
        name: str,
        resource: str,
        device_ids: list[str] | tuple[str, ...],
        running: bool,
        namespace: str,
    ) -> None:
        with self._changed:
            self._pods[name] = SimPod(name, resource, tuple(device_ids), running, namespace)

    def all(self) -> list[SimPod]:
        with self._changed:
            return list(self._pods.values())

    def waiting(self) -> bool:
        """Whether a pod waits to be admitted again at the next start."""
        with self._changed:
            return any(not p.running for p in self._pods.values())

    def admissions(self) -> list[Admission]:
        with self._changed:
            return list(self._admissions)

    def wait_for_admissions(self, count: int, timeout: float) -> list[Admission]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._admissions) >= count, timeout):
                raise TimeoutError(f"fewer than {count} admissions within {timeout}s")
            return list(self._admissions)

    def readmit(
        self, stopping: threading.Event, served_at: float, problem: Callable[[SimPod], str]
    ) -> None:
        """Admit every non-running pod again; `problem` (called under the kubelet's lock) says
        why one is rejected, "" when it is admitted."""
        after = time.monotonic() - served_at
        with self._changed:
            if stopping.is_set():
                return
            for pod in [p for p in self._pods.values() if not p.running]:
                why = problem(pod)
                if why:
                    # As the pod's status message says it.
                    message = f"Pod was rejected: Allocate failed due to {why}, which is unexpected"
                    self._admissions.append(Admission(pod.name, False, REJECTED, message, after))
                    del self._pods[pod.name]  # a rejected pod is Failed: never admitted again
                    LOG.warning("pod rejected pod=%s reason=%s %s", pod.name, REJECTED, message)
                else:
                    self._admissions.append(Admission(pod.name, True, "", "", after))
            self._changed.notify_all()

    # ---- PodResources ----------------------------------------------------------------------

    def serve(self, path: Path, topology: Callable[[], Topology]) -> None:
        """Serve PodResources `List` on `path` (once; it outlives kubelet restarts)."""
        if self._server is not None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kubelet-sim-podres")
        server = grpc.server(pool)
        service = _PodResourcesService(lambda: self.list(topology()))
        pr_grpc.add_PodResourcesListerServicer_to_server(service, server)
        if server.add_insecure_port(f"unix:{path}") == 0:
            pool.shutdown(wait=False)
            raise KubeletSimulatorError(f"cannot serve PodResources on {path}")
        server.start()
        self._server, self._pool = server, pool

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def list(self, topology: Topology) -> pr.ListPodResourcesResponse:
        """What PodResources `List` answers: each held ID once per NUMA node of its device."""
        out = []
        for pod in self.all():
            per_node: dict[int | None, list[str]] = {}
            for device_id in pod.device_ids:
                for node in topology.get((pod.resource, device_id)) or (None,):
                    per_node.setdefault(node, []).append(device_id)
            devices = [
                pr.ContainerDevices(
                    resource_name=pod.resource,
                    device_ids=ids,
                    topology=pr.TopologyInfo(nodes=[pr.NUMANode(ID=node)])
                    if node is not None
                    else None,
                )
                for node, ids in sorted(per_node.items(), key=lambda kv: (kv[0] is None, kv[0]))
            ]
            out.append(
                pr.PodResources(
                    name=pod.name,
                    namespace=pod.namespace,
                    containers=[pr.ContainerResources(name=pod.container, devices=devices)],
                )
            )
        return pr.ListPodResourcesResponse(pod_resources=out)


class _PodResourcesService:
    """v1 PodResourcesLister over the simulator's pods."""

    def __init__(self, answer: Callable[[], pr.ListPodResourcesResponse]) -> None:
        self._answer = answer

    def List(
        self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr.ListPodResourcesResponse:
        return self._answer()

    def GetAllocatableResources(
        self, request: pr.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> pr.AllocatableResourcesResponse:
        return pr.AllocatableResourcesResponse()
