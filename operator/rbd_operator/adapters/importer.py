"""Import a disk template from a URL into an RBD image, streaming (KubeVirt CDI's job, for RBD).

The download goes in one pass, hashed on the fly, into a scratch RBD image (the file's bytes as they
are); a raw template *is* the image, a qcow2 one is then read back from the scratch image with random
access (header, L1/L2 tables, clusters) and its guest data written into the target. Nothing is held
whole in memory or written to the operator's disk. Both images have deterministic names derived from
the owner, so an import cut short by a crash is started afresh by the re-run.

Only URLs under the storage's allowed prefixes are fetched, redirects included (each hop checked, see
fetch.py: normalisation, resolved addresses, the stall rule and deadline); sizes are bounded before and
while writing.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from dataclasses import dataclass, field

import rados
import rbd

from ..api.reasons import Reason
from . import fetch
from .blocking import check_cancelled
from .fetch import ImportFailed  # the importer's failures: URLUnreachable, ImportStalled, ... (fetch.py)

CHUNK = 4 * 2**20
QCOW2_MAGIC = b"QFI\xfb"


@dataclass
class Progress:
    """Shared between the import thread and the handler that reports it."""
    bytes: int = 0
    total: int = 0
    phase: str = "downloading"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_status(self) -> dict:
        with self.lock:
            percent = int(100 * self.bytes / self.total) if self.total else 0
            return {"bytes": self.bytes, "totalBytes": self.total, "percent": min(percent, 100), "phase": self.phase}


def _fresh(ioctx: rados.Ioctx, name: str, size: int, features: int = rbd.RBD_FEATURE_LAYERING) -> None:
    try:
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass
    rbd.RBD().create(ioctx, name, size, old_format=False, features=features)


def remove_quietly(ioctx: rados.Ioctx, *names: str) -> None:
    for name in names:
        try:
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageNotFound:
            pass


@dataclass(frozen=True)
class SizeBound:
    """The most an imported image may become: the pool quota or the storage's imageLimits (0: no bound)."""
    bytes: int = 0
    reason: str = Reason.SIZE_EXCEEDS_QUOTA
    what: str = "the pool quota"

    def check(self, size: int, subject: str) -> None:
        if self.bytes and size > self.bytes:
            raise ImportFailed(self.reason, f"{subject} ({size} bytes) is beyond {self.what} of {self.bytes} bytes",
                               retry=False)


def download(ioctx: rados.Ioctx, url: str, prefixes: tuple[str, ...], scratch: str, limit: SizeBound,
             progress: Progress, features: int,
             stall_timeout: float = fetch.DEFAULT_STALL_TIMEOUT) -> tuple[str, int]:
    """Stream the URL into the scratch image; return (sha256 hex, length)."""
    resp = fetch.open_template(url, prefixes, stall_timeout=stall_timeout)
    try:
        total = resp.length or 0
        limit.check(total, "the template")
        with progress.lock:
            progress.total = total
        _fresh(ioctx, scratch, max(total, CHUNK), features)
        digest, offset = hashlib.sha256(), 0
        with rbd.Image(ioctx, scratch) as image:
            while True:
                check_cancelled("the import")
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                limit.check(offset + len(chunk), "the template (as downloaded so far)")
                if offset + len(chunk) > image.size():
                    image.resize(max(offset + len(chunk), 2 * image.size()))
                if chunk.count(0) != len(chunk):
                    image.write(chunk, offset)
                offset += len(chunk)
                with progress.lock:
                    progress.bytes = offset
            if total and offset != total:
                raise ImportFailed(Reason.URL_UNREACHABLE, f"download ended after {offset} of {total} bytes")
            image.resize(offset)
        return digest.hexdigest(), offset
    finally:
        resp.close()


@dataclass(frozen=True)
class Qcow2:
    cluster_bits: int
    size: int
    l1_size: int
    l1_offset: int


