"""RbdStorage: validate -> converge pool and client in Ceph -> publish the key -> status."""

from __future__ import annotations

import copy
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION, metrics
from ..adapters import ceph, kube, purge
from ..adapters.blocking import check_cancelled, run_blocking
from ..adapters.ceph import CephError, Credentials
from ..api.errors import OperatorError, SpecError
from ..api.storage import StorageSpec, parse_storage
from ..reconcile.actions import Action
from ..reconcile.caps import caps_for, caps_weak, merge_caps
from ..reconcile.ownership import Record, staging_name
from ..reconcile.selector import matches
from ..reconcile.storage_plan import capacity_to_report, owns_client, plan_client, plan_pool, without_owner
from . import image as image_handlers
from .namespaces import cluster_identity
from .common import (reported, CEPH_TIMEOUT, RESYNC_SECONDS, StatusUpdate, admin_credentials, backoff, busy, object_lock,
                     release_lock, settle)

PLURAL = "rbdstorages"
# UUIDv5 namespace for libvirt secrets: the same storage gets the same UUID on every host.
LIBVIRT_SECRET_NAMESPACE = uuid.UUID("6c1d9a5e-63f4-4f3e-9a0b-7d1f2f1b9e61")
ACTION_REASONS = {
    "create-pool": "PoolCreated", "set-pool": "PoolUpdated", "set-quota": "QuotaUpdated",
    "rbd-pool-init": "PoolInitialized", "enable-application": "ApplicationEnabled",
    "set-pool-owner": "PoolAdopted", "set-client-owners": "ClientOwnerRecorded",
    "create-client": "ClientCreated", "set-caps": "CapsCorrected", "rotate-key": "KeyRotated",
    "resume-rotation": "RotationResumed", "upgrade-pool-owner": "OwnerRecordUpgraded",
    "upgrade-client-owners": "OwnerRecordUpgraded",
}
# On the client Secret: the spec.client.rotateKeyGeneration its key was published for. With the key in
# Ceph, it tells a rotation cut short (Ceph has a key the Secret does not) from one to start.
KEY_GENERATION_ANNOTATION = f"{GROUP}/key-generation"


def libvirt_secret_uuid(fsid: str, entity: str, pool: str) -> str:
    return str(uuid.uuid5(LIBVIRT_SECRET_NAMESPACE, f"{fsid}/{entity}/{pool}"))


def keyring_text(entity: str, key: str) -> str:
    return f"[{entity}]\n\tkey = {key}\n"


@kopf.index(GROUP, VERSION, PLURAL)
async def storages(name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, uid: str, **_: Any) -> dict:
    """All RbdStorages by name (RbdImages look their storage up here, not in the API)."""
    return {name: {"spec": copy.deepcopy(dict(spec)), "status": copy.deepcopy(dict(status)), "uid": uid,
                   "deleting": bool(meta.get("deletionTimestamp"))}}


@dataclass(frozen=True)
class Peer:
    """Another live RbdStorage naming the same cephx user (read from the index on the event loop)."""
    uid: str
    caps: dict[str, str]
    fsid: str | None
    monitors: frozenset[str]


def _peers(storage: str, spec: StorageSpec, index: kopf.Index) -> tuple[list[Peer], frozenset[str]]:
    """Other live storages sharing this one's client, and the uids of all RbdStorages.

    Runs on the event loop: worker threads get plain snapshots, never kopf's live index.
    """
    peers, uids = [], set()
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
                peers.append(Peer(entry["uid"], caps_for(other.client, other.pool.name),
                                  (entry["status"] or {}).get("fsid"), frozenset(other.monitors)))
    return peers, frozenset(uids)


def _peer_caps(peers: list[Peer], owners: list[str], fsid: str, spec: StorageSpec) -> list[dict[str, str]]:
    """Caps of the peers that co-own the client in this cluster."""
    uids = {Record.parse(o).uid for o in owners}
    return [p.caps for p in peers if p.uid in uids
            and (p.fsid == fsid or (p.fsid is None and p.monitors & set(spec.monitors)))]


