"""RbdSnapshotSchedule against the real control plane and Ceph: ticks survive a SIGKILL of the operator with
exactly one snapshot per image and tick, the oldest beyond keep are gone from Ceph, a snapshot with a clone
is kept and the schedule says so, deletionPolicy decides what deleting the schedule does.

The operator of this module runs with RBD_OPERATOR_MIN_SCHEDULE_INTERVAL=10 (test-only) so that ticks are
10 s apart; the issue's one-minute case as written is tests/integration/test_schedule_minute.py."""

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

