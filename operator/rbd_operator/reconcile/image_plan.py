"""Plan for an RbdImage: create or clone it, then grow, shrink, re-feature, flatten."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..api.errors import Refused, SpecError, Waiting
from ..api.image import DYNAMIC_FEATURES, FEATURE_BITS, ImageSpec
from ..api.quantity import format_bytes
from .actions import Action
from .ownership import (Decision, Subject, decide, describe_image_owner, image_owner_uid, split_image_owner,
                        staging_name)

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


@dataclass
class ObservedSource:
    image_exists: bool
    snapshot_exists: bool
    protected: bool = False
    size: int = 0
    owner: str | None = None


def _always(_: str) -> bool:
    return True


def check_image_owner(spec: ImageSpec, observed_owner: str | None, owner: str,
                      live: Callable[[str], bool] = _always) -> str:
    """Decision.OURS or Decision.CLAIM for an existing image; raises Refused (NotOwned, OwnedByOther).

    `live(uid)`: whether an RbdImage with that uid exists. An image whose RbdImage is gone (deleted
    with deletionPolicy Retain) may be adopted, but only from that object's own namespace.
    """
    namespace = owner.split("/", 1)[0]
    other = split_image_owner(observed_owner) if observed_owner else None
    if observed_owner and observed_owner != owner and (other is None or other[0] != namespace):
        raise Refused("OwnedByOther", f"image {spec.name!r} belongs to {describe_image_owner(observed_owner)}. "
                      "Nothing was changed")
    return decide(Subject(f"image {spec.name!r}", "spec.adopt"), [observed_owner or ""], owner, spec.adopt,
                  lambda o: live(image_owner_uid(o)), describe=describe_image_owner)


def check_source_owner(spec: ImageSpec, source_owner: str | None, owner: str,
                       live: Callable[[str], bool] = _always) -> None:
    """A clone reads its parent's data: the parent must belong to a live RbdImage of the same namespace."""
    assert spec.source is not None
    namespace = owner.split("/", 1)[0]
    parts = split_image_owner(source_owner) if source_owner else None
    if parts is None or parts[0] != namespace or not live(parts[2]):
        whose = describe_image_owner(source_owner) if source_owner else "no RbdImage"
        raise Refused("SourceNotAllowed", f"clone source {spec.source.image!r} belongs to {whose}; a clone's "
                      f"source must be an image of an RbdImage in namespace {namespace!r}. Nothing was changed")


def plan_image(
    spec: ImageSpec,
    observed: ObservedImage | None,
    owner: str,
    quota_max_bytes: int = 0,
    source: ObservedSource | None = None,
    data_pool_exists: bool = True,
    live: Callable[[str], bool] = _always,
    import_prefixes: tuple[str, ...] = (),
) -> list[Action]:
    """Steps that converge the image. Raises SpecError/Waiting/Refused before any step if it can't work.

    `owner` is this RbdImage's owner tag (namespace/name/uid); `live(uid)` whether an RbdImage exists.
    """
    if spec.size is not None and quota_max_bytes and spec.size > quota_max_bytes:
        raise SpecError("spec.size", f"{format_bytes(spec.size)} is beyond the pool quota of "
                        f"{format_bytes(quota_max_bytes)}", reason="SizeExceedsQuota")
    if spec.data_pool and not data_pool_exists:
        raise SpecError("spec.dataPool", f"pool {spec.data_pool!r} does not exist", reason="DataPoolNotFound")
    name = spec.name
    if observed is None:
        if spec.source and spec.source.url:
            return _plan_import(spec, owner, quota_max_bytes, import_prefixes)
        return _plan_new(spec, owner, source, live)

    actions: list[Action] = []
    if check_image_owner(spec, observed.owner, owner, live) == Decision.CLAIM:
        actions.append(Action("set-owner", name, {"owner": owner}))
    if spec.size is not None and spec.size != observed.size:
        if spec.size < observed.size and not spec.allow_shrink:
            raise SpecError("spec.size", f"shrinking {format_bytes(observed.size)} to {format_bytes(spec.size)} "
                            "loses data; set spec.allowShrink: true to allow it", reason="ShrinkNotAllowed")
        actions.append(Action("resize", name, {"size": spec.size, "shrink": spec.size < observed.size}))
    actions += _plan_features(spec, observed.features)
    if spec.qos:
        drift = {k: v for k, v in spec.qos.items() if observed.qos.get(k, 0) != v}
        if drift:
            actions.append(Action("set-qos", name, {"qos": drift}))
    if spec.source and spec.source.flatten and observed.parent:
        actions.append(Action("flatten", name))
    return actions


