"""Images through librbd: what an image is (opened, or read from its header for the sweep), the image
steps of a plan, creation under a staging name, the trash move, a crashed creation's leftovers."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Callable

import rados
import rbd

from ...api.image import QOS_SETTINGS, features_to_bits
from ...api.reasons import Reason
from ...reconcile.actions import (ClaimImage, CloneImage, CreateImage, Flatten, ImageStep, ImportImage,
                                  ProtectSnapshot, Resize, RestoreImage, RevertImage, SetQos, UpdateFeatures)
from ...reconcile.image_plan import ObservedImage, ObservedSource
from ...reconcile.ownership import ImageOwner
from ...reconcile.used import measurable, whole_object_used
from .. import failpoints, importer, qemu_img
from ... import metrics
from . import rbd_raw
from .connection import CephError, Connection, classify, metadata

log = logging.getLogger(__name__)

# Image metadata: the owning RbdImage's record, and the same value once this operator moved the image
# to the trash (only such trash entries are purged).
OWNER_KEY = "rbd-operator.io/owner"
TRASHED_KEY = "rbd-operator.io/trashed-by"
# A probe image a killed process left open is looked at again after this long: the OSDs drop a dead client's
# watch after osd_client_watch_timeout (30 s by default).
PROBE_RETRY_SECONDS = 35.0
QOS_KEYS = tuple(QOS_SETTINGS.values())
SNAPSHOT_RECORD_PREFIX = "rbd-operator.io/snapshot."
MIRROR_MODE_SECONDS = 60.0  # records a clone copied from its parent: dropped


def _owned_by(tag: str | None, record: str) -> bool:
    """`tag` names the same object as `record` (an earlier release's form of the record included)."""
    mine = ImageOwner.parse(record)
    return mine is not None and mine.owns(tag)


def _parent(image: rbd.Image) -> dict | None:
    try:
        spec = image.get_parent_image_spec()
    except rbd.ImageNotFound:
        return None
    return {"pool": spec["pool_name"], "image": spec["image_name"], "snapshot": spec["snap_name"]}


def _qos(values: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k in QOS_KEYS if (v := values.get(k)) is not None and v.isdigit()}


class ImageOps(Connection):
    # -- the fast path (librbd's object steps taken directly) -----------------------------------------
    def raw_ok(self, ioctx: rados.Ioctx) -> bool:
        """Whether librbd's object steps may be taken directly on this cluster: probed once (rbd_raw.probe) on
        the first use; a layout that differs turns them off for good (metric rbd_operator_fastpath_disabled,
        `fast_path_problem` says what differed); a probe that cannot run decides nothing (librbd this time)."""
        if self.fast_path is not None and (ioctx.name in self.probes_cleared
                                           or time.monotonic() < self.probes_retry.get(ioctx.name, 0.0)):
            return self.fast_path
        with self.fast_path_lock:
            self._clear_probes(ioctx)
            if self.fast_path is None:
                try:
                    problem = rbd_raw.probe(ioctx, rbd_raw.PROBE_PREFIX + secrets.token_hex(6), OWNER_KEY)
                except (rbd.Error, rados.Error, CephError, ValueError) as exc:
                    log.warning("the fast-path probe could not run (%s): librbd's calls this time", type(exc).__name__)
                    return False
                self.fast_path, self.fast_path_problem = problem is None, problem
                metrics.fast_path(self.fsid(), disabled=problem is not None)
                if problem:
                    log.warning("fast path off on cluster %s: %s; librbd's own calls are used", self.fsid(), problem)
        return bool(self.fast_path)

    def _clear_probes(self, ioctx: rados.Ioctx) -> None:
        """Once per pool and connection (under fast_path_lock, so never this process's probe in progress): the
        probe images of a process killed mid-probe are removed (a tenant's pool keeps nothing of ours). One
        still open (the killed process's watch lasts until the OSDs time it out) is looked at again after
        PROBE_RETRY_SECONDS."""
        if ioctx.name in self.probes_cleared or time.monotonic() < self.probes_retry.get(ioctx.name, 0.0):
            return
        try:
            removed, still_open = rbd_raw.remove_stray_probes(ioctx, OWNER_KEY)
        except (rbd.Error, rados.Error) as exc:
            # Fail closed, and not for good: the pool is looked at again later (never marked cleared unread).
            self.probes_retry[ioctx.name] = time.monotonic() + PROBE_RETRY_SECONDS
            log.warning("stray probe images of pool %s not cleared (%s): looked at again in %.0f s", ioctx.name,
                        type(exc).__name__, PROBE_RETRY_SECONDS)
            return
        if still_open:
            self.probes_retry[ioctx.name] = time.monotonic() + PROBE_RETRY_SECONDS
            log.info("probe images a killed operator left in pool %s are still open (%s): looked at again in %.0f s",
                     ioctx.name, ", ".join(still_open), PROBE_RETRY_SECONDS)
        else:
            self.probes_cleared.add(ioctx.name)  # once: never a listing per call
            self.probes_retry.pop(ioctx.name, None)
        if removed:
            log.info("removed probe images a killed operator left in pool %s: %s", ioctx.name, ", ".join(removed))

    # -- observing ------------------------------------------------------------------------------------
    def observe_image(self, pool: str, name: str) -> ObservedImage | None:
        with self.ioctx(pool) as ioctx:
            if self.raw_ok(ioctx) and not rbd_raw.may_exist(ioctx, name):
                return None
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound:
                return None
            except (rbd.Error, rados.Error) as exc:
                raise classify(exc, f"opening image {pool}/{name}") from None
            with image:
                return self._observed(ioctx, pool, name, image)

    def _observed(self, ioctx: rados.Ioctx, pool: str, name: str, image: rbd.Image) -> ObservedImage | None:
        if image.old_format():  # format 1: no id, no metadata; refused by the plan (never managed)
            return ObservedImage(size=image.size(), features=0, id="", old_format=True)
        image_id = image.id()
        if self.raw_ok(ioctx) and rbd_raw.directory_id(ioctx, name) != image_id:
            # Opened through rbd_id.<name>, but the pool's directory does not list it under this name: a rename
            # (staging -> name) cut short after its first step. Not there yet: the creation path finishes it.
            log.info("image %s/%s is only half renamed into place (not in the directory)", pool, name)
            return None
        watchers = sorted({w["addr"] for w in image.watchers_list()})
        qos = _qos({k: v for k in QOS_KEYS if (v := metadata(image, f"conf_{k}")) is not None})
        return ObservedImage(size=image.size(), features=image.features(), id=image_id, parent=_parent(image),
                             watchers=watchers, owner=metadata(image, OWNER_KEY), qos=qos,
                             snapshots={s["name"]: int(s["size"]) for s in image.list_snaps()})

    def image_headers(self, pool: str, names: set[str]) -> dict[str, ObservedImage]:
        """Size, features, owner tag and parent of many images from one listing and their header objects'
        omap, read in parallel (no image is opened). The drift sweep's view; watchers are not part of it."""
        keys = rbd_raw.header_keys([OWNER_KEY, *(f"conf_{k}" for k in QOS_KEYS)])
        with self.ioctx(pool) as ioctx:
            listed = {e["id"]: e["name"] for e in self.rbd_call("rbd ls", rbd.RBD().list2, ioctx) if e["name"] in names}
            if not self.raw_ok(ioctx):
                return self._opened_headers(ioctx, pool, set(listed.values()))
            headers = rbd_raw.read_headers(ioctx, list(listed), keys)
        out: dict[str, ObservedImage] = {}
        for image_id, vals in headers.items():
            size, features = rbd_raw.decode_u64(vals.get("size", b"")), rbd_raw.decode_u64(vals.get("features", b""))
            if size is None or features is None:
                continue
            owner, flags = vals.get(f"metadata_{OWNER_KEY}"), rbd_raw.decode_u64(vals.get("flags", bytes(8)))
            qos = _qos({k: vals.get(f"metadata_conf_{k}", b"").decode(errors="replace") for k in QOS_KEYS})
            out[listed[image_id]] = ObservedImage(size=size, features=features, id=image_id, qos=qos,
                                                  parent={"present": True} if vals.get("parent") else None,
                                                  owner=owner.decode(errors="replace") if owner else None,
                                                  flags=flags)
        return out

    def image_watchers(self, pool: str, ids: dict[str, str]) -> dict[str, list[str]]:
        """Who has each image open (`ids`: name -> image id): opened read-only by id (no watch of our own),
        its header's watchers listed. The sweep's refresh of status.watchers (krbd maps and qemu-img send no
        libvirt events); an image gone meanwhile is left out."""
        out: dict[str, list[str]] = {}
        with self.ioctx(pool) as ioctx:
            for name, image_id in sorted(ids.items()):
                try:
                    with rbd.Image(ioctx, image_id=image_id, read_only=True) as image:
                        out[name] = sorted({w["addr"] for w in image.watchers_list()})
                except rbd.ImageNotFound:
                    continue
                except (rbd.Error, rados.Error) as exc:
                    raise classify(exc, f"listing the watchers of {pool}/{name}") from None
        return out

    def _opened_headers(self, ioctx: rados.Ioctx, pool: str, names: set[str]) -> dict[str, ObservedImage]:
        """The sweep's view without the fast path: every image opened read-only (slower, never blind)."""
        out = {}
        for name in sorted(names):
            try:
                with rbd.Image(ioctx, name, read_only=True) as image:
                    observed, flags = self._observed(ioctx, pool, name, image), image.flags()
            except rbd.ImageNotFound:
                continue
            except (rbd.Error, rados.Error) as exc:
                raise classify(exc, f"opening image {pool}/{name}") from None
            if observed is not None:
                out[name] = ObservedImage(observed.size, observed.features, observed.id, observed.parent and
                                          {"present": True}, [], observed.owner, observed.qos, observed.old_format,
                                          flags)
        return out

    # -- used space (status.usedBytes) ----------------------------------------------------------------------
    def object_map_stamps(self, pool: str, ids: list[str]) -> dict[str, float]:
        """The mtime of the images' object maps (written when an object comes or goes), by image id."""
        with self.ioctx(pool) as ioctx:
            return rbd_raw.object_map_stamps(ioctx, ids)

    def used_bytes(self, pool: str, names: list[str]) -> dict[str, int]:
        """What each image holds itself (its parent's data not counted), whole objects, from its fast-diff object
        map (librbd diff_iterate, whole_object); an image without a valid one, or gone, is left out."""
        out: dict[str, int] = {}
        with self.ioctx(pool) as ioctx:
            for name in names:
                try:
                    with rbd.Image(ioctx, name, read_only=True) as image:
                        if not measurable(image.features(), image.flags()):
                            continue
                        total = [0]
                        image.diff_iterate(0, image.size(), None,
                                           lambda o, n, e: total.__setitem__(0, total[0] + whole_object_used([(o, n, e)])),
                                           include_parent=False, whole_object=True)
                        out[name] = total[0]
                except rbd.ImageNotFound:
                    continue
                except (rbd.Error, rados.Error) as exc:
                    raise classify(exc, f"measuring image {pool}/{name}") from None
        return out

    def finish_rename(self, pool: str, staging: str, image_id: str) -> None:
        """Finish a rename into place killed after its second step (see rbd_raw.drop_stale_staging_id)."""
        if image_id:
            with self.ioctx(pool) as ioctx:
                rbd_raw.drop_stale_staging_id(ioctx, staging, image_id)

    def observe_source(self, pool: str, name: str, snapshot: str) -> ObservedSource:
        with self.ioctx(pool) as ioctx:
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound:
                return ObservedSource(False, False)
            with image:
                owner = metadata(image, OWNER_KEY)
                snaps = {s["name"] for s in image.list_snaps()}
                if snapshot not in snaps:
                    return ObservedSource(True, False, size=image.size(), owner=owner)
                return ObservedSource(True, True, image.is_protected_snap(snapshot), image.size(), owner=owner)

    # -- steps ----------------------------------------------------------------------------------------
    def apply_image_step(self, pool: str, step: ImageStep,
                         progress: importer.Progress | None = None) -> ObservedImage | None:
        """Carry out one step; a creation returns what it made (no second look needed)."""
        with self.ioctx(pool) as ioctx:
            match step:
                case CreateImage():
                    return self._create_staged(ioctx, pool, step, lambda staging: rbd.RBD().create(
                        ioctx, staging, step.size, order=step.order, old_format=False, features=step.features,
                        data_pool=step.data_pool))
                case CloneImage():
                    return self._create_staged(ioctx, pool, step, lambda staging: rbd.RBD().clone(
                        ioctx, step.parent, step.snapshot, ioctx, staging, features=step.features, order=step.order,
                        data_pool=step.data_pool))
                case ImportImage():
                    bound = importer.SizeBound(step.limit, step.limit_reason, step.limit_what)
                    return self._create_staged(ioctx, pool, step, lambda staging: importer.import_into(
                        ioctx, step.url, step.sha256, step.prefixes, staging, step.scratch, step.min_size, bound,
                        progress or importer.Progress(), step.features, self.qemu_cluster(), step.stall_timeout))
                case ProtectSnapshot():
                    self._protect(ioctx, pool, step)
                case RestoreImage():
                    self._restore(ioctx, pool, step)
                case _:
                    self._change(ioctx, pool, step)
        return None

    def qemu_cluster(self) -> qemu_img.Cluster:
        """This connection's cluster and credentials, as qemu-img's rbd driver is given them (files, not argv)."""
        return qemu_img.Cluster(self.creds.monitors, self.creds.user, self.creds.key,
                                tuple(sorted(self.conf.items())))

    def _protect(self, ioctx: rados.Ioctx, pool: str, step: ProtectSnapshot) -> None:
        image_name, snap = step.target.split("@", 1)
        what = f"{step.kind} {pool}/{step.target}"
        with self.rbd_call(what, rbd.Image, ioctx, image_name) as image:
            if not image.is_protected_snap(snap):
                self.rbd_call(what, image.protect_snap, snap)

    def _change(self, ioctx: rados.Ioctx, pool: str, step: ImageStep) -> None:
        """A step on an existing image (opened read-write for it)."""
        what = f"{step.kind} {pool}/{step.target}"
        with self.rbd_call(what, rbd.Image, ioctx, step.target) as image:
            match step:
                case ClaimImage():  # and UpgradeImageOwner
                    self.rbd_call(what, image.metadata_set, OWNER_KEY, step.owner)
                case Resize():
                    self.rbd_call(what, image.resize, step.size, allow_shrink=step.shrink)
                case UpdateFeatures():
                    self.rbd_call(what, image.update_features, features_to_bits(list(step.features)), step.enabled)
                case Flatten():
                    self.rbd_call(what, image.flatten)
                case SetQos():
                    for key, value in sorted(step.qos.items()):
                        self.rbd_call(what, image.config_set, key, str(value))
                case RevertImage():
                    # Planned while nobody watched it; looked at again here (our own open is one watcher).
                    if len(list(self.rbd_call(what, image.watchers_list))) > 1:
                        raise CephError(Reason.IN_USE, f"{pool}/{step.target} was opened by someone while it was "
                                        "about to be reverted; nothing was changed")
                    self.rbd_call(what, image.rollback_to_snap, step.snapshot)
                case _:  # pragma: no cover - a plan holds only the steps above
                    raise TypeError(f"not an image step: {step!r}")

    def _restore(self, ioctx: rados.Ioctx, pool: str, step: RestoreImage) -> None:
        """Tag the trashed image with its new owner, trash mark included (still in the trash: a restore cut short
        is found again by that tag, and the purger still removes it after its retention if it never comes back),
        restore it to its name, then drop the mark."""
        what = f"restoring {pool}/{step.target} from the trash"
        with self.rbd_call(what, rbd.Image, ioctx, image_id=step.image_id) as image:
            for key in (OWNER_KEY, TRASHED_KEY):
                if metadata(image, key) != step.owner:
                    self.rbd_call(what, image.metadata_set, key, step.owner)
        self.rbd_call(what, rbd.RBD().trash_restore, ioctx, step.image_id, step.target)
        with self.rbd_call(what, rbd.Image, ioctx, step.target) as image:
            if metadata(image, TRASHED_KEY) is not None:
                self.rbd_call(what, image.metadata_remove, TRASHED_KEY)

    # -- creation under a staging name ----------------------------------------------------------------
    def _create_staged(self, ioctx: rados.Ioctx, pool: str, step: CreateImage | CloneImage | ImportImage,
                       make: Callable[[str], int | None]) -> ObservedImage:
        """Make the image under its staging name (unless a crashed run did), tag it, rename it into place.
        `make(staging)` returns the size it made when the step does not know it (an import)."""
        staging, what = step.staging, f"creating {pool}/{step.target}"
        made: int | None = None
        fresh = False
        try:
            made = make(staging)
            fresh = True
            failpoints.hit("create:made")
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
                made = self.rbd_call(what, make, staging)
        except (rbd.Error, rados.Error) as exc:
            raise classify(exc, what) from None
        raw = self.raw_ok(ioctx)
        created, watched = None, False
        if raw and fresh and not isinstance(step, CloneImage):
            created = self._tag_new(ioctx, staging, step, made if made is not None else getattr(step, "size", 0))
        if created is None:
            created, watched = self._tag_opened(ioctx, pool, staging, step)
        failpoints.hit("create:tagged")
        self._rename(ioctx, pool, step, created.id, raw and not watched)
        return created

    def _tag_new(self, ioctx: rados.Ioctx, staging: str, step: CreateImage | ImportImage,
                 size: int) -> ObservedImage | None:
        """Tag an image this call just created, without opening it (rbd_raw.tag_fresh_header). None: use the
        slow path."""
        try:
            image_id = rbd_raw.tag_fresh_header(ioctx, staging, {OWNER_KEY: step.owner})
        except (rados.Error, ValueError) as exc:
            log.debug("tagging %s without opening it failed (%s); opening it", staging, type(exc).__name__)
            return None
        return ObservedImage(size=size, features=step.features, id=image_id, parent=None, owner=step.owner)

    def _tag_opened(self, ioctx: rados.Ioctx, pool: str, staging: str,
                    step: CreateImage | CloneImage | ImportImage) -> tuple[ObservedImage, bool]:
        """Tag the staged image through librbd; (what it is, whether someone else has it open)."""
        what, owner = f"tagging {pool}/{staging}", step.owner
        with self.rbd_call(what, rbd.Image, ioctx, staging) as image:
            parent_owner = step.parent_owner if isinstance(step, CloneImage) else None
            if isinstance(step, CloneImage):  # a clone got the parent's metadata: drop the records about the parent
                for key, _ in list(self.rbd_call(what, image.metadata_list)):
                    if key.startswith(SNAPSHOT_RECORD_PREFIX) or key == TRASHED_KEY:
                        self.rbd_call(what, image.metadata_remove, key)
            tag = metadata(image, OWNER_KEY)
            # librbd copies image metadata into a clone: the parent's tag is expected there.
            if tag not in (None, owner, parent_owner) and not _owned_by(tag, owner):
                raise CephError(Reason.OWNED_BY_OTHER, f"staging image {pool}/{staging} belongs to someone else")
            if tag != owner:
                self.rbd_call(what, image.metadata_set, OWNER_KEY, owner)
            watched = bool(self.rbd_call(what, image.watchers_list))
            return ObservedImage(size=image.size(), features=image.features(), id=image.id(), parent=_parent(image),
                                 owner=owner), watched

    def _rename(self, ioctx: rados.Ioctx, pool: str, step: CreateImage | CloneImage | ImportImage,
                image_id: str, raw: bool) -> None:
        """Into place: librbd's three object steps when their preconditions hold and are checked (the fast path
        is on for this cluster, nobody has the image open, no journal, the pool does not mirror, the default RBD
        namespace), librbd's own rename otherwise."""
        staging, name = step.staging, step.target
        fast = raw and not step.features & rbd.RBD_FEATURE_JOURNALING and not self._mirrored(ioctx) \
            and ioctx.get_namespace() == ""
        try:
            if not fast:
                self._rename_with_librbd(ioctx, pool, staging, name, image_id)
            else:
                rbd_raw.rename_staged(ioctx, f"renaming {pool}/{staging} to {name}", staging, name, image_id)
        except rbd_raw.NameTaken:
            raise self._appeared(ioctx, pool, staging, name) from None

    def _mirrored(self, ioctx: rados.Ioctx) -> bool:
        """The pool mirrors images (a rename there is librbd's: it updates the mirroring records). Asked of
        the pool at most once a minute per connection (an image mirrored by journal has journaling anyway)."""
        pool, now = ioctx.get_pool_name(), time.monotonic()
        known = self.mirroring.get(pool)
        if known is not None and now - known[1] < MIRROR_MODE_SECONDS:
            return known[0]
        try:
            mirrored = rbd.RBD().mirror_mode_get(ioctx) != rbd.RBD_MIRROR_MODE_DISABLED
        except (rbd.Error, rados.Error):
            return True  # cannot tell: librbd's rename, which handles either
        self.mirroring[pool] = (mirrored, now)
        return mirrored

    def _appeared(self, ioctx: rados.Ioctx, pool: str, staging: str, name: str) -> CephError:
        """Someone made the final name while ours was being created: not ours to touch; our staged image goes."""
        self.rbd_call(f"removing {pool}/{staging}", rbd.RBD().remove, ioctx, staging)
        return CephError(Reason.NOT_OWNED, f"image {name!r} appeared in {pool} while it was being created; "
                         "nothing of it was changed")

    def _rename_with_librbd(self, ioctx: rados.Ioctx, pool: str, staging: str, name: str, image_id: str) -> None:
        """librbd's rename (opens the image): for images with a journal, whose rename is a journal event."""
        # A crash after librbd's first step leaves rbd_id.<name> naming our staged image while the directory
        # still lists it as staging: that id object is ours to drop before renaming again (rename refuses an
        # existing rbd_id.<name>, and the path below would then drop the image).
        if rbd_raw.drop_dangling_id(ioctx, name, image_id):
            log.info("finishing an interrupted rename: %s/%s -> %s", pool, staging, name)
        try:
            rbd.RBD().rename(ioctx, staging, name)
        except rbd.ImageExists:
            raise rbd_raw.NameTaken(name) from None
        except (rbd.Error, rados.Error) as exc:
            raise classify(exc, f"renaming {pool}/{staging} to {name}") from None

    def remove_staged_image(self, pool: str, staging: str, owner: ImageOwner, name: str | None = None) -> bool:
        """Remove an image a crashed creation left under its staging name (only if it carries our tag or none),
        and the rbd_id.<name> a rename cut short left pointing at it."""
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, staging, read_only=True) as image:
                    tag = metadata(image, OWNER_KEY)
                    if tag is not None and not owner.owns(tag):
                        return False
                    image_id = image.id()
            except rbd.ImageNotFound:
                return False
            except (rbd.Error, rados.Error) as exc:
                raise classify(exc, f"opening {pool}/{staging}") from None
            dangling = name is not None and rbd_raw.dangling_id_object(ioctx, name, image_id)
            self.rbd_call(f"removing {pool}/{staging}", rbd.RBD().remove, ioctx, staging)
            if dangling and name is not None:
                try:
                    ioctx.remove_object(rbd_raw.ID_PREFIX + name)
                except rados.ObjectNotFound:
                    pass
            return True

    def trash_image(self, pool: str, name: str, delay: int, owner: ImageOwner) -> None:
        """Move the image to the trash if it is still ours; mark it as trashed by us first (for the purge: the
        mark repeats the owner record as it is, of this or an earlier release)."""
        what = f"moving {pool}/{name} to the trash"
        with self.ioctx(pool) as ioctx:
            try:
                with rbd.Image(ioctx, name) as image:
                    tag = metadata(image, OWNER_KEY)
                    if not owner.owns(tag):
                        raise CephError(Reason.NOT_OWNED, f"{pool}/{name} is no longer ours; left as it is")
                    image.metadata_set(TRASHED_KEY, tag)
                rbd.RBD().trash_move(ioctx, name, delay=delay)
            except rbd.ImageNotFound:
                return
            except (rbd.Error, rados.Error) as exc:
                raise classify(exc, what) from None
