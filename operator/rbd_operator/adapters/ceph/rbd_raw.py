"""librbd's own object steps, taken by the operator itself where opening an image would cost ~25 times
more (format 2 images; see operation::RenameRequest and cls_rbd in Ceph's source):

- the image id from `rbd_id.<name>` (an encoded string), and the pool's `rbd_directory` (cls_rbd
  `dir_get_id`, `dir_rename_image`);
- a rename in three object operations (`rename_staged`);
- an owner tag written straight into a fresh image's header (cls_rbd `metadata_set`);
- an image's header read from its omap (`size`, `features`, `flags`, `parent`, `metadata_*`) without a watch;
- the mtime of images' object maps (`rbd_object_map.<id>`: written when an object comes or goes).

Encoding (Ceph's denc): a std::string is a u32 little-endian length and the bytes; a
map<string, bufferlist> a u32 count and the pairs; size and features are u64 little-endian.
tests/unit/test_rbd_raw.py checks each encoder and decoder against bytes captured from a real cluster.
"""

from __future__ import annotations

import logging
import re
import time
from enum import StrEnum
from typing import Callable, Iterable, Mapping

import rados
import rbd

from ...api.reasons import Reason
from .. import failpoints
from .connection import CephError, classify

log = logging.getLogger(__name__)
ID_PREFIX = "rbd_id."
HEADER_PREFIX = "rbd_header."
DIRECTORY = "rbd_directory"
ID_MAX = 256  # an rbd_id object holds a short encoded string


# -- encoding ---------------------------------------------------------------------------------------
def encode_str(value: str) -> bytes:
    """Ceph's encoding of a std::string: u32 little-endian length, then the bytes."""
    data = value.encode()
    return len(data).to_bytes(4, "little") + data


def decode_str(raw: bytes) -> str | None:
    """The string `encode_str` made (None if the bytes are not one: short, cut, or not UTF-8)."""
    if len(raw) < 4:
        return None
    length = int.from_bytes(raw[:4], "little")
    if len(raw) < 4 + length:
        return None
    try:
        return raw[4:4 + length].decode()
    except UnicodeDecodeError:
        return None


def encode_map(values: Mapping[str, str]) -> bytes:
    """Ceph's encoding of a map<string, bufferlist> (cls_rbd metadata_set's argument)."""
    out = bytearray(len(values).to_bytes(4, "little"))
    for key, value in values.items():
        for part in (key.encode(), value.encode()):
            out += len(part).to_bytes(4, "little") + part
    return bytes(out)


def decode_u64(raw: bytes) -> int | None:
    """A header's `size` or `features` omap value (u64 little-endian); None if it is not 8 bytes or more."""
    return int.from_bytes(raw[:8], "little") if len(raw) >= 8 else None


# -- ids and the directory --------------------------------------------------------------------------
def read_id_object(ioctx: rados.Ioctx, name: str) -> str | None:
    """The image id stored in rbd_id.<name> (None if undecodable; rados errors propagate)."""
    return decode_str(ioctx.read(ID_PREFIX + name, ID_MAX))


def directory_id(ioctx: rados.Ioctx, name: str) -> str | None:
    """The image id the pool's rbd_directory lists under `name` (cls_rbd dir_get_id); None if none."""
    try:
        _, out = ioctx.execute(DIRECTORY, "rbd", "dir_get_id", encode_str(name))
    except rados.ObjectNotFound:
        return None
    except rados.Error as exc:
        raise classify(exc, f"reading the image directory for {name}") from None
    return decode_str(out)


def dangling_id_object(ioctx: rados.Ioctx, name: str, image_id: str) -> bool:
    """rbd_id.<name> holds `image_id` but the directory does not list `name`: a rename cut short."""
    try:
        named = read_id_object(ioctx, name)
    except rados.ObjectNotFound:
        return False
    except rados.Error as exc:
        raise classify(exc, f"reading rbd_id.{name}") from None
    return named == image_id and directory_id(ioctx, name) is None


