"""A worker's life: start, bad input, the supervisor going away, SIGTERM and stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from common import exitcodes
from common.config import ResourceConfig, Selectors
from common.messages import Configure, Error, Hello, Ready, Stop
from tests.conditions import wait_until
from tests.standin_supervisor import REPO, Rig, make_candidate, make_resource

RESOURCE = make_resource("hca_a", "example.com", 4)
FULL = "example.com/hca_a"
DEVICES = (make_candidate(0), make_candidate(1, numa_node=1))
SPEC = "rdma-shared-dp_example.com_hca_a.json"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, use_cdi=True)
    yield r
    r.close()


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    wait_until(lambda: proc.poll() is not None, timeout, what="worker exit")
    return proc.returncode


def _serving(rig: Rig) -> subprocess.Popen[bytes]:
    proc = rig.start_worker(RESOURCE, DEVICES)
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    assert (rig.dp_dir / "hca_a.sock").is_socket()
    assert (rig.cdi_dir / SPEC).is_file()
    return proc


def _left_behind(rig: Rig) -> list[str]:
    """Files the worker made that still exist (the kubelet's own socket is not ours)."""
    ours = [p for p in rig.dp_dir.iterdir() if p.name != "kubelet.sock"]
    ours += list(rig.cdi_dir.iterdir()) if rig.cdi_dir.exists() else []
    return sorted(str(p) for p in ours)


def test_sigterm_cleans_up_and_exits_zero(rig: Rig) -> None:
    proc = _serving(rig)
    wait_until(lambda: rig.kubelet.stream_open(FULL), what="stream open")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert _wait_exit(proc, 5) == exitcodes.OK
    assert time.monotonic() - sent < 2.5  # server stopped within 2 s
    assert _left_behind(rig) == []
    # The kubelet saw the stream end.
    wait_until(lambda: not rig.kubelet.stream_open(FULL), what="stream closed")
    last = rig.supervisor.last_ready("hca_a")
    assert last is not None and not last.registered and last.reason.startswith("stopped")


def test_stop_message_cleans_up_and_exits_zero(rig: Rig) -> None:
    proc = _serving(rig)
    rig.supervisor.send("hca_a", Stop("resource removed from config"))
    assert _wait_exit(proc, 5) == exitcodes.OK
    assert _left_behind(rig) == []


def test_supervisor_gone_means_clean_exit(rig: Rig) -> None:
    proc = _serving(rig)
    rig.supervisor.close()
    gone = time.monotonic()
    # 3 heartbeat periods of 0.2 s, then a clean shutdown.
    assert _wait_exit(proc, 5) == exitcodes.SUPERVISOR_LOST
    assert time.monotonic() - gone < 2.0
    assert _left_behind(rig) == []


def test_silent_supervisor_means_clean_exit(rig: Rig) -> None:
    proc = _serving(rig)
    rig.supervisor.heartbeats = False  # the socket stays up, nothing is said
    assert _wait_exit(proc, 5) == exitcodes.SUPERVISOR_LOST
    assert _left_behind(rig) == []


def test_no_configure_means_exit(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        proc = rig.supervisor.spawn("nobody", extra=["--connect-timeout", "0.5"])
        assert _wait_exit(proc, 5) == exitcodes.SUPERVISOR_LOST
        assert [m for m in rig.supervisor.received("nobody") if isinstance(m, Hello)]
    finally:
        rig.close()


def test_stale_socket_is_replaced(rig: Rig) -> None:
    rig.dp_dir.mkdir(exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(rig.dp_dir / "hca_a.sock"))
    stale.close()
    _serving(rig)
    rig.kubelet.allocate(FULL, [["0"]])


def test_bad_control_messages_are_answered_and_survived(rig: Rig) -> None:
    proc = _serving(rig)
    rig.supervisor.send_raw("hca_a", b'{"v": 9, "id": "x", "type": "hello", "body": {}}')
    rig.supervisor.send_raw("hca_a", b"\x00garbage")
    rig.supervisor.send("hca_a", Hello("hca_a", 1))  # not something a worker accepts
    wait_until(
        lambda: len(rig.supervisor.received("hca_a", Error)) >= 3, what="three error answers"
    )
    errors = [m for m in rig.supervisor.received("hca_a", Error) if isinstance(m, Error)]
    assert "version 9" in errors[0].message
    assert errors[2].code == "unexpected"
    assert proc.poll() is None
    rig.kubelet.allocate(FULL, [["0"]])


def test_resource_that_cannot_be_a_cdi_kind_exits_config_invalid(rig: Rig) -> None:
    bad = ResourceConfig("hca_", "example.com", 2, Selectors())
    proc = rig.start_worker(bad, DEVICES)
    assert _wait_exit(proc, 10) == exitcodes.CONFIG_INVALID
    errors = [m for m in rig.supervisor.received("hca_", Error) if isinstance(m, Error)]
    assert errors and errors[0].code == "config_invalid"
    assert "without --use-cdi" in errors[0].message
    assert _left_behind(rig) == []


def test_configure_for_another_resource_is_refused(rig: Rig) -> None:
    from common.messages import Configure
    from tests.standin_supervisor import WorkerSetup

    rig.supervisor.set_setup(WorkerSetup(RESOURCE, rig.settings, DEVICES))
    proc = rig.supervisor.spawn("hca_a")
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    other = make_resource("hca_z")
    rig.supervisor.send("hca_a", Configure(other, rig.settings, DEVICES))
    wait_until(
        lambda: any(
            isinstance(m, Error) and m.code == "wrong_resource"
            for m in rig.supervisor.received("hca_a")
        )
    )
    assert proc.poll() is None
    proc.terminate()
    assert _wait_exit(proc, 5) == exitcodes.OK


def test_ready_reports_registration(rig: Rig) -> None:
    _serving(rig)
    ready = rig.supervisor.wait_registered("hca_a")
    assert isinstance(ready, Ready) and ready.mode == "classic"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--resource", "a"],
        ["--resource", "a", "--control", "not-an-endpoint"],
        # --resource becomes a file name: no path tricks.
        ["--resource", "../a", "--control", "ipc:///tmp/x"],
        ["--resource", "a/b", "--control", "ipc:///tmp/x"],
        ["--resource", "a", "--control", "ipc:///tmp/x", "--connect-timeout", "soon"],
        ["--resource", "a", "--control", "ipc:///tmp/x", "--log-format", "xml"],
        ["--resource", "a", "--control", "ipc:///tmp/x", "--bogus", "1"],
        ["--resource", "a", "--control"],
    ],
)
def test_usage_errors(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workers", *args], cwd=REPO, capture_output=True, timeout=30
    )
    assert proc.returncode == exitcodes.USAGE
    assert proc.stderr


