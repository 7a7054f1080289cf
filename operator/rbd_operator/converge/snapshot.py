"""RbdSnapshot: find the RbdImage (same namespace) and its storage -> snapshot it (or adopt it) -> status."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..adapters import ceph
from ..adapters.blocking import run_blocking
from ..adapters.ceph import Credentials
from ..adapters.namespaces import cluster_identity, namespace_info
from ..adapters.shard import SHARD
from ..api.errors import SpecError, Waiting
from ..api.reasons import ConditionType, EventReason, Reason
from ..api.snapshot import SnapshotSpec
from ..api.storage import parse_storage
from ..reconcile.ownership import ImageOwner, check_image_owner
from ..reconcile.shard import missing_image, missing_storage
from ..reconcile.tracking import by_key, uid_lookup
from .credentials import admin_credentials
from .outcome import Outcome

CEPH_TIMEOUT = 60.0


@dataclass(frozen=True)
class Target:
    pool: str
    image: str              # the image's name in Ceph
    image_owner: ImageOwner  # the RbdImage it belongs to
    creds: Credentials


async def target(namespace: str, parsed: SnapshotSpec, images: Mapping[Any, Any], storages: Mapping[Any, Any],
                 identity: str) -> Target:
    """The snapshot's RbdImage and its storage (Waiting while either is missing)."""
    entries = list(by_key(images).get((namespace, parsed.image), []) or [])
    if not entries:
        raise Waiting(Reason.IMAGE_NOT_FOUND, missing_image(namespace, parsed.image, SHARD))
    img = entries[0]
    storage_entries = list(storages.get(img["storage"], []))
    if not storage_entries:
        raise Waiting(Reason.STORAGE_NOT_FOUND, missing_storage(img["storage"], SHARD))
    try:
        storage = parse_storage(img["storage"], storage_entries[0]["spec"])
    except SpecError as exc:
        raise Waiting(Reason.STORAGE_NOT_READY, f"RbdStorage {img['storage']!r} is invalid: {exc.message}") from None
    creds = await admin_credentials(storage.monitors, storage.admin_secret)
    return Target(storage.pool.name, img["image"], ImageOwner(namespace, parsed.image, img["uid"], identity), creds)


@ceph.with_session
def in_ceph(cluster: ceph.CephCluster, where: Target, parsed: SnapshotSpec, owner: ImageOwner,
            live: Callable[[str], bool]) -> dict:
    def check(record: str | None) -> None:
        # The image is the RbdImage's (checked by cluster.snapshot): a snapshot of it needs no storage grant.
        check_image_owner(f"snapshot {where.image}@{parsed.name}", record, owner, parsed.adopt, live, True,
                          kind="RbdSnapshot")
    return cluster.snapshot(where.pool, where.image, where.image_owner, parsed.name, owner, check)


async def reconcile(name: str, namespace: str, uid: str, parsed: SnapshotSpec, images: Mapping[Any, Any],
                    storages: Mapping[Any, Any], snapshots: Mapping[Any, Any],
                    namespaces: Mapping[Any, Any]) -> Outcome:
    live = uid_lookup(snapshots)
    identity = await cluster_identity(namespaces)
    ns = await namespace_info(namespaces, namespace)
    owner = ImageOwner(namespace, name, uid, identity, ns.uid if ns else None)
    where = await target(namespace, parsed, images, storages, identity)
    info = await run_blocking(in_ceph, where.creds, where, parsed, owner, live, timeout=CEPH_TIMEOUT,
                              reason=Reason.CEPH_UNREACHABLE)
    out = Outcome()
    shown = f"{where.pool}/{where.image}@{parsed.name}"
    if info["created_now"]:
        out.note(EventReason.SNAPSHOT_CREATED, shown)
    elif info["adopted"]:
        out.note(EventReason.SNAPSHOT_ADOPTED, shown)
    created = info["created"]
    if isinstance(created, datetime.datetime):
        created = created.replace(tzinfo=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out.set(readyToUse=True, sizeBytes=info["size"], createdAt=str(created), pool=where.pool, imageName=where.image,
            snapshotName=parsed.name)
    out.cond(ConditionType.READY, True, Reason.CONVERGED, f"{shown} exists", event=False)
    return out


@ceph.with_session
def delete_in_ceph(cluster: ceph.CephCluster, where: Target, snap: str, owner: ImageOwner) -> list[str]:
    return cluster.delete_snapshot(where.pool, where.image, snap, owner)


async def delete(name: str, namespace: str, uid: str, parsed: SnapshotSpec, images: Mapping[Any, Any],
                 storages: Mapping[Any, Any], namespaces: Mapping[Any, Any]) -> tuple[Target, list[str]]:
    """Remove the snapshot if it is ours: (where, the clones that block it). Waiting when its image is gone."""
    identity = await cluster_identity(namespaces)
    where = await target(namespace, parsed, images, storages, identity)
    children = await run_blocking(delete_in_ceph, where.creds, where, parsed.name,
                                  ImageOwner(namespace, name, uid, identity), timeout=CEPH_TIMEOUT,
                                  reason=Reason.CEPH_UNREACHABLE)
    return where, children
