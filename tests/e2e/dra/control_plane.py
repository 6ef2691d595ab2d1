"""A real Kubernetes control plane and node for the DRA suite, on loopback, in one temp folder.

USAGE (a context manager; needs root, `bash .ci/install-dra-e2e.sh` for the binaries):

    from tests.e2e.dra.control_plane import ControlPlane, missing_capability

    with ControlPlane(Path(tempfile.mkdtemp(dir="/tmp", prefix="dra-"))) as cp:
        cp.apply({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", ...})
        cp.get("resourceclaims", "name", namespace="default")      # dict, or None if absent
        cp.items("resourceslices")                                  # every object, all namespaces
        cp.kubectl("get", "pods", "-o", "wide")                     # admin kubectl, text out
        cp.pod("p1", limits={"rdma/hca_shared_devices_a": 1})       # a busybox pod manifest
        cp.wait_for(lambda: ..., timeout=60, what="...")            # a deadline; logs on failure
        cp.node.kubelet.root / "plugins_registry"                   # where a DRA driver registers
        cp.node.host_root, cp.node.cdi_dir                          # simulated HCAs, the CDI folder

- Processes: etcd, kube-apiserver (token auth + Node,RBAC authorization, NodeRestriction; the
  1.37 default gates, `resource.k8s.io/v1`), kube-scheduler, kube-controller-manager (the
  ResourceClaim controller, garbage collection, service accounts), and a node: containerd 2
  with CDI and a kubelet registered through the API server as Node `NODE_NAME`
  (tests/e2e/kubelet/rig.py's `Node`: simulated HCAs with real char nodes, busybox imported
  as `IMAGE`, everything undone by its close()).
- Identities (tokens in `tokens.csv`, a kubeconfig each): `kubeconfig` is the cluster admin
  (system:masters); `agent_kubeconfig` is the node agent, user `AGENT_USER` in group
  `AGENT_GROUP`, bound to the ClusterRole `AGENT_ROLE` (ResourceSlices, ResourceClaims, Nodes:
  what a DRA driver needs); the kubelet uses `system:node:<node>` (the Node authorizer).
- `ControlPlane(..., node=False)` starts the control plane alone; `register_node()` then adds
  a Ready Node object with no kubelet (enough to see what the scheduler does).
- On a failure inside the `with` block (or with RDMA_E2E_KEEP_LOGS=<dir>) every process's log is
  copied to RDMA_E2E_KEEP_LOGS (default /tmp/rdma-e2e-dra-logs) and the folder is named in the
  error; `wait_for` failures carry the tails of the logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.conditions import wait_until
from tests.e2e.kubelet import rig

HERE = Path(__file__).parent
CACHE = rig.CACHE
IMAGE = rig.IMAGE
NODE_NAME = rig.NODE_NAME
KUBECTL = os.environ.get("KUBECTL", "/usr/bin/kubectl")
AGENT_USER = "rdma-shared-dp-agent"
AGENT_GROUP = "rdma-shared-dp-agents"
AGENT_ROLE = "rdma-shared-dp-e2e-agent"
ADMIN_TOKEN = "e2e-admin-token"
AGENT_TOKEN = "e2e-agent-token"
KUBELET_TOKEN = "e2e-kubelet-token"
#: Processes started and how long each may take to be ready (a cold start on a loaded 2-core VM).
READY_TIMEOUT = 120.0


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value.strip('"')
    return out


def kubernetes_version() -> str:
    return versions()["KUBERNETES_VERSION"]


def binaries_dir() -> Path:
    return CACHE / f"dra-{kubernetes_version()}"


def missing_capability(node: bool = True) -> str | None:
    """Why this machine cannot run the DRA suite (with a real `node`), or None."""
    for cmd in ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager"):
        if not (binaries_dir() / cmd).exists():
            return f"{binaries_dir() / cmd} not built (bash .ci/install-dra-e2e.sh)"
    if not Path(KUBECTL).exists():
        return f"no kubectl at {KUBECTL} (bash .ci/install-tools.sh)"
    if shutil.which("openssl") is None:
        return "openssl not installed (the service-account signing key)"
    if not node:
        return None
    reason = rig.missing_capability()
    if reason:
        return reason
    if not rig.kubelet_binary(kubernetes_version()).exists():
        return f"kubelet {kubernetes_version()} not built (bash .ci/install-kubelet-e2e.sh)"
    if not (rig.containerd2_dir() / "containerd").exists():
        return f"containerd {rig.containerd2_version()} not built (bash .ci/install-kubelet-e2e.sh)"
    return None


class Process:
    """One control-plane process: its command line, log and pid."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TZ": "UTC"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            rig._stop_pid(self.proc, grace=15)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class ControlPlane:
    """etcd, kube-apiserver, kube-scheduler, kube-controller-manager and one node (see USAGE)."""

    def __init__(
        self,
        workdir: Path,
        *,
        node: bool = True,
        hcas: int = 2,
        image_archive: Path | None = None,
        scheduler_args: list[str] | None = None,
    ) -> None:
        self.dir = workdir
        self.bin = binaries_dir()
        self.with_node = node
        self.hcas = hcas
        self.image_archive = image_archive
        self.scheduler_args = scheduler_args or []
        self.etcd_port = rig.free_port()
        self.etcd_peer_port = rig.free_port()
        self.apiserver_port = rig.free_port()
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.agent_kubeconfig = workdir / "agent.kubeconfig"
        self.kubelet_kubeconfig = workdir / "kubelet.kubeconfig"
        self.processes: dict[str, Process] = {}
        self.node: rig.Node | None = None
        #: Seconds from start() until the node was Ready (or the control plane answered, alone).
        self.start_seconds: float | None = None
        self.logs_kept: Path | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)

    def start(self) -> None:
        began = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_credentials()
        self._start_etcd()
        self._start_apiserver()
        self._grant_agent()
        self._start_controllers()
        if self.with_node:
            self._start_node()
        self.start_seconds = time.monotonic() - began

    def close(self, failed: bool = False) -> None:
        keep = os.environ.get("RDMA_E2E_KEEP_LOGS")
        if failed or keep:
            self.logs_kept = self._keep_logs(Path(keep or "/tmp/rdma-e2e-dra-logs"))
        errors: list[str] = []
        if self.node is not None:
            # Pods through the API, so the kubelet stops them (the node's close then waits
            # for their tasks to go).
            if self.processes.get("kube-apiserver") and self.processes["kube-apiserver"].running():
                self.kubectl(
                    "delete", "pods", "--all", "-A", "--grace-period=0", "--force", check=False
                )
            try:
                self.node.close()
            except AssertionError as exc:
                errors.append(str(exc))
        for name in ("kube-controller-manager", "kube-scheduler", "kube-apiserver", "etcd"):
            if name in self.processes:
                self.processes[name].stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("; ".join(errors))

    def _keep_logs(self, dest: Path) -> Path:
        dest = dest / f"{self.dir.name}-{time.strftime('%H%M%S')}"
        dest.mkdir(parents=True, exist_ok=True)
        for log in self.dir.rglob("*.log"):
            if log.is_file() and "pods" not in log.parts:
                with contextlib.suppress(OSError):
                    shutil.copy(log, dest / f"{log.parent.name}-{log.name}")
        return dest

    # -- credentials --------------------------------------------------------------------------

    def _write_credentials(self) -> None:
        d = self.dir
        subprocess.run(
            ["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (d / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"\n'
            f'{AGENT_TOKEN},{AGENT_USER},agent-uid,"{AGENT_GROUP}"\n'
            f'{KUBELET_TOKEN},system:node:{NODE_NAME},kubelet-uid,"system:nodes"\n'
        )
        for path, user, token in (
            (self.kubeconfig, "admin", ADMIN_TOKEN),
            (self.agent_kubeconfig, AGENT_USER, AGENT_TOKEN),
            (self.kubelet_kubeconfig, f"system:node:{NODE_NAME}", KUBELET_TOKEN),
        ):
            path.write_text(self.kubeconfig_text(user, token))

    def kubeconfig_text(self, user: str, token: str) -> str:
        """A kubeconfig for this API server with a bearer token (for tokens made in a test)."""
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {
                            "server": self.server,
                            "certificate-authority": str(self.dir / "pki" / "apiserver.crt"),
                        },
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
                "current-context": "e2e",
            }
        )

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    # -- processes ----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Process:
        p = Process(name, [str(self.bin / name), *args], self.dir / f"{name}.log")
        self.processes[name] = p
        p.start()
        return p

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--listen-metrics-urls=",
                # A test cluster: durability across a host crash is not needed, speed is.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        d = self.dir
        (d / "pki").mkdir(exist_ok=True)
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={d / 'pki'}",
                # Only loopback: the `kubernetes` Service's endpoints are not reconciled.
                "--endpoint-reconciler-type=none",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.wait_for(
            lambda: self.kubectl("get", "--raw", "/readyz", check=False).strip() == "ok",
            timeout=READY_TIMEOUT,
            what="kube-apiserver /readyz",
        )

    def _grant_agent(self) -> None:
        rules = [
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceslices"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceclaims", "deviceclasses"],
                "verbs": ["get", "list", "watch"],
            },
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        ]
        self.apply(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": AGENT_ROLE},
                    "rules": rules,
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": AGENT_ROLE},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": AGENT_ROLE,
                    },
                    "subjects": [
                        {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "Group",
                            "name": AGENT_GROUP,
                        }
                    ],
                },
            ]
        )

    def _start_controllers(self) -> None:
        kc = f"--kubeconfig={self.kubeconfig}"
        self._spawn(
            "kube-scheduler",
            [
                kc,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={rig.free_port()}",
                "--v=4",
                *self.scheduler_args,
            ],
        )
        self._spawn(
            "kube-controller-manager",
            [
                kc,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={rig.free_port()}",
                f"--service-account-private-key-file={self.dir / 'sa.key'}",
                # Published as the kube-root-ca.crt ConfigMap that every pod's token volume needs.
                f"--root-ca-file={self.dir / 'pki' / 'apiserver.crt'}",
                "--use-service-account-credentials=false",
                # Without a kubelet (node=False) nothing renews a Node's lease.
                "--controllers=*"
                if self.with_node
                else "--controllers=*,-node-lifecycle-controller",
                "--v=2",
            ],
        )
        # The ServiceAccount admission needs `default` in a namespace before a pod goes there.
        self.wait_for(
            lambda: self.get("serviceaccounts", "default", namespace="default"),
            timeout=READY_TIMEOUT,
            what="the default ServiceAccount (kube-controller-manager)",
        )
        self.wait_for(
            lambda: self.get("configmaps", "kube-root-ca.crt", namespace="default"),
            timeout=READY_TIMEOUT,
            what="the kube-root-ca.crt ConfigMap (kube-controller-manager)",
        )

    def _start_node(self) -> None:
        archive = self.image_archive
        if archive is None:
            archive = rig.build_image_archive(self.dir / "busybox-oci.tar")
        self.node = rig.Node(
            self.dir / "node",
            kubernetes_version(),
            archive,
            containerd2=True,
            hcas=self.hcas,
            kubeconfig=self.kubelet_kubeconfig,
        )
        self.node.kubelet.start()
        self.wait_for(self.node_ready, timeout=READY_TIMEOUT, what=f"Node {NODE_NAME} Ready")

    def register_node(self, name: str = NODE_NAME) -> None:
        """A Node object with no kubelet behind it, Ready, for scheduling-only tests (with
        `node=False`: no node lifecycle controller then marks it unreachable)."""
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            }
        )
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "status": {
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
            },
        }
        self.kubectl(
            "apply", "--server-side", "--subresource=status", "-f", "-", input=json.dumps(status)
        )
        # The API server's TaintNodesByCondition admission taints a new Node not-ready; the node
        # lifecycle controller would lift it once Ready, but there is none for this one.
        self.kubectl("taint", "node", name, "node.kubernetes.io/not-ready:NoSchedule-", check=False)

    def node_ready(self) -> bool:
        node = self.get("nodes", NODE_NAME)
        conditions = ((node or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # -- helpers for the tests ----------------------------------------------------------------

    def logs(self, n: int = 1500) -> str:
        parts = [f"== {name}\n{p.tail(n)}" for name, p in self.processes.items()]
        if self.node is not None:
            parts.append(f"== kubelet\n{self.node.kubelet.tail(n)}")
            with contextlib.suppress(OSError):
                parts.append(f"== containerd\n{self.node.containerd.log.read_text()[-n:]}")
        dead = [
            f"{name} exited {p.proc.returncode}"
            for name, p in self.processes.items()
            if p.proc and p.proc.poll() is not None
        ]
        return "\n".join([*dead, *parts])

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """wait_until with a deadline; on failure the error carries every process's log tail."""
        try:
            return wait_until(predicate, timeout=timeout, interval=0.2, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> str:
        """kubectl as the admin (or `kubeconfig`); stdout, or RuntimeError with stderr."""
        res = subprocess.run(
            [KUBECTL, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def apply(self, objs: dict[str, Any] | list[dict[str, Any]], **kw: Any) -> str:
        items = objs if isinstance(objs, list) else [objs]
        doc = {"apiVersion": "v1", "kind": "List", "items": items}
        return self.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc), **kw)

    def create(self, objs: dict[str, Any] | list[dict[str, Any]], **kw: Any) -> str:
        items = objs if isinstance(objs, list) else [objs]
        doc = {"apiVersion": "v1", "kind": "List", "items": items}
        return self.kubectl("create", "-f", "-", input=json.dumps(doc), **kw)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        ns = ["-n", namespace] if namespace else []
        out = self.kubectl(
            "get", resource, name, *ns, "-o", "json", "--ignore-not-found", check=False
        )
        return json.loads(out) if out.strip() else None

    def items(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        ns = ["-n", namespace] if namespace else ["-A"]
        return list(json.loads(self.kubectl("get", resource, *ns, "-o", "json"))["items"])

    def events(self, namespace: str = "default", name: str | None = None) -> list[dict[str, Any]]:
        sel = ["--field-selector", f"involvedObject.name={name}"] if name else []
        return list(
            json.loads(self.kubectl("get", "events", "-n", namespace, *sel, "-o", "json"))["items"]
        )

    def pod(
        self,
        name: str,
        *,
        limits: dict[str, int] | None = None,
        claims: list[dict[str, Any]] | None = None,
        command: str = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
    ) -> dict[str, Any]:
        """A busybox pod for this node's image: `limits` as a device-plugin pod asks, or
        `claims` (pod.spec.resourceClaims entries, each used by the container)."""
        container: dict[str, Any] = {
            "name": "main",
            "image": IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", command],
        }
        if limits:
            container["resources"] = {"limits": {k: str(v) for k, v in limits.items()}}
        spec: dict[str, Any] = {
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        }
        if claims:
            spec["resourceClaims"] = claims
            container.setdefault("resources", {})["claims"] = [{"name": c["name"]} for c in claims]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }


@contextlib.contextmanager
def control_plane(workdir: Path, **kw: Any) -> Iterator[ControlPlane]:
    with ControlPlane(workdir, **kw) as cp:
        yield cp
