"""Every index of the operator (no handler module imports another for an index): kopf indexes, and the two
RbdImage indexes kept from kopf's watch stream instead (reconcile/informer.py: at 20,000 RbdImages a kopf
index is the restart's memory peak). Index functions are cheap: they run on every event of every object of
their kind; no parsing here, the readers parse what they need."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any, Mapping

import kopf

from .. import GROUP, VERSION, kopf_fixes
from ..api.errors import SpecError, Waiting
from ..api.reasons import Reason
from ..api.snapshot import parse_snapshot
from ..adapters.namespaces import NamespaceInfo
from ..reconcile.informer import Informed
from ..reconcile.tracking import Tracked

log = logging.getLogger(__name__)


# -- RbdImages: not kopf indexes (reconcile/informer.py says why); kept from the watch stream -------------------
def image_entries(raw: Mapping[str, Any]) -> dict:
    """Every RbdImage under three kinds of key, read through reconcile/tracking's views:
    ("uid", uid) -> True (an image tagged with a uid not listed belongs to a gone object);
    ("storage", storage name) -> Tracked (what the storage's drift sweep needs);
    ("key", (namespace, name)) -> Tracked (what snapshots and clones resolve; see by_key).
    A body that cannot be read keeps its uid (it still exists: its images are never taken for a gone
    object's) and nothing else."""
    meta = raw.get("metadata") or {}
    uid = meta.get("uid")
    out: dict = {("uid", uid): True}
    try:
        name, namespace = meta["name"], meta["namespace"]
        tracked = Tracked.of(name, namespace, uid, raw)
    except Exception:  # noqa: BLE001 - a hostile or broken body: known to exist, nothing more
        log.warning("RbdImage with uid %s: its body could not be indexed", uid)
        return out
    out[("key", (namespace, name))] = tracked
    if isinstance(tracked.spec.get("storage"), str):
        out[("storage", tracked.spec["storage"])] = tracked
    return out


def image_namespace_entries(raw: Mapping[str, Any]) -> dict:
    """RbdImages by namespace with their labels (RbdSnapshotSchedule selectors) and the snapshot names a clone
    depends on (spec.source.rbdSnapshot, spec.source.snapshot) while it is not flattened."""
    try:
        meta, spec, status = raw.get("metadata") or {}, raw.get("spec") or {}, raw.get("status") or {}
        source = spec.get("source") if isinstance(spec.get("source"), dict) else {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        flattened = bool(source.get("flatten")) and ready
        parents = [v for v in (source.get("rbdSnapshot"), source.get("snapshot")) if isinstance(v, str) and v]
        return {meta["namespace"]: {"name": meta["name"], "labels": dict(meta.get("labels") or {}),
                                    "deleting": bool(meta.get("deletionTimestamp")),
                                    "parents": [] if flattened else parents}}
    except Exception:  # noqa: BLE001 - a hostile or broken body: not selectable
        log.warning("RbdImage with uid %s: its body could not be indexed by namespace", (raw.get("metadata") or {}).get("uid"))
        return {}


LISTING_WAIT_SECONDS = 120.0  # a handler waits this long for the RbdImage listing, then reports and retries


class ImageInformer:
    """The two RbdImage indexes, fed by kopf_fixes.tap from kopf's own watch stream of RbdImages, and the
    wait for their first complete listing."""

    def __init__(self) -> None:
        self.listed = asyncio.Event()
        self.images = Informed(image_entries, on_complete=self._complete)
        self.by_namespace = Informed(image_namespace_entries)

    def reset(self) -> None:
        """Empty and incomplete again (at every operator start: tests run several in one process)."""
        self.images.clear()
        self.by_namespace.clear()
        self.listed = asyncio.Event()

    def _complete(self) -> None:
        self.listed.set()

    # the tap's sink
    def listing_started(self) -> None:
        self.listed.clear()
        self.images.listing_started()
        self.by_namespace.listing_started()

    def apply(self, event_type: str | None, raw: Mapping[str, Any]) -> None:
        self.images.apply(event_type, raw)
        self.by_namespace.apply(event_type, raw)

    def listing_ended(self) -> None:
        self.by_namespace.listing_ended()
        self.images.listing_ended()

    async def ready(self, timeout: float = LISTING_WAIT_SECONDS) -> "ImageInformer":
        """Once every RbdImage has been listed (fail closed: never read while a listing runs). Raises Waiting
        (ApiError, retried) if no listing ends within `timeout`: the handler says so instead of hanging."""
        try:
            async with asyncio.timeout(timeout):
                while not self.images.complete:
                    await self.listed.wait()
        except TimeoutError:
            raise Waiting(Reason.API_ERROR, f"the RbdImages have not been listed yet (waited {timeout:.0f} s for the "
                          "listing of rbdimages.rbd-operator.io): nothing that depends on them is done") from None
        return self


IMAGES = ImageInformer()
kopf_fixes.tap(GROUP, "rbdimages", IMAGES)


@kopf.on.startup()
def reset_image_informer(**_: Any) -> None:
    IMAGES.reset()


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
