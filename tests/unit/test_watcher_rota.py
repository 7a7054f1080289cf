"""Which images' watchers the drift sweep lists per interval (reconcile/watchers.py)."""

import math

from rbd_operator.reconcile.watchers import WatcherRota


def _ids(n: int) -> dict[str, str]:
    return {f"disk-{i:05d}": f"id{i:05d}" for i in range(n)}


def test_a_small_storage_is_listed_whole_every_sweep():
    rota, ids = WatcherRota(), _ids(7)
    for _ in range(3):
        picked = rota.pick("s", ids, 50)
        assert picked == ids
        rota.record("s", picked.values())


def test_every_image_is_listed_within_ceil_images_over_budget_sweeps():
    rota, ids, budget = WatcherRota(), _ids(1_003), 50
    rounds = math.ceil(len(ids) / budget)
    seen: dict[str, int] = {}
    for sweep in range(2 * rounds):
        picked = rota.pick("s", ids, budget)
        assert len(picked) == budget
        for name in picked:
            seen[name] = sweep
        rota.record("s", picked.values())
        if sweep == rounds - 1:
            assert set(seen) == set(ids), "one round lists every image once"
    # the second round goes round again: no image waits longer than one round
    assert all(sweep >= rounds for sweep in seen.values())


def test_never_listed_first_then_least_recently_listed():
    rota, ids = WatcherRota(), _ids(4)
    rota.record("s", ["id00002"])
    rota.record("s", ["id00000"])
    assert list(rota.pick("s", ids, 4).values()) == ["id00001", "id00003", "id00002", "id00000"]
    assert list(rota.pick("s", ids, 1)) == ["disk-00001"]
    assert rota.pick("s", ids, 0) == {} and rota.pick("s", ids, -1) == {}


def test_a_new_image_goes_first():
    rota, ids = WatcherRota(), _ids(3)
    rota.record("s", ids.values())
    assert list(rota.pick("s", {**ids, "new": "zz"}, 1)) == ["new"]


def test_storages_are_apart_and_images_gone_are_forgotten():
    rota, ids = WatcherRota(), _ids(10)
    rota.record("a", ids.values())
    rota.record("b", ids.values())
    assert len(rota) == 20
    rota.keep_only("a", ["id00001"])
    assert len(rota) == 11
    assert list(rota.pick("a", ids, 1)) == ["disk-00000"], "forgotten: never listed again"
    assert list(rota.pick("b", ids, 1)) == ["disk-00000"]
    rota.record("b", ["id00000"])
    assert list(rota.pick("b", ids, 1)) == ["disk-00001"]