@dataclass
class CephOutcome:
    fsid: str
    pool_id: int
    caps: dict[str, str]
    key: str
    monitors: list[dict[str, str]]
    stats: dict[str, int]
    done: list
    expired: list[dict]  # trash entries of ours whose retention ended: the purger's


@ceph.with_session
def _converge_ceph(cluster: ceph.CephCluster, storage: str, uid: str, spec: StorageSpec, peers: list[Peer],
                   live: frozenset[str], rotated: int, published: str | None, identity: str,
                   logger: logging.Logger) -> CephOutcome:
    """Runs in a worker thread: observe, plan (ownership decided before any change), act, observe again.

    `rotated`: the rotateKeyGeneration last carried out (status, and the one recorded on the client Secret);
    `published`: the key the client Secret holds. Purges are not done here (see adapters/purge.py)."""
    fsid = cluster.fsid()
    pools = cluster.pools()
    entity = spec.client.entity
    pool_actions = plan_pool(spec, pools.get(spec.pool.name), pools, uid, live.__contains__, identity)
    owners = cluster.client_owners(entity)
    have_caps = cluster.client_caps(entity)
    if spec.client.adopt and not spec.client.caps_stated and have_caps is not None:
        want_caps = None  # an adopted client keeps the caps it has unless the spec states some
    else:
        want_caps = merge_caps([caps_for(spec.client, spec.pool.name)] + _peer_caps(peers, owners, fsid, spec))
    client_actions = plan_client(entity, want_caps, have_caps, owners, uid, spec.client.adopt, live.__contains__,
                                 identity)
    done = []
    for action in pool_actions + client_actions:
        check_cancelled(action.describe())
        logger.info("Ceph: %s", action.describe())
        cluster.apply_storage_action(action)
        done.append(action)
    if pool_actions:
        pools = cluster.pools()
    generation = spec.client.rotate_key_generation
    if generation > rotated and owns_client(cluster.client_owners(entity), uid, identity):
        # Raised spec.client.rotateKeyGeneration: a new key in Ceph; the Secret and the hosts follow. A
        # rotation cut short after Ceph took the new key (the Secret still holds the old one) is finished
        # with that key: never a second new key while the last one is not published yet.
        in_ceph = cluster.client_key(entity)
        if published is not None and in_ceph is not None and in_ceph != published:
            logger.info("Ceph: %s already holds a key the Secret does not (a rotation cut short): publishing it",
                        entity)
            done.append(Action("resume-rotation", entity, {"generation": generation}))
        else:
            check_cancelled(f"rotating the key of {entity}")
            logger.info("Ceph: rotating the key of %s (generation %d)", entity, generation)
            cluster.rotate_key(entity)
            done.append(Action("rotate-key", entity, {"generation": generation}))
    expired = cluster.expired_trash(spec.pool.name, identity)
    key = cluster.client_key(entity)
    if key is None:
        raise CephError("CephCommandFailed", f"{entity} vanished while being converged")
    caps = want_caps if want_caps is not None else (cluster.client_caps(entity) or {})
    return CephOutcome(fsid, pools[spec.pool.name].id, caps, key, cluster.monitors(),
                       cluster.pool_stats(spec.pool.name), done, expired)


def hosts_summary(spec: StorageSpec, secret_uuid: str, key_version: str, name: str, hypervisors: kopf.Index) -> dict:
    """How many HypervisorNodes this storage selects, and how many hold its current key.

    A host is current when it reports this storage's secret UUID with the key of the client
    Secret's current resourceVersion (a rotated key makes every host stale until it catches up).
    """
    selected, current = [], 0
    for host, entries in hypervisors.items():
        for entry in entries:
            if matches(spec.node_selector, entry["labels"]):
                selected.append(host)
                current += any(s.get("name") == name and s.get("secretUUID") == secret_uuid and s.get("current")
                               and s.get("keyVersion") == key_version for s in entry["storages"])
    return {"selected": len(selected), "current": current, "names": sorted(selected)}


