"""The in-cluster operator (two replicas from deploy/) does its job; RBAC is exactly the README's."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest
import rados
import rbd

from tests.integration.harness import BRIDGE, HOST_PREFIX, NET, ROOT, sh, wait_for
from tests.integration.labhosts import LABEL, TESTHOST, LabHost, debian_packages, hypervisor, ssh_secret
from tests.integration.manifests import image, storage

from .conftest import NAMESPACE, record

GI = 2**30
SA = f"system:serviceaccount:{NAMESPACE}:rbd-operator"


@pytest.fixture(scope="module")
def ceph(platform):
    cluster = rados.Rados(conffile=str(platform.ceph_conf), conf={"client_mount_timeout": "15"})
    cluster.connect(timeout=15)
    yield cluster
    cluster.shutdown()


def ready(cluster, kind: str, name: str, namespace: str | None = None) -> dict | None:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    out = cluster.kubectl(*args, check=False)
    if out.returncode:
        return None
    obj = json.loads(out.stdout)
    for cond in (obj.get("status") or {}).get("conditions", []):
        if cond["type"] == "Ready" and cond["status"] == "True":
            return obj
    return None


def apply(cluster, manifest: dict) -> None:
    import yaml
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def active_pod(cluster) -> tuple[str, str]:
    """(active, standby) pod names, from kopf's peering log lines (JSON log format)."""
    state = {}
    for pod in cluster.pods():
        name = pod["metadata"]["name"]
        text = cluster.logs(name)
        resumed, paused = text.rfind("Resuming operations"), text.rfind("Pausing operations")
        state[name] = resumed >= 0 and resumed > paused
    active = [n for n, a in state.items() if a]
    standby = [n for n, a in state.items() if not a]
    assert len(active) == 1 and len(standby) == 1, state
    return active[0], standby[0]


def test_cluster_system_pods_run(deployed):
    """Every kube-system pod (control plane, etcd, kube-proxy, CoreDNS) runs from the node's own images."""
    def running() -> bool:
        pods = json.loads(deployed.kubectl("get", "pods", "-n", "kube-system", "-o", "json").stdout)["items"]
        return pods and all(p["status"].get("phase") == "Running" for p in pods) and \
            any(p["metadata"]["name"].startswith("coredns-") for p in pods)
    wait_for(running, 180, interval=2, what="kube-system pods Running")


def test_two_replicas_one_active(deployed):
    wait_for(lambda: len(deployed.pods()) == 2 and all(p["status"].get("phase") == "Running" for p in deployed.pods()),
             180, what="two operator pods Running")
    wait_for(lambda: active_pod(deployed), 60, what="one active replica, one standby")
    for pod in deployed.pods():
        spec = pod["spec"]["containers"][0]
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532


def test_storage_and_image(deployed, platform, ceph):
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    apply(deployed, storage(platform, name, client={"name": name}))
    wait_for(lambda: ready(deployed, "rbds", name), 180, what="RbdStorage Ready")
    status = ready(deployed, "rbds", name)["status"]
    secret = json.loads(deployed.kubectl("get", "secret", "-n", NAMESPACE, status["clientSecretRef"]["name"],
                                         "-o", "json").stdout)
    assert {"userID", "userKey"} <= set(secret["data"]), sorted(secret["data"])
    assert status["monitors"] and status["fsid"]

    disk = f"{name}-disk"
    apply(deployed, image(disk, name, size="1Gi"))
    wait_for(lambda: ready(deployed, "rbdimg", disk, "default"), 120, what="RbdImage Ready")
    with ceph.open_ioctx(name) as ioctx, rbd.Image(ioctx, disk, read_only=True) as img:
        assert img.size() == GI
    apply(deployed, image(disk, name, size="2Gi"))

    def grown() -> bool:
        with ceph.open_ioctx(name) as ioctx, rbd.Image(ioctx, disk, read_only=True) as img:
            return img.size() == 2 * GI
    wait_for(grown, 60, what="image grown")
    deployed.kubectl("delete", "rbdimg", disk, "-n", "default", "--wait=false")

    def trashed() -> bool:
        with ceph.open_ioctx(name) as ioctx:
            return disk not in rbd.RBD().list(ioctx) and any(e["name"] == disk for e in rbd.RBD().trash_list(ioctx))
    wait_for(trashed, 120, what="image moved to the trash")
    wait_for(lambda: deployed.kubectl("get", "rbdimg", disk, "-n", "default", check=False).returncode != 0, 60,
             what="RbdImage gone")


