"""What one re-registration costs in Python gRPC alone, with none of the plugin's code (issue 14).

Two processes on unix sockets, as on a node after a kubelet restart:

- the plugin (a forked child, like a worker): serves `DevicePlugin` (8 threads, as a worker) and,
  N times, sends `Register` from a new channel, as a worker does after a restart;
- the kubelet (this process, Python like the simulator): its `Register` dials the plugin back on
  a new channel, asks `GetDevicePluginOptions`, returns, then opens `ListAndWatch` and reads the
  first snapshot (1000 IDs); the previous stream is cancelled.

The plugin side runs twice: on grpcio's sync server (a completion-queue thread handing each call
to a pool thread, `Register` from a sync channel: the worker today) and on `grpc.aio` (one
asyncio loop serves and calls, no hand-off between threads). Both face the same kubelet.

Each side's CPU (all threads, `getrusage`) per registration is the floor under any plugin and any
kubelet written with grpcio; times the resource count over the cores it is the floor of "kubelet
restart -> all re-registered". The plugin's figure with a Go kubelet (real kubelets) and both
with the kubelet simulator are printed for 32 resources on this machine.

Run: `.venv/bin/python benchmarks/bench_grpc_floor.py [--registrations N] [--runs N]
[--rounds N] [--plugin sync|aio|both]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # a cancelled stream is no news
import grpc  # noqa: E402
from figures import record  # noqa: E402 (benchmarks/figures.py)

from proto.deviceplugin.v1beta1 import api_pb2 as dp  # noqa: E402
from proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc  # noqa: E402
from workers.registration import CHANNEL_OPTIONS  # noqa: E402 (as the worker's calls)

RESOURCES = 32


def cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread, the ended ones too
    return (usage.ru_utime + usage.ru_stime) * 1000


def snapshot() -> dp.ListAndWatchResponse:
    response = dp.ListAndWatchResponse()
    for i in range(1000):
        response.devices.add(ID=f"r0-{i:04d}", health="Healthy").topology.nodes.add(ID=0)
    return response


class Plugin(dp_grpc.DevicePluginServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.response = snapshot()

    def GetDevicePluginOptions(self, request: dp.Empty, context: Any) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions()

    def ListAndWatch(self, request: dp.Empty, context: Any) -> Iterator[dp.ListAndWatchResponse]:
        yield self.response
        over = threading.Event()
        context.add_callback(over.set)
        over.wait()


class AioPlugin(dp_grpc.DevicePluginServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.response = snapshot()

    async def GetDevicePluginOptions(
        self, request: dp.Empty, context: Any
    ) -> dp.DevicePluginOptions:
        return dp.DevicePluginOptions()

    async def ListAndWatch(
        self, request: dp.Empty, context: Any
    ) -> AsyncIterator[dp.ListAndWatchResponse]:
        yield self.response
        await asyncio.Event().wait()  # until the kubelet cancels the stream


class Kubelet(dp_grpc.RegistrationServicer):  # type: ignore[misc]
    def __init__(self, plugin_dir: str) -> None:
        self.plugin_dir = plugin_dir
        self.stream: Any = None
        self.channel: grpc.Channel | None = None
        self.reader: threading.Thread | None = None
        self.registered = threading.Semaphore(0)

    def Register(self, request: dp.RegisterRequest, context: Any) -> dp.Empty:
        if self.reader is not None and self.stream is not None and self.channel is not None:
            self.reader.join()  # the previous registration's first snapshot is in
            self.stream.cancel()
            self.channel.close()
        channel = grpc.insecure_channel(f"unix:{self.plugin_dir}/{request.endpoint}")
        stub = dp_grpc.DevicePluginStub(channel)
        stub.GetDevicePluginOptions(dp.Empty(), timeout=5, wait_for_ready=True)
        self.channel, self.stream = channel, stub.ListAndWatch(dp.Empty())
        self.reader = threading.Thread(target=self._first, args=(self.stream,))
        self.reader.start()
        return dp.Empty()

    def _first(self, stream: Any) -> None:
        next(stream)
        self.registered.release()


def plugin_process(folder: str, count: int, go: int, done: int) -> None:
    server = grpc.server(ThreadPoolExecutor(8))
    dp_grpc.add_DevicePluginServicer_to_server(Plugin(), server)
    server.add_insecure_port(f"unix:{folder}/plugin.sock")
    server.start()
    os.write(done, b"s")
    while os.read(go, 1) == b"g":
        start = cpu_ms()
        for _ in range(count):
            channel = grpc.insecure_channel(f"unix:{folder}/kubelet.sock", options=CHANNEL_OPTIONS)
            dp_grpc.RegistrationStub(channel).Register(
                dp.RegisterRequest(version="v1beta1", endpoint="plugin.sock", resource_name="x/y"),
                timeout=5,
            )
            channel.close()
        os.write(done, f"{cpu_ms() - start:.3f}\n".encode())
    server.stop(grace=None)


async def aio_plugin(folder: str, count: int, go: int, done: int) -> None:
    server = grpc.aio.server()
    dp_grpc.add_DevicePluginServicer_to_server(AioPlugin(), server)
    server.add_insecure_port(f"unix:{folder}/plugin.sock")
    await server.start()
    loop = asyncio.get_running_loop()
    os.write(done, b"s")
    while await loop.run_in_executor(None, os.read, go, 1) == b"g":
        start = cpu_ms()
        for _ in range(count):
            async with grpc.aio.insecure_channel(
                f"unix:{folder}/kubelet.sock", options=CHANNEL_OPTIONS
            ) as channel:
                await dp_grpc.RegistrationStub(channel).Register(
                    dp.RegisterRequest(
                        version="v1beta1", endpoint="plugin.sock", resource_name="x/y"
                    ),
                    timeout=5,
                )
        os.write(done, f"{cpu_ms() - start:.3f}\n".encode())
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)  # grpc.aio prints the open stream's cancellation at stop: no news
    await server.stop(grace=None)


def measure(kind: str, registrations: int, runs: int) -> tuple[list[float], list[float]]:
    """Plugin and kubelet CPU per registration, one figure per run, the plugin on `kind`."""
    with tempfile.TemporaryDirectory(prefix="gf") as folder:
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(done_r)
            try:
                if kind == "aio":
                    asyncio.run(aio_plugin(folder, registrations, go_r, done_w))
                else:
                    plugin_process(folder, registrations, go_r, done_w)
            finally:
                os._exit(0)
        os.close(go_r)
        os.close(done_w)
        kubelet = Kubelet(folder)
        server = grpc.server(ThreadPoolExecutor(8))
        dp_grpc.add_RegistrationServicer_to_server(kubelet, server)
        server.add_insecure_port(f"unix:{folder}/kubelet.sock")
        server.start()
        assert os.read(done_r, 1) == b"s"
        replies = os.fdopen(done_r)
        plugin_ms, kubelet_ms = [], []
        for run in range(runs + 1):  # the first run warms both sides up
            start = cpu_ms()
            os.write(go_w, b"g")
            plugin = float(replies.readline())
            for _ in range(registrations):
                if not kubelet.registered.acquire(timeout=10):
                    raise SystemExit("a registration's first snapshot did not arrive in 10 s")
            if run:
                plugin_ms.append(plugin / registrations)
                kubelet_ms.append((cpu_ms() - start) / registrations)
        os.write(go_w, b"q")
        os.waitpid(pid, 0)
        if kubelet.stream is not None:
            kubelet.stream.cancel()
        server.stop(grace=None)
    return plugin_ms, kubelet_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="runs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plugin", choices=("sync", "aio", "both"), default="both")
    args = parser.parse_args()
    kinds = ("sync", "aio") if args.plugin == "both" else (args.plugin,)
    plugin_med: dict[str, float] = {}
    cores = os.cpu_count() or 1
    print(
        f"Python {sys.version.split()[0]}, grpcio {grpc.__version__}, {cores} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    # Rounds alternate the order of the two servers, so a change of the machine's load (it is
    # shared) weighs on both alike.
    plugin_runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    kubelet_runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_ in range(args.rounds):
        for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
            plugin, kubelet = measure(kind, args.registrations, args.runs)
            plugin_runs[kind] += plugin
            kubelet_runs[kind] += kubelet
    for kind in kinds:
        plugin_ms, kubelet_ms = plugin_runs[kind], kubelet_runs[kind]
        plugin_med[kind] = statistics.median(plugin_ms)
        kubelet_med = statistics.median(kubelet_ms)
        with_go = RESOURCES * plugin_med[kind] / cores
        with_sim = RESOURCES * (plugin_med[kind] + kubelet_med) / cores
        print(
            f"{kind:>4} plugin: gRPC alone, CPU per registration (median of {len(plugin_ms)} "
            f"runs of {args.registrations}): plugin side {plugin_med[kind]:.2f} ms "
            f"[{min(plugin_ms):.2f}-{max(plugin_ms):.2f}], Python kubelet side {kubelet_med:.2f} "
            f"ms [{min(kubelet_ms):.2f}-{max(kubelet_ms):.2f}]"
        )
        print(
            f"{kind:>4} plugin: floor of kubelet restart -> {RESOURCES} re-registered on {cores} "
            f"cores: {with_go:.0f} ms with a Go kubelet (plugin side only), {with_sim:.0f} ms "
            "with the kubelet simulator (both sides in Python)"
        )
        if kind == "aio":
            record("grpc_floor_plugin_aio_ms", plugin_med[kind])
        else:  # the worker's server: the floor quoted
            record("grpc_floor_plugin_ms", plugin_med[kind])
            record("grpc_floor_kubelet_ms", kubelet_med)
            record("grpc_floor_restart32_go_ms", with_go)
            record("grpc_floor_restart32_sim_ms", with_sim)
    if len(plugin_med) == 2:
        cut = 1 - plugin_med["aio"] / plugin_med["sync"]
        print(f"aio plugin side vs sync: {cut:+.0%} CPU per registration (a cut is positive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
