"""RbdImage spec.source.url: templates (qcow2 made by qemu-img, raw) served on loopback and imported."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import rbd

from .harness import wait_for
from .manifests import image, storage

MI = 2**20


class Server:
    """A loopback HTTP server for a directory; `slow` paths are sent at ~2 MiB/s (to kill mid-import)."""

    def __init__(self, root: Path) -> None:
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/redirect-out"):
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.2:1/elsewhere.img")
                    self.end_headers()
                    return
                if not self.path.startswith("/slow/"):
                    return super().do_GET()
                data = (root / self.path[len("/slow/"):]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(0, len(data), 256 * 1024):
                    if outer.stop.is_set():
                        return
                    self.wfile.write(data[i:i + 256 * 1024])
                    time.sleep(0.125)

        self.stop = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    raw = root / "disk.raw"
    with open(raw, "wb") as fh:  # data, a hole, data at the end: thin provisioning must keep the hole
        fh.write(os.urandom(3 * MI) + b"\0" * (10 * MI) + os.urandom(MI + 4096))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=65536", str(raw),
                    str(root / "disk.qcow2")], check=True)
    big = root / "big.raw"
    with open(big, "wb") as fh:
        fh.write(os.urandom(40 * MI))
    server = Server(root)
    try:
        yield root, server
    finally:
        server.close()


@pytest.fixture(scope="module")
def store(platform, operator, templates):
    _, server = templates
    name = "imports"
    platform.apply(storage(platform, name, pool={"pgNum": 8}, client={"name": name},
                           imports={"allowedURLPrefixes": [server.url]}))
    platform.wait_condition("rbds", name, "True")
    return name


def exported(platform, pool: str, name: str, path: Path) -> bytes:
    path.unlink(missing_ok=True)
    platform.rbd_cli("export", f"{pool}/{name}", str(path))
    return path.read_bytes()


def images_in(ceph, pool: str) -> list[str]:
    with ceph.open_ioctx(pool) as ioctx:
        return list(rbd.RBD().list(ioctx))


def test_qcow2_and_raw_templates_import_with_matching_content(platform, ceph, store, templates, uniq, tmp_path):
    root, server = templates
    raw = (root / "disk.raw").read_bytes()
    sha = hashlib.sha256((root / "disk.qcow2").read_bytes()).hexdigest()
    platform.apply(image(f"q-{uniq}", store, source={"url": server.url + "disk.qcow2", "sha256": sha}))
    platform.apply(image(f"r-{uniq}", store, size="32Mi", source={"url": server.url + "disk.raw"}))
    for name in (f"q-{uniq}", f"r-{uniq}"):
        platform.wait_condition("rbdimg", name, "True", namespace="default", timeout=180)
    assert exported(platform, store, f"q-{uniq}", tmp_path / "q") == raw, "qcow2 guest data byte for byte"
    got = exported(platform, store, f"r-{uniq}", tmp_path / "r")
    assert got[:len(raw)] == raw and got[len(raw):] == b"\0" * (32 * MI - len(raw)), "raw, grown to spec.size"
    status = platform.get("rbdimg", f"q-{uniq}", "default")["status"]
    assert status["import"]["percent"] == 100 and status["sizeBytes"] == len(raw)
    assert "Imported" in {e["reason"] for e in platform.events(f"q-{uniq}")}
    assert not [i for i in images_in(ceph, store) if i.startswith("rbdop-new-")], "no scratch or staging left"


def test_bad_imports_leave_nothing(platform, ceph, store, templates, uniq):
    _, server = templates
    platform.apply(image(f"bad-sha-{uniq}", store, source={"url": server.url + "disk.raw", "sha256": "0" * 64}))
    cond = platform.wait_condition("rbdimg", f"bad-sha-{uniq}", "False", "ChecksumMismatch", namespace="default",
                                   timeout=120)
    assert "0" * 64 in cond["message"]
    platform.apply(image(f"elsewhere-{uniq}", store, size="1Mi", source={"url": "http://127.0.0.2:9/x.img"}))
    platform.wait_condition("rbdimg", f"elsewhere-{uniq}", "False", "ImportNotAllowed", namespace="default")
    platform.apply(image(f"redirect-{uniq}", store, size="1Mi", source={"url": server.url + "redirect-out"}))
    platform.wait_condition("rbdimg", f"redirect-{uniq}", "False", "ImportNotAllowed", namespace="default")
    listed = images_in(ceph, store)
    assert not [i for i in listed if i.startswith("rbdop-new-") or uniq in i], listed
    for name in (f"bad-sha-{uniq}", f"elsewhere-{uniq}", f"redirect-{uniq}"):
        platform.delete("rbdimg", name, "default", wait=True)


def test_operator_killed_mid_import_ends_with_one_complete_image(platform, operator, ceph, store, templates, uniq,
                                                                 tmp_path):
    root, server = templates
    name = f"slow-{uniq}"
    platform.apply(image(name, store, source={"url": server.url + "slow/big.raw"}))
    wait_for(lambda: (platform.get("rbdimg", name, "default").get("status") or {}).get("import", {}).get("bytes", 0)
             > 4 * MI, 60, what="the import under way")
    operator.kill(signal.SIGKILL)
    operator.start()
    platform.wait_condition("rbdimg", name, "True", namespace="default", timeout=240)
    assert exported(platform, store, name, tmp_path / "big") == (root / "big.raw").read_bytes()
    assert [i for i in images_in(ceph, store) if i == name or i.startswith("rbdop-new-")] == [name]