async def converge(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                   storages: kopf.Index, hypervisors: kopf.Index, namespaces: kopf.Index, memo: kopf.Memo,
                   logger: logging.Logger, retry: int = 0, timer: bool = False) -> None:
    status = StatusUpdate(body, patch, timer=timer)
    creds: Credentials | None = None
    namespace = kube.operator_namespace()
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdStorage", "name": name, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    try:
        await settle(uid)
        parsed = parse_storage(name, spec)
        identity = await cluster_identity(namespaces)
        creds = await admin_credentials(parsed.monitors, parsed.admin_secret)
        # Before Ceph is touched: the client Secret's name must be free or ours.
        current = await run_blocking(kube.claimable_secret, namespace, parsed.client.secret_name, owner, timeout=30,
                                     pool="kube")
        published, published_generation = kube.published_key(current, KEY_GENERATION_ANNOTATION)
        peers, live = _peers(name, parsed, storages)
        rotated = max(int((body.get("status") or {}).get("keyGeneration") or 0), published_generation)
        outcome = await run_blocking(_converge_ceph, creds, name, uid, parsed, peers, live, rotated, published,
                                     identity, logger, timeout=CEPH_TIMEOUT, reason="CephUnreachable")
    except OperatorError as exc:
        if creds and exc.reason in ("CephUnreachable", "AuthFailed"):
            ceph.forget(creds)
        if exc.reason == "AuthFailed":
            kube.forget_secret(parsed.admin_secret.namespace or namespace, parsed.admin_secret.name)
        return status.error(exc, retry)
    except ApiException as exc:
        return status.fail("ApiError", f"Secret {namespace}/{parsed.client.secret_name}: HTTP {exc.status}",
                           backoff(retry))

    for action in outcome.done:
        kopf.event(body, type="Normal", reason=ACTION_REASONS.get(action.kind, "Converged"), message=action.describe())
    purger: purge.Purger = memo.purger
    if outcome.expired:
        purger.submit(name, creds, parsed.pool.name, outcome.expired, identity)
    for purged in purger.take_done(name):
        kopf.event(body, type="Normal", reason="TrashPurged", message=f"{parsed.pool.name}/{purged} removed from the "
                   "RBD trash after its retention")

    secret = {"userID": parsed.client.name, "userKey": outcome.key,
              "keyring": keyring_text(parsed.client.entity, outcome.key)}
    labels = {f"{GROUP}/storage": name}
    generation = max(parsed.client.rotate_key_generation, rotated)
    try:
        change, key_version = await run_blocking(kube.ensure_secret, namespace, parsed.client.secret_name, secret,
                                                 owner, labels, {KEY_GENERATION_ANNOTATION: str(generation)},
                                                 timeout=30, pool="kube")
    except OperatorError as exc:
        return status.error(exc, retry)
    except Exception as exc:  # noqa: BLE001 - reported as a condition, retried
        message = f"could not write Secret {namespace}/{parsed.client.secret_name}: {type(exc).__name__}"
        return status.fail("SecretWriteFailed", message, backoff(retry))
    if change != "unchanged":
        kopf.event(body, type="Normal", reason="ClientSecretUpdated", message=f"Secret {namespace}/{parsed.client.secret_name} {change}")

    pool = parsed.pool
    secret_uuid = libvirt_secret_uuid(outcome.fsid, parsed.client.entity, pool.name)
    capacity = {"storedBytes": outcome.stats["storedBytes"], "maxAvailBytes": outcome.stats["maxAvailBytes"],
                "quotaMaxBytes": pool.quota_max_bytes or 0}
    status.set(
        fsid=outcome.fsid,
        poolId=outcome.pool_id,
        pool=pool.name,
        client=parsed.client.entity,
        monitors=outcome.monitors,
        capacity=capacity_to_report((body.get("status") or {}).get("capacity"), capacity),
        clientSecretRef={"name": parsed.client.secret_name, "namespace": namespace},
        libvirtSecretUUID=secret_uuid,
        hosts=hosts_summary(parsed, secret_uuid, key_version, name, hypervisors),
        keyVersion=key_version,
        keyGeneration=generation,
        purges=purger.status(name),
    )
    hosts = status.patch.status.get("hosts") if "hosts" in status.patch.status else None
    before = (body.get("status") or {}).get("hosts") or {}
    metrics.storage_figures(name, capacity, hosts or before)
    if hosts and hosts["selected"] and hosts["current"] == hosts["selected"] and before.get("current") != hosts["current"]:
        kopf.event(body, type="Normal", reason="HostsCurrent",
                   message=f"all {hosts['selected']} selected host(s) hold the current key of {parsed.client.entity}")
    status.condition("PoolReady", True, "PoolConverged", f"pool {pool.name} (id {outcome.pool_id})"
                     + (f" pg_num {pool.pg_num}" if pool.pg_num else ""))
    status.condition("ClientReady", True, "ClientConverged",
                     f"{parsed.client.entity}: " + "; ".join(f"{s} '{c}'" for s, c in sorted(outcome.caps.items())))
    if caps_weak(outcome.caps):
        status.condition("CapsWeak", True, "CannotBlocklist",
                         f"{parsed.client.entity} cannot blocklist a dead client (mon caps lack 'profile rbd'); "
                         "exclusive-lock takeover after a crash will hang", bad=True)
    else:
        status.condition("CapsWeak", False, "CanBlocklist", "", event=False)
    status.condition("Ready", True, "Converged", f"pool {pool.name} and {parsed.client.entity} match the spec")
    status.flush()


