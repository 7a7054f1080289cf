"""Plan for an RbdImage: create or clone it, then grow, shrink, re-feature, flatten."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from ..api.errors import OperatorError, Refused, SpecError, Waiting
from ..api.image import DYNAMIC_FEATURES, FEATURE_BITS, ImageSpec
from ..api.quantity import format_bytes
from ..api.storage import ImageLimits
from ..api import urls
from .actions import (ClaimImage, CloneImage, CreateImage, Flatten, ImportImage, ProtectSnapshot, Resize,
                      RestoreImage, RevertImage, SetQos, Step, UpdateFeatures, UpgradeImageOwner)
from .limits import LimitInput, Usage, check_limits
from .ownership import Decision, ImageOwner, check_image_owner, staging_name
from ..api.reasons import Reason

# Why a revert is held back (the sweep, which does not plan reverts, leaves these to the handler).
_REVERT_HELD = frozenset({Reason.IN_USE, Reason.SOURCE_NOT_ALLOWED, Reason.SNAPSHOT_PENDING, Reason.SNAPSHOT_NOT_FOUND})
# Enabling follows dependencies; disabling goes the other way round.
_FEATURE_ORDER = ("exclusive-lock", "object-map", "fast-diff", "journaling")


@dataclass
class ObservedImage:
    size: int
    features: int
    id: str
    parent: dict | None = None
    watchers: list[str] = field(default_factory=list)
    owner: str | None = None
    qos: dict[str, int] = field(default_factory=dict)  # rbd_qos_* settings stored on the image
    old_format: bool = False  # a format 1 image (no id, no metadata): never managed
    flags: int | None = None  # librbd's image flags (object map / fast-diff invalid); the sweep's view only
    snapshots: dict[str, int] = field(default_factory=dict)  # snapshot name -> size (opened images only)


@dataclass
class ObservedSource:
    image_exists: bool
    snapshot_exists: bool
    protected: bool = False
    size: int = 0
    owner: str | None = None


@dataclass(frozen=True)
class Tenancy:
    """What the image's storage and namespace decide beyond the spec (see reconcile/limits.py)."""
    granted: bool = False                     # the storage's spec.adoption admits the namespace
    limits: ImageLimits = ImageLimits()
    defaults: Mapping[str, int] | None = None  # the storage's imageDefaults.qos
    settled: bool = False                     # this generation of the spec was accepted before
    usage: Usage | None = None                # the namespace's other images (perNamespace limits)


@dataclass(frozen=True)
class TrashedImage:
    """An entry of the pool's RBD trash under the image's name: its header as read by id, and the trash mark."""
    id: str
    name: str
    image: ObservedImage        # owner: its owner record
    trashed_by: str | None      # the trash mark (the owner record the operator repeated when it trashed it)
    deleted_at: float = 0.0
    user: bool = True           # moved by a user (trash_move), not by librbd's own removal or migration


@dataclass(frozen=True)
class RevertRequest:
    """spec.revert as the handler found it: `snap` the Ceph snapshot its RbdSnapshot stands for (None when it does
    not resolve: `problem` says why); `applied` status.revert.generation (None: not recorded); `image_id` the
    status's imageId (the image this object converged before); `nodes` HypervisorNode addresses."""
    generation: int
    snapshot: str
    snap: str | None = None
    problem: OperatorError | None = None
    applied: int | None = None
    image_id: str | None = None
    nodes: Mapping[str, str] = field(default_factory=dict)


class ImagePlan(list):
    """The steps (a list of Actions), what an existing image keeps beyond its storage's limits, and the
    status.revert.generation to record once the steps are done (None: spec.revert absent)."""

    def __init__(self, actions: list[Step] = (), beyond: tuple[str, ...] = (),  # type: ignore[assignment]
                 revert_generation: int | None = None) -> None:
        super().__init__(actions)
        self.beyond = beyond
        self.revert_generation = revert_generation


def _always(_: str) -> bool:
    return True


def as_owner(owner: ImageOwner | str) -> ImageOwner:
    if isinstance(owner, ImageOwner):
        return owner
    parsed = ImageOwner.parse(owner)
    if parsed is None:
        raise ValueError(f"not an image owner: {owner!r}")
    return parsed


