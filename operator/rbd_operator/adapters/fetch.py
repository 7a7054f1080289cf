"""The HTTP side of template imports: a URL fetched as checked, bounded in time.

- The URL (and every redirect hop) must be canonical and under an allowed prefix (api/urls.py).
- Its host is resolved once; loopback, link-local, unspecified and multicast addresses are refused
  unless the URL names that literal IP; the connection goes to exactly the address checked (no second
  lookup), with the original host in the Host header and, over TLS, as SNI and the name the
  certificate is verified against.
- Stall rule: a transfer that moves less than STALL_BYTES in a stall window (RbdStorage
  spec.imports.stallTimeout) ends with ImportStalled; so does one past its deadline (by default
  DEADLINE_BASE plus the Content-Length at FLOOR_BYTES_PER_SECOND, at most MAX_DEADLINE). A watchdog
  thread shuts the socket down, so that no read (TLS handshake, status line, chunk header, body)
  blocks beyond the window: the import's thread returns and its slot in the import pool is free.
- URLs are shown redacted (no query string) in every message.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any

from ..api import urls
from ..api.errors import OperatorError
from ..api.reasons import Reason

MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 30.0
STALL_BYTES = 64 * 1024
DEFAULT_STALL_TIMEOUT = 120.0
FLOOR_BYTES_PER_SECOND = 2**20        # the slowest average rate a template of known length may come at
DEADLINE_BASE = 600.0                 # ... plus this much time
MAX_DEADLINE = 5.5 * 3600             # below the handler's own bound on an import (converge/image.py)
WATCHDOG_TICK = 0.5
READ_PATIENCE = 1.0                   # a read returns what it has after this long (progress keeps moving)


class ImportFailed(OperatorError):
    """URLUnreachable, ImportStalled (retried), ImportNotAllowed, and the importer's permanent reasons."""


def default_deadline(length: int | None) -> float:
    """Seconds a download of `length` bytes may take in all (unknown length: MAX_DEADLINE)."""
    if length is None:
        return MAX_DEADLINE
    return min(MAX_DEADLINE, DEADLINE_BASE + length / FLOOR_BYTES_PER_SECOND)


class _Guard:
    """One transfer's clock: its stall windows and deadline; `abort` shuts its socket down."""

    def __init__(self, stall: float, deadline_at: float) -> None:
        self.lock = threading.Lock()
        self.stall = stall
        self.deadline_at = deadline_at
        self.window_start = time.monotonic()
        self.window_bytes = 0
        self.problem: str | None = None
        self.sock: socket.socket | None = None

    def moved(self, n: int) -> None:
        with self.lock:
            self.window_bytes += n

    def check(self) -> str | None:
        """The reason this transfer must end, if it must (rolls the stall window otherwise)."""
        with self.lock:
            if self.problem:
                return self.problem
            now = time.monotonic()
            if now >= self.deadline_at:
                self.problem = "the download did not finish within its deadline"
            elif now - self.window_start >= self.stall:
                if self.window_bytes < STALL_BYTES:
                    self.problem = (f"less than {STALL_BYTES // 1024} KiB moved in {self.stall:g}s "
                                    "(spec.imports.stallTimeout)")
                else:
                    self.window_start, self.window_bytes = now, 0
            return self.problem

    def attach(self, sock: socket.socket | None) -> None:
        with self.lock:
            self.sock = sock

    def abort(self, detach: bool = False) -> None:
        """Shut the socket down (under the lock: never a descriptor closed meanwhile and reused)."""
        with self.lock:
            sock = self.sock
            if detach:
                self.sock = None
            if sock is not None:
                try:  # the plain socket's shutdown, also under TLS: wakes any thread blocked on it
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class _Watchdog:
    """One daemon thread for all transfers: ends those past their window or deadline."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.guards: set[_Guard] = set()
        self.thread: threading.Thread | None = None

    def add(self, guard: _Guard) -> None:
        with self.cond:
            self.guards.add(guard)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="import-watchdog", daemon=True)
                self.thread.start()
            self.cond.notify()

    def remove(self, guard: _Guard) -> None:
        with self.cond:
            self.guards.discard(guard)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.guards:
                    self.cond.wait()
                guards = list(self.guards)
            for guard in guards:
                if guard.check():
                    guard.abort()
            time.sleep(WATCHDOG_TICK)


_watchdog = _Watchdog()


def resolve(url: urls.Url) -> list[tuple[int, Any]]:
    """The host's addresses (one lookup), each checked; (family, sockaddr) to connect to as they are."""
    try:
        infos = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImportFailed(Reason.URL_UNREACHABLE, f"{url.host}: cannot be resolved ({exc})") from None
    out = []
    for family, _, _, _, sockaddr in infos:
        problem = urls.address_problem(sockaddr[0], url)
        if problem:
            raise ImportFailed(Reason.IMPORT_NOT_ALLOWED, f"{url.host} resolves to {sockaddr[0]}, {problem}: the "
                               "operator connects to such an address only when the URL names it literally (and an "
                               "allowed prefix does); nothing was fetched", retry=False)
        out.append((family, sockaddr))
    if not out:
        raise ImportFailed(Reason.URL_UNREACHABLE, f"{url.host}: no address")
    return out


