"""RbdImages as the indexes see them (no API call): what the drift sweep, the per-namespace limits and
clones need of the other images, and the tenancy an image's storage and namespace decide."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

from ..api.conditions import get_condition
from ..api.errors import Refused, SpecError, Waiting
from ..api.image import QOS_SETTINGS, ImageSpec, parse_image
from ..api.quantity import parse_quantity
from ..api.reasons import ConditionType, Reason
from ..api.storage import StorageSpec
from .image_plan import Tenancy
from .limits import Usage, UsageEntry, namespace_usage
from .selector import matches_namespaces

# Ready=False reasons of an RbdImage that holds nothing in Ceph (it does not count against perNamespace).
REFUSALS = frozenset({Reason.LIMIT_EXCEEDED, Reason.DATA_POOL_NOT_ALLOWED, Reason.ADOPTION_NOT_ALLOWED,
                      Reason.NAMESPACE_NOT_ALLOWED, Reason.NOT_OWNED, Reason.OWNED_BY_OTHER, Reason.INVALID_SPEC,
                      Reason.INVALID_NAME, Reason.INVALID_SIZE, Reason.INVALID_FEATURES, Reason.SOURCE_NOT_ALLOWED,
                      Reason.IMPORT_NOT_ALLOWED, Reason.SIZE_EXCEEDS_QUOTA, Reason.CHECKSUM_MISMATCH,
                      Reason.UNSUPPORTED_IMAGE_FORMAT, Reason.DATA_POOL_NOT_FOUND, Reason.STORAGE_NOT_FOUND,
                      Reason.SNAPSHOT_PENDING})


def _shared(value: Any) -> Any:
    """One copy of a short string (namespace, storage, reasons, sizes, timestamps) for all the images that
    carry it: the index holds tens of thousands of them."""
    return sys.intern(value) if type(value) is str and len(value) <= 64 else value


@dataclass(frozen=True, slots=True)
class Tracked:
    """An RbdImage as the drift sweep of its storage sees it (from the index, no API call)."""
    namespace: str
    name: str
    uid: str
    spec: dict
    ready: tuple[str, str] | None
    deleting: bool
    created: str = ""              # metadata.creationTimestamp
    size: int = 0                  # status.sizeBytes
    provisioned: bool = False      # status.imageId: it has an image in Ceph
    accepted: bool | None = None   # status.acceptedGeneration == generation (None: not recorded)
    within: bool | None = None     # the WithinLimits condition (None: absent)
    watchers: tuple[str, ...] | None = None  # status.watchers (None: not recorded)
    used: int | None = None        # status.usedBytes

    @classmethod
    def of(cls, name: str, namespace: str, uid: str, body: Mapping[str, Any]) -> "Tracked":
        """What the index keeps of an RbdImage's body (no parsing: its readers parse what they need)."""
        spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body.get("metadata") or {}
        conditions = status.get("conditions")
        cond = get_condition(conditions, ConditionType.READY)
        ready = (_shared(cond.get("status")), _shared(cond.get("reason"))) if cond and cond.get(
            "observedGeneration") == meta.get("generation") else None
        within = get_condition(conditions, ConditionType.WITHIN_LIMITS)
        accepted, size, watchers = status.get("acceptedGeneration"), status.get("sizeBytes"), status.get("watchers")
        used = status.get("usedBytes")
        return cls(_shared(namespace), name, uid, {_shared(k): _shared(v) for k, v in spec.items()}, ready,
                   bool(meta.get("deletionTimestamp")), _shared(str(meta.get("creationTimestamp") or "")),
                   size if isinstance(size, int) else 0,
                   bool(status.get("imageId")), None if accepted is None else accepted == meta.get("generation"),
                   None if within is None else within.get("status") == "True",
                   tuple(sorted(str(w) for w in watchers)) if isinstance(watchers, list) else None,
                   used if isinstance(used, int) else None)

    def usage_entry(self) -> UsageEntry:
        try:
            size = parse_quantity(self.spec.get("size")) if self.spec.get("size") is not None else 0
        except ValueError:
            size = 0
        refused = self.ready is not None and self.ready[0] == "False" and self.ready[1] in REFUSALS
        return UsageEntry(self.uid, self.created, max(size, self.size), self.provisioned,
                          refused and not self.provisioned)

    @property
    def settled(self) -> bool:
        return self.accepted if self.accepted is not None else self.ready == ("True", Reason.CONVERGED)


def watchers_changed(t: Tracked, header: Any) -> bool:
    """Who has the image open changed since its status was written (a krbd map, qemu-img, a watch that
    expired): the sweep has it reconciled, so status.watchers and usedBy follow."""
    if header is None or not t.provisioned or t.watchers is None:
        return False
    return tuple(sorted(header.watchers)) != t.watchers


def settled(body: Mapping[str, Any]) -> bool:
    """This generation of the spec was accepted before (status.acceptedGeneration; before that field
    existed: Ready=True for this generation): a storage limit added since does not refuse it."""
    status, generation = body.get("status") or {}, (body.get("metadata") or {}).get("generation")
    if status.get("acceptedGeneration") is not None:
        return status["acceptedGeneration"] == generation
    ready = get_condition(status.get("conditions"), ConditionType.READY)
    return bool(ready) and ready.get("status") == "True" and ready.get("observedGeneration") == generation


def tenancy(storage: StorageSpec, labels: Mapping[str, str] | None, settled_: bool, usage: Usage | None) -> Tenancy:
    """The storage's grant and limits for an image of a namespace with these labels (None: not known)."""
    granted = (labels is not None and storage.adoption_namespaces is not None
               and matches_namespaces(storage.adoption_namespaces, labels))
    return Tenancy(granted, storage.image_limits, storage.image_qos, settled_, usage)


