"""Import a disk template from a URL into an RBD image, streaming (KubeVirt CDI's job, for RBD).

The download goes in one pass, hashed on the fly (sha256 of the bytes as published) and decompressed
when it is an xz/gzip/zstd stream, into a scratch RBD image (the image file's bytes); a raw template
*is* the image; any other format is inspected and converted by qemu-img in a bounded child process
(qemu_img.py; the verdicts in reconcile/image_formats.py), reading the scratch image and writing the
target through its rbd driver. Nothing is held whole in memory or written to the operator's disk.
Both images have deterministic names derived from the owner, so an import cut short by a crash is
started afresh by the re-run.

Only URLs under the storage's allowed prefixes are fetched, redirects included (each hop checked, see
fetch.py: normalisation, resolved addresses, the stall rule and deadline); sizes are bounded before and
while writing.
"""

from __future__ import annotations

import hashlib
import lzma
import threading
import time
import zlib
from dataclasses import dataclass, field

import rados
import rbd
import zstandard

from ..api.reasons import Reason
from ..reconcile import image_formats as formats
from . import fetch, qemu_img
from .blocking import check_cancelled
from .fetch import ImportFailed  # the importer's failures: URLUnreachable, ImportStalled, ... (fetch.py)

CHUNK = 4 * 2**20
IMPORT_DEADLINE = 6 * 3600.0  # a whole import (download and conversion), whatever the template
XZ_MEMLIMIT = 256 * 2**20  # xz -9 needs 65 MiB to decompress; a stream asking for more is refused
ZSTD_MAX_WINDOW = 2**27  # 128 MiB (zstd --long=27); larger windows are refused
ZSTD_FEED = 1024  # zstd input per step: a block expands at most 32768-fold, so a step yields <= 32 MiB



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


class Downloaded:
    """The template as it comes: read(n) -> bytes from the source, hashed (sha256 of the bytes as downloaded)
    and counted; what the decompressors read from."""

    def __init__(self, source, progress: Progress) -> None:
        self.source, self.progress = source, progress
        self.digest, self.received = hashlib.sha256(), 0

    def read(self, n: int = CHUNK) -> bytes:
        check_cancelled("the import")
        try:
            chunk = self.source.read(n)
        except OSError as exc:
            raise ImportFailed(Reason.URL_UNREACHABLE, f"download interrupted: {exc}") from None
        self.digest.update(chunk)
        self.received += len(chunk)
        with self.progress.lock:
            self.progress.bytes = self.received
        return chunk


class _Prefixed:
    """A reader that gives `head` back before the rest (the bytes read to find the magic)."""

    def __init__(self, head: bytes, rest: Downloaded) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = CHUNK) -> bytes:
        if self.head:
            chunk, self.head = self.head[:n], self.head[n:]
            return chunk
        return self.rest.read(n)


class _Decompressing:
    """xz, gzip or zstd, decompressed while streaming; read(n) never returns more than n bytes and no step holds
    more than ZSTD_FEED * 32768 bytes of output (bombs stay bounded), concatenated streams/members/frames
    included; a stream that ends early is an InvalidImage."""

    def __init__(self, source: _Prefixed, kind: str) -> None:
        self.source, self.kind = source, kind
        self.pending, self.out, self.ended = b"", b"", False
        self.dec = self._new()

    def _new(self):
        if self.kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        if self.kind == "zstd":
            return zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def read(self, n: int = CHUNK) -> bytes:
        while not self.out and not self.ended:
            if self._done() and not self._next_stream():
                break
            exhausted = False
            if not self.pending and self._needs_input():
                self.pending = self.source.read(CHUNK)
                exhausted = not self.pending
            self.out = self._step(n)
            if not self.out and exhausted and not self._done():
                raise ImportFailed(Reason.INVALID_IMAGE, f"the {self.kind} stream ends early", retry=False)
        chunk, self.out = self.out[:n], self.out[n:]
        return chunk

    def _step(self, n: int) -> bytes:
        try:
            if self.kind == "zstd":  # no output bound in zstandard's API: the input is fed in small slices
                data, self.pending = self.pending[:ZSTD_FEED], self.pending[ZSTD_FEED:]
                return self.dec.decompress(data)
            data, self.pending = self.pending, b""
            out = self.dec.decompress(data, n)
            if self.kind == "gzip":
                self.pending = self.dec.unconsumed_tail
            return out
        except (lzma.LZMAError, zlib.error, zstandard.ZstdError) as exc:
            raise ImportFailed(Reason.INVALID_IMAGE, f"the {self.kind} stream is corrupt: {exc}",
                               retry=False) from None

    def _next_stream(self) -> bool:
        """After a stream's end: another one follows (concatenated), or only zero padding and the end."""
        rest = self.dec.unused_data + self.pending
        while not rest.strip(b"\0"):
            rest = self.source.read(CHUNK)
            if not rest:
                self.ended = True
                return False
        self.dec, self.pending = self._new(), rest.lstrip(b"\0")
        return True

    def _done(self) -> bool:
        return self.dec.eof

    def _needs_input(self) -> bool:
        if self.kind == "xz":
            return self.dec.needs_input
        return not self.pending if self.kind == "zstd" else not self.dec.unconsumed_tail


