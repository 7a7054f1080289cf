"""RbdSnapshot: kopf wiring. The pass itself is converge/snapshot.py."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api.enums import DeletionPolicy
from .. import GROUP, VERSION
from ..api.errors import OperatorError, SpecError, Waiting
from ..api.reasons import EventReason, Reason
from ..api.snapshot import parse_snapshot
from ..converge import snapshot as converge
from .common import StatusUpdate, backoff, report, reported, settle
from .indexes import IMAGES

PLURAL = "rbdsnapshots"


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                    retry: int, storages: kopf.Index, snapshots_by_key: kopf.Index,
                    namespaces: kopf.Index, memo: kopf.Memo, **_: Any) -> None:
    status = StatusUpdate(body, patch)
    async with memo.runtime.locks.hold(uid):
        try:
            await settle(uid)
            images = (await IMAGES.ready()).images
            outcome = await converge.reconcile(name, namespace, uid, parse_snapshot(name, spec), images, storages,
                                               snapshots_by_key, namespaces)
        except OperatorError as exc:
            return status.error(exc, retry)
    report(status, body, outcome)
    status.flush()


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                 retry: int, storages: kopf.Index, namespaces: kopf.Index, memo: kopf.Memo,
                 logger: logging.Logger, **_: Any) -> None:
    locks = memo.runtime.locks
    try:
        parsed = parse_snapshot(name, spec)
    except SpecError:
        return locks.release(uid)
    if parsed.deletion_policy == DeletionPolicy.RETAIN:
        return locks.release(uid)
    status = StatusUpdate(body, patch)
    async with locks.hold(uid):
        try:
            await settle(uid)
            images = (await IMAGES.ready()).images
            where, children = await converge.delete(name, namespace, uid, parsed, images, storages, namespaces)
        except Waiting:
            logger.warning("RbdImage %s/%s is gone: leaving snapshot %s as it is", namespace, parsed.image,
                           parsed.name)
            return locks.release(uid)
        except OperatorError as exc:
            return status.error(exc, retry)
    shown = f"{where.pool}/{where.image}@{parsed.name}"
    if children:
        return status.fail(Reason.HAS_CLONES, f"{shown} has dependent clones ({', '.join(children)}); flatten or "
                           "delete them first", min(30.0, backoff(retry)))
    kopf.event(body, type="Normal", reason=EventReason.SNAPSHOT_REMOVED, message=shown)
    locks.release(uid)
