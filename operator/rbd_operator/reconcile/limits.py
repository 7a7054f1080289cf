"""An RbdImage against its storage's spec.imageLimits: pure checks, each `(input) -> problem or None`,
run in a named chain (as cert-manager's certificate policies are), before anything is written in Ceph.

A spec beyond a limit is refused (`LimitExceeded`, `DataPoolNotAllowed`) when it asks for something new:
a new image (create, clone, import), a grow, a changed spec. A limit the admin adds later does not
break what exists: an image whose spec was accepted before ("settled") stays as it is, Ready, and the
excess is reported (condition WithinLimits=False, a Warning event); QoS ceilings are applied to it
(at the next sweep). A QoS value of 0 means unlimited in Ceph, so it exceeds any ceiling. An image
that states no value for a limit gets the storage's imageDefaults.qos, else the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from ..api.errors import Refused
from ..api.image import QOS_SETTINGS, ImageSpec
from ..api.quantity import format_bytes
from ..api.storage import ImageLimits
from ..api.reasons import Reason

_FIELDS = {setting: field_name for field_name, setting in QOS_SETTINGS.items()}


@dataclass(frozen=True)
class Usage:
    """What the other images of the namespace on this storage count against perNamespace."""
    images: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class UsageEntry:
    """One RbdImage of a namespace on a storage, as the index sees it."""
    uid: str
    created: str         # metadata.creationTimestamp (RFC 3339: sorts in time order)
    size: int            # its provisioned size: the larger of spec.size and status.sizeBytes
    provisioned: bool    # it has an image in Ceph (status.imageId)
    refused: bool        # Ready=False for a refusal: it holds nothing in Ceph


def namespace_usage(entries: Iterable[UsageEntry], uid: str, created: str) -> Usage:
    """The others that count: those with an image in Ceph, and those created before this one (so that
    of two images asked for at the same moment the older one gets the room: no race between handlers).
    Refused ones hold nothing."""
    images = total = 0
    for entry in entries:
        if entry.uid == uid or entry.refused:
            continue
        if entry.provisioned or (entry.created, entry.uid) < (created, uid):
            images += 1
            total += entry.size
    return Usage(images, total)


@dataclass(frozen=True)
class LimitInput:
    spec: ImageSpec
    limits: ImageLimits
    new: bool                       # the image does not exist yet (create, clone, import)
    current_size: int | None = None  # its size in Ceph (existing images)
    target_size: int | None = None   # the size it will have (None: an import's, known after the download)
    settled: bool = False           # this spec (generation) was accepted before: a limit added since spares it
    usage: Usage | None = None      # the namespace's other images (None: not limited per namespace)


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    refuse: bool  # False: an existing image beyond a limit added later (reported, kept)


Check = Callable[[LimitInput], "Problem | None"]


def _changes(inp: LimitInput) -> bool:
    """The spec asks for something new (so a limit binds it): a new image, or a spec not accepted before."""
    return inp.new or not inp.settled


def data_pool_allowed(inp: LimitInput) -> Problem | None:
    pool = inp.spec.data_pool
    if not inp.new or pool is None or pool in inp.limits.data_pools:
        return None
    allowed = ", ".join(inp.limits.data_pools) or "none"
    return Problem(Reason.DATA_POOL_NOT_ALLOWED, f"spec.dataPool: pool {pool!r} is not one the storage allows "
                   f"(spec.imageLimits.dataPools: {allowed})", True)


def size_within_max(inp: LimitInput) -> Problem | None:
    limit = inp.limits.max_size
    if limit is None:
        return None
    size = inp.target_size if inp.target_size is not None else inp.current_size
    if size is None or size <= limit:
        return None
    grows = inp.new or (inp.current_size is not None and size > inp.current_size)
    return Problem(Reason.LIMIT_EXCEEDED, f"spec.size: {format_bytes(size)} is beyond the storage's "
                   f"spec.imageLimits.maxSize of {format_bytes(limit)}", grows)


def retention_within_min(inp: LimitInput) -> Problem | None:
    least = inp.limits.min_trash_retention_seconds
    if least is None or inp.spec.trash_retention_seconds >= least:
        return None
    return Problem(Reason.LIMIT_EXCEEDED, f"spec.trashRetention: {inp.spec.trash_retention_seconds}s is below the storage's "
                   f"spec.imageLimits.minTrashRetention of {least}s (deletion keeps the image in the trash that long)",
                   _changes(inp))


def qos_within_ceilings(inp: LimitInput) -> Problem | None:
    beyond = []
    for setting, ceiling in sorted(inp.limits.qos.items()):
        stated = (inp.spec.qos or {}).get(setting)
        if stated is not None and (stated == 0 or stated > ceiling):
            shown = "0 (unlimited)" if stated == 0 else str(stated)
            beyond.append(f"spec.qos.{_FIELDS[setting]}: {shown} is beyond the storage's "
                          f"spec.imageLimits.qos.{_FIELDS[setting]} of {ceiling}")
    if not beyond:
        return None
    return Problem(Reason.LIMIT_EXCEEDED, "; ".join(beyond), _changes(inp))


def namespace_images(inp: LimitInput) -> Problem | None:
    most = inp.limits.per_namespace.max_images
    if most is None or inp.usage is None or not inp.new or inp.usage.images + 1 <= most:
        return None
    return Problem(Reason.LIMIT_EXCEEDED, f"spec.storage: this namespace has {inp.usage.images} image(s) on the storage; "
                   f"its spec.imageLimits.perNamespace.maxImages is {most}", True)


def namespace_bytes(inp: LimitInput) -> Problem | None:
    most = inp.limits.per_namespace.max_bytes
    size = inp.target_size
    if most is None or inp.usage is None or size is None:
        return None
    if not inp.new and (inp.current_size is None or size <= inp.current_size):
        return None  # not a grow: what exists stays
    total = inp.usage.bytes + size
    if total <= most:
        return None
    return Problem(Reason.LIMIT_EXCEEDED, f"spec.size: this namespace's images on the storage would total "
                   f"{format_bytes(total)}, beyond its spec.imageLimits.perNamespace.maxBytes of "
                   f"{format_bytes(most)}", True)


CHAIN: tuple[tuple[str, Check], ...] = (
    ("data-pool", data_pool_allowed),
    ("max-size", size_within_max),
    ("min-trash-retention", retention_within_min),
    ("qos", qos_within_ceilings),
    ("namespace-images", namespace_images),
    ("namespace-bytes", namespace_bytes),
)


@dataclass(frozen=True)
class Verdict:
    beyond: tuple[str, ...] = ()          # excesses of an existing image, kept (WithinLimits=False)
    qos: Mapping[str, int] | None = None  # the limits to converge (None: QoS not managed)
    size_limit: int | None = None         # the most an import may become (None: no limit of the storage)
    notes: tuple[str, ...] = field(default_factory=tuple)


def check_limits(inp: LimitInput, defaults: Mapping[str, int] | None = None) -> Verdict:
    """Raises Refused with the first limit the spec goes beyond; otherwise what to converge."""
    beyond = []
    for _, check in CHAIN:
        problem = check(inp)
        if problem is None:
            continue
        if problem.refuse:
            raise Refused(problem.reason, f"{problem.message}. Nothing was written in Ceph")
        beyond.append(problem.message)
    return Verdict(tuple(beyond), effective_qos(inp.spec.qos, defaults, inp.limits.qos), _size_limit(inp))


def effective_qos(stated: Mapping[str, int] | None, defaults: Mapping[str, int] | None,
                  ceilings: Mapping[str, int]) -> dict[str, int] | None:
    """Per limit: the image's own value, else the storage's default, else the ceiling; never beyond a ceiling
    (a default beyond one, or an image's value kept from before the ceiling, is lowered to it)."""
    if stated is None and defaults is None and not ceilings:
        return None
    out: dict[str, int] = {}
    for setting in sorted(set(stated or {}) | set(defaults or {}) | set(ceilings)):
        value = (stated or {}).get(setting, (defaults or {}).get(setting))
        ceiling = ceilings.get(setting)
        if ceiling is not None and (value is None or value == 0 or value > ceiling):
            value = ceiling
        out[setting] = value  # type: ignore[assignment] - set above when None
    return out


def _size_limit(inp: LimitInput) -> int | None:
    limits = [inp.limits.max_size] if inp.limits.max_size is not None else []
    if inp.limits.per_namespace.max_bytes is not None and inp.usage is not None:
        limits.append(max(0, inp.limits.per_namespace.max_bytes - inp.usage.bytes))
    return min(limits) if limits else None


def trash_delay(spec_seconds: int, limits: ImageLimits) -> int:
    """How long a deleted image stays in the trash: never less than the storage's minTrashRetention."""
    return max(spec_seconds, limits.min_trash_retention_seconds or 0)
