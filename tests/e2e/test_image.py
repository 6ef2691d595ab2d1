"""The container image, built with buildah and run for real (test process, root).

`.ci/build-image.sh` builds the default image: the Dockerfile on the Debian trixie base it makes
with debootstrap (Debian's python3 3.13; no image registry is needed), dependencies installed
from requirements.lock with their hashes.
The built image is then mounted and run the way a container runtime would: a new PID, mount and
network namespace, the image's root as `/`, only the image's environment, the command as PID 1.
Inside it: the Network Operator's command line and its init container's `lsmod | grep`, `discover`
on a simulated host tree, the demo, and the plugin registering with a kubelet simulator on the
host and stopping on SIGTERM. Skips, saying why, where buildah, debootstrap or root is missing
(`.ci/install-image-tools.sh` installs them). A cold build takes a few minutes, a warm one
(base image and layers cached in the image store) well under one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from simulator.kubelet import KubeletSimulator
from tests.conditions import hard_timeout, wait_until
from tests.supervisor_rig import HCAS, three_resources

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/rdma-shared-dp:test"
STORE = os.environ.get("IMAGE_STORE", "/var/cache/rdma-shared-dp/containers")
#: The Network Operator's init-container script, verbatim in shape.
INIT_SCRIPT = "until lsmod | grep mlx5_core; do echo waiting for mlx5_core; sleep 30; done"
FAKE_MODULES = (
    "mlx5_ib 483328 0 - Live 0x0000000000000000\n"
    "mlx5_core 2093056 1 mlx5_ib, Live 0x0000000000000000\n"
)


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (buildah with vfs storage, namespaces, chroot)"
    for tool in ("buildah", "debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} not installed: run .ci/install-image-tools.sh"
    return ""


SKIP = _missing()
pytestmark = [pytest.mark.root, pytest.mark.skipif(bool(SKIP), reason=SKIP or "-")]


def buildah(*args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [
            "buildah",
            "--root",
            f"{STORE}/storage",
            "--runroot",
            f"{STORE}/run",
            "--storage-driver",
            "vfs",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"buildah {args}: {proc.stderr}"
    return proc.stdout.strip()


@dataclass
class Image:
    root: Path  # the mounted image
    env: list[str]  # the image's environment, all a container gets from it
    build_seconds: float


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    started = time.monotonic()
    build = subprocess.run(
        ["bash", ".ci/build-image.sh"],
        cwd=REPO,
        env={**os.environ, "IMAGE": IMAGE, "IMAGE_STORE": STORE},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr[-4000:]
    seconds = time.monotonic() - started
    name = f"rdma-shared-dp-test-{os.getpid()}"
    buildah("from", "--pull=false", "--name", name, IMAGE)
    try:
        root = Path(buildah("mount", name))
        config = json.loads(buildah("inspect", "--type", "image", IMAGE))
        env = config["OCIv1"]["config"].get("Env", [])
        yield Image(root, env, seconds)
    finally:
        with contextlib.suppress(AssertionError):
            buildah("umount", name)
        buildah("rm", name)


@dataclass
class Mount:
    source: str  # a host path; "tmpfs" or "proc" for those file systems
    target: str  # inside the container
    file: bool = False


def container_command(image: Image, argv: list[str], mounts: list[Mount]) -> list[str]:
    """`argv` as PID 1 of new PID, mount and network namespaces, rooted in the image."""
    root = shlex.quote(str(image.root))
    lines = ["set -e", "mount --make-rprivate /"]
    for m in mounts:
        target = f"{root}{shlex.quote(m.target)}"
        if m.source in ("tmpfs", "proc"):
            lines.append(f"mkdir -p {target} && mount -t {m.source} {m.source} {target}")
        elif m.file:
            lines.append(f"touch {target} && mount --bind {shlex.quote(m.source)} {target}")
        else:
            lines.append(f"mkdir -p {target} && mount --bind {shlex.quote(m.source)} {target}")
    env = " ".join(shlex.quote(e) for e in image.env)
    lines.append(f'exec chroot {root} /usr/bin/env -i {env} "$@"')
    return [
        "unshare",
        "--mount",
        "--pid",
        "--net",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        "\n".join(lines),
        "container",
        *argv,
    ]


def run_in(
    image: Image, argv: list[str], mounts: list[Mount], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        container_command(image, argv, mounts),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


BASIC = [Mount("proc", "/proc"), Mount("tmpfs", "/tmp"), Mount("tmpfs", "/run")]


def test_image_size_and_build_time(image: Image) -> None:
    size = buildah("images", "--format", "{{.Size}}", IMAGE)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "image.tar"
        buildah("push", "--quiet", IMAGE, f"oci-archive:{archive}")
        compressed = archive.stat().st_size
    print(f"\nimage {IMAGE}: {size} uncompressed, {compressed / 1e6:.1f} MB as pushed (gzip)")
    print(f"build took {image.build_seconds:.0f}s (cold includes debootstrap and pip)")
    # A guard against bloat, not a target: the Debian base alone is ~160 MB.
    assert compressed < 150e6


def test_the_image_runs_a_python_where_the_zygote_objects_are_immortal(image: Image) -> None:
    """Python 3.12+ (PEP 683): the default image's workers share the zygote's pages."""
    code = "import sys; print(sys.version_info[0], sys.version_info[1])"
    proc = run_in(image, ["/opt/rdma-shared-dp/bin/python", "-c", code], BASIC)
    assert proc.returncode == 0, proc.stderr
    major, minor = map(int, proc.stdout.split())
    assert (major, minor) >= (3, 12)


def _locked() -> dict[str, str]:
    text = (REPO / "requirements.lock").read_text()
    return {n.lower(): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def _installed(image: Image) -> dict[str, str]:
    """The image venv's distributions: canonical name -> version."""
    (site,) = image.root.glob("opt/rdma-shared-dp/lib/python3*/site-packages")
    found = {}
    for dist_info in site.glob("*.dist-info"):
        name, _, version = dist_info.name.removesuffix(".dist-info").rpartition("-")
        found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_the_image_holds_exactly_the_locked_packages(image: Image) -> None:
    found = _installed(image)
    assert found.pop("rdma-shared-dp") == "0.1.0"
    locked = _locked()
    for name, version in found.items():
        assert locked.get(name) == version, f"{name} {version} is not the locked {locked.get(name)}"
    assert "setuptools" not in found and "pip" not in found  # build tools left the venv


