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
