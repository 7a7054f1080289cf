"""`make e2e`: the operator as users run it — its image in a kind cluster, applied with
`kubectl apply -k deploy/`, two replicas under deploy/'s RBAC — against the project's Ceph
micro-cluster and a test hypervisor on this machine (slot 8: bridge rbdop8, 10.254.8.0/24).

Writes .e2e/results.json: image, image_bytes, passed, failed, forbidden_requests, takeover_s,
cold_build_s, helm_upgrade {from, to, passed} (test_helm_upgrade.py, which runs first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("RBD_TEST_SLOT", "8")
sys.path.insert(0, str(ROOT))

from tests.integration import harness  # noqa: E402
from tests.integration.harness import sh, wait_for  # noqa: E402

CLUSTER = "rbdop-e2e"
WORK = ROOT / ".cache" / "e2e"
RESULTS = ROOT / ".e2e" / "results.json"
DOCKER = str(ROOT / "hack" / "docker.sh")
NAMESPACE = "rbd-operator"


def version() -> str:
    import tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


IMAGE = f"rbd-operator:{version()}"
_results: dict = {"image": IMAGE, "passed": 0, "failed": 0}


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return sh(DOCKER, "cli", *args, check=check, timeout=timeout)


def record(**values) -> None:
    _results.update(values)


def pytest_collection_modifyitems(session, config, items):
    # The upgrade from the previous release (test_helm_upgrade.py) installs that release into a cluster
    # nothing was installed in yet: it runs first; the rest then applies deploy/ over its result.
    items.sort(key=lambda item: 0 if item.fspath.basename == "test_helm_upgrade.py" else 1)


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.passed:
            _results["passed"] += 1
        elif report.failed or (report.when == "setup" and report.outcome == "failed"):
            _results["failed"] += 1


def pytest_sessionfinish(session, exitstatus):
    RESULTS.parent.mkdir(exist_ok=True)
    # This run's build (hack/kind/prepare.sh). When it started from nothing (empty Go build cache, no node
    # image) it is the cold figure, kept for later runs on this machine; otherwise the last cold figure
    # measured here, else the one recorded in hack/kind/cold-build.json — with its source named.
    build, cold = ROOT / ".e2e" / "build.json", ROOT / ".cache" / "kind" / "cold-build.json"
    if build.exists():
        done = json.loads(build.read_text())
        _results["build_s"] = done["build_s"]
        if done.get("cold"):
            cold.parent.mkdir(parents=True, exist_ok=True)
            cold.write_text(json.dumps({"cold_build_s": done["build_s"], "measured": "this machine"}) + "\n")
    source = cold if cold.exists() else ROOT / "hack" / "kind" / "cold-build.json"
    record_ = json.loads(source.read_text())
    _results["cold_build_s"] = record_["cold_build_s"]
    _results["cold_build_source"] = f"{source.relative_to(ROOT)}: {record_.get('measured', '')}".strip()
    RESULTS.write_text(json.dumps(_results, indent=2) + "\n")
    print(f"\ne2e results: {json.dumps(_results)}")


class Kind:
    def __init__(self, kubeconfig: Path, kind: str, bin_dir: Path) -> None:
        self.kubeconfig, self.kind, self.bin_dir = kubeconfig, kind, bin_dir

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return sh(str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args, input=input, check=check)

    def node_exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return docker("exec", f"{CLUSTER}-control-plane", *args, check=check)

    def pods(self) -> list[dict]:
        out = self.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=rbd-operator", "-o", "json")
        return json.loads(out.stdout)["items"]

    def logs(self, pod: str, previous: bool = False) -> str:
        args = ["logs", "-n", NAMESPACE, pod] + (["--previous"] if previous else [])
        return self.kubectl(*args, check=False).stdout


@pytest.fixture(scope="session")
def kind_cluster():
    """kind (from its Go module) with a node image built here (or KIND_NODE_IMAGE), the operator's
    image loaded, and deploy/ applied."""
    sh(DOCKER, "up", timeout=300)
    kind = sh(str(ROOT / "hack" / "kind" / "build-kind.sh"), timeout=1800).stdout.strip().splitlines()[-1]
    # kubectl of the node's own Kubernetes release (hack/kind/node), not of hack/kube's newer one
    bin_dir = Path(sh(str(ROOT / "hack" / "kind" / "build-node-bins.sh"), timeout=3600).stdout.strip().splitlines()[-1])
    node_image = os.environ.get("KIND_NODE_IMAGE") or \
        sh(str(ROOT / "hack" / "kind" / "build-node-image.sh"), timeout=3600).stdout.strip().splitlines()[-1]
    record(image_bytes=int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip()),
           node_image=node_image)
    WORK.mkdir(parents=True, exist_ok=True)
    kubeconfig = WORK / "kubeconfig"
    config = WORK / "kind.yaml"
    # Our node image brings a bridge CNI (kindnet is a registry image); a published one brings kindnet.
    cni = "" if os.environ.get("KIND_NODE_IMAGE") else "disableDefaultCNI: true, "
    config.write_text(
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n"
        f"networking: {{{cni}podSubnet: 10.244.0.0/16, apiServerAddress: 127.0.0.1}}\n"
        "nodes: [{role: control-plane}]\n")
    env = {"KUBECONFIG": str(kubeconfig), **docker_env()}
    sh(kind, "delete", "cluster", "--name", CLUSTER, env=env, check=False, timeout=300)
    started = time.monotonic()
    sh(kind, "create", "cluster", "--name", CLUSTER, "--image", node_image, "--config", str(config),
       "--kubeconfig", str(kubeconfig), "--retain", env=env, timeout=900)
    record(cluster_create_s=round(time.monotonic() - started, 1))
    cluster = Kind(kubeconfig, kind, bin_dir)
    try:
        wait_for(lambda: "True" in cluster.kubectl(
            "get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").stdout,
            300, interval=2, what="kind node Ready")
        sh(kind, "load", "docker-image", IMAGE, "--name", CLUSTER, env=env, timeout=600)
        yield cluster
    finally:
        if os.environ.get("E2E_KEEP") != "1":
            sh(kind, "delete", "cluster", "--name", CLUSTER, env=env, check=False, timeout=300)


def docker_env() -> dict[str, str]:
    out = sh(DOCKER, "env").stdout
    return dict(line.split("=", 1) for line in out.split() if "=" in line)


@pytest.fixture(scope="session")
def platform(kind_cluster):
    """Ceph (slot 8) with its admin Secret in the kind cluster; the cluster itself is kind's."""
    os.environ["RBD_TEST_USE_EXISTING_CLUSTER"] = "1"
    os.environ["KUBECONFIG"] = str(kind_cluster.kubeconfig)
    p = harness.start_platform()
    try:
        yield p
    finally:
        harness.stop_platform(p)


@pytest.fixture(scope="session")
def deployed(kind_cluster, platform):
    """`kubectl apply -k deploy/` and both replicas running."""
    kind_cluster.kubectl("apply", "-k", str(ROOT / "deploy"))
    kind_cluster.kubectl("rollout", "status", "-n", NAMESPACE, "deploy/rbd-operator", "--timeout=300s")
    yield kind_cluster
    forbidden = 0
    for pod in kind_cluster.pods():
        name = pod["metadata"]["name"]
        for text in (kind_cluster.logs(name), kind_cluster.logs(name, previous=True)):
            forbidden += sum(1 for line in text.splitlines() if " 403" in line or "Forbidden" in line
                             or '"status": 403' in line)
    record(forbidden_requests=forbidden)
