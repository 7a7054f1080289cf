"""Hostile template servers and URLs (#20): trickles, `..` and `%2e%2e`, names resolving to special addresses,
presigned tokens. A real HTTP server on loopback; the fetch layer alone first, then the real operator."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from rbd_operator.adapters import fetch

from .harness import SLOT, wait_for
from .manifests import image, storage

MI = 2**20
STALL = 10  # the storage's spec.imports.stallTimeout in the operator tests, seconds


class Hostile:
    """A loopback HTTP server that records every connection and request. Paths (under /templates/ unless said):
    good.raw (a file), trickle* (Content-Length 100 MB, then 1 byte a second), chunk-trickle (chunked, the size
    line trickled), header-trickle (the status line trickled), /private/x (never to be asked for)."""

    def __init__(self, data: bytes) -> None:
        outer = self
        self.data = data
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.accepts = 0
        self.trickling = 0
        self.trickle_ends: list[float] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _drip(self, piece: bytes) -> None:
                while not outer.stop.is_set():
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(1)

            def do_GET(self):  # noqa: N802
                with outer.lock:
                    outer.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                if path == "/templates/good.raw":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(outer.data)))
                    self.end_headers()
                    self.wfile.write(outer.data)
                    return
                if path == "/templates/header-trickle":
                    try:
                        for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
                            if outer.stop.is_set():
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(1)
                    except OSError:
                        return
                    return
                if not path.startswith("/templates/trickle") and path != "/templates/chunk-trickle":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                chunked = path == "/templates/chunk-trickle"
                self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", "100000000")))
                self.end_headers()
                with outer.lock:
                    outer.trickling += 1
                try:
                    self._drip(b"0" if chunked else b"x")
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.trickling -= 1
                        outer.trickle_ends.append(time.monotonic())
                self.close_connection = True

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that hung up: expected here
                pass

            def get_request(self):
                got = super().get_request()
                with outer.lock:
                    outer.accepts += 1
                return got

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()


class HostsLine:
    """One line in /etc/hosts for the duration of a test (removed in a finally, exactly that line)."""

    def __init__(self, address: str, name: str) -> None:
        self.line = f"{address} {name}  # rbd-operator test slot {SLOT}\n"

    def __enter__(self) -> HostsLine:
        with open("/etc/hosts", "a") as fh:
            fh.write(self.line)
        return self

    def __exit__(self, *exc: object) -> None:
        with open("/etc/hosts") as fh:
            lines = fh.readlines()
        if self.line in lines:
            lines.remove(self.line)
            with open("/etc/hosts", "w") as fh:
                fh.writelines(lines)


@pytest.fixture(scope="module")
def server():
    srv = Hostile(os.urandom(8 * MI))
    try:
        yield srv
    finally:
        srv.close()


def drain(stream: fetch.TemplateStream) -> int:
    total = 0
    while True:
        chunk = stream.read(4 * MI)
        if not chunk:
            return total
        total += len(chunk)


# -- the fetch layer alone (no platform) ---------------------------------------------------------------------
@pytest.mark.parametrize("path", ["trickle-a", "chunk-trickle", "header-trickle"])
def test_a_trickle_ends_at_the_stall_window(server, path):
    prefixes = (server.url + "templates/",)
    started = time.monotonic()
    with pytest.raises(fetch.ImportFailed) as err:
        drain(fetch.open_template(server.url + f"templates/{path}?sig=s3cr3t", prefixes, stall_timeout=3))
    took = time.monotonic() - started
    assert err.value.reason == "ImportStalled" and not err.value.permanent, err.value.message
    assert 2.9 <= took <= 4.5, f"a 1 byte/s trickle must end at the 3 s window, took {took:.1f}s"
    assert "s3cr3t" not in err.value.message and "?…" in err.value.message


def test_a_download_past_its_deadline_ends(server):
    started = time.monotonic()
    with pytest.raises(fetch.ImportFailed) as err:  # stall window longer than the deadline
        drain(fetch.open_template(server.url + "templates/trickle-d", (server.url,), stall_timeout=60, deadline=3))
    assert err.value.reason == "ImportStalled" and "deadline" in err.value.message
    assert time.monotonic() - started < 5
    assert fetch.default_deadline(10 * 2**30) == 600 + 10 * 1024 and fetch.default_deadline(None) == 5.5 * 3600


def test_a_good_download_reads_whole_with_its_length(server):
    stream = fetch.open_template(server.url + "templates/good.raw?X-Amz-Signature=s3cr3t", (server.url,))
    with stream:
        assert stream.length == len(server.data) and "s3cr3t" not in stream.display_url
        got = b"".join(iter(lambda: stream.read(4 * MI), b""))
    assert got == server.data


@pytest.mark.parametrize("path", ["templates/../private/x", "templates/%2e%2e/private/x", "templates/%2E%2e/private/x",
                                  "templates//good.raw", "templates\\..\\private\\x", "templates/good.raw#f",
                                  "templates/..%2Fprivate/x", "templates-private/x"])
def test_hostile_paths_fetch_nothing(server, path):
    before = server.accepts
    with pytest.raises(fetch.ImportFailed) as err:
        fetch.open_template(server.url + path, (server.url + "templates",))
    assert err.value.reason == "ImportNotAllowed" and err.value.permanent
    assert server.accepts == before, "no connection may be made"


def test_names_resolving_to_special_addresses_are_refused_without_connecting(server):
    name = f"rbdop-loop-s{SLOT}.test"
    with HostsLine("127.0.0.1", name), HostsLine("169.254.169.254", f"rbdop-metadata-s{SLOT}.test"):
        before = server.accepts
        with pytest.raises(fetch.ImportFailed) as err:
            fetch.open_template(f"http://{name}:{server.port}/templates/good.raw", (f"http://{name}:{server.port}/",))
        assert err.value.reason == "ImportNotAllowed" and "loopback" in err.value.message
        assert server.accepts == before, "the server named through a loopback name saw no connection"
        with pytest.raises(fetch.ImportFailed) as err:
            fetch.open_template(f"http://rbdop-metadata-s{SLOT}.test/latest/meta-data",
                                (f"http://rbdop-metadata-s{SLOT}.test/latest/",))
        assert err.value.reason == "ImportNotAllowed" and "169.254.169.254" in err.value.message
        assert "link-local" in err.value.message
    # The literal IP named by the prefix stays allowed (the test servers themselves).
    with fetch.open_template(server.url + "templates/good.raw", (server.url,)) as stream:
        assert stream.read(10) == server.data[:10]


# -- the operator ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(platform, operator, server):
    name = "hostile"
    platform.apply(storage(platform, name, pool={"pgNum": 8}, client={"name": name},
                           imports={"allowedURLPrefixes": [server.url + "templates/",
                                                           f"http://rbdop-metadata-s{SLOT}.test/latest/"],
                                    "stallTimeout": f"{STALL}s"}))
    platform.wait_condition("rbds", name, "True")
    return name


class RssSampler:
    """The operator's resident memory, sampled every half second in the background."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.samples.append(self.rss())
            except OSError:
                return

    def __enter__(self) -> RssSampler:
        self.baseline = self.rss()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_trickles_stall_free_their_slots_and_a_queued_import_completes(platform, operator, ceph, store, server, uniq,
                                                                       tmp_path):
    assert os.environ.get("RBD_OPERATOR_IMPORTS", "2") == "2", "the test fills an import pool of 2"
    trickles = [f"trickle{i}-{uniq}" for i in (1, 2)]
    good = f"queued-{uniq}"
    with RssSampler(operator.proc.pid) as rss:
        for i, name in enumerate(trickles):
            platform.apply(image(name, store, size="1Mi", source={"url": server.url + f"templates/trickle{i}-{uniq}"}))
        wait_for(lambda: server.trickling >= 2, 60, what="both trickles holding the import pool")
        holding = time.monotonic()
        platform.apply(image(good, store, source={"url": server.url + "templates/good.raw"}))
        for name in trickles:
            cond = platform.wait_condition("rbdimg", name, "False", "ImportStalled", namespace="default", timeout=60)
            assert "64 KiB" in cond["message"] and "stallTimeout" in cond["message"]
            assert "ImportStalled" in {e["reason"] for e in platform.events(name)}
        platform.wait_condition("rbdimg", good, "True", namespace="default", timeout=120)
        done = time.monotonic()
    # The server notices a closed connection at its next write (a second later, at most).
    first_end = min(wait_for(lambda: [t for t in server.trickle_ends if t > holding], 5,
                             what="the trickles' connections closed"))
    good_at = [i for i, p in enumerate(server.requests) if p == "/templates/good.raw"]
    assert good_at, "the queued import fetched its template"
    assert first_end - holding <= STALL + 5, f"a trickle's connection ended {first_end - holding:.1f}s after both held"
    assert exported(platform, store, good, tmp_path / "good") == server.data
    peak = max(rss.samples)
    print(f"\noperator RSS: baseline {rss.baseline / MI:.0f} MiB, peak {peak / MI:.0f} MiB over {len(rss.samples)} "
          f"samples; queued import done {done - holding:.1f}s after both slots were held")
    assert peak - rss.baseline < 100 * MI, f"RSS grew {(peak - rss.baseline) / MI:.0f} MiB during the trickles"
    for name in trickles + [good]:
        platform.delete("rbdimg", name, "default", wait=True)


