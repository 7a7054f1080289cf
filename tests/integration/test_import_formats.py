"""Templates in every imported format (made by qemu-img from one source with data and zero holes), plain and
inside xz/gzip/zstd streams, served on loopback HTTP and imported by the real operator: the RBD content equals
`qemu-img convert -O raw` of the same file byte for byte, and thin stays thin. Hostile templates end in
InvalidImage/UnsupportedImageFormat, are not retried, open nothing they name, and leave the operator's RSS bounded."""

from __future__ import annotations

import gzip
import http.server
import json
import lzma
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zstandard

from .harness import wait_for
from .manifests import image, storage

MI = 2**20
FORMATS = {  # name -> qemu-img convert options
    "raw": ["-O", "raw"],
    "v2.qcow2": ["-O", "qcow2", "-o", "compat=0.10"],
    "v3.qcow2": ["-O", "qcow2", "-o", "compat=1.1"],
    "zlib.qcow2": ["-O", "qcow2", "-c"],
    "zstd.qcow2": ["-O", "qcow2", "-o", "compression_type=zstd", "-c"],
    "sparse.vmdk": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
    "stream.vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "d.vhdx": ["-O", "vhdx"],
    "d.vpc": ["-O", "vpc"],
}
COMPRESSED = {"xz": lambda d: lzma.compress(d, preset=1), "gz": lambda d: gzip.compress(d, 1),
              "zst": lambda d: zstandard.ZstdCompressor(level=3).compress(d)}
# Each format inside one compressor (all three compressors covered, and each format once).
WRAPPED = {"raw": "xz", "v2.qcow2": "gz", "v3.qcow2": "zst", "zlib.qcow2": "xz", "zstd.qcow2": "gz",
           "sparse.vmdk": "zst", "stream.vmdk": "xz", "d.vhdx": "gz", "d.vpc": "zst"}
DATA = 6 * MI  # of the 32 MiB source


class Server:
    """A loopback HTTP server of a directory that counts the requests for each path."""

    def __init__(self, root: Path) -> None:
        self.requests: dict[str, int] = {}
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                outer.requests[self.path] = outer.requests.get(self.path, 0) + 1
                return super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def hostile(root: Path) -> None:
    """Templates that must not import: made by qemu-img, then edited where a header field is the attack."""
    base = root / "v3.qcow2"
    data = bytearray(base.read_bytes())
    l1_offset = struct.unpack(">Q", data[40:48])[0]
    struct.pack_into(">Q", data, l1_offset, (1 << 63) | (1 << 40))  # L2 table 1 TiB past the end
    (root / "l2-past-end.qcow2").write_bytes(bytes(data))
    # ~250 MiB of mostly zeros whose header claims a 16-TiB-L1 (2**31 entries): qemu refuses the table size
    huge = bytearray(base.read_bytes())
    struct.pack_into(">I", huge, 36, 0x7FFFFFFF)
    with open(root / "huge-l1.qcow2", "wb") as fh:
        fh.write(huge)
        fh.truncate(250 * MI)
    # a legitimate table that large: a 2 PiB virtual disk (32 MiB of L1), beyond the storage's maxSize
    qemu_img("create", "-f", "qcow2", str(root / "huge-virtual.qcow2"), "2000T")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(root / "shadow.qcow2"), "32M")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "rbd:otherpool/disk", "-F", "raw", str(root / "otherpool.qcow2"),
             "32M")
    (root / "descriptor.vmdk").write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                                          'createType="monolithicFlat"\nRW 65536 FLAT "/etc/shadow" 0\n')


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    src = root / "source.img"
    with open(src, "wb") as fh:  # data, holes, data in the last cluster
        for i in range(32):
            fh.write(os.urandom(MI) if i in (0, 1, 7, 20, 30, 31) else b"\0" * MI)
    for name, opts in FORMATS.items():
        qemu_img("convert", "-f", "raw", src.as_posix(), *opts, str(root / name))
        (root / f"{name}.{WRAPPED[name]}").write_bytes(COMPRESSED[WRAPPED[name]]((root / name).read_bytes()))
        expected = root / f"{name}.expected"
        qemu_img("convert", "-f", FORMATS[name][1], "-O", "raw", str(root / name), str(expected))
    hostile(root)
    server = Server(root)
    try:
        yield root, server
    finally:
        server.close()


@pytest.fixture(scope="module")
def store(platform, operator, templates):
    _, server = templates
    name = "formats"
    platform.apply(storage(platform, name, pool={"pgNum": 8}, client={"name": name},
                           imports={"allowedURLPrefixes": [server.url]}, imageLimits={"maxSize": "1Ti"}))
    platform.wait_condition("rbds", name, "True")
    return name


def exported(platform, pool: str, name: str, path: Path) -> bytes:
    path.unlink(missing_ok=True)
    platform.rbd_cli("export", f"{pool}/{name}", str(path))
    return path.read_bytes()


