"""The plugin as PID 1 of its own PID namespace, as under the Network Operator (test process).

`unshare --pid --fork --mount-proc` makes a fresh PID namespace whose PID 1 is the program under
test, exactly as a container runtime does when a DaemonSet's `command` replaces tini. The checks:
orphans re-parented to PID 1 are reaped (a zombie would stay in /proc forever), signals reach the
plugin (the kernel drops unhandled ones sent to PID 1), SIGTERM stops everything, and PID 1 exits
with the plugin's status. Needs root for the namespaces; skips with the reason where missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from supervisor import pid1
from tests.conditions import hard_timeout, wait_until
from tests.supervisor_rig import Plant, three_resources

REPO = Path(__file__).resolve().parents[2]


def _unshare_works() -> str:
    if os.geteuid() != 0:
        return "needs root for a PID namespace"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not installed"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return "" if probe.returncode == 0 else f"unshare --pid failed: {probe.stderr!r}"


SKIP = _unshare_works()
pytestmark = [pytest.mark.root, pytest.mark.skipif(bool(SKIP), reason=SKIP or "-")]

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]

# Runs as the namespace's PID 1: becomes init, then (in the child) makes orphans and reports.
CHILD = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    from supervisor import pid1
    pid1.become_init()
    report = open(sys.argv[1], "a", buffering=1)
    got = []
    signal.signal(signal.SIGUSR1, lambda s, f: got.append("USR1"))
    signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
    report.write(f"pid={os.getpid()} ppid={os.getppid()}\\n")
    # sh starts two jobs in the background and exits at once: they re-parent to PID 1.
    out = subprocess.run(["sh", "-c", "sleep 0.2 & echo $!; sleep 0.3 & echo $!"],
                         capture_output=True, text=True, check=True).stdout.split()
    report.write("orphans=" + ",".join(out) + "\\n")
    # A zombie keeps its /proc entry until its parent (PID 1 now) reaps it.
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{p}") for p in out) and time.monotonic() < deadline:
        time.sleep(0.01)
    gone = not any(os.path.exists(f"/proc/{p}") for p in out)
    report.write(f"reaped={gone}\\n")
    while "USR1" not in got:
        signal.pause()
    report.write("usr1\\n")
    while "TERM" not in got:
        signal.pause()
    report.write("term\\n")
    sys.exit(int(sys.argv[2]))
    """
)


def _ns_init(outer: subprocess.Popen[bytes]) -> psutil.Process:
    """The namespace's PID 1, as seen from here: unshare's only child."""

    def child() -> psutil.Process | None:
        kids = psutil.Process(outer.pid).children()
        return kids[0] if kids else None

    return wait_until(child, 10, what="the namespace's PID 1")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_pid1_reaps_orphans_forwards_signals_and_exits_with_the_childs_status(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report"
    with hard_timeout(60):
        proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-c", CHILD, str(report), "3"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            init = _ns_init(proc)
            wait_until(
                lambda: any(x.startswith("reaped=") for x in _lines(report)), 30, what="reap"
            )
            lines = _lines(report)
            # The plugin side is PID 2, a child of our init; the orphans were reaped by PID 1.
            assert lines[0] == "pid=2 ppid=1", lines
            assert "reaped=True" in lines, lines
            init.send_signal(signal.SIGUSR1)
            wait_until(lambda: "usr1" in _lines(report), 10, what="SIGUSR1 forwarded")
            init.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 3
            assert "term" in _lines(report)
        finally:
            proc.kill()
            proc.wait()


def test_pid1_reports_a_killed_child_as_a_shell_does(tmp_path: Path) -> None:
    code = "from supervisor import pid1; import os, signal; pid1.become_init(); os.kill(os.getpid(), signal.SIGKILL)"  # noqa: E501
    with hard_timeout(30):
        proc = subprocess.run(
            [*UNSHARE, sys.executable, "-c", code], cwd=REPO, timeout=20, check=False
        )
    assert proc.returncode == 128 + signal.SIGKILL


def test_pid1_stops_what_the_child_left_behind(tmp_path: Path) -> None:
    """The child exits, leaving a process that ignores nothing: PID 1 TERMs it and exits."""
    marker = tmp_path / "left"
    code = (
        "from supervisor import pid1; import subprocess, sys; pid1.become_init();"
        f"subprocess.Popen(['sh', '-c', 'echo $$ > {marker}; exec sleep 600']); sys.exit(0)"
    )
    with hard_timeout(30):
        proc = subprocess.run(
            [*UNSHARE, sys.executable, "-c", code], cwd=REPO, timeout=20, check=False
        )
    assert proc.returncode == 0
    assert marker.read_text().strip()
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "600"]
    ]


def test_not_init_unless_pid_1_and_never_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pid1.MARKER, raising=False)
    assert pid1.should_become_init(1)
    assert not pid1.should_become_init(2)
    monkeypatch.setenv(pid1.MARKER, "1")
    assert not pid1.should_become_init(1)


def test_exit_status_decoding() -> None:
    assert pid1.exit_status(3 << 8) == 3
    assert pid1.exit_status(signal.SIGTERM) == 128 + signal.SIGTERM


class Pid1Plant(Plant):
    """The real plugin as PID 1 of a new PID namespace, no environment of its own."""

    def command(self) -> list[str]:
        return [*UNSHARE, *super().command()]


def test_the_real_plugin_as_pid_1_reaps_exec_orphans_and_stops_on_sigterm() -> None:
    plant = Pid1Plant(three_resources())
    try:
        with hard_timeout(90):
            plant.start()
            assert plant.proc is not None
            plant.wait_registered(["a", "b", "c"], timeout=30)
            init = _ns_init(plant.proc)
            assert "supervisor" in " ".join(init.cmdline())
            # What a `kubectl exec` session's background job does: its parent (nsenter's child)
            # exits, the job re-parents to the namespace's PID 1 and must be reaped there.
            subprocess.run(
                ["nsenter", "-t", str(init.pid), "-p", "--", "sh", "-c", "sleep 3.2345 &"],
                check=True,
                timeout=10,
            )

            def orphan() -> psutil.Process | None:
                for p in psutil.process_iter(["cmdline"]):
                    if p.info["cmdline"] == ["sleep", "3.2345"]:
                        return p
                return None

            job = wait_until(orphan, 3, what="the background job")
            assert job.ppid() == init.pid
            # A zombie still exists; only PID 1's wait removes it.
            wait_until(lambda: not psutil.pid_exists(job.pid), 15, what="the orphan reaped")
            workers = plant.worker_processes()
            assert len(workers) == 3
            init.send_signal(signal.SIGTERM)
            assert plant.proc.wait(20) == 0
            assert not [w for w in workers if w.is_running()]
            assert plant.sockets() == []
    finally:
        plant.close()