def test_hypervisor_converges(deployed, platform):
    host = LabHost(f"{HOST_PREFIX}h1", f"{NET}.11", "debian")
    sh(TESTHOST, "prepare", timeout=1800)
    sh(TESTHOST, "up", host.name, BRIDGE, f"{host.address}/24", "debian", env={"TESTHOST_NO_REPO": "1"}, timeout=900)
    try:
        apply(deployed, ssh_secret(host))
        name = f"e2eh-{uuid.uuid4().hex[:6]}"
        apply(deployed, storage(platform, name, client={"name": name},
                                hypervisors={"nodeSelector": {"matchLabels": {LABEL: name}}}))
        apply(deployed, hypervisor(host, {LABEL: name}, packages=debian_packages()))
        wait_for(lambda: ready(deployed, "hvn", host.name), 900, interval=3, what="HypervisorNode Ready")
        wait_for(lambda: (ready(deployed, "rbds", name) or {}).get("status", {}).get("hosts", {}).get("current") == 1,
                 60, what="the storage counts the host as current")
        assert host.ok(f"test -s /etc/ceph/ceph.client.{name}.keyring")
        deployed.kubectl("delete", "hvn", host.name, "--wait=true", "--timeout=120s")
        deployed.kubectl("delete", "rbds", name, "--wait=false")
    finally:
        sh(TESTHOST, "down", host.name, check=False)
        sh(TESTHOST, "repo-down", check=False)


def test_metrics_scraped(deployed):
    active, _ = active_pod(deployed)
    text = deployed.kubectl("get", "--raw",
                            f"/api/v1/namespaces/{NAMESPACE}/pods/{active}:9090/proxy/metrics").stdout
    assert re.search(r'rbd_operator_reconciles_total\{kind="RbdStorage",reason="[A-Za-z]+"\} [1-9]', text), text[:2000]
    assert "rbd_operator_ceph_call_seconds_bucket" in text
    assert "rbd_operator_pool_stored_bytes" in text
    svc = deployed.kubectl("get", "--raw",
                           f"/api/v1/namespaces/{NAMESPACE}/services/rbd-operator-metrics:metrics/proxy/metrics",
                           check=False)
    record(metrics_via_service=svc.returncode == 0)


def test_takeover_when_the_active_pod_dies(deployed, platform, ceph):
    """SIGKILL the active replica's process in the middle of a burst; the standby takes over."""
    name = f"e2ek-{uuid.uuid4().hex[:6]}"
    apply(deployed, storage(platform, name, client={"name": name}))
    wait_for(lambda: ready(deployed, "rbds", name), 180, what="RbdStorage Ready")
    active, standby = active_pod(deployed)
    uid = json.loads(deployed.kubectl("get", "pod", "-n", NAMESPACE, active, "-o", "json").stdout)["metadata"]["uid"]
    n = 30
    apply(deployed, {"apiVersion": "v1", "kind": "List",
                     "items": [image(f"{name}-{i}", name, size="1Gi") for i in range(n)]})

    def started() -> bool:
        with ceph.open_ioctx(name) as ioctx:
            return bool(rbd.RBD().list(ioctx))
    wait_for(started, 60, interval=0.05, what="work under way")
    # The pod's processes are visible from the node; its cgroup names the pod's uid.
    script = (f"for p in $(pgrep -f 'rbd-operator|rbd_operator'); do "
              f"grep -q 'pod{uid.replace('-', '_')}' /proc/$p/cgroup 2>/dev/null && kill -9 $p && echo $p; done; true")
    killed_at = time.monotonic()
    out = deployed.node_exec("sh", "-c", script).stdout.split()
    assert out, "found no process of the active pod to kill"

    def resumed() -> bool:
        text = deployed.logs(standby)
        return text.rfind("Resuming operations") > text.rfind("Pausing operations") >= -1 and \
            "Resuming operations" in text
    wait_for(resumed, 120, interval=0.2, what="standby resumed")
    takeover = time.monotonic() - killed_at
    record(takeover_s=round(takeover, 1))

    def all_ready() -> bool:
        items = json.loads(deployed.kubectl("get", "rbdimg", "-n", "default", "-o", "json").stdout)["items"]
        mine = [i for i in items if i["metadata"]["name"].startswith(f"{name}-")]
        return len(mine) == n and all(any(c["type"] == "Ready" and c["status"] == "True"
                                          for c in (i.get("status") or {}).get("conditions", [])) for i in mine)
    wait_for(all_ready, 240, interval=1, what="every image Ready after the takeover")
    record(converged_after_kill_s=round(time.monotonic() - killed_at, 1))
    expected = sorted(f"{name}-{i}" for i in range(n))

    def listed() -> list[str]:
        with ceph.open_ioctx(name) as ioctx:
            return sorted(rbd.RBD().list(ioctx))
    probes = re.compile(r"rbdop-probe-[0-9a-f]{12}(-moved)?")
    assert [i for i in listed() if not probes.fullmatch(i)] == expected, "created twice or left over"
    # A kill inside the fast-path probe leaves its probe image, open: the dead client's watch lasts until the
    # OSDs time it out (30 s); the new process looks again 35 s after its first look, at the next call into
    # the pool (at the latest the storage's 60-s resync). CI once killed the pod there.
    wait_for(lambda: listed() == expected, 180, interval=2, what="no probe image left in the tenant's pool")
    record(pool_clean_after_kill_s=round(time.monotonic() - killed_at, 1))
    assert takeover <= 30, f"takeover {takeover:.1f}s (goal 30)"
    # The killed container restarts as the standby: it must not preempt the working replica.
    time.sleep(10)
    assert active_pod(deployed)[0] == standby
    for i in range(n):
        deployed.kubectl("delete", "rbdimg", f"{name}-{i}", "-n", "default", "--wait=false")


