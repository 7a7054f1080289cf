"""RbdImage: an RBD image in the pool of an RbdStorage (contract in crds/rbdimages.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .enums import DeletionPolicy
from .errors import SpecError
from .names import check_image_name, check_pool_name, is_k8s_name
from .quantity import parse_quantity
from .reasons import Reason
from .urls import redact

# librbd feature bits (include/rbd/features.h).
FEATURE_BITS = {
    "layering": 1 << 0,
    "striping": 1 << 1,
    "exclusive-lock": 1 << 2,
    "object-map": 1 << 3,
    "fast-diff": 1 << 4,
    "deep-flatten": 1 << 5,
    "journaling": 1 << 6,
    "data-pool": 1 << 7,
    "operations": 1 << 8,
    "migrating": 1 << 9,
    "non-primary": 1 << 10,
}
# Features a user may ask for; the others are set by librbd itself.
USER_FEATURES = ("layering", "striping", "exclusive-lock", "object-map", "fast-diff", "deep-flatten", "journaling")
# Features librbd can switch on or off on an existing image.
DYNAMIC_FEATURES = frozenset({"exclusive-lock", "object-map", "fast-diff", "journaling"})
FEATURE_DEPENDENCIES = {
    "object-map": "exclusive-lock",
    "fast-diff": "object-map",
    "journaling": "exclusive-lock",
}
DEFAULT_FEATURES = ("layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten")
DELETION_POLICIES = tuple(DeletionPolicy)
DEFAULT_TRASH_RETENTION = "24h"
# spec.qos field -> librbd image setting (stored as image config: `rbd config image ls`); 0 = unlimited.
QOS_SETTINGS = {
    "iopsLimit": "rbd_qos_iops_limit",
    "bpsLimit": "rbd_qos_bps_limit",
    "readIopsLimit": "rbd_qos_read_iops_limit",
    "writeIopsLimit": "rbd_qos_write_iops_limit",
    "readBpsLimit": "rbd_qos_read_bps_limit",
    "writeBpsLimit": "rbd_qos_write_bps_limit",
}
_URL = re.compile(r"^https?://[A-Za-z0-9._~:/?#@!$&()*+,;=%\[\]-]{1,2000}\Z")
_SHA256 = re.compile(r"^[0-9A-Fa-f]{64}\Z")
_DURATION = re.compile(r"^(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?\Z")


@dataclass(frozen=True)
class CloneSource:
    image: str              # image name in the pool ("" until an rbdSnapshot reference is resolved)
    snapshot: str
    flatten: bool = False
    rbd_snapshot: str | None = None  # an RbdSnapshot of the same namespace, resolved by the handler
    url: str | None = None           # import a qcow2/raw template from here instead of cloning
    sha256: str | None = None
    trash: bool = False              # restore the image a deleted RbdImage of this name left in the trash


@dataclass(frozen=True)
class RevertSpec:
    """spec.revert: roll the image back to an RbdSnapshot of it when `generation` is raised."""
    snapshot: str     # an RbdSnapshot of this namespace (of this very RbdImage)
    generation: int


@dataclass(frozen=True)
class ImageSpec:
    storage: str
    name: str
    size: int | None
    features: tuple[str, ...]
    object_size: int | None
    data_pool: str | None
    source: CloneSource | None
    allow_shrink: bool
    deletion_policy: DeletionPolicy
    trash_retention_seconds: int
    adopt: bool = False
    qos: Mapping[str, int] | None = None  # librbd setting -> value; None: QoS not managed
    revert: RevertSpec | None = None

    @property
    def feature_bits(self) -> int:
        return features_to_bits(self.features)

    @property
    def order(self) -> int | None:
        return None if self.object_size is None else self.object_size.bit_length() - 1


def features_to_bits(names: tuple[str, ...] | list[str]) -> int:
    bits = 0
    for name in names:
        bits |= FEATURE_BITS[name]
    return bits


def bits_to_features(bits: int) -> list[str]:
    return [name for name, bit in FEATURE_BITS.items() if bits & bit]


def parse_duration(text: str, path: str) -> int:
    match = _DURATION.match(text or "")
    if not text or not match or not any(match.groups()):
        raise SpecError(path, f"{text!r} is not a duration such as 24h, 90m or 7d")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def check_features(features: Any, path: str = "spec.features") -> tuple[str, ...]:
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    if not isinstance(features, list):
        raise SpecError(path, "must be a list of feature names")
    seen: list[str] = []
    for feature in features:
        if feature not in USER_FEATURES:
            raise SpecError(path, f"unknown feature {feature!r} (known: {', '.join(USER_FEATURES)})",
                            reason=Reason.INVALID_FEATURES)
        if feature not in seen:
            seen.append(feature)
    for feature in seen:
        needed = FEATURE_DEPENDENCIES.get(feature)
        if needed and needed not in seen:
            raise SpecError(path, f"feature {feature!r} needs {needed!r}", reason=Reason.INVALID_FEATURES)
    return tuple(seen)


def parse_size(value: Any, path: str = "spec.size") -> int:
    try:
        size = parse_quantity(value)
    except ValueError as exc:
        raise SpecError(path, str(exc), reason=Reason.INVALID_SIZE) from None
    if size <= 0:
        raise SpecError(path, f"must be greater than zero, got {value!r}", reason=Reason.INVALID_SIZE)
    return size


def parse_qos(raw: Any, path: str) -> dict[str, int] | None:
    """spec.qos (or an RbdStorage's imageDefaults.qos) -> {librbd setting: value}; None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be an object of limits (iopsLimit, bpsLimit, ...)")
    out = {}
    for field_name, value in raw.items():
        if field_name not in QOS_SETTINGS:
            raise SpecError(f"{path}.{field_name}", f"unknown limit (known: {', '.join(QOS_SETTINGS)})")
        try:
            number = parse_quantity(value)
        except ValueError as exc:
            raise SpecError(f"{path}.{field_name}", str(exc)) from None
        if not 0 <= number < 2 ** 63:
            raise SpecError(f"{path}.{field_name}", f"{value!r} is out of range (0 = unlimited)")
        out[QOS_SETTINGS[field_name]] = number
    return out


def effective_qos(image: ImageSpec, defaults: Mapping[str, int] | None) -> ImageSpec:
    """The image's limits over the storage's defaults (the image wins per limit)."""
    if image.qos is None and defaults is None:
        return image
    return replace(image, qos={**(defaults or {}), **(image.qos or {})})


def parse_image(name: str, spec: Mapping[str, Any]) -> ImageSpec:
    """Validate an RbdImage spec and fill in defaults. Raises SpecError."""
    storage = spec.get("storage")
    if not isinstance(storage, str) or not storage:
        raise SpecError("spec.storage", "names the RbdStorage and is required")
    image_name = check_image_name("spec.name", spec.get("name") or name)

    source = _source(spec.get("source"))

    raw_size = spec.get("size")
    if raw_size is None and source is None:
        raise SpecError("spec.size", "is required unless the image is cloned from spec.source", reason=Reason.INVALID_SIZE)
    size = None if raw_size is None else parse_size(raw_size)

    features = check_features(spec.get("features", list(DEFAULT_FEATURES)))

    object_size = _object_size(spec.get("objectSize"))

    data_pool = spec.get("dataPool")
    if data_pool is not None:
        data_pool = check_pool_name("spec.dataPool", data_pool)

    policy = spec.get("deletionPolicy") or DeletionPolicy.DELETE
    if policy not in DELETION_POLICIES:
        raise SpecError("spec.deletionPolicy", f"{policy!r} is not one of {', '.join(DELETION_POLICIES)}")
    retention = parse_duration(spec.get("trashRetention") or DEFAULT_TRASH_RETENTION, "spec.trashRetention")

    return ImageSpec(
        storage=storage,
        name=image_name,
        size=size,
        features=features,
        object_size=object_size,
        data_pool=data_pool,
        source=source,
        allow_shrink=bool(spec.get("allowShrink", False)),
        deletion_policy=DeletionPolicy(policy),
        trash_retention_seconds=retention,
        adopt=bool(spec.get("adopt", False)),
        qos=parse_qos(spec.get("qos"), "spec.qos"),
        revert=_revert(spec.get("revert")),
    )


def _revert(raw: Any) -> RevertSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("spec.revert", "must be an object with snapshot and generation")
    snapshot, generation = raw.get("snapshot"), raw.get("generation")
    if not isinstance(snapshot, str) or not is_k8s_name(snapshot):
        raise SpecError("spec.revert.snapshot", f"{snapshot!r} is not the name of an RbdSnapshot")
    if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation < 2 ** 63:
        raise SpecError("spec.revert.generation", f"{generation!r} is not a whole number from 0")
    return RevertSpec(snapshot, generation)


def _source(raw_source: Any) -> CloneSource | None:
    """spec.source: a URL to import, an RbdSnapshot of the namespace, or image and snapshot in the pool."""
    if not raw_source:
        return None
    if not isinstance(raw_source, Mapping):
        raise SpecError("spec.source", "must be an object with image and snapshot")
    ref = raw_source.get("rbdSnapshot")
    url = raw_source.get("url")
    trash = raw_source.get("trash", False)
    if not isinstance(trash, bool):
        raise SpecError("spec.source.trash", f"{trash!r} is not true or false")
    if trash:
        if any(raw_source.get(k) for k in ("image", "snapshot", "rbdSnapshot", "url", "sha256", "flatten")):
            raise SpecError("spec.source.trash", "restores a trashed image: it goes with no other source field")
        source = CloneSource("", "", False, trash=True)
    elif url is not None:
        if not isinstance(url, str) or not _URL.fullmatch(url) or any(raw_source.get(k) for k in
                                                                   ("image", "snapshot", "rbdSnapshot")):
            raise SpecError("spec.source.url", f"{redact(str(url), 100)!r} is not an http(s) URL (and a source is a "
                            "URL, an rbdSnapshot, or image and snapshot)")
        sha = raw_source.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
            raise SpecError("spec.source.sha256", "must be 64 hexadecimal digits")
        source = CloneSource("", "", False, url=url, sha256=sha.lower() if sha else None)
    elif ref is not None:
        if not isinstance(ref, str) or not is_k8s_name(ref) or raw_source.get("image") \
                or raw_source.get("snapshot"):
            raise SpecError("spec.source", "needs rbdSnapshot (an RbdSnapshot name), or image and snapshot")
        source = CloneSource("", "", bool(raw_source.get("flatten", False)), rbd_snapshot=ref)
    else:
        source = CloneSource(
            image=check_image_name("spec.source.image", raw_source.get("image")),
            snapshot=check_image_name("spec.source.snapshot", raw_source.get("snapshot")),
            flatten=bool(raw_source.get("flatten", False)),
        )
    return source


def _object_size(raw: Any) -> int | None:
    if raw is None:
        return None
    try:
        object_size = parse_quantity(raw)
    except ValueError as exc:
        raise SpecError("spec.objectSize", str(exc)) from None
    if object_size < 4096 or object_size > 32 * 2**20 or object_size & (object_size - 1):
        raise SpecError("spec.objectSize", "must be a power of two from 4Ki to 32Mi")
    return object_size