def check_source_owner(spec: ImageSpec, source_owner: str | None, owner: ImageOwner,
                       live: Callable[[str], bool] = _always) -> None:
    """A clone reads its parent's data: the parent must belong to a live RbdImage of the same namespace."""
    assert spec.source is not None
    other = ImageOwner.parse(source_owner)
    if other is None or not owner.same_namespace(other) or not live(other.uid):
        whose = owner.describe(other) if source_owner else "no RbdImage"
        raise Refused(Reason.SOURCE_NOT_ALLOWED, f"clone source {spec.source.image!r} belongs to {whose}; a clone's "
                      f"source must be an image of a live RbdImage in namespace {owner.namespace!r}. Nothing was "
                      "changed")


def plan_image(
    spec: ImageSpec,
    observed: ObservedImage | None,
    owner: ImageOwner | str,
    quota_max_bytes: int = 0,
    source: ObservedSource | None = None,
    data_pool_exists: bool = True,
    live: Callable[[str], bool] = _always,
    import_prefixes: tuple[str, ...] = (),
    tenancy: Tenancy = Tenancy(),
    import_stall_timeout: int = 120,
    revert: RevertRequest | None = None,
    trashed: tuple[TrashedImage, ...] = (),
) -> ImagePlan:
    """Steps that converge the image. Raises SpecError/Waiting/Refused before any step if it can't work.

    `owner` is this RbdImage (its owner record); `live(uid)` whether an RbdImage of that uid exists;
    `tenancy` the storage's grant and limits. The storage's limits are checked before anything else that
    could touch Ceph (nothing of a refused spec is written anywhere, not even in another pool). `revert`:
    spec.revert resolved; `trashed`: the trash entries under the image's name (spec.source.trash).
    """
    owner = as_owner(owner)
    restored = None
    if observed is None and spec.source and spec.source.trash:
        restored = pick_trashed(spec.name, trashed, owner)
        if restored is None:
            raise Refused(Reason.NOT_IN_TRASH, f"spec.source.trash: the RBD trash holds no image {spec.name!r} "
                          f"that a deleted RbdImage {owner.namespace}/{owner.name} left there; nothing was created")
    if spec.size is not None and quota_max_bytes and spec.size > quota_max_bytes:
        raise SpecError("spec.size", f"{format_bytes(spec.size)} is beyond the pool quota of "
                        f"{format_bytes(quota_max_bytes)}", reason=Reason.SIZE_EXCEEDS_QUOTA)
    target = spec.size
    if target is None and observed is None and source is not None and source.image_exists:
        target = source.size  # a clone that states no size gets its source's
    if target is None and restored is not None:
        target = restored.image.size
    verdict = check_limits(LimitInput(spec, tenancy.limits, observed is None,
                                      observed.size if observed else None, target, tenancy.settled,
                                      tenancy.usage), tenancy.defaults)
    if spec.data_pool and not data_pool_exists:
        raise SpecError("spec.dataPool", f"pool {spec.data_pool!r} does not exist", reason=Reason.DATA_POOL_NOT_FOUND)
    baseline = revert.generation if revert else None  # made or restored here: recorded, never reverted
    if restored is not None:
        steps = _plan_existing(spec, replace(restored.image, owner=owner.record), owner, live, tenancy.granted,
                               verdict.qos)
        return ImagePlan([RestoreImage(spec.name, image_id=restored.id, owner=owner.record)] + steps,
                         revert_generation=baseline)
    if observed is None:
        if spec.source and spec.source.url:
            return ImagePlan(_plan_import(spec, owner, _import_bound(quota_max_bytes, verdict.size_limit),
                                          import_prefixes, verdict.qos, import_stall_timeout),
                             revert_generation=baseline)
        return ImagePlan(_plan_new(spec, owner, source, live, verdict.qos), revert_generation=baseline)
    return _plan_existing_reverted(spec, observed, owner, live, tenancy.granted, verdict.qos, verdict.beyond, revert)