def _plan_import(spec: ImageSpec, owner: str, quota_max_bytes: int, prefixes: tuple[str, ...]) -> list[Action]:
    """An image filled from a template URL: only from the storage's allowed prefixes (a URL is a request
    the operator makes on the tenant's behalf), into a staging image renamed into place when complete."""
    assert spec.source and spec.source.url
    if not prefixes or not any(spec.source.url.startswith(p) for p in prefixes):
        raise Refused("ImportNotAllowed", f"{spec.source.url[:200]} is not under the storage's "
                      "spec.imports.allowedURLPrefixes; nothing was fetched")
    staging = staging_name(owner)
    limits = {k: v for k, v in (spec.qos or {}).items() if v}
    return [Action("import", spec.name, {"url": spec.source.url, "sha256": spec.source.sha256, "prefixes": prefixes,
                                         "min_size": spec.size or 0, "limit": quota_max_bytes,
                                         "features": spec.feature_bits, "owner": owner, "staging": staging,
                                         "scratch": staging + "-download"})] + \
        ([Action("set-qos", spec.name, {"qos": limits})] if limits else [])


def _plan_new(spec: ImageSpec, owner: str, source: ObservedSource | None, live: Callable[[str], bool]) -> list[Action]:
    """A new image is made under its staging name, tagged with its owner and renamed into place
    (one `create`/`clone` step does all three, resuming a staged image left by a crash)."""
    name = spec.name
    staged = {"owner": owner, "staging": staging_name(owner)}
    limits = {k: v for k, v in (spec.qos or {}).items() if v}
    qos = [Action("set-qos", name, {"qos": limits})] if limits else []
    if spec.source is None:
        create = {"size": spec.size, "features": spec.feature_bits, "order": spec.order, "data_pool": spec.data_pool}
        return [Action("create", name, {**create, **staged})] + qos
    src = spec.source
    if source is None or not source.image_exists:
        raise Waiting("SourceNotFound", f"clone source image {src.image!r} does not exist")
    check_source_owner(spec, source.owner, owner, live)
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
                                          "data_pool": spec.data_pool, "parent_owner": source.owner, **staged}))
    if spec.size is not None and spec.size != source.size:
        actions.append(Action("resize", name, {"size": spec.size, "shrink": spec.size < source.size}))
    if src.flatten:
        actions.append(Action("flatten", name))
    return actions + qos


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


def sweep_verdict(spec: ImageSpec, observed: ObservedImage | None, owner: str, ready: tuple[str, str] | None,
                  quota_max_bytes: int = 0, live: Callable[[str], bool] = _always,
                  namespace_allowed: bool = True) -> bool:
    """Whether the drift sweep must have this image reconciled: its status no longer tells the truth.

    `observed` comes from the image's header (no open); `ready` is the status's Ready (status, reason).
    Nothing changed in Ceph and a status that says so: False, and no API write follows.
    """
    if not namespace_allowed:
        return ready != ("False", "NamespaceNotAllowed")
    if observed is None:
        # Gone (deleted by hand): recreate. Not made yet: kopf's own retries are on it.
        return ready is not None and ready[0] == "True"
    try:
        actions = plan_image(spec, observed, owner, quota_max_bytes, None, True, live)
    except (SpecError, Waiting, Refused) as exc:
        return ready != ("False", exc.reason)
    return bool(actions) or ready != ("True", "Converged")


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
