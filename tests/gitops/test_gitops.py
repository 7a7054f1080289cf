"""`make gitops-e2e`: a real Argo CD sync of the operator's kinds, end to end.

Argo CD's application-controller and repo-server (one `argocd` binary from hack/build-argocd.sh) run as
local processes against the project's own control plane (ARGOCD_FAKE_IN_CLUSTER, as Argo CD's own
local e2e does), with redis from Debian and Argo CD's CRDs from its Go module. An Application syncs a
local git repository (file://) holding an RbdStorage (wave 0) and RbdImages (wave 1); the operator
converges them in the project's Ceph. Runs in its own test slot (RBD_TEST_SLOT=7).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

os.environ.setdefault("RBD_TEST_SLOT", "7")

import pytest  # noqa: E402
import rados  # noqa: E402
import rbd  # noqa: E402
import yaml  # noqa: E402

from tests.integration import cephcheck  # noqa: E402
from tests.integration.harness import (OPERATOR_NAMESPACE, ROOT, WORK, Operator, sh, start_platform,  # noqa: E402
                                       stop_platform, wait_for)
from tests.integration.manifests import storage  # noqa: E402

PORTS = {"redis": 29779, "repo": 29781, "metrics_repo": 29784, "metrics_ctrl": 29782}
ARGO = WORK / "argocd"
GI = 2**30


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Argo:
    """redis + argocd-repo-server + argocd-application-controller as local processes."""

    def __init__(self, platform) -> None:
        self.platform = platform
        self.bin = Path(sh(str(ROOT / "hack" / "build-argocd.sh"), timeout=5400).stdout.strip())
        self.procs: list[subprocess.Popen] = []

    def kubectl(self, *args: str, input: str | None = None, check: bool = True):
        return self.platform.kubectl(*args, input=input, check=check)

    def start(self) -> None:
        for name, port in PORTS.items():
            assert _free(port), f"port {port} ({name}) is in use"
        shutil.rmtree(ARGO, ignore_errors=True)
        for d in ("tls", "ssh", "gpg/keys", "gpg/source", "tmp"):
            (ARGO / d).mkdir(parents=True, exist_ok=True)
        module = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", "github.com/argoproj/argo-cd/v3"],
                                cwd=ROOT / "hack" / "argocd", capture_output=True, text=True, check=True,
                                env={**os.environ, "GOTOOLCHAIN": "go1.27.4", "GOFLAGS": "-mod=mod"}).stdout.strip()
        self.kubectl("apply", "--server-side", "-f", f"{module}/manifests/crds/application-crd.yaml",
                     "-f", f"{module}/manifests/crds/appproject-crd.yaml")
        wait_for(lambda: self.kubectl("wait", "--for=condition=Established", "crd/applications.argoproj.io",
                                      "crd/appprojects.argoproj.io", "--timeout=10s", check=False).returncode == 0,
                 60, interval=1, what="Argo CD's CRDs established")
        self.kubectl("create", "namespace", "argocd", check=False)
        cm = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm.yaml").read_text())
        cm["metadata"]["namespace"] = "argocd"
        cm["data"]["timeout.reconciliation"] = "10s"
        self.apply(cm)
        self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "argocd-secret", "namespace": "argocd",
                    "labels": {"app.kubernetes.io/part-of": "argocd"}},
                    "stringData": {"server.secretkey": os.urandom(16).hex()}})
        self.apply({"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
                    "metadata": {"name": "storage", "namespace": "argocd"},
                    "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                             "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}})
        # The repo-server runs the helper scripts Argo CD's image puts on PATH (git-verify-wrapper.sh,
        # gpg-wrapper.sh): taken from the same module, at run time, into our work dir.
        (ARGO / "bin").mkdir(exist_ok=True)
        for script in ("git-verify-wrapper.sh", "gpg-wrapper.sh"):
            shutil.copy(f"{module}/hack/{script}", ARGO / "bin" / script)
            (ARGO / "bin" / script).chmod(0o755)
        env = {**os.environ, "PATH": f"{ARGO / 'bin'}:{os.environ['PATH']}", "ARGOCD_FAKE_IN_CLUSTER": "true", "KUBECONFIG": str(self.platform.kubeconfig),
               "ARGOCD_TLS_DATA_PATH": str(ARGO / "tls"), "ARGOCD_SSH_DATA_PATH": str(ARGO / "ssh"),
               "ARGOCD_GNUPGHOME": str(ARGO / "gpg/keys"), "ARGOCD_GPG_DATA_PATH": str(ARGO / "gpg/source"),
               "ARGOCD_GPG_ENABLED": "false", "TMPDIR": str(ARGO / "tmp"), "HOME": str(ARGO),
               "ARGOCD_EXEC_TIMEOUT": "60s", "ARGOCD_NAMESPACE": "argocd"}
        self._spawn("redis", ["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], env)
        self._spawn("repo-server", [str(self.bin / "argocd-repo-server"), "--port", str(PORTS["repo"]),
                                    "--metrics-port", str(PORTS["metrics_repo"]),
                                    "--redis", f"127.0.0.1:{PORTS['redis']}", "--loglevel", "info",
                                    "--revision-cache-expiration", "5s"], env)
        self._spawn("application-controller", [
            str(self.bin / "argocd-application-controller"), "--namespace", "argocd",
            "--kubeconfig", str(self.platform.kubeconfig), "--redis", f"127.0.0.1:{PORTS['redis']}",
            "--repo-server", f"127.0.0.1:{PORTS['repo']}", "--persist-resource-health",
            "--metrics-port", str(PORTS["metrics_ctrl"]), "--app-resync", "10", "--loglevel", "info",
            "--status-processors", "2", "--operation-processors", "2"], env)

    def _spawn(self, name: str, argv: list[str], env: dict) -> None:
        log = open(ARGO / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ARGO,
                                           start_new_session=True))

    def apply(self, obj: dict) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def app(self, name: str) -> dict:
        return self.platform.get("application", name, "argocd") or {}

    def log(self, name: str) -> str:
        return (ARGO / f"{name}.log").read_text(errors="replace")


class Repo:
    """A local git repository Argo CD syncs from (file://)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", *args],
                              cwd=self.path, capture_output=True, text=True, check=True).stdout

    def commit(self, files: dict[str, dict | None], message: str) -> str:
        for name, obj in files.items():
            target = self.path / name
            if obj is None:
                target.unlink(missing_ok=True)
            else:
                target.write_text(yaml.safe_dump(obj))
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def env():
    platform = start_platform()
    operator = Operator(platform, resync_seconds=10)
    argo = Argo(platform)
    ceph = rados.Rados(conffile=str(platform.ceph_conf), conf={"client_mount_timeout": "15"})
    try:
        operator.start()
        argo.start()
        ceph.connect(timeout=15)
        yield platform, operator, argo, ceph
    finally:
        argo.stop()
        operator.stop()
        try:
            ceph.shutdown()
        except Exception:  # noqa: BLE001
            pass
        stop_platform(platform)