def _connect(addresses: list[tuple[int, Any]], guard: _Guard) -> socket.socket:
    """A TCP connection to one of the checked addresses, exactly (no lookup)."""
    last: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        guard.attach(sock)
        try:
            sock.settimeout(min(CONNECT_TIMEOUT, guard.stall))
            sock.connect(sockaddr)
            sock.settimeout(guard.stall)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            guard.attach(None)
            sock.close()
            last = exc
            if guard.problem:
                break
    raise last or OSError("no address to connect to")


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to the address that was checked; Host: the URL's host."""

    def __init__(self, url: urls.Url, addresses: list[tuple[int, Any]], guard: _Guard) -> None:
        super().__init__(url.host, url.port, timeout=guard.stall)
        self._addresses, self._guard = addresses, guard

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self._guard)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the address that was checked; SNI and certificate verification against the URL's host."""

    def __init__(self, url: urls.Url, addresses: list[tuple[int, Any]], guard: _Guard) -> None:
        super().__init__(url.host, url.port, timeout=guard.stall, context=ssl.create_default_context())
        self._addresses, self._guard = addresses, guard

    def connect(self) -> None:
        sock = _connect(self._addresses, self._guard)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            self._guard.attach(None)
            sock.close()
            raise
        self._guard.attach(self.sock)


class TemplateStream:
    """A template's bytes as they arrive: read(n) -> up to n bytes (fewer when they come slowly; b"" only at the
    end), `length` (Content-Length, None if not sent), close(). Reads end with ImportStalled when the stall rule or the deadline says so."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, guard: _Guard,
                 display_url: str) -> None:
        self._conn, self._resp, self._guard = conn, resp, guard
        self.display_url = display_url
        self.length: int | None = resp.length
        self.received = 0
        self.closed = False

    def __enter__(self) -> TemplateStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ended(self) -> None:
        problem = self._guard.check()
        if problem:
            self.close()
            raise ImportFailed(Reason.IMPORT_STALLED, f"{self.display_url}: {problem} (after {self.received} "
                               "bytes); the connection was closed")

    def read(self, n: int) -> bytes:
        if self.closed:
            raise ValueError("read from a closed TemplateStream")
        parts, got, began = [], 0, time.monotonic()
        while got < n and not (got and time.monotonic() - began > READ_PATIENCE):
            self._ended()
            try:
                chunk = self._resp.read1(n - got)
            except (OSError, http.client.HTTPException) as exc:
                self._ended()  # a socket shut down by the watchdog, or timed out: the stall rule's doing
                self.close()
                if isinstance(exc, TimeoutError):
                    raise ImportFailed(Reason.IMPORT_STALLED, f"{self.display_url}: nothing arrived in "
                                       f"{self._guard.stall:g}s (spec.imports.stallTimeout)") from None
                raise ImportFailed(Reason.URL_UNREACHABLE, f"{self.display_url}: download interrupted after "
                                   f"{self.received} bytes ({type(exc).__name__})") from None
            if not chunk:
                self._ended()  # an aborted transfer reads as an end: it is not one
                if self.length is not None and self.received < self.length:
                    self.close()
                    raise ImportFailed(Reason.URL_UNREACHABLE, f"{self.display_url}: download ended after "
                                       f"{self.received} of {self.length} bytes")
                break
            self._guard.moved(len(chunk))
            self.received += len(chunk)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _watchdog.remove(self._guard)
        self._guard.abort(detach=True)  # never back into a keep-alive pool: nothing else reads it
        for closing in (self._resp.close, self._conn.close):
            try:
                closing()
            except OSError:
                pass


def _refused(exc: urls.UrlRefused) -> ImportFailed:
    return ImportFailed(Reason.IMPORT_NOT_ALLOWED, f"{exc}; nothing was fetched", retry=False)


def _get(url: urls.Url, guard: _Guard) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    addresses = resolve(url)
    conn: http.client.HTTPConnection = (_PinnedHTTPS if url.scheme == "https" else _PinnedHTTP)(url, addresses, guard)
    try:
        conn.request("GET", url.path + ("" if url.query is None else "?" + url.query),
                     headers={"User-Agent": "rbd-operator", "Accept-Encoding": "identity"})
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        guard.abort(detach=True)
        conn.close()
        problem = guard.check()
        if problem or isinstance(exc, TimeoutError):
            raise ImportFailed(Reason.IMPORT_STALLED, f"{urls.redact(str(url))}: "
                               f"{problem or 'no answer in the stall window'}") from None
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ImportFailed(Reason.URL_UNREACHABLE, f"{url.scheme}://{url.netloc}: {detail}") from None


def open_template(url: str, prefixes: tuple[str, ...], *, stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                  deadline: float | None = None) -> TemplateStream:
    """GET url, following redirects only within the allowed prefixes (each hop checked and resolved anew).
    `deadline`: seconds the whole download may take from now (None: default_deadline of its Content-Length).
    Raises ImportFailed (ImportNotAllowed: nothing was fetched; URLUnreachable, ImportStalled: retried)."""
    start = time.monotonic()
    guard = _Guard(max(float(stall_timeout), 1.0), start + (MAX_DEADLINE if deadline is None else deadline))
    _watchdog.add(guard)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                checked = urls.admitted(url, prefixes)
            except urls.UrlRefused as exc:
                raise _refused(exc) from None
            conn, resp = _get(checked, guard)
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                guard.abort(detach=True)
                resp.close()
                conn.close()
                url = urllib.parse.urljoin(url, location.strip())
                continue
            if resp.status != 200:
                guard.abort(detach=True)
                resp.close()
                conn.close()
                raise ImportFailed(Reason.URL_UNREACHABLE, f"{urls.redact(url)}: HTTP {resp.status}")
            if deadline is None:
                guard.deadline_at = start + default_deadline(resp.length)
            return TemplateStream(conn, resp, guard, urls.redact(url))
        raise ImportFailed(Reason.URL_UNREACHABLE, f"{urls.redact(url)}: more than {MAX_REDIRECTS} redirects")
    except BaseException:
        _watchdog.remove(guard)
        guard.abort(detach=True)
        raise
