"""Sharding: kopf wiring (reconcile/shard.py decides; docs/scaling.md). With a shard, every list and watch of the
operator's kinds carries the shard's label selector, so the API server sends this process only its shard's
objects; objects without any shard label are named in a warning once per resync interval."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .. import GROUP
from ..adapters import shard as adapter
from ..adapters.blocking import Pool, run_blocking
from ..reconcile.shard import PLURALS, describe_unlabelled, selectors
from .common import RESYNC_SECONDS

logger = logging.getLogger(__name__)


@kopf.on.startup()
async def select_shard(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Server-side label selectors (kopf puts them in its list and watch requests) before any watch starts."""
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