def may_exist(ioctx: rados.Ioctx, name: str) -> bool:
    """False only when neither rbd_id.<name> (format 2) nor <name>.rbd (format 1) exists: opening the image
    would then fail with ImageNotFound. Two object stats instead of an image open, whose set-up costs ~25
    times more CPU. Any other answer (or error) leaves the decision to the open."""
    for oid in (ID_PREFIX + name, f"{name}.rbd"):
        try:
            ioctx.stat(oid)
            return True
        except rados.ObjectNotFound:
            continue
        except rados.Error:
            return True
    return False


class NameTaken(Exception):
    """Someone else made the final name while ours was being created (the caller drops the staged image)."""


def rename_staged(ioctx: rados.Ioctx, what: str, staging: str, name: str, image_id: str, *,
                  crash_points: bool = True) -> None:
    """Rename our staged (unwatched, journal-less) image into place with librbd's own three steps
    (operation::RenameRequest for format 2), without opening it: open + rename + close costs ~4 ms
    of CPU, the three object operations ~0.2 ms.

    1. rbd_id.<name> := rbd_id.<staging>'s content, created exclusively (an existing one is ours
       only if it names our image and the directory does not list <name>: a rename cut short);
    2. cls_rbd dir_rename_image(staging, name, id) on rbd_directory (one atomic step; it refuses
       when <name> is listed or <staging> is not);
    3. remove rbd_id.<staging>.
    Re-runnable after a crash at any point (observe_image treats 1-without-2 as not there yet).
    Raises NameTaken when someone else holds <name>.
    """
    _write_final_id(ioctx, what, staging, name, image_id)
    if crash_points:
        failpoints.hit("rename:id-written")
    try:
        ioctx.execute(DIRECTORY, "rbd", "dir_rename_image", encode_str(staging) + encode_str(name) + encode_str(image_id))
    except rados.ObjectExists:
        # <name> is listed in the directory under another image: drop the id object we wrote.
        if read_id_object(ioctx, name) == image_id:
            ioctx.remove_object(ID_PREFIX + name)
        raise NameTaken(name) from None
    except rados.Error as exc:
        raise classify(exc, what) from None
    if crash_points:
        failpoints.hit("rename:listed")
    try:
        ioctx.remove_object(ID_PREFIX + staging)
    except rados.ObjectNotFound:
        pass
    except rados.Error as exc:  # the image is in place; the stale id object is only a leftover
        log.warning("%s: could not remove rbd_id.%s (%s)", what, staging, type(exc).__name__)


def _write_final_id(ioctx: rados.Ioctx, what: str, staging: str, name: str, image_id: str) -> None:
    """Step 1 of rename_staged: rbd_id.<name>, exclusively (or ours already, from a rename cut short)."""
    try:
        raw = ioctx.read(ID_PREFIX + staging, ID_MAX)
        if decode_str(raw) != image_id:
            raise CephError(Reason.CEPH_COMMAND_FAILED, f"{what}: rbd_id.{staging} does not name image {image_id}")
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            op.write_full(raw)
            ioctx.operate_write_op(op, ID_PREFIX + name)
    except rados.ObjectExists:
        if not dangling_id_object(ioctx, name, image_id):
            raise NameTaken(name) from None
        log.info("finishing an interrupted rename: %s -> %s", staging, name)
    except rados.Error as exc:
        raise classify(exc, what) from None


def drop_stale_staging_id(ioctx: rados.Ioctx, staging: str, image_id: str) -> bool:
    """A rename killed after its second step leaves rbd_id.<staging> naming the image now in place (librbd
    would still open it under that name, and the pool would never count as empty): finish step 3."""
    try:
        if read_id_object(ioctx, staging) != image_id or directory_id(ioctx, staging) is not None:
            return False
        ioctx.remove_object(ID_PREFIX + staging)
    except rados.ObjectNotFound:
        return False
    except rados.Error as exc:
        raise classify(exc, f"finishing the rename of {staging}") from None
    log.info("finished an interrupted rename: removed rbd_id.%s", staging)
    return True


def drop_dangling_id(ioctx: rados.Ioctx, name: str, image_id: str) -> bool:
    """Remove rbd_id.<name> if a rename cut short left it naming our image; whether it did."""
    if not dangling_id_object(ioctx, name, image_id):
        return False
    try:
        ioctx.remove_object(ID_PREFIX + name)
    except rados.ObjectNotFound:
        pass
    return True


