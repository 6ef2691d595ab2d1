"""The zygote (fork server): fork safety, isolation of forked workers, failure and fallback.

Real processes throughout: a real zygote forking real workers that register with the kubelet
simulator, and a real supervisor (tests/supervisor_rig.py) for the end-to-end cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from supervisor import zygote_client
from supervisor.zygote_client import ForkedWorker, Zygote
from tests.conditions import hard_timeout, missing, wait_until
from tests.standin_supervisor import Rig, WorkerSetup, make_candidate, make_resource
from tests.supervisor_rig import Plant, full, three_resources

REPO = Path(__file__).resolve().parents[2]
ABC = ["a", "b", "c"]


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This test process reaps the workers a zygote forks, as the supervisor does."""
    was = zygote_client.is_subreaper()
    if not zygote_client.set_subreaper(True):
        missing("prctl(PR_SET_CHILD_SUBREAPER) refused: not Linux >= 3.4")
    yield
    if not was:
        zygote_client.set_subreaper(False)


@pytest.fixture
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = Path(os.path.realpath("/tmp")) / f"zy-{os.getpid()}-{len(os.listdir('/tmp'))}"
    root.mkdir()
    rig = Rig(root, heartbeat_interval=0.3)
    try:
        yield rig
    finally:
        rig.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture
def zygote(rig: Rig, subreaper: None) -> Iterator[Zygote]:
    z = Zygote(rig.supervisor.endpoint, "info", "text")
    assert z.start()
    try:
        with hard_timeout(60):
            assert z.wait_ready(30), "the zygote never said ready"
            yield z
    finally:
        z.close()


def _configure(rig: Rig, names: list[str]) -> None:
    for i, name in enumerate(names):
        resource = make_resource(name, "example.com", 8)
        rig.supervisor.set_setup(WorkerSetup(resource, rig.settings, (make_candidate(i % 4),)))


def _reaped(w: ForkedWorker) -> Callable[[], bool]:
    return lambda: w.poll() is not None


def _registered(plant: Plant, name: str) -> Callable[[], bool]:
    return lambda: plant.worker(name).registered


def _kill_all(workers: list[ForkedWorker]) -> None:
    for w in workers:
        w.kill()
    for w in workers:
        with contextlib.suppress(AssertionError):
            wait_until(_reaped(w), 5, what=f"worker {w.pid} reaped")


# ---- fork safety ---------------------------------------------------------------------------


def test_a_ready_zygote_holds_one_thread_no_zmq_context_and_no_grpc_object(
    zygote: Zygote, rig: Rig
) -> None:
    assert zygote.pid is not None
    assert _threads(zygote.pid) == 1
    facts = zygote.probe()
    assert facts["pid"] == zygote.pid
    assert facts["threads"] == 1
    assert facts["zmq_contexts"] == 0
    assert facts["grpc_objects"] == 0
    # And forking workers does not change that: they run their threads elsewhere.
    _configure(rig, ["a"])
    worker = zygote.spawn("a", zygote.endpoint)
    assert worker is not None
    try:
        rig.kubelet.wait_for_registration(full("a"), timeout=20)
        assert _threads(worker.pid) > 1
        after = zygote.probe()
        assert (after["threads"], after["zmq_contexts"], after["grpc_objects"]) == (1, 0, 0)
        assert after["forks"] == 1
    finally:
        _kill_all([worker])


SAFETY_CHECK = """
import json, sys
from zygote import safety, server
server.preload()
facts = {"after_import": safety.thread_count(), "scan_import": safety.scan_objects()}
import grpc, zmq
from concurrent.futures import ThreadPoolExecutor
if sys.argv[1] == "grpc":
    grpc.server(ThreadPoolExecutor(1)).start()
else:
    zmq.Context.instance().socket(zmq.DEALER)
facts["after_use"] = safety.thread_count()
facts["scan_use"] = safety.scan_objects()
try:
    safety.check_before_fork()
    facts["refused"] = False
except safety.ForkUnsafe:
    facts["refused"] = True
print(json.dumps(facts))
"""


