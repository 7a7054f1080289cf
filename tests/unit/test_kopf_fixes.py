"""kopf_fixes: dropping a toggle that is gone already wakes nobody; the waiters still see every real change."""

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
        for _ in range(200):  # what every further listed object's worker does: the toggle is gone already
            await toggles.drop_toggle(a)
            await asyncio.sleep(0)  # the workers are tasks of their own: the woken ones get to run
        await asyncio.sleep(0.01)
        middle = wakeups - start
        await toggles.drop_toggle(b)  # the last one: all toggles gone, all() of nothing is True
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return middle, all(w.done() for w in waiters)

    middle, done = asyncio.run(scenario())
    assert middle <= 50, f"{middle} wake-ups for one real change (kopf's own: one per drop, 50 x 201)"
    assert done
