"""RbdSnapshotSchedule, the issue's case as written: interval 1m, keep 2, two images, 4 minutes, the active one
of two peered replicas SIGKILLed in between (the standby takes over) — exactly 2 snapshots per image, the
pruned ones gone from Ceph, one snapshot per image and tick. A module of its own: the replicas run with the
real one-minute minimum, not beside test_schedule.py's 10-s operator."""

import datetime
import signal
import time

import pytest

from .harness import ROOT, Operator, wait_for
from .manifests import storage
from .test_schedule import ceph_snaps, labelled, live_by_image, schedule, scheduled, tick_of

PEERING = "rbd-operator"


@pytest.fixture(scope="module")
def pool(platform, operator):
    name = "schedmin"
    platform.apply(storage(platform, name, pool={"pgNum": 8, "quota": {"maxBytes": "20Gi"}},
                           client={"name": "schedmin"}))
    platform.wait_condition("rbds", name, "True")
    return name


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
