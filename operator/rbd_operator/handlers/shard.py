"""Sharding: kopf wiring (reconcile/shard.py decides; docs/scaling.md). With a shard, every list and watch of the
operator's kinds carries the shard's label selector, so the API server sends this process only its shard's
objects; objects without any shard label are named in a warning once per resync interval.

An object relabelled to another shard leaves this shard's watch with a DELETED event, though it still exists:
kopf forgets it but keeps its timers running on the last body it had (it stops timers only on a deletion it
handles). `left` remembers such objects (until they come back), and the timers of storages, hosts and schedules
skip them, so this shard writes nothing more to an object that became another shard's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .. import GROUP, VERSION
from ..adapters import libvirt_conn
from ..adapters import shard as adapter
from ..adapters.blocking import Pool, run_blocking
from ..reconcile.shard import PLURALS, describe_unlabelled, selectors
from .common import RESYNC_SECONDS

logger = logging.getLogger(__name__)
TIMED = ("rbdstorages", "hypervisornodes", "rbdsnapshotschedules")  # the kinds with timers


def left(memo: kopf.Memo, uid: str) -> bool:
    """Whether the object left this shard (relabelled): its timers must do nothing."""
    return uid in getattr(memo, "shard_left", ())


async def _track(type: str | None, uid: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    gone: set[str] = memo.shard_left  # uids of objects with timers that left this shard (see the docstring)
    if type == "DELETED" and not meta.get("deletionTimestamp"):
        gone.add(uid)  # relabelled away: it still exists, and kopf keeps its timers
    else:
        # back in this shard (kopf made new timers for it), or really deleted: the timers check
        # deletionTimestamp themselves, and kopf stops them, so the uid is not kept (the set stays as large as
        # the objects that were relabelled away and still exist)
        gone.discard(uid)
    if type != "DELETED":
        return
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:  # a host's libvirt connection and domain watch are its shard's
        runtime.domains.forget(uid)
        libvirt_conn.connections.forget(uid)


if adapter.SHARD is not None:  # unsharded, a DELETED event is a deletion kopf has handled: no extra handler
    for _plural in TIMED:
        kopf.on.event(GROUP, VERSION, _plural, id=f"shard-left-{_plural}")(_track)


@kopf.on.startup()
async def select_shard(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Server-side label selectors (kopf puts them in its list and watch requests) before any watch starts."""
    memo.shard_left = set()
    for plural, chosen in selectors(adapter.SHARD).items():
        settings.watching.label_selectors[GROUP, plural] = chosen
    if adapter.SHARD is not None:
        logger.info("shard %s: handling only objects labelled %s", adapter.SHARD, selectors(adapter.SHARD)[PLURALS[0]])
        memo.unlabelled_scan = asyncio.create_task(_scan_unlabelled())


@kopf.on.cleanup()
async def stop_scan(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "unlabelled_scan", None)
    if task is not None:
        task.cancel()


async def _scan_unlabelled() -> None:
    """Objects that carry no shard label are handled by no shard: say so (every resync interval, only when
    there are some). Read-only: nothing is written to them."""
    while True:
        for plural in PLURALS:
            try:
                names, more = await run_blocking(adapter.unlabelled, plural, timeout=60, pool=Pool.KUBE)
            except Exception as exc:  # noqa: BLE001 - a warning that cannot be given now is given next time
                logger.debug("cannot list %s without a shard label: %s", plural, type(exc).__name__)
                continue
            if names:
                logger.warning(describe_unlabelled(plural, names, more))
        await asyncio.sleep(RESYNC_SECONDS)
