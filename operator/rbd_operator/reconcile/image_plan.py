"""Plan for an RbdImage: create or clone it, then grow, shrink, re-feature, flatten."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.errors import SpecError, Waiting
from ..api.image import DYNAMIC_FEATURES, FEATURE_BITS, ImageSpec
from ..api.quantity import format_bytes
from .actions import Action

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


@dataclass
class ObservedSource:
    image_exists: bool
    snapshot_exists: bool
    protected: bool = False
    size: int = 0


def plan_image(
    spec: ImageSpec,
    observed: ObservedImage | None,
    owner: str,
    quota_max_bytes: int = 0,
    source: ObservedSource | None = None,
    data_pool_exists: bool = True,
) -> list[Action]:
    """Steps that converge the image. Raises SpecError/Waiting before any step if it can't work."""
    if spec.size is not None and quota_max_bytes and spec.size > quota_max_bytes:
        raise SpecError("spec.size", f"{format_bytes(spec.size)} is beyond the pool quota of "
                        f"{format_bytes(quota_max_bytes)}", reason="SizeExceedsQuota")
    if spec.data_pool and not data_pool_exists:
        raise SpecError("spec.dataPool", f"pool {spec.data_pool!r} does not exist", reason="DataPoolNotFound")
    name = spec.name
    if observed is None:
        return _plan_new(spec, owner, source)

    if observed.owner and observed.owner != owner:
        raise SpecError("spec.name", f"image {name!r} belongs to another RbdImage ({observed.owner})",
                        reason="ImageOwnedElsewhere")
    actions: list[Action] = []
    if observed.owner is None:
        actions.append(Action("set-owner", name, {"owner": owner}))
    if spec.size is not None and spec.size != observed.size:
        if spec.size < observed.size and not spec.allow_shrink:
            raise SpecError("spec.size", f"shrinking {format_bytes(observed.size)} to {format_bytes(spec.size)} "
                            "loses data; set spec.allowShrink: true to allow it", reason="ShrinkNotAllowed")
        actions.append(Action("resize", name, {"size": spec.size, "shrink": spec.size < observed.size}))
    actions += _plan_features(spec, observed.features)
    if spec.source and spec.source.flatten and observed.parent:
        actions.append(Action("flatten", name))
    return actions


def _plan_new(spec: ImageSpec, owner: str, source: ObservedSource | None) -> list[Action]:
    name = spec.name
    if spec.source is None:
        create = {"size": spec.size, "features": spec.feature_bits, "order": spec.order, "data_pool": spec.data_pool}
        return [Action("create", name, create), Action("set-owner", name, {"owner": owner})]
    src = spec.source
    if source is None or not source.image_exists:
        raise Waiting("SourceNotFound", f"clone source image {src.image!r} does not exist")
    if not source.snapshot_exists:
        raise Waiting("SnapshotNotFound", f"snapshot {src.image}@{src.snapshot} does not exist")
    if spec.size is not None and spec.size < source.size and not spec.allow_shrink:
        raise SpecError("spec.size", f"{format_bytes(spec.size)} is smaller than the source "
                        f"({format_bytes(source.size)}); set spec.allowShrink: true to allow it",
                        reason="ShrinkNotAllowed")
    actions = []
    if not source.protected:
        actions.append(Action("protect-snapshot", f"{src.image}@{src.snapshot}"))
    actions.append(Action("clone", name, {"parent": src.image, "snapshot": src.snapshot,
                                          "features": spec.feature_bits, "order": spec.order,
                                          "data_pool": spec.data_pool}))
    actions.append(Action("set-owner", name, {"owner": owner}))
    if spec.size is not None and spec.size != source.size:
        actions.append(Action("resize", name, {"size": spec.size, "shrink": spec.size < source.size}))
    if src.flatten:
        actions.append(Action("flatten", name))
    return actions


def _plan_features(spec: ImageSpec, have_bits: int) -> list[Action]:
    want = set(spec.features) & DYNAMIC_FEATURES
    have = {f for f in DYNAMIC_FEATURES if have_bits & FEATURE_BITS[f]}
    enable = [f for f in _FEATURE_ORDER if f in want - have]
    disable = [f for f in reversed(_FEATURE_ORDER) if f in have - want]
    actions = []
    if disable:
        actions.append(Action("update-features", spec.name, {"features": disable, "enabled": False}))
    if enable:
        actions.append(Action("update-features", spec.name, {"features": enable, "enabled": True}))
    return actions
