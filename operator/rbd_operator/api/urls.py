"""Template URLs as servers will read them (pure: no I/O).

A URL is checked in its canonical form, the one a web server reaches after its own normalisation:
scheme and host in lower case, no default port, percent-escapes of unreserved characters decoded
(the others in upper case), no `.`/`..` segments (`%2e` counts as a dot), no duplicate slashes, no
backslashes, no fragment. A URL (or an allowed prefix) that is not already in that form is refused
rather than rewritten: the operator fetches exactly what the spec says, and what it says is what the
prefix check saw. Refused outright, whatever their form: userinfo (`user@host`), encoded slashes or
backslashes in the path (`%2F`, `%5C`: some servers decode them before resolving `..`), `..;`-style
segments, IPv6 zone ids, numeric hosts that are not a dotted quad (`127.1`, `0x7f.0.0.1`, `2130706433`).

A prefix admits a URL of the same scheme, host and port whose path starts with the prefix's path at
a segment boundary: `http://h/templates/` admits `http://h/templates/x`; `http://h/templates` admits
`http://h/templates` itself and `http://h/templates/x`, not `http://h/templates-private/x`. A prefix has
no query or fragment; a URL's query string is not part of the check.

Resolved addresses: loopback, link-local, unspecified (0.0.0.0/8, ::) and multicast addresses (also
as IPv4-mapped IPv6) are refused unless the URL's host is that literal IP (a prefix then names it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What a URL may hold at all (the CRD's and the spec parser's character set).
_CHARS = re.compile(r"^[A-Za-z0-9._~:/?#@!$&'()*+,;=%\[\]\\-]+\Z")
_ESCAPE = re.compile(r"%(.?.?)")
_HOSTNAME = re.compile(r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)\Z")
MAX_LENGTH = 2000


class UrlRefused(ValueError):
    """A URL (or prefix) the operator will not fetch from; the message says why (query redacted)."""


@dataclass(frozen=True)
class Url:
    """A URL in its canonical form, taken apart."""
    scheme: str
    host: str            # lower case; an IPv6 literal without brackets
    port: int
    path: str
    query: str | None    # None: no '?'

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def literal_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}" + ("" if self.query is None else "?" + self.query)


def redact(url: str, limit: int = 200) -> str:
    """The URL as it may be shown (status, events, logs, metrics): no query string, fragment or userinfo."""
    text = str(url)
    cut = re.search(r"[?#]", text)
    base = text[:cut.start()] if cut else text
    scheme_end = base.find("://")
    if scheme_end >= 0:
        rest = base[scheme_end + 3:]
        slash = rest.find("/")
        authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        if "@" in authority:
            authority = "…@" + authority.rsplit("@", 1)[1]
        base = base[:scheme_end + 3] + authority + path
    shown = base[:limit] + ("…" if len(base) > limit else "")
    return shown + ("?…" if cut and text[cut.start()] == "?" else "")


_IN_TEXT = re.compile(r"(https?://[^\s?#'\"\\<>]*)[?#][^\s'\"\\<>]*", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Every URL's query string (and fragment) in free text replaced by `?…` (log lines, messages)."""
    return _IN_TEXT.sub(lambda m: m.group(1) + "?…", text) if "://" in text else text


def _decode_unreserved(part: str, what: str) -> str:
    """Percent-escapes of unreserved characters decoded, the others in upper case; bad escapes refused."""
    def one(m: re.Match) -> str:
        hexits = m.group(1)
        if len(hexits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hexits):
            raise UrlRefused(f"{what} has a malformed percent-escape")
        char = chr(int(hexits, 16))
        return char if char in _UNRESERVED else "%" + hexits.upper()
    return _ESCAPE.sub(one, part)


