"""Who owns a pool, a cephx client or an image, and whether this object may act on it.

Ownership is recorded in Ceph itself (see adapters/ceph.py for where): a pool's owner is one
RbdStorage uid, a client's owners are the RbdStorage uids sharing it, an image's owner is
`namespace/name/uid` of one RbdImage. The rules, one function for all three:

- ours: act;
- nobody's (made by hand, as VMmanager leaves things): `NotOwned` unless the spec adopts it;
- another live object's: `OwnedByOther` (a client may be shared by storages that adopt it);
- a gone object's (deleted with deletionPolicy Retain): like nobody's, adoptable.

Nothing is changed in Ceph before this decision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

from ..api.errors import Refused

STAGING_PREFIX = "rbdop-new-"


class Decision:
    OURS = "ours"
    CLAIM = "claim"  # record ownership (adoption), then act


@dataclass(frozen=True)
class Subject:
    what: str         # "pool 'vmmgr'", for messages
    adopt_field: str  # "spec.pool.adopt"


def decide(subject: Subject, owners: Iterable[str], me: str, adopt: bool, live: Callable[[str], bool],
           *, shareable: bool = False, describe: Callable[[str], str] = str) -> str:
    """Decision.OURS or Decision.CLAIM; raises Refused (NotOwned, OwnedByOther) otherwise."""
    owners = [o for o in owners if o]
    if me in owners:
        return Decision.OURS
    live_owners = [o for o in owners if live(o)]
    if live_owners and not (shareable and adopt):
        hint = f"; set {subject.adopt_field}: true to share it" if shareable else ""
        raise Refused("OwnedByOther", f"{subject.what} belongs to {', '.join(describe(o) for o in live_owners)}"
                      f"{hint}. Nothing was changed")
    if adopt:
        return Decision.CLAIM
    if owners:
        raise Refused("NotOwned", f"{subject.what} was made by {', '.join(describe(o) for o in owners)}, which no "
                      f"longer exists; set {subject.adopt_field}: true to adopt it. Nothing was changed")
    raise Refused("NotOwned", f"{subject.what} exists and was not made by rbd-operator; set "
                  f"{subject.adopt_field}: true to adopt it. Nothing was changed")


def staging_name(owner: str) -> str:
    """Deterministic name a new pool or image is created under before it is marked and renamed into place.

    A crash between creating and marking leaves an object whose name says whose it is, so a re-run
    finishes the job instead of finding an unmarked (NotOwned) object under the final name.
    """
    return STAGING_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:16]


def is_staging(name: str) -> bool:
    return name.startswith(STAGING_PREFIX)


# -- image owners: "namespace/name/uid" ------------------------------------------------------------
def image_owner(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}/{name}/{uid}"


def split_image_owner(owner: str) -> tuple[str, str, str] | None:
    parts = owner.split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def image_owner_uid(owner: str) -> str:
    parts = split_image_owner(owner)
    return parts[2] if parts else owner


def describe_image_owner(owner: str) -> str:
    parts = split_image_owner(owner)
    return f"RbdImage {parts[0]}/{parts[1]}" if parts else f"an unknown owner ({owner[:80]!r})"
