"""What a downloaded template is, decided from its bytes and from `qemu-img info`, and how qemu-img is called.

Pure: magic numbers of the download stream (xz, gzip, zstd) and of the image file (qcow2, vmdk, vhdx, vpc,
raw, and what is refused), the verdict on `qemu-img info --output=json`, qemu-img's argv (which holds no
key: the key is read by qemu from a file named by a secret object), the resource limits of the child and
the parsing of its `-p` progress. The adapter (adapters/qemu_img.py) executes.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

# Download streams, by the magic of their first bytes.
COMPRESSIONS = ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))
MAGIC_BYTES = 6  # enough for every magic above

# Formats qemu-img converts for us; anything else is refused.
SUPPORTED = ("raw", "qcow2", "vmdk", "vhdx", "vpc")
VMDK_CREATE_TYPES = ("monolithicSparse", "streamOptimized")
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
HEAD_BYTES = 512

# Found at offset 0 and refused, with what the message calls them.
_REFUSED_AT_0 = (
    (b"LUKS\xba\xbe", "a LUKS-encrypted image"),
    (b"QED\x00", "a qed image"),
    (b"<<< ", "a VirtualBox vdi image"),
    (b"COWD", "a VMware ESX/GSX sparse vmdk (COWD)"),
    (b"Bochs Virtual HD Image", "a Bochs image"),
    (b"WithoutFreeSpace", "a Parallels image"),
    (b"WithouFreSpacExt", "a Parallels image"),
    (b"#!/bin/sh\n#V2.0 Format", "a cloop image"),
)


class FormatRefused(Exception):
    """The template's format (or a feature of it) is not imported: `what` names what was found."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def compression(head: bytes) -> str | None:
    """The compression of a download stream, by the magic of its first bytes (None: not compressed)."""
    for magic, name in COMPRESSIONS:
        if head.startswith(magic):
            return name
    return None


def detect(head: bytes, tail: bytes) -> str:
    """The format of an image file from its first and last 512 bytes; FormatRefused for what is not imported.

    Header checks that must happen before qemu-img opens the file are made here: a qcow2 with an
    external data file and a vmdk whose binary header only points to a text descriptor would make
    qemu open files they name."""
    if head.startswith(b"QFI\xfb"):
        return _qcow2(head)
    if head.startswith(b"KDMV"):
        return _vmdk(head)
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix") or tail[-512:].startswith(b"conectix"):
        return "vpc"
    if head.lstrip(b"\r\n\t ").startswith(b"# Disk DescriptorFile"):
        raise FormatRefused("a text vmdk descriptor (it names extent files)")
    if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        raise FormatRefused("a VirtualBox vdi image")
    for magic, what in _REFUSED_AT_0:
        if head.startswith(magic):
            raise FormatRefused(what)
    if (name := compression(head)) is not None:
        raise FormatRefused(f"an {name} stream inside the decompressed template (nested compression)")
    return "raw"


def _qcow2(head: bytes) -> str:
    if len(head) < 72:
        raise FormatRefused("a truncated qcow2 header")
    version = struct.unpack(">I", head[4:8])[0]
    if version == 1:
        raise FormatRefused("a qcow (version 1) image")
    if version not in (2, 3):
        raise FormatRefused(f"a qcow2 of version {version}")
    if version == 3 and len(head) >= 80 and struct.unpack(">Q", head[72:80])[0] & QCOW2_INCOMPAT_DATA_FILE:
        raise FormatRefused("a qcow2 with an external data file")
    return "qcow2"


def _vmdk(head: bytes) -> str:
    if len(head) < 20:
        raise FormatRefused("a truncated vmdk header")
    capacity = struct.unpack("<Q", head[12:20])[0]
    if capacity == 0:  # qemu then reads the text descriptor the header points to, and its extent files
        raise FormatRefused("a vmdk whose header points to a text descriptor (it names extent files)")
    return "vmdk"


def _printable(value: object, most: int = 120) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return repr(text[:most] + ("..." if len(text) > most else ""))


@dataclass(frozen=True)
class Info:
    """What `qemu-img info` said of an image that may be converted."""
    format: str
    virtual_size: int


