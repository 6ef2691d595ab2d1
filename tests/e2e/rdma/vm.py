"""Booting the soft-RoCE VM of `make e2e-rdma` and reading what it did (the host's tests).

The image comes from .ci/install-rdma-vm.sh (kernel, initrd, rootfs.ext4 in the cache folder).
qemu runs it under KVM only where a probe shows KVM boots the kernel (on these machines a nested
KVM guest hangs at "Booting from ROM"), else under TCG (pure emulation); `RDMA_VM_ACCEL=tcg|kvm`
skips the probe. The probe's answer is kept in the cache folder (`accel`). Two virtio NICs on
qemu's isolated user network, the disk as a throw-away snapshot, the work tree shared read-only
over 9p and a result folder shared read-write. The VM's PID 1 runs tests/e2e/rdma/vm_session.sh
and powers off; its serial console goes to `console.log` in the result folder and is read while
it runs.

Deadlines: the kernel must print its first line within `boot_deadline` seconds, and the whole
session end within `deadline`; past either, qemu is killed and the run reports why, with the
console's tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("RDMA_VM_CACHE", "/var/cache/rdma-shared-dp-e2e/rdma-vm"))
IMAGE_FILES = ("vmlinuz", "initrd.img", "rootfs.ext4")
BOOT_MARK = "rdma-vm: kernel "
DONE_MARK = "rdma-vm: done rc="


@dataclass
class VmRun:
    """What one VM session left behind."""

    out: Path
    console: str
    boot_seconds: float | None  # qemu start -> the VM's first line from its own init
    seconds: float
    rc: int | None  # the session script's exit status; None when it never finished
    failure: str = ""  # why the run did not finish: a deadline, qemu's own exit
    results: dict[str, Any] = field(default_factory=dict)
    accel: str = "tcg"


def image_problem(cache: Path = CACHE) -> str | None:
    """Why the VM cannot run here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (bash .ci/install-rdma-vm.sh installs it)"
    absent = [name for name in IMAGE_FILES if not (cache / name).is_file()]
    if absent:
        return f"no VM image in {cache} ({', '.join(absent)}): run bash .ci/install-rdma-vm.sh"
    return None


#: A kernel that reaches userspace prints one of these (without `quiet`): the initramfs's init.
PROBE_MARKS = ("Run /init as init process", "Run /bin/true as init process")
PROBE_DEADLINE = 30.0


def choose_accel(cache: Path = CACHE) -> str:
    """ "kvm" where KVM boots this kernel to userspace within PROBE_DEADLINE, else "tcg"."""
    chosen = os.environ.get("RDMA_VM_ACCEL", "")
    if chosen:
        return chosen
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    known = cache / "accel"
    if known.is_file():
        return known.read_text().strip() or "tcg"
    accel = "kvm" if probe_kvm(cache) else "tcg"
    known.write_text(accel + "\n")
    return accel


def probe_kvm(cache: Path) -> bool:
    """Boot the kernel under KVM with `init=/bin/true` and watch for its first userspace step."""
    command = [
        "qemu-system-x86_64", "-accel", "kvm", "-m", "512", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-monitor", "none",
        "-kernel", str(cache / "vmlinuz"), "-initrd", str(cache / "initrd.img"),
        "-append", "root=/dev/vda ro console=ttyS0 init=/bin/true panic=-1",
        "-drive", f"file={cache / 'rootfs.ext4'},if=virtio,format=raw,snapshot=on",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=PROBE_DEADLINE
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout if isinstance(err.stdout, str) else (err.stdout or b"").decode("latin-1")
        return any(mark in out for mark in PROBE_MARKS)
    return any(mark in done.stdout for mark in PROBE_MARKS)


def qemu_command(work_tree: Path, out: Path, cache: Path = CACHE, accel: str = "tcg") -> list[str]:
    append = "root=/dev/vda rw console=ttyS0 init=/sbin/rdma-vm-init quiet panic=-1 net.ifnames=0"
    share = "security_model=none,multidevs=remap"
    return [
        "qemu-system-x86_64",
        "-accel", accel,
        "-m", "1536",
        "-smp", "2",
        "-display", "none",
        "-no-reboot",
        "-serial", f"file:{out / 'console.log'}",
        "-monitor", "none",
        "-kernel", str(cache / "vmlinuz"),
        "-initrd", str(cache / "initrd.img"),
        "-append", append,
        "-drive", f"file={cache / 'rootfs.ext4'},if=virtio,format=raw,snapshot=on",
        "-netdev", "user,id=n0,restrict=on",
        "-device", "virtio-net-pci,netdev=n0",
        "-netdev", "user,id=n1,restrict=on",
        "-device", "virtio-net-pci,netdev=n1",
        "-virtfs", f"local,path={work_tree},mount_tag=src,readonly=on,{share}",
        "-virtfs", f"local,path={out},mount_tag=out,{share}",
    ]  # fmt: skip


def boot(work_tree: Path, out: Path, *, boot_deadline: float, deadline: float) -> VmRun:
    """Run one VM session to its end (or a deadline) and collect what it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("console.log", "results.json", "rc", "session.log"):
        (out / stale).unlink(missing_ok=True)
    console = out / "console.log"
    accel = choose_accel()
    start = time.monotonic()
    proc = subprocess.Popen(
        qemu_command(work_tree, out, accel=accel),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    boot_seconds: float | None = None
    failure = ""
    while proc.poll() is None:
        text = console.read_text(errors="replace") if console.exists() else ""
        now = time.monotonic() - start
        if boot_seconds is None and BOOT_MARK in text:
            boot_seconds = now
        if boot_seconds is None and now > boot_deadline:
            failure = f"the VM did not boot within {boot_deadline:.0f} s"
            break
        if now > deadline:
            failure = f"the VM session did not end within {deadline:.0f} s"
            break
        # qemu gives no event for console output: poll the file, a few times a second.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.25)
    if proc.poll() is None:
        proc.kill()
    qemu_out = proc.communicate()[0] if proc.stdout else ""
    seconds = time.monotonic() - start
    text = console.read_text(errors="replace") if console.exists() else ""
    if not failure and proc.returncode != 0:
        failure = f"qemu exited with {proc.returncode}: {qemu_out.strip()[-500:]}"
    rc_file = out / "rc"
    rc = int(rc_file.read_text().strip()) if rc_file.exists() else None
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    return VmRun(out, text, boot_seconds, seconds, rc, failure, results, accel)
