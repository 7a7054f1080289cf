"""RbdStorage: validate -> converge pool and client in Ceph -> publish the key -> status."""

from __future__ import annotations

import copy
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import kopf

from .. import GROUP, VERSION
from ..adapters import ceph, kube
from ..adapters.blocking import run_blocking
from ..adapters.ceph import CephError, Credentials
from ..api.errors import SpecError
from ..api.storage import StorageSpec, parse_storage
from ..reconcile.caps import caps_for, caps_weak, merge_caps
from ..reconcile.selector import matches
from ..reconcile.storage_plan import plan_client, plan_pool
from .common import CEPH_TIMEOUT, RESYNC_SECONDS, StatusUpdate, admin_credentials, backoff, busy, object_lock, release_lock

PLURAL = "rbdstorages"
# UUIDv5 namespace for libvirt secrets: the same storage gets the same UUID on every host.
LIBVIRT_SECRET_NAMESPACE = uuid.UUID("6c1d9a5e-63f4-4f3e-9a0b-7d1f2f1b9e61")
ACTION_REASONS = {
    "create-pool": "PoolCreated", "set-pool": "PoolUpdated", "set-quota": "QuotaUpdated",
    "rbd-pool-init": "PoolInitialized", "enable-application": "ApplicationEnabled",
    "create-client": "ClientCreated", "set-caps": "CapsCorrected",
}


def libvirt_secret_uuid(fsid: str, entity: str, pool: str) -> str:
    return str(uuid.uuid5(LIBVIRT_SECRET_NAMESPACE, f"{fsid}/{entity}/{pool}"))


def keyring_text(entity: str, key: str) -> str:
    return f"[{entity}]\n\tkey = {key}\n"


@kopf.index(GROUP, VERSION, PLURAL)
def storages(name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, uid: str, **_: Any) -> dict:
    """All RbdStorages by name (RbdImages look their storage up here, not in the API)."""
    return {name: {"spec": copy.deepcopy(dict(spec)), "status": copy.deepcopy(dict(status)), "uid": uid,
                   "deleting": bool(meta.get("deletionTimestamp"))}}


@dataclass
class CephOutcome:
    fsid: str
    pool_id: int
    caps: dict[str, str]
    key: str
    monitors: list[dict[str, str]]
    stats: dict[str, int]
    done: list


def _peers_caps(storage: str, spec: StorageSpec, fsid: str, index: kopf.Index) -> list[dict[str, str]]:
    """Caps other live storages of the same cluster want for the same client."""
    wanted = []
    for other_name, entries in index.items():
        if other_name == storage:
            continue
        for entry in entries:
            if entry["deleting"]:
                continue
            try:
                other = parse_storage(other_name, entry["spec"])
            except SpecError:
                continue
            if other.client.entity != spec.client.entity:
                continue
            other_fsid = (entry["status"] or {}).get("fsid")
            if other_fsid == fsid or (other_fsid is None and set(other.monitors) & set(spec.monitors)):
                wanted.append(caps_for(other.client, other.pool.name))
    return wanted


