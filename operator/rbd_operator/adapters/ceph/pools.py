"""Pools and the mon's view of the cluster: `osd dump`, `mon dump`, `df`, pool steps, emptiness, deletion."""

from __future__ import annotations

import errno

import rados
import rbd

from ...reconcile.actions import (ClaimPool, CreatePool, EnableApplication, InitRbdPool, PoolStep, SetPool,
                                  SetQuota)
from ...reconcile.storage_plan import POOL_CLUSTER_KEY, POOL_OWNER_KEY, ObservedPool
from .connection import Connection, classify

# Objects rbd keeps in a pool even when it holds no image.
RBD_POOL_METADATA = frozenset({
    "rbd_directory", "rbd_info", "rbd_trash", "rbd_children", "rbd_mirroring",
    "rbd_namespace", "rbd_pool_settings", "rbd_task",
})


class PoolOps(Connection):
    def pools(self) -> dict[str, ObservedPool]:
        dump = self.mon("osd dump")
        return {p["pool_name"]: ObservedPool.from_osd_dump(p) for p in dump.get("pools", [])}

    def monitors(self) -> list[dict[str, str]]:
        result = []
        for mon in self.mon("mon dump").get("mons", []):
            entry = {"name": mon["name"]}
            for addr in (mon.get("public_addrs") or {}).get("addrvec", []):
                if addr.get("type") in ("v1", "v2"):
                    entry[addr["type"]] = addr["addr"]
            result.append(entry)
        return result

    def pool_stats(self, pool: str) -> dict[str, int]:
        for entry in self.mon("df").get("pools", []):
            if entry.get("name") == pool:
                stats = entry.get("stats", {})
                return {"storedBytes": int(stats.get("stored", 0)), "maxAvailBytes": int(stats.get("max_avail", 0)),
                        "objects": int(stats.get("objects", 0))}
        return {"storedBytes": 0, "maxAvailBytes": 0, "objects": 0}

    def _mark_pool(self, pool: str, app: str, owner: str, cluster: str | None) -> None:
        self.mon("osd pool application enable", pool=pool, app=app, yes_i_really_mean_it=True)
        if cluster:  # first: a record with our uid is never read without the cluster it belongs to
            self.mon("osd pool application set", pool=pool, app=app, key=POOL_CLUSTER_KEY, value=cluster)
        self.mon("osd pool application set", pool=pool, app=app, key=POOL_OWNER_KEY, value=owner)

    def apply_pool_step(self, step: PoolStep) -> None:
        match step:
            case CreatePool():
                # Made under the staging name, marked as ours, then renamed: a crash anywhere in
                # between leaves a pool a re-run recognises as its own.
                if not step.staged:
                    self.mon("osd pool create", pool=step.staging, pg_num=step.pg_num, pgp_num=step.pg_num,
                             pool_type="replicated")
                self._mark_pool(step.staging, step.app, step.owner, step.cluster)
                self.mon("osd pool rename", srcpool=step.staging, destpool=step.target)
            case ClaimPool():  # and UpgradePoolOwner
                self._mark_pool(step.target, step.app, step.owner, step.cluster)
            case SetPool():
                extra = {"yes_i_really_mean_it": True} if step.var == "size" and step.val == "1" else {}
                self.mon("osd pool set", pool=step.target, var=step.var, val=step.val, **extra)
            case SetQuota():
                self.mon("osd pool set-quota", pool=step.target, field=step.field, val=step.val)
            case EnableApplication():
                self.mon("osd pool application enable", pool=step.target, app=step.app, yes_i_really_mean_it=True)
            case InitRbdPool():
                with self.ioctx(step.target) as ioctx:
                    self.rbd_call(f"rbd pool init {step.target}", rbd.RBD().pool_init, ioctx, False)
            case _:  # pragma: no cover - a plan holds only the steps above
                raise TypeError(f"not a pool step: {step!r}")

    def pool_contents(self, pool: str) -> dict[str, int]:
        """Images and trashed images in every RBD namespace, and RADOS objects in every namespace:
        a pool is empty when all are 0."""
        with self.ioctx(pool) as ioctx:
            namespaces = [""] + list(self.rbd_call("rbd namespace ls", rbd.RBD().namespace_list, ioctx))
            images = trash = 0
            for ns in namespaces:
                ioctx.set_namespace(ns)
                images += len(self.rbd_call("rbd ls", rbd.RBD().list, ioctx))
                trash += len(list(self.rbd_call("rbd trash ls", rbd.RBD().trash_list, ioctx)))
            ioctx.set_namespace(rados.LIBRADOS_ALL_NSPACES)
            objects = 0
            try:
                for obj in ioctx.list_objects():
                    if obj.key not in RBD_POOL_METADATA:
                        objects += 1
                        if objects > 1000:
                            break
            except rados.Error as exc:
                raise classify(exc, f"listing objects of {pool}") from None
        return {"images": images, "trash": trash, "objects": objects, "namespaces": len(namespaces) - 1}

    def delete_pool(self, pool: str) -> None:
        self.mon("osd pool delete", pool=pool, pool2=pool, yes_i_really_really_mean_it=True, ok=(errno.ENOENT,))