# -- headers ----------------------------------------------------------------------------------------
def tag_fresh_header(ioctx: rados.Ioctx, staging: str, values: Mapping[str, str]) -> str:
    """Write image metadata straight into a header this call just created (cls_rbd metadata_set, what
    librbd's own metadata_set does; a fresh image has no watcher to notify). Returns the image id."""
    image_id = read_id_object(ioctx, staging)
    if not image_id:
        raise ValueError("unreadable rbd_id object")
    ioctx.execute(HEADER_PREFIX + image_id, "rbd", "metadata_set", encode_map(values))
    return image_id


def header_keys(metadata_keys: Iterable[str]) -> tuple[str, ...]:
    """The omap keys of a header the drift sweep reads: size, features, flags (absent: 0), parent and image
    metadata."""
    return ("size", "features", "flags", "parent", *(f"metadata_{k}" for k in metadata_keys))


def read_headers(ioctx: rados.Ioctx, ids: list[str], keys: tuple[str, ...],
                 batch: int = 64) -> dict[str, dict[str, bytes]]:
    """The omap values `keys` of many headers, read in parallel batches (no image opened: no watch, no
    lock, no refresh). A header that cannot be read (removed meanwhile, being created) is left out."""
    out: dict[str, dict[str, bytes]] = {}
    for start in range(0, len(ids), batch):
        pending = []
        for image_id in ids[start:start + batch]:
            op = rados.ReadOpCtx()
            op.__enter__()
            it, _ = ioctx.get_omap_vals_by_keys(op, keys)
            pending.append((image_id, op, it, ioctx.operate_aio_read_op(op, HEADER_PREFIX + image_id)))
        for image_id, op, it, completion in pending:
            try:
                completion.wait_for_complete_and_cb()
                if completion.get_return_value() < 0:
                    continue
                out[image_id] = dict(it)
            finally:
                op.__exit__(None, None, None)
    return out


OBJECT_MAP_PREFIX = "rbd_object_map."


def object_map_stamps(ioctx: rados.Ioctx, ids: list[str], batch: int = 128) -> dict[str, float]:
    """The mtime (epoch seconds) of each image's object map object (`rbd_object_map.<id>`), stat'ed in
    parallel batches; an image without one (no object map, removed meanwhile) is left out."""
    out: dict[str, float] = {}

    def done(image_id: str) -> Callable[..., None]:
        def record(completion: rados.Completion, size: int | None, mtime: time.struct_time | None) -> None:
            if completion.get_return_value() >= 0 and mtime is not None:
                out[image_id] = time.mktime(mtime)
        return record

    for start in range(0, len(ids), batch):
        pending = [ioctx.aio_stat(OBJECT_MAP_PREFIX + image_id, done(image_id)) for image_id in ids[start:start + batch]]
        for completion in pending:
            completion.wait_for_complete_and_cb()
    return out


# -- the probe: does this cluster keep librbd's objects as these steps expect? ---------------------------
PROBE_PREFIX = "rbdop-probe-"
PROBE_SIZE = 4 * 2**20 + 4096  # with the prefix, what tells a probe image (even one cut short before its tag)


PROBE_NAME = re.compile(r"rbdop-probe-[0-9a-f]{12}(-moved)?\Z")  # PROBE_PREFIX + token_hex(6) [+ "-moved"]


class Stray(StrEnum):
    """What a listed name is to the stray-probe cleanup."""
    NOT_OURS = "not ours"   # anything but a probe of ours: left alone
    IMAGE = "image"         # a whole probe image a killed process left: removed with librbd
    LISTING = "listing"     # a listing whose image is gone (a probe's creation or removal cut short): unlisted
    OPEN = "open"           # a probe image someone still has open (a killed process's watch expires): later


def stray_probe(ioctx: rados.Ioctx, name: str, owner_key: str) -> Stray:
    """What `name` is: a probe image left by a process killed mid-probe (our name pattern, the probe's size and
    features, no owner record but the probe's, nobody has it open), a listing of such a probe whose header
    is gone (killed inside librbd's create or remove), or anything else (left alone)."""
    if not PROBE_NAME.match(name):
        return Stray.NOT_OURS
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            if image.size() != PROBE_SIZE or image.features() & ~rbd.RBD_FEATURE_LAYERING:
                return Stray.NOT_OURS
            try:
                tag = image.metadata_get(owner_key)
            except KeyError:
                tag = None
            if tag not in (None, "probe"):
                return Stray.NOT_OURS
            return Stray.OPEN if list(image.watchers_list()) else Stray.IMAGE
    except rbd.ImageNotFound:
        image_id = directory_id(ioctx, name)
        return Stray.LISTING if image_id is not None and not _exists(ioctx, HEADER_PREFIX + image_id) \
            else Stray.NOT_OURS