def _converge_ceph(creds: Credentials, storage: str, spec: StorageSpec, index: kopf.Index,
                   logger: logging.Logger) -> CephOutcome:
    """Runs in a worker thread: observe, plan, act, observe again."""
    cluster = ceph.cluster_for(creds)
    fsid = cluster.fsid()
    pools = cluster.pools()
    pool_actions = plan_pool(spec, pools.get(spec.pool.name), pools)  # raises SpecError before any change
    want_caps = merge_caps([caps_for(spec.client, spec.pool.name)] + _peers_caps(storage, spec, fsid, index))
    client_actions = plan_client(spec.client.entity, want_caps, cluster.client_caps(spec.client.entity))
    done = []
    for action in pool_actions + client_actions:
        logger.info("Ceph: %s", action.describe())
        cluster.apply_storage_action(action)
        done.append(action)
    if pool_actions:
        pools = cluster.pools()
    purged = cluster.purge_expired_trash(spec.pool.name)
    if purged:
        logger.info("Purged %d trashed image(s) whose retention ended", purged)
    key = cluster.client_key(spec.client.entity)
    if key is None:
        raise CephError("CephCommandFailed", f"{spec.client.entity} vanished while being converged")
    return CephOutcome(fsid, pools[spec.pool.name].id, want_caps, key, cluster.monitors(),
                       cluster.pool_stats(spec.pool.name), done)


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
                   storages: kopf.Index, hypervisors: kopf.Index, logger: logging.Logger, retry: int = 0,
                   timer: bool = False) -> None:
    status = StatusUpdate(body, patch, timer=timer)
    creds: Credentials | None = None
    try:
        parsed = parse_storage(name, spec)
        creds = await admin_credentials(parsed.monitors, parsed.admin_secret)
        outcome = await run_blocking(_converge_ceph, creds, name, parsed, storages, logger, timeout=CEPH_TIMEOUT)
    except SpecError as exc:
        return status.fail(exc.reason, exc.message)
    except (CephError, TimeoutError) as exc:
        reason = getattr(exc, "reason", "CephUnreachable")
        message = getattr(exc, "message", "Ceph did not answer in time")
        if creds and reason in ("CephUnreachable", "AuthFailed"):
            ceph.forget(creds)
        kube.forget_secret(parsed.admin_secret.namespace, parsed.admin_secret.name)
        return status.fail(reason, message, backoff(retry))

    for action in outcome.done:
        kopf.event(body, type="Normal", reason=ACTION_REASONS.get(action.kind, "Converged"), message=action.describe())

    namespace = kube.operator_namespace()
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdStorage", "name": name, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    secret = {"userID": parsed.client.name, "userKey": outcome.key,
              "keyring": keyring_text(parsed.client.entity, outcome.key)}
    labels = {f"{GROUP}/storage": name}
    try:
        change, key_version = await run_blocking(kube.ensure_secret, namespace, parsed.client.secret_name, secret,
                                                 owner, labels, timeout=30)
    except Exception as exc:  # noqa: BLE001 - reported as a condition, retried
        message = f"could not write Secret {namespace}/{parsed.client.secret_name}: {type(exc).__name__}"
        return status.fail("SecretWriteFailed", message, backoff(retry))
    if change != "unchanged":
        kopf.event(body, type="Normal", reason="ClientSecretUpdated", message=f"Secret {namespace}/{parsed.client.secret_name} {change}")

    pool = parsed.pool
    status.set(
        fsid=outcome.fsid,
        poolId=outcome.pool_id,
        pool=pool.name,
        client=parsed.client.entity,
        monitors=outcome.monitors,
        capacity={"storedBytes": outcome.stats["storedBytes"], "maxAvailBytes": outcome.stats["maxAvailBytes"],
                  "quotaMaxBytes": pool.quota_max_bytes or 0},
        clientSecretRef={"name": parsed.client.secret_name, "namespace": namespace},
        libvirtSecretUUID=libvirt_secret_uuid(outcome.fsid, parsed.client.entity, pool.name),
        hosts=hosts_summary(parsed, libvirt_secret_uuid(outcome.fsid, parsed.client.entity, pool.name), key_version,
                            name, hypervisors),
    )
    status.condition("PoolReady", True, "PoolConverged", f"pool {pool.name} (id {outcome.pool_id}) pg_num {pool.pg_num}")
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


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, retry: int,
                    storages: kopf.Index, hypervisors: kopf.Index, logger: logging.Logger, **_: Any) -> None:
    async with object_lock(uid):
        await converge(name, body, spec, patch, uid, storages, hypervisors, logger, retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, meta: kopf.Meta,
                 storages: kopf.Index, hypervisors: kopf.Index, logger: logging.Logger, **_: Any) -> None:
    """Drift detection: caps or pool settings changed by hand are restored; monitors refreshed."""
    if meta.get("deletionTimestamp") or busy(uid):
        return
    async with object_lock(uid):
        await converge(name, body, spec, patch, uid, storages, hypervisors, logger, timer=True)


def _delete_in_ceph(creds: Credentials, storage: str, spec: StorageSpec, index: kopf.Index,
                    logger: logging.Logger) -> dict[str, int] | None:
    """Delete pool and client if the pool is empty; return the contents that block it otherwise."""
    cluster = ceph.cluster_for(creds)
    try:
        contents = cluster.pool_contents(spec.pool.name)
    except CephError as exc:
        if exc.reason != "PoolNotFound":
            raise
        contents = {"images": 0, "trash": 0, "objects": 0}
    if any(contents.values()):
        return contents
    logger.info("Ceph: deleting pool %s", spec.pool.name)
    cluster.delete_pool(spec.pool.name)
    peers = _peers_caps(storage, spec, cluster.fsid(), index)
    if peers:
        logger.info("Ceph: %s is shared; keeping it with the other storages' caps", spec.client.entity)
        cluster.apply_storage_action(plan_client(spec.client.entity, merge_caps(peers), {})[0])
    else:
        logger.info("Ceph: deleting %s", spec.client.entity)
        cluster.delete_client(spec.client.entity)
    return None


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str, retry: int,
                 storages: kopf.Index, logger: logging.Logger, **_: Any) -> None:
    try:
        parsed = parse_storage(name, spec)
    except SpecError:
        release_lock(uid)
        return  # an invalid spec never reached Ceph
    if parsed.deletion_policy == "Retain":
        logger.info("deletionPolicy Retain: pool %s and %s stay in Ceph", parsed.pool.name, parsed.client.entity)
        release_lock(uid)
        return
    status = StatusUpdate(body, patch)
    async with object_lock(uid):
        try:
            creds = await admin_credentials(parsed.monitors, parsed.admin_secret)
            blocking = await run_blocking(_delete_in_ceph, creds, name, parsed, storages, logger, timeout=CEPH_TIMEOUT)
        except (CephError, TimeoutError) as exc:
            return status.fail(getattr(exc, "reason", "CephUnreachable"),
                               getattr(exc, "message", "Ceph did not answer in time"), backoff(retry))
    if blocking:
        message = (f"pool {parsed.pool.name} still holds {blocking['images']} image(s), {blocking['trash']} trashed "
                   f"image(s) and {blocking['objects']} other object(s); empty it or set deletionPolicy: Retain")
        return status.fail("PoolNotEmpty", message, min(60.0, backoff(retry)))
    kopf.event(body, type="Normal", reason="Deleted", message=f"pool {parsed.pool.name} deleted")
    release_lock(uid)
