"""Two replicas (kopf peering, deploy/peering.yaml): one works, the other takes over when it dies;
the disruption Lease holds "one host at a time" across replicas. Metrics are served."""

import json
import os
import re
import signal
import time

import pytest
import rbd

from .harness import ROOT, Operator, wait_for
from .manifests import image, storage

PEERING = "rbd-operator"
N = 40


@pytest.fixture
def replicas(platform, operator):
    """The session's standalone operator steps aside; two peered replicas run instead."""
    platform.kubectl("apply", "-f", str(ROOT / "deploy" / "peering.yaml"))
    platform.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    operator.stop()
    pair = [Operator(platform, replica=r, peering=PEERING) for r in (1, 2)]
    try:
        for op in pair:
            op.start()
        yield pair
    finally:
        for op in pair:
            op.stop()
        for op in pair:
            forbidden = [line for line in op.log_text().splitlines() if " 403" in line or "Forbidden" in line]
            assert not forbidden, f"replica {op.replica} was refused:\n" + "\n".join(forbidden[:10])
        operator.start()


def paused(op: Operator) -> bool:
    """kopf starts paused until it has seen the peering; a lower-priority replica just stays so."""
    text = op.log_text()
    resumed = text.rfind("Resuming operations")
    return resumed < 0 or text.rfind("Pausing operations") > resumed


def handled_lines(op: Operator) -> list[str]:
    return [line for line in op.log_text().splitlines() if re.search(r"Handler '[^']+' (succeeded|failed)", line)]


def owned_images(ceph, pool: str) -> list[str]:
    with ceph.open_ioctx(pool) as ioctx:
        return sorted(rbd.RBD().list(ioctx))


def test_standby_takes_over_and_nothing_is_done_twice(platform, ceph, replicas, uniq):
    # Exactly one replica works (the older one): the other pauses in its favour.
    def settled() -> bool:
        peers = (platform.get("clusterkopfpeering", PEERING) or {}).get("status") or {}
        return len(peers) == 2 and sum(paused(op) for op in replicas) == 1
    wait_for(settled, 60, what="both replicas in the peering, one paused")
    time.sleep(3)
    assert settled()
    active = next(op for op in replicas if not paused(op))
    standby = next(op for op in replicas if paused(op))

    name = f"ha-{uniq}"
    platform.apply(storage(platform, name, client={"name": name}))
    platform.wait_condition("rbds", name, "True")
    assert not handled_lines(standby), "the standby handled objects while the active replica lived"

    # A burst of images; the active replica is killed in the middle of it.
    platform.apply({"apiVersion": "v1", "kind": "List",
                    "items": [image(f"{name}-{i}", name, size="1Gi") for i in range(N)]})
    wait_for(lambda: 0 < len(owned_images(ceph, name)), 60, interval=0.02, what="work under way")
    standby_before = len(handled_lines(standby))
    killed_at = time.monotonic()
    active.kill(signal.SIGKILL)
    assert standby_before == 0, "the standby worked before the active replica died"

    wait_for(lambda: not paused(standby), 90, interval=0.2, what="standby resumes")
    takeover_s = time.monotonic() - killed_at

    def all_ready() -> bool:
        items = json.loads(platform.kubectl("get", "rbdimg", "-n", "default", "-o", "json").stdout)["items"]
        mine = [i for i in items if i["metadata"]["name"].startswith(f"{name}-")]
        return len(mine) == N and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get("conditions", []))
            for i in mine)
    wait_for(all_ready, 180, interval=0.5, what="every image Ready after the takeover")
    converged_s = time.monotonic() - killed_at

    # Nothing created twice, nothing half-made left: exactly the N images, no staging names.
    assert owned_images(ceph, name) == sorted(f"{name}-{i}" for i in range(N))
    with ceph.open_ioctx(name) as ioctx:
        for i in range(N):
            with rbd.Image(ioctx, f"{name}-{i}", read_only=True) as img:
                obj = platform.get("rbdimg", f"{name}-{i}", "default")
                assert img.metadata_get("rbd-operator.io/owner") == f"default/{name}-{i}/{obj['metadata']['uid']}"
                assert obj["status"]["imageId"] == img.id()
    # Metrics of the surviving replica: reconciles per kind and reason, Ceph call latency, pool figures.
    text = standby.metrics()
    assert re.search(r'rbd_operator_reconciles_total\{kind="RbdImage",reason="[A-Za-z]+"\} [1-9]', text), text[:3000]
    assert re.search(r'rbd_operator_reconcile_duration_seconds_count\{kind="RbdImage"\} [1-9]', text)
    assert re.search(r'rbd_operator_ceph_call_seconds_count\{call="[a-z_]+"\} [1-9]', text)
    assert re.search(rf'rbd_operator_pool_stored_bytes\{{storage="{name}"\}}', text)
    assert re.search(rf'rbd_operator_storage_hosts_selected\{{storage="{name}"\}} 0', text)

    out = ROOT / ".bench"
    out.mkdir(exist_ok=True)
    (out / "takeover.json").write_text(json.dumps({"takeover_s": round(takeover_s, 1),
                                                   "converged_after_kill_s": round(converged_s, 1),
                                                   "images": N}) + "\n")
    print(f"takeover {takeover_s:.1f}s, all {N} images Ready {converged_s:.1f}s after the kill")
    assert takeover_s <= 30, f"takeover took {takeover_s:.1f}s (goal 30)"

    for i in range(N):
        platform.delete("rbdimg", f"{name}-{i}", "default")
    wait_for(lambda: not owned_images(ceph, name), 120, what="images deleted")
    platform.delete("rbds", name)


def test_disruption_lease_is_one_holder_across_replicas(platform, monkeypatch):
    """The Lease behind "one host at a time", under the operator's own RBAC (deploy/rbac.yaml)."""
    monkeypatch.setenv("KUBECONFIG", str(platform.operator_kubeconfig))
    monkeypatch.setenv("RBD_OPERATOR_NAMESPACE", "rbd-operator")
    from rbd_operator.adapters import kube, lease
    kube._core = None
    name = f"test-disruption-{os.getpid()}"
    a = lease.LeaseLock(name, "10.0.0.1", duration=3, identity="replica-a")
    b = lease.LeaseLock(name, "10.0.0.2", duration=3, identity="replica-b")
    assert a.try_acquire() is None
    held = b.try_acquire()
    assert held is not None and held.holder == "replica-a/10.0.0.1"
    time.sleep(4)  # renewed by a's thread: still a's
    assert b.try_acquire() is not None
    a.release()
    assert b.try_acquire() is None
    # b dies without releasing (its renewal stops): a waits until the Lease has expired.
    b._stop.set()
    assert a.try_acquire() is not None
    wait_for(lambda: a.try_acquire() is None, 15, interval=0.5, what="expired Lease taken over")
    a.release()
    platform.kubectl("delete", "lease", name, "-n", "rbd-operator")