def _readme_permissions() -> set[tuple[str, str]]:
    """(resource.group, verb) pairs of the README's permission table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Permissions", 1)[1].split("\n## ", 1)[0]
    pairs = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] in ("scope", "---") or set(cells[0]) <= {"-"}:
            continue
        groups = [g.strip().strip('"') for g in cells[1].split(",")]
        resources = [r.strip() for r in cells[2].split(",")]
        verbs = [v.strip() for v in cells[3].split(",")]
        for g in groups:
            for r in resources:
                for v in verbs:
                    # kubectl prints a subresource after the group: rbdimages.rbd-operator.io/status
                    base, _, sub = r.partition("/")
                    pairs.add(((f"{base}.{g}" if g else base) + (f"/{sub}" if sub else ""), v))
    return pairs


# Granted to every authenticated identity by Kubernetes' default roles (system:basic-user,
# system:discovery, system:public-info-viewer): not part of deploy/'s RBAC.
DEFAULT_FOR_EVERYONE = {"selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
                        "selfsubjectrulesreviews.authorization.k8s.io"}


def test_rbac_matches_readme_exactly(deployed):
    out = deployed.kubectl("auth", "can-i", "--list", f"--as={SA}", "-n", NAMESPACE).stdout
    granted = set()
    for line in out.splitlines()[1:]:
        match = re.match(r"^(\S+)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$", line)
        if not match:
            continue
        resource, _urls, names, verbs = match.groups()
        if resource in DEFAULT_FOR_EVERYONE or names:
            continue
        for verb in verbs.split():
            granted.add((resource, verb))
    documented = _readme_permissions()
    assert granted == documented, (f"granted, not in the README: {sorted(granted - documented)}; "
                                   f"in the README, not granted: {sorted(documented - granted)}")


# -- which replica works; disruptions (deploy/pdb.yaml) ------------------------------------------------------------


def active_gauges(cluster) -> dict[str, float]:
    """rbd_operator_active of every operator pod, scraped through the API server's pod proxy."""
    out = {}
    for pod in cluster.pods():
        name = pod["metadata"]["name"]
        text = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}:9090/proxy/metrics",
                               check=False).stdout
        match = re.search(r"^rbd_operator_active ([0-9.]+)$", text, re.M)
        out[name] = float(match.group(1)) if match else None
    return out