def test_configure_again_applies_in_place_or_serves_afresh(rig: Rig) -> None:
    _serving(rig)
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4)
    # Same name and settings: a new snapshot on the same stream, no new registration.
    rig.supervisor.send(
        "hca_a", Configure(replace(RESOURCE, rdma_hca_max=2), rig.settings, DEVICES)
    )
    rig.kubelet.wait_for_devices(FULL, lambda ds: [d.id for d in ds] == ["0", "1"])
    assert len(rig.kubelet.registrations()) == 1
    # CDI off and a new heartbeat pace: only the Allocate answer and the spec file change; the
    # kubelet sees no blip (no new registration, the same stream).
    plain = replace(rig.settings, use_cdi=False, heartbeat_interval=0.3)
    rig.supervisor.send("hca_a", Configure(RESOURCE, plain, DEVICES))
    wait_until(lambda: not (rig.cdi_dir / SPEC).exists(), what="CDI spec removed")
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4)
    answer = rig.kubelet.allocate(FULL, [["0"]]).container_responses[0]
    assert answer.devices and not answer.cdi_devices
    assert len(rig.kubelet.registrations()) == 1
    assert rig.kubelet.streams_opened(FULL) == 1
    # CDI on again: the spec is back before any name is handed out.
    rig.supervisor.send("hca_a", Configure(RESOURCE, rig.settings, DEVICES))
    wait_until(lambda: (rig.cdi_dir / SPEC).exists(), what="CDI spec written")
    wait_until(
        lambda: rig.kubelet.allocate(FULL, [["0"]]).container_responses[0].cdi_devices,
        what="CDI answer",
    )
    assert len(rig.kubelet.registrations()) == 1
    # A new prefix is a new resource name: served afresh and registered under it.
    other = replace(RESOURCE, resource_prefix="example.org")
    rig.supervisor.send("hca_a", Configure(other, rig.settings, DEVICES))
    rig.kubelet.wait_for_registration("example.org/hca_a", timeout=5)
    wait_until(lambda: not (rig.cdi_dir / SPEC).exists(), what="old CDI spec removed")
    assert (rig.cdi_dir / "rdma-shared-dp_example.org_hca_a.json").exists()


