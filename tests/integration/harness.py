"""The real platform for integration tests: control plane, Ceph, the operator process.

Everything is started by the project's own scripts (hack/), once per test
session. RBD_TEST_USE_EXISTING_CLUSTER=1 targets the cluster in $KUBECONFIG
instead of starting one (like envtest's USE_EXISTING_CLUSTER); RBD_TEST_CEPH_DIR
points at a running Ceph (a directory with ceph.conf and the admin keyring).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".cache" / ("test" if int(os.environ.get("RBD_TEST_SLOT", "1")) == 1
                          else f"test-slot{os.environ['RBD_TEST_SLOT']}")
# RBD_TEST_SLOT (1-9, default 1) picks a bridge, subnet, port set and test-host prefix, so that
# several checkouts can run their integration tests on one machine at once (slot 0 is the sandbox).
SLOT = int(os.environ.get("RBD_TEST_SLOT", "1"))
assert 1 <= SLOT <= 9, "RBD_TEST_SLOT must be 1..9"
NET = f"10.254.{SLOT}"
BRIDGE, CEPH_ADDR = f"rbdop{SLOT}", f"{NET}.1"
HOST_PREFIX = "t-" if SLOT == 1 else f"t{SLOT}-"
# Ports apart from the sandbox (3300/6789) so both can run at once.
CEPH_ENV = {"CEPH_ADDR": CEPH_ADDR, "CEPH_MON_PORT_V2": str(3300 + 10 * SLOT), "CEPH_MON_PORT_V1": str(6790 if SLOT == 1 else 6770 + SLOT)}
_BASE = 1000 * (SLOT - 1)
TEST_PORTS = {"KUBE_API_PORT": str(26443 + _BASE), "ETCD_CLIENT_PORT": str(22379 + _BASE),
              "ETCD_PEER_PORT": str(22380 + _BASE), "KCM_PORT": str(30257 + _BASE)}
OPERATOR_NAMESPACE = "rbd-operator"
LIVENESS_PORT = 18080 + SLOT - 1
METRICS_PORT = 19090 + SLOT - 1


def sh(*args: str, env: dict | None = None, input: str | None = None, check: bool = True,
       timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env={**os.environ, **(env or {})}, input=input, capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last failure
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Platform:
    kubeconfig: Path
    ceph_dir: Path
    bin_dir: Path
    started: list[str] = field(default_factory=list)
    operator_kubeconfig: Path | None = None  # the operator's ServiceAccount (deploy/rbac.yaml)

    @property
    def ceph_conf(self) -> Path:
        return self.ceph_dir / "ceph.conf"

    @property
    def monitors(self) -> list[str]:
        conf = self.ceph_conf.read_text()
        for line in conf.splitlines():
            key, _, value = line.partition("=")
            if key.strip().replace(" ", "_") == "mon_host":
                # [v2:ip:3300,v1:ip:6789] -> ["v2:ip:3300"]
                first = value.strip().strip("[]").split(",")[0]
                return [first.split()[0]]
        raise AssertionError("no mon_host in ceph.conf")

    def ceph_cli(self, *args: str, check: bool = True) -> str:
        """The ceph CLI as an administrator uses it by hand (brownfield setups, drift)."""
        return sh("ceph", "-c", str(self.ceph_conf), *args, check=check).stdout

    def rbd_cli(self, *args: str, check: bool = True) -> str:
        return sh("rbd", "-c", str(self.ceph_conf), *args, check=check).stdout

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return sh(str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args, input=input, check=check)

    def apply(self, manifest: dict | str, check: bool = True) -> subprocess.CompletedProcess:
        # JSON, not yaml.safe_dump: PyYAML writes a string such as "12e345" (a `uniq` suffix) unquoted, and
        # kubectl's YAML reads it back as a number ("cannot unmarshal number into ... labels of type string").
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", input=text, check=check)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        result = self.kubectl(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)

    def delete(self, kind: str, name: str, namespace: str | None = None, wait: bool = False) -> None:
        args = ["delete", kind, name, "--ignore-not-found", f"--wait={'true' if wait else 'false'}"]
        self.kubectl(*args + (["-n", namespace] if namespace else []))

    def condition(self, kind: str, name: str, type_: str = "Ready", namespace: str | None = None) -> dict | None:
        obj = self.get(kind, name, namespace) or {}
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None

    def wait_condition(self, kind: str, name: str, status: str, reason: str | None = None,
                       namespace: str | None = None, type_: str = "Ready", timeout: float = 90) -> dict:
        def check() -> dict | None:
            cond = self.condition(kind, name, type_, namespace)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
                return cond
            return None
        return wait_for(check, timeout, what=f"{kind}/{name} {type_}={status} {reason or ''}")

    def events(self, name: str, namespace: str = "default") -> list[dict]:
        out = self.kubectl("get", "events", "-n", namespace, "-o", "json",
                           "--field-selector", f"involvedObject.name={name}")
        return json.loads(out.stdout)["items"]


def start_platform() -> Platform:
    bin_dir = Path(sh(str(ROOT / "hack" / "build-kube.sh")).stdout.strip())
    WORK.mkdir(parents=True, exist_ok=True)
    started = []
    if os.environ.get("RBD_TEST_USE_EXISTING_CLUSTER") == "1":
        kubeconfig = Path(os.environ["KUBECONFIG"])
    else:
        sh(str(ROOT / "hack" / "kube.sh"), "up", str(WORK / "kube"), env=TEST_PORTS)
        started.append("kube")
        kubeconfig = WORK / "kube" / "kubeconfig"
    if os.environ.get("RBD_TEST_CEPH_DIR"):
        ceph_dir = Path(os.environ["RBD_TEST_CEPH_DIR"])
    else:
        sh(str(ROOT / "hack" / "net.sh"), "up", BRIDGE, f"{CEPH_ADDR}/24")
        sh(str(ROOT / "hack" / "ceph.sh"), "up", str(WORK / "ceph"), env=CEPH_ENV)
        started.append("ceph")
        ceph_dir = WORK / "ceph"
    platform = Platform(kubeconfig, ceph_dir, bin_dir, started)
    # One try: bootstrap waits for what it needs itself (bounded) and fails with the API server's answer.
    sh(str(ROOT / "hack" / "bootstrap.sh"), str(kubeconfig), str(ceph_dir), OPERATOR_NAMESPACE,
       env={"KUBECTL": str(bin_dir / "kubectl")})
    platform.operator_kubeconfig = service_account_kubeconfig(platform)
    return platform


def service_account_kubeconfig(platform: Platform) -> Path:
    """A kubeconfig for the operator's own ServiceAccount, with deploy/'s RBAC and nothing more.

    The token comes from the real API server's TokenRequest (`kubectl create token`), so every test
    proves the operator works under the permissions users install.
    """
    platform.kubectl("apply", "-f", str(ROOT / "deploy" / "namespace.yaml"))
    platform.kubectl("apply", "-n", OPERATOR_NAMESPACE, "-f", str(ROOT / "deploy" / "rbac.yaml"))
    token = platform.kubectl("create", "token", "rbd-operator", "-n", OPERATOR_NAMESPACE,
                             "--duration", "48h").stdout.strip()
    admin = yaml.safe_load(platform.kubeconfig.read_text())
    context = {c["name"]: c["context"] for c in admin["contexts"]}[admin["current-context"]]
    cluster = {c["name"]: c["cluster"] for c in admin["clusters"]}[context["cluster"]]
    path = WORK / "operator.kubeconfig"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "rbd-operator", "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "rbd-operator"}}],
        }, fh)
    return path


def stop_platform(platform: Platform) -> None:
    if "ceph" in platform.started:
        sh(str(ROOT / "hack" / "ceph.sh"), "down", str(WORK / "ceph"), env=CEPH_ENV, check=False)
        sh(str(ROOT / "hack" / "net.sh"), "down", BRIDGE, check=False)
    if "kube" in platform.started:
        sh(str(ROOT / "hack" / "kube.sh"), "down", str(WORK / "kube"), env=TEST_PORTS, check=False)


class Operator:
    """The operator as a real process, as users run it out of cluster."""

    def __init__(self, platform: Platform, resync_seconds: int = 5, verbose: bool = True, replica: int = 0,
                 peering: str | None = None, env: dict[str, str] | None = None) -> None:
        self.platform = platform
        self.resync = resync_seconds
        self.verbose = verbose
        # Replica r of a peered pair: its own log, liveness and metrics ports, identity.
        self.replica, self.peering, self.env = replica, peering, env or {}
        self.log_path = WORK / ("operator.log" if replica == 0 else f"operator-{replica}.log")
        self.liveness_port = LIVENESS_PORT + 100 * replica
        self.metrics_port = METRICS_PORT + 100 * replica
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        # A second start of a running operator would leave the first process running unseen (it keeps the
        # ports; the new one cannot bind them) — a leak that breaks every later test of the slot.
        assert not (self.proc and self.proc.poll() is None), f"operator replica {self.replica} is already running"
        # The used-space sweep looks at an idle storage's object maps once per 300 s in production: tests look at
        # every sweep (they check what is measured, not that cadence: tests/unit/test_used.py does).
        env = {**os.environ, "RBD_OPERATOR_RESYNC_SECONDS": str(self.resync), "RBD_OPERATOR_USED_IDLE_SECONDS": "0",
               **self.env}
        if self.peering:
            env["POD_NAME"] = f"replica-{self.replica}-{self.starts}"
        log = open(self.log_path, "a" if self.starts else "w")  # one log per test session
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "rbd-operator"),
             "--kubeconfig", str(self.platform.operator_kubeconfig),
             "--namespace", OPERATOR_NAMESPACE, "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz",
             "--metrics", f"127.0.0.1:{self.metrics_port}", "--log-format", "full"]
            + (["--verbose"] if self.verbose else []) + (["--peering", self.peering] if self.peering else []),
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        self.starts += 1

        def live() -> bool:
            assert self.proc and self.proc.poll() is None, f"operator exited:\n{self.log_tail()}"
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as resp:
                return resp.status == 200
        wait_for(live, 60, what="operator liveness")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def refusals(self) -> list[str]:
        """Lines of its log where the API server refused it (403) — RBAC refusals; a 403 for a namespace being
        deleted is the API server's NamespaceTerminating, not RBAC, and is left out."""
        return [line for line in self.log_text().splitlines()
                if (" 403" in line or "Forbidden" in line) and "NamespaceTerminating" not in line]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def teardown_slot() -> None:
    """Stop whatever a run of this slot left behind (an interrupted pytest skips its fixtures):
    `RBD_TEST_SLOT=N python -m tests.integration.harness`."""
    sh("pkill", "-f", f"rbd-operator --kubeconfig {WORK}/operator.kubeconfig", check=False)
    sh("pkill", "-f", f"bin/argocd.*{TEST_PORTS['KUBE_API_PORT']}", check=False)
    for run in (ROOT / ".cache" / "testhosts" / "run").glob(f"{HOST_PREFIX}*"):
        sh(str(ROOT / "hack" / "testhosts" / "testhost.sh"), "down", run.name, check=False)
    sh(str(ROOT / "hack" / "kube.sh"), "down", str(WORK / "kube"), env=TEST_PORTS, check=False)
    sh(str(ROOT / "hack" / "ceph.sh"), "down", str(WORK / "ceph"), env=CEPH_ENV, check=False)
    sh(str(ROOT / "hack" / "net.sh"), "down", BRIDGE, check=False)


if __name__ == "__main__":
    teardown_slot()