def parse_qcow2_header(head: bytes) -> Qcow2:
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, "not a qcow2 image", retry=False)
    version, backing_offset, _, cluster_bits, size, crypt, l1_size, l1_offset = struct.unpack(
        ">IQIIQIIQ", head[4:48])
    if version not in (2, 3):
        raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, f"qcow2 version {version}", retry=False)
    if backing_offset:
        raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, "a qcow2 with a backing file", retry=False)
    if crypt:
        raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, "an encrypted qcow2", retry=False)
    if version == 3:
        incompatible = struct.unpack(">Q", head[72:80])[0]
        if incompatible & ~0x1:  # only "dirty" is harmless for reading (refcounts are not used here)
            raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, f"qcow2 incompatible features {incompatible:#x} "
                               "(external data file, extended L2, compression type...)", retry=False)
    if not 9 <= cluster_bits <= 21:
        raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, f"qcow2 cluster_bits {cluster_bits}", retry=False)
    return Qcow2(cluster_bits, size, l1_size, l1_offset)


OFFSET_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62


def qcow2_to_image(src: rbd.Image, dst: rbd.Image, progress: Progress) -> None:
    """Write the qcow2's guest data (read from src with random access) into dst (already its virtual size)."""
    q = parse_qcow2_header(src.read(0, 512))
    cluster = 1 << q.cluster_bits
    entries = cluster // 8
    l1 = struct.unpack(f">{q.l1_size}Q", src.read(q.l1_offset, 8 * q.l1_size)) if q.l1_size else ()
    with progress.lock:
        progress.phase, progress.bytes, progress.total = "converting", 0, q.size
    for i, l1_entry in enumerate(l1):
        l2_offset = l1_entry & OFFSET_MASK
        if not l2_offset:
            continue
        l2 = struct.unpack(f">{entries}Q", src.read(l2_offset, cluster))
        for j, entry in enumerate(l2):
            guest = (i * entries + j) * cluster
            if guest >= q.size:
                break
            if entry & COMPRESSED:
                raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, "a compressed qcow2 (convert it with -c off)",
                                   retry=False)
            offset = entry & OFFSET_MASK
            if not offset or entry & 1:  # unallocated, or the v3 "zero" flag: thin stays thin
                continue
            check_cancelled("the import")
            data = src.read(offset, min(cluster, q.size - guest))
            if data.count(0) != len(data):
                dst.write(data, guest)
            with progress.lock:
                progress.bytes = guest + len(data)


def import_into(ioctx: rados.Ioctx, url: str, sha256: str | None, prefixes: tuple[str, ...], staging: str,
                scratch: str, min_size: int, limit: SizeBound, progress: Progress, features: int,
                stall_timeout: float = fetch.DEFAULT_STALL_TIMEOUT) -> int:
    """Fill the staging image from the URL; return its size. Leaves nothing behind on failure."""
    remove_quietly(ioctx, staging)  # an import cut short is started afresh
    try:
        digest, length = download(ioctx, url, prefixes, scratch, limit, progress, features, stall_timeout)
        if sha256 and digest != sha256.lower():
            raise ImportFailed(Reason.CHECKSUM_MISMATCH, f"the download's sha256 is {digest}, the spec says "
                               f"{sha256.lower()}; nothing was kept", retry=False)
        with rbd.Image(ioctx, scratch, read_only=True) as src:
            head = src.read(0, 512) if length >= 512 else src.read(0, length)
            if head[:4] == QCOW2_MAGIC:
                q = parse_qcow2_header(head)
                size = max(q.size, min_size)
                limit.check(size, "the template's virtual size")
                _fresh(ioctx, staging, size, features)
                with rbd.Image(ioctx, staging) as dst:
                    qcow2_to_image(src, dst, progress)
                remove_quietly(ioctx, scratch)
                return size
        # Raw: the scratch image is the disk.
        size = max(length, min_size)
        limit.check(size, "the image")
        remove_quietly(ioctx, staging)
        rbd.RBD().rename(ioctx, scratch, staging)
        with rbd.Image(ioctx, staging) as image:
            if image.size() < size:
                image.resize(size)
        return size
    except BaseException:
        remove_quietly(ioctx, scratch, staging)
        raise
    finally:
        with progress.lock:
            progress.phase = "done"