def test_release_artifacts_oci_archive_and_sbom(image: Image, tmp_path: Path) -> None:
    """What .ci/release.sh does with the image: the OCI archive and the SBOM of its packages."""
    archive = tmp_path / "image.oci.tar"
    buildah("push", "--quiet", IMAGE, f"oci-archive:{archive}:{IMAGE}")
    with tarfile.open(archive) as tar:
        layout = json.load(tar.extractfile("oci-layout"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert layout["imageLayoutVersion"] == "1.0.0"
    (manifest,) = index["manifests"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"].endswith("test")
    (site,) = image.root.glob("opt/rdma-shared-dp/lib/python3*/site-packages")
    reports = sorted(str(p) for p in image.root.glob("opt/rdma-shared-dp/pip-report/*.json"))
    assert len(reports) == 2
    argv = [sys.executable, str(REPO / ".ci" / "sbom.py"), "--image-name", "rdma-shared-dp",
            "--image-version", "0.1.0", "--image-digest", "sha256:" + "0" * 64,
            "--created", "2026-01-01T00:00:00Z", "--site-packages", str(site),
            *reports]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    again = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    assert first == again  # same image, same bytes
    bom = json.loads(first)
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    components = {c["name"]: c for c in bom["components"]}
    locked = _locked()
    assert set(components) == set(_installed(image))  # the build backend, removed, is not listed
    for name, c in components.items():
        assert c["purl"] == f"pkg:pypi/{name}@{c['version']}"
        if name != "rdma-shared-dp":
            assert c["version"] == locked[name]
            (digest,) = c["hashes"]
            assert f"--hash=sha256:{digest['content']}" in (REPO / "requirements.lock").read_text()


def test_operator_command_path_and_version_flags(image: Image) -> None:
    for flag in ("--version", "-version", "-v"):
        proc = run_in(image, ["/bin/k8s-rdma-shared-dp", flag], BASIC)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "rdma-shared-dp 0.1.0"
    # The entrypoint's way: tini first, then the console script.
    proc = run_in(image, ["/usr/local/bin/tini", "--", "rdma-shared-dp", "version"], BASIC)
    assert proc.returncode == 0 and proc.stdout.strip() == "rdma-shared-dp 0.1.0", proc.stderr


def test_init_container_lsmod_grep(image: Image, tmp_path: Path) -> None:
    # This VM's kernel has no loadable modules (no /proc/modules): the container gets a /proc
    # holding only a modules file, which is all lsmod reads.
    fake = tmp_path / "modules"
    fake.write_text(FAKE_MODULES)
    mounts = [Mount("tmpfs", "/proc"), Mount(str(fake), "/proc/modules", file=True)]
    proc = run_in(image, ["sh", "-c", INIT_SCRIPT], mounts, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("mlx5_core"), proc.stdout
    # And it can fail: without the module, grep finds nothing.
    fake.write_text("ib_core 462848 0 - Live 0x0000000000000000\n")
    proc = run_in(image, ["sh", "-c", "lsmod | grep mlx5_core"], mounts, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_discover_on_a_host_tree_mounted_in(image: Image, tmp_path: Path) -> None:
    node = tmp_path / "node"
    subprocess.run(
        [sys.executable, "-m", "simulator.sysfs", str(node)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    mounts = [*BASIC, Mount(str(node), "/host")]
    argv = ["rdma-shared-dp", "discover", "--host-root", "/host", "--config-file", "", "--json"]
    proc = run_in(image, argv, mounts)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    text = json.dumps(report)
    assert "mlx5_0" in text, text[:2000]


def test_demo_runs_in_the_image(image: Image) -> None:
    proc = run_in(image, ["rdma-shared-dp", "demo"], BASIC, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_operator_shape_in_the_image_registers_and_stops_on_sigterm(image: Image) -> None:
    """The Network Operator's container: `command` /bin/k8s-rdma-shared-dp as PID 1, args
    --use-cdi and --kubelet-root-dir, no env of its own, no pod-resources socket; the kubelet
    is a simulator on the host, its folders mounted at the same paths inside."""
    from simulator.sysfs import SysfsTree, connectx_ib

    root = Path(tempfile.mkdtemp(prefix="img-", dir="/tmp"))
    node = root / "node"
    tree = SysfsTree(node)
    for address, rdma, netdev, numa in HCAS:
        tree.add(connectx_ib(address, rdma=rdma, netdev=netdev, numa_node=numa))
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(json.dumps(three_resources()))
    kubelet_root = root / "kubelet"
    kubelet = KubeletSimulator(kubelet_root / "device-plugins", kubelet_root / "plugins_registry")
    kubelet.start()
    mounts = [
        *BASIC,
        Mount(str(node / "sys"), "/sys"),
        Mount("tmpfs", "/dev"),
        *(Mount(f"/dev/{d}", f"/dev/{d}", file=True) for d in ("null", "zero", "urandom")),
        Mount(str(node / "dev" / "infiniband"), "/dev/infiniband"),
        Mount(str(root / "config"), "/k8s-rdma-shared-dev-plugin"),
        Mount(str(kubelet_root), str(kubelet_root)),
    ]
    argv = ["/bin/k8s-rdma-shared-dp", "--use-cdi", f"--kubelet-root-dir={kubelet_root}"]
    log = root / "plugin.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with hard_timeout(120), log.open("wb") as out:
            proc = subprocess.Popen(container_command(image, argv, mounts), stdout=out, stderr=out)
            for name in ("a", "b", "c"):
                kubelet.wait_for_registration(f"example.com/{name}", timeout=60)
            init = wait_until(lambda: psutil.Process(proc.pid).children(), 10, what="PID 1")[0]
            assert init.cmdline()[1].endswith("k8s-rdma-shared-dp"), init.cmdline()
            # Registered can come before the poller's first answer is logged.
            wait_until(lambda: "PodResources API" in log.read_text(), 30, what="PodResources line")
            init.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()
            text = log.read_text()
            # Its availability once; the lifecycle's started/stopped lines are not about it.
            about = [x for x in text.splitlines() if "PodResources" in x]
            assert sum("supervisor.children" not in x for x in about) == 1, text
            assert "Traceback" not in text, text
            assert not list((kubelet_root / "plugins_registry").glob("*.sock"))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        kubelet.stop()
        shutil.rmtree(root, ignore_errors=True)