def _reader(source: Downloaded):
    """The bytes of the image file: the download itself, or what its xz/gzip/zstd stream holds (by magic)."""
    head = b""
    while len(head) < formats.MAGIC_BYTES:
        chunk = source.read(CHUNK)
        if not chunk:
            break
        head += chunk
    kind = formats.compression(head)
    plain = _Prefixed(head, source)
    if kind is None:
        return plain, None
    return _Decompressing(plain, kind), kind


def download(ioctx: rados.Ioctx, url: str, prefixes: tuple[str, ...], scratch: str, limit: SizeBound,
             progress: Progress, features: int, stall_timeout: float = fetch.DEFAULT_STALL_TIMEOUT,
             deadline: float | None = None) -> tuple[str, int]:
    """Stream the URL into the scratch image, decompressed if it is an xz/gzip/zstd stream; return (sha256 hex
    of the bytes as downloaded, length of the image file). Zeros are not written (thin)."""
    # The download's own deadline follows its length (fetch.default_deadline), within the import's.
    left = None if deadline is None else max(1.0, deadline - time.monotonic())
    left = None if left is not None and left >= fetch.MAX_DEADLINE else left
    resp = fetch.open_template(url, prefixes, stall_timeout=stall_timeout, deadline=left)
    try:
        total = resp.length or 0
        limit.check(total, "the template")
        with progress.lock:
            progress.phase, progress.total = "downloading", total
        _fresh(ioctx, scratch, max(total, CHUNK), features)
        source = Downloaded(resp, progress)
        reader, kind = _reader(source)
        what = f"the template (decompressed from {kind} so far)" if kind else "the template (as downloaded so far)"
        with rbd.Image(ioctx, scratch) as image:
            offset = _copy(reader, image, limit, what)
            if total and source.received != total:
                raise ImportFailed(Reason.URL_UNREACHABLE, f"download ended after {source.received} of {total} bytes")
            image.resize(offset)
        return source.digest.hexdigest(), offset
    finally:
        resp.close()


def _copy(reader, image: rbd.Image, limit: SizeBound, what: str) -> int:
    offset = 0
    while True:
        chunk = reader.read(CHUNK)
        if not chunk:
            return offset
        limit.check(offset + len(chunk), what)
        if offset + len(chunk) > image.size():
            image.resize(max(offset + len(chunk), 2 * image.size()))
        if chunk.count(0) != len(chunk):
            check_cancelled("the import")
            image.write(chunk, offset)
        offset += len(chunk)


def _detect(ioctx: rados.Ioctx, scratch: str, length: int) -> str:
    with rbd.Image(ioctx, scratch, read_only=True) as src:
        head = src.read(0, min(length, formats.HEAD_BYTES))
        tail = src.read(length - 512, 512) if length >= 1024 else b""
    try:
        return formats.detect(head, tail)
    except formats.FormatRefused as exc:
        raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, f"the template is {exc.what}; nothing was converted",
                           retry=False) from None