def pick_trashed(name: str, entries: tuple[TrashedImage, ...], owner: ImageOwner) -> TrashedImage | None:
    """The trash entry `owner` (a new RbdImage) may restore: one this operator trashed for a deleted RbdImage of
    the same namespace (same namespace uid, same cluster) and the same name, under the image's name; or one this
    very RbdImage tagged already (a restore cut short). Never another namespace's or another cluster's image.
    The most recently deleted one first."""
    mine = []
    for entry in entries:
        record = ImageOwner.parse(entry.image.owner)
        if entry.name != name or record is None or entry.image.old_format:
            continue
        retagged = owner.owns(entry.image.owner)
        left = (entry.user and entry.trashed_by == entry.image.owner and owner.same_namespace(record)
                and record.name == owner.name)
        if retagged or left:
            mine.append((retagged, entry.deleted_at, entry.id, entry))
    return max(mine, key=lambda m: m[:3])[3] if mine else None


def revert_due(revert: RevertRequest | None, observed: ObservedImage, claimed: bool) -> bool:
    """Whether spec.revert asks for a rollback now: its generation above the one recorded in status. An image
    this object did not converge before (made, adopted, restored, status lost) records the spec's generation
    instead: re-applying a manifest never reverts a disk."""
    if revert is None or claimed:
        return False
    applied = revert.applied
    if applied is None:
        if not revert.image_id or revert.image_id != observed.id:
            return False
        applied = 0  # converged before spec.revert was ever set
    return revert.generation > applied


def _plan_existing_reverted(spec: ImageSpec, observed: ObservedImage, owner: ImageOwner, live: Callable[[str], bool],
                            granted: bool, qos: Mapping[str, int] | None, beyond: tuple[str, ...],
                            revert: RevertRequest | None) -> ImagePlan:
    """An existing image's steps, a rollback first when spec.revert asks for one (refused before any step)."""
    decision = check_image_owner(f"image {spec.name!r}", observed.owner, owner, spec.adopt, live, granted) \
        if not observed.old_format else None
    claimed = decision == Decision.CLAIM
    if revert is None or not revert_due(revert, observed, claimed):
        generation = None if revert is None else \
            revert.generation if claimed or revert.applied is None else revert.applied
        return ImagePlan(_plan_existing(spec, observed, owner, live, granted, qos), beyond, generation)
    if revert.problem is not None:
        raise revert.problem
    assert revert.snap is not None
    if revert.snap not in observed.snapshots:
        raise Waiting(Reason.SNAPSHOT_NOT_FOUND, f"spec.revert: snapshot {spec.name}@{revert.snap} (RbdSnapshot "
                      f"{revert.snapshot!r}) does not exist in Ceph; nothing was changed")
    if observed.watchers:
        raise Waiting(Reason.IN_USE, f"reverting {spec.name!r} to RbdSnapshot {revert.snapshot!r} waits: the image is "
                      f"in use by {describe_users(used_by(observed.watchers, dict(revert.nodes)))}; nothing was "
                      "changed", delay=30.0)
    rolled = replace(observed, size=observed.snapshots[revert.snap])
    steps = _plan_existing(spec, rolled, owner, live, granted, qos)
    return ImagePlan([RevertImage(spec.name, snapshot=revert.snap)] + steps, beyond, revert.generation)


def _import_bound(quota_max_bytes: int, size_limit: int | None) -> tuple[int, str, str]:
    """The most an imported image may become, the reason beyond it and what sets it ((0, ...): no bound)."""
    bounds = [(quota_max_bytes, Reason.SIZE_EXCEEDS_QUOTA, "the pool quota")] if quota_max_bytes else []
    if size_limit is not None:
        if size_limit <= 0:
            raise Refused(Reason.LIMIT_EXCEEDED, "spec.source: this namespace has no room left on the storage "
                          "(spec.imageLimits.perNamespace.maxBytes). Nothing was written in Ceph")
        bounds.append((size_limit, Reason.LIMIT_EXCEEDED, "the storage's spec.imageLimits"))
    return min(bounds) if bounds else (0, "", "")