def verdict(fmt: str, out: str) -> Info:
    """Judge `qemu-img info -f fmt --output=json`: refuse backing files, external data files, encryption, vmdk
    create types other than monolithicSparse/streamOptimized and multiple extents. ValueError: not info JSON."""
    info = json.loads(out)
    if not isinstance(info, dict) or not isinstance(info.get("virtual-size"), int):
        raise ValueError("qemu-img info gave no virtual size")
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if key in info:
            raise FormatRefused(f"a {fmt} with a backing file ({_printable(info[key])})")
    if info.get("encrypted"):
        raise FormatRefused(f"an encrypted {fmt}")
    if info.get("format") != fmt:
        raise FormatRefused(f"an image qemu-img reads as {_printable(info.get('format'))}, not {fmt}")
    data = (info.get("format-specific") or {}).get("data") or {}
    if "data-file" in data or data.get("data-file-raw"):
        raise FormatRefused(f"a {fmt} with an external data file ({_printable(data.get('data-file'))})")
    if "encrypt" in data:
        raise FormatRefused(f"an encrypted {fmt}")
    if fmt == "vmdk":
        if data.get("create-type") not in VMDK_CREATE_TYPES:
            raise FormatRefused(f"a vmdk of create type {_printable(data.get('create-type'))} (imported: "
                                f"{', '.join(VMDK_CREATE_TYPES)})")
        if len(data.get("extents") or []) > 1:
            raise FormatRefused("a vmdk with several extents")
    return Info(fmt, info["virtual-size"])


# -- qemu-img's command line ---------------------------------------------------------------------------
SECRET_ID = "cephkey"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_PATH = re.compile(r"^/[A-Za-z0-9_./-]{1,255}\Z")
# Formats whose qemu driver takes a `backing` option: null opens no backing file whatever the header says.
_HAS_BACKING = ("qcow2", "vmdk")


@dataclass(frozen=True)
class RbdTarget:
    """An RBD image as qemu's rbd block driver opens it: the cluster from `conf` (mon_host, no key), the user
    by name and the key from the secret object SECRET_ID."""
    pool: str
    image: str
    user: str
    conf: str

    def node(self) -> dict:
        for value in (self.pool, self.image, self.user):
            if not _NAME.fullmatch(value):
                raise ValueError(f"{value!r} is not a pool, image or user name qemu-img is given")
        if not _PATH.fullmatch(self.conf) or ".." in self.conf:
            raise ValueError(f"{self.conf!r} is not a configuration path qemu-img is given")
        return {"driver": "rbd", "pool": self.pool, "image": self.image, "conf": self.conf, "user": self.user,
                "key-secret": SECRET_ID}


def image_spec(fmt: str, file: RbdTarget) -> str:
    """qemu's json: filename for an image of format fmt whose file is the RBD image (never a template's path)."""
    if fmt not in SUPPORTED:
        raise ValueError(f"{fmt!r} is not a supported format")
    node: dict = {"driver": fmt, "file": file.node()}
    if fmt in _HAS_BACKING:
        node["backing"] = None
    return "json:" + json.dumps(node, separators=(",", ":"), sort_keys=True)


def secret_object(key_file: str) -> str:
    if not _PATH.match(key_file) or ".." in key_file:
        raise ValueError(f"{key_file!r} is not a key file path qemu-img is given")
    return f"secret,id={SECRET_ID},file={key_file},format=base64"


def info_argv(qemu_img: str, fmt: str, source: RbdTarget, key_file: str) -> list[str]:
    return [qemu_img, "info", "-f", fmt, "--output=json", "--object", secret_object(key_file),
            image_spec(fmt, source)]


def check_argv(qemu_img: str, fmt: str, source: RbdTarget, key_file: str) -> list[str]:
    return [qemu_img, "check", "-f", fmt, "--output=json", "--object", secret_object(key_file),
            image_spec(fmt, source)]


