"""RbdSnapshot: validate -> find the RbdImage (same namespace) and its storage -> snapshot it -> status."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

from .. import GROUP, VERSION
from ..adapters import ceph
from ..adapters.blocking import run_blocking
from ..adapters.ceph import Credentials
from ..api.errors import OperatorError, SpecError, Waiting
from ..api.snapshot import SnapshotSpec, parse_snapshot
from ..api.storage import parse_storage
from ..reconcile.ownership import ImageOwner, check_image_owner
from .image import by_key
from .namespaces import cluster_identity, namespace_info
from .common import (CEPH_TIMEOUT, StatusUpdate, admin_credentials, backoff, object_lock, release_lock, reported,
                     settle)

PLURAL = "rbdsnapshots"


@kopf.index(GROUP, VERSION, PLURAL)
async def snapshots_by_key(namespace: str, name: str, uid: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict:
    """RbdSnapshots by (namespace, name), with whether they are ready (for `spec.source.rbdSnapshot`)."""
    try:
        parsed = parse_snapshot(name, spec)
    except SpecError:
        return {(namespace, name): {"uid": uid, "ready": False}}
    return {(namespace, name): {"uid": uid, "image": parsed.image, "name": parsed.name,
                                "ready": bool(status.get("readyToUse"))}}


async def _target(namespace: str, parsed: SnapshotSpec, images: kopf.Index, storages: kopf.Index,
                  identity: str) -> tuple[str, str, ImageOwner, Credentials]:
    """(pool, image name in Ceph, the image's owner, admin credentials) of the snapshot's RbdImage."""
    entries = list(by_key(images).get((namespace, parsed.image), []))
    if not entries:
        raise Waiting("ImageNotFound", f"RbdImage {namespace}/{parsed.image} does not exist (waiting for it)")
    img = entries[0]
    storage_entries = list(storages.get(img["storage"], []))
    if not storage_entries:
        raise Waiting("StorageNotFound", f"RbdStorage {img['storage']!r} does not exist (waiting for it)")
    try:
        storage = parse_storage(img["storage"], storage_entries[0]["spec"])
    except SpecError as exc:
        raise Waiting("StorageNotReady", f"RbdStorage {img['storage']!r} is invalid: {exc.message}") from None
    creds = await admin_credentials(storage.monitors, storage.admin_secret)
    return storage.pool.name, img["image"], ImageOwner(namespace, parsed.image, img["uid"], identity), creds


@ceph.with_session
def _snapshot(cluster: ceph.CephCluster, pool: str, image: str, image_owner: ImageOwner, parsed: SnapshotSpec,
              owner: ImageOwner, live: Any) -> dict:
    def check(record: str | None) -> None:
        # The image is the RbdImage's (checked by cluster.snapshot): a snapshot of it needs no storage grant.
        check_image_owner(f"snapshot {image}@{parsed.name}", record, owner, parsed.adopt, live, True,
                          kind="RbdSnapshot")
    return cluster.snapshot(pool, image, image_owner, parsed.name, owner, parsed.adopt, check)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                    retry: int, storages: kopf.Index, images: kopf.Index, snapshots_by_key: kopf.Index,
                    namespaces: kopf.Index, logger: logging.Logger, **_: Any) -> None:
    status = StatusUpdate(body, patch)
    live = {e["uid"] for entries in list(snapshots_by_key.values()) for e in entries}.__contains__
    async with object_lock(uid):
        try:
            await settle(uid)
            parsed = parse_snapshot(name, spec)
            identity = await cluster_identity(namespaces)
            ns = await namespace_info(namespaces, namespace)
            owner = ImageOwner(namespace, name, uid, identity, ns.uid if ns else None)
            pool, image, image_owner, creds = await _target(namespace, parsed, images, storages, identity)
            info = await run_blocking(_snapshot, creds, pool, image, image_owner, parsed, owner, live,
                                      timeout=CEPH_TIMEOUT, reason="CephUnreachable")
        except OperatorError as exc:
            return status.error(exc, retry)
    if info["created_now"]:
        kopf.event(body, type="Normal", reason="SnapshotCreated", message=f"{pool}/{image}@{parsed.name}")
    created = info["created"]
    if isinstance(created, datetime.datetime):
        created = created.replace(tzinfo=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    status.set(readyToUse=True, sizeBytes=info["size"], createdAt=str(created), pool=pool, imageName=image,
               snapshotName=parsed.name)
    status.condition("Ready", True, "Converged", f"{pool}/{image}@{parsed.name} exists", event=False)
    status.flush()


@ceph.with_session
def _delete(cluster: ceph.CephCluster, pool: str, image: str, snap: str, owner: ImageOwner) -> list[str]:
    return cluster.delete_snapshot(pool, image, snap, owner)


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, namespace: str, uid: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                 retry: int, storages: kopf.Index, images: kopf.Index, namespaces: kopf.Index,
                 logger: logging.Logger, **_: Any) -> None:
    try:
        parsed = parse_snapshot(name, spec)
    except SpecError:
        release_lock(uid)
        return
    if parsed.deletion_policy == "Retain":
        release_lock(uid)
        return
    status = StatusUpdate(body, patch)
    try:
        identity = await cluster_identity(namespaces)
        pool, image, _, creds = await _target(namespace, parsed, images, storages, identity)
    except Waiting:
        logger.warning("RbdImage %s/%s is gone: leaving snapshot %s as it is", namespace, parsed.image, parsed.name)
        release_lock(uid)
        return
    except OperatorError as exc:
        return status.error(exc, retry)
    async with object_lock(uid):
        try:
            await settle(uid)
            children = await run_blocking(_delete, creds, pool, image, parsed.name,
                                          ImageOwner(namespace, name, uid, identity),
                                          timeout=CEPH_TIMEOUT, reason="CephUnreachable")
        except OperatorError as exc:
            return status.error(exc, retry)
    if children:
        return status.fail("HasClones", f"{pool}/{image}@{parsed.name} has dependent clones ({', '.join(children)}); "
                           "flatten or delete them first", min(30.0, backoff(retry)))
    kopf.event(body, type="Normal", reason="SnapshotRemoved", message=f"{pool}/{image}@{parsed.name}")
    release_lock(uid)
