"""Ceph through librados/librbd (no shelling out), with timeouts and typed errors.

Keys are handed to librados in memory; they never reach argv, logs or
exception messages.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import errno
import hashlib
import json
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import rados
import rbd

from ..api.cephx import valid_cephx_key  # noqa: F401 - re-exported
from ..api.errors import OperatorError
from ..api.image import QOS_SETTINGS, features_to_bits
from ..reconcile.actions import Action
from . import importer
from .blocking import check_cancelled
from ..reconcile.image_plan import ObservedImage, ObservedSource
from ..reconcile.ownership import ImageOwner
from ..reconcile.storage_plan import POOL_CLUSTER_KEY, POOL_OWNER_KEY, ObservedPool

log = logging.getLogger(__name__)
T = TypeVar("T")

# Image metadata: the owning RbdImage (namespace/name/uid), and the same value once this operator
# moved the image to the trash (only such trash entries are purged).
OWNER_KEY = "rbd-operator.io/owner"
TRASHED_KEY = "rbd-operator.io/trashed-by"
# mon config-key (+ entity): the RbdStorage uids owning a cephx user, JSON {"owners": [...]}.
CLIENT_OWNERS_KEY = "rbd-operator.io/clients/"
QOS_KEYS = tuple(QOS_SETTINGS.values())
# Image metadata (on the snapshotted image): the RbdSnapshot owning snapshot <name>, ns/name/uid.
SNAPSHOT_OWNER_PREFIX = "rbd-operator.io/snapshot."
# Objects rbd keeps in a pool even when it holds no image.
RBD_POOL_METADATA = frozenset({
    "rbd_directory", "rbd_info", "rbd_trash", "rbd_children", "rbd_mirroring",
    "rbd_namespace", "rbd_pool_settings", "rbd_task",
})
CONNECT_TIMEOUT = 10
OP_TIMEOUT = 20


class CephError(OperatorError):
    """A Ceph failure with a condition reason: CephUnreachable, AuthFailed, CephCommandFailed, ..."""

    def __init__(self, reason: str, message: str, code: int | None = None) -> None:
        super().__init__(reason, message)
        self.code = code


@dataclass(frozen=True)
class Credentials:
    monitors: tuple[str, ...]
    user: str
    key: str = field(repr=False)

    @property
    def cache_key(self) -> tuple:
        return self.monitors, self.user, hashlib.sha256(self.key.encode()).hexdigest()


# errnos librados answers with when no monitor (or OSD) is there to answer.
_UNREACHABLE = frozenset({errno.ETIMEDOUT, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENOTCONN,
                          errno.ESHUTDOWN, errno.ECONNRESET})


def new_cephx_key() -> str:
    """A fresh cephx secret as Ceph encodes it: type 1 (AES), created time, length 16, 16 random bytes."""
    now = time.time()
    raw = struct.pack("<HIIH", 1, int(now), int((now % 1) * 1e9), 16) + os.urandom(16)
    return base64.b64encode(raw).decode()


def _errno_of(exc: Exception) -> int | None:
    code = getattr(exc, "errno", None)
    return abs(code) if isinstance(code, int) else None


def _classify(exc: Exception, what: str) -> CephError:
    code = _errno_of(exc)
    if isinstance(exc, rados.PermissionDeniedError) or code in (errno.EACCES, errno.EPERM):
        return CephError("AuthFailed", f"{what}: permission denied (check the admin Secret's userID/userKey)", code)
    if isinstance(exc, rados.TimedOut) or code in _UNREACHABLE:
        return CephError("CephUnreachable", f"{what}: no answer from the monitors in time", code)
    return CephError("CephCommandFailed", f"{what}: {type(exc).__name__} (errno {code})", code)


class CephCluster:
    """One librados connection, shared by all handlers that use the same credentials."""

    def __init__(self, creds: Credentials, conf: dict[str, str] | None = None) -> None:
        self.creds = creds
        self.conf = dict(conf or {})  # extra librados/librbd settings of this connection
        self._rados: rados.Rados | None = None
        self._lock = threading.Lock()
        self.users = 0          # sessions in progress (counted under _clusters_lock)
        self.retired = False    # out of the cache: shut down when the last user leaves

    def retire(self) -> None:
        with _clusters_lock:
            self.retired = True
            idle = self.users == 0
        if idle:
            self.close()

    def leave(self) -> None:
        with _clusters_lock:
            self.users -= 1
            idle = self.retired and self.users == 0
        if idle:
            self.close()

    # -- connection ---------------------------------------------------------
    def _connect(self) -> rados.Rados:
        with self._lock:
            if self._rados is not None:
                return self._rados
            conf = {
                "mon_host": ",".join(self.creds.monitors),
                "key": self.creds.key,
                "client_mount_timeout": str(CONNECT_TIMEOUT),
                "rados_mon_op_timeout": str(OP_TIMEOUT),
                "rados_osd_op_timeout": str(OP_TIMEOUT),
                "log_to_stderr": "false",
                "err_to_stderr": "false",
                "log_file": "",
                "admin_socket": "",  # nothing under /var/run/ceph: the image's root filesystem is read-only
                **self.conf,
            }
            cluster = rados.Rados(rados_id=self.creds.user, conf=conf)
            try:
                cluster.connect(timeout=CONNECT_TIMEOUT)
            except rados.Error as exc:
                try:
                    cluster.shutdown()
                except Exception:  # noqa: BLE001 - best effort
                    pass
                err = _classify(exc, f"connecting to {','.join(self.creds.monitors)} as {self.creds.user}")
                if err.reason == "CephCommandFailed":
                    err = CephError("CephUnreachable", err.message, err.code)
                raise err from None
            self._rados = cluster
            return cluster

    def close(self) -> None:
        with self._lock:
            if self._rados is not None:
                try:
                    self._rados.shutdown()
                finally:
                    self._rados = None

    @property
    def rados(self) -> rados.Rados:
        return self._connect()

    def ioctx(self, pool: str) -> rados.Ioctx:
        try:
            return self.rados.open_ioctx(pool)
        except rados.ObjectNotFound:
            raise CephError("PoolNotFound", f"pool {pool!r} does not exist", errno.ENOENT) from None
        except rados.Error as exc:
            raise _classify(exc, f"opening pool {pool!r}") from None

    # -- mon commands -------------------------------------------------------
    def mon(self, prefix: str, *, ok: Iterable[int] = (), **args: Any) -> Any:
        """Run a mon command; return parsed JSON (or None). Errnos in `ok` return None."""
        cmd = {"prefix": prefix, "format": "json", **args}
        try:
            ret, out, status = self.rados.mon_command(json.dumps(cmd), b"", timeout=OP_TIMEOUT)
        except rados.Error as exc:
            raise _classify(exc, prefix) from None
        if ret < 0:
            if -ret in tuple(ok):
                return None
            reason = ("AuthFailed" if -ret in (errno.EACCES, errno.EPERM) else
                      "CephUnreachable" if -ret in _UNREACHABLE else "CephCommandFailed")
            # `status` is Ceph's own message; mon command replies never echo keys.
            raise CephError(reason, f"{prefix}: {status or errno.errorcode.get(-ret, ret)}", -ret)
        return json.loads(out) if out else None

    def fsid(self) -> str:
        return self.rados.get_fsid()

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

    def client_caps(self, entity: str) -> dict[str, str] | None:
        """The entity's caps, or None when it does not exist."""
        reply = self.mon("auth get", entity=entity, ok=(errno.ENOENT,))
        if not reply:
            return None
        return dict(reply[0].get("caps", {}))

    def client_key(self, entity: str) -> str | None:
        reply = self.mon("auth get", entity=entity, ok=(errno.ENOENT,))
        return reply[0]["key"] if reply else None

    # -- ownership records ---------------------------------------------------
    def client_owners(self, entity: str) -> list[str]:
        """RbdStorage uids recorded as owners of a cephx user (mon config-key; [] when none)."""
        try:
            ret, out, _ = self.rados.mon_command(json.dumps({"prefix": "config-key get",
                                                             "key": CLIENT_OWNERS_KEY + entity}), b"",
                                                 timeout=OP_TIMEOUT)
        except rados.Error as exc:
            raise _classify(exc, "config-key get") from None
        if ret == -errno.ENOENT:
            return []
        if ret < 0:
            raise CephError("CephCommandFailed", f"config-key get {CLIENT_OWNERS_KEY}{entity}: errno {-ret}", -ret)
        try:
            owners = json.loads(out).get("owners", [])
        except (ValueError, AttributeError):
            # Unreadable: someone else wrote it. Fail closed: nobody we know owns it.
            return ["(unreadable owner record)"]
        return [o for o in owners if isinstance(o, str)]

    def set_client_owners(self, entity: str, owners: list[str]) -> None:
        if owners:
            self.mon("config-key set", key=CLIENT_OWNERS_KEY + entity, val=json.dumps({"owners": sorted(owners)}))
        else:
            self.mon("config-key rm", key=CLIENT_OWNERS_KEY + entity, ok=(errno.ENOENT,))

    # -- storage steps ------------------------------------------------------
    def _mark_pool(self, pool: str, app: str, owner: str, cluster: str | None) -> None:
        self.mon("osd pool application enable", pool=pool, app=app, yes_i_really_mean_it=True)
        if cluster:  # first: a record with our uid is never read without the cluster it belongs to
            self.mon("osd pool application set", pool=pool, app=app, key=POOL_CLUSTER_KEY, value=cluster)
        self.mon("osd pool application set", pool=pool, app=app, key=POOL_OWNER_KEY, value=owner)

    def apply_storage_action(self, action: Action) -> None:
        kind, target, a = action.kind, action.target, action.args
        if kind == "create-pool":
            # Made under the staging name, marked as ours, then renamed: a crash anywhere in
            # between leaves a pool a re-run recognises as its own.
            staging = a["staging"]
            if not a.get("staged"):
                self.mon("osd pool create", pool=staging, pg_num=a["pg_num"], pgp_num=a["pg_num"],
                         pool_type="replicated")
            self._mark_pool(staging, a["app"], a["owner"], a.get("cluster"))
            self.mon("osd pool rename", srcpool=staging, destpool=target)
        elif kind in ("set-pool-owner", "upgrade-pool-owner"):
            self._mark_pool(target, a["app"], a["owner"], a.get("cluster"))
        elif kind == "set-pool":
            extra = {"yes_i_really_mean_it": True} if a["var"] == "size" and a["val"] == "1" else {}
            self.mon("osd pool set", pool=target, var=a["var"], val=a["val"], **extra)
        elif kind == "set-quota":
            self.mon("osd pool set-quota", pool=target, field=a["field"], val=a["val"])
        elif kind == "enable-application":
            self.mon("osd pool application enable", pool=target, app=a["app"], yes_i_really_mean_it=True)
        elif kind == "rbd-pool-init":
            with self.ioctx(target) as ioctx:
                self._rbd_call(f"rbd pool init {target}", rbd.RBD().pool_init, ioctx, False)
        elif kind in ("set-client-owners", "upgrade-client-owners"):
            self.set_client_owners(target, a["owners"])
        elif kind == "create-client":
            self.mon("auth get-or-create", entity=target, caps=_caps_list(a["caps"]))
        elif kind == "set-caps":
            self.mon("auth caps", entity=target, caps=_caps_list(a["caps"]))
        else:  # pragma: no cover - a plan only holds the kinds above
            raise ValueError(f"unknown storage action {kind}")

    def rotate_key(self, entity: str) -> None:
        """Replace the user's key in place (same caps): `auth import` of a keyring with a fresh key.

        The key is generated here and reaches the monitor only in the command's input buffer.
        """
        caps = self.client_caps(entity)
        if caps is None:
            raise CephError("CephCommandFailed", f"{entity} does not exist; nothing to rotate")
        lines = [f"[{entity}]", f"\tkey = {new_cephx_key()}"]
        lines += [f'\tcaps {service} = "{cap}"' for service, cap in sorted(caps.items())]
        try:
            ret, _, status = self.rados.mon_command(json.dumps({"prefix": "auth import"}),
                                                    ("\n".join(lines) + "\n").encode(), timeout=OP_TIMEOUT)
        except rados.Error as exc:
            raise _classify(exc, "auth import") from None
        if ret < 0:
            raise CephError("CephCommandFailed", f"auth import: {status or errno.errorcode.get(-ret, ret)}", -ret)

    def delete_client(self, entity: str) -> None:
        self.mon("auth del", entity=entity, ok=(errno.ENOENT,))
        self.set_client_owners(entity, [])

    def pool_contents(self, pool: str) -> dict[str, int]:
        """Images and trashed images in every RBD namespace, and RADOS objects in every namespace:
        a pool is empty when all are 0."""
        with self.ioctx(pool) as ioctx:
            namespaces = [""] + list(self._rbd_call("rbd namespace ls", rbd.RBD().namespace_list, ioctx))
            images = trash = 0
            for ns in namespaces:
                ioctx.set_namespace(ns)
                images += len(self._rbd_call("rbd ls", rbd.RBD().list, ioctx))
                trash += len(list(self._rbd_call("rbd trash ls", rbd.RBD().trash_list, ioctx)))
            ioctx.set_namespace(rados.LIBRADOS_ALL_NSPACES)
            objects = 0
            try:
                for obj in ioctx.list_objects():
                    if obj.key not in RBD_POOL_METADATA:
                        objects += 1
                        if objects > 1000:
                            break
            except rados.Error as exc:
                raise _classify(exc, f"listing objects of {pool}") from None
        return {"images": images, "trash": trash, "objects": objects, "namespaces": len(namespaces) - 1}

    def delete_pool(self, pool: str) -> None:
        self.mon("osd pool delete", pool=pool, pool2=pool, yes_i_really_really_mean_it=True, ok=(errno.ENOENT,))

    def expired_trash(self, pool: str, cluster: str | None) -> list[dict]:
        """Trash entries this operator moved there (for this cluster) whose retention has ended:
        [{"id", "name", "size"}]. Removing them is the purger's (adapters/purge.py), in the background."""
        now = time.time()
        out = []
        with self.ioctx(pool) as ioctx:
            for entry in list(self._rbd_call("rbd trash ls", rbd.RBD().trash_list, ioctx)):
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

    # -- images -------------------------------------------------------------
    def _rbd_call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except rbd.ImageNotFound:
            raise CephError("ImageNotFound", f"{what}: not found", errno.ENOENT) from None
        except (rbd.Error, rados.Error) as exc:
            raise _classify(exc, what) from None

    @staticmethod
    def _may_exist(ioctx: rados.Ioctx, name: str) -> bool:
        """False only when neither rbd_id.<name> (format 2) nor <name>.rbd (format 1) exists: opening
        the image would then fail with ImageNotFound. Two object stats instead of an image open, whose
        set-up costs ~25 times more CPU (what every creation used to pay to learn that its image is new).
        Any other answer (or error) leaves the decision to the open."""
        for oid in (f"rbd_id.{name}", f"{name}.rbd"):
            try:
                ioctx.stat(oid)
                return True
            except rados.ObjectNotFound:
                continue
            except rados.Error:
                return True
        return False

    @staticmethod
    def _parent(image: rbd.Image) -> dict | None:
        try:
            spec = image.get_parent_image_spec()
        except rbd.ImageNotFound:
            return None
        return {"pool": spec["pool_name"], "image": spec["image_name"], "snapshot": spec["snap_name"]}

    def observe_image(self, pool: str, name: str) -> ObservedImage | None:
        with self.ioctx(pool) as ioctx:
            if not self._may_exist(ioctx, name):
                return None
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound:
                return None
            except (rbd.Error, rados.Error) as exc:
                raise _classify(exc, f"opening image {pool}/{name}") from None
            with image:
                try:
                    image_id = image.id()
                except rbd.Error:  # an old-format (v1) image has no id and no directory entry of this kind
                    image_id = None
                if image_id and self._directory_id(ioctx, name) != image_id:
                    # Opened through rbd_id.<name>, but the pool's directory does not list it under this
                    # name: a rename (staging -> name) cut short after its first step. Not there yet:
                    # the creation path finishes the rename (see _create_staged).
                    log.info("image %s/%s is only half renamed into place (not in the directory)", pool, name)
                    return None
                parent = self._parent(image)
                watchers = sorted({w["addr"] for w in image.watchers_list()})
                qos = {k: int(v) for k in QOS_KEYS if (v := _metadata(image, f"conf_{k}")) is not None
                       and v.isdigit()}
                return ObservedImage(size=image.size(), features=image.features(), id=image.id(),
                                     parent=parent, watchers=watchers, owner=_metadata(image, OWNER_KEY), qos=qos)

    def image_headers(self, pool: str, names: set[str]) -> dict[str, ObservedImage]:
        """Size, features, owner tag and parent of many images from one listing and their header
        objects' omap, read in parallel (no image is opened: no watch, no lock, no refresh).

        The drift sweep's view; watchers are not part of it.
        """
        out: dict[str, ObservedImage] = {}
        keys = ("size", "features", "parent", f"metadata_{OWNER_KEY}", *(f"metadata_conf_{k}" for k in QOS_KEYS))
        with self.ioctx(pool) as ioctx:
            listed = [e for e in self._rbd_call("rbd ls", rbd.RBD().list2, ioctx) if e["name"] in names]
            for start in range(0, len(listed), 64):
                batch = []
                for entry in listed[start:start + 64]:
                    op = rados.ReadOpCtx()
                    op.__enter__()
                    it, _ = ioctx.get_omap_vals_by_keys(op, keys)
                    batch.append((entry, op, it, ioctx.operate_aio_read_op(op, f"rbd_header.{entry['id']}")))
                for entry, op, it, completion in batch:
                    try:
                        completion.wait_for_complete_and_cb()
                        if completion.get_return_value() < 0:
                            continue  # removed meanwhile, or being created
                        vals = dict(it)
                    finally:
                        op.__exit__(None, None, None)
                    if "size" not in vals or "features" not in vals:
                        continue
                    owner = vals.get(f"metadata_{OWNER_KEY}")
                    qos = {k: int(v) for k in QOS_KEYS if (v := vals.get(f"metadata_conf_{k}", b"").decode())
                           .isdigit()}
                    out[entry["name"]] = ObservedImage(qos=qos, 
                        size=int.from_bytes(vals["size"][:8], "little"),
                        features=int.from_bytes(vals["features"][:8], "little"), id=entry["id"],
                        parent={"present": True} if vals.get("parent") else None,
                        owner=owner.decode() if owner else None)
        return out

    def observe_source(self, pool: str, name: str, snapshot: str) -> ObservedSource:
        with self.ioctx(pool) as ioctx:
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound:
                return ObservedSource(False, False)
            with image:
                owner = _metadata(image, OWNER_KEY)
                snaps = {s["name"] for s in image.list_snaps()}
                if snapshot not in snaps:
                    return ObservedSource(True, False, size=image.size(), owner=owner)
                return ObservedSource(True, True, image.is_protected_snap(snapshot), image.size(), owner=owner)

    def _create_staged(self, ioctx: rados.Ioctx, pool: str, name: str, a: dict, make: Any) -> ObservedImage:
        """Make the image under its staging name (unless a crashed run did), tag it, rename it into place."""
        staging = a["staging"]
        what = f"creating {pool}/{name}"
        fresh = False
        try:
            make(staging)
            fresh = True
        except rbd.ImageExists:
            # Left by a crash: ours by its name (the tag below makes sure). A creation killed half-way
            # leaves a name without a header: remove that remnant and create again.
            try:
                rbd.Image(ioctx, staging, read_only=True).close()
            except rbd.ImageNotFound:
                log.info("removing the remnant of an interrupted creation: %s/%s", pool, staging)
                try:
                    rbd.RBD().remove(ioctx, staging)
                except rbd.ImageNotFound:
                    pass
                self._rbd_call(what, make, staging)
        except (rbd.Error, rados.Error) as exc:
            raise _classify(exc, what) from None
        created = self._tag_new(ioctx, staging, a) if fresh and "parent" not in a else None
        if created is None:
            created = self._tag_opened(ioctx, pool, staging, a)
        if a["features"] & rbd.RBD_FEATURE_JOURNALING:
            self._rename_with_librbd(ioctx, pool, staging, name, created.id)
        else:
            self._rename_staged(ioctx, pool, staging, name, created.id)
        return created

    def _appeared(self, ioctx: rados.Ioctx, pool: str, staging: str, name: str) -> CephError:
        """Someone made the final name while ours was being created: not ours to touch; our staged image goes."""
        self._rbd_call(f"removing {pool}/{staging}", rbd.RBD().remove, ioctx, staging)
        return CephError("NotOwned", f"image {name!r} appeared in {pool} while it was being created; "
                         "nothing of it was changed")

    def _rename_with_librbd(self, ioctx: rados.Ioctx, pool: str, staging: str, name: str, image_id: str) -> None:
        """librbd's rename (opens the image): for images with a journal, whose rename is a journal event."""
        # A crash after librbd's first step leaves rbd_id.<name> naming our staged image while the
        # directory still lists it as staging: that id object is ours to drop before renaming again
        # (rename refuses an existing rbd_id.<name>, and the path below would then drop the image).
        if self._dangling_id_object(ioctx, name, image_id):
            log.info("finishing an interrupted rename: %s/%s -> %s", pool, staging, name)
            try:
                ioctx.remove_object(f"rbd_id.{name}")
            except rados.ObjectNotFound:
                pass
        try:
            rbd.RBD().rename(ioctx, staging, name)
        except rbd.ImageExists:
            raise self._appeared(ioctx, pool, staging, name) from None
        except (rbd.Error, rados.Error) as exc:
            raise _classify(exc, f"renaming {pool}/{staging} to {name}") from None

    def _rename_staged(self, ioctx: rados.Ioctx, pool: str, staging: str, name: str, image_id: str) -> None:
        """Rename our staged (unwatched, journal-less) image into place with librbd's own three steps
        (operation::RenameRequest for format 2), without opening it: open + rename + close costs ~4 ms
        of CPU, the three object operations ~0.2 ms.

        1. rbd_id.<name> := rbd_id.<staging>'s content, created exclusively (an existing one is ours
           only if it names our image and the directory does not list <name>: a rename cut short);
        2. cls_rbd dir_rename_image(staging, name, id) on rbd_directory (one atomic step; it refuses
           when <name> is listed or <staging> is not);
        3. remove rbd_id.<staging>.
        Re-runnable after a crash at any point (observe_image treats 1-without-2 as not there yet).
        """
        what = f"renaming {pool}/{staging} to {name}"
        try:
            raw = ioctx.read(f"rbd_id.{staging}", 256)
            if _decode_str(raw) != image_id:
                raise CephError("CephCommandFailed", f"{what}: rbd_id.{staging} does not name image {image_id}")
            with rados.WriteOpCtx() as op:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                op.write_full(raw)
                ioctx.operate_write_op(op, f"rbd_id.{name}")
        except rados.ObjectExists:
            if not self._dangling_id_object(ioctx, name, image_id):
                raise self._appeared(ioctx, pool, staging, name) from None
            log.info("finishing an interrupted rename: %s/%s -> %s", pool, staging, name)
        except rados.Error as exc:
            raise _classify(exc, what) from None
        try:
            ioctx.execute("rbd_directory", "rbd", "dir_rename_image",
                          _encode_str(staging) + _encode_str(name) + _encode_str(image_id))
        except rados.ObjectExists:
            # <name> is listed in the directory under another image: drop the id object we wrote.
            if _read_id_object(ioctx, name) == image_id:
                ioctx.remove_object(f"rbd_id.{name}")
            raise self._appeared(ioctx, pool, staging, name) from None
        except rados.Error as exc:
            raise _classify(exc, what) from None
        try:
            ioctx.remove_object(f"rbd_id.{staging}")
        except rados.ObjectNotFound:
            pass
        except rados.Error as exc:  # the image is in place; the stale id object is only a leftover
            log.warning("%s: could not remove rbd_id.%s (%s)", what, staging, type(exc).__name__)

    @staticmethod
    def _directory_id(ioctx: rados.Ioctx, name: str) -> str | None:
        """The image id the pool's rbd_directory lists under `name` (cls_rbd dir_get_id); None if none."""
        try:
            _, out = ioctx.execute("rbd_directory", "rbd", "dir_get_id", _encode_str(name))
        except rados.ObjectNotFound:
            return None
        except rados.Error as exc:
            raise _classify(exc, f"reading the image directory for {name}") from None
        return _decode_str(out)

    def _dangling_id_object(self, ioctx: rados.Ioctx, name: str, image_id: str) -> bool:
        """rbd_id.<name> holds `image_id` but the directory does not list `name`: a rename cut short."""
        try:
            named = _read_id_object(ioctx, name)
        except rados.ObjectNotFound:
            return False
        except rados.Error as exc:
            raise _classify(exc, f"reading rbd_id.{name}") from None
        return named == image_id and self._directory_id(ioctx, name) is None

    def _tag_new(self, ioctx: rados.Ioctx, staging: str, a: dict) -> ObservedImage | None:
        """Tag an image this call just created, without opening it: its id from rbd_id.<name> and
        the owner tag straight into its header with cls_rbd's metadata_set (what librbd's own
        metadata_set does; a fresh image has no watcher to notify). None: use the slow path."""
        try:
            image_id = _read_id_object(ioctx, staging)
            if not image_id:
                raise ValueError("unreadable rbd_id object")
            ioctx.execute(f"rbd_header.{image_id}", "rbd", "metadata_set", _encode_map({OWNER_KEY: a["owner"]}))
        except (rados.Error, ValueError) as exc:
            log.debug("tagging %s without opening it failed (%s); opening it", staging, type(exc).__name__)
            return None
        return ObservedImage(size=a["size"], features=a["features"], id=image_id, parent=None, owner=a["owner"])

    def _tag_opened(self, ioctx: rados.Ioctx, pool: str, staging: str, a: dict) -> ObservedImage:
        what, owner = f"tagging {pool}/{staging}", a["owner"]
        with self._rbd_call(what, rbd.Image, ioctx, staging) as image:
            if "parent" in a:  # a clone got the parent's metadata: drop the records that are about the parent
                for key, _ in list(self._rbd_call(what, image.metadata_list)):
                    if key.startswith(SNAPSHOT_OWNER_PREFIX) or key == TRASHED_KEY:
                        self._rbd_call(what, image.metadata_remove, key)
            tag = _metadata(image, OWNER_KEY)
            # librbd copies image metadata into a clone: the parent's tag is expected there.
            if tag not in (None, owner, a.get("parent_owner")) and not _owned_by(tag, owner):
                raise CephError("OwnedByOther", f"staging image {pool}/{staging} belongs to someone else")
            if tag != owner:
                self._rbd_call(what, image.metadata_set, OWNER_KEY, owner)
            return ObservedImage(size=image.size(), features=image.features(), id=image.id(),
                                 parent=self._parent(image), owner=owner)

    def apply_image_action(self, pool: str, action: Action,
                           progress: "importer.Progress | None" = None) -> ObservedImage | None:
        """Carry out one step; `create` and `clone` return what they made (no second look needed)."""
        kind, name, a = action.kind, action.target, action.args
        what = f"{kind} {pool}/{name}"
        with self.ioctx(pool) as ioctx:
            if kind == "create":
                return self._create_staged(ioctx, pool, name, a, lambda staging: rbd.RBD().create(
                    ioctx, staging, a["size"], order=a["order"], old_format=False, features=a["features"],
                    data_pool=a["data_pool"]))
            elif kind == "import":
                def fill(staging: str) -> None:
                    bound = importer.SizeBound(a["limit"], a.get("limit_reason") or "SizeExceedsQuota",
                                               a.get("limit_what") or "the pool quota")
                    a["size"] = importer.import_into(ioctx, a["url"], a["sha256"], tuple(a["prefixes"]), staging,
                                                     a["scratch"], a["min_size"], bound, progress or
                                                     importer.Progress(), a["features"])
                return self._create_staged(ioctx, pool, name, a, fill)
            elif kind == "clone":
                return self._create_staged(ioctx, pool, name, a, lambda staging: rbd.RBD().clone(
                    ioctx, a["parent"], a["snapshot"], ioctx, staging, features=a["features"], order=a["order"],
                    data_pool=a["data_pool"]))
            elif kind == "protect-snapshot":
                image_name, snap = name.split("@", 1)
                with self._rbd_call(what, rbd.Image, ioctx, image_name) as image:
                    if not image.is_protected_snap(snap):
                        self._rbd_call(what, image.protect_snap, snap)
            else:
                with self._rbd_call(what, rbd.Image, ioctx, name) as image:
                    if kind in ("set-owner", "upgrade-owner"):
                        self._rbd_call(what, image.metadata_set, OWNER_KEY, a["owner"])
                    elif kind == "resize":
                        self._rbd_call(what, image.resize, a["size"], allow_shrink=a["shrink"])
                    elif kind == "update-features":
                        bits = features_to_bits(a["features"])
                        self._rbd_call(what, image.update_features, bits, a["enabled"])
                    elif kind == "flatten":
                        self._rbd_call(what, image.flatten)
                    elif kind == "set-qos":
                        for key, value in sorted(a["qos"].items()):
                            self._rbd_call(what, image.config_set, key, str(value))
                    else:  # pragma: no cover
                        raise ValueError(f"unknown image action {kind}")
        return None

    def remove_staged_image(self, pool: str, staging: str, owner: ImageOwner, name: str | None = None) -> bool:
        """Remove an image a crashed creation left under its staging name (only if it carries our tag or none),
        and the rbd_id.<name> a rename cut short left pointing at it."""
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, staging, read_only=True) as image:
                    tag = _metadata(image, OWNER_KEY)
                    if tag is not None and not owner.owns(tag):
                        return False
                    image_id = image.id()
            except rbd.ImageNotFound:
                return False
            except (rbd.Error, rados.Error) as exc:
                raise _classify(exc, f"opening {pool}/{staging}") from None
            dangling = name is not None and self._dangling_id_object(ioctx, name, image_id)
            self._rbd_call(f"removing {pool}/{staging}", rbd.RBD().remove, ioctx, staging)
            if dangling:
                try:
                    ioctx.remove_object(f"rbd_id.{name}")
                except rados.ObjectNotFound:
                    pass
            return True

    # -- snapshots ----------------------------------------------------------
    def snapshot(self, pool: str, image_name: str, image_owner: ImageOwner, snap: str, owner: ImageOwner,
                 adopt: bool, decide: Any) -> dict:
        """Create (or adopt) snapshot `snap` of an image this operator owns for `image_owner`.

        The owner record (image metadata) is written before the snapshot is taken: a crash in
        between leaves a record of ours and no snapshot, which the re-run completes.
        `decide(record)` raises Refused when the existing snapshot is not ours to manage.
        """
        what = f"snapshot {pool}/{image_name}@{snap}"
        with self.ioctx(pool) as ioctx, self._rbd_call(what, rbd.Image, ioctx, image_name) as image:
            if not image_owner.owns(_metadata(image, OWNER_KEY)):
                raise CephError("NotOwned", f"image {pool}/{image_name} is not the RbdImage's; nothing was changed")
            record = _metadata(image, SNAPSHOT_OWNER_PREFIX + snap)
            exists = any(s["name"] == snap for s in image.list_snaps())
            if exists:
                decide(record)
            if record != owner.record:
                check_cancelled(what)
                self._rbd_call(what, image.metadata_set, SNAPSHOT_OWNER_PREFIX + snap, owner.record)
            if not exists:
                check_cancelled(what)
                self._rbd_call(what, image.create_snap, snap)
            info = next(s for s in image.list_snaps() if s["name"] == snap)
            created = self._rbd_call(what, image.get_snap_timestamp, info["id"])
            return {"size": int(info["size"]), "created": created, "created_now": not exists}

    def delete_snapshot(self, pool: str, image_name: str, snap: str, owner: ImageOwner) -> list[str]:
        """Remove a snapshot of ours (unprotecting it); its dependent clones (names) block it."""
        what = f"removing {pool}/{image_name}@{snap}"
        with self.ioctx(pool) as ioctx:
            try:
                image = rbd.Image(ioctx, image_name)
            except rbd.ImageNotFound:
                return []
            with image:
                if not owner.owns(_metadata(image, SNAPSHOT_OWNER_PREFIX + snap)):
                    return []  # not ours (any more): left as it is
                if any(s["name"] == snap for s in image.list_snaps()):
                    image.set_snap(snap)
                    children = [f"{c['pool']}/{c['image']}" + (" (in the trash)" if c.get("trash") else "")
                                for c in self._rbd_call(what, image.list_children2)]
                    image.set_snap(None)
                    if children:
                        return children
                    check_cancelled(what)
                    if image.is_protected_snap(snap):
                        self._rbd_call(what, image.unprotect_snap, snap)
                    self._rbd_call(what, image.remove_snap, snap)
                self._rbd_call(what, image.metadata_remove, SNAPSHOT_OWNER_PREFIX + snap)
        return []

    def trash_image(self, pool: str, name: str, delay: int, owner: ImageOwner) -> None:
        """Move the image to the trash if it is still ours; mark it as trashed by us first (for the purge:
        the mark repeats the owner record as it is, of this or an earlier release)."""
        what = f"moving {pool}/{name} to the trash"
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name) as image:
                    tag = _metadata(image, OWNER_KEY)
                    if not owner.owns(tag):
                        raise CephError("NotOwned", f"{pool}/{name} is no longer ours; left as it is")
                    image.metadata_set(TRASHED_KEY, tag)
                rbd.RBD().trash_move(ioctx, name, delay=delay)
            except rbd.ImageNotFound:
                return
            except (rbd.Error, rados.Error) as exc:
                raise _classify(exc, what) from None


