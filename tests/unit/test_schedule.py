"""RbdSnapshotSchedule: spec parsing, ticks, names and pruning (pure, with an injected clock)."""

from __future__ import annotations

import asyncio

import pytest

from rbd_operator.api.enums import DeletionPolicy
from rbd_operator.api.errors import SpecError
from rbd_operator.api.schedule import parse_schedule
from rbd_operator.converge import schedule as converge
from rbd_operator.reconcile.schedule import Scheduled, latest_tick, plan, snapshot_name
from rbd_operator.reconcile.selector import matches

SEL = {"matchLabels": {"backup": "daily"}}


def test_parse_defaults_and_limits(monkeypatch):
    monkeypatch.delenv("RBD_OPERATOR_MIN_SCHEDULE_INTERVAL", raising=False)
    parsed = parse_schedule("nightly", {"selector": SEL, "interval": "1h30m", "keep": 3})
    assert (parsed.interval, parsed.keep, parsed.deletion_policy) == (5400, 3, DeletionPolicy.RETAIN)
    assert parse_schedule("n", {"selector": SEL, "interval": "1m", "keep": 1, "deletionPolicy": "Delete"}
                          ).deletion_policy == DeletionPolicy.DELETE
    bad = [({"selector": SEL, "interval": "59s", "keep": 1}, "spec.interval"),
           ({"selector": SEL, "interval": "soon", "keep": 1}, "spec.interval"),
           ({"selector": SEL, "interval": "1h", "keep": 0}, "spec.keep"),
           ({"selector": SEL, "interval": "1h", "keep": True}, "spec.keep"),
           ({"selector": {}, "interval": "1h", "keep": 1}, "spec.selector"),
           ({"selector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}, "interval": "1h", "keep": 1},
            "spec.selector.matchExpressions"),
           ({"selector": SEL, "interval": "1h", "keep": 1, "deletionPolicy": "Orphan"}, "spec.deletionPolicy")]
    for spec, field in bad:
        with pytest.raises(SpecError) as err:
            parse_schedule("n", spec)
        assert err.value.field == field, spec
    with pytest.raises(SpecError):
        parse_schedule("x" * 64, {"selector": SEL, "interval": "1h", "keep": 1})


def test_minimum_interval_override_is_for_tests(monkeypatch):
    monkeypatch.setenv("RBD_OPERATOR_MIN_SCHEDULE_INTERVAL", "10")
    assert parse_schedule("n", {"selector": SEL, "interval": "10s", "keep": 1}).interval == 10
    with pytest.raises(SpecError):
        parse_schedule("n", {"selector": SEL, "interval": "9s", "keep": 1})


def test_ticks_are_multiples_of_the_interval_since_the_epoch():
    assert latest_tick(3599.9, 60) == 3540
    assert latest_tick(3600, 60) == 3600
    assert latest_tick(1_700_000_123, 3600) % 3600 == 0


def test_names_are_deterministic_and_fit_63_characters():
    assert snapshot_name("s", "disk", 120) == "s-disk-120"
    long1 = snapshot_name("s" * 60, "disk-" + "a" * 200, 1_700_000_000)
    long2 = snapshot_name("s" * 60, "disk-" + "b" * 200, 1_700_000_000)
    assert len(long1) <= 63 and len(long2) <= 63 and long1 != long2
    assert long1.endswith("-1700000000") and long1 == snapshot_name("s" * 60, "disk-" + "a" * 200, 1_700_000_000)
    assert long1[0].isalnum() and "--" not in long1.replace(long1[-22:], "")


def test_a_pass_takes_the_due_tick_once_per_image():
    first = plan("s", 60, 2, 1000.0, ["b", "a"], [])
    assert first.tick == 960 and first.next_tick == 1020
    assert first.create == [("s-a-960", "a"), ("s-b-960", "b")] and first.delete == []
    # The same tick again (restart, second replica, next timer run): nothing to create.
    again = plan("s", 60, 2, 1010.0, ["a", "b"], [Scheduled("s-a-960", "a", 960), Scheduled("s-b-960", "b", 960)])
    assert again.create == [] and again.count == 2


def test_after_downtime_only_the_latest_missed_tick_is_taken():
    out = plan("s", 60, 5, 960.0 + 10 * 60 + 5, ["a"], [Scheduled("s-a-960", "a", 960)])
    assert out.create == [("s-a-1560", "a")]


def test_the_oldest_beyond_keep_are_pruned_never_one_with_clones():
    have = [Scheduled(f"s-a-{t}", "a", t, has_clones=(t == 60)) for t in (0, 60, 120, 180)]
    have.append(Scheduled("s-b-0", "b", 0))
    out = plan("s", 60, 2, 245.0, ["a", "b"], have)
    assert out.create == [("s-a-240", "a"), ("s-b-240", "b")]
    assert sorted(out.delete) == ["s-a-0", "s-a-120"]
    assert out.kept_with_clones == ["s-a-60"]
    assert out.count == 2 + 1 + 2  # a: 240, 180 and the cloned 60; b: 240, 0
    assert out.status["keptWithClones"] == ["s-a-60"] and out.status["lastTick"] == "1970-01-01T00:04:00Z"
    # A snapshot being deleted does not count; one whose deletion waits for clones is reported.
    out = plan("s", 60, 1, 125.0, ["a"], [Scheduled("s-a-60", "a", 60, deleting=True, has_clones=True),
                                          Scheduled("s-a-0", "a", 0, deleting=True)])
    assert out.delete == [] and out.kept_with_clones == ["s-a-60"] and out.count == 1


def test_images_no_longer_selected_are_still_pruned():
    have = [Scheduled(f"s-gone-{t}", "gone", t) for t in (0, 60, 120)]
    out = plan("s", 60, 1, 130.0, [], have)
    assert out.create == [] and sorted(out.delete) == ["s-gone-0", "s-gone-60"]


def test_converge_selects_by_labels_and_knows_clones(monkeypatch):
    images = {"ns": [{"name": "a", "labels": {"backup": "daily"}, "deleting": False, "parents": []},
                     {"name": "b", "labels": {}, "deleting": False, "parents": []},
                     {"name": "c", "labels": {"backup": "daily"}, "deleting": True, "parents": []},
                     {"name": "clone", "labels": {}, "deleting": False, "parents": ["s-a-0"]}]}
    parsed = parse_schedule("s", {"selector": SEL, "interval": "1m", "keep": 1})
    chosen, parents = converge.selected("ns", parsed, images)
    assert chosen == ["a"] and parents == {"s-a-0"}
    scheduled = {("ns", "s"): [
        {"name": "s-a-0", "image": "a", "tick": 0, "deleting": False, "hasClones": False, "owners": ["uid1"]},
        {"name": "s-a-60", "image": "a", "tick": 60, "deleting": False, "hasClones": False, "owners": ["uid1"]},
        {"name": "s-a-1", "image": "a", "tick": 1, "deleting": False, "hasClones": False, "owners": ["other"]}]}
    created, deleted = [], []
    monkeypatch.setattr(converge.kube, "create_namespaced", lambda *a: created.append(a[4]["metadata"]) or True)
    monkeypatch.setattr(converge.kube, "delete_namespaced", lambda *a: deleted.append(a[4]) or True)
    out = asyncio.run(converge.reconcile("s", "ns", "uid1", parsed, images, scheduled, clock=lambda: 125.0))
    assert [m["name"] for m in created] == ["s-a-120"]
    meta = created[0]
    assert meta["labels"] == {"rbd-operator.io/schedule": "s", "rbd-operator.io/schedule-tick": "120"}
    assert meta["ownerReferences"][0]["uid"] == "uid1" and meta["ownerReferences"][0]["kind"] == "RbdSnapshotSchedule"
    assert deleted == ["s-a-60"]  # s-a-0 has a clone; s-a-1 belongs to another schedule's uid
    assert out.status["keptWithClones"] == ["s-a-0"] and out.conditions[0].reason == "HasClones"
    assert matches(SEL, {"backup": "daily"})
