"""Snapshots of images the operator owns, each with its owner record in the image's metadata."""

from __future__ import annotations

from typing import Any, Callable

import rbd

from ...api.reasons import Reason
from ...reconcile.ownership import ImageOwner
from ..blocking import check_cancelled
from .connection import CephError, Connection, metadata
from .images import OWNER_KEY

# Image metadata (on the snapshotted image): the RbdSnapshot owning snapshot <name>.
SNAPSHOT_OWNER_PREFIX = "rbd-operator.io/snapshot."


class SnapshotOps(Connection):
    def snapshot(self, pool: str, image_name: str, image_owner: ImageOwner, snap: str, owner: ImageOwner,
                 decide: Callable[[str | None], Any]) -> dict:
        """Create (or adopt) snapshot `snap` of an image this operator owns for `image_owner`.

        The owner record (image metadata) is written before the snapshot is taken: a crash in
        between leaves a record of ours and no snapshot, which the re-run completes.
        `decide(record)` raises Refused when the existing snapshot is not ours to manage.
        """
        what = f"snapshot {pool}/{image_name}@{snap}"
        with self.ioctx(pool) as ioctx, self.rbd_call(what, rbd.Image, ioctx, image_name) as image:
            if not image_owner.owns(metadata(image, OWNER_KEY)):
                raise CephError(Reason.NOT_OWNED, f"image {pool}/{image_name} is not the RbdImage's; nothing was "
                                "changed")
            record = metadata(image, SNAPSHOT_OWNER_PREFIX + snap)
            exists = any(s["name"] == snap for s in image.list_snaps())
            if exists:
                decide(record)
            if record != owner.record:
                check_cancelled(what)
                self.rbd_call(what, image.metadata_set, SNAPSHOT_OWNER_PREFIX + snap, owner.record)
            if not exists:
                check_cancelled(what)
                self.rbd_call(what, image.create_snap, snap)
            info = next(s for s in image.list_snaps() if s["name"] == snap)
            created = self.rbd_call(what, image.get_snap_timestamp, info["id"])
            return {"size": int(info["size"]), "created": created, "created_now": not exists,
                    "adopted": exists and not owner.owns(record)}

    def delete_snapshot(self, pool: str, image_name: str, snap: str, owner: ImageOwner) -> list[str]:
        """Remove a snapshot of ours (unprotecting it); its dependent clones (names) block it."""
        what = f"removing {pool}/{image_name}@{snap}"
        with self.ioctx(pool) as ioctx:
            try:
                image = rbd.Image(ioctx, image_name)
            except rbd.ImageNotFound:
                return []
            with image:
                if not owner.owns(metadata(image, SNAPSHOT_OWNER_PREFIX + snap)):
                    return []  # not ours (any more): left as it is
                if any(s["name"] == snap for s in image.list_snaps()):
                    children = self._children(what, image, snap)
                    if children:
                        return children
                    check_cancelled(what)
                    if image.is_protected_snap(snap):
                        self.rbd_call(what, image.unprotect_snap, snap)
                    self.rbd_call(what, image.remove_snap, snap)
                self.rbd_call(what, image.metadata_remove, SNAPSHOT_OWNER_PREFIX + snap)
        return []

    def _children(self, what: str, image: rbd.Image, snap: str) -> list[str]:
        image.set_snap(snap)
        try:
            return [f"{c['pool']}/{c['image']}" + (" (in the trash)" if c.get("trash") else "")
                    for c in self.rbd_call(what, image.list_children2)]
        finally:
            image.set_snap(None)