def exported(platform, pool: str, name: str, path: Path) -> bytes:
    path.unlink(missing_ok=True)
    platform.rbd_cli("export", f"{pool}/{name}", str(path))
    return path.read_bytes()


def test_hostile_urls_and_special_addresses_are_refused_by_the_operator(platform, store, server, uniq):
    before = list(server.requests)
    cases = {f"dots-{uniq}": server.url + "templates/../private/x",
             f"enc-{uniq}": server.url + "templates/%2e%2e/private/x",
             f"meta-{uniq}": f"http://rbdop-metadata-s{SLOT}.test/latest/meta-data"}
    with HostsLine("169.254.169.254", f"rbdop-metadata-s{SLOT}.test"):
        for name, url in cases.items():
            platform.apply(image(name, store, size="1Mi", source={"url": url}))
        conds = {name: platform.wait_condition("rbdimg", name, "False", "ImportNotAllowed", namespace="default")
                 for name in cases}
    assert "169.254.169.254" in conds[f"meta-{uniq}"]["message"]
    assert "not in the form a server reads it" in conds[f"dots-{uniq}"]["message"]
    assert server.requests == before, "the server saw no request"
    for name in cases:
        platform.delete("rbdimg", name, "default", wait=True)


def test_presigned_tokens_appear_nowhere(platform, operator, store, server, uniq):
    secret = f"SeCrEt{uniq}"
    ok, stalled, refused = f"sig-{uniq}", f"sigstall-{uniq}", f"sigdots-{uniq}"
    platform.apply(image(ok, store, source={"url": server.url + f"templates/good.raw?X-Amz-Signature={secret}"}))
    platform.apply(image(stalled, store, size="1Mi",
                         source={"url": server.url + f"templates/trickle-sig?X-Amz-Signature={secret}"}))
    platform.apply(image(refused, store, size="1Mi",
                         source={"url": server.url + f"templates/../x?X-Amz-Signature={secret}"}))
    platform.wait_condition("rbdimg", ok, "True", namespace="default", timeout=120)
    platform.wait_condition("rbdimg", stalled, "False", "ImportStalled", namespace="default", timeout=60)
    platform.wait_condition("rbdimg", refused, "False", "ImportNotAllowed", namespace="default")
    assert any(secret in p for p in server.requests), "the token did reach the server"
    for name in (ok, stalled, refused):
        obj = platform.get("rbdimg", name, "default")
        assert secret not in json.dumps(obj.get("status")), f"{name}: status"
        events = platform.events(name)
        assert events and secret not in json.dumps(events), f"{name}: events"
    imported = [e for e in platform.events(ok) if e["reason"] == "Imported"]
    assert imported and "good.raw?…" in imported[0]["message"]
    assert secret not in operator.log_text(), "the operator's log"
    assert secret not in operator.metrics(), "the metrics"
    for name in (ok, stalled, refused):
        platform.delete("rbdimg", name, "default", wait=True)