def test_an_identical_device_set_is_not_republished(rig: Rig) -> None:
    _serving(rig)
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4)
    wait_until(lambda: len(rig.kubelet.snapshots(FULL)) == 1, what="first snapshot")
    rig.supervisor.update_devices("hca_a", DEVICES)
    # Messages are handled in order: once the answer to this one is in, the devices were too.
    rig.supervisor.send("hca_a", Hello("hca_a", 1))
    wait_until(lambda: rig.supervisor.received("hca_a", Error), what="the probe's answer")
    with pytest.raises(AssertionError):
        wait_until(lambda: len(rig.kubelet.snapshots(FULL)) > 1, 0.5, what="a needless snapshot")
    # A real change still goes out.
    rig.supervisor.update_devices("hca_a", DEVICES[:1])
    rig.kubelet.wait_for_devices(FULL, lambda ds: len(ds) == 4 and ds[0].numa_nodes == (0,))
    assert len(rig.kubelet.snapshots(FULL)) == 2


def test_cdi_folder_unwritable_refuses_allocate_then_recovers(rig: Rig) -> None:
    # A file where the CDI folder should be: the spec cannot be written.
    rig.cdi_dir.write_text("in the way")
    rig.start_worker(RESOURCE, DEVICES)
    rig.kubelet.wait_for_registration(FULL, timeout=10)
    failed = rig.supervisor.wait_for(
        "hca_a", lambda m: isinstance(m, Error) and m.code == "cdi_write_failed", timeout=5
    )
    assert isinstance(failed, Error) and SPEC in failed.message
    # Nothing is handed out that the runtime could not resolve; the devices say so too.
    rig.kubelet.wait_for_devices(
        FULL, lambda ds: len(ds) == 4 and all(d.health == "Unhealthy" for d in ds)
    )
    with pytest.raises(grpc.RpcError) as caught:
        rig.kubelet.allocate(FULL, [["0"]])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CDI spec" in caught.value.details() and SPEC in caught.value.details()
    # The folder becomes usable: the spec appears, the devices turn healthy, Allocate works.
    rig.cdi_dir.unlink()
    wait_until(lambda: (rig.cdi_dir / SPEC).is_file(), 5, what="CDI spec written on retry")
    rig.kubelet.wait_for_devices(
        FULL, lambda ds: len(ds) == 4 and all(d.health == "Healthy" for d in ds)
    )
    names = [d.name for d in rig.kubelet.allocate(FULL, [["0"]]).container_responses[0].cdi_devices]
    assert names == ["example.com/hca_a=0000:03:00.0", "example.com/hca_a=0000:04:00.0"]
    assert len([m for m in rig.supervisor.received("hca_a", Error)]) == 1  # told once
    assert len(rig.kubelet.registrations()) == 1


def test_a_cdi_spec_rewritten_by_someone_else_is_left_at_shutdown(rig: Rig) -> None:
    proc = _serving(rig)
    # A newer instance of this worker (say) rewrote the file: it is not ours to delete now.
    theirs = rig.cdi_dir / ".theirs"
    theirs.write_text(json.dumps({"written": "by someone else"}))
    os.replace(theirs, rig.cdi_dir / SPEC)
    proc.send_signal(signal.SIGTERM)
    assert _wait_exit(proc, 5) == exitcodes.OK
    assert json.loads((rig.cdi_dir / SPEC).read_text()) == {"written": "by someone else"}
    assert "rewritten by someone else" in rig.log("hca_a")


def test_a_file_in_the_way_is_reported_and_retried(rig: Rig) -> None:
    rig.dp_dir.mkdir(exist_ok=True)
    blocker = rig.dp_dir / "hca_a.sock"
    blocker.write_text("not a socket")
    proc = rig.start_worker(RESOURCE, DEVICES)
    error = rig.supervisor.wait_for(
        "hca_a", lambda m: isinstance(m, Error) and m.code == "serve_failed", timeout=10
    )
    assert isinstance(error, Error) and "not a socket" in error.message
    assert blocker.read_text() == "not a socket"  # never deleted for us
    assert proc.poll() is None
    blocker.unlink()
    rig.kubelet.wait_for_registration(FULL, timeout=3)
    assert len(rig.supervisor.received("hca_a", Error)) == 1  # reported once, not per retry
