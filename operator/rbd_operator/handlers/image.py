"""RbdImage: validate -> find the storage (tenancy) -> converge the image through librbd -> status."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import ceph, importer, kube
from ..adapters.blocking import check_cancelled, run_blocking
from ..adapters.ceph import CephError, Credentials
from ..api.conditions import get_condition
from ..api.errors import OperatorError, Refused, SpecError, Waiting
from ..api.image import QOS_SETTINGS, ImageSpec, bits_to_features, parse_image
from ..api.quantity import parse_quantity
from ..api.storage import StorageSpec, parse_storage
from ..reconcile.image_plan import (ObservedImage, Tenancy, describe_users, plan_image, sweep_verdict, used_by)
from ..reconcile.limits import Usage, UsageEntry, namespace_usage, trash_delay
from ..reconcile.ownership import ImageOwner, staging_name
from ..reconcile.selector import matches_namespaces
from .common import (CEPH_TIMEOUT, StatusUpdate, admin_credentials, backoff, busy, object_lock, release_lock, reported,
                     settle)
from .namespaces import NamespaceInfo, cluster_identity, namespace_info

PLURAL = "rbdimages"
ACTION_REASONS = {
    "create": "Created", "clone": "Cloned", "resize": "Resized", "flatten": "Flattened",
    "update-features": "FeaturesUpdated", "protect-snapshot": "SnapshotProtected", "set-owner": "Adopted",
    "set-qos": "QosUpdated", "upgrade-owner": "OwnerRecordUpgraded",
}


CREATION = frozenset({"create", "clone", "protect-snapshot", "import"})
IMPORT_TIMEOUT = 6 * 3600.0
IMPORT_REPORT_SECONDS = 5.0
# Ready=False reasons of an RbdImage that holds nothing in Ceph (it does not count against perNamespace).
REFUSALS = frozenset({"LimitExceeded", "DataPoolNotAllowed", "AdoptionNotAllowed", "NamespaceNotAllowed", "NotOwned",
                      "OwnedByOther", "InvalidSpec", "InvalidName", "InvalidSize", "InvalidFeatures",
                      "SourceNotAllowed", "ImportNotAllowed", "SizeExceedsQuota", "ChecksumMismatch",
                      "UnsupportedImageFormat", "DataPoolNotFound", "StorageNotFound", "SnapshotPending"})


@dataclass(frozen=True)
class Tracked:
    """An RbdImage as the drift sweep of its storage sees it (from the index, no API call)."""
    namespace: str
    name: str
    uid: str
    spec: dict
    ready: tuple[str, str] | None
    deleting: bool
    created: str = ""              # metadata.creationTimestamp
    size: int = 0                  # status.sizeBytes
    provisioned: bool = False      # status.imageId: it has an image in Ceph
    accepted: bool | None = None   # status.acceptedGeneration == generation (None: not recorded)
    within: bool | None = None     # the WithinLimits condition (None: absent)

    def usage_entry(self) -> UsageEntry:
        try:
            size = parse_quantity(self.spec.get("size")) if self.spec.get("size") is not None else 0
        except ValueError:
            size = 0
        refused = self.ready is not None and self.ready[0] == "False" and self.ready[1] in REFUSALS
        return UsageEntry(self.uid, self.created, max(size, self.size), self.provisioned,
                          refused and not self.provisioned)

    @property
    def settled(self) -> bool:
        return self.accepted if self.accepted is not None else self.ready == ("True", "Converged")


@kopf.index(GROUP, VERSION, PLURAL)
async def images(name: str, namespace: str, uid: str, body: kopf.Body, **_: Any) -> dict:
    """Every RbdImage under three kinds of key, read through the views below:
    ("uid", uid) -> True (an image tagged with a uid not listed belongs to a gone object);
    ("storage", storage name) -> Tracked (what the storage's drift sweep needs);
    ("key", (namespace, name)) -> Tracked (what snapshots and clones resolve; see by_key).
    One index function, not three: kopf runs each one on every event of every image. Kept cheap (no
    parsing here): the readers parse the specs they need."""
    spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body.get("metadata") or {}
    conditions = status.get("conditions")
    cond = get_condition(conditions, "Ready")
    ready = (cond.get("status"), cond.get("reason")) if cond and cond.get("observedGeneration") == meta.get(
        "generation") else None
    within = get_condition(conditions, "WithinLimits")
    accepted = status.get("acceptedGeneration")
    size = status.get("sizeBytes")
    tracked = Tracked(namespace, name, uid, dict(spec), ready, bool(meta.get("deletionTimestamp")),
                      str(meta.get("creationTimestamp") or ""), size if isinstance(size, int) else 0,
                      bool(status.get("imageId")), None if accepted is None else accepted == meta.get("generation"),
                      None if within is None else within.get("status") == "True")
    out: dict = {("uid", uid): True, ("key", (namespace, name)): tracked}
    if isinstance(tracked.spec.get("storage"), str):
        out[("storage", tracked.spec["storage"])] = tracked
    return out


class IndexView:
    """One kind of key of the `images` index, looked up like an index of its own."""

    def __init__(self, index: kopf.Index, kind: str) -> None:
        self._index, self._kind = index, kind

    def get(self, key: Any, default: Any = None) -> Any:
        return self._index.get((self._kind, key), default)

    def __contains__(self, key: object) -> bool:
        return (self._kind, key) in self._index


class KeyView(IndexView):
    """RbdImages by (namespace, name) with a valid spec: [{"uid", "storage", "image" (its name in Ceph)}]."""

    def get(self, key: Any, default: Any = None) -> Any:
        out = []
        for t in list(self._index.get((self._kind, key), [])):
            try:
                parsed = parse_image(t.name, t.spec)
            except SpecError:
                continue
            out.append({"uid": t.uid, "storage": parsed.storage, "image": parsed.name})
        return out or default


def by_uid(images: kopf.Index) -> IndexView:
    return IndexView(images, "uid")


def by_storage(images: kopf.Index) -> IndexView:
    return IndexView(images, "storage")


def by_key(images: kopf.Index) -> KeyView:
    return KeyView(images, "key")


@ceph.with_session
def _headers(cluster: ceph.CephCluster, pool: str, names: set[str]) -> dict[str, ObservedImage]:
    return cluster.image_headers(pool, names)


async def sweep(storage_name: str, storage: StorageSpec, creds: Credentials, images: kopf.Index,
                namespaces: kopf.Index, logger: logging.Logger) -> int:
    """Drift detection for all images of one storage: one listing of the pool and one read of each
    image's header per interval (instead of a timer and an image open per image). Images whose status
    no longer tells the truth are poked (an annotation: kopf then reconciles them); nothing else is
    written. Returns how many were poked."""
    image_uids = by_uid(images)
    everyone = [t for t in list(by_storage(images).get(storage_name, []))]
    tracked = []
    for t in everyone:
        try:
            tracked.append((t, parse_image(t.name, t.spec)))
        except SpecError:
            continue  # never reached Ceph; its condition says so
    tracked = [(t, spec) for t, spec in tracked if not t.deleting]
    if not tracked:
        return 0
    headers = await run_blocking(_headers, creds, storage.pool.name, {spec.name for _, spec in tracked},
                                 timeout=CEPH_TIMEOUT, reason="CephUnreachable")
    identity = await cluster_identity(namespaces)
    infos: dict[str, NamespaceInfo | None] = {}
    usage_entries: dict[str, list[UsageEntry]] = {}
    per_namespace = storage.image_limits.per_namespace
    if per_namespace.max_images is not None or per_namespace.max_bytes is not None:
        for t in everyone:
            if not t.deleting:
                usage_entries.setdefault(t.namespace, []).append(t.usage_entry())
    poked = 0
    for t, spec in tracked:
        if t.namespace not in infos:
            infos[t.namespace] = await namespace_info(namespaces, t.namespace)
        info = infos[t.namespace]
        allowed = storage.image_namespaces is None or (info is not None and
                                                       matches_namespaces(storage.image_namespaces, info.labels))
        owner = ImageOwner(t.namespace, t.name, t.uid, identity, info.uid if info else None)
        usage = (namespace_usage(usage_entries.get(t.namespace, []), t.uid, t.created)
                 if t.namespace in usage_entries else None)
        verdict = sweep_verdict(spec, headers.get(spec.name), owner, t.ready, storage.pool.quota_max_bytes or 0,
                                image_uids.__contains__, allowed, _tenancy(storage, info, t.settled, usage), t.within)
        if verdict and not busy(t.uid):
            logger.info("drift: RbdImage %s/%s (%s) no longer matches; reconciling it", t.namespace, t.name,
                        t.ready[1] if t.ready else "no status")
            await run_blocking(kube.poke, GROUP, VERSION, PLURAL, t.namespace, t.name, timeout=30, pool="kube")
            poked += 1
    logger.info("swept %d image(s) of %s: %d found changed", len(tracked), storage_name, poked)
    return poked


def _tenancy(storage: StorageSpec, info: NamespaceInfo | None, settled: bool, usage: Usage | None) -> Tenancy:
    granted = (info is not None and storage.adoption_namespaces is not None
               and matches_namespaces(storage.adoption_namespaces, info.labels))
    return Tenancy(granted, storage.image_limits, storage.image_qos, settled, usage)


def _usage(storage_name: str, storage: StorageSpec, images: kopf.Index, namespace: str, uid: str,
           created: str) -> Usage | None:
    """The namespace's other images on the storage, when the storage limits them per namespace."""
    limits = storage.image_limits.per_namespace
    if limits.max_images is None and limits.max_bytes is None:
        return None
    entries = [t.usage_entry() for t in list(by_storage(images).get(storage_name, []))
               if t.namespace == namespace and not t.deleting]
    return namespace_usage(entries, uid, created)


async def _storage_for(spec: ImageSpec, namespace: str | None, storages: kopf.Index, namespaces: kopf.Index, *,
                       tenancy: bool = True, deleting_ok: bool = False,
                       ) -> tuple[StorageSpec, Credentials, NamespaceInfo | None]:
    """The image's storage, its admin credentials and the image's namespace (a storage being deleted only
    when `deleting_ok`).

    With `tenancy`, the storage must admit the image's namespace (its spec.imageNamespaces).
    """
    entries = list(storages.get(spec.storage, []))
    if not entries or (entries[0]["deleting"] and not deleting_ok):
        raise Waiting("StorageNotFound", f"RbdStorage {spec.storage!r} does not exist (waiting for it)")
    entry = entries[0]
    try:
        storage = parse_storage(spec.storage, entry["spec"])
    except SpecError as exc:
        raise Waiting("StorageNotReady", f"RbdStorage {spec.storage!r} is invalid: {exc.message}") from None
    info = await namespace_info(namespaces, namespace) if namespace else None
    if tenancy and storage.image_namespaces is not None:
        if info is None or not matches_namespaces(storage.image_namespaces, info.labels):
            raise Refused("NamespaceNotAllowed", f"RbdStorage {spec.storage!r} does not admit RbdImages of namespace "
                          f"{namespace!r} (its spec.imageNamespaces). Nothing was changed")
    if (entry["status"] or {}).get("poolId") is None:
        raise Waiting("StorageNotReady", f"RbdStorage {spec.storage!r} has not created its pool yet")
    creds = await admin_credentials(storage.monitors, storage.admin_secret)
    return storage, creds, info


@dataclass
class ImageOutcome:
    image: ObservedImage
    done: list
    beyond: tuple[str, ...] = ()  # what the image keeps beyond its storage's limits (added after it was made)


@ceph.with_session
def _converge_image(cluster: ceph.CephCluster, storage: StorageSpec, spec: ImageSpec, owner: ImageOwner,
                    live: Callable[[str], bool], tenancy: Tenancy, logger: logging.Logger,
                    unresolved: OperatorError | None = None, progress: importer.Progress | None = None) -> ImageOutcome:
    pool = storage.pool.name
    observed = cluster.observe_image(pool, spec.name)
    if observed is None and unresolved is not None:
        raise unresolved  # a clone to make from an RbdSnapshot that cannot be resolved (yet)
    source = None
    if observed is None and spec.source and not spec.source.url:
        source = cluster.observe_source(pool, spec.source.image, spec.source.snapshot)
    data_pool_exists = True
    if observed is None and spec.data_pool and spec.data_pool in storage.image_limits.data_pools:
        # Only a pool the storage allows is looked up (nothing tells a tenant which other pools exist).
        data_pool_exists = spec.data_pool in cluster.pools()
    actions = plan_image(spec, observed, owner, storage.pool.quota_max_bytes or 0, source, data_pool_exists, live,
                         storage.import_prefixes, tenancy)
    if actions:
        logger.info("librbd, pool %s: %s", pool, "; ".join(a.describe() for a in actions))
    made = None
    for action in actions:
        check_cancelled(action.describe())
        made = cluster.apply_image_action(pool, action, progress) or made
    if actions:
        # A creation reports what it made; anything more than that is looked at again.
        only_made = made is not None and all(a.kind in CREATION for a in actions)
        observed = made if only_made else cluster.observe_image(pool, spec.name)
    if observed is None:
        raise CephError("ImageNotFound", f"image {pool}/{spec.name} vanished while being converged")
    return ImageOutcome(observed, list(actions), actions.beyond)


def qos_status(qos: dict[str, int]) -> dict[str, int]:
    names = {v: k for k, v in QOS_SETTINGS.items()}
    return {names[k]: v for k, v in sorted(qos.items()) if k in names}


def node_addresses(hypervisors: kopf.Index) -> dict[str, str]:
    return {e["address"]: name for name, entries in list(hypervisors.items()) for e in entries if e.get("address")}


def _report_image(status: StatusUpdate, image: ObservedImage, hypervisors: kopf.Index) -> None:
    status.set(sizeBytes=image.size, features=bits_to_features(image.features), imageId=image.id,
               parent=image.parent, watchers=image.watchers, qos=qos_status(image.qos),
               usedBy=used_by(image.watchers, node_addresses(hypervisors)))


async def _converge_importing(creds: Credentials, storage: StorageSpec, spec: ImageSpec, owner: ImageOwner,
                              image_uids: IndexView, tenancy: Tenancy, namespace: str, name: str,
                              logger: logging.Logger) -> ImageOutcome:
    """Converge an image imported from a URL: the import runs in the bounded import pool (it may take
    long); its progress is reported into status.import every few seconds while it runs."""
    progress = importer.Progress(phase="queued")
    task = asyncio.ensure_future(run_blocking(_converge_image, creds, storage, spec, owner, image_uids.__contains__,
                                              tenancy, logger, None, progress, timeout=IMPORT_TIMEOUT,
                                              reason="Timeout", pool="import"))
    reported_once = None
    while True:
        done, _ = await asyncio.wait([task], timeout=IMPORT_REPORT_SECONDS)
        if done:
            return task.result()
        state = progress.as_status()
        if state != reported_once and state["phase"] != "queued" or reported_once is None:
            reported_once = state
            try:
                await run_blocking(kube.patch_status, GROUP, VERSION, PLURAL, namespace, name, {"import": state},
                                   timeout=30, pool="kube")
            except (ApiException, OperatorError) as exc:  # progress is informative: keep importing
                logger.debug("could not report import progress: %s", exc)


def resolve_snapshot(spec: ImageSpec, namespace: str, snapshots_by_key: kopf.Index,
                     images_by_key: KeyView) -> ImageSpec:
    """`spec.source.rbdSnapshot` -> the pool image and snapshot it stands for (same namespace only)."""
    source = spec.source
    if source is None or source.rbd_snapshot is None:
        return spec
    snaps = list(snapshots_by_key.get((namespace, source.rbd_snapshot), []))
    if not snaps or not snaps[0].get("ready"):
        raise Waiting("SnapshotPending", f"RbdSnapshot {namespace}/{source.rbd_snapshot} does not exist or is not "
                      "ready yet (waiting for it)")
    images = list(images_by_key.get((namespace, snaps[0]["image"]), []))
    if not images:
        raise Waiting("SnapshotPending", f"the RbdImage of RbdSnapshot {namespace}/{source.rbd_snapshot} is gone")
    return replace(spec, source=replace(source, image=images[0]["image"], snapshot=snaps[0]["name"]))


def settled(body: kopf.Body) -> bool:
    """This generation of the spec was accepted before (status.acceptedGeneration; before that field
    existed: Ready=True for this generation): a storage limit added since does not refuse it."""
    status, generation = body.get("status") or {}, (body.get("metadata") or {}).get("generation")
    if status.get("acceptedGeneration") is not None:
        return status["acceptedGeneration"] == generation
    ready = get_condition(status.get("conditions"), "Ready")
    return bool(ready) and ready.get("status") == "True" and ready.get("observedGeneration") == generation


async def converge(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                   storages: kopf.Index, images: kopf.Index, hypervisors: kopf.Index,
                   snapshots_by_key: kopf.Index, namespaces: kopf.Index, logger: logging.Logger, retry: int = 0,
                   timer: bool = False) -> None:
    status = StatusUpdate(body, patch, timer=timer)
    image_uids, images_by_key = by_uid(images), by_key(images)
    creds: Credentials | None = None
    try:
        await settle(uid)
        parsed = parse_image(name, body.get("spec") or {})  # the raw dict: kopf's Spec view resolves every .get
        unresolved = None
        try:  # needed only to make the clone: an existing image does not need its snapshot any more
            parsed = resolve_snapshot(parsed, namespace, snapshots_by_key, images_by_key)
        except Waiting as exc:
            unresolved = exc
        storage, creds, info = await _storage_for(parsed, namespace, storages, namespaces)
        owner = ImageOwner(namespace, name, uid, await cluster_identity(namespaces), info.uid if info else None)
        created = str((body.get("metadata") or {}).get("creationTimestamp") or "")
        tenancy = _tenancy(storage, info, settled(body), _usage(parsed.storage, storage, images, namespace, uid,
                                                                 created))
        if parsed.source and parsed.source.url:
            outcome = await _converge_importing(creds, storage, parsed, owner, image_uids, tenancy, namespace, name,
                                                logger)
        else:
            outcome = await run_blocking(_converge_image, creds, storage, parsed, owner, image_uids.__contains__,
                                         tenancy, logger, unresolved, timeout=CEPH_TIMEOUT, reason="CephUnreachable")
    except OperatorError as exc:
        if creds and exc.reason in ("CephUnreachable", "AuthFailed"):
            ceph.forget(creds)
        return status.error(exc, retry)

    # One event per reconcile that changed an existing image; none on the happy path of a creation
    # (the status says it all, and an Event per image costs the API server as much as the image).
    imported = [a for a in outcome.done if a.kind == "import"]
    if imported:
        size = outcome.image.size
        status.set(**{"import": {"bytes": size, "totalBytes": size, "percent": 100, "phase": "done"}})
        kopf.event(body, type="Normal", reason="Imported", message=f"{storage.pool.name}/{parsed.name} imported from "
                   f"{imported[0].args['url'][:200]} ({size} bytes)")
    visible = [a for a in outcome.done if a.kind in ACTION_REASONS]
    if visible and not all(a.kind in CREATION for a in visible):
        kopf.event(body, type="Normal", reason=ACTION_REASONS[visible[0].kind],
                   message="; ".join(a.describe() for a in visible))
    _report_image(status, outcome.image, hypervisors)
    status.set(pool=storage.pool.name, acceptedGeneration=(body.get("metadata") or {}).get("generation"))
    if outcome.beyond:
        status.condition("WithinLimits", False, "LimitExceeded", "; ".join(outcome.beyond) + " (kept as it is: "
                         "only changes beyond the storage's spec.imageLimits are refused)")
    elif get_condition(status.conditions, "WithinLimits"):
        status.condition("WithinLimits", True, "Within", "within the storage's spec.imageLimits")
    status.condition("Ready", True, "Converged", f"{storage.pool.name}/{parsed.name} matches the spec",
                     event=not visible)
    status.flush()


# No resume handler and no timer per image: each storage's sweep re-verifies its images (after a
# restart too), so that thousands of idle images cost one pool listing per interval, not a reconcile each.
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@reported()
async def reconcile(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                    retry: int, storages: kopf.Index, images: kopf.Index, hypervisors: kopf.Index,
                    snapshots_by_key: kopf.Index, namespaces: kopf.Index, logger: logging.Logger, **_: Any) -> None:
    async with object_lock(uid):
        await converge(name, namespace, body, spec, patch, uid, storages, images, hypervisors,
                       snapshots_by_key, namespaces, logger, retry)


@ceph.with_session
def _delete_image(cluster: ceph.CephCluster, pool: str, spec: ImageSpec, owner: ImageOwner,
                  delay: int) -> ObservedImage | None:
    """Move the image to the trash (for `delay` seconds) if it is ours and not in use; return it when in use."""
    observed = cluster.observe_image(pool, spec.name)
    if observed is None:
        # a creation cut short by a crash
        cluster.remove_staged_image(pool, staging_name(owner.legacy), owner, spec.name)
        return None
    if not owner.owns(observed.owner):
        return None  # never ours (not adopted, refused, or another object's): left as it is
    if observed.watchers:
        return observed
    check_cancelled(f"trashing {pool}/{spec.name}")
    cluster.trash_image(pool, spec.name, delay, owner)
    return None


@kopf.on.delete(GROUP, VERSION, PLURAL)
@reported()
async def delete(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, uid: str,
                 retry: int, storages: kopf.Index, hypervisors: kopf.Index, namespaces: kopf.Index,
                 logger: logging.Logger, **_: Any) -> None:
    try:
        parsed = parse_image(name, body.get("spec") or {})
    except SpecError:
        release_lock(uid)
        return  # an invalid spec never reached Ceph
    if parsed.deletion_policy == "Retain":
        release_lock(uid)
        return
    status = StatusUpdate(body, patch)
    try:
        # A storage that is being deleted waits for its images: they must still go.
        storage, creds, info = await _storage_for(parsed, namespace, storages, namespaces, tenancy=False,
                                                  deleting_ok=True)
        owner = ImageOwner(namespace, name, uid, await cluster_identity(namespaces), info.uid if info else None)
    except Waiting:
        logger.warning("RbdStorage %s is gone: leaving image %s in Ceph", parsed.storage, parsed.name)
        release_lock(uid)
        return
    except OperatorError as exc:
        return status.error(exc, retry)
    async with object_lock(uid):
        try:
            await settle(uid)
            delay = trash_delay(parsed.trash_retention_seconds, storage.image_limits)
            in_use = await run_blocking(_delete_image, creds, storage.pool.name, parsed, owner, delay,
                                        timeout=CEPH_TIMEOUT, reason="CephUnreachable")
        except OperatorError as exc:
            return status.error(exc, retry)
    if in_use:
        users = used_by(in_use.watchers, node_addresses(hypervisors))
        status.set(watchers=in_use.watchers, usedBy=users)
        return status.fail("InUse", f"{storage.pool.name}/{parsed.name} is in use by {describe_users(users)}; "
                           "not deleting", min(30.0, backoff(retry)))
    message = f"{storage.pool.name}/{parsed.name} moved to the RBD trash, restorable for {delay}s"
    logger.info("librbd: %s", message)
    kopf.event(body, type="Normal", reason="Trashed", message=message)
    release_lock(uid)
