"""RbdImage: kopf wiring. The pass itself is converge/image.py."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api.enums import DeletionPolicy
from .. import GROUP, VERSION, kopf_fixes
from ..api.errors import OperatorError, SpecError, Waiting
from ..api.image import parse_image
from ..api.reasons import EventReason, Reason
from ..converge import image as converge
from .common import StatusUpdate, backoff, report, reported, settle
from .indexes import IMAGES

PLURAL = "rbdimages"


async def _indexes(kw: dict[str, Any]) -> converge.Indexes:
    images = (await IMAGES.ready()).images
    return converge.Indexes(kw["storages"], images, kw["hypervisors"], kw["snapshots_by_key"], kw["namespaces"])


# No resume handler and no timer per image: each storage's sweep re-verifies its images (after a
# restart too), so that thousands of idle images cost one pool listing per interval, not a reconcile each.
# So at a start kopf has nothing to do for an image handled before and unchanged since: such images are not
# handed to kopf at all in the first listing (kopf_fixes 5; the RbdImage indexes still get every one). Any
# other handler for RbdImages (resume, event, timer, a filter) makes kopf see every image again (logged).
kopf_fixes.quiet_first_listing(GROUP, PLURAL)


@kopf.on.startup()
def quiet_image_listing(settings: kopf.OperatorSettings, **_: Any) -> None:
    kopf_fixes.arm_quiet(settings)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, namespace: str, body: kopf.Body, patch: kopf.Patch, uid: str, retry: int,
                    memo: kopf.Memo, logger: logging.Logger, **kw: Any) -> None:
    status = StatusUpdate(body, patch)
    async with memo.runtime.locks.hold(uid):
        try:
            await settle(uid)
            outcome = await converge.reconcile(name, namespace, uid, body, await _indexes(kw), logger, memo.runtime.domains)
        except OperatorError as exc:
            return status.error(exc, retry)
    report(status, body, outcome)
    status.flush()
    if outcome.retry:  # a running guest's disk still to grow
        raise kopf.TemporaryError(outcome.retry, delay=outcome.retry_in or backoff(retry))


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, namespace: str, body: kopf.Body, patch: kopf.Patch, uid: str, retry: int,
                 memo: kopf.Memo, logger: logging.Logger, **kw: Any) -> None:
    locks = memo.runtime.locks
    try:
        parsed = parse_image(name, body.get("spec") or {})
    except SpecError:
        return locks.release(uid)  # an invalid spec never reached Ceph
    if parsed.deletion_policy == DeletionPolicy.RETAIN:
        return locks.release(uid)
    status = StatusUpdate(body, patch)
    async with locks.hold(uid):
        try:
            await settle(uid)
            done = await converge.delete(parsed, name, namespace, uid, await _indexes(kw))
        except Waiting:  # the storage is gone (or never made its pool): nothing of the image to delete
            logger.warning("RbdStorage %s is gone: leaving image %s in Ceph", parsed.storage, parsed.name)
            return locks.release(uid)
        except OperatorError as exc:
            return status.error(exc, retry)
    if done.in_use is not None:
        report(status, body, done.in_use)
        return status.fail(Reason.IN_USE, done.waiting, min(30.0, backoff(retry)))
    logger.info("librbd: %s", done.message)
    kopf.event(body, type="Normal", reason=EventReason.TRASHED, message=done.message)
    locks.release(uid)