def _encode_str(value: str) -> bytes:
    """Ceph's encoding of a std::string: u32 little-endian length, then the bytes."""
    data = value.encode()
    return len(data).to_bytes(4, "little") + data


def _read_id_object(ioctx: rados.Ioctx, name: str) -> str | None:
    """The image id stored in rbd_id.<name> (None if undecodable; rados errors propagate)."""
    return _decode_str(ioctx.read(f"rbd_id.{name}", 256))


def _decode_str(raw: bytes) -> str | None:
    if len(raw) < 4:
        return None
    length = int.from_bytes(raw[:4], "little")
    if len(raw) < 4 + length:
        return None
    try:
        return raw[4:4 + length].decode()
    except UnicodeDecodeError:
        return None


def _encode_map(values: dict[str, str]) -> bytes:
    """Ceph's encoding of a map<string, bufferlist> (cls_rbd metadata_set's argument)."""
    out = bytearray(len(values).to_bytes(4, "little"))
    for key, value in values.items():
        for part in (key.encode(), value.encode()):
            out += len(part).to_bytes(4, "little") + part
    return bytes(out)


def _owned_by(tag: str | None, record: str) -> bool:
    """`tag` names the same object as `record` (an earlier release's form of the record included)."""
    mine = ImageOwner.parse(record)
    return mine is not None and mine.owns(tag)


