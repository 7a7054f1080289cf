"""Template formats: detection by magic, qemu-img info/check verdicts, argv without keys, progress parsing,
streaming decompression bounded, and the child's limits."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import struct
import sys
import time

import pytest
import zstandard

from rbd_operator.adapters import importer, qemu_img
from rbd_operator.api.reasons import Reason
from rbd_operator.reconcile import image_formats as fmt

KEY = "AQBzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXQ9PQ=="


def qcow2_head(version=3, incompatible=0) -> bytes:
    head = b"QFI\xfb" + struct.pack(">IQIIQIIQ", version, 0, 0, 16, 2**30, 0, 2, 0x30000) + b"\0" * 24
    head = head.ljust(72, b"\0")
    if version == 3:
        head += struct.pack(">Q", incompatible) + b"\0" * 24
    return head.ljust(512, b"\0")


def vmdk_head(capacity=2048) -> bytes:
    return (b"KDMV" + struct.pack("<IIQ", 1, 3, capacity)).ljust(512, b"\0")


@pytest.mark.parametrize("head,tail,expected", [
    (qcow2_head(2), b"", "qcow2"),
    (qcow2_head(3, incompatible=1), b"", "qcow2"),  # dirty: harmless
    (vmdk_head(), b"", "vmdk"),
    (b"vhdxfile" + b"\0" * 504, b"", "vhdx"),
    (b"conectix" + b"\0" * 504, b"", "vpc"),
    (b"\xeb\x63\x90" + b"\0" * 509, b"conectix" + b"\0" * 504, "vpc"),  # fixed VHD: footer only
    (b"\xeb\x63\x90" + b"\0" * 509, b"\0" * 512, "raw"),
    (b"", b"", "raw"),
])
def test_formats_are_detected_by_magic(head, tail, expected):
    assert fmt.detect(head, tail) == expected


@pytest.mark.parametrize("head,found", [
    (qcow2_head(3, incompatible=fmt.QCOW2_INCOMPAT_DATA_FILE), "external data file"),
    (qcow2_head(1), "qcow (version 1)"),
    (qcow2_head(4), "version 4"),
    (vmdk_head(0), "text descriptor"),
    (b"# Disk DescriptorFile\nversion=1\nRW 2048 FLAT \"/etc/shadow\" 0\n", "text vmdk descriptor"),
    (b"LUKS\xba\xbe\x00\x01", "LUKS"),
    (b"QED\x00" + b"\0" * 60, "qed"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>\n", "vdi"),
    (b"COWD\x01\x00\x00\x00", "COWD"),
    (b"\xfd7zXZ\x00\x00", "xz stream inside"),
])
def test_what_is_not_imported_is_named(head, found):
    with pytest.raises(fmt.FormatRefused) as exc:
        fmt.detect(head.ljust(512, b"\0"), b"")
    assert found in exc.value.what


def test_compressions_are_detected_by_magic():
    assert fmt.compression(lzma.compress(b"x")) == "xz"
    assert fmt.compression(gzip.compress(b"x")) == "gzip"
    assert fmt.compression(zstandard.ZstdCompressor().compress(b"x")) == "zstd"
    assert fmt.compression(b"QFI\xfb\0\0\0\3") is None


def info(**extra) -> str:
    base = {"virtual-size": 2**30, "format": "qcow2", "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}}
    base.update(extra)
    return json.dumps(base)


def test_info_verdicts():
    assert fmt.verdict("qcow2", info()) == fmt.Info("qcow2", 2**30)
    for extra, found in [({"backing-filename": "rbd:otherpool/disk"}, "rbd:otherpool/disk"),
                         ({"backing-filename": "/etc/shadow", "full-backing-filename": "/etc/shadow"}, "/etc/shadow"),
                         ({"encrypted": True}, "encrypted"),
                         ({"format": "raw"}, "reads as 'raw'"),
                         ({"format-specific": {"data": {"data-file": "/dev/sda"}}}, "external data file"),
                         ({"format-specific": {"data": {"encrypt": {"format": "luks"}}}}, "encrypted")]:
        with pytest.raises(fmt.FormatRefused) as exc:
            fmt.verdict("qcow2", info(**extra))
        assert found in exc.value.what
    vmdk = {"format": "vmdk", "format-specific": {"data": {"create-type": "monolithicSparse", "extents": [{}]}}}
    assert fmt.verdict("vmdk", info(**vmdk)).virtual_size == 2**30
    vmdk["format-specific"]["data"]["create-type"] = "monolithicFlat"
    with pytest.raises(fmt.FormatRefused, match="create type"):
        fmt.verdict("vmdk", info(**vmdk))
    with pytest.raises(ValueError):
        fmt.verdict("qcow2", "[]")


def test_check_verdicts():
    fmt.check_verdict("qcow2", 0, "{}")
    fmt.check_verdict("qcow2", 3, json.dumps({"leaks": 4}))
    with pytest.raises(ValueError, match="2 corruption"):
        fmt.check_verdict("qcow2", 2, json.dumps({"corruptions": 2}))


def test_argv_names_the_rbd_images_and_no_key():
    src = fmt.RbdTarget("pool", "rbdop-new-x-scratch", "client1", "/tmp/rbdop-qemu-1/ceph.conf")
    dst = fmt.RbdTarget("pool", "rbdop-new-x", "client1", "/tmp/rbdop-qemu-1/ceph.conf")
    argv = fmt.convert_argv("/usr/bin/qemu-img", "qcow2", src, dst, "/tmp/rbdop-qemu-1/key")
    assert argv[:4] == ["/usr/bin/qemu-img", "convert", "-p", "-W"]
    assert argv[argv.index("-f"):argv.index("-f") + 6] == ["-f", "qcow2", "-O", "raw", "-n", "--target-is-zero"]
    source = json.loads(argv[-2][len("json:"):])
    assert source == {"driver": "qcow2", "backing": None, "file": {
        "driver": "rbd", "pool": "pool", "image": "rbdop-new-x-scratch", "conf": "/tmp/rbdop-qemu-1/ceph.conf",
        "user": "client1", "key-secret": fmt.SECRET_ID}}
    assert json.loads(argv[-1][len("json:"):])["file"]["image"] == "rbdop-new-x"
    assert not any(KEY in a for a in argv)
    info = fmt.info_argv("/usr/bin/qemu-img", "vpc", src, "/tmp/rbdop-qemu-1/key")
    assert info[1:5] == ["info", "-f", "vpc", "--output=json"] and "backing" not in info[-1]
    for bad in (fmt.RbdTarget("pool", "x,file=/etc/shadow", "u", "/tmp/c"),
                fmt.RbdTarget("pool", "x", "u", "/tmp/../etc/ceph.conf")):
        with pytest.raises(ValueError):
            fmt.image_spec("qcow2", bad)
    with pytest.raises(ValueError):
        fmt.image_spec("luks", src)


def test_ceph_conf_has_monitors_and_no_newline_injection():
    text = fmt.ceph_conf(("v2:10.0.0.1:3300", "[::1]:6789"), {"rbd_concurrent_management_ops": "4"})
    assert "mon_host = v2:10.0.0.1:3300,[::1]:6789\n" in text and "key" not in text
    with pytest.raises(ValueError):
        fmt.ceph_conf(("10.0.0.1:6789\nkeyring = /etc/shadow",))


def test_progress_is_the_last_percentage():
    assert fmt.progress(b"") is None
    assert fmt.progress(b"    (0.00/100%)\r    (12.50/100%)\r    (13.") == 12.5
    assert fmt.progress(b"(100.00/100%)\r") == 100.0


def test_summary_hides_our_json_filenames():
    err = b"qemu-img: Could not open 'json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"rbd\"}}': Active L1 table too large\n"
    assert fmt.summary(err) == "Could not open the template: Active L1 table too large"


def test_access_files_are_private_and_removed():
    with qemu_img.access(qemu_img.Cluster(("10.0.0.1:6789",), "u", KEY)) as paths:
        directory = os.path.dirname(paths.key_file)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(paths.key_file).st_mode) == 0o600
        assert open(paths.key_file).read() == KEY and KEY not in open(paths.conf).read()
    assert not os.path.exists(directory)


def test_child_runs_under_limits_in_its_own_group_and_is_killed_at_the_deadline():
    probe = ("import os, resource, json; print(json.dumps([resource.getrlimit(r) for r in (resource.RLIMIT_AS, "
             "resource.RLIMIT_CPU, resource.RLIMIT_NOFILE, resource.RLIMIT_CORE)] + [os.getpgid(0) == os.getpid(), "
             "dict(os.environ)]))")
    _, out = qemu_img.run([sys.executable, "-c", probe], "probe", cpu=30, deadline=time.monotonic() + 30)
    limits = json.loads(out)
    assert limits[0] == [fmt.ADDRESS_SPACE] * 2 and limits[1] == [30, 35] and limits[3] == [0, 0]
    assert limits[2] == [fmt.OPEN_FILES] * 2 and limits[4] is True
    assert set(limits[5]) <= {"PATH", "LC_ALL", "MALLOC_ARENA_MAX", "LC_CTYPE"}
    start = time.monotonic()
    with pytest.raises(qemu_img.QemuImgFailed, match="deadline"):
        qemu_img.run([sys.executable, "-c", "import time; time.sleep(60)"], "sleeper", cpu=30,
                     deadline=time.monotonic() + 1)
    assert time.monotonic() - start < 10
    with pytest.raises(qemu_img.QemuImgFailed) as exc:
        qemu_img.run([sys.executable, "-c", "import sys; sys.stderr.write('qemu-img: L2 table offset bad'); "
                      "sys.exit(1)"], "probe", cpu=30, deadline=time.monotonic() + 30)
    assert exc.value.reason == Reason.INVALID_IMAGE and exc.value.permanent


class Source:
    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self.data.read(n)


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress, lambda d: zstandard.ZstdCompressor().compress(d),
                                      lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:]),
                                      lambda d: zstandard.ZstdCompressor().compress(d[:1000]) +
                                      zstandard.ZstdCompressor().compress(d[1000:])])
def test_streams_are_decompressed_in_bounded_reads_and_hashed_as_downloaded(compress):
    plain = os.urandom(3 * 2**20) + b"\0" * (8 * 2**20)
    packed = compress(plain)
    source = importer.Downloaded(Source(packed), importer.Progress())
    reader, kind = importer._reader(source)
    got = bytearray()
    while chunk := reader.read(2**20):
        assert len(chunk) <= 2**20
        got += chunk
    assert bytes(got) == plain and kind
    assert source.digest.hexdigest() == hashlib.sha256(packed).hexdigest() and source.received == len(packed)


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress, lambda d: zstandard.ZstdCompressor().compress(d)])
def test_a_truncated_stream_is_an_invalid_image(compress):
    packed = compress(os.urandom(2**20) + b"\0" * 2**20)[:-100]
    reader, _ = importer._reader(importer.Downloaded(Source(packed), importer.Progress()))
    with pytest.raises(importer.ImportFailed) as exc:
        while reader.read(2**20):
            pass
    assert exc.value.reason == Reason.INVALID_IMAGE


def test_a_zstd_bomb_is_read_in_bounded_steps():
    """1 GiB of zeros in a few KiB of zstd: no read returns more than asked, no step holds more than 32 MiB."""
    packed = zstandard.ZstdCompressor().compress(b"\0" * 2**30)
    assert len(packed) < 2**20
    reader, kind = importer._reader(importer.Downloaded(Source(packed), importer.Progress()))
    total, biggest = 0, 0
    while chunk := reader.read(4 * 2**20):
        total += len(chunk)
        biggest = max(biggest, len(chunk), len(reader.out))
    assert kind == "zstd" and total == 2**30 and biggest <= 32 * 2**20
