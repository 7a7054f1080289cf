"""cephx capabilities: profiles, merging clients shared by several storages, weakness."""

from __future__ import annotations

from typing import Iterable, Mapping

from ..api.storage import DEFAULT_CAPS_PROFILE, ClientSpec

Caps = dict[str, str]


def caps_for(client: ClientSpec, pool: str) -> Caps:
    """The caps one storage wants for its client."""
    if client.caps:
        return dict(client.caps)
    pools = [pool] + ([client.cache_pool] if client.cache_pool else [])
    if (client.caps_profile or DEFAULT_CAPS_PROFILE) == "legacy":
        # Exactly the VMmanager seed's caps (+ rwx on a cache tier).
        osd = ["allow class-read object_prefix rbd_children"] + [f"allow rwx pool={p}" for p in pools]
        return {"mon": "allow r", "osd": ", ".join(osd)}
    return {
        "mon": "profile rbd",
        "osd": ", ".join(f"profile rbd pool={p}" for p in pools),
        "mgr": ", ".join(f"profile rbd pool={p}" for p in pools),
    }


def grants(cap: str) -> list[str]:
    return [g.strip() for g in cap.split(",") if g.strip()]


def merge_caps(all_caps: Iterable[Mapping[str, str]]) -> Caps:
    """Union of several storages' caps for one shared client, order-stable."""
    merged: dict[str, list[str]] = {}
    for caps in all_caps:
        for service in sorted(caps):
            bucket = merged.setdefault(service, [])
            for grant in grants(caps[service]):
                if grant not in bucket:
                    bucket.append(grant)
    return {service: ", ".join(items) for service, items in sorted(merged.items()) if items}


def same_caps(a: Mapping[str, str] | None, b: Mapping[str, str] | None) -> bool:
    norm = lambda caps: {s: sorted(grants(c)) for s, c in (caps or {}).items() if grants(c)}  # noqa: E731
    return norm(a) == norm(b)


def caps_weak(caps: Mapping[str, str]) -> bool:
    """True when the client cannot blocklist a dead peer (exclusive-lock needs it).

    Taking over an exclusive lock from a crashed client requires the mon
    `osd blocklist` command; `profile rbd` (and broader caps) include it,
    the seed's `allow r` does not.
    """
    for grant in grants(caps.get("mon", "")):
        g = " ".join(grant.split())
        if g in ("profile rbd", "allow *", "allow rw", "allow rwx", "allow all"):
            return False
        if "command" in g and ("osd blocklist" in g or "osd blacklist" in g):
            return False
    return True
