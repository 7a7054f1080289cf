"""`live(uid)` over a kopf index, looked up when asked (reconcile/tracking.py uid_lookup): an RbdSnapshot's
reconcile no longer builds a set of every snapshot's uid (O(snapshots^2) memory at a start)."""

import tracemalloc
from collections.abc import Mapping

from rbd_operator.converge import snapshot as converge
from rbd_operator.reconcile import tracking
from rbd_operator.reconcile.tracking import uid_lookup


class Index(Mapping):
    """A kopf index as handlers see it (key -> a collection of entries), counting its scans; `failing` scans
    raise what iterating a dict changed meanwhile raises."""

    def __init__(self, entries: dict, failing: int = 0) -> None:
        self.entries, self.failing, self.scans = entries, failing, 0

    def __getitem__(self, key):
        return self.entries[key]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def values(self):
        self.scans += 1
        if self.failing:
            self.failing -= 1
            raise RuntimeError("dictionary changed size during iteration")
        return list(self.entries.values())


def snapshots(n: int) -> dict:
    return {("ns", f"s-{i}"): [{"uid": f"uid-{i}", "image": f"i-{i}", "name": f"s-{i}", "ready": True}]
            for i in range(n)}


def test_a_uid_in_the_index_is_live_and_others_are_not():
    live = uid_lookup(Index(snapshots(3)))
    assert live("uid-0") and live("uid-2")
    assert not live("uid-3")
    assert not live("")


def test_entries_that_are_not_mappings_or_carry_no_uid_are_not_live():
    live = uid_lookup(Index({("ns", "a"): ["uid-x", None, {"ready": True}], ("ns", "b"): None,
                             ("ns", "c"): [{"uid": None}]}))
    assert not live("uid-x")
    assert not live(None)  # type: ignore[arg-type]


def test_nothing_is_scanned_until_asked():
    index = Index(snapshots(10))
    live = uid_lookup(index)
    assert index.scans == 0
    assert live("uid-9")
    assert index.scans == 1


def test_a_scan_cut_short_by_a_change_is_repeated():
    index = Index(snapshots(3), failing=tracking.SCAN_TRIES - 1)
    assert not uid_lookup(index)("uid-7")
    assert index.scans == tracking.SCAN_TRIES


def test_a_scan_that_keeps_failing_counts_the_owner_as_live():
    """Fail closed: a live owner is never taken over."""
    index = Index(snapshots(3), failing=10)
    assert uid_lookup(index)("uid-7") is True
    assert index.scans == tracking.SCAN_TRIES


def test_a_lookup_held_by_each_of_many_snapshots_costs_no_copy_of_the_index():
    """2,000 reconciles queued for a Ceph worker each hold their `live`: with a set of every uid per
    reconcile that was ~64-128 KiB each (~250 MiB at a start with 2,000 snapshots)."""
    index = Index(snapshots(2000))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [uid_lookup(index) for _ in range(2000)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held[0]("uid-1999")
    assert grown < 2 * 2**20, f"{grown} bytes for 2,000 lookups"


async def test_the_snapshot_reconcile_hands_its_ceph_call_a_lookup_that_did_not_scan(monkeypatch):
    index = Index(snapshots(50))
    seen = {}

    async def identity(namespaces):
        return "cluster-1"

    async def no_namespace(namespaces, name):
        return None

    async def target(namespace, parsed, images, storages, identity):
        return converge.Target("pool", "img", None, None)  # type: ignore[arg-type]

    async def run_blocking(fn, creds, where, parsed, owner, live, **kwargs):
        seen["scans"], seen["live"] = index.scans, live
        return {"created_now": False, "adopted": False, "created": "2026-01-01T00:00:00Z", "size": 1}

    monkeypatch.setattr(converge, "cluster_identity", identity)
    monkeypatch.setattr(converge, "namespace_info", no_namespace)
    monkeypatch.setattr(converge, "target", target)
    monkeypatch.setattr(converge, "run_blocking", run_blocking)
    parsed = converge.SnapshotSpec(image="img", name="s-1")
    await converge.reconcile("s-1", "ns", "uid-1", parsed, {}, {}, index, {})
    assert seen["scans"] == 0, "the reconcile scanned every snapshot before its Ceph call"
    assert seen["live"]("uid-49") and not seen["live"]("uid-50")
