"""RbdSnapshotSchedule against the real control plane and Ceph: ticks survive a SIGKILL of the operator with
exactly one snapshot per image and tick, the oldest beyond keep are gone from Ceph, a snapshot with a clone
is kept and the schedule says so, deletionPolicy decides what deleting the schedule does.

The operator of this module runs with RBD_OPERATOR_MIN_SCHEDULE_INTERVAL=10 (test-only) so that ticks are
10 s apart instead of at least a minute."""

import datetime
import json
import signal
import time

import pytest
import rbd

from .harness import Operator, wait_for
from .manifests import image, storage

INTERVAL = 10
SCHEDULE_LABEL = "rbd-operator.io/schedule"


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
        forbidden = [line for line in op.log_text().splitlines() if " 403" in line or "Forbidden" in line]
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


def test_a_schedule_keeps_exactly_keep_per_image_across_a_sigkill(platform, ceph, pool, fast, uniq):
    name, images = f"s-{uniq}", [f"sa-{uniq}", f"sb-{uniq}"]
    for img in images:
        platform.apply(labelled(img, pool, {"backup": uniq}))
    platform.apply(labelled(f"sx-{uniq}", pool, {"backup": "other"}))  # not selected
    for img in images + [f"sx-{uniq}"]:
        platform.wait_condition("rbdimg", img, "True", namespace="default")
    platform.apply(schedule(name, {"backup": uniq}, 2, deletionPolicy="Delete"))
    seen: dict[str, set[str]] = {img: set() for img in images}

    def observe() -> set[int]:
        items = scheduled(platform, name)
        for item in items:
            seen[item["spec"]["image"]].add(item["metadata"]["name"])
        return {tick_of(i) for i in items}

    def ticks_seen() -> int:
        observe()
        return len({int(n.rsplit("-", 1)[1]) for n in seen[images[0]]})

    start = time.time()
    wait_for(lambda: ticks_seen() >= 2, 4 * INTERVAL, interval=1, what="two ticks taken")
    fast.kill(signal.SIGKILL)
    time.sleep(INTERVAL + 2)  # at least one tick passes while the operator is down
    fast.start()
    deadline = start + 5 * INTERVAL
    while time.time() < deadline or ticks_seen() < 4:
        time.sleep(1)
        assert time.time() < start + 12 * INTERVAL, f"too few ticks taken: {seen}"

    # Every name is <schedule>-<image>-<tick>, the tick a multiple of the interval: one snapshot per image and tick.
    for img, names in seen.items():
        ticks = [int(n.rsplit("-", 1)[1]) for n in names]
        assert all(n == f"{name}-{img}-{t}" and t % INTERVAL == 0 for n, t in zip(names, ticks)), names
    assert seen[images[0]] and not [n for n in seen[images[0]] if f"sx-{uniq}" in n]

    def settled() -> bool:
        by_image = live_by_image(scheduled(platform, name))
        return all(len(by_image.get(img, [])) == 2 for img in images) and all(
            sorted(i["metadata"]["name"] for i in by_image[img]) == ceph_snaps(ceph, pool, img) for img in images)
    wait_for(settled, 3 * INTERVAL, interval=1, what="exactly 2 snapshots per image, in Kubernetes and in Ceph")
    by_image = live_by_image(scheduled(platform, name))
    for img in images:
        kept = by_image[img]
        assert all(i["metadata"]["ownerReferences"][0]["kind"] == "RbdSnapshotSchedule" for i in kept)
        pruned = seen[img] - {i["metadata"]["name"] for i in kept}
        assert len(pruned) >= 2 and not set(ceph_snaps(ceph, pool, img)) & pruned
    # One tick's snapshots of both images are made within seconds of each other.
    newest = max(tick_of(i) for i in by_image[images[0]])
    made = [next(i for i in by_image[img] if tick_of(i) == newest)["metadata"]["creationTimestamp"] for img in images]
    at = [datetime.datetime.fromisoformat(m.replace("Z", "+00:00")) for m in made]
    assert abs((at[0] - at[1]).total_seconds()) <= 5, made
    status = platform.get("rbdsnapshotschedules", name, "default")["status"]
    assert status["snapshots"] == 4 and status["lastTick"].endswith("Z") and status["nextTick"] > status["lastTick"]
    assert not status.get("keptWithClones")

    # deletionPolicy Delete: deleting the schedule deletes its snapshots (and their Ceph snapshots).
    platform.delete("rbdsnapshotschedules", name, "default", wait=True)
    wait_for(lambda: not scheduled(platform, name) and not any(ceph_snaps(ceph, pool, img) for img in images),
             60, interval=1, what="the schedule's snapshots deleted with it")
    for img in images + [f"sx-{uniq}"]:
        platform.delete("rbdimg", img, "default", wait=True)


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