def both_ready(cluster) -> list[str] | None:
    pods = [p for p in cluster.pods() if not p["metadata"].get("deletionTimestamp")]
    ready = [p["metadata"]["name"] for p in pods
             if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    return sorted(ready) if len(pods) == 2 and len(ready) == 2 else None


def one_active(cluster) -> tuple[str, str] | None:
    """(active, standby) when exactly one pod's gauge is 1 and the other's 0, and kopf's log agrees."""
    gauges = active_gauges(cluster)
    if sorted(gauges.values(), key=lambda v: -1 if v is None else v) != [0, 1]:
        return None
    active = next(n for n, v in gauges.items() if v == 1)
    standby = next(n for n, v in gauges.items() if v == 0)
    try:
        by_log = active_pod(cluster)
    except AssertionError:
        return None
    return (active, standby) if by_log == (active, standby) else None


def test_the_gauge_and_an_event_tell_which_replica_works(deployed):
    wait_for(lambda: both_ready(deployed), 180, what="both replicas Ready (the standby too)")
    active, standby = wait_for(lambda: one_active(deployed), 120, interval=1,
                               what="rbd_operator_active 1 on the working pod (by kopf's log), 0 on the other")
    uid = json.loads(deployed.kubectl("get", "pod", "-n", NAMESPACE, active, "-o", "json").stdout)["metadata"]["uid"]

    def announced():
        out = deployed.kubectl("get", "events", "-n", NAMESPACE, "-o", "json",
                               "--field-selector", f"reason=ActiveReplica,involvedObject.name={active}").stdout
        return [e for e in json.loads(out)["items"] if e["involvedObject"].get("uid") == uid]
    events = wait_for(announced, 60, what=f"an ActiveReplica event on pod {active}")
    assert active in events[-1]["message"]
    described = deployed.kubectl("describe", "pod", "-n", NAMESPACE, active).stdout
    assert "ActiveReplica" in described, "a person sees it in kubectl describe pod"


def evict(cluster, pod: str) -> subprocess.CompletedProcess:
    body = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": NAMESPACE}})
    return cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/eviction", "-f", "-",
                           input=body, check=False)


def budget(cluster) -> dict:
    return json.loads(cluster.kubectl("get", "pdb", "rbd-operator", "-n", NAMESPACE, "-o", "json").stdout)


def test_the_budget_evicts_one_replica_at_a_time(deployed):
    """Eviction API (what `kubectl drain` uses): the first eviction is allowed, the second right after
    is refused with 429 until the first one's replacement is Ready, then it is allowed."""
    wait_for(lambda: both_ready(deployed), 180, what="both replicas Ready")
    wait_for(lambda: budget(deployed).get("status", {}).get("disruptionsAllowed") == 1, 120, interval=1,
             what="the budget allows one disruption (both replicas healthy)")
    active, standby = wait_for(lambda: one_active(deployed), 120, interval=1, what="one active replica")
    first = evict(deployed, standby)
    assert first.returncode == 0, f"the first eviction was refused: {first.stderr}"
    second = evict(deployed, active)
    assert second.returncode != 0 and ("429" in second.stderr or "TooManyRequests" in second.stderr
                                       or "disruption budget" in second.stderr), second.stderr
    assert deployed.kubectl("get", "pod", "-n", NAMESPACE, active, check=False).returncode == 0, "still there"
    started = time.monotonic()
    wait_for(lambda: both_ready(deployed) and standby not in both_ready(deployed), 300, interval=1,
             what="the evicted replica's replacement Ready")
    wait_for(lambda: budget(deployed).get("status", {}).get("disruptionsAllowed") == 1, 120, interval=1,
             what="the budget allows a disruption again")
    record(pdb_replacement_ready_s=round(time.monotonic() - started, 1))
    third = evict(deployed, active)
    assert third.returncode == 0, f"the second replica's eviction after recovery was refused: {third.stderr}"
    # The replacement of the first evicted pod (the standby) takes over; the new pod stands by.
    wait_for(lambda: both_ready(deployed) and active not in both_ready(deployed), 300, interval=1,
             what="both replicas Ready again")
    wait_for(lambda: one_active(deployed), 120, interval=1, what="one active replica after the evictions")


def test_a_rollout_completes_with_a_standby(deployed):
    """Both replicas are Ready, so a rolling update proceeds without waiting on the standby."""
    wait_for(lambda: both_ready(deployed), 180, what="both replicas Ready")
    started = time.monotonic()
    deployed.kubectl("rollout", "restart", "-n", NAMESPACE, "deploy/rbd-operator")
    deployed.kubectl("rollout", "status", "-n", NAMESPACE, "deploy/rbd-operator", "--timeout=300s")
    record(rollout_s=round(time.monotonic() - started, 1))
    wait_for(lambda: one_active(deployed), 120, interval=1, what="one active replica after the rollout")
