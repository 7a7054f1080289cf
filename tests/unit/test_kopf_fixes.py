"""kopf_fixes: adding or dropping toggles wakes the waiters only when the set's state changes; they still
proceed when it does."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from rbd_operator import kopf_fixes


def test_drop_toggle_notifies_only_on_a_change():
    assert kopf_fixes.apply() or aiotoggles.ToggleSet.drop_toggle is kopf_fixes._drop_toggle

    async def scenario() -> tuple[int, bool]:
        toggles = aiotoggles.ToggleSet(all)
        a = await toggles.make_toggle(False, name="a")
        b = await toggles.make_toggle(False, name="b")
        wakeups = 0

        async def waiter() -> None:
            nonlocal wakeups

            def check() -> bool:
                nonlocal wakeups
                wakeups += 1
                return toggles.is_on()
            async with toggles._condition:
                await toggles._condition.wait_for(check)

        waiters = [asyncio.ensure_future(waiter()) for _ in range(50)]
        await asyncio.sleep(0)
        start = wakeups
        await toggles.drop_toggle(a)
        for i in range(200):  # what every further listed object's worker does: a toggle of its own, dropped
            own = await toggles.make_toggle(False, name=f"object-{i}")
            await asyncio.sleep(0)  # the workers are tasks of their own: the woken ones get to run
            await toggles.drop_toggle(own)
            await toggles.drop_toggle(a)  # and the kind's toggle, gone already
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        middle = wakeups - start
        await toggles.drop_toggle(b)  # the last one: all toggles gone, all() of nothing is True
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return middle, all(w.done() for w in waiters)

    middle, done = asyncio.run(scenario())
    assert middle <= 50, f"{middle} wake-ups while the set stayed off (kopf's own: 50 per call)"
    assert done


def test_watch_events_leave_kopf_without_managed_fields():
    from kopf._cogs.clients import watching

    assert kopf_fixes.apply()
    assert kopf_fixes.apply(), "applying again changes nothing"
    assert hasattr(watching.infinite_watch, "__wrapped__")
    assert not hasattr(watching.infinite_watch.__wrapped__, "__wrapped__"), "wrapped once"
    event = {"type": "ADDED", "object": {"metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}],
                                                      "annotations": {"x": "y"}}, "spec": {"size": "1Gi"}}}

    async def source(**_: object):
        yield watching.Bookmark.LISTED
        yield event
        yield {"type": "ERROR", "object": "not a dict"}

    async def collect() -> list:
        return [e async for e in kopf_fixes._projected(source)(settings=None)]

    out = asyncio.run(collect())
    assert out[0] is watching.Bookmark.LISTED and out[2] == {"type": "ERROR", "object": "not a dict"}
    assert out[1]["object"] == {"metadata": {"name": "a", "annotations": {"x": "y"}}, "spec": {"size": "1Gi"}}


def test_a_listed_object_waits_for_the_indexes_without_its_views():
    """At a start, each listed object is indexed, then waits (until every kind is indexed) holding only its raw
    event: kopf's processing, which makes the Body, Patch and loggers, runs once the wait is over."""
    import gc

    from kopf._cogs.structs import bodies
    from kopf._core.reactor import processing

    assert kopf_fixes.apply()
    assert hasattr(processing.process_resource_event, "__wrapped__")
    calls: list[tuple] = []

    async def process(**kwargs: object) -> str:
        calls.append((kwargs["resource_indexed"], kwargs["operator_indexed"], kwargs["consistency_time"]))
        return "rv"

    indexed: list[str] = []

    async def fake_index(**kwargs: object) -> None:
        indexed.append(kwargs["body"]["metadata"]["name"])

    class Memory:
        memo, indexing_memory = None, None

    class Memories:
        async def recall(self, raw_body: object, **_: object) -> Memory:
            return Memory()

    async def scenario() -> None:
        toggles = aiotoggles.ToggleSet(all)
        kind = await toggles.make_toggle(False, name="kind")
        own = await toggles.make_toggle(False, name="object")
        light = kopf_fixes._light(process)
        original, kopf_fixes.indexing.index_resource = kopf_fixes.indexing.index_resource, fake_index
        try:
            event = {"type": None, "object": {"metadata": {"name": "a", "uid": "u"}}}
            task = asyncio.ensure_future(light(indexers=None, registry=None, settings=None, memories=Memories(),
                                               memobase=None, resource=None, raw_event=event, resource_indexed=own,
                                               operator_indexed=toggles, consistency_time=None))
            for _ in range(5):
                await asyncio.sleep(0)
            assert indexed == ["a"] and calls == [] and own not in toggles._toggles, "indexed, toggle dropped"
            gc.collect()
            views = [o for o in gc.get_objects() if isinstance(o, bodies.Body) and o.get("metadata") is
                     event["object"]["metadata"]]
            assert views == [], "no Body of the waiting object is alive"
            await toggles.drop_toggle(kind)  # the last kind listed: the operator is indexed
            assert await asyncio.wait_for(task, 5) == "rv"
            assert calls == [(None, None, None)], "kopf's processing runs once, without waiting again"
            # Once indexed, an event goes straight to kopf's processing.
            assert await light(indexers=None, registry=None, settings=None, memories=Memories(), memobase=None,
                               resource=None, raw_event=event, resource_indexed=None, operator_indexed=toggles,
                               consistency_time=None) == "rv"
            assert indexed == ["a"] and len(calls) == 2
        finally:
            kopf_fixes.indexing.index_resource = original

    asyncio.run(scenario())


def test_an_indexing_failure_falls_back_to_kopf_s_own_path():
    """Anything failing in the early indexing hands the event to kopf's processing as it came (with its toggles):
    kopf's own path indexes, waits and reports, as without the fix."""
    seen: list[tuple] = []

    async def process(**kwargs: object) -> None:
        seen.append((kwargs["resource_indexed"], kwargs["operator_indexed"]))

    class Broken:
        async def recall(self, raw_body: object, **_: object) -> None:
            raise RuntimeError("kopf changed")

    async def scenario() -> None:
        toggles = aiotoggles.ToggleSet(all)
        own = await toggles.make_toggle(False, name="object")
        await kopf_fixes._light(process)(indexers=None, registry=None, settings=None, memories=Broken(),
                                         memobase=None, resource=None, raw_event={"type": None, "object": {}},
                                         resource_indexed=own, operator_indexed=toggles)
        assert seen == [(own, toggles)]

    asyncio.run(scenario())
