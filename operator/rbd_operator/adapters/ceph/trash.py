"""The RBD trash: which entries this operator put there and whose retention has ended (the purger,
adapters/purge.py, removes them in the background)."""

from __future__ import annotations

import time

import rados
import rbd

from ...reconcile.image_plan import ObservedImage, TrashedImage
from ...reconcile.ownership import ImageOwner
from .connection import Connection, metadata
from .images import OWNER_KEY, TRASHED_KEY


_USER_SOURCE = (0, "USER", "user")  # moved by trash_move (librbd's binding reports the number or its name)


class TrashOps(Connection):
    def expired_trash(self, pool: str, cluster: str | None) -> list[dict]:
        """Trash entries this operator moved there (for this cluster) whose retention has ended:
        [{"id", "name", "size"}]."""
        now = time.time()
        out = []
        with self.ioctx(pool) as ioctx:
            for entry in list(self.rbd_call("rbd trash ls", rbd.RBD().trash_list, ioctx)):
                end = entry.get("deferment_end_time")
                if end is None or end.timestamp() > now:
                    continue
                size = self.trashed_by_us(ioctx, entry["id"], cluster)
                if size is not None:
                    out.append({"id": entry["id"], "name": entry.get("name") or "", "size": size})
        return out

    @staticmethod
    def trashed_by_us(ioctx: rados.Ioctx, image_id: str, cluster: str | None) -> int | None:
        """The size of a trashed image this operator moved to the trash (it carries an owner record of this
        cluster and the same value as trash mark); None for anyone else's."""
        try:
            with rbd.Image(ioctx, image_id=image_id, read_only=True) as image:
                owner = image.metadata_get(OWNER_KEY)
                parsed = ImageOwner.parse(owner)
                if not owner or image.metadata_get(TRASHED_KEY) != owner or parsed is None:
                    return None
                if parsed.cluster is not None and cluster is not None and parsed.cluster != cluster:
                    return None  # another Kubernetes cluster's operator trashed it: its own to purge
                return int(image.size())
        except (KeyError, rbd.Error, rados.Error):
            return None

    def trashed_images(self, pool: str, name: str) -> tuple[TrashedImage, ...]:
        """The trash entries under the image name `name`, each read by id (read-only): what
        reconcile/image_plan.pick_trashed chooses from for spec.source.trash."""
        out = []
        with self.ioctx(pool) as ioctx:
            for entry in list(self.rbd_call("rbd trash ls", rbd.RBD().trash_list, ioctx)):
                if entry.get("name") != name:
                    continue
                try:
                    with rbd.Image(ioctx, image_id=entry["id"], read_only=True) as image:
                        observed = ObservedImage(size=int(image.size()), features=image.features(), id=entry["id"],
                                                 owner=metadata(image, OWNER_KEY), old_format=image.old_format())
                        mark = metadata(image, TRASHED_KEY)
                except (rbd.Error, rados.Error):
                    continue  # being removed by the purger (or librbd): nothing to restore
                deleted = entry.get("deletion_time")
                out.append(TrashedImage(entry["id"], name, observed, mark,
                                        deleted.timestamp() if deleted is not None else 0.0,
                                        entry.get("source", 0) in _USER_SOURCE))
        return tuple(out)