def _remove_dots(path: str) -> str:
    """RFC 3986 5.2.4 on a path whose unreserved escapes are decoded; duplicate slashes collapsed."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif seg or last:
            out.append(seg)
    return "/" + "/".join(out)


def _host(raw: str, what: str) -> str:
    if raw.startswith("["):
        if not raw.endswith("]") or "%" in raw:
            raise UrlRefused(f"{what} has a malformed IPv6 literal (zone ids are refused)")
        try:
            return str(ipaddress.IPv6Address(raw[1:-1]))
        except ValueError:
            raise UrlRefused(f"{what} has a malformed IPv6 literal") from None
    host = raw.lower()
    if "%" in host or not _HOSTNAME.match(host.rstrip(".") or "-"):
        raise UrlRefused(f"{what} has no valid host name")
    if _NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise UrlRefused(f"{what}: a numeric host must be a dotted-quad IPv4 address") from None
        return str(ip)  # leading zeros are refused by ipaddress; this is the canonical form
    return host.rstrip(".")


def _port(raw: str | None, scheme: str, what: str) -> int:
    if raw is None:
        return DEFAULT_PORTS[scheme]
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise UrlRefused(f"{what} has an invalid port")
    return int(raw)


def parse(url: str, what: str = "the URL") -> Url:
    """Take a URL apart into its canonical form (UrlRefused if it cannot have one). Not a check that the URL
    *is* canonical: see `check`."""
    if not isinstance(url, str) or not url or len(url) > MAX_LENGTH or not _CHARS.fullmatch(url):
        raise UrlRefused(f"{what} is not an http(s) URL of at most {MAX_LENGTH} URL characters")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#\\]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?\Z", url)
    if not m or m.group(1).lower() not in DEFAULT_PORTS:
        raise UrlRefused(f"{what} is not an http(s) URL")
    scheme, authority, path, query = m.group(1).lower(), m.group(2), m.group(3), m.group(4)
    if "@" in authority:
        raise UrlRefused(f"{what} has userinfo (user@host): credentials do not belong in a URL the operator shows")
    hm = re.match(r"^(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?\Z", authority)
    if not hm or not hm.group(1):
        raise UrlRefused(f"{what} has no valid host")
    host, port = _host(hm.group(1), what), _port(hm.group(2), scheme, what)
    decoded = _decode_unreserved(path.replace("\\", "/"), what)
    if re.search(r"%(2F|5C|00)", decoded):
        raise UrlRefused(f"{what} has an encoded slash, backslash or NUL in its path")
    if any(seg.split(";", 1)[0] in (".", "..") and ";" in seg for seg in decoded.split("/")):
        raise UrlRefused(f"{what} has a dot segment with parameters (such as ..;)")
    if query is not None:
        _decode_unreserved(query, what)  # escapes must be well formed; the query is kept as written
    return Url(scheme, host, port, _remove_dots(decoded or "/"), query)


def check(url: str, what: str = "the URL") -> Url:
    """The URL taken apart, if it is in its canonical form; UrlRefused otherwise (the message names the
    canonical form, query redacted)."""
    parsed = parse(url, what)
    canonical = str(parsed)
    if canonical != url:
        raise UrlRefused(f"{what} is not in the form a server reads it ({redact(url)} reads as {redact(canonical)}: "
                         "dot segments, duplicate slashes, backslashes, escapes of unreserved characters, fragments, "
                         "a default port or upper case are refused); write it in that form")
    return parsed


def check_prefix(prefix: str, what: str = "the prefix") -> Url:
    """An allowed prefix: canonical, no query or fragment."""
    if isinstance(prefix, str) and ("?" in prefix or "#" in prefix):
        raise UrlRefused(f"{what} has a query or fragment; a prefix is scheme://host[:port]/path")
    return check(prefix, what)


def under(url: Url, prefix: Url) -> bool:
    """Whether `prefix` admits `url` (both canonical): same scheme, host and port; path at a segment boundary."""
    if (url.scheme, url.host, url.port) != (prefix.scheme, prefix.host, prefix.port):
        return False
    if prefix.path.endswith("/"):
        return url.path.startswith(prefix.path)
    return url.path == prefix.path or url.path.startswith(prefix.path + "/")


def admitted(url: str, prefixes: tuple[str, ...] | list[str]) -> Url:
    """The URL taken apart if it is canonical and under one of the (canonical) prefixes; UrlRefused otherwise."""
    parsed = check(url)
    for prefix in prefixes:
        try:
            if under(parsed, check_prefix(prefix)):
                return parsed
        except UrlRefused:
            continue  # a prefix the API validation would refuse admits nothing
    raise UrlRefused(f"{redact(url)} is not under the storage's spec.imports.allowedURLPrefixes")


def address_problem(address: str, url: Url) -> str | None:
    """Why the operator will not connect to `address` (resolved from url.host), or None. A special address is
    allowed only when the URL names it literally (its prefix then names it too)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    literal = url.literal_ip
    if literal is not None and literal == ip:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    for candidate in (ip, mapped):
        if candidate is None:
            continue
        if candidate.is_loopback:
            return "a loopback address"
        if candidate.is_link_local:
            return "a link-local address"
        if candidate.is_unspecified or (candidate.version == 4 and candidate in ipaddress.ip_network("0.0.0.0/8")):
            return "an unspecified address"
        if candidate.is_multicast:
            return "a multicast address"
    return None
