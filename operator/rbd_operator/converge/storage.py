"""RbdStorage: converge the pool and the cephx client in Ceph -> publish the key -> what status says.

Ownership is decided before anything changes; a rotation is resumed, never repeated with a fresh key,
while Ceph holds a key the Secret does not; expired trash entries of ours go to the purger (in the
background, never inside this pass); deletion removes only what the storage owns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION, metrics
from ..adapters import ceph, kube, purge
from ..adapters import shard
from ..adapters.blocking import Pool, check_cancelled, run_blocking
from ..adapters.ceph import CephError, Credentials
from ..adapters.namespaces import cluster_identity
from ..api.errors import OperatorError
from ..api.reasons import ConditionType, EventReason, Reason
from ..api.storage import StorageSpec, parse_storage
from ..reconcile.actions import PoolStep, ResumeRotation, RotateKey, SetCaps, Step
from ..reconcile.caps import caps_for, caps_weak, merge_caps
from ..reconcile.ownership import staging_name
from ..reconcile.storage_plan import (Peer, capacity_to_report, check_secret_uuid_change, hosts_summary,
                                      keyring_text, libvirt_secret_uuid, owns_client, peer_caps, peers, plan_client, plan_pool, without_owner)
from . import image
from .credentials import admin_credentials
from .outcome import Note, Outcome

CEPH_TIMEOUT = 60.0
# On the client Secret: the spec.client.rotateKeyGeneration its key was published for. With the key in
# Ceph, it tells a rotation cut short (Ceph has a key the Secret does not) from one to start.
KEY_GENERATION_ANNOTATION = f"{GROUP}/key-generation"


@dataclass
class InCeph:
    fsid: str
    pool_id: int
    caps: dict[str, str]
    key: str
    monitors: list[dict[str, str]]
    stats: dict[str, int]
    done: list[Step]
    expired: list[dict]  # trash entries of ours whose retention ended: the purger's


@dataclass(frozen=True)
class Known:
    """What the pass knows besides the spec: the storage's uid, this cluster's identity, the other storages
    sharing its client, every storage uid, and the key rotation last carried out and published."""
    uid: str
    identity: str
    peers: list[Peer]
    live: frozenset[str]
    rotated: int = 0
    published: str | None = None


@ceph.with_session
def in_ceph(cluster: ceph.CephCluster, spec: StorageSpec, known: Known, logger: logging.Logger) -> InCeph:
    """In a worker thread: observe, plan (ownership decided before any change), act, observe again."""
    fsid = cluster.fsid()
    pools = cluster.pools()
    entity = spec.client.entity
    steps: list[Step] = plan_pool(spec, pools.get(spec.pool.name), pools, known.uid, known.live.__contains__,
                                  known.identity)
    owners, have_caps = cluster.client_owners(entity), cluster.client_caps(entity)
    if spec.client.adopt and not spec.client.caps_stated and have_caps is not None:
        want_caps = None  # an adopted client keeps the caps it has unless the spec states some
    else:
        want_caps = merge_caps([caps_for(spec.client, spec.pool.name)] + peer_caps(known.peers, owners, fsid, spec))
    steps += plan_client(entity, want_caps, have_caps, owners, known.uid, spec.client.adopt, known.live.__contains__,
                         known.identity)
    for step in steps:
        check_cancelled(step.describe())
        logger.info("Ceph: %s", step.describe())
        if isinstance(step, PoolStep):
            cluster.apply_pool_step(step)
        else:
            cluster.apply_client_step(step)
    if any(isinstance(s, PoolStep) for s in steps):
        pools = cluster.pools()
    rotation = _rotate(cluster, spec, known, logger)
    key = cluster.client_key(entity)
    if key is None:
        raise CephError(Reason.CEPH_COMMAND_FAILED, f"{entity} vanished while being converged")
    caps = want_caps if want_caps is not None else (cluster.client_caps(entity) or {})
    return InCeph(fsid, pools[spec.pool.name].id, caps, key, cluster.monitors(), cluster.pool_stats(spec.pool.name),
                  steps + rotation, cluster.expired_trash(spec.pool.name, known.identity))


def _rotate(cluster: ceph.CephCluster, spec: StorageSpec, known: Known, logger: logging.Logger) -> list[Step]:
    """Raised spec.client.rotateKeyGeneration: a new key in Ceph; the Secret and the hosts follow. A rotation
    cut short after Ceph took the new key (the Secret still holds the old one) is finished with that key:
    never a second new key while the last one is not published yet."""
    entity, generation = spec.client.entity, spec.client.rotate_key_generation
    if generation <= known.rotated or not owns_client(cluster.client_owners(entity), known.uid, known.identity):
        return []
    in_ceph_key = cluster.client_key(entity)
    if known.published is not None and in_ceph_key is not None and in_ceph_key != known.published:
        logger.info("Ceph: %s already holds a key the Secret does not (a rotation cut short): publishing it", entity)
        return [ResumeRotation(entity, generation=generation)]
    check_cancelled(f"rotating the key of {entity}")
    logger.info("Ceph: rotating the key of %s (generation %d)", entity, generation)
    cluster.rotate_key(entity)
    return [RotateKey(entity, generation=generation)]


def _secret_owner(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdStorage", "name": name, "uid": uid, "controller": True,
            "blockOwnerDeletion": True}


async def reconcile(name: str, uid: str, body: Mapping[str, Any], spec: StorageSpec, storages: Mapping[Any, Any],
                    hypervisors: Mapping[Any, Any], namespaces: Mapping[Any, Any], purger: purge.Purger,
                    logger: logging.Logger) -> Outcome:
    """One pass over an RbdStorage; raises OperatorError (with its reason) when it cannot converge."""
    namespace = kube.operator_namespace()
    check_secret_uuid_change(spec, name, body.get("status") or {}, hypervisors)  # before anything is touched
    identity = await cluster_identity(namespaces)
    creds = await admin_credentials(spec.monitors, spec.admin_secret)
    try:
        # Before Ceph is touched: the client Secret's name must be free or ours.
        current = await run_blocking(kube.claimable_secret, namespace, spec.client.secret_name,
                                     _secret_owner(name, uid), timeout=30, pool=Pool.KUBE)
        published, published_generation = kube.published_key(current, KEY_GENERATION_ANNOTATION)
        found, live = peers(name, spec, await _every_shard(storages))
        rotated = max(int((body.get("status") or {}).get("keyGeneration") or 0), published_generation)
        result = await run_blocking(in_ceph, creds, spec, Known(uid, identity, found, live, rotated, published), logger,
                                    timeout=CEPH_TIMEOUT, reason=Reason.CEPH_UNREACHABLE)
    except OperatorError as exc:
        if exc.reason in (Reason.CEPH_UNREACHABLE, Reason.AUTH_FAILED):
            ceph.forget(creds)
        if exc.reason == Reason.AUTH_FAILED:
            kube.forget_secret(spec.admin_secret.namespace or namespace, spec.admin_secret.name)
        raise
    except ApiException as exc:
        raise OperatorError(Reason.API_ERROR, f"Secret {namespace}/{spec.client.secret_name}: HTTP {exc.status}") \
            from None
    out = Outcome()
    for step in result.done:
        out.note(step.reason, step.describe())
    _purges(name, spec, result, creds, identity, purger, out)
    key_version = await _publish(name, uid, spec, result.key, max(spec.client.rotate_key_generation, rotated), out)
    _status(name, body, spec, result, key_version, max(spec.client.rotate_key_generation, rotated), hypervisors, out)
    out.set(purges=purger.status(name))
    return out


def _purges(name: str, spec: StorageSpec, result: InCeph, creds: Credentials, identity: str, purger: purge.Purger,
            out: Outcome) -> None:
    if result.expired:
        purger.submit(name, creds, spec.pool.name, result.expired, identity)
    for purged in purger.take_done(name):
        out.note(EventReason.TRASH_PURGED, f"{spec.pool.name}/{purged} removed from the RBD trash after its retention")


async def _publish(name: str, uid: str, spec: StorageSpec, key: str, generation: int, out: Outcome) -> str:
    """The client Secret (with the generation its key belongs to); returns its resourceVersion."""
    namespace = kube.operator_namespace()
    secret = {"userID": spec.client.name, "userKey": key, "keyring": keyring_text(spec.client.entity, key)}
    try:
        change, key_version = await run_blocking(kube.ensure_secret, namespace, spec.client.secret_name, secret,
                                                 _secret_owner(name, uid), {f"{GROUP}/storage": name},
                                                 {KEY_GENERATION_ANNOTATION: str(generation)}, timeout=30, pool=Pool.KUBE)
    except OperatorError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as a condition, retried
        raise OperatorError(Reason.SECRET_WRITE_FAILED, f"could not write Secret {namespace}/{spec.client.secret_name}: "
                            f"{type(exc).__name__}") from None
    if change != "unchanged":
        out.note(EventReason.CLIENT_SECRET_UPDATED, f"Secret {namespace}/{spec.client.secret_name} {change}")
    return key_version


def _status(name: str, body: Mapping[str, Any], spec: StorageSpec, result: InCeph, key_version: str, generation: int,
            hypervisors: Mapping[Any, Any], out: Outcome) -> None:
    pool, entity, previous = spec.pool, spec.client.entity, body.get("status") or {}
    secret_uuid = libvirt_secret_uuid(result.fsid, entity, pool.name, spec.libvirt_secret_uuid)
    capacity = {"storedBytes": result.stats["storedBytes"], "maxAvailBytes": result.stats["maxAvailBytes"],
                "quotaMaxBytes": pool.quota_max_bytes or 0}
    hosts, before = hosts_summary(spec, secret_uuid, key_version, name, hypervisors), previous.get("hosts") or {}
    out.set(fsid=result.fsid, poolId=result.pool_id, pool=pool.name, client=entity, monitors=result.monitors,
            capacity=capacity_to_report(previous.get("capacity"), capacity),
            clientSecretRef={"name": spec.client.secret_name, "namespace": kube.operator_namespace()},
            libvirtSecretUUID=secret_uuid, hosts=hosts, keyVersion=key_version, keyGeneration=generation)
    metrics.storage_figures(name, capacity, hosts)
    if hosts != before and hosts["selected"] and hosts["current"] == hosts["selected"] \
            and before.get("current") != hosts["current"]:
        out.note(EventReason.HOSTS_CURRENT, f"all {hosts['selected']} selected host(s) hold the current key of "
                 f"{entity}")
    out.cond(ConditionType.POOL_READY, True, Reason.POOL_CONVERGED, f"pool {pool.name} (id {result.pool_id})"
             + (f" pg_num {pool.pg_num}" if pool.pg_num else ""))
    out.cond(ConditionType.CLIENT_READY, True, Reason.CLIENT_CONVERGED,
             f"{entity}: " + "; ".join(f"{s} '{c}'" for s, c in sorted(result.caps.items())))
    if caps_weak(result.caps):
        out.cond(ConditionType.CAPS_WEAK, True, Reason.CANNOT_BLOCKLIST, f"{entity} cannot blocklist a dead client "
                 "(mon caps lack 'profile rbd'); exclusive-lock takeover after a crash will hang", bad=True)
    else:
        out.cond(ConditionType.CAPS_WEAK, False, Reason.CAN_BLOCKLIST, "", event=False)
    out.cond(ConditionType.READY, True, Reason.CONVERGED, f"pool {pool.name} and {entity} match the spec")


# -- deletion ----------------------------------------------------------------------------------------
@ceph.with_session
def delete_in_ceph(cluster: ceph.CephCluster, spec: StorageSpec, known: Known,
                   logger: logging.Logger) -> dict[str, Any] | None:
    """Delete what this storage owns: its pool if empty, its share of the client.

    Returns the contents that block the pool's deletion (with the expired trash entries of ours, for the
    purger), None when done. A pool or client that is not this storage's (never was, adopted by another,
    another cluster's) is left as it is.
    """
    pools = cluster.pools()
    # The pool, and a pool a crashed creation left under this storage's staging name (ours by that name).
    for pool_name, ours in ((spec.pool.name, (known.uid,)), (staging_name(known.uid), (known.uid, None))):
        observed = pools.get(pool_name)
        if observed is None:
            continue
        if observed.owner not in ours or observed.cluster not in (None, known.identity):
            logger.info("Ceph: pool %s is not this storage's (owner %s): left as it is", pool_name, observed.owner)
            continue
        contents: dict[str, Any] = dict(cluster.pool_contents(pool_name))
        if any(contents[k] for k in ("images", "trash", "objects")):
            contents["expired"] = cluster.expired_trash(pool_name, known.identity) if contents["trash"] else []
            contents["pool"] = pool_name
            return contents
        check_cancelled(f"deleting pool {pool_name}")
        logger.info("Ceph: deleting pool %s", pool_name)
        cluster.delete_pool(pool_name)
    _release_client(cluster, spec, known, logger)
    return None


def _release_client(cluster: ceph.CephCluster, spec: StorageSpec, known: Known, logger: logging.Logger) -> None:
    entity = spec.client.entity
    owners = cluster.client_owners(entity)
    if not owns_client(owners, known.uid, known.identity):
        logger.info("Ceph: %s is not this storage's: left as it is", entity)
        return
    remaining = without_owner(owners, known.uid, known.identity)
    if not remaining:
        logger.info("Ceph: deleting %s", entity)
        cluster.delete_client(entity)
        return
    # Shared: the remaining co-owners keep it, with only their caps.
    cluster.set_client_owners(entity, remaining)
    caps = peer_caps(known.peers, remaining, cluster.fsid(), spec)
    if caps:
        logger.info("Ceph: %s is shared; keeping it with the other storages' caps", entity)
        cluster.apply_client_step(SetCaps(entity, caps=merge_caps(caps)))


async def _every_shard(storages: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """The storages that may own or share this storage's pool and cephx user: the index, or, in a shard (whose
    index holds only its own), every RbdStorage of the cluster (docs/scaling.md)."""
    if shard.SHARD is None:
        return storages
    return await run_blocking(shard.all_storages, timeout=30, pool=Pool.KUBE)


async def delete(name: str, uid: str, spec: StorageSpec, storages: Mapping[Any, Any],
                 namespaces: Mapping[Any, Any], purger: purge.Purger, logger: logging.Logger) -> dict[str, Any] | None:
    """What blocks the deletion (the pool's contents), None when what the storage owned is deleted."""
    identity = await cluster_identity(namespaces)
    creds = await admin_credentials(spec.monitors, spec.admin_secret)
    found, _ = peers(name, spec, await _every_shard(storages))
    blocking = await run_blocking(delete_in_ceph, creds, spec, Known(uid, identity, found, frozenset()), logger,
                                  timeout=CEPH_TIMEOUT, reason=Reason.CEPH_UNREACHABLE)
    if blocking and blocking["expired"]:  # trash entries of ours past their retention: purged in the background
        purger.submit(name, creds, blocking["pool"], blocking["expired"], identity)
    return blocking


async def sweep_images(name: str, spec_raw: Mapping[str, Any], idx: image.Indexes, busy: Callable[[str], bool],
                       memory: image.SweepMemory, logger: logging.Logger) -> Note | None:
    """The storage's drift sweep over its images (converge/image.py sweep), skipped with a warning when the
    storage itself cannot be used (its own condition already says why). Returns the sweep's Warning for the
    storage, if any."""
    if not image.tracking.by_storage(idx.images).get(name):
        memory.verdicts.forget(name)
        return None
    try:
        spec = parse_storage(name, spec_raw)
        creds = await admin_credentials(spec.monitors, spec.admin_secret)
        return await image.sweep(name, spec, creds, idx, busy, memory, logger)
    except (OperatorError, ApiException) as exc:
        logger.warning("image sweep of %s skipped: %s", name, getattr(exc, "message", type(exc).__name__))
        return None
