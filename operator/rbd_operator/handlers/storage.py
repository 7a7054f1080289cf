"""RbdStorage: kopf wiring. The pass itself is converge/storage.py; the sweep of its images
converge/image.py."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api.enums import DeletionPolicy
from .. import GROUP, VERSION, metrics
from ..api.errors import OperatorError, SpecError
from ..api.reasons import EventReason, Reason
from ..api.storage import parse_storage
from ..converge import image as image_converge
from ..converge import storage as converge
from . import shard
from ..converge.outcome import Note
from .common import RESYNC_SECONDS, StatusUpdate, backoff, report, reported, settle
from .indexes import IMAGES

PLURAL = "rbdstorages"


async def _indexes(kw: dict[str, Any]) -> image_converge.Indexes:
    images = (await IMAGES.ready()).images
    return image_converge.Indexes(kw["storages"], images, kw["hypervisors"], kw["snapshots_by_key"],
                                  kw["namespaces"])


async def _converge(name: str, uid: str, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int,
                    logger: logging.Logger, kw: dict[str, Any], timer: bool = False) -> None:
    status = StatusUpdate(body, patch, timer=timer)
    try:
        await settle(uid)
        outcome = await converge.reconcile(name, uid, body, parse_storage(name, body.get("spec") or {}),
                                           kw["storages"], kw["hypervisors"], kw["namespaces"], memo.runtime.purger,
                                           logger)
    except OperatorError as exc:
        return status.error(exc, retry)
    report(status, body, outcome)
    status.flush()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, body: kopf.Body, patch: kopf.Patch, uid: str, retry: int, memo: kopf.Memo,
                    logger: logging.Logger, **kw: Any) -> None:
    async with memo.runtime.locks.hold(uid):
        await _converge(name, uid, body, patch, memo, retry, logger, kw)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@reported()
async def resume(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, retry: int,
                 memo: kopf.Memo, logger: logging.Logger, **kw: Any) -> None:
    """After a restart: converge, then re-verify every image of the storage at once."""
    async with memo.runtime.locks.hold(uid):
        await _converge(name, uid, body, patch, memo, retry, logger, kw)
    _warn(body, await converge.sweep_images(name, spec, await _indexes(kw), memo.runtime.locks.busy,
                                            memo.runtime.sweeps, logger))


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
@reported(timer=True)
async def resync(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, meta: kopf.Meta,
                 memo: kopf.Memo, logger: logging.Logger, **kw: Any) -> None:
    """Drift detection: caps or pool settings changed by hand are restored, monitors refreshed, and
    the storage's images swept."""
    locks = memo.runtime.locks
    if meta.get("deletionTimestamp") or locks.busy(uid) or shard.left(memo, uid):
        return
    async with locks.hold(uid):
        await _converge(name, uid, body, patch, memo, 0, logger, kw, timer=True)
    _warn(body, await converge.sweep_images(name, spec, await _indexes(kw), locks.busy, memo.runtime.sweeps, logger))


def _warn(body: kopf.Body, note: Note | None) -> None:
    """The sweep's Warning (converge/image.py sweep), posted on the storage."""
    if note is not None:
        kopf.event(body, type=note.type, reason=note.reason, message=note.message)


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, retry: int,
                 storages: kopf.Index, namespaces: kopf.Index, memo: kopf.Memo, logger: logging.Logger,
                 **_: Any) -> None:
    locks = memo.runtime.locks
    try:
        parsed = parse_storage(name, spec)
    except SpecError:
        return locks.release(uid)  # an invalid spec never reached Ceph
    if parsed.deletion_policy == DeletionPolicy.RETAIN:
        logger.info("deletionPolicy Retain: pool %s and %s stay in Ceph", parsed.pool.name, parsed.client.entity)
        locks.release(uid)
        return metrics.storage_gone(name)
    status = StatusUpdate(body, patch)
    async with locks.hold(uid):
        try:
            await settle(uid)
            blocking = await converge.delete(name, uid, parsed, storages, namespaces, memo.runtime.purger, logger)
        except OperatorError as exc:
            if exc.permanent:  # e.g. the admin Secret moved out of reach: keep retrying, slowly
                return status.fail(exc.reason, exc.message, min(300.0, backoff(retry)))
            return status.error(exc, retry)
    if blocking:
        message = (f"pool {parsed.pool.name} still holds {blocking['images']} image(s) and {blocking['trash']} "
                   f"trashed image(s) across {blocking['namespaces'] + 1} RBD namespace(s), and "
                   f"{blocking['objects']} RADOS object(s) besides RBD's own; empty it or set deletionPolicy: Retain")
        return status.fail(Reason.POOL_NOT_EMPTY, message, min(60.0, backoff(retry)))
    kopf.event(body, type="Normal", reason=EventReason.DELETED,
               message=f"pool {parsed.pool.name}: what this storage owned is deleted")
    locks.release(uid)
    metrics.storage_gone(name)
