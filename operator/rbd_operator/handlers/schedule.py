"""RbdSnapshotSchedule: kopf wiring. A short timer finds the due tick; the pass is converge/schedule.py."""

from __future__ import annotations

from typing import Any

import kopf

from .. import GROUP, VERSION
from ..api.enums import DeletionPolicy
from ..api.errors import OperatorError
from ..api.reasons import EventReason
from ..api.schedule import min_interval, parse_schedule
from ..converge import schedule as converge
from . import shard
from .common import StatusUpdate, report, reported
from .indexes import IMAGES

PLURAL = "rbdsnapshotschedules"
# How often a schedule looks for a due tick: a tick is taken at most this late (10 s; shorter only when a test
# lowers the minimum interval).
TIMER_SECONDS = max(1.0, min(10.0, min_interval() / 6))


async def _pass(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                scheduled: kopf.Index, memo: kopf.Memo, retry: int, timer: bool) -> None:
    status = StatusUpdate(body, patch, timer=timer)
    async with memo.runtime.locks.hold(uid):
        try:
            by_namespace = (await IMAGES.ready()).by_namespace
            outcome = await converge.reconcile(name, namespace, uid, parse_schedule(name, spec), by_namespace,
                                               scheduled)
        except OperatorError as exc:
            return status.error(exc, retry)
    report(status, body, outcome)
    status.flush()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                    retry: int, scheduled: kopf.Index, memo: kopf.Memo, **_: Any) -> None:
    await _pass(name, namespace, uid, body, spec, patch, scheduled, memo, retry, False)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
@reported(timer=True)
async def tick(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
               meta: kopf.Meta, scheduled: kopf.Index, memo: kopf.Memo, **_: Any) -> None:
    """Takes the due tick (idempotent: the names come from the tick) and prunes beyond keep."""
    if meta.get("deletionTimestamp") or memo.runtime.locks.busy(uid) or shard.left(memo, uid):
        return
    await _pass(name, namespace, uid, body, spec, patch, scheduled, memo, 0, True)


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                 retry: int, memo: kopf.Memo, **_: Any) -> None:
    """deletionPolicy Delete: the schedule's RbdSnapshots are deleted; Retain (the default): they lose their
    ownerReference to it, so that Kubernetes' garbage collector leaves them."""
    locks = memo.runtime.locks
    # Read as written even when the rest of the spec is invalid: anything but Delete retains.
    policy = DeletionPolicy.DELETE if spec.get("deletionPolicy") == DeletionPolicy.DELETE else DeletionPolicy.RETAIN
    async with locks.hold(uid):
        try:
            count = await converge.release(name, namespace, uid, policy)
        except OperatorError as exc:
            return StatusUpdate(body, patch).error(exc, retry)
    if count:
        done = "deleted" if policy == DeletionPolicy.DELETE else "retained (ownerReference removed)"
        kopf.event(body, type="Normal", reason=EventReason.SCHEDULE_RELEASED, message=f"{count} RbdSnapshot(s) {done}")
    locks.release(uid)
