"""RbdImage: validate -> find the storage (tenancy) -> converge the image through librbd -> status."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import ceph, kube
from ..adapters.blocking import check_cancelled, run_blocking
from ..adapters.ceph import CephError, Credentials
from ..api.errors import OperatorError, Refused, SpecError, Waiting
from ..api.image import ImageSpec, bits_to_features, parse_image
from ..api.storage import StorageSpec, parse_storage
from ..reconcile.image_plan import ObservedImage, plan_image
from ..reconcile.ownership import image_owner, staging_name
from ..reconcile.selector import matches_namespaces
from .common import reported, CEPH_TIMEOUT, RESYNC_SECONDS, StatusUpdate, admin_credentials, backoff, busy, object_lock, release_lock, settle

PLURAL = "rbdimages"
ACTION_REASONS = {
    "create": "Created", "clone": "Cloned", "resize": "Resized", "flatten": "Flattened",
    "update-features": "FeaturesUpdated", "protect-snapshot": "SnapshotProtected", "set-owner": "Adopted",
}


def owner_id(namespace: str, name: str, uid: str) -> str:
    return image_owner(namespace, name, uid)


@kopf.index(GROUP, VERSION, PLURAL)
def image_uids(uid: str, **_: Any) -> dict:
    """Every RbdImage's uid: an image tagged with a uid not listed here belongs to a gone object."""
    return {uid: True}


async def _storage_for(spec: ImageSpec, namespace: str | None, storages: kopf.Index, *, tenancy: bool = True,
                       deleting_ok: bool = False) -> tuple[StorageSpec, Credentials]:
    """The image's storage and its admin credentials (a storage being deleted only when `deleting_ok`).

    With `tenancy`, the storage must admit the image's namespace (its spec.imageNamespaces).
    """
    entries = list(storages.get(spec.storage, []))
    if not entries or (entries[0]["deleting"] and not deleting_ok):
        raise Waiting("StorageNotFound", f"RbdStorage {spec.storage!r} does not exist (waiting for it)")
    entry = entries[0]
    try:
        storage = parse_storage(spec.storage, entry["spec"])
    except SpecError as exc:
        raise Waiting("StorageNotReady", f"RbdStorage {spec.storage!r} is invalid: {exc.message}") from None
    if tenancy and storage.image_namespaces is not None:
        try:
            labels = await run_blocking(kube.namespace_labels, namespace, timeout=30, pool="kube")
        except ApiException as exc:  # fail closed: without the labels, no access
            raise OperatorError("ApiError", f"cannot read namespace {namespace!r}: HTTP {exc.status}") from None
        if labels is None or not matches_namespaces(storage.image_namespaces, labels):
            raise Refused("NamespaceNotAllowed", f"RbdStorage {spec.storage!r} does not admit RbdImages of namespace "
                          f"{namespace!r} (its spec.imageNamespaces). Nothing was changed")
    if (entry["status"] or {}).get("poolId") is None:
        raise Waiting("StorageNotReady", f"RbdStorage {spec.storage!r} has not created its pool yet")
    creds = await admin_credentials(storage.monitors, storage.admin_secret)
    return storage, creds


@dataclass
class ImageOutcome:
    image: ObservedImage
    done: list


@ceph.with_session
def _converge_image(cluster: ceph.CephCluster, storage: StorageSpec, spec: ImageSpec, owner: str,
                    live: Callable[[str], bool], logger: logging.Logger) -> ImageOutcome:
    pool = storage.pool.name
    observed = cluster.observe_image(pool, spec.name)
    source = None
    if observed is None and spec.source:
        source = cluster.observe_source(pool, spec.source.image, spec.source.snapshot)
    data_pool_exists = True
    if observed is None and spec.data_pool:
        data_pool_exists = spec.data_pool in cluster.pools()
    actions = plan_image(spec, observed, owner, storage.pool.quota_max_bytes or 0, source, data_pool_exists, live)
    if actions:
        logger.info("librbd, pool %s: %s", pool, "; ".join(a.describe() for a in actions))
    for action in actions:
        check_cancelled(action.describe())
        cluster.apply_image_action(pool, action)
    if actions:
        observed = cluster.observe_image(pool, spec.name)
    if observed is None:
        raise CephError("ImageNotFound", f"image {pool}/{spec.name} vanished while being converged")
    return ImageOutcome(observed, actions)