def _plan_existing(spec: ImageSpec, observed: ObservedImage, owner: ImageOwner, live: Callable[[str], bool],
                   granted: bool, qos: Mapping[str, int] | None) -> list[Step]:
    name = spec.name
    if observed.old_format:
        raise Refused(Reason.NOT_OWNED, f"image {name!r} is an old-format (format 1) RBD image: rbd-operator manages "
                      "format 2 images only (`rbd migration prepare` converts it). Nothing was changed")
    actions: list[Step] = []
    decision = check_image_owner(f"image {spec.name!r}", observed.owner, owner, spec.adopt, live, granted)
    if decision == Decision.CLAIM:
        actions.append(ClaimImage(name, owner=owner.record))
    elif decision == Decision.UPGRADE:
        actions.append(UpgradeImageOwner(name, owner=owner.record))
    if spec.size is not None and spec.size != observed.size:
        if spec.size < observed.size and not spec.allow_shrink:
            raise SpecError("spec.size", f"shrinking {format_bytes(observed.size)} to {format_bytes(spec.size)} "
                            "loses data; set spec.allowShrink: true to allow it", reason=Reason.SHRINK_NOT_ALLOWED)
        if spec.size < observed.size and observed.watchers:
            raise Waiting(Reason.IN_USE, f"shrinking {format_bytes(observed.size)} to {format_bytes(spec.size)} waits: "
                          f"the image is in use ({len(observed.watchers)} watcher(s)); nothing was changed", delay=30.0)
        actions.append(Resize(name, size=spec.size, shrink=spec.size < observed.size))
    actions += _plan_features(spec, observed.features)
    if qos:
        drift = {k: v for k, v in qos.items() if observed.qos.get(k, 0) != v}
        if drift:
            actions.append(SetQos(name, qos=drift))
    if spec.source and spec.source.flatten and observed.parent:
        actions.append(Flatten(name))
    return actions


def _plan_import(spec: ImageSpec, owner: ImageOwner, bound: tuple[int, str, str], prefixes: tuple[str, ...],
                 qos: Mapping[str, int] | None, stall_timeout: int = 120) -> list[Step]:
    """An image filled from a template URL: only from the storage's allowed prefixes (a URL is a request
    the operator makes on the tenant's behalf), into a staging image renamed into place when complete.
    `bound`: the most the image may become (0: no bound), the reason and what sets it."""
    assert spec.source and spec.source.url
    if not prefixes:
        raise Refused(Reason.IMPORT_NOT_ALLOWED, "the storage allows no imports (spec.imports.allowedURLPrefixes is "
                      "absent); nothing was fetched")
    try:  # canonical (as a server reads it) and under a prefix at a segment boundary: api/urls.py
        urls.admitted(spec.source.url, prefixes)
    except urls.UrlRefused as exc:
        raise Refused(Reason.IMPORT_NOT_ALLOWED, f"{exc}; nothing was fetched") from None
    staging = staging_name(owner.legacy)
    limits = {k: v for k, v in (qos or {}).items() if v}
    fill = ImportImage(spec.name, url=spec.source.url, sha256=spec.source.sha256, prefixes=tuple(prefixes),
                       min_size=spec.size or 0, limit=bound[0], limit_reason=bound[1] or Reason.SIZE_EXCEEDS_QUOTA,
                       limit_what=bound[2] or "the pool quota", features=spec.feature_bits, owner=owner.record,
                       staging=staging, scratch=staging + "-download", stall_timeout=stall_timeout)
    return [fill] + ([SetQos(spec.name, qos=limits)] if limits else [])


def _plan_new(spec: ImageSpec, owner: ImageOwner, source: ObservedSource | None, live: Callable[[str], bool],
              qos: Mapping[str, int] | None) -> list[Step]:
    """A new image is made under its staging name, tagged with its owner and renamed into place
    (one `create`/`clone` step does all three, resuming a staged image left by a crash)."""
    name = spec.name
    staging = staging_name(owner.legacy)
    limits = {k: v for k, v in (qos or {}).items() if v}
    qos_steps: list[Step] = [SetQos(name, qos=limits)] if limits else []
    if spec.source is None:
        return [CreateImage(name, size=spec.size or 0, features=spec.feature_bits, order=spec.order,
                            data_pool=spec.data_pool, owner=owner.record, staging=staging)] + qos_steps
    src = spec.source
    if source is None or not source.image_exists:
        raise Waiting(Reason.SOURCE_NOT_FOUND, f"clone source image {src.image!r} does not exist")
    check_source_owner(spec, source.owner, owner, live)
    if not source.snapshot_exists:
        raise Waiting(Reason.SNAPSHOT_NOT_FOUND, f"snapshot {src.image}@{src.snapshot} does not exist")
    if spec.size is not None and spec.size < source.size and not spec.allow_shrink:
        raise SpecError("spec.size", f"{format_bytes(spec.size)} is smaller than the source "
                        f"({format_bytes(source.size)}); set spec.allowShrink: true to allow it",
                        reason=Reason.SHRINK_NOT_ALLOWED)
    actions: list[Step] = []
    if not source.protected:
        actions.append(ProtectSnapshot(f"{src.image}@{src.snapshot}"))
    actions.append(CloneImage(name, parent=src.image, snapshot=src.snapshot, features=spec.feature_bits,
                              order=spec.order, data_pool=spec.data_pool, parent_owner=source.owner,
                              owner=owner.record, staging=staging))
    if spec.size is not None and spec.size != source.size:
        actions.append(Resize(name, size=spec.size, shrink=spec.size < source.size))
    if src.flatten:
        actions.append(Flatten(name))
    return actions + qos_steps


