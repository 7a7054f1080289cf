"""status.usedBytes: which images the sweep measures (reconcile/used.py)."""

from rbd_operator.reconcile.actions import ClaimImage, CloneImage, CreateImage, ImportImage, Resize, SetQos
from rbd_operator.reconcile.used import (RECENT_SECONDS, UsedCache, after_steps, measurable, pick,
                                         whole_object_used)

FAST_DIFF = 1 | 4 | 8 | 16  # layering, exclusive-lock, object-map, fast-diff
NOW = 1_000_000.0


def test_only_a_valid_fast_diff_object_map_is_measured():
    assert measurable(FAST_DIFF, 0)
    assert not measurable(1 | 4 | 8, 0), "object map without fast-diff"
    assert not measurable(1 | 4, 0)
    assert not measurable(FAST_DIFF, 1), "object map invalid"
    assert not measurable(FAST_DIFF, 2), "fast-diff invalid"
    assert not measurable(FAST_DIFF, None), "flags unknown"


def test_whole_object_extents_sum_only_existing_ones():
    assert whole_object_used([(0, 4 << 20, True), (4 << 20, 4 << 20, False), (12 << 20, 1 << 20, True)]) == 5 << 20
    assert whole_object_used([]) == 0


def test_idle_images_are_not_measured_again():
    cache = UsedCache()
    old = NOW - 3600
    assert pick(cache, "s", {"a": old, "b": old}, NOW, 10) == ["a", "b"]
    cache.record(("s", "a"), old, 8 << 20)
    cache.record(("s", "b"), old, 0)
    assert pick(cache, "s", {"a": old, "b": old}, NOW, 10) == []
    assert cache.known(("s", "a"), old) == 8 << 20
    assert cache.known(("s", "a"), old + 1) is None


def test_a_changed_object_map_comes_before_never_measured_ones_and_the_budget_holds():
    cache = UsedCache()
    old = NOW - 3600
    cache.record(("s", "changed"), old, 0)
    stamps = {"new1": old - 5, "changed": old + 10, "new2": old - 10}
    assert pick(cache, "s", stamps, NOW, 2) == ["changed", "new2"]
    assert pick(cache, "s", stamps, NOW, 10) == ["changed", "new2", "new1"]
    assert pick(cache, "s", stamps, NOW, 0) == []


def test_a_recent_stamp_stays_due_until_it_is_old_enough():
    cache = UsedCache()
    recent = NOW - 1
    cache.record(("s", "a"), recent, 4 << 20)
    assert pick(cache, "s", {"a": recent}, NOW, 10) == ["a"], "a later write in the same second could hide"
    assert pick(cache, "s", {"a": recent}, recent + RECENT_SECONDS + 1, 10) == []


def test_caches_are_per_storage_and_forget_gone_images():
    cache = UsedCache()
    cache.record(("s", "a"), NOW - 3600, 1)
    cache.record(("t", "a"), NOW - 3600, 2)
    cache.keep_only("s", [])
    assert cache.known(("s", "a"), NOW - 3600) is None
    assert cache.known(("t", "a"), NOW - 3600) == 2


def test_a_pass_knows_used_bytes_of_what_it_made_and_measures_what_it_changed():
    assert after_steps([CreateImage("img", size=1)], FAST_DIFF) == "zero"
    assert after_steps([CloneImage("img")], FAST_DIFF) == "zero", "a clone's parent data is not its own"
    assert after_steps([ImportImage("img")], FAST_DIFF) == "measure"
    assert after_steps([Resize("img", size=2)], FAST_DIFF) == "measure"
    assert after_steps([ClaimImage("img")], FAST_DIFF) == "measure"
    assert after_steps([SetQos("img")], FAST_DIFF) == ""
    assert after_steps([], FAST_DIFF) == ""
    assert after_steps([CreateImage("img", size=1)], 1 | 4) == "", "no fast-diff: not measured"


def test_an_idle_storage_is_looked_at_once_per_idle_interval():
    cache = UsedCache()
    assert cache.look_due("s", 0.0, 300), "first look after a start"
    cache.looked("s", 0.0, measured=True)
    assert cache.look_due("s", 60.0, 300), "catching up: every sweep"
    cache.looked("s", 60.0, measured=False)
    assert not cache.look_due("s", 120.0, 300) and not cache.look_due("s", 359.0, 300)
    assert cache.look_due("s", 360.0, 300), "idle: again after the interval"
    assert cache.look_due("t", 120.0, 300), "storages apart"
    cache.looked("s", 360.0, measured=False)
    assert cache.look_due("s", 361.0, 0), "0: every sweep (the tests' setting)"


async def test_a_large_per_sweep_budget_is_measured_in_calls_that_each_stay_small(monkeypatch):
    """RBD_OPERATOR_USED_PER_SWEEP far above the default once made one Ceph call of thousands of measurements
    that outlived its timeout every sweep (the catch-up never ended): the due images are measured in calls of
    at most MEASURE_CHUNK, and every one of them is recorded."""
    from rbd_operator.converge import used as converge_used
    from rbd_operator.reconcile.image_plan import ObservedImage
    from rbd_operator.reconcile.tracking import Tracked

    n = 2 * converge_used.MEASURE_CHUNK + 7
    tracked = [(Tracked.of(f"i{k}", "ns", f"u{k}", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "Converged"}]}}), f"i{k}") for k in range(n)]
    headers = {f"i{k}": ObservedImage(size=1, features=FAST_DIFF, id=f"id{k}", flags=0) for k in range(n)}
    calls, writes = [], []

    async def run_blocking(fn, creds, pool, arg, **kwargs):
        if fn is converge_used._stamps:
            return {i: NOW - 3600 for i in arg}
        calls.append(len(arg))
        return {name: 4 << 20 for name in arg}

    async def write(t, figure, logger):
        writes.append(t.name)
        return True

    monkeypatch.setattr(converge_used, "run_blocking", run_blocking)
    monkeypatch.setattr(converge_used, "_write", write)
    monkeypatch.setattr(converge_used, "PER_SWEEP", 100_000)
    cache = UsedCache()
    assert await converge_used.refresh("s", "p", None, tracked, headers, lambda uid: False, cache,
                                       converge_used.logging.getLogger("t")) == n
    assert calls == [converge_used.MEASURE_CHUNK, converge_used.MEASURE_CHUNK, 7]
    assert len(writes) == n and all(cache.known(("s", f"id{k}"), NOW - 3600) == 4 << 20 for k in range(n))