def _report_image(status: StatusUpdate, image: ObservedImage) -> None:
    status.set(sizeBytes=image.size, features=bits_to_features(image.features), imageId=image.id,
               parent=image.parent, watchers=image.watchers)


async def converge(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                   storages: kopf.Index, image_uids: kopf.Index,
                   logger: logging.Logger, retry: int = 0, timer: bool = False) -> None:
    status = StatusUpdate(body, patch, timer=timer)
    creds: Credentials | None = None
    try:
        await settle(uid)
        parsed = parse_image(name, spec)
        storage, creds = await _storage_for(parsed, namespace, storages)
        outcome = await run_blocking(_converge_image, creds, storage, parsed, owner_id(namespace, name, uid),
                                     image_uids.__contains__, logger, timeout=CEPH_TIMEOUT, reason="CephUnreachable")
    except OperatorError as exc:
        if creds and exc.reason in ("CephUnreachable", "AuthFailed"):
            ceph.forget(creds)
        return status.error(exc, retry)

    visible = [a for a in outcome.done if a.kind in ACTION_REASONS]
    if visible:  # one event per reconcile that changed something
        kopf.event(body, type="Normal", reason=ACTION_REASONS[visible[0].kind],
                   message="; ".join(a.describe() for a in visible))
    _report_image(status, outcome.image)
    status.set(pool=storage.pool.name)
    status.condition("Ready", True, "Converged", f"{storage.pool.name}/{parsed.name} matches the spec",
                     event=not visible)
    status.flush()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                    retry: int, storages: kopf.Index, image_uids: kopf.Index,
                    logger: logging.Logger, **_: Any) -> None:
    async with object_lock(uid):
        await converge(name, namespace, body, spec, patch, uid, storages, image_uids, logger, retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
@reported(timer=True)
async def resync(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                 meta: kopf.Meta, storages: kopf.Index, image_uids: kopf.Index,
                 logger: logging.Logger, **_: Any) -> None:
    if meta.get("deletionTimestamp") or busy(uid):
        return
    async with object_lock(uid):
        await converge(name, namespace, body, spec, patch, uid, storages, image_uids, logger,
                       timer=True)


@ceph.with_session
def _delete_image(cluster: ceph.CephCluster, pool: str, spec: ImageSpec, owner: str) -> ObservedImage | None:
    """Move the image to the trash if it is ours and not in use; return it when it is in use."""
    observed = cluster.observe_image(pool, spec.name)
    if observed is None:
        cluster.remove_staged_image(pool, staging_name(owner), owner)  # a creation cut short by a crash
        return None
    if observed.owner != owner:
        return None  # never ours (not adopted, or another object's): left as it is
    if observed.watchers:
        return observed
    check_cancelled(f"trashing {pool}/{spec.name}")
    cluster.trash_image(pool, spec.name, spec.trash_retention_seconds, owner)
    return None


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                 retry: int, storages: kopf.Index, logger: logging.Logger, **_: Any) -> None:
    try:
        parsed = parse_image(name, spec)
    except SpecError:
        release_lock(uid)
        return  # an invalid spec never reached Ceph
    if parsed.deletion_policy == "Retain":
        release_lock(uid)
        return
    status = StatusUpdate(body, patch)
    try:
        # A storage that is being deleted waits for its images: they must still go.
        storage, creds = await _storage_for(parsed, namespace, storages, tenancy=False, deleting_ok=True)
    except Waiting:
        logger.warning("RbdStorage %s is gone: leaving image %s in Ceph", parsed.storage, parsed.name)
        release_lock(uid)
        return
    except OperatorError as exc:
        return status.error(exc, retry)
    async with object_lock(uid):
        try:
            await settle(uid)
            in_use = await run_blocking(_delete_image, creds, storage.pool.name, parsed, owner_id(namespace, name, uid),
                                        timeout=CEPH_TIMEOUT, reason="CephUnreachable")
        except OperatorError as exc:
            return status.error(exc, retry)
    if in_use:
        status.set(watchers=in_use.watchers)
        return status.fail("InUse", f"{storage.pool.name}/{parsed.name} has watchers "
                           f"({', '.join(in_use.watchers)}); not deleting", min(30.0, backoff(retry)))
    message = (f"{storage.pool.name}/{parsed.name} moved to the RBD trash, "
               f"restorable for {parsed.trash_retention_seconds}s")
    logger.info("librbd: %s", message)
    kopf.event(body, type="Normal", reason="Trashed", message=message)
    release_lock(uid)