@pytest.mark.parametrize("what", ["grpc", "zmq"])
def test_importing_starts_no_thread_but_a_server_or_context_does_and_is_refused(
    what: str,
) -> None:
    """The checks can fail: what they look for appears as soon as gRPC or ZeroMQ is used."""
    out = subprocess.run(
        [sys.executable, "-c", SAFETY_CHECK, what],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "GRPC_VERBOSITY": "ERROR"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["after_import"] == 1
    assert facts["scan_import"] == {"zmq_contexts": 0, "grpc_objects": 0}
    assert facts["after_use"] > 1
    key = "grpc_objects" if what == "grpc" else "zmq_contexts"
    assert facts["scan_use"][key] > 0
    assert facts["refused"] is True


# ---- isolation -----------------------------------------------------------------------------


def test_forked_workers_are_our_children_and_a_kill_touches_one_resource(
    zygote: Zygote, rig: Rig
) -> None:
    _configure(rig, ABC)
    workers = {name: zygote.spawn(name, rig.supervisor.endpoint) for name in ABC}
    assert all(workers.values()), "the zygote refused a fork"
    forked = {name: w for name, w in workers.items() if w is not None}
    try:
        for name in ABC:
            rig.kubelet.wait_for_registration(full(name), timeout=20)
        for name, w in forked.items():
            proc = psutil.Process(w.pid)
            assert proc.ppid() == os.getpid()  # re-parented to us, the subreaper
            assert os.getsid(w.pid) == w.pid  # a session of its own
            cmd = [a for a in proc.cmdline() if a.strip()]
            assert cmd[-5:] == ["workers", "--resource", name, "--control", zygote.endpoint]
        zygote_proc = psutil.Process(zygote.pid)
        assert all(p.pid != forked["a"].pid for p in zygote_proc.children())

        forked["b"].kill()
        assert wait_until(lambda: forked["b"].poll(), 5, what="b reaped") == -signal.SIGKILL
        for name in ("a", "c"):
            assert forked[name].poll() is None
            response = rig.kubelet.allocate(full(name), [["0"]])
            assert response.container_responses
            assert rig.kubelet.is_registered(full(name))
        assert zygote_proc.is_running() and zygote.probe()["threads"] == 1
        # A new worker for b from the same zygote registers again.
        again = zygote.spawn("b", rig.supervisor.endpoint)
        assert again is not None
        forked["b2"] = again
        rig.kubelet.wait_for_registration(full("b"), timeout=20, count=2)
    finally:
        _kill_all(list(forked.values()))


def test_a_worker_exit_status_reaches_the_supervisor_as_it_is(zygote: Zygote, rig: Rig) -> None:
    # No setup for this resource: the worker gets no configure and exits on its own.
    worker = zygote.spawn("nobody", rig.supervisor.endpoint)
    assert worker is not None
    try:
        worker.terminate()
        code = wait_until(lambda: worker.poll() is not None and worker.poll(), 10, what="exit")
        assert code in (0, -signal.SIGTERM)  # clean SIGTERM shutdown, or killed before handlers
    finally:
        _kill_all([worker])


# ---- failures ------------------------------------------------------------------------------


def test_a_killed_zygote_means_fallback_then_a_new_zygote(rig: Rig, subreaper: None) -> None:
    now = [0.0]
    z = Zygote(rig.supervisor.endpoint, "info", "text", clock=lambda: now[0])
    workers: list[ForkedWorker] = []
    try:
        assert z.start() and z.wait_ready(30)
        first = z.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(first) or _zombie(first), 5, what="zygote dead")
        assert z.spawn("a", rig.supervisor.endpoint) is None  # the caller starts it with Popen
        assert z.fallbacks == 1 and z.pid is None
        assert z.spawn("a", rig.supervisor.endpoint) is None  # within the backoff: no restart
        assert z.starts == 1
        now[0] += 60.0
        assert z.spawn("a", rig.supervisor.endpoint) is None  # restarted now, not ready yet
        assert z.starts == 2 and z.pid not in (None, first)
        assert z.wait_ready(30)
        _configure(rig, ["a"])
        worker = z.spawn("a", rig.supervisor.endpoint)
        assert worker is not None
        workers.append(worker)
        rig.kubelet.wait_for_registration(full("a"), timeout=20)
    finally:
        _kill_all(workers)
        z.close()


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_closed_socket_ends_the_zygote(rig: Rig) -> None:
    z = Zygote(rig.supervisor.endpoint, "info", "text")
    assert z.start()
    proc = z.proc
    assert proc is not None and z.wait_ready(30)
    z.close()  # closes the socket, waits a second, then kills
    assert proc.returncode == 0  # it left on EOF, not by the kill
    # One still importing holds nothing: it is killed at once rather than waited for.
    assert z.start()
    early = z.proc
    assert early is not None
    z.close()
    assert early.returncode == -signal.SIGKILL


def test_bad_requests_are_refused_and_the_zygote_keeps_serving(zygote: Zygote) -> None:
    assert zygote.sock is not None
    zygote.sock.settimeout(5)
    for packet in (b"not json", b'{"v": 9, "type": "fork"}', b'{"v": 1, "type": "dance"}'):
        zygote.sock.send(packet)
        answer = json.loads(zygote.sock.recv(65536))
        assert answer["type"] == "error" and answer["message"]
    zygote.sock.send(b'{"v": 1, "type": "fork", "id": 7}')
    answer = json.loads(zygote.sock.recv(65536))
    assert answer["type"] == "error" and answer["id"] == 7
    assert zygote.probe()["threads"] == 1