def used_bytes(platform, pool: str, name: str) -> int:
    out = json.loads(platform.rbd_cli("du", "--format", "json", f"{pool}/{name}"))
    return sum(i["used_size"] for i in out["images"] if i["name"] == name)


def import_all(platform, store, server, names, uniq, tmp_path, root):
    made = {}
    for i, name in enumerate(names):
        obj = f"f{i}-{uniq}"
        made[obj] = name
        platform.apply(image(obj, store, source={"url": server.url + name}))
    for obj, name in made.items():
        platform.wait_condition("rbdimg", obj, "True", namespace="default", timeout=300)
        base = name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1] in COMPRESSED else name
        assert exported(platform, store, obj, tmp_path / obj) == (root / f"{base}.expected").read_bytes(), name
        # thin: objects holding data (4 MiB each), not the 32 MiB virtual size
        assert used_bytes(platform, store, obj) <= 6 * 4 * MI + 4 * MI, name
        status = platform.get("rbdimg", obj, "default")["status"]
        assert status["import"]["percent"] == 100, (name, status)
    for obj in made:
        platform.delete("rbdimg", obj, "default", wait=True)


def test_every_format_imports_byte_for_byte_and_thin(platform, store, templates, uniq, tmp_path):
    root, server = templates
    import_all(platform, store, server, list(FORMATS), uniq, tmp_path, root)


def test_every_format_inside_a_compressed_stream(platform, store, templates, uniq, tmp_path):
    root, server = templates
    import_all(platform, store, server, [f"{n}.{c}" for n, c in WRAPPED.items()], uniq, tmp_path, root)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("name,reason,found", [
    ("l2-past-end.qcow2", "InvalidImage", "corruption"),
    ("huge-l1.qcow2", "InvalidImage", "L1 table too large"),
    ("huge-virtual.qcow2", "LimitExceeded", "imageLimits"),
    ("otherpool.qcow2", "UnsupportedImageFormat", "rbd:otherpool/disk"),
    ("shadow.qcow2", "UnsupportedImageFormat", "/etc/shadow"),
    ("descriptor.vmdk", "UnsupportedImageFormat", "text vmdk descriptor"),
])
def test_hostile_templates_are_refused_once_with_nothing_opened(platform, operator, ceph, store, templates, uniq,
                                                                 name, reason, found):
    root, server = templates
    obj = f"h-{uniq}"
    before = server.requests.get("/" + name, 0)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_kib(operator.proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        platform.apply(image(obj, store, source={"url": server.url + name}))
        cond = platform.wait_condition("rbdimg", obj, "False", None, namespace="default", timeout=180)
        wait_for(lambda: platform.condition("rbdimg", obj, "Ready", "default")["reason"] == reason, 120,
                 what=f"{obj} {reason}")
        cond = platform.condition("rbdimg", obj, "Ready", "default")
        assert found in cond["message"], cond
        time.sleep(12)  # two resync intervals: a permanent failure downloads nothing again
    finally:
        stop.set()
        sampler.join()
    assert server.requests.get("/" + name, 0) - before == 1, server.requests
    print(f"{name}: operator RSS {min(samples) // 1024}-{max(samples) // 1024} MiB")
    assert max(samples) - samples[0] < 64 * 1024, "the operator's RSS grew by more than 64 MiB"
    with ceph.open_ioctx(store) as ioctx:
        import rbd
        assert not [i for i in rbd.RBD().list(ioctx) if i.startswith("rbdop-new-")]
    platform.delete("rbdimg", obj, "default", wait=True)


def test_progress_moves_during_conversion(platform, store, templates, uniq):
    """status.import follows qemu-img's own progress while it converts (phase converting, 0 < percent < 100),
    not only the download: a 1 GiB-virtual zlib qcow2 with 192 MiB of data, sampled while it imports."""
    root, server = templates
    src, template = root / "progress.raw", root / "progress.qcow2"
    with open(src, "wb") as fh:
        fh.truncate(1024 * MI)
        for i in range(192):  # text-like data (zlib compresses it, so qemu-img has work per cluster)
            fh.seek(i * 5 * MI)
            fh.write((os.urandom(2048).hex().encode() * 256)[:MI])
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(src), str(template))
    src.unlink()
    obj = f"progress-{uniq}"
    platform.apply(image(obj, store, source={"url": server.url + template.name}))
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = platform.get("rbdimg", obj, "default") or {}
        state = (body.get("status") or {}).get("import") or {}
        if state and (state.get("phase"), state.get("percent")) not in seen[-1:]:
            seen.append((state.get("phase"), state.get("percent")))
        if any(c["type"] == "Ready" and c["status"] == "True" for c in body.get("status", {}).get("conditions", [])):
            break
    print(f"status.import seen: {seen}")
    converting = [p for phase, p in seen if phase == "converting"]
    assert any(0 < p < 100 for p in converting), seen
    platform.delete("rbdimg", obj, "default", wait=True)
    template.unlink()