@kopf.on.startup()
async def start_purger(memo: kopf.Memo, **_: Any) -> None:
    """One purger per process (adapters/purge.py): big trashed images are removed apart from reconciles."""
    memo.purger = purge.Purger()


@kopf.on.cleanup()
async def stop_purger(memo: kopf.Memo, **_: Any) -> None:
    purger = getattr(memo, "purger", None)
    if purger is not None:
        purger.stop()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, retry: int,
                    storages: kopf.Index, hypervisors: kopf.Index, namespaces: kopf.Index, memo: kopf.Memo,
                    logger: logging.Logger, **_: Any) -> None:
    async with object_lock(uid):
        await converge(name, body, spec, patch, uid, storages, hypervisors, namespaces, memo, logger, retry)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@reported()
async def resume(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, retry: int,
                 storages: kopf.Index, hypervisors: kopf.Index, images: kopf.Index, namespaces: kopf.Index,
                 memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """After a restart: converge, then re-verify every image of the storage at once."""
    async with object_lock(uid):
        await converge(name, body, spec, patch, uid, storages, hypervisors, namespaces, memo, logger, retry)
    await _sweep(name, spec, images, namespaces, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
@reported(timer=True)
async def resync(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, meta: kopf.Meta,
                 storages: kopf.Index, hypervisors: kopf.Index, images: kopf.Index, namespaces: kopf.Index,
                 memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Drift detection: caps or pool settings changed by hand are restored, monitors refreshed, and
    the storage's images swept (image.sweep)."""
    if meta.get("deletionTimestamp") or busy(uid):
        return
    async with object_lock(uid):
        await converge(name, body, spec, patch, uid, storages, hypervisors, namespaces, memo, logger, timer=True)
    await _sweep(name, spec, images, namespaces, logger)


async def _sweep(name: str, spec: kopf.Spec, images: kopf.Index, namespaces: kopf.Index,
                 logger: logging.Logger) -> None:
    if not image_handlers.by_storage(images).get(name):
        return
    try:
        parsed = parse_storage(name, spec)
        creds = await admin_credentials(parsed.monitors, parsed.admin_secret)
        await image_handlers.sweep(name, parsed, creds, images, namespaces, logger)
    except (OperatorError, ApiException) as exc:  # the storage's own condition already tells; next interval
        logger.warning("image sweep of %s skipped: %s", name, getattr(exc, "message", type(exc).__name__))


@ceph.with_session
def _delete_in_ceph(cluster: ceph.CephCluster, storage: str, uid: str, spec: StorageSpec, peers: list[Peer],
                    identity: str, logger: logging.Logger) -> dict[str, Any] | None:
    """Delete what this storage owns: its pool if empty, its share of the client.

    Returns the contents that block the pool's deletion (with the expired trash entries of ours, for
    the purger), None when done. A pool or client that is not this storage's (never was, adopted by
    another, another cluster's) is left as it is.
    """
    pools = cluster.pools()
    # The pool, and a pool a crashed creation left under this storage's staging name (ours by that name).
    for pool_name, ours in ((spec.pool.name, (uid,)), (staging_name(uid), (uid, None))):
        observed = pools.get(pool_name)
        if observed is None:
            continue
        if observed.owner not in ours or observed.cluster not in (None, identity):
            logger.info("Ceph: pool %s is not this storage's (owner %s): left as it is", pool_name, observed.owner)
            continue
        contents: dict[str, Any] = dict(cluster.pool_contents(pool_name))
        if any(contents[k] for k in ("images", "trash", "objects")):
            contents["expired"] = cluster.expired_trash(pool_name, identity) if contents["trash"] else []
            contents["pool"] = pool_name
            return contents
        check_cancelled(f"deleting pool {pool_name}")
        logger.info("Ceph: deleting pool %s", pool_name)
        cluster.delete_pool(pool_name)
    entity = spec.client.entity
    owners = cluster.client_owners(entity)
    if not owns_client(owners, uid, identity):
        logger.info("Ceph: %s is not this storage's: left as it is", entity)
        return None
    remaining = without_owner(owners, uid, identity)
    if not remaining:
        logger.info("Ceph: deleting %s", entity)
        cluster.delete_client(entity)
        return None
    # Shared: the remaining co-owners keep it, with only their caps.
    cluster.set_client_owners(entity, remaining)
    caps = _peer_caps(peers, remaining, cluster.fsid(), spec)
    if caps:
        logger.info("Ceph: %s is shared; keeping it with the other storages' caps", entity)
        cluster.apply_storage_action(Action("set-caps", entity, {"caps": merge_caps(caps)}))
    return None


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, retry: int,
                 storages: kopf.Index, namespaces: kopf.Index, memo: kopf.Memo, logger: logging.Logger,
                 **_: Any) -> None:
    try:
        parsed = parse_storage(name, spec)
    except SpecError:
        release_lock(uid)
        return  # an invalid spec never reached Ceph
    if parsed.deletion_policy == "Retain":
        logger.info("deletionPolicy Retain: pool %s and %s stay in Ceph", parsed.pool.name, parsed.client.entity)
        release_lock(uid)
        metrics.storage_gone(name)
        return
    status = StatusUpdate(body, patch)
    async with object_lock(uid):
        try:
            await settle(uid)
            identity = await cluster_identity(namespaces)
            creds = await admin_credentials(parsed.monitors, parsed.admin_secret)
            peers, _ = _peers(name, parsed, storages)
            blocking = await run_blocking(_delete_in_ceph, creds, name, uid, parsed, peers, identity, logger,
                                          timeout=CEPH_TIMEOUT, reason="CephUnreachable")
        except OperatorError as exc:
            if exc.permanent:  # e.g. the admin Secret moved out of reach: keep retrying, slowly
                return status.fail(exc.reason, exc.message, min(300.0, backoff(retry)))
            return status.error(exc, retry)
    if blocking:
        if blocking["expired"]:  # trash entries of ours past their retention: purged in the background
            memo.purger.submit(name, creds, blocking["pool"], blocking["expired"], identity)
        message = (f"pool {parsed.pool.name} still holds {blocking['images']} image(s) and {blocking['trash']} "
                   f"trashed image(s) across {blocking['namespaces'] + 1} RBD namespace(s), and "
                   f"{blocking['objects']} RADOS object(s) besides RBD's own; empty it or set deletionPolicy: Retain")
        return status.fail("PoolNotEmpty", message, min(60.0, backoff(retry)))
    kopf.event(body, type="Normal", reason="Deleted", message=f"pool {parsed.pool.name}: what this storage owned is deleted")
    release_lock(uid)
    metrics.storage_gone(name)