def wave(obj: dict, n: int) -> dict:
    obj["metadata"].setdefault("annotations", {})["argocd.argoproj.io/sync-wave"] = str(n)
    return obj


def image(name: str, store: str, size: str) -> dict:
    return {"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdImage",
            "metadata": {"name": name, "namespace": "vms"}, "spec": {"storage": store, "size": size}}


def image_size(ceph, pool: str, name: str) -> int | None:
    with ceph.open_ioctx(pool) as ioctx:
        try:
            with rbd.Image(ioctx, name, read_only=True) as img:
                return img.size()
        except rbd.ImageNotFound:
            return None


def health(app: dict) -> tuple[str, str]:
    status = app.get("status") or {}
    return (status.get("sync") or {}).get("status", ""), (status.get("health") or {}).get("status", "")


def test_sync_waves_health_updates_refusals_and_prune(env):
    platform, operator, argo, ceph = env
    repo = Repo(WORK / "gitops-repo")
    store = "gitops"
    files = {
        "00-namespace.yaml": wave({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "vms"}}, 0),
        "01-storage.yaml": wave(storage(platform, store, pool={"pgNum": 8}, client={"name": store},
                                        deletionPolicy="Retain"), 0),
        "02-disk.yaml": wave(image("disk0", store, "1Gi"), 1),
        "03-disk.yaml": wave(image("disk1", store, "1Gi"), 1),
    }
    repo.commit(files, "storage and two disks")
    argo.apply({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                "metadata": {"name": "storage", "namespace": "argocd"},
                "spec": {"project": "storage",
                         "source": {"repoURL": f"file://{repo.path}", "path": ".", "targetRevision": "main"},
                         "destination": {"server": "https://kubernetes.default.svc"},
                         "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}})

    # Synced + Healthy once the operator converged (the storage's wave before the images').
    wait_for(lambda: health(argo.app("storage")) == ("Synced", "Healthy"), 420, interval=2,
             what=f"Synced+Healthy (controller log tail: {argo.log('application-controller')[-800:]!r})")
    assert image_size(ceph, store, "disk0") == GI
    resources = {r["name"]: r for r in argo.app("storage")["status"]["resources"]}
    assert resources[store]["health"]["status"] == "Healthy"
    storage_ready = platform.condition("rbds", store)["lastTransitionTime"]
    disk_created = platform.get("rbdimg", "disk0", "vms")["metadata"]["creationTimestamp"]
    assert storage_ready <= disk_created, "wave 1 (images) was applied after wave 0 was healthy"

    # A commit that grows an image is synced and the image grows in Ceph.
    repo.commit({"02-disk.yaml": wave(image("disk0", store, "2Gi"), 1)}, "grow disk0")
    wait_for(lambda: image_size(ceph, store, "disk0") == 2 * GI, 180, interval=2, what="disk0 grown in Ceph")
    wait_for(lambda: health(argo.app("storage")) == ("Synced", "Healthy"), 180, interval=2, what="healthy again")

    # A commit the API server accepts but the operator refuses: Degraded with the operator's message.
    repo.commit({"02-disk.yaml": wave(image("disk0", store, "1Gi"), 1)}, "shrink disk0 (refused)")
    wait_for(lambda: health(argo.app("storage"))[1] == "Degraded", 180, interval=2, what="Degraded")
    resources = {r["name"]: r for r in argo.app("storage")["status"]["resources"]}
    assert resources["disk0"]["health"]["status"] == "Degraded"
    assert "ShrinkNotAllowed" in resources["disk0"]["health"]["message"]
    assert "allowShrink" in resources["disk0"]["health"]["message"]
    assert image_size(ceph, store, "disk0") == 2 * GI
    repo.commit({"02-disk.yaml": wave(image("disk0", store, "2Gi"), 1)}, "back to 2Gi")
    wait_for(lambda: health(argo.app("storage")) == ("Synced", "Healthy"), 180, interval=2, what="healthy again")

    # Removing the images and the storage (deletionPolicy Retain) from git: pruned objects, the pool stays.
    repo.commit({"01-storage.yaml": None, "02-disk.yaml": None, "03-disk.yaml": None}, "drop the storage")
    wait_for(lambda: platform.get("rbds", store) is None, 240, interval=2, what="the storage pruned")
    wait_for(lambda: platform.get("rbdimg", "disk0", "vms") is None, 60, interval=2, what="the images pruned")
    assert cephcheck.pool(ceph, store) is not None, "deletionPolicy Retain keeps the pool"
    assert operator.proc.poll() is None
