"""Plan for an RbdStorage: the pool and the client as Ceph should have them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..api.errors import Refused, SpecError
from ..api.storage import DEFAULT_PG_NUM, StorageSpec, parse_storage
from .actions import (ClaimPool, CreateClient, CreatePool, EnableApplication, InitRbdPool, RecordClientOwners,
                      SetCaps, SetPool, SetQuota, Step, UpgradeClientOwners, UpgradePoolOwner)
from .caps import caps_for, same_caps
from .ownership import Decision, Record, Subject, decide, staging_name
from .selector import matches
from ..api.reasons import Reason

# Application metadata keys (on the pool, in Ceph) naming the owning RbdStorage's uid and the Kubernetes
# cluster it lives in (its kube-system namespace's uid). Ceph allows only [A-Za-z0-9_.-] in these keys
# and values. Pools of an earlier release have no cluster key (taken as this cluster's, then upgraded).
POOL_OWNER_KEY = "rbd-operator.owner"
POOL_CLUSTER_KEY = "rbd-operator.cluster"

POOL_FLAGS = frozenset({"noscrub", "nodeep-scrub", "nodelete", "nopgchange", "nosizechange"})
TOP_LEVEL_SETTINGS = frozenset({"min_size", "pg_autoscale_mode"})


@dataclass
class ObservedPool:
    """The subset of `ceph osd dump` we converge, for one pool."""
    id: int
    pg_num_target: int
    size: int
    quota_max_bytes: int
    quota_max_objects: int
    applications: tuple[str, ...]
    settings: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    cluster: str | None = None  # the owner's Kubernetes cluster (None: an earlier release's record)

    @property
    def record(self) -> Record | None:
        return Record(self.owner, self.cluster) if self.owner else None

    @classmethod
    def from_osd_dump(cls, pool: Mapping[str, Any]) -> "ObservedPool":
        settings = {k: _norm(v) for k, v in (pool.get("options") or {}).items()}
        for key in TOP_LEVEL_SETTINGS:
            if key in pool:
                settings[key] = _norm(pool[key])
        flags = set((pool.get("flags_names") or "").split(","))
        for flag in POOL_FLAGS:
            settings[flag] = "true" if flag in flags else "false"
        apps = pool.get("application_metadata") or {}
        marked = next((meta for meta in apps.values() if isinstance(meta, Mapping) and meta.get(POOL_OWNER_KEY)), {})
        return cls(
            owner=marked.get(POOL_OWNER_KEY),
            cluster=marked.get(POOL_CLUSTER_KEY) or None,
            id=int(pool["pool"]),
            pg_num_target=int(pool.get("pg_num_target", pool.get("pg_num", 0))),
            size=int(pool.get("size", 0)),
            quota_max_bytes=int(pool.get("quota_max_bytes", 0)),
            quota_max_objects=int(pool.get("quota_max_objects", 0)),
            applications=tuple(sorted((pool.get("application_metadata") or {}).keys())),
            settings=settings,
        )


def _norm(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _same_setting(want: str, have: str | None) -> bool:
    if have is None:
        return False
    if want.lower() in ("true", "false", "1", "0") and have.lower() in ("true", "false", "1", "0"):
        return (want.lower() in ("true", "1")) == (have.lower() in ("true", "1"))
    try:
        return float(want) == float(have)
    except ValueError:
        return want == have


def desired_settings(spec: StorageSpec, full: bool = True) -> dict[str, str]:
    """Pool settings to converge. `full`: the operator's defaults apply too (a pool it created and
    does not merely adopt); otherwise only what the spec states."""
    settings = {}
    if full or spec.pool.pg_num is not None:
        # A pool with a pg_num of the operator's must not have the autoscaler fight it.
        settings["pg_autoscale_mode"] = "off"
    settings.update(spec.pool.parameters)
    return settings


def plan_pool(spec: StorageSpec, observed: ObservedPool | None, pools: Mapping[str, ObservedPool],
              me: str, live: Callable[[str], bool], cluster: str | None = None) -> list[Step]:
    """Steps that create or correct the pool. Raises SpecError/Refused before any step if it can't work.

    `me` is the storage's uid, `cluster` this Kubernetes cluster's identity, `live(uid)` says whether an
    RbdStorage with that uid exists here. A pool the spec adopts is managed only in what the spec states
    (defaults apply at creation only).
    """
    pool = spec.pool
    if spec.client.cache_pool and spec.client.cache_pool not in pools:
        raise SpecError("spec.client.cachePool", f"pool {spec.client.cache_pool!r} does not exist", reason=Reason.CACHE_POOL_NOT_FOUND)
    actions: list[Step] = []
    full = not pool.adopt
    if observed is None:
        staging = staging_name(me)
        staged = pools.get(staging)
        if staged is not None and staged.owner not in (None, me):
            raise Refused(Reason.OWNED_BY_OTHER, f"staging pool {staging!r} belongs to RbdStorage {staged.owner}")
        actions.append(CreatePool(pool.name, pg_num=pool.pg_num_or_default, app=pool.application, owner=me,
                                  cluster=cluster, staging=staging, staged=staged is not None))
        # rbd pool init (or enabling another application) still follows the creation.
        observed = ObservedPool(-1, pool.pg_num_or_default, 0, 0, 0, ())
        full = True  # a new pool gets the defaults
    else:
        subject = Subject(f"pool {pool.name!r}", "spec.pool.adopt")
        decision = decide(subject, [observed.record] if observed.record else [], Record(me, cluster), pool.adopt,
                          live, describe=lambda uid: f"RbdStorage {uid}")
        if decision != Decision.OURS:
            step = ClaimPool if decision == Decision.CLAIM else UpgradePoolOwner
            actions.append(step(pool.name, app=pool.application, owner=me, cluster=cluster))
        want_pg = pool.pg_num if pool.pg_num is not None else (DEFAULT_PG_NUM if full else None)
        if want_pg is not None and observed.pg_num_target != want_pg:
            actions.append(SetPool(pool.name, var="pg_num", val=str(want_pg)))
            actions.append(SetPool(pool.name, var="pgp_num", val=str(want_pg)))
    if pool.replicas is not None and observed.size != pool.replicas:
        actions.append(SetPool(pool.name, var="size", val=str(pool.replicas)))
    for key, want in desired_settings(spec, full).items():
        if not _same_setting(want, observed.settings.get(key)):
            actions.append(SetPool(pool.name, var=key, val=want))
    if full or pool.quota_max_bytes is not None:
        want_bytes = pool.quota_max_bytes or 0
        if observed.quota_max_bytes != want_bytes:
            actions.append(SetQuota(pool.name, field="max_bytes", val=str(want_bytes)))
    if full or pool.quota_max_objects is not None:
        want_objects = pool.quota_max_objects or 0
        if observed.quota_max_objects != want_objects:
            actions.append(SetQuota(pool.name, field="max_objects", val=str(want_objects)))
    if pool.application not in observed.applications:
        if pool.application == "rbd":
            actions.append(InitRbdPool(pool.name))
        else:
            actions.append(EnableApplication(pool.name, app=pool.application))
    return actions


def with_owner(owners: list[str], me: str, cluster: str | None) -> list[str]:
    """The client's owner record with this storage in it (in this release's form: uid@cluster)."""
    mine = str(Record(me, cluster))
    kept = [o for o in owners if Record.parse(o).uid != me or (Record.parse(o).cluster not in (None, cluster))]
    return sorted(set(kept) | {mine})


def without_owner(owners: list[str], me: str, cluster: str | None) -> list[str]:
    """The client's owner record without this storage (any release's form of it)."""
    return sorted(o for o in owners if not (Record.parse(o).uid == me and Record.parse(o).cluster in (None, cluster)))


def owns_client(owners: list[str], me: str, cluster: str | None) -> bool:
    return any(Record.parse(o).uid == me and Record.parse(o).cluster in (None, cluster) for o in owners)


def plan_client(entity: str, want_caps: Mapping[str, str] | None, have_caps: Mapping[str, str] | None,
                owners: list[str], me: str, adopt: bool, live: Callable[[str], bool],
                cluster: str | None = None) -> list[Step]:
    """Steps that create the client or correct its caps (`have_caps` None: absent).

    `owners`: the owner record in Ceph (storage uids, `uid@cluster` from this release on). The owner
    record is written before the client is created, so a crash in between leaves a client that is still
    ours. `want_caps` None: the spec states no caps for an adopted client, whose caps are then left as
    they are.
    """
    actions: list[Step] = []
    if have_caps is None:
        if with_owner(owners, me, cluster) != sorted(owners):
            actions.append(RecordClientOwners(entity, owners=tuple(with_owner(owners, me, cluster))))
        return actions + [CreateClient(entity, caps=dict(want_caps or {}))]
    subject = Subject(f"cephx user {entity}", "spec.client.adopt")
    decision = decide(subject, [Record.parse(o) for o in owners], Record(me, cluster), adopt, live, shareable=True,
                      describe=lambda uid: f"RbdStorage {uid}")
    if decision != Decision.OURS:
        step = RecordClientOwners if decision == Decision.CLAIM else UpgradeClientOwners
        actions.append(step(entity, owners=tuple(with_owner(owners, me, cluster))))
    if want_caps is not None and not same_caps(want_caps, have_caps):
        actions.append(SetCaps(entity, caps=dict(want_caps)))
    return actions


CAPACITY_STEP = 0.01  # 1 %
CAPACITY_FLOOR = 64 * 2**20  # 64 MiB


def capacity_to_report(previous: Mapping[str, Any] | None, current: Mapping[str, int]) -> Mapping[str, Any]:
    """The capacity figures to keep in status: the previous ones unless a figure moved by more than 1 %
    (and more than 64 MiB) or the quota changed. Ceph's usage figures move with every osdmap and PG
    stats update; copying them on every resync would make an idle storage write its status forever
    (the exact figures are in the metrics)."""
    if not previous or set(previous) != set(current) or previous.get("quotaMaxBytes") != current.get("quotaMaxBytes"):
        return current
    for key, value in current.items():
        old = previous.get(key)
        if not isinstance(old, int) or isinstance(old, bool):
            return current
        if abs(value - old) > max(CAPACITY_FLOOR, CAPACITY_STEP * max(abs(old), abs(value))):
            return current
    return previous


# UUIDv5 namespace for libvirt secrets: the same storage gets the same UUID on every host.
LIBVIRT_SECRET_NAMESPACE = uuid.UUID("6c1d9a5e-63f4-4f3e-9a0b-7d1f2f1b9e61")


def libvirt_secret_uuid(fsid: str, entity: str, pool: str, adopted: str | None = None) -> str:
    """The libvirt secret UUID of a storage: the adopted one (spec.hypervisors.libvirtSecretUUID), else derived."""
    return adopted or str(uuid.uuid5(LIBVIRT_SECRET_NAMESPACE, f"{fsid}/{entity}/{pool}"))


def check_secret_uuid_change(spec: StorageSpec, name: str, status: Mapping[str, Any],
                             hypervisors: Mapping[str, Iterable[dict]]) -> None:
    """Refuse a libvirt secret UUID that differs from the one hosts already hold for this storage.

    Domains name the secret by its UUID: a new UUID would leave them pointing at a secret the operator
    removes from the host. Allowed while no HypervisorNode reports the storage's previous UUID, and where
    status records none yet (a new storage, or one whose fsid is not known yet)."""
    previous, fsid = status.get("libvirtSecretUUID"), status.get("fsid")
    if not previous or not fsid:
        return
    wanted = libvirt_secret_uuid(fsid, spec.client.entity, spec.pool.name, spec.libvirt_secret_uuid)
    if wanted == previous:
        return
    holders = sorted({host for host, entries in hypervisors.items() for entry in entries
                      for s in entry.get("storages") or () if s.get("name") == name and s.get("secretUUID") == previous})
    if holders:
        raise Refused(Reason.LIBVIRT_SECRET_UUID_IN_USE,
                      f"the libvirt secret UUID would change from {previous} to {wanted} (spec.hypervisors."
                      f"libvirtSecretUUID), but HypervisorNode(s) {', '.join(holders[:5])} hold {previous} for this "
                      "storage (domains name it); put the previous value back, or take the storage off its hosts first")


def keyring_text(entity: str, key: str) -> str:
    return f"[{entity}]\n\tkey = {key}\n"


@dataclass(frozen=True)
class Peer:
    """Another live RbdStorage naming the same cephx user (read from the index on the event loop)."""
    uid: str
    caps: dict[str, str]
    fsid: str | None
    monitors: frozenset[str]


def peers(storage: str, spec: StorageSpec, index: Mapping[str, Iterable[dict]]) -> tuple[list[Peer], frozenset[str]]:
    """Other live storages sharing this one's client, and the uids of all RbdStorages (from the index, on the
    event loop: worker threads get plain snapshots, never kopf's live index)."""
    found, uids = [], set()
    for other_name, entries in list(index.items()):
        for entry in entries:
            uids.add(entry["uid"])
            if other_name == storage or entry["deleting"]:
                continue
            try:
                other = parse_storage(other_name, entry["spec"])
            except SpecError:
                continue
            if other.client.entity == spec.client.entity:
                found.append(Peer(entry["uid"], caps_for(other.client, other.pool.name),
                                  (entry["status"] or {}).get("fsid"), frozenset(other.monitors)))
    return found, frozenset(uids)


def peer_caps(found: list[Peer], owners: list[str], fsid: str, spec: StorageSpec) -> list[dict[str, str]]:
    """Caps of the peers that co-own the client in this Ceph cluster."""
    uids = {Record.parse(o).uid for o in owners}
    return [p.caps for p in found if p.uid in uids
            and (p.fsid == fsid or (p.fsid is None and p.monitors & set(spec.monitors)))]


def hosts_summary(spec: StorageSpec, secret_uuid: str, key_version: str, name: str,
                  hypervisors: Mapping[str, Iterable[dict]]) -> dict:
    """How many HypervisorNodes this storage selects, and how many hold its current key.

    A host is current when it reports this storage's secret UUID with the key of the client Secret's
    current resourceVersion (a rotated key makes every host stale until it catches up).
    """
    selected, current = [], 0
    for host, entries in hypervisors.items():
        for entry in entries:
            if matches(spec.node_selector, entry["labels"]):
                selected.append(host)
                current += any(s.get("name") == name and s.get("secretUUID") == secret_uuid and s.get("current")
                               and s.get("keyVersion") == key_version for s in entry["storages"])
    return {"selected": len(selected), "current": current, "names": sorted(selected)}