def limited_per_namespace(storage: StorageSpec) -> bool:
    limits = storage.image_limits.per_namespace
    return limits.max_images is not None or limits.max_bytes is not None


def usage(storage: StorageSpec, others: Iterable[Tracked], namespace: str, uid: str, created: str) -> Usage | None:
    """The namespace's other images on the storage, when the storage limits them per namespace."""
    if not limited_per_namespace(storage):
        return None
    entries = [t.usage_entry() for t in others if t.namespace == namespace and not t.deleting]
    return namespace_usage(entries, uid, created)


def qos_status(qos: Mapping[str, int]) -> dict[str, int]:
    names = {v: k for k, v in QOS_SETTINGS.items()}
    return {names[k]: v for k, v in sorted(qos.items()) if k in names}


def resolve_snapshot(spec: ImageSpec, namespace: str, snapshot: Mapping[str, Any] | None,
                     images: list[dict]) -> ImageSpec:
    """`spec.source.rbdSnapshot` -> the pool image and snapshot it stands for (same namespace only).
    `snapshot`: the RbdSnapshot's index entry; `images`: the RbdImages of its spec.image (by key)."""
    source = spec.source
    if source is None or source.rbd_snapshot is None:
        return spec
    if not snapshot or not snapshot.get("ready"):
        raise Waiting(Reason.SNAPSHOT_PENDING, f"RbdSnapshot {namespace}/{source.rbd_snapshot} does not exist or "
                      "is not ready yet (waiting for it)")
    if not images:
        raise Waiting(Reason.SNAPSHOT_PENDING, f"the RbdImage of RbdSnapshot {namespace}/{source.rbd_snapshot} is "
                      "gone")
    return replace(spec, source=replace(source, image=images[0]["image"], snapshot=snapshot["name"]))


def resolve_revert(snapshot_name: str, image: str, namespace: str, snapshot: Mapping[str, Any] | None) -> str:
    """spec.revert.snapshot -> the Ceph snapshot it stands for: an RbdSnapshot of this namespace (the index is
    keyed by namespace) taken of this very RbdImage (`image`, its object name), ready."""
    if snapshot and snapshot.get("image") != image:
        raise Refused(Reason.SOURCE_NOT_ALLOWED, f"spec.revert: RbdSnapshot {namespace}/{snapshot_name} is a snapshot "
                      f"of RbdImage {snapshot.get('image')!r}, not of {image!r}; an image is reverted to a snapshot "
                      "of its own only. Nothing was changed")
    if not snapshot or not snapshot.get("ready") or not snapshot.get("name"):
        raise Waiting(Reason.SNAPSHOT_PENDING, f"spec.revert: RbdSnapshot {namespace}/{snapshot_name} does not exist "
                      "or is not ready yet (waiting for it); nothing was changed")
    return str(snapshot["name"])


def key_entries(tracked: Iterable[Tracked]) -> list[dict]:
    """RbdImages with a valid spec: [{"uid", "storage", "image" (its name in Ceph)}]."""
    out = []
    for t in tracked:
        try:
            parsed = parse_image(t.name, t.spec)
        except SpecError:
            continue
        out.append({"uid": t.uid, "storage": parsed.storage, "image": parsed.name})
    return out


class IndexView:
    """One kind of key of the `images` index, looked up like an index of its own."""

    def __init__(self, index: Mapping[Any, Any], kind: str) -> None:
        self._index, self._kind = index, kind

    def get(self, key: Any, default: Any = None) -> Any:
        return self._index.get((self._kind, key), default)

    def __contains__(self, key: object) -> bool:
        return (self._kind, key) in self._index


class KeyView(IndexView):
    """RbdImages by (namespace, name) with a valid spec: [{"uid", "storage", "image" (its name in Ceph)}]."""

    def get(self, key: Any, default: Any = None) -> Any:
        return key_entries(list(self._index.get((self._kind, key), []))) or default


def by_uid(images: Mapping[Any, Any]) -> IndexView:
    return IndexView(images, "uid")


def by_storage(images: Mapping[Any, Any]) -> IndexView:
    return IndexView(images, "storage")


def by_key(images: Mapping[Any, Any]) -> KeyView:
    return KeyView(images, "key")


SCAN_TRIES = 3


def uid_lookup(index: Mapping[Any, Iterable[Any]]) -> Callable[[str], bool]:
    """`live(uid)`: whether an entry of a kopf index (entries carrying "uid") has that uid, looked up when asked.

    Not a set of every uid built per call site: each RbdSnapshot's reconcile built one (of every snapshot) and
    handed it to its Ceph call, so at a start every snapshot held a set of all of them while it queued for a
    Ceph worker — O(snapshots^2) memory, ~250 MiB of the restart peak at 2,000 snapshots (docs/performance.md).
    Owner checks ask only when a record names another object of this cluster, i.e. rarely. It is asked from a
    Ceph worker thread while the event loop may change the index: a scan cut short by that is repeated, and one
    that keeps failing answers True (fail closed: the owner counts as live, nothing is taken over)."""
    def live(uid: str) -> bool:
        if not isinstance(uid, str) or not uid:
            return False
        for _ in range(SCAN_TRIES):
            try:
                return any(isinstance(e, Mapping) and e.get("uid") == uid
                           for entries in list(index.values()) for e in list(entries or ()))
            except RuntimeError:  # changed size during iteration
                continue
        return True
    return live


def node_addresses(hypervisors: Mapping[Any, Any]) -> dict[str, str]:
    """HypervisorNodes by address (watchers of an image are mapped to hosts by it)."""
    return {e["address"]: name for name, entries in list(hypervisors.items()) for e in entries if e.get("address")}
