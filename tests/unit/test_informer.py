"""The RbdImage indexes kept from kopf's watch stream (reconcile/informer.py, handlers/indexes.py,
kopf_fixes.tap): what a listing, the watch and a later listing leave in them; fail closed before the first
listing ends; hostile bodies; the tap on a real kopf Resource."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from kopf._cogs.clients import watching

from rbd_operator import GROUP, kopf_fixes
from rbd_operator.handlers.indexes import ImageInformer, image_entries, image_namespace_entries
from rbd_operator.reconcile import tracking
from rbd_operator.reconcile.informer import Informed


def body(name: str, uid: str, storage: object = "s1", namespace: str = "default", **extra: object) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 1,
                         "labels": {"app": name}},
            "spec": {"storage": storage, "size": "1Gi", **extra}, "status": {}}


def by_storage(informed: Informed, storage: str) -> list[str]:
    return sorted(t.name for t in tracking.by_storage(informed).get(storage, []))


def test_a_listing_fills_the_index_and_only_its_end_makes_it_complete():
    done: list[int] = []
    idx = Informed(image_entries, on_complete=lambda: done.append(1))
    idx.listing_started()
    idx.apply(None, body("a", "u1"))
    idx.apply(None, body("b", "u2", storage="s2"))
    assert not idx.complete and not done, "incomplete until the listing ends"
    assert by_storage(idx, "s1") == ["a"]
    idx.listing_ended()
    assert idx.complete and done == [1]
    assert "u1" in tracking.by_uid(idx) and "u2" in tracking.by_uid(idx) and "u3" not in tracking.by_uid(idx)
    assert [e["image"] for e in tracking.by_key(idx).get(("default", "b"))] == ["b"]
    assert idx.objects() == 2


def test_watch_events_move_and_drop_entries():
    idx = Informed(image_entries)
    idx.listing_started()
    idx.apply(None, body("a", "u1"))
    idx.listing_ended()
    idx.apply("ADDED", body("b", "u2"))
    assert by_storage(idx, "s1") == ["a", "b"]
    idx.apply("MODIFIED", body("b", "u2", storage="s2"))  # moved to another storage: gone from the first
    assert by_storage(idx, "s1") == ["a"] and by_storage(idx, "s2") == ["b"]
    idx.apply("DELETED", body("a", "u1"))
    assert by_storage(idx, "s1") == [] and ("storage", "s1") not in idx and "u1" not in tracking.by_uid(idx)
    assert idx.objects() == 1 and len(idx) == 3  # u2's uid, key and storage keys


def test_a_later_listing_drops_what_it_did_not_list_and_is_incomplete_while_it_runs():
    """A watch that expired or a resume after a pause lists again: objects deleted meanwhile (no DELETED
    event ever came) are dropped when that listing ends, and objects created meanwhile are not there until it
    has listed them: readers wait again while it runs (one made while nobody watched must not read as gone)."""
    done: list[int] = []
    idx = Informed(image_entries, on_complete=lambda: done.append(1))
    idx.listing_started()
    for i in range(3):
        idx.apply(None, body(f"i{i}", f"u{i}"))
    idx.listing_ended()
    idx.listing_started()
    idx.apply(None, body("i0", "u0"))
    idx.apply(None, body("i2", "u2", storage="s2"))
    assert not idx.complete, "incomplete while a later listing runs"
    assert "u1" in tracking.by_uid(idx), "not dropped before the listing ended"
    idx.listing_ended()
    assert idx.complete
    assert "u1" not in tracking.by_uid(idx) and by_storage(idx, "s1") == ["i0"] and by_storage(idx, "s2") == ["i2"]
    assert done == [1, 1] and idx.listings == 2
    # A listing cut short (no end) and the next one: only the complete one decides.
    idx.listing_started()
    idx.apply(None, body("i0", "u0"))
    idx.listing_started()
    idx.apply(None, body("i2", "u2"))
    idx.listing_ended()
    assert sorted(t.name for t in tracking.by_storage(idx).get("s1", [])) == ["i2"]
    assert "u0" not in tracking.by_uid(idx)


@pytest.mark.parametrize("hostile", [
    {"metadata": {"uid": "u9"}},                                              # no name, no namespace
    {"metadata": {"uid": "u9", "name": "x", "namespace": "n"}, "spec": ["not", "a", "map"]},
    {"metadata": {"uid": "u9", "name": "x", "namespace": "n"}, "spec": {"storage": "s"},
     "status": {"conditions": "garbage"}},
])
def test_a_body_that_cannot_be_read_keeps_its_uid_only(hostile):
    """Fail closed: an RbdImage the index cannot read still exists (its Ceph image is never taken for a gone
    object's); it is in no storage's or namespace's entries."""
    entries = image_entries(hostile)
    assert entries[("uid", "u9")] is True
    idx = Informed(image_entries)
    idx.apply("ADDED", hostile)
    assert "u9" in tracking.by_uid(idx)
    assert isinstance(image_namespace_entries(hostile), dict)


def test_events_without_a_uid_are_ignored():
    idx = Informed(image_entries)
    for raw in ({}, {"metadata": None}, {"metadata": {"uid": ""}}, {"metadata": {"uid": 7}}):
        idx.apply("ADDED", raw)
    assert len(idx) == 0 and idx.objects() == 0


def test_by_namespace_entries_and_clear():
    idx = Informed(image_namespace_entries)
    idx.apply("ADDED", body("a", "u1", source={"rbdSnapshot": "snap"}))
    idx.apply("ADDED", body("b", "u2", namespace="other"))
    assert [e["parents"] for e in idx["default"]] == [["snap"]] and len(idx["other"]) == 1
    idx.clear()
    assert len(idx) == 0 and not idx.complete


def _run(coro):
    return asyncio.run(coro)


def test_the_tap_feeds_listing_events_and_the_end_of_each_listing():
    calls: list = []

    class Sink:
        def listing_started(self) -> None:
            calls.append("start")

        def apply(self, event_type, raw) -> None:
            calls.append((event_type, raw["metadata"]["uid"], "managedFields" in raw["metadata"]))

        def listing_ended(self) -> None:
            calls.append("end")

    sink = Sink()
    kopf_fixes.tap("example.test", "things", sink)
    resource = SimpleNamespace(group="example.test", plural="things")

    async def source(**_: object):
        yield {"type": None, "object": {"metadata": {"uid": "u1", "managedFields": [{}]}}}
        yield watching.Bookmark.LISTED
        yield {"type": "MODIFIED", "object": {"metadata": {"uid": "u1"}}}
        yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
        yield {"type": "DELETED", "object": {"metadata": {"uid": "u1"}}}

    async def collect(namespace):
        return [e async for e in kopf_fixes._tapped(source)(resource=resource, namespace=namespace)]

    out = _run(collect(None))
    assert len(out) == 5, "every event goes on to kopf"
    assert calls == ["start", (None, "u1", False), "end", ("MODIFIED", "u1", False), ("DELETED", "u1", False)]
    calls.clear()
    _run(collect("some-namespace"))
    assert calls == [], "a namespaced stream of a tapped kind feeds nothing (its index never completes)"


def test_image_informer_readers_wait_for_the_first_listing():
    informer = ImageInformer()

    async def scenario() -> list[str]:
        informer.reset()
        seen: list[str] = []

        async def reader() -> None:
            ready = await informer.ready()
            seen.append(",".join(sorted(t.name for t in tracking.by_storage(ready.images).get("s1", []))))

        task = asyncio.create_task(reader())
        informer.listing_started()
        informer.apply(None, body("a", "u1"))
        await asyncio.sleep(0.01)
        assert not seen, "no reader before the listing ended"
        informer.apply(None, body("b", "u2"))
        informer.listing_ended()
        await asyncio.wait_for(task, 1)
        assert len(informer.by_namespace["default"]) == 2
        return seen

    assert _run(scenario()) == ["a,b"]

    async def relisting() -> bool:
        """A later listing sends new readers back to waiting until it ends."""
        informer.reset()  # a new event loop (asyncio.run): a new run of the operator
        informer.listing_started()
        informer.listing_ended()
        await asyncio.wait_for(informer.ready(), 1)
        informer.listing_started()
        reader = asyncio.create_task(informer.ready())
        await asyncio.sleep(0.01)
        waiting = not reader.done()
        informer.listing_ended()
        await asyncio.wait_for(reader, 1)
        return waiting

    assert _run(relisting())


def test_the_operator_taps_rbdimages():
    assert kopf_fixes.apply()
    from rbd_operator.handlers import indexes
    assert indexes.IMAGES in kopf_fixes._TAPS[(GROUP, "rbdimages")]
    assert hasattr(watching.continuous_watch, "__wrapped__")


def test_a_reader_that_waits_too_long_gets_a_reason_instead_of_hanging():
    from rbd_operator.api.errors import Waiting
    from rbd_operator.api.reasons import Reason
    informer = ImageInformer()

    async def scenario() -> None:
        informer.reset()
        informer.listing_started()
        with pytest.raises(Waiting) as caught:
            await informer.ready(timeout=0.05)
        assert caught.value.reason == Reason.API_ERROR and "not been listed" in caught.value.message

    _run(scenario())

