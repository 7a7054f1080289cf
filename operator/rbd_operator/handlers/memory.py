"""The objects the operator holds, against its memory limit: metric `rbd_operator_objects` (by kind) and,
when the measured formula (reconcile/memory.py) nears the limit, a Warning Event `MemoryNearLimit` on the
operator's Pod and a log line. Counted from kopf's indexes once per resync interval (no API call); at the first
count and then every RBD_OPERATOR_MEMORY_TRIM_SECONDS (300) freed memory is given back to the system
(heapdump.trim; RBD_OPERATOR_MEMORY_TRIM=0 turns that off)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Mapping

import kopf

from .. import heapdump, metrics
from ..adapters import kube
from ..adapters.blocking import Pool, run_blocking
from ..api.reasons import EventReason, Kind
from ..reconcile import memory
from .common import RESYNC_SECONDS
from .indexes import IMAGES

log = logging.getLogger(__name__)
TRIM_SECONDS = 300.0


def count(images_by_namespace: Mapping[Any, Any], snapshots_by_key: Mapping[Any, Any],
          storages: Mapping[Any, Any], hypervisors: Mapping[Any, Any]) -> dict[str, int]:
    """Objects per kind in the indexes (images: one entry per image under its namespace's key)."""
    return {Kind.IMAGE: sum(len(images_by_namespace[ns]) for ns in list(images_by_namespace)),
            Kind.SNAPSHOT: len(snapshots_by_key), Kind.STORAGE: len(storages), Kind.HOST: len(hypervisors)}


class MemoryWatch:
    """Warns once per crossing of the threshold (again after the count fell below it)."""

    def __init__(self, budget: memory.Budget) -> None:
        self.budget, self.warned = budget, False

    async def check(self, counts: dict[str, int]) -> memory.Assessment:
        verdict = memory.assess(counts, self.budget)
        metrics.objects_held(counts, verdict.expected_mib * 2**20, self.budget.limit_bytes)
        if verdict.near and not self.warned:
            log.warning("memory: %s", verdict.message)
            await run_blocking(kube.pod_event, "Warning", EventReason.MEMORY_NEAR_LIMIT, verdict.message,
                               timeout=35, pool=Pool.KUBE)
        self.warned = verdict.near
        return verdict


async def _watch(watch: MemoryWatch, indexes: tuple[Mapping[Any, Any], ...], interval: float,
                 trim_seconds: float | None) -> None:
    trimmed: float | None = None
    while True:
        try:
            await watch.check(count(*indexes))
            now = time.monotonic()
            if trim_seconds is not None and (trimmed is None or now - trimmed >= trim_seconds):
                heapdump.trim()  # a full collection: ~0.16 s of the loop at 10,000 images (py-spy): not every check
                trimmed = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a count or an Event failing must not end the watch
            log.debug("memory watch: %s", type(exc).__name__)
        await asyncio.sleep(interval)


@kopf.on.startup()
async def start_memory_watch(memo: kopf.Memo, snapshots_by_key: kopf.Index, storages: kopf.Index,
                             hypervisors: kopf.Index, **_: Any) -> None:
    interval = min(RESYNC_SECONDS, float(os.environ.get("RBD_OPERATOR_MEMORY_CHECK_SECONDS", "60")))
    watch = MemoryWatch(memory.budget_from(os.environ))
    trim = os.environ.get("RBD_OPERATOR_MEMORY_TRIM", "1") != "0"
    trim_seconds = float(os.environ.get("RBD_OPERATOR_MEMORY_TRIM_SECONDS", str(TRIM_SECONDS))) if trim else None
    memo.memory_watch = asyncio.get_running_loop().create_task(
        _watch(watch, (IMAGES.by_namespace, snapshots_by_key, storages, hypervisors), interval, trim_seconds))


@kopf.on.cleanup()
async def stop_memory_watch(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "memory_watch", None)
    if task is not None:
        task.cancel()
