"""`make bench` (imports): a template imported by the operator against what a person would type.

The template: 2 GiB virtual, 256 MiB of guest data in 1 MiB extents spread over the disk (text-like,
so zlib has something to do), a zlib-compressed qcow2 (`qemu-img convert -c`), served over
loopback HTTP by a server that honours Range requests (qemu's curl driver needs them).

In one run, on the same platform and pool:
  1. the operator: an RbdImage with spec.source.url, timed from creation until Ready;
  2. qemu-img: `qemu-img convert -f qcow2 -O raw http://…/t.qcow2 rbd:pool/img` (its curl driver
     reading the URL, its rbd driver writing) — what a person would type;
  3. four of each at once (the aggregate rate).
Rates are guest MiB per second (the template's data, 256 MiB, over the wall time); steps 1 and 2
run in interleaved rounds (--rounds, default 3) and the medians are reported. Writes
.bench/results.json under "imports": operator_mib_s, qemu_img_mib_s, ratio (goal >= 0.8), and
the same for four at once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.server
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rados  # noqa: E402
import rbd  # noqa: E402

from rbd_operator.api import reasons  # noqa: E402
from bench.results import record  # noqa: E402
from tests.integration.harness import Operator, start_platform, stop_platform  # noqa: E402
from tests.integration.manifests import image, storage  # noqa: E402

MI = 2**20
VIRTUAL = 2 * 2**30
DATA = 256 * MI
EXTENT = MI
CACHE = ROOT / ".cache" / "bench-imports"
PROGRESSING = {r.name for r in reasons.REASONS if r.health == reasons.Health.PROGRESSING}  # Ready=False, on the way


def make_template() -> Path:
    """The qcow2 (cached: building it takes a while and its content does not matter beyond its shape)."""
    qcow2 = CACHE / f"t-{VIRTUAL >> 20}M-{DATA >> 20}M-zlib.qcow2"
    if qcow2.exists():
        return qcow2
    CACHE.mkdir(parents=True, exist_ok=True)
    raw = CACHE / "source.raw"
    rng = random.Random(20)
    words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(4096)]
    slots = sorted(rng.sample(range(VIRTUAL // EXTENT), DATA // EXTENT))
    with open(raw, "wb") as fh:
        fh.truncate(VIRTUAL)
        for slot in slots:
            chunk = bytearray()
            while len(chunk) < EXTENT:  # text-like: compresses to about half with zlib
                chunk += b" ".join(rng.choices(words, k=256)) + os.urandom(512)
            fh.seek(slot * EXTENT)
            fh.write(bytes(chunk[:EXTENT]))
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zlib",
                    str(raw), str(qcow2) + ".tmp"], check=True)
    os.rename(str(qcow2) + ".tmp", qcow2)
    raw.unlink()
    return qcow2


class RangeServer:
    """Serves one directory on 127.0.0.1 with HEAD, Accept-Ranges and single-range GETs (HTTP/1.0)."""

    def __init__(self, root: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            # One request per connection: qemu 7.2's curl driver stalled for good after a few range requests
            # on keep-alive connections to this server (measured: 10 requests, then nothing for 300 s).
            protocol_version = "HTTP/1.0"
            disable_nagle_algorithm = True  # many small range requests: no 40 ms Nagle stalls

            def log_message(self, *args):  # quiet
                pass

            def _file(self) -> Path | None:
                path = (root / self.path.lstrip("/").split("?")[0]).resolve()
                return path if path.is_file() and root.resolve() in path.parents else None

            def do_HEAD(self):  # noqa: N802
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):  # noqa: N802
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                spec = self.headers.get("Range")
                if spec and spec.startswith("bytes="):
                    first, _, last = spec[6:].partition("-")
                    start, end = int(first), min(int(last) if last else size - 1, size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                with open(path, "rb") as fh:
                    fh.seek(start)
                    left = end - start + 1
                    while left:
                        chunk = fh.read(min(left, 4 * MI))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        left -= len(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def operator_imports(platform, pool: str, url: str, sha256: str, names: list[str]) -> float:
    """Apply the RbdImages at once; seconds until all are Ready."""
    start = time.monotonic()
    for name in names:
        platform.apply(image(name, pool, source={"url": url, "sha256": sha256}, trashRetention="0s"))
    waiting = set(names)
    while waiting:
        for name in sorted(waiting):
            cond = platform.condition("rbdimg", name, "Ready", "default")
            if cond and cond["status"] == "True":
                waiting.discard(name)
            elif cond and cond["reason"] not in PROGRESSING:
                raise AssertionError(f"{name}: {cond['reason']}: {cond['message']}")
        if time.monotonic() - start > 1800:
            raise AssertionError(f"not Ready after 1800 s: {sorted(waiting)}")
        time.sleep(0.25)
    return time.monotonic() - start


def qemu_img_imports(platform, pool: str, url: str, names: list[str]) -> float:
    def one(name: str) -> None:
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", url,
                        f"rbd:{pool}/{name}:id=admin:conf={platform.ceph_conf}"],
                       check=True, capture_output=True, timeout=1800)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(names)) as workers:
        list(workers.map(one, names))
    return time.monotonic() - start


def same_content(cluster: rados.Rados, pool: str, a: str, b: str) -> bool:
    """The operator's image and qemu-img's hold the same guest data (compared by 4 MiB object extents)."""
    with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, a, read_only=True) as x, \
            rbd.Image(ioctx, b, read_only=True) as y:
        if x.size() != y.size():
            return False
        for offset in range(0, x.size(), 4 * MI):
            if hashlib.sha256(x.read(offset, 4 * MI)).digest() != hashlib.sha256(y.read(offset, 4 * MI)).digest():
                return False
    return True


def cleanup(platform, pool: str, cluster: rados.Rados, operator_names: list[str], qemu_names: list[str]) -> None:
    for name in operator_names:
        platform.delete("rbdimg", name, "default", wait=True)
    with cluster.open_ioctx(pool) as ioctx:
        for name in qemu_names:
            rbd.RBD().remove(ioctx, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    parser.add_argument("--baseline-only", action="store_true", help="only qemu-img (checks the baseline; writes nothing)")
    args = parser.parse_args()
    template = make_template()
    sha = hashlib.sha256(template.read_bytes()).hexdigest()
    data_mib = DATA / MI
    server = RangeServer(template.parent)
    url = server.url + template.name
    # Four imports at once hold four scratch copies and four images in the memstore OSD's RAM.
    os.environ.setdefault("CEPH_MEMSTORE_BYTES", str(12 * 2**30))
    platform = start_platform()
    operator = Operator(platform, resync_seconds=600, verbose=False)
    cluster = rados.Rados(conffile=str(platform.ceph_conf))
    rounds: dict[str, list[float]] = {"operator": [], "qemu_img": []}
    try:
        operator.start()
        cluster.connect(timeout=15)
        pool = f"imports{int(time.time())}"
        platform.apply(storage(platform, pool, pool={"pgNum": 32}, client={"name": pool},
                               imports={"allowedURLPrefixes": [server.url]}))
        platform.wait_condition("rbds", pool, "True")
        if args.baseline_only:
            seconds = qemu_img_imports(platform, pool, url, ["qi-only"])
            print(f"qemu-img alone: {data_mib / seconds:.1f} MiB/s ({seconds:.1f} s)")
            return 0
        for r in range(args.rounds):
            op, qi = f"op-{r}", f"qi-{r}"
            rounds["operator"].append(data_mib / operator_imports(platform, pool, url, sha, [op]))
            rounds["qemu_img"].append(data_mib / qemu_img_imports(platform, pool, url, [qi]))
            print(f"  round {r + 1}: operator {rounds['operator'][-1]:.1f} MiB/s, "
                  f"qemu-img {rounds['qemu_img'][-1]:.1f} MiB/s", flush=True)
            if not same_content(cluster, pool, op, qi):
                raise AssertionError(f"{op} and {qi} differ: the operator's import is not qemu-img's")
            cleanup(platform, pool, cluster, [op], [qi])
        four_ops, four_qis = [f"op4-{i}" for i in range(4)], [f"qi4-{i}" for i in range(4)]
        four = {"operator": 4 * data_mib / operator_imports(platform, pool, url, sha, four_ops),
                "qemu_img": 4 * data_mib / qemu_img_imports(platform, pool, url, four_qis)}
        cleanup(platform, pool, cluster, four_ops, four_qis)
    finally:
        cluster.shutdown()
        operator.stop()
        stop_platform(platform)
        server.close()

    operator_mib_s, qemu_img_mib_s = statistics.median(rounds["operator"]), statistics.median(rounds["qemu_img"])
    result = {
        "template": {"format": "qcow2 (zlib-compressed clusters)", "virtual_bytes": VIRTUAL, "data_bytes": DATA,
                     "file_bytes": template.stat().st_size},
        "operator_mib_s": round(operator_mib_s, 1), "qemu_img_mib_s": round(qemu_img_mib_s, 1),
        "ratio": round(operator_mib_s / qemu_img_mib_s, 3),
        "four_at_once": {"operator_mib_s": round(four["operator"], 1), "qemu_img_mib_s": round(four["qemu_img"], 1),
                         "ratio": round(four["operator"] / four["qemu_img"], 3)},
        "rounds": {k: [round(v, 1) for v in values] for k, values in rounds.items()},
        "unit": "guest MiB/s (the template's 256 MiB of data over the wall time; medians of interleaved rounds)",
    }
    print(f"imports: operator {operator_mib_s:.1f} MiB/s, qemu-img {qemu_img_mib_s:.1f} MiB/s, "
          f"ratio {result['ratio']:.2f} (goal >= 0.8); four at once: ratio {result['four_at_once']['ratio']:.2f}")
    print(f"written to {record('imports', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
