"""RbdSnapshotSchedule against the real control plane and Ceph: ticks survive a SIGKILL of the operator with
exactly one snapshot per image and tick, the oldest beyond keep are gone from Ceph, a snapshot with a clone
is kept and the schedule says so, deletionPolicy decides what deleting the schedule does.

The issue's case runs as written: interval 1m, keep 2, two images, 4 minutes, the active one of two peered
replicas SIGKILLed in between. The clone case runs with RBD_OPERATOR_MIN_SCHEDULE_INTERVAL=10 (test-only) so
that its ticks are 10 s apart."""

import datetime
import json
import signal
import time

import pytest
import rbd

from .harness import ROOT, Operator, wait_for
from .manifests import image, storage

INTERVAL = 10
SCHEDULE_LABEL = "rbd-operator.io/schedule"
PEERING = "rbd-operator"


@pytest.fixture(scope="module")
def pool(platform, operator):
    name = "sched"
    platform.apply(storage(platform, name, pool={"pgNum": 8, "quota": {"maxBytes": "20Gi"}},
                           client={"name": "sched"}))
    platform.wait_condition("rbds", name, "True")
    return name


@pytest.fixture(scope="module")
def fast(platform, operator, pool):
    """The session's operator steps aside for one that accepts 10 s intervals."""
    operator.stop()
    op = Operator(platform, replica=5, env={"RBD_OPERATOR_MIN_SCHEDULE_INTERVAL": str(INTERVAL)})
    try:
        op.start()
        yield op
    finally:
        op.stop()
        forbidden = op.refusals()
        operator.start()
        assert not forbidden, "refused:\n" + "\n".join(forbidden[:10])


