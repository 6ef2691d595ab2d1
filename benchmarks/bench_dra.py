"""The DRA driver's figures (run: python benchmarks/bench_dra.py).

Starts the real driver process (`python -m dra`) against the stand-in API server of
tests/dra_api.py (real HTTP on loopback; the real API server's figures need the control plane of
tests/e2e/dra) and measures: NodePrepareResources p50/p99 (one fresh claim per call, its read
from the API server included; target <= 10 / 50 ms), 100 claims prepared at once by 100
concurrent calls (target: all within 2 s), device change -> slice updated (target <= 1 s),
ResourceSlice writes when the driver restarts with nothing changed (target 0), and the driver's
PSS (target <= 45 MiB). Its folders are on tmpfs, as /run and /var/run/cdi are on a node.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from figures import record  # benchmarks/figures.py: the one place figures live

from dra.feed import NodeState
from proto.dra.v1 import api_pb2 as v1
from proto.dra.v1 import api_pb2_grpc as v1_grpc
from tests.conditions import wait_until
from tests.dra_api import FakeApiServer
from tests.dra_rig import DRIVER, DriverProcess
from tests.factories import make_candidate, make_resource

NODE = "bench-node"
CALLS = 200
AT_ONCE = 100
RESOURCE = make_resource("hca_a", "rdma", 1000)
STATE = NodeState((RESOURCE,), (RESOURCE,), tuple(make_candidate(i) for i in range(8)))


def add_claim(api: FakeApiServer, uid: str) -> v1.Claim:
    result = {"request": "r", "driver": DRIVER, "pool": NODE, "device": "res-hca-a"}
    api.claims[("bench", uid)] = {
        "metadata": {"namespace": "bench", "name": uid, "uid": uid},
        "status": {"allocation": {"devices": {"results": [result]}}},
    }
    return v1.Claim(namespace="bench", name=uid, uid=uid)


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    api = FakeApiServer()
    api.nodes[NODE] = {"metadata": {"name": NODE, "uid": "node-uid"}}
    # On a node the checkpoint (/run) and the CDI folder (/var/run/cdi) are on tmpfs.
    folder = "/dev/shm" if Path("/dev/shm").is_dir() else "/tmp"
    with tempfile.TemporaryDirectory(prefix="bench-dra-", dir=folder) as tmp:
        driver = DriverProcess(Path(tmp), api.url, NODE, extra=["--resync", "0.2"])
        driver.start()
        driver.feed(STATE)
        wait_until(lambda: driver.last().get("published"), 30, what="published")
        channel = grpc.insecure_channel(f"unix://{driver.dra_sock}")
        stub = v1_grpc.DRAPluginStub(channel)
        times = []
        for i in range(CALLS):
            claim = add_claim(api, f"seq-{i}")
            started = time.perf_counter()
            answer = stub.NodePrepareResources(v1.NodePrepareResourcesRequest(claims=[claim]))
            times.append((time.perf_counter() - started) * 1000)
            assert answer.claims[claim.uid].error == "", answer
        times.sort()
        p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
        print(f"NodePrepareResources: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({CALLS} calls)")

        claims = [add_claim(api, f"burst-{i}") for i in range(AT_ONCE)]

        def one(claim: v1.Claim) -> str:
            request = v1.NodePrepareResourcesRequest(claims=[claim])
            return str(stub.NodePrepareResources(request).claims[claim.uid].error)

        started = time.perf_counter()
        with ThreadPoolExecutor(AT_ONCE) as pool:
            errors = [e for e in pool.map(one, claims) if e]
        burst = time.perf_counter() - started
        print(f"{AT_ONCE} claims prepared at once: {burst:.2f} s, errors {len(errors)}")

        down = NodeState((RESOURCE,), (RESOURCE,), STATE.candidates[:-1])
        started = time.perf_counter()
        driver.feed(down)
        wait_until(lambda: "hca-0000-0a-00-0" not in api.devices(), 10, interval=0.005)
        change = time.perf_counter() - started
        print(f"device change -> slice updated: {change * 1000:.0f} ms")

        pss = pss_mib(driver.proc.pid) if driver.proc else 0.0
        print(f"DRA process PSS: {pss:.1f} MiB (after {CALLS + AT_ONCE} prepared claims)")

        writes = len(api.writes)
        driver.kill()
        driver.statuses.clear()
        driver.start()
        driver.feed(down)
        wait_until(lambda: driver.last().get("published"), 30, what="published again")
        restart_writes = len(api.writes) - writes
        print(f"slice writes on a restart with nothing changed: {restart_writes}")
        channel.close()
        driver.kill()
    api.close()
    record("dra_prepare_p50_ms", p50)
    record("dra_prepare_p99_ms", p99)
    record("dra_burst_100_s", burst)
    record("dra_device_change_ms", change * 1000)
    record("dra_restart_writes", restart_writes)
    record("dra_pss_mib", pss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