def _plan_features(spec: ImageSpec, have_bits: int) -> list[Step]:
    want = set(spec.features) & DYNAMIC_FEATURES
    have = {f for f in DYNAMIC_FEATURES if have_bits & FEATURE_BITS[f]}
    enable = [f for f in _FEATURE_ORDER if f in want - have]
    disable = [f for f in reversed(_FEATURE_ORDER) if f in have - want]
    actions = []
    if disable:
        actions.append(UpdateFeatures(spec.name, features=tuple(disable), enabled=False))
    if enable:
        actions.append(UpdateFeatures(spec.name, features=tuple(enable), enabled=True))
    return actions


def sweep_verdict(spec: ImageSpec, observed: ObservedImage | None, owner: ImageOwner | str,
                  ready: tuple[str, str] | None, quota_max_bytes: int = 0, live: Callable[[str], bool] = _always,
                  namespace_allowed: bool = True, tenancy: Tenancy = Tenancy(), within: bool | None = None) -> bool:
    """Whether the drift sweep must have this image reconciled: its status no longer tells the truth.

    `observed` comes from the image's header (no open: no watchers); `ready` is the status's Ready (status,
    reason); `within` its WithinLimits condition (None: absent). Nothing changed in Ceph and a status that
    says so: False, and no API write follows.
    """
    if not namespace_allowed:
        return ready != ("False", Reason.NAMESPACE_NOT_ALLOWED)
    if observed is None:
        # Gone (deleted by hand): recreate. Not made yet: kopf's own retries are on it.
        return ready is not None and ready[0] == "True"
    try:
        actions = plan_image(spec, observed, owner, quota_max_bytes, None, True, live, tenancy=tenancy)
    except (SpecError, Waiting, Refused) as exc:
        return ready != ("False", exc.reason)
    if ready == ("False", Reason.IN_USE) and actions and all(isinstance(a, Resize) and a.shrink for a in actions):
        return False  # a shrink waiting for its watchers: the handler retries it by itself
    if spec.revert is not None and not actions and ready is not None and ready[0] == "False" \
            and ready[1] in _REVERT_HELD:
        return False  # a revert waiting (retried by the handler) or refused (until the spec changes)
    kept_beyond = within is False
    return bool(actions) or ready != ("True", Reason.CONVERGED) or bool(actions.beyond) != kept_beyond


def used_by(watchers: list[str], nodes: dict[str, str]) -> list[dict[str, str]]:
    """Who uses an image: each watcher (librbd "ip:port/nonce") mapped to the HypervisorNode whose
    address is its IP (`nodes`: address -> node name); the plain address when none matches."""
    out, seen = [], set()
    for watcher in watchers:
        addr = watcher
        for prefix in ("v1:", "v2:", "any:"):
            addr = addr[len(prefix):] if addr.startswith(prefix) else addr
        ip = addr.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        entry = {"node": nodes.get(ip, ""), "address": ip} if ip in nodes else {"address": ip}
        key = (entry.get("node"), ip)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def describe_users(users: list[dict[str, str]]) -> str:
    return ", ".join(f"HypervisorNode {u['node']} ({u['address']})" if u.get("node") else u["address"]
                     for u in users)