def _exists(ioctx: rados.Ioctx, oid: str) -> bool:
    try:
        ioctx.stat(oid)
    except rados.ObjectNotFound:
        return False
    return True


def _unlist(ioctx: rados.Ioctx, name: str) -> bool:
    """Remove a listing whose header is gone (checked again here): its id object, then its directory entry."""
    image_id = directory_id(ioctx, name)
    if image_id is None or _exists(ioctx, HEADER_PREFIX + image_id):
        return False
    try:
        if read_id_object(ioctx, name) == image_id:
            ioctx.remove_object(ID_PREFIX + name)
    except rados.ObjectNotFound:
        pass
    try:
        ioctx.execute(DIRECTORY, "rbd", "dir_remove_image", encode_str(name) + encode_str(image_id))
    except rados.ObjectNotFound:
        return False
    return True


def remove_stray_probes(ioctx: rados.Ioctx, owner_key: str) -> tuple[list[str], list[str]]:
    """Remove what killed processes left of their probes in this pool (see stray_probe); returns the names
    removed and those still open (to look at again later)."""
    removed, still_open = [], []
    for name in rbd.RBD().list(ioctx):
        kind = stray_probe(ioctx, name, owner_key)
        if kind == Stray.OPEN:
            still_open.append(name)
        elif kind == Stray.IMAGE:
            try:
                rbd.RBD().remove(ioctx, name)
                removed.append(name)
            except rbd.ImageNotFound:
                pass
            except rbd.ImageBusy:
                still_open.append(name)
        elif kind == Stray.LISTING and _unlist(ioctx, name):
            removed.append(name)
    return removed, still_open


def probe(ioctx: rados.Ioctx, name: str, owner_key: str) -> str | None:
    """Check every raw step against librbd on a probe image of our own (made and removed here): None when
    all agree, else what differs. Run once per cluster before the first fast-path step: a Ceph release that
    changed the layout turns the fast path off instead of silently misreading (or miswriting) it."""
    if failpoints.active(failpoints.PROBE_MISMATCH):
        return "a mismatch forced by a test (RBD_OPERATOR_FAILPOINTS)"
    renamed = name + "-moved"
    rbd.RBD().create(ioctx, name, PROBE_SIZE, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            image_id, size, features = image.id(), image.size(), image.features()
        if read_id_object(ioctx, name) != image_id:
            return f"rbd_id.{name} does not hold the id librbd reports"
        if directory_id(ioctx, name) != image_id:
            return "rbd_directory (dir_get_id) does not list the image as librbd does"
        if tag_fresh_header(ioctx, name, {owner_key: "probe"}) != image_id:
            return "the header tagged is not the image's"
        with rbd.Image(ioctx, name, read_only=True) as image:
            if image.metadata_get(owner_key) != "probe":
                return "metadata written into the header is not what librbd reads"
        values = read_headers(ioctx, [image_id], header_keys([owner_key])).get(image_id, {})
        if (decode_u64(values.get("size", b"")), decode_u64(values.get("features", b""))) != (size, features) \
                or values.get(f"metadata_{owner_key}") != b"probe":
            return "the header's omap (size, features, metadata) does not read as librbd's"
        rename_staged(ioctx, "probe", name, renamed, image_id, crash_points=False)
        with rbd.Image(ioctx, renamed, read_only=True) as image:
            if image.id() != image_id:
                return "after the three-step rename librbd opens another image"
        listed = set(rbd.RBD().list(ioctx))
        if renamed not in listed or name in listed:
            return "after the three-step rename librbd lists the old name, or not the new one"
        return None
    finally:
        for left in (name, renamed):
            try:
                rbd.RBD().remove(ioctx, left)
            except rbd.ImageNotFound:
                pass