# `qemu-img check`'s exit statuses: 0 clean, 2 corruptions, 3 only leaked clusters (harmless for reading),
# 63 the format has no check (vpc); 1 is a failure to check (its stderr says why).
CHECK_OK = (0, 2, 3, 63)
CHECKED = ("qcow2", "vmdk", "vhdx")


def check_verdict(fmt: str, status: int, out: str) -> None:
    """ValueError when `qemu-img check` found the image corrupt (an L2 table past the end of the file, ...)."""
    if status in (0, 3, 63):
        return
    try:
        report = json.loads(out)
    except ValueError:
        report = {}
    found = report.get("corruptions", "some") if isinstance(report, dict) else "some"
    raise ValueError(f"qemu-img check found {found} corruption(s) in the {fmt} template")


def convert_argv(qemu_img: str, fmt: str, source: RbdTarget, target: RbdTarget, key_file: str) -> list[str]:
    """The target is a fresh (all-zero) RBD image of the virtual size: -n --target-is-zero keeps it thin.
    -W -m 16 -T none (out-of-order writes, 16 coroutines, no librbd cache on the source): a 2 GiB-virtual zlib
    qcow2 with 256 MiB of data converted RBD to RBD in 1.7-2.2 s instead of 3.0-3.4 s (bench/imports.py)."""
    return [qemu_img, "convert", "-p", "-W", "-m", "16", "-T", "none", "-f", fmt, "-O", "raw", "-n", "--target-is-zero",
            "--object", secret_object(key_file), image_spec(fmt, source), image_spec("raw", target)]


def ceph_conf(monitors: tuple[str, ...], extra: dict[str, str] | None = None) -> str:
    """The ceph.conf qemu's rbd driver reads (monitors as librados takes them, v2:/v1: prefixes included; no
    key; nothing written by the child: no log file, no admin socket)."""
    lines = ["[global]", f"mon_host = {','.join(_checked(m) for m in monitors)}", "log_file = ",
             "admin_socket = ", "log_to_stderr = false", "err_to_stderr = false", "client_mount_timeout = 10",
             "rados_mon_op_timeout = 30", "rados_osd_op_timeout = 60"]
    lines += [f"{_checked(k)} = {_checked(v)}" for k, v in sorted((extra or {}).items())]
    return "\n".join(lines) + "\n"


def _checked(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.:\[\],-]{1,256}\Z", value):
        raise ValueError(f"{value!r} is not a Ceph setting or monitor address the child's conf is given")
    return value


# -- the child's limits --------------------------------------------------------------------------------
# Measured (qemu-img 7.2 on Debian 12, reef librbd, 2 GiB-virtual qcow2 with 256 MiB of data into RBD):
# peak VSZ 617-677 MiB (32 threads with 8 MiB stacks, MALLOC_ARENA_MAX=2), peak RSS 75-128 MiB; it
# aborts ("failed to allocate memory for stack") at RLIMIT_AS 512 MiB and runs at 768 MiB. 2 GiB leaves
# room for qcow2's largest L1 table (32 MiB) and caches while bounding what a hostile file can take.
ADDRESS_SPACE = 2 * 2**30
MALLOC_ARENAS = 2
OPEN_FILES = 256
INFO_CPU_SECONDS = 60


def cpu_seconds(virtual_size: int) -> int:
    """CPU time for a conversion: 10 min plus 1 min per 2 GiB of guest (decompression included)."""
    return 600 + 60 * (virtual_size // (2 * 2**30) + 1)


_PROGRESS = re.compile(rb"\((\d{1,3}(?:\.\d+)?)/100%\)")


def progress(output: bytes) -> float | None:
    """The last percentage in qemu-img -p output ("    (12.50/100%)\\r"), None if there is none yet."""
    found = _PROGRESS.findall(output)
    return min(float(found[-1]), 100.0) if found else None


def summary(stderr: bytes, most: int = 300) -> str:
    """qemu-img's error message for a condition: the json: filenames (our own) replaced by 'the template'."""
    text = stderr.decode("utf-8", "replace")
    text = re.sub(r"'?json:\{.*?\}\}'?", "the template", text)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    text = text.replace("qemu-img: ", "")
    return text[:most] or "no message"
