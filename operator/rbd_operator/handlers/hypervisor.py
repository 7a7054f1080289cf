"""HypervisorNode: kopf wiring. The pass itself is converge/host.py (packages: converge/packages.py;
storages' changes reaching hosts and libvirt's lifecycle events: converge/propagation.py)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api.enums import DeletionPolicy
from .. import GROUP, VERSION
from ..adapters import libvirt_conn
from ..api.errors import OperatorError
from ..api.hypervisor import parse_host
from ..api.reasons import EventReason
from ..converge import host as converge
from . import shard
from .common import RESYNC_SECONDS, StatusUpdate, backoff, report, reported, settle
from .indexes import IMAGES

PLURAL = "hypervisornodes"


async def _converge(name: str, uid: str, body: kopf.Body, labels: kopf.Labels, patch: kopf.Patch, storages: kopf.Index,
                    memo: kopf.Memo, retry: int = 0, timer: bool = False) -> None:
    update = StatusUpdate(body, patch, timer=timer)
    try:
        await settle(uid)
        spec = parse_host(name, body.get("spec") or {})
        memo.runtime.domains.track(uid, name, (await IMAGES.ready()).images, storages)
        outcome = await converge.reconcile(name, uid, spec, body, dict(labels), storages, memo.runtime.fence)
        if not memo.runtime.domains.scanned(uid):
            memo.runtime.domains.domains_changed(uid)  # domains that ran before: their images' usedBy
    except OperatorError as exc:
        for cond in converge.failure_conditions(exc):
            update.condition(cond.type, cond.ok, cond.reason, cond.message, event=cond.event, bad=cond.bad)
        return update.error(exc, retry)
    report(update, body, outcome)
    if outcome.annotations:
        patch.metadata.setdefault("annotations", {}).update(outcome.annotations)
    update.flush()
    if outcome.retry and not timer:
        raise kopf.TemporaryError(outcome.retry, delay=outcome.retry_in or backoff(retry))


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, body: kopf.Body, labels: kopf.Labels, patch: kopf.Patch, uid: str, retry: int,
                    storages: kopf.Index, memo: kopf.Memo, **_: Any) -> None:
    async with memo.runtime.locks.hold(uid):
        await _converge(name, uid, body, labels, patch, storages, memo, retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
@reported(timer=True)
async def resync(name: str, body: kopf.Body, labels: kopf.Labels, patch: kopf.Patch, uid: str, meta: kopf.Meta,
                 storages: kopf.Index, memo: kopf.Memo, **_: Any) -> None:
    """Drift, key rotation and storages that start or stop selecting this host."""
    locks = memo.runtime.locks
    if meta.get("deletionTimestamp") or locks.busy(uid) or shard.left(memo, uid):
        return
    async with locks.hold(uid):
        await _converge(name, uid, body, labels, patch, storages, memo, timer=True)


@kopf.on.event(GROUP, VERSION, "rbdstorages")
async def propagate(type: str | None, name: str, body: kopf.Body, hypervisors: kopf.Index, memo: kopf.Memo,
                    logger: logging.Logger, **_: Any) -> None:
    await memo.runtime.propagation.storage_changed(type, name, body, hypervisors, logger)


def _delete_policy(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("deletionPolicy") == DeletionPolicy.DELETE


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_delete_policy)
@reported()
async def clean(name: str, body: kopf.Body, patch: kopf.Patch, uid: str, retry: int, memo: kopf.Memo,
                logger: logging.Logger, **_: Any) -> None:
    """deletionPolicy Delete: take the operator's files and secrets off the host before the object goes."""
    update = StatusUpdate(body, patch)
    async with memo.runtime.locks.hold(uid):
        try:
            await settle(uid)
            removed = await converge.clean(uid, parse_host(name, body.get("spec") or {}), body, logger)
        except OperatorError as exc:
            # The object stays (finalizer) until the host is clean; a person may set deletionPolicy: Retain.
            return update.fail(exc.reason, f"cleaning the host before deletion: {exc.message}",
                               min(300.0, backoff(retry)))
    if removed is not None:
        kopf.event(body, type="Normal", reason=EventReason.HOST_CLEANED,
                   message="removed " + (", ".join(removed) if removed else "nothing (already clean)"))
    _forget(uid, memo)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(uid: str, memo: kopf.Memo, **_: Any) -> None:
    """deletionPolicy Retain (default): the host keeps what it has (no finalizer needed)."""
    _forget(uid, memo)


def _forget(uid: str, memo: kopf.Memo) -> None:
    memo.runtime.locks.release(uid)
    memo.runtime.domains.forget(uid)
    libvirt_conn.connections.forget(uid)
