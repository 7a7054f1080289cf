"""A dump of what the operator could change in Ceph, to compare before and after an upgrade: pools
(settings, quotas, applications), every auth entity (caps, and a digest of its key: no key is ever
kept or printed), and every image of the given pools (size, features, data pool, parent, snapshots
with their size and protection, image metadata, trash)."""

from __future__ import annotations

import hashlib
import json

import rados
import rbd

POOL_KEYS = ("type", "size", "min_size", "crush_rule", "pg_num", "pg_placement_num", "pg_autoscale_mode",
             "application_metadata", "quota_max_bytes", "quota_max_objects", "erasure_code_profile")


def mon(cluster: rados.Rados, **cmd) -> dict | list:
    ret, out, err = cluster.mon_command(json.dumps({**cmd, "format": "json"}), b"")
    assert ret == 0, f"{cmd['prefix']}: {err}"
    return json.loads(out)


def image_state(ioctx: rados.Ioctx, name: str) -> dict:
    with rbd.Image(ioctx, name, read_only=True) as img:
        try:
            parent = img.get_parent_image_spec()
            parent = {k: parent[k] for k in ("pool_name", "image_name", "snap_name")}
        except rbd.ImageNotFound:
            parent = None
        snaps = sorted(({"name": s["name"], "size": s["size"], "protected": img.is_protected_snap(s["name"])}
                        for s in img.list_snaps()), key=lambda s: s["name"])
        return {"size": img.size(), "features": img.features(), "data_pool_id": img.data_pool_id(),
                "parent": parent, "snapshots": snaps, "metadata": dict(img.metadata_list())}


def dump(cluster: rados.Rados, pools: list[str]) -> dict:
    state: dict = {"pools": {}, "auth": {}, "images": {}, "trash": {}}
    for pool in mon(cluster, prefix="osd pool ls", detail="detail"):
        if pool["pool_name"] in pools:
            state["pools"][pool["pool_name"]] = {k: pool.get(k) for k in POOL_KEYS}
    assert sorted(state["pools"]) == sorted(pools), f"pools missing: {sorted(set(pools) - set(state['pools']))}"
    for entity in mon(cluster, prefix="auth ls")["auth_dump"]:
        state["auth"][entity["entity"]] = {"caps": entity.get("caps", {}),
                                           "key_sha256": hashlib.sha256(entity["key"].encode()).hexdigest()}
    for pool in pools:
        with cluster.open_ioctx(pool) as ioctx:
            state["images"][pool] = {name: image_state(ioctx, name) for name in sorted(rbd.RBD().list(ioctx))}
            state["trash"][pool] = sorted(e["name"] for e in rbd.RBD().trash_list(ioctx))
    return state


def differences(before: dict, after: dict, path: str = "") -> list[str]:
    """Where two dumps differ, as paths (values only for what is not a key digest)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in after:
                out.append(f"{path}/{key}: gone")
            elif key not in before:
                out.append(f"{path}/{key}: new")
            else:
                out.extend(differences(before[key], after[key], f"{path}/{key}"))
        return out
    if before == after:
        return []
    return [f"{path}: changed" if path.endswith("key_sha256") else f"{path}: {before!r} -> {after!r}"]
