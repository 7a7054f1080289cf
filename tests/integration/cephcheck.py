"""Read-only checks of what the operator did in Ceph, through the admin connection."""

from __future__ import annotations

import json

import rados


def mon(cluster: rados.Rados, prefix: str, **args) -> object:
    ret, out, status = cluster.mon_command(json.dumps({"prefix": prefix, "format": "json", **args}), b"")
    if ret == -2:
        return None
    assert ret == 0, f"{prefix}: {status}"
    return json.loads(out) if out else None


def pool(cluster: rados.Rados, name: str) -> dict | None:
    for entry in mon(cluster, "osd dump")["pools"]:
        if entry["pool_name"] == name:
            return entry
    return None


def caps(cluster: rados.Rados, entity: str) -> dict | None:
    reply = mon(cluster, "auth get", entity=entity)
    return reply[0]["caps"] if reply else None


def key(cluster: rados.Rados, entity: str) -> str | None:
    reply = mon(cluster, "auth get", entity=entity)
    return reply[0]["key"] if reply else None


def set_caps(cluster: rados.Rados, entity: str, new: dict) -> None:
    flat = [x for service in sorted(new) for x in (service, new[service])]
    mon(cluster, "auth caps", entity=entity, caps=flat)