def _inspect(fmt: str, source: formats.RbdTarget, key_file: str, deadline: float) -> formats.Info:
    """qemu-img info (refusals) and, for the formats that have one, qemu-img check (corruption)."""
    _, out = qemu_img.run(formats.info_argv(qemu_img.QEMU_IMG, fmt, source, key_file),
                          f"qemu-img info of the {fmt} template", cpu=formats.INFO_CPU_SECONDS, deadline=deadline)
    try:
        info = formats.verdict(fmt, out.decode("utf-8", "replace"))
        if fmt in formats.CHECKED:
            status, out = qemu_img.run(formats.check_argv(qemu_img.QEMU_IMG, fmt, source, key_file),
                                       f"qemu-img check of the {fmt} template", ok=formats.CHECK_OK,
                                       cpu=formats.INFO_CPU_SECONDS, deadline=deadline)
            formats.check_verdict(fmt, status, out.decode("utf-8", "replace"))
    except formats.FormatRefused as exc:
        raise ImportFailed(Reason.UNSUPPORTED_IMAGE_FORMAT, f"the template is {exc.what}; nothing was converted",
                           retry=False) from None
    except ValueError as exc:
        raise ImportFailed(Reason.INVALID_IMAGE, f"{exc}; nothing was converted", retry=False) from None
    return info


def convert(ioctx: rados.Ioctx, cluster: qemu_img.Cluster, fmt: str, scratch: str, staging: str, min_size: int,
            limit: SizeBound, progress: Progress, features: int, deadline: float) -> int:
    """Inspect the scratch image (verdict, size bound), then qemu-img convert it into a fresh staging image."""
    pool = ioctx.get_pool_name()
    with qemu_img.access(cluster) as paths:
        source = formats.RbdTarget(pool, scratch, cluster.user, paths.conf)
        target = formats.RbdTarget(pool, staging, cluster.user, paths.conf)
        with progress.lock:
            progress.phase = "inspecting"
        info = _inspect(fmt, source, paths.key_file, deadline)
        size = max(info.virtual_size, min_size)
        limit.check(size, "the template's virtual size")
        _fresh(ioctx, staging, size, features)
        with progress.lock:
            progress.phase, progress.bytes, progress.total = "converting", 0, info.virtual_size
        seen = bytearray()

        def moved(chunk: bytes) -> None:
            seen[:] = (bytes(seen) + chunk)[-256:]
            percent = formats.progress(bytes(seen))
            if percent is not None:
                with progress.lock:
                    progress.bytes = int(info.virtual_size * percent / 100)

        qemu_img.run(formats.convert_argv(qemu_img.QEMU_IMG, fmt, source, target, paths.key_file),
                     f"converting the {fmt} template", cpu=formats.cpu_seconds(info.virtual_size), deadline=deadline,
                     on_output=moved)
        with progress.lock:
            progress.bytes = info.virtual_size
    return size


def import_into(ioctx: rados.Ioctx, url: str, sha256: str | None, prefixes: tuple[str, ...], staging: str,
                scratch: str, min_size: int, limit: SizeBound, progress: Progress, features: int,
                cluster: qemu_img.Cluster, stall_timeout: float = fetch.DEFAULT_STALL_TIMEOUT,
                timeout: float = IMPORT_DEADLINE) -> int:
    """Fill the staging image from the URL; return its size. Leaves nothing behind on failure."""
    deadline = time.monotonic() + timeout
    remove_quietly(ioctx, staging)  # an import cut short is started afresh
    try:
        digest, length = download(ioctx, url, prefixes, scratch, limit, progress, features, stall_timeout, deadline)
        if sha256 and digest != sha256.lower():
            raise ImportFailed(Reason.CHECKSUM_MISMATCH, f"the download's sha256 is {digest}, the spec says "
                               f"{sha256.lower()}; nothing was kept", retry=False)
        fmt = _detect(ioctx, scratch, length)
        if fmt != "raw":
            size = convert(ioctx, cluster, fmt, scratch, staging, min_size, limit, progress, features, deadline)
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