def _metadata(image: rbd.Image, key: str) -> str | None:
    try:
        return image.metadata_get(key)
    except KeyError:
        return None


def _caps_list(caps: dict[str, str]) -> list[str]:
    out: list[str] = []
    for service in sorted(caps):
        out += [service, caps[service]]
    return out


_clusters: dict[tuple, CephCluster] = {}
_clusters_lock = threading.Lock()


@contextlib.contextmanager
def session(creds: Credentials) -> Iterator[CephCluster]:
    """The shared connection for these credentials, held for the duration of the block.

    A connection retired meanwhile (forget, a rotated key) is shut down only when its last user
    leaves: never under a thread still using it.
    """
    stale: list[CephCluster] = []
    with _clusters_lock:
        cluster = _clusters.get(creds.cache_key)
        if cluster is None:
            # A rotated key replaces the connection made with the old one.
            stale = [_clusters.pop(k) for k in [k for k in _clusters if k[:2] == creds.cache_key[:2]]]
            cluster = _clusters[creds.cache_key] = CephCluster(creds)
        cluster.users += 1
    for old in stale:
        old.retire()
    try:
        yield cluster
    finally:
        cluster.leave()


def with_session(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate `fn(cluster, ...)` to be called as `fn(creds, ...)` within a session."""
    @functools.wraps(fn)
    def call(creds: Credentials, *args: Any, **kwargs: Any) -> T:
        with session(creds) as cluster:
            return fn(cluster, *args, **kwargs)
    return call


def forget(creds: Credentials) -> None:
    """Drop a connection that failed, so that the next use reconnects (once its users are done)."""
    with _clusters_lock:
        cluster = _clusters.pop(creds.cache_key, None)
    if cluster:
        cluster.retire()
