"""Ceph through librados/librbd (no shelling out), with timeouts and typed errors.

Keys are handed to librados in memory; they never reach argv, logs or
exception messages.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import struct
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import rados
import rbd

from ..api.image import features_to_bits
from ..reconcile.actions import Action
from ..reconcile.image_plan import ObservedImage, ObservedSource
from ..reconcile.storage_plan import ObservedPool

log = logging.getLogger(__name__)

OWNER_KEY = "rbd-operator.io/owner"
# Objects rbd keeps in a pool even when it holds no image.
RBD_POOL_METADATA = frozenset({
    "rbd_directory", "rbd_info", "rbd_trash", "rbd_children", "rbd_mirroring",
    "rbd_namespace", "rbd_pool_settings", "rbd_task",
})
CONNECT_TIMEOUT = 10
OP_TIMEOUT = 20


class CephError(Exception):
    """A Ceph failure with a condition reason: CephUnreachable, AuthFailed, CephCommandFailed, ..."""

    def __init__(self, reason: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Credentials:
    monitors: tuple[str, ...]
    user: str
    key: str = field(repr=False)

    @property
    def cache_key(self) -> tuple:
        return self.monitors, self.user, hashlib.sha256(self.key.encode()).hexdigest()


def valid_cephx_key(key: str) -> bool:
    """Whether `key` decodes as a cephx secret (type, created, length, bytes).

    librados prints an undecodable key to stderr, whatever its log settings:
    such a key must never reach it.
    """
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) < 12:
        return False
    kind, length = struct.unpack_from("<H", raw, 0)[0], struct.unpack_from("<H", raw, 10)[0]
    return kind == 1 and length == len(raw) - 12 and length > 0


def _errno_of(exc: Exception) -> int | None:
    code = getattr(exc, "errno", None)
    return abs(code) if isinstance(code, int) else None


def _classify(exc: Exception, what: str) -> CephError:
    code = _errno_of(exc)
    if isinstance(exc, rados.PermissionDeniedError) or code in (errno.EACCES, errno.EPERM):
        return CephError("AuthFailed", f"{what}: permission denied (check the admin Secret's userID/userKey)", code)
    if isinstance(exc, rados.TimedOut) or code in (errno.ETIMEDOUT, errno.ECONNREFUSED, errno.EHOSTUNREACH):
        return CephError("CephUnreachable", f"{what}: no answer from the monitors in time", code)
    return CephError("CephCommandFailed", f"{what}: {type(exc).__name__} (errno {code})", code)


class CephCluster:
    """One librados connection, shared by all handlers that use the same credentials."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self._rados: rados.Rados | None = None
        self._lock = threading.Lock()

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
            reason = "AuthFailed" if -ret in (errno.EACCES, errno.EPERM) else "CephCommandFailed"
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

    # -- storage steps ------------------------------------------------------
    def apply_storage_action(self, action: Action) -> None:
        kind, target, a = action.kind, action.target, action.args
        if kind == "create-pool":
            self.mon("osd pool create", pool=target, pg_num=a["pg_num"], pgp_num=a["pg_num"], pool_type="replicated")
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
        elif kind == "create-client":
            self.mon("auth get-or-create", entity=target, caps=_caps_list(a["caps"]))
        elif kind == "set-caps":
            self.mon("auth caps", entity=target, caps=_caps_list(a["caps"]))
        else:  # pragma: no cover - a plan only holds the kinds above
            raise ValueError(f"unknown storage action {kind}")

    def delete_client(self, entity: str) -> None:
        self.mon("auth del", entity=entity, ok=(errno.ENOENT,))

    def pool_contents(self, pool: str) -> dict[str, int]:
        """Images, trashed images and foreign objects: a pool is empty when all are 0."""
        with self.ioctx(pool) as ioctx:
            images = self._rbd_call("rbd ls", rbd.RBD().list, ioctx)
            trash = list(self._rbd_call("rbd trash ls", rbd.RBD().trash_list, ioctx))
            objects = 0
            for obj in ioctx.list_objects():
                if obj.key not in RBD_POOL_METADATA:
                    objects += 1
                    if objects > 1000:
                        break
        return {"images": len(images), "trash": len(trash), "objects": objects}

    def delete_pool(self, pool: str) -> None:
        self.mon("osd pool delete", pool=pool, pool2=pool, yes_i_really_really_mean_it=True, ok=(errno.ENOENT,))

    def purge_expired_trash(self, pool: str) -> int:
        """Remove trashed images whose retention has ended; return how many."""
        now = time.time()
        removed = 0
        with self.ioctx(pool) as ioctx:
            for entry in list(self._rbd_call("rbd trash ls", rbd.RBD().trash_list, ioctx)):
                end = entry.get("deferment_end_time")
                if end is not None and end.timestamp() <= now:
                    try:
                        rbd.RBD().trash_remove(ioctx, entry["id"])
                        removed += 1
                    except rbd.Error as exc:
                        log.warning("could not purge trashed image %s: %s", entry.get("name"), type(exc).__name__)
        return removed

    # -- images -------------------------------------------------------------
    def _rbd_call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except rbd.ImageNotFound:
            raise CephError("ImageNotFound", f"{what}: not found", errno.ENOENT) from None
        except (rbd.Error, rados.Error) as exc:
            raise _classify(exc, what) from None

    def observe_image(self, pool: str, name: str) -> ObservedImage | None:
        with self.ioctx(pool) as ioctx:
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound:
                return None
            except (rbd.Error, rados.Error) as exc:
                raise _classify(exc, f"opening image {pool}/{name}") from None
            with image:
                try:
                    parent = image.get_parent_image_spec()
                    parent = {"pool": parent["pool_name"], "image": parent["image_name"], "snapshot": parent["snap_name"]}
                except rbd.ImageNotFound:
                    parent = None
                try:
                    owner = image.metadata_get(OWNER_KEY)
                except KeyError:
                    owner = None
                watchers = sorted({w["addr"] for w in image.watchers_list()})
                return ObservedImage(size=image.size(), features=image.features(), id=image.id(),
                                     parent=parent, watchers=watchers, owner=owner)

    def observe_source(self, pool: str, name: str, snapshot: str) -> ObservedSource:
        with self.ioctx(pool) as ioctx:
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound:
                return ObservedSource(False, False)
            with image:
                snaps = {s["name"] for s in image.list_snaps()}
                if snapshot not in snaps:
                    return ObservedSource(True, False, size=image.size())
                return ObservedSource(True, True, image.is_protected_snap(snapshot), image.size())

    def apply_image_action(self, pool: str, action: Action) -> None:
        kind, name, a = action.kind, action.target, action.args
        what = f"{kind} {pool}/{name}"
        with self.ioctx(pool) as ioctx:
            if kind == "create":
                self._rbd_call(what, rbd.RBD().create, ioctx, name, a["size"], order=a["order"],
                               old_format=False, features=a["features"], data_pool=a["data_pool"])
            elif kind == "clone":
                self._rbd_call(what, rbd.RBD().clone, ioctx, a["parent"], a["snapshot"], ioctx, name,
                               features=a["features"], order=a["order"], data_pool=a["data_pool"])
            elif kind == "protect-snapshot":
                image_name, snap = name.split("@", 1)
                with rbd.Image(ioctx, image_name) as image:
                    if not image.is_protected_snap(snap):
                        self._rbd_call(what, image.protect_snap, snap)
            else:
                with self._rbd_call(what, rbd.Image, ioctx, name) as image:
                    if kind == "set-owner":
                        self._rbd_call(what, image.metadata_set, OWNER_KEY, a["owner"])
                    elif kind == "resize":
                        self._rbd_call(what, image.resize, a["size"], allow_shrink=a["shrink"])
                    elif kind == "update-features":
                        bits = features_to_bits(a["features"])
                        self._rbd_call(what, image.update_features, bits, a["enabled"])
                    elif kind == "flatten":
                        self._rbd_call(what, image.flatten)
                    else:  # pragma: no cover
                        raise ValueError(f"unknown image action {kind}")

    def trash_image(self, pool: str, name: str, delay: int) -> None:
        with self.ioctx(pool) as ioctx:
            try:
                rbd.RBD().trash_move(ioctx, name, delay=delay)
            except rbd.ImageNotFound:
                return
            except (rbd.Error, rados.Error) as exc:
                raise _classify(exc, f"moving {pool}/{name} to the trash") from None


def _caps_list(caps: dict[str, str]) -> list[str]:
    out: list[str] = []
    for service in sorted(caps):
        out += [service, caps[service]]
    return out


_clusters: dict[tuple, CephCluster] = {}
_clusters_lock = threading.Lock()


def cluster_for(creds: Credentials) -> CephCluster:
    """The shared connection for these credentials (created lazily, connected on first use)."""
    stale = []
    with _clusters_lock:
        cluster = _clusters.get(creds.cache_key)
        if cluster is None:
            # A rotated key replaces the connection made with the old one.
            stale = [k for k in _clusters if k[:2] == creds.cache_key[:2]]
            stale = [_clusters.pop(k) for k in stale]
            cluster = _clusters[creds.cache_key] = CephCluster(creds)
    for old in stale:
        old.close()
    return cluster


def forget(creds: Credentials) -> None:
    """Drop a connection that failed, so that the next use reconnects."""
    with _clusters_lock:
        cluster = _clusters.pop(creds.cache_key, None)
    if cluster:
        cluster.close()
