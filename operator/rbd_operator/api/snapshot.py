"""RbdSnapshot: a snapshot of an RbdImage of the same namespace (contract in crds/rbdsnapshots.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .enums import DeletionPolicy
from .errors import SpecError
from .names import check_image_name, is_k8s_name

DELETION_POLICIES = tuple(DeletionPolicy)


@dataclass(frozen=True)
class SnapshotSpec:
    image: str          # the RbdImage (object name, same namespace)
    name: str           # the snapshot's name in Ceph
    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    adopt: bool = False


def parse_snapshot(name: str, spec: Mapping[str, Any]) -> SnapshotSpec:
    image = spec.get("image")
    if not is_k8s_name(image):
        raise SpecError("spec.image", f"{image!r} is not the name of an RbdImage")
    snap = check_image_name("spec.name", spec.get("name") or name)
    policy = spec.get("deletionPolicy") or DeletionPolicy.DELETE
    if policy not in DELETION_POLICIES:
        raise SpecError("spec.deletionPolicy", f"{policy!r} is not one of {', '.join(DELETION_POLICIES)}")
    adopt = spec.get("adopt", False)
    if not isinstance(adopt, bool):
        raise SpecError("spec.adopt", f"{adopt!r} is not true or false")
    return SnapshotSpec(image, snap, policy, adopt)
