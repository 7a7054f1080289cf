"""The steps a plan is made of: one frozen dataclass per step, each with the Event reason that narrates it.

Planners (reconcile/*_plan.py) return lists of steps; adapters carry them out with `match` on the
type (adapters/ceph/pools.py, auth.py, images.py) and return what they made, never writing into a
step. `kind` names a step in logs and tests; `describe()` is what events and logs show (keys and
other secrets are never a field of a step).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

from ..api.reasons import EventReason
from ..api.urls import redact


@dataclass(frozen=True)
class Step:
    kind: ClassVar[str]
    reason: ClassVar[EventReason]
    creation: ClassVar[bool] = False  # makes a new image (it reports what it made: no second look needed)
    target: str

    def describe(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if f.name == "target" or not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "caps":
                value = "; ".join(f"{s} '{c}'" for s, c in sorted(value.items()))
            elif f.name == "url":
                value = redact(value)  # a query string may hold a presigned token
            shown.append(f"{f.name}={value}")
        return f"{self.kind} {self.target}" + (f" ({', '.join(shown)})" if shown else "")


# -- pools (ceph osd pool ...) ------------------------------------------------------------------------
@dataclass(frozen=True)
class CreatePool(Step):
    """Made under `staging` (unless a crashed run did: `staged`), marked as ours, renamed to `target`."""
    kind: ClassVar[str] = "create-pool"
    reason: ClassVar[EventReason] = EventReason.POOL_CREATED
    pg_num: int = 0
    app: str = "rbd"
    owner: str = ""
    cluster: str | None = None
    staging: str = ""
    staged: bool = False


@dataclass(frozen=True)
class ClaimPool(Step):
    kind: ClassVar[str] = "set-pool-owner"
    reason: ClassVar[EventReason] = EventReason.POOL_ADOPTED
    app: str = "rbd"
    owner: str = ""
    cluster: str | None = None


@dataclass(frozen=True)
class UpgradePoolOwner(ClaimPool):
    kind: ClassVar[str] = "upgrade-pool-owner"
    reason: ClassVar[EventReason] = EventReason.OWNER_RECORD_UPGRADED


@dataclass(frozen=True)
class SetPool(Step):
    kind: ClassVar[str] = "set-pool"
    reason: ClassVar[EventReason] = EventReason.POOL_UPDATED
    var: str = ""
    val: str = ""


@dataclass(frozen=True)
class SetQuota(Step):
    kind: ClassVar[str] = "set-quota"
    reason: ClassVar[EventReason] = EventReason.QUOTA_UPDATED
    field: str = ""
    val: str = ""


@dataclass(frozen=True)
class EnableApplication(Step):
    kind: ClassVar[str] = "enable-application"
    reason: ClassVar[EventReason] = EventReason.APPLICATION_ENABLED
    app: str = ""


@dataclass(frozen=True)
class InitRbdPool(Step):
    kind: ClassVar[str] = "rbd-pool-init"
    reason: ClassVar[EventReason] = EventReason.POOL_INITIALIZED


# -- cephx users (ceph auth ...) ----------------------------------------------------------------------
@dataclass(frozen=True)
class RecordClientOwners(Step):
    """The owner record of a cephx user (mon config-key), written before the user is made."""
    kind: ClassVar[str] = "set-client-owners"
    reason: ClassVar[EventReason] = EventReason.CLIENT_OWNER_RECORDED
    owners: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpgradeClientOwners(RecordClientOwners):
    kind: ClassVar[str] = "upgrade-client-owners"
    reason: ClassVar[EventReason] = EventReason.OWNER_RECORD_UPGRADED


@dataclass(frozen=True)
class CreateClient(Step):
    kind: ClassVar[str] = "create-client"
    reason: ClassVar[EventReason] = EventReason.CLIENT_CREATED
    caps: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SetCaps(CreateClient):
    kind: ClassVar[str] = "set-caps"
    reason: ClassVar[EventReason] = EventReason.CAPS_CORRECTED


@dataclass(frozen=True)
class RotateKey(Step):
    kind: ClassVar[str] = "rotate-key"
    reason: ClassVar[EventReason] = EventReason.KEY_ROTATED
    generation: int = 0


@dataclass(frozen=True)
class ResumeRotation(RotateKey):
    """Ceph already holds a key the Secret does not (a rotation cut short): publish it, make no other."""
    kind: ClassVar[str] = "resume-rotation"
    reason: ClassVar[EventReason] = EventReason.ROTATION_RESUMED


# -- images (librbd) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateImage(Step):
    """Made under `staging`, tagged with `owner`, renamed to `target` (resumes a crashed run's staged image)."""
    kind: ClassVar[str] = "create"
    reason: ClassVar[EventReason] = EventReason.CREATED
    creation: ClassVar[bool] = True
    size: int = 0
    features: int = 0
    order: int | None = None
    data_pool: str | None = None
    owner: str = ""
    staging: str = ""


@dataclass(frozen=True)
class CloneImage(Step):
    kind: ClassVar[str] = "clone"
    reason: ClassVar[EventReason] = EventReason.CLONED
    creation: ClassVar[bool] = True
    parent: str = ""
    snapshot: str = ""
    features: int = 0
    order: int | None = None
    data_pool: str | None = None
    parent_owner: str | None = None
    owner: str = ""
    staging: str = ""


@dataclass(frozen=True)
class ImportImage(Step):
    """Downloaded into `scratch`, converted into `staging`, renamed to `target`; at most `limit` bytes (0: no
    bound), beyond it `limit_reason` naming `limit_what`."""
    kind: ClassVar[str] = "import"
    reason: ClassVar[EventReason] = EventReason.IMPORTED
    creation: ClassVar[bool] = True
    url: str = ""
    sha256: str | None = None
    prefixes: tuple[str, ...] = ()
    min_size: int = 0
    limit: int = 0
    limit_reason: str = "SizeExceedsQuota"
    limit_what: str = "the pool quota"
    features: int = 0
    owner: str = ""
    staging: str = ""
    scratch: str = ""
    stall_timeout: int = 120  # the storage's spec.imports.stallTimeout, seconds


@dataclass(frozen=True)
class ProtectSnapshot(Step):
    """target: image@snapshot."""
    kind: ClassVar[str] = "protect-snapshot"
    reason: ClassVar[EventReason] = EventReason.SNAPSHOT_PROTECTED
    creation: ClassVar[bool] = True


@dataclass(frozen=True)
class ClaimImage(Step):
    kind: ClassVar[str] = "set-owner"
    reason: ClassVar[EventReason] = EventReason.ADOPTED
    owner: str = ""


@dataclass(frozen=True)
class UpgradeImageOwner(ClaimImage):
    kind: ClassVar[str] = "upgrade-owner"
    reason: ClassVar[EventReason] = EventReason.OWNER_RECORD_UPGRADED


@dataclass(frozen=True)
class Resize(Step):
    kind: ClassVar[str] = "resize"
    reason: ClassVar[EventReason] = EventReason.RESIZED
    size: int = 0
    shrink: bool = False


@dataclass(frozen=True)
class UpdateFeatures(Step):
    kind: ClassVar[str] = "update-features"
    reason: ClassVar[EventReason] = EventReason.FEATURES_UPDATED
    features: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class Flatten(Step):
    kind: ClassVar[str] = "flatten"
    reason: ClassVar[EventReason] = EventReason.FLATTENED


@dataclass(frozen=True)
class RevertImage(Step):
    """Roll the image back to its snapshot `snapshot` (librbd rollback_to_snap; nobody may watch it)."""
    kind: ClassVar[str] = "revert"
    reason: ClassVar[EventReason] = EventReason.REVERTED
    snapshot: str = ""


@dataclass(frozen=True)
class RestoreImage(Step):
    """Restore trashed image `image_id` to the name `target`, tagged with `owner` first (owner record and trash
    mark, while still in the trash: a restore cut short is found again by that tag)."""
    kind: ClassVar[str] = "restore"
    reason: ClassVar[EventReason] = EventReason.RESTORED
    image_id: str = ""
    owner: str = field(default="", repr=False)


@dataclass(frozen=True)
class SetQos(Step):
    kind: ClassVar[str] = "set-qos"
    reason: ClassVar[EventReason] = EventReason.QOS_UPDATED
    qos: Mapping[str, int] = field(default_factory=dict)


PoolStep = CreatePool | ClaimPool | SetPool | SetQuota | EnableApplication | InitRbdPool
ClientStep = RecordClientOwners | CreateClient | RotateKey
ImageStep = (CreateImage | CloneImage | ImportImage | ProtectSnapshot | ClaimImage | Resize | UpdateFeatures
             | Flatten | SetQos | RevertImage | RestoreImage)
