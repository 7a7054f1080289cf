"""Who owns a pool, a cephx client or an image, and whether this object may act on it.

Ownership is recorded in Ceph itself (see adapters/ceph.py for where): a pool's owner is one
RbdStorage uid, a client's owners are the RbdStorage uids sharing it, an image's owner is one
RbdImage (`namespace/name/uid`). Every record also names the Kubernetes cluster it was written for
(the uid of that cluster's kube-system namespace) and, for images, the namespace's uid: a second
cluster pointing at the same Ceph, or a namespace deleted and made again under the same name, never
mistakes another's record for a gone object of its own. The rules, one function per kind:

- ours: act (a record of an earlier release, without the identity, is rewritten with it: UPGRADE);
- nobody's (made by hand, as VMmanager leaves things): `NotOwned` unless the spec adopts it;
- another live object's: `OwnedByOther` (a client may be shared by storages that adopt it);
- another cluster's: `OwnedByOther` (whether its owner lives cannot be known here) unless adopted;
- a gone object's (deleted with deletionPolicy Retain): like nobody's, adoptable.

Images are adopted by tenants, so adopting one that no live object owns also needs the storage's
grant (`spec.adoption.namespaces`), except an image left by a deleted RbdImage of the same
namespace (same name, same namespace uid). Nothing is changed in Ceph before this decision, and
refusals never name another namespace's objects.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from ..api.errors import Refused
from ..api.reasons import Reason

STAGING_PREFIX = "rbdop-new-"


class Decision(enum.Enum):
    OURS = "ours"
    UPGRADE = "upgrade"  # ours, recorded by an earlier release without the cluster identity: rewrite it
    CLAIM = "claim"      # record ownership (adoption), then act


@dataclass(frozen=True)
class Subject:
    what: str         # "pool 'vmmgr'", for messages
    adopt_field: str  # "spec.pool.adopt"


_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


@dataclass(frozen=True)
class Record:
    """One owner in an owner record: an object uid, and the cluster it lives in (None: an earlier
    release's record, taken as this cluster's)."""
    uid: str
    cluster: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Record":
        uid, _, cluster = text.partition("@")
        return cls(uid, cluster or None)

    def __str__(self) -> str:
        return f"{self.uid}@{self.cluster}" if self.cluster else self.uid


def foreign(record: Record, cluster: str | None) -> bool:
    """Recorded for another Kubernetes cluster than this one."""
    return record.cluster is not None and cluster is not None and record.cluster != cluster


def decide(subject: Subject, records: Iterable[Record], me: Record, adopt: bool, live: Callable[[str], bool],
           *, shareable: bool = False, describe: Callable[[str], str] = str) -> Decision:
    """Decision for a pool or a cephx user (cluster-scoped owners: they may be named in messages);
    raises Refused (NotOwned, OwnedByOther) otherwise."""
    records = [r for r in records if r.uid]
    mine = [r for r in records if r.uid == me.uid and not foreign(r, me.cluster)]
    if mine:
        return Decision.OURS if all(r.cluster == me.cluster for r in mine) or me.cluster is None \
            else Decision.UPGRADE
    others = [r for r in records if foreign(r, me.cluster)]
    live_owners = [r for r in records if not foreign(r, me.cluster) and live(r.uid)]
    if (live_owners or others) and not (shareable and adopt) and not (others and not live_owners and adopt):
        hint = f"; set {subject.adopt_field}: true to share it" if shareable else \
            f"; set {subject.adopt_field}: true to take it over" if not live_owners else ""
        whose = [describe(r.uid) for r in live_owners] + (["an owner in another Kubernetes cluster"] if others else [])
        raise Refused(Reason.OWNED_BY_OTHER, f"{subject.what} belongs to {', '.join(whose)}{hint}. Nothing was changed")
    if adopt:
        return Decision.CLAIM
    if records:
        raise Refused(Reason.NOT_OWNED, f"{subject.what} was made by {', '.join(describe(r.uid) for r in records)}, which "
                      f"no longer exists; set {subject.adopt_field}: true to adopt it. Nothing was changed")
    raise Refused(Reason.NOT_OWNED, f"{subject.what} exists and was not made by rbd-operator; set "
                  f"{subject.adopt_field}: true to adopt it. Nothing was changed")


def staging_name(owner: str) -> str:
    """Deterministic name a new pool or image is created under before it is marked and renamed into place.

    A crash between creating and marking leaves an object whose name says whose it is, so a re-run
    finishes the job instead of finding an unmarked (NotOwned) object under the final name.
    """
    return STAGING_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:16]


def is_staging(name: str) -> bool:
    return name.startswith(STAGING_PREFIX)


# -- image owners: "namespace/name/uid@cluster/namespace-uid" ----------------------------------------
@dataclass(frozen=True)
class ImageOwner:
    """The RbdImage (or RbdSnapshot) an image or snapshot belongs to, as recorded in Ceph."""
    namespace: str
    name: str
    uid: str
    cluster: str | None = None        # None: recorded by an earlier release
    namespace_uid: str | None = None

    @property
    def legacy(self) -> str:
        """The record as earlier releases wrote it (and the key of staging names, which must not change)."""
        return f"{self.namespace}/{self.name}/{self.uid}"

    @property
    def record(self) -> str:
        """What this release writes into Ceph."""
        if self.cluster is None:
            return self.legacy
        return f"{self.legacy}@{self.cluster}/{self.namespace_uid or ''}"

    @classmethod
    def parse(cls, text: str | None) -> "ImageOwner | None":
        """None when absent or unreadable (made by someone else: never taken as ours)."""
        if not text or len(text) > 1024:
            return None
        base, at, identity = text.partition("@")
        parts = base.split("/")
        if len(parts) != 3 or not all(parts):
            return None
        cluster, namespace_uid = None, None
        if at:
            cluster, _, namespace_uid = identity.partition("/")
            if not cluster or not _UID.match(cluster) or (namespace_uid and not _UID.match(namespace_uid)):
                return None
        return cls(parts[0], parts[1], parts[2], cluster, namespace_uid or None)

    def owns(self, record: str | None) -> bool:
        """`record` names this very object (in this or an earlier release's format, in this cluster)."""
        other = ImageOwner.parse(record)
        return other is not None and other.uid == self.uid and not self.foreign(other)

    def foreign(self, other: "ImageOwner") -> bool:
        return other.cluster is not None and self.cluster is not None and other.cluster != self.cluster

    def same_namespace(self, other: "ImageOwner") -> bool:
        """The same namespace of the same cluster: same name, and the same namespace uid when both are known
        (a namespace deleted and made again is another namespace)."""
        return (other.namespace == self.namespace and not self.foreign(other)
                and (other.namespace_uid is None or self.namespace_uid is None
                     or other.namespace_uid == self.namespace_uid))

    def describe(self, other: "ImageOwner | None", kind: str = "RbdImage") -> str:
        """Another owner as this object's namespace may see it: named only within the same namespace."""
        if other is None:
            return "an owner record rbd-operator does not know"
        if self.foreign(other):
            return f"an {kind} of another Kubernetes cluster"
        if self.same_namespace(other):
            return f"{kind} {other.namespace}/{other.name}"
        return f"another {kind}"


def image_owner(namespace: str, name: str, uid: str, cluster: str | None = None,
                namespace_uid: str | None = None) -> ImageOwner:
    return ImageOwner(namespace, name, uid, cluster, namespace_uid)


def check_image_owner(what: str, observed_owner: str | None, me: ImageOwner, adopt: bool,
                      live: Callable[[str], bool], granted: bool, *, kind: str = "RbdImage") -> Decision:
    """Decision for an existing image (or snapshot); raises Refused otherwise.

    `live(uid)`: whether an object of that uid exists in this cluster; `granted`: whether the storage's
    spec.adoption admits this namespace. Messages never name another namespace's objects.
    """
    if me.owns(observed_owner):
        return Decision.OURS if observed_owner == me.record else Decision.UPGRADE
    other = ImageOwner.parse(observed_owner)
    unreadable = observed_owner is not None and other is None
    if other is not None and not me.foreign(other) and live(other.uid):
        raise Refused(Reason.OWNED_BY_OTHER, f"{what} belongs to {me.describe(other, kind)}. Nothing was changed")
    # No live object of this cluster owns it: made by hand, left by a deleted object, or another cluster's.
    retained_here = other is not None and me.same_namespace(other)
    if not adopt:
        if other is not None and me.foreign(other):
            raise Refused(Reason.OWNED_BY_OTHER, f"{what} belongs to {me.describe(other, kind)}; only an adoption granted "
                          "by the storage (spec.adoption) with spec.adopt: true takes it over. Nothing was changed")
        if unreadable:
            raise Refused(Reason.OWNED_BY_OTHER, f"{what} carries an owner record rbd-operator does not read; "
                          "set spec.adopt: true to take it over. Nothing was changed")
        if other is not None:
            raise Refused(Reason.NOT_OWNED, f"{what} was made by {me.describe(other, kind)}, which no longer exists; set "
                          "spec.adopt: true to adopt it. Nothing was changed")
        raise Refused(Reason.NOT_OWNED, f"{what} exists and was not made by rbd-operator; set spec.adopt: true to adopt "
                      "it. Nothing was changed")
    if not retained_here and not granted:
        raise Refused(Reason.ADOPTION_NOT_ALLOWED, f"{what} is not owned by a live {kind} of this cluster, and the storage "
                      "does not grant this namespace adoption (its spec.adoption.namespaces). Nothing was changed")
    return Decision.CLAIM


def describe_image_owner(owner: str) -> str:
    """An owner record for logs of the operator (never for a tenant's status or events)."""
    parsed = ImageOwner.parse(owner)
    return f"RbdImage {parsed.namespace}/{parsed.name}" if parsed else f"an unknown owner ({owner[:80]!r})"
