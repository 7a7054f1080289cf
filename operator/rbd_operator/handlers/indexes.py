"""Every kopf index of the operator and the views its handlers read them through (no handler module
imports another for an index). Index functions are async and cheap: kopf runs each one on every event
of every object of its kind; no parsing here, the readers parse what they need."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from .. import GROUP, VERSION
from ..api.errors import SpecError
from ..api.reasons import Reason
from ..api.snapshot import parse_snapshot
from ..adapters.namespaces import NamespaceInfo
from ..reconcile.tracking import Tracked


@kopf.index(GROUP, VERSION, "rbdimages")
async def images(name: str, namespace: str, uid: str, body: kopf.Body, **_: Any) -> dict:
    """Every RbdImage under three kinds of key, read through the views below:
    ("uid", uid) -> True (an image tagged with a uid not listed belongs to a gone object);
    ("storage", storage name) -> Tracked (what the storage's drift sweep needs);
    ("key", (namespace, name)) -> Tracked (what snapshots and clones resolve; see by_key)."""
    tracked = Tracked.of(name, namespace, uid, body)
    out: dict = {("uid", uid): True, ("key", (namespace, name)): tracked}
    if isinstance(tracked.spec.get("storage"), str):
        out[("storage", tracked.spec["storage"])] = tracked
    return out


@kopf.index(GROUP, VERSION, "rbdstorages")
async def storages(name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, uid: str, **_: Any) -> dict:
    """All RbdStorages by name (RbdImages look their storage up here, not in the API)."""
    return {name: {"spec": copy.deepcopy(dict(spec)), "status": copy.deepcopy(dict(status)), "uid": uid,
                   "deleting": bool(meta.get("deletionTimestamp"))}}


@kopf.index(GROUP, VERSION, "hypervisornodes")
async def hypervisors(name: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict:
    """Hosts by name with their labels, address and what they hold (RbdStorage status summarises it;
    RbdImage status.usedBy names hosts by address)."""
    return {name: {"labels": dict(labels), "address": spec.get("address"),
                   "storages": [dict(s) for s in status.get("storages") or []]}}


@kopf.index(GROUP, VERSION, "rbdsnapshots")
async def snapshots_by_key(namespace: str, name: str, uid: str, spec: kopf.Spec, status: kopf.Status,
                           **_: Any) -> dict:
    """RbdSnapshots by (namespace, name), with whether they are ready (for `spec.source.rbdSnapshot`)."""
    try:
        parsed = parse_snapshot(name, spec)
    except SpecError:
        return {(namespace, name): {"uid": uid, "ready": False}}
    return {(namespace, name): {"uid": uid, "image": parsed.image, "name": parsed.name,
                                "ready": bool(status.get("readyToUse"))}}


@kopf.index(GROUP, VERSION, "rbdimages")
async def images_by_namespace(name: str, namespace: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status,
                              meta: kopf.Meta, **_: Any) -> dict:
    """RbdImages by namespace with their labels (RbdSnapshotSchedule selectors) and the snapshot names a clone
    depends on (spec.source.rbdSnapshot, spec.source.snapshot) while it is not flattened."""
    source = spec.get("source") if isinstance(spec.get("source"), dict) else {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    flattened = bool(source.get("flatten")) and ready
    parents = [v for v in (source.get("rbdSnapshot"), source.get("snapshot")) if isinstance(v, str) and v]
    return {namespace: {"name": name, "labels": dict(labels), "deleting": bool(meta.get("deletionTimestamp")),
                        "parents": [] if flattened else parents}}


@kopf.index(GROUP, VERSION, "rbdsnapshots", labels={"rbd-operator.io/schedule": kopf.PRESENT})
async def scheduled(name: str, namespace: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, **_: Any) -> dict:
    """RbdSnapshots an RbdSnapshotSchedule made, by (namespace, schedule), with their tick and whether their
    deletion waits for clones (Ready reason HasClones)."""
    try:
        tick = int(labels.get("rbd-operator.io/schedule-tick", ""))
    except ValueError:
        return {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return {(namespace, labels["rbd-operator.io/schedule"]): {
        "name": name, "image": spec.get("image"), "tick": tick, "deleting": bool(meta.get("deletionTimestamp")),
        "owners": [r.get("uid") for r in meta.get("ownerReferences") or []],
        "hasClones": bool(ready and ready[0].get("reason") == Reason.HAS_CLONES)}}


@kopf.index("v1", "namespaces")
async def namespaces(name: str, uid: str, labels: kopf.Labels, **_: Any) -> dict:
    """Namespaces: uids (owner records), labels (imageNamespaces, adoption), kube-system's uid (the
    cluster's identity). See adapters/namespaces.py."""
    return {name: NamespaceInfo(uid, dict(labels))}