def schedule(name: str, selector: dict, keep: int, **spec) -> dict:
    return {"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdSnapshotSchedule",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": selector}, "interval": f"{INTERVAL}s", "keep": keep, **spec}}


def labelled(name: str, pool: str, labels: dict) -> dict:
    body = image(name, pool, size="64Mi")
    body["metadata"]["labels"] = labels
    return body


def scheduled(platform, sched: str) -> list[dict]:
    out = platform.kubectl("get", "rbdsnap", "-n", "default", "-l", f"{SCHEDULE_LABEL}={sched}", "-o", "json")
    return json.loads(out.stdout)["items"]


def live_by_image(items: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for item in items:
        if not item["metadata"].get("deletionTimestamp"):
            found.setdefault(item["spec"]["image"], []).append(item)
    return found


def ceph_snaps(ceph, pool: str, name: str) -> list[str]:
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        return sorted(s["name"] for s in img.list_snaps())


def tick_of(item: dict) -> int:
    return int(item["metadata"]["labels"]["rbd-operator.io/schedule-tick"])


def test_a_snapshot_with_a_clone_is_kept_beyond_keep_and_retain_releases(platform, ceph, pool, fast, uniq):
    name, img, clone = f"c-{uniq}", f"ca-{uniq}", f"cc-{uniq}"
    platform.apply(labelled(img, pool, {"backup": f"c{uniq}"}))
    platform.wait_condition("rbdimg", img, "True", namespace="default")
    platform.apply(schedule(name, {"backup": f"c{uniq}"}, 1))  # deletionPolicy: Retain (the default)
    first = wait_for(lambda: [i for i in scheduled(platform, name) if (i.get("status") or {}).get("readyToUse")],
                     3 * INTERVAL, interval=1, what="the first scheduled snapshot ready")[0]["metadata"]["name"]
    platform.apply(image(clone, pool, source={"rbdSnapshot": first}))
    platform.wait_condition("rbdimg", clone, "True", namespace="default", timeout=60)

    def kept() -> dict | None:
        status = (platform.get("rbdsnapshotschedules", name, "default") or {}).get("status") or {}
        live = live_by_image(scheduled(platform, name)).get(img, [])
        return status if status.get("keptWithClones") == [first] and len(live) == 2 else None
    # Two more ticks: keep is 1, yet the cloned snapshot stays, and the schedule says why.
    time.sleep(2 * INTERVAL)
    status = wait_for(kept, 3 * INTERVAL, interval=1, what="the cloned snapshot kept beyond keep")
    assert status["snapshots"] == 2
    cond = platform.condition("rbdsnapshotschedules", name, namespace="default")
    assert cond["status"] == "True" and cond["reason"] == "HasClones" and first in cond["message"]
    assert first in ceph_snaps(ceph, pool, img)

    # Retain: the schedule goes, its snapshots stay (without their ownerReference, so the GC leaves them).
    names = {i["metadata"]["name"] for i in live_by_image(scheduled(platform, name))[img]}
    platform.delete("rbdsnapshotschedules", name, "default", wait=True)
    time.sleep(5)
    left = scheduled(platform, name)
    assert {i["metadata"]["name"] for i in left} >= names
    assert not any(i["metadata"].get("ownerReferences") for i in left)
    assert set(ceph_snaps(ceph, pool, img)) >= names
    platform.delete("rbdimg", clone, "default", wait=True)


@pytest.fixture
def pair(platform, operator, pool):
    """Two peered replicas with the real minimum interval (1 minute) instead of the session's operator."""
    platform.kubectl("apply", "-f", str(ROOT / "deploy" / "peering.yaml"))
    platform.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    operator.stop()
    ops = [Operator(platform, replica=r, peering=PEERING) for r in (6, 7)]
    try:
        for op in ops:
            op.start()
        yield ops
    finally:
        for op in ops:
            op.stop()
        operator.start()
        for op in ops:
            forbidden = op.refusals()
            assert not forbidden, f"replica {op.replica} was refused:\n" + "\n".join(forbidden[:10])


def resumed(op: Operator) -> bool:
    text = op.log_text()
    return text.rfind("Resuming operations") > text.rfind("Pausing operations")


def test_a_one_minute_schedule_keeps_two_per_image_across_a_sigkill_of_the_active_replica(
        platform, ceph, pool, pair, uniq):
    """The issue's case as written: interval 1m, keep 2, two images, 4 minutes, the active one of two replicas
    SIGKILLed in between (the standby takes over): exactly 2 snapshots per image, the pruned ones gone from Ceph."""
    name, images = f"m-{uniq}", [f"ma-{uniq}", f"mb-{uniq}"]
    for img in images:
        platform.apply(labelled(img, pool, {"minute": uniq}))
    platform.apply(labelled(f"mx-{uniq}", pool, {"minute": "other"}))  # not selected
    for img in images + [f"mx-{uniq}"]:
        platform.wait_condition("rbdimg", img, "True", namespace="default", timeout=120)
    body = schedule(name, {"minute": uniq}, 2, deletionPolicy="Delete")
    body["spec"]["interval"] = "1m"
    platform.apply(body)
    start = time.time()
    seen: dict[str, set[str]] = {img: set() for img in images}

    def ticks() -> set[int]:
        for item in scheduled(platform, name):
            seen[item["spec"]["image"]].add(item["metadata"]["name"])
        return {int(n.rsplit("-", 1)[1]) for names in seen.values() for n in names}

    wait_for(lambda: len(ticks()) >= 2, 150, interval=2, what="two one-minute ticks taken")
    active = next(op for op in pair if resumed(op))
    active.kill(signal.SIGKILL)
    while time.time() < start + 240:
        ticks()
        time.sleep(2)
    taken = ticks()
    assert len(taken) >= 3 and all(t % 60 == 0 for t in taken), taken
    for img, names in seen.items():  # one snapshot per image and tick, whichever replica took it
        assert sorted(names) == sorted(f"{name}-{img}-{t}" for t in {int(n.rsplit('-', 1)[1]) for n in names})

    def settled() -> bool:
        ticks()
        by_image = live_by_image(scheduled(platform, name))
        return all(len(by_image.get(img, [])) == 2 for img in images) and all(
            sorted(i["metadata"]["name"] for i in by_image[img]) == ceph_snaps(ceph, pool, img) for img in images)
    wait_for(settled, 60, interval=1, what="exactly 2 snapshots per image after 4 minutes, in Kubernetes and Ceph")
    by_image = live_by_image(scheduled(platform, name))
    for img in images:
        pruned = seen[img] - {i["metadata"]["name"] for i in by_image[img]}
        assert pruned and not set(ceph_snaps(ceph, pool, img)) & pruned, (seen[img], pruned)
    assert not [n for names in seen.values() for n in names if f"mx-{uniq}" in n]
    # One tick's snapshots of both images are made within seconds of each other.
    newest = max(tick_of(i) for i in by_image[images[0]])
    made = [next(i for i in by_image[img] if tick_of(i) == newest)["metadata"]["creationTimestamp"] for img in images]
    at = [datetime.datetime.fromisoformat(m.replace("Z", "+00:00")) for m in made]
    assert abs((at[0] - at[1]).total_seconds()) <= 5, made
    status = wait_for(lambda: (lambda st: st if st.get("snapshots") == 4 else None)(
        platform.get("rbdsnapshotschedules", name, "default").get("status") or {}), 30, what="status.snapshots 4")
    assert status["lastTick"].endswith("Z") and status["nextTick"] > status["lastTick"]
    assert not status.get("keptWithClones")
    survivor = next(op for op in pair if op is not active)
    assert resumed(survivor), "the standby did not take over"
    platform.delete("rbdsnapshotschedules", name, "default", wait=True)
    wait_for(lambda: not scheduled(platform, name) and not any(ceph_snaps(ceph, pool, img) for img in images),
             60, interval=1, what="the schedule's snapshots deleted with it, in Ceph too")
    for img in images + [f"mx-{uniq}"]:
        platform.delete("rbdimg", img, "default", wait=True)