# ---- through the supervisor ----------------------------------------------------------------


@pytest.fixture
def plant() -> Iterator[Plant]:
    p = Plant(three_resources())
    try:
        with hard_timeout(120):
            yield p
    finally:
        p.close()


def _zygotes(supervisor_pid: int) -> list[psutil.Process]:
    return [
        c
        for c in psutil.Process(supervisor_pid).children()
        if "zygote" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE
    ]


def test_supervisor_forks_workers_and_stop_leaves_no_process(plant: Plant) -> None:
    proc = plant.start()
    plant.wait_registered(ABC, timeout=30)
    zygotes = _zygotes(proc.pid)
    assert len(zygotes) == 1
    workers = plant.worker_processes()
    assert len(workers) == 3
    assert all(w.ppid() == proc.pid for w in workers)
    assert "zygote ready" in plant.log()
    code, _ = plant.terminate()
    assert code == 0
    assert plant.worker_processes() == []
    assert not zygotes[0].is_running()


def test_supervisor_survives_a_killed_zygote(plant: Plant) -> None:
    proc = plant.start()
    plant.wait_registered(ABC, timeout=30)
    zygote = _zygotes(proc.pid)[0]
    zygote.kill()
    old = plant.worker("b").pid
    os.kill(old, signal.SIGKILL)  # restarted without the zygote (started the classic way)
    plant.wait_registered(["b"], timeout=30, count=2)
    assert plant.worker("b").pid != old
    assert "starting it again" in plant.log()
    # After the backoff, a new zygote; the next restart forks from it.
    wait_until(lambda: _zygotes(proc.pid), 30, what="a new zygote")
    assert _zygotes(proc.pid)[0].pid != zygote.pid
    wait_until(
        lambda: "zygote ready" in plant.log().split("starting it again")[-1],
        30,
        what="the new zygote ready",
    )
    old = plant.worker("c").pid
    os.kill(old, signal.SIGKILL)
    plant.wait_registered(["c"], timeout=30, count=2)
    assert psutil.Process(plant.worker("c").pid).ppid() == proc.pid
    for name in ABC:
        wait_until(_registered(plant, name), 30, what=f"{name} registered")
    code, _ = plant.terminate()
    assert code == 0 and plant.worker_processes() == []


def test_killed_supervisor_takes_the_zygote_with_it(plant: Plant) -> None:
    proc = plant.start()
    plant.wait_registered(ABC, timeout=30)
    zygote = _zygotes(proc.pid)[0]
    proc.kill()
    proc.wait(5)
    wait_until(lambda: _zombie(zygote.pid), 5, what="the zygote gone")
    # The workers notice the silence and leave within the heartbeat budget.
    wait_until(lambda: plant.worker_processes() == [], 10, what="workers gone")


def test_a_start_forks_every_worker_in_one_request_and_unclaimed_ones_are_stopped(
    zygote: Zygote, rig: Rig
) -> None:
    _configure(rig, ABC)
    assert zygote.prefork(ABC, rig.supervisor.endpoint) == 3
    assert zygote.probe()["forks"] == 3
    taken = [zygote.spawn(name, rig.supervisor.endpoint) for name in ("a", "b")]
    assert all(taken) and zygote.probe()["forks"] == 3  # handed out, not forked again
    workers = [w for w in taken if w is not None]
    try:
        for name in ("a", "b"):
            rig.kubelet.wait_for_registration(full(name), timeout=20)
        # c was forked but never taken (its start called off): closing stops and reaps it.
        (c_pid,) = [pid for (name, _), (pid, _) in zygote._preforked.items() if name == "c"]
        zygote.close()
        assert _zombie(c_pid) and not psutil.pid_exists(c_pid)
        assert all(w.poll() is None for w in workers)  # the taken ones are not touched
    finally:
        _kill_all(workers)


def test_zygote_off_starts_every_worker_as_a_fresh_interpreter(
    plant: Plant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RDMA_SHARED_DP_ZYGOTE", "off")
    proc = plant.start()
    plant.wait_registered(ABC, timeout=30)
    assert _zygotes(proc.pid) == []
    assert "zygote off" in plant.log()
    workers = plant.worker_processes()
    assert len(workers) == 3 and all(w.ppid() == proc.pid for w in workers)
    code, _ = plant.terminate()
    assert code == 0 and plant.worker_processes() == []
