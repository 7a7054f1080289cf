"""Running libvirt domains and the RBD images they use (pure): what a domain's XML names as its rbd disks,
which images changed users when a host's domains changed, who uses an image (Ceph's watchers corrected by
what the hosts' libvirt says), and which guest disks must be grown.

An image is keyed "pool/image" as libvirt's `<source protocol='rbd' name='pool/image'>` names it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Mapping

from .image_plan import used_by

# A QEMU killed by libvirt (a migration's source, a destroy that had to SIGKILL) leaves its watch in Ceph
# until the OSDs time it out (osd_client_watch_timeout, 30 s by default): for this long after libvirt
# said the domain is gone, that host's watcher is not counted as a user.
WATCH_LINGER_SECONDS = 45.0
MAX_XML = 4 << 20

# host -> domain -> {image key: disk target (vda, ...)}
HostDomains = Mapping[str, Mapping[str, Mapping[str, str]]]


def rbd_disks(xml: str) -> dict[str, str]:
    """A domain's writable rbd disks: {"pool/image": target dev}. Snapshots (`@snap`), RADOS namespaces
    and disks without a target are not images the operator manages, and are left out."""
    if len(xml) > MAX_XML or "<!ENTITY" in xml or "<!DOCTYPE" in xml:
        return {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    out: dict[str, str] = {}
    for disk in root.iterfind("./devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if disk.get("type") != "network" or source is None or target is None:
            continue
        name, dev = source.get("name") or "", target.get("dev") or ""
        if source.get("protocol") != "rbd" or not dev or "@" in name or name.count("/") != 1:
            continue
        pool, image = name.split("/")
        if pool and image:
            out[name] = dev
    return out


def changed_images(before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]]) -> set[str]:
    """Images whose users on one host changed: a domain using them started, stopped or left."""
    out: set[str] = set()
    for domain in set(before) | set(after):
        old, new = before.get(domain, {}), after.get(domain, {})
        if old != new:
            out |= set(old) | set(new)
    return out


def released(before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]]) -> set[str]:
    """Images no domain of the host uses any more (their watch may linger in Ceph for a while)."""
    used_now = {k for disks in after.values() for k in disks}
    return {k for disks in before.values() for k in disks} - used_now


@dataclass(frozen=True, order=True)
class GuestDisk:
    host: str
    domain: str
    dev: str


def guest_disks(key: str, hosts: HostDomains) -> list[GuestDisk]:
    """The running domains' disks whose source is this image, on every host libvirt told us about."""
    return sorted(GuestDisk(host, domain, disks[key]) for host, domains in hosts.items()
                  for domain, disks in domains.items() if key in disks)


def live_users(watchers: list[str], nodes: Mapping[str, str], key: str, hosts: HostDomains,
               gone: Mapping[str, float], now: float) -> list[dict[str, str]]:
    """status.usedBy: Ceph's watchers mapped to hosts (`nodes`: address -> node), without the watch a
    domain that libvirt reported gone less than WATCH_LINGER_SECONDS ago left behind (`gone`: host ->
    when), plus the hosts whose running domains use the image (before or without a watch)."""
    addresses = {node: address for address, node in nodes.items()}
    using = {d.host for d in guest_disks(key, hosts)}
    out = [u for u in used_by(watchers, dict(nodes)) if not (
        u.get("node") and u["node"] not in using and now - gone.get(u["node"], float("-inf")) < WATCH_LINGER_SECONDS)]
    listed = {u.get("node") for u in out}
    for host in sorted(using - listed):
        out.append({"node": host, "address": addresses[host]} if host in addresses else {"node": host})
    return out


def must_grow(capacity: int, size: int) -> bool:
    """A guest's disk is smaller than its image: the guest must be told (block resize)."""
    return 0 < capacity < size


def unmanaged(users: list[dict[str, str]]) -> list[str]:
    """Users no HypervisorNode stands for (their guests are resized by whoever runs them)."""
    return [u["address"] for u in users if not u.get("node") and u.get("address")]
