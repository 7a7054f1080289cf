"""Shards: one fleet split across several operator Deployments (pure; docs/scaling.md).

A shard is a name (`RBD_OPERATOR_SHARD`, `--shard`). Every object of the operator's kinds carries the
label `rbd-operator.io/shard: <name>`; an operator of shard `a` lists and watches only objects labelled
`a` (a server-side label selector: the API server never sends it another shard's objects, so it cannot
act on, adopt, finalize or delete them, and its memory holds only its own). Without a shard (the default)
nothing is filtered: the operator handles every object, as it always did.

Per shard, besides the selector: its own kopf peering name (`<peering>-<shard>`: the replicas of one shard
elect their active one, shards never pause each other) and its own disruption Lease
(`rbd-operator-disruption-<shard>`: a host belongs to one shard, so "one host at a time" is per shard).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

LABEL = "rbd-operator.io/shard"
# The kinds whose objects belong to a shard (plurals of group rbd-operator.io). Namespaces are not sharded:
# every shard reads them (owner records, imageNamespaces).
PLURALS = ("rbdstorages", "hypervisornodes", "rbdimages", "rbdsnapshots", "rbdsnapshotschedules")
# A label value that is also safe inside a ClusterKopfPeering and a Lease name (DNS labels), with room for the
# prefixes: lowercase alphanumerics and '-', starting and ending alphanumeric.
MAX_LENGTH = 40
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class ShardError(ValueError):
    """An invalid shard name (the operator refuses to start: it would otherwise watch the wrong objects)."""


def parse_shard(value: str | None) -> str | None:
    """The shard name, None when unset or empty (no sharding)."""
    if value is None or not value.strip():
        return None
    name = value.strip()
    if len(name) > MAX_LENGTH or not _NAME.fullmatch(name):
        raise ShardError(f"shard {name[:80]!r} is not a valid shard name: lowercase letters, digits and '-', "
                         f"starting and ending with a letter or digit, at most {MAX_LENGTH} characters")
    return name


def selector(shard: str | None) -> str | None:
    """The label selector of a shard's watches and lists; None: watch everything."""
    return None if shard is None else f"{LABEL}={shard}"


UNSHARDED = f"!{LABEL}"  # objects no shard's selector matches because they carry no shard label at all


def selectors(shard: str | None) -> dict[str, str]:
    """plural -> label selector for every sharded kind (empty without a shard)."""
    chosen = selector(shard)
    return {} if chosen is None else {plural: chosen for plural in PLURALS}


def belongs(labels: Mapping[str, str] | None, shard: str | None) -> bool:
    """Whether an object with these labels is the shard's (what the server-side selector lets through)."""
    return shard is None or (labels or {}).get(LABEL) == shard


def peering_name(base: str | None, shard: str | None) -> str | None:
    """The kopf peering name of a shard's replicas: the base name with the shard appended."""
    if not base:
        return None
    return base if shard is None else f"{base}-{shard}"


def lease_name(base: str, shard: str | None) -> str:
    """The disruption Lease of a shard (its hosts are its own: one host at a time within the shard)."""
    return base if shard is None else f"{base}-{shard}"


def missing_storage(storage: str, shard: str | None) -> str:
    """The message of an RbdImage (or RbdSnapshot) whose storage this operator does not see."""
    if shard is None:
        return f"RbdStorage {storage!r} does not exist (waiting for it)"
    return (f"RbdStorage {storage!r} does not exist in shard {shard!r} (waiting for it): an RbdImage must carry its "
            f"RbdStorage's label {LABEL}; an RbdStorage with another {LABEL} is handled by that shard only")


def describe_unlabelled(kind: str, names: Iterable[str], more: bool) -> str:
    """A warning naming objects that carry no shard label (no shard will ever handle them)."""
    shown = sorted(names)
    listed = ", ".join(shown) + (", ..." if more else "")
    return (f"{'at least ' if more else ''}{len(shown)} {kind} without the label {LABEL} are handled by no shard: "
            f"{listed}; label each with the shard of its RbdStorage (docs/scaling.md)")


def missing_image(namespace: str, image: str, shard: str | None) -> str:
    """The message of an RbdSnapshot whose RbdImage this operator does not see."""
    if shard is None:
        return f"RbdImage {namespace}/{image} does not exist (waiting for it)"
    return (f"RbdImage {namespace}/{image} does not exist in shard {shard!r} (waiting for it): an RbdSnapshot must "
            f"carry its RbdImage's label {LABEL}")
