"""RbdImage: find the storage (tenancy) -> observe the image -> plan -> librbd steps -> what status says.

Also the drift sweep of a storage's images (one pool listing and one header read per image per
interval, instead of a timer and an image open per image) and deletion to the RBD trash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import ceph, importer, kube, libvirt_conn
from ..adapters.blocking import Pool, check_cancelled, run_blocking
from ..adapters.ceph import CephError, Credentials
from ..adapters.namespaces import NamespaceInfo, cluster_identity, namespace_info
from ..adapters.shard import SHARD
from ..api.errors import OperatorError, Refused, SpecError, Waiting
from ..api.image import ImageSpec, bits_to_features, parse_image
from ..api.reasons import ConditionType, EventReason, Reason
from ..api.storage import StorageSpec, parse_storage
from ..api.urls import redact
from ..reconcile.actions import ImportImage, Resize, RevertImage, Step
from ..reconcile.image_plan import (ObservedImage, RevertRequest, Tenancy, describe_users, plan_image, sweep_verdict,
                                    used_by)
from ..reconcile.limits import Usage, UsageEntry, namespace_usage, trash_delay
from ..reconcile.ownership import ImageOwner, staging_name
from ..reconcile.selector import matches_namespaces
from ..reconcile.shard import missing_storage
from ..reconcile import domains, tracking
from ..reconcile.used import UsedCache, after_steps as used_after
from ..reconcile.verdicts import VerdictMemo
from ..reconcile.watchers import DEFAULT_PER_SWEEP, WatcherRota
from .credentials import admin_credentials
from .outcome import Note, Outcome
from .propagation import DomainWatch
from . import used as used_space

PLURAL = "rbdimages"
CEPH_TIMEOUT = 60.0
WATCHERS_PER_SWEEP = int(os.environ.get("RBD_OPERATOR_WATCHERS_PER_SWEEP", str(DEFAULT_PER_SWEEP)))
IMPORT_TIMEOUT = 6 * 3600.0
IMPORT_REPORT_SECONDS = 1.0  # one status patch a second at most while an import runs


@dataclass(frozen=True)
class Indexes:
    """The operator's indexes an image needs (kopf's, read on the event loop)."""
    storages: Mapping[Any, Any]
    images: Mapping[Any, Any]
    hypervisors: Mapping[Any, Any]
    snapshots: Mapping[Any, Any]
    namespaces: Mapping[Any, Any]


@dataclass(frozen=True)
class Target:
    """The image's storage, its admin credentials and the image's namespace."""
    storage: StorageSpec
    creds: Credentials
    namespace: NamespaceInfo | None


async def storage_for(spec: ImageSpec, namespace: str | None, idx: Indexes, *, admit: bool = True,
                      deleting_ok: bool = False) -> Target:
    """The image's storage (a storage being deleted only when `deleting_ok`); with `admit`, the storage must
    admit the image's namespace (its spec.imageNamespaces)."""
    entries = list(idx.storages.get(spec.storage, []))
    if not entries or (entries[0]["deleting"] and not deleting_ok):
        raise Waiting(Reason.STORAGE_NOT_FOUND, missing_storage(spec.storage, SHARD))
    entry = entries[0]
    try:
        storage = parse_storage(spec.storage, entry["spec"])
    except SpecError as exc:
        raise Waiting(Reason.STORAGE_NOT_READY, f"RbdStorage {spec.storage!r} is invalid: {exc.message}") from None
    info = await namespace_info(idx.namespaces, namespace) if namespace else None
    if admit and storage.image_namespaces is not None:
        if info is None or not matches_namespaces(storage.image_namespaces, info.labels):
            raise Refused(Reason.NAMESPACE_NOT_ALLOWED, f"RbdStorage {spec.storage!r} does not admit RbdImages of "
                          f"namespace {namespace!r} (its spec.imageNamespaces). Nothing was changed")
    if (entry["status"] or {}).get("poolId") is None:
        raise Waiting(Reason.STORAGE_NOT_READY, f"RbdStorage {spec.storage!r} has not created its pool yet")
    return Target(storage, await admin_credentials(storage.monitors, storage.admin_secret), info)


# -- converging -------------------------------------------------------------------------------------
@dataclass
class Converged:
    image: ObservedImage
    done: list[Step]
    beyond: tuple[str, ...] = ()  # what the image keeps beyond its storage's limits (added after it was made)
    fast_path_off: str | None = None  # the fast path was turned off for this cluster in this pass: why
    used: int | None = None  # status.usedBytes when this pass knows it (made, imported, resized)
    revert_generation: int | None = None  # status.revert.generation to record (None: spec.revert absent)


@ceph.with_session
def in_ceph(cluster: ceph.CephCluster, storage: StorageSpec, spec: ImageSpec, owner: ImageOwner,
            live: Callable[[str], bool], tenancy: Tenancy, logger: logging.Logger,
            unresolved: OperatorError | None = None, progress: importer.Progress | None = None,
            revert: RevertRequest | None = None, imports: bool = True) -> Converged | None:
    """In a worker thread: observe, plan (everything refused before the first step), apply, report.
    With `imports` False, a plan that imports returns None before its first step (the caller then runs the
    pass again in the import pool): a pass over an image that exists never waits for an import slot."""
    pool = storage.pool.name
    probed = cluster.fast_path
    observed = cluster.observe_image(pool, spec.name)
    if observed is None and unresolved is not None:
        raise unresolved  # a clone to make from an RbdSnapshot that cannot be resolved (yet)
    if observed is not None and owner.owns(observed.owner):
        cluster.finish_rename(pool, staging_name(owner.legacy), observed.id)  # one read: ENOENT nearly always
    source, trashed = None, ()
    if observed is None and spec.source and spec.source.trash:
        trashed = cluster.trashed_images(pool, spec.name)
    elif observed is None and spec.source and not spec.source.url:
        source = cluster.observe_source(pool, spec.source.image, spec.source.snapshot)
    data_pool_exists = True
    if observed is None and spec.data_pool and spec.data_pool in storage.image_limits.data_pools:
        # Only a pool the storage allows is looked up (nothing tells a tenant which other pools exist).
        data_pool_exists = spec.data_pool in cluster.pools()
    steps = plan_image(spec, observed, owner, storage.pool.quota_max_bytes or 0, source, data_pool_exists, live,
                       storage.import_prefixes, tenancy, storage.import_stall_timeout, revert, trashed)
    if not imports and any(isinstance(s, ImportImage) for s in steps):
        return None
    if steps:
        logger.info("librbd, pool %s: %s", pool, "; ".join(s.describe() for s in steps))
    made = None
    for step in steps:
        check_cancelled(step.describe())
        made = cluster.apply_image_step(pool, step, progress) or made
    if steps:
        # A creation reports what it made; anything more than that is looked at again.
        only_made = made is not None and all(s.creation for s in steps)
        observed = made if only_made else cluster.observe_image(pool, spec.name)
    if observed is None:
        raise CephError(Reason.IMAGE_NOT_FOUND, f"image {pool}/{spec.name} vanished while being converged")
    turned_off = _turned_off(cluster, probed)
    known = used_after(steps, observed.features)
    figure = 0 if known == "zero" else cluster.used_bytes(pool, [spec.name]).get(spec.name) if known else None
    return Converged(observed, list(steps), steps.beyond, turned_off, figure, steps.revert_generation)


async def reconcile(name: str, namespace: str, uid: str, body: Mapping[str, Any], idx: Indexes,
                    logger: logging.Logger, watch: DomainWatch | None = None) -> Outcome:
    """One pass over an RbdImage; raises OperatorError (with its reason) when it cannot converge. With the
    hosts' domains (`watch`): status.usedBy as libvirt knows it, and the running guests' disks grown."""
    parsed = parse_image(name, body.get("spec") or {})
    unresolved = None
    try:  # needed only to make the clone: an existing image does not need its snapshot any more
        parsed = _resolve(parsed, namespace, idx)
    except Waiting as exc:
        unresolved = exc
    target = await storage_for(parsed, namespace, idx)
    storage = target.storage
    owner = ImageOwner(namespace, name, uid, await cluster_identity(idx.namespaces),
                       target.namespace.uid if target.namespace else None)
    created = str((body.get("metadata") or {}).get("creationTimestamp") or "")
    others = list(tracking.by_storage(idx.images).get(parsed.storage, []))
    tenancy = tracking.tenancy(storage, target.namespace.labels if target.namespace else None,
                               tracking.settled(body), tracking.usage(storage, others, namespace, uid, created))
    live = tracking.by_uid(idx.images).__contains__
    revert = _revert_request(parsed, name, namespace, body, idx)
    try:
        result = await run_blocking(in_ceph, target.creds, storage, parsed, owner, live, tenancy, logger,
                                    unresolved, None, revert, imports=False, timeout=CEPH_TIMEOUT,
                                    reason=Reason.CEPH_UNREACHABLE)
        if result is None:  # an import to make: in the import pool, its progress in status.import
            result = await _importing(target, parsed, owner, live, tenancy, namespace, name, logger, revert)
    except OperatorError as exc:
        if exc.reason in (Reason.CEPH_UNREACHABLE, Reason.AUTH_FAILED):
            ceph.forget(target.creds)
        raise
    nodes = tracking.node_addresses(idx.hypervisors)
    out = report(storage.pool.name, parsed, result, nodes, (body.get("metadata") or {}).get("generation"),
                 _has_condition(body, ConditionType.WITHIN_LIMITS), (body.get("status") or {}).get("import"))
    if watch is not None:
        await guests(out, f"{storage.pool.name}/{parsed.name}", result, nodes, watch, logger)
    return out


GUEST_RETRY_SECONDS = 15.0


async def guests(out: Outcome, key: str, result: Converged, nodes: dict[str, str], watch: DomainWatch,
                 logger: logging.Logger) -> None:
    """status.usedBy from Ceph's watchers and the hosts' running domains; every running guest whose disk
    is this image and smaller than it is grown (libvirt block resize). One that cannot be: Ready=False
    GuestResizePending, retried (the image itself is grown already)."""
    hosts, gone = watch.using(key)
    size = result.image.size
    users = domains.live_users(result.image.watchers, nodes, key, hosts, gone, time.monotonic())
    out.set(usedBy=users)
    if any(isinstance(s, Resize) and not s.shrink for s in result.done):
        for address in domains.unmanaged(users):
            out.note(EventReason.GUEST_RESIZE_BY_OWNER, f"{key} grew to {size} bytes; its user at {address} is not "
                     "a HypervisorNode: the guest there must be resized by its owner")
    pending = []
    for disk in domains.guest_disks(key, hosts):
        try:
            resized = await run_blocking(_grow_guest, watch.uid_of(disk.host), disk, size, timeout=30,
                                         reason=Reason.LIBVIRT_UNAVAILABLE, pool=Pool.SSH)
        except OperatorError as exc:
            pending.append(f"domain {disk.domain} on HypervisorNode {disk.host}: {exc.message}")
            continue
        if resized:
            logger.info("libvirt: domain %s on %s, disk %s (%s) resized to %d bytes", disk.domain, disk.host,
                        disk.dev, key, size)
            out.note(EventReason.GUEST_DISK_RESIZED, f"domain {disk.domain} on HypervisorNode {disk.host}: disk "
                     f"{disk.dev} ({key}) resized to {size} bytes while it runs")
    if pending:
        message = (f"{key} is {size} bytes but the disk of a running guest could not be resized (retried): "
                   + "; ".join(pending))
        out.conditions = [c for c in out.conditions if c.type != ConditionType.READY]
        out.cond(ConditionType.READY, False, Reason.GUEST_RESIZE_PENDING, message)
        out.retry, out.retry_in = message, GUEST_RETRY_SECONDS


def _grow_guest(uid: str | None, disk: domains.GuestDisk, size: int) -> bool:
    """In a worker thread: grow one guest's disk to `size` if it is smaller (True: it was resized)."""
    conn = libvirt_conn.connections.peek(uid) if uid else None
    if conn is None:
        raise OperatorError(Reason.LIBVIRT_UNAVAILABLE, f"no libvirt connection to HypervisorNode {disk.host}")
    capacity = libvirt_conn.wrap("reading the disk's size", libvirt_conn.disk_capacity, conn, disk.domain, disk.dev)
    if capacity is None or not domains.must_grow(int(capacity), size):  # None: the domain is gone from there
        return False
    libvirt_conn.wrap("block resize", libvirt_conn.resize_disk, conn, disk.domain, disk.dev, size)
    return True


def _resolve(spec: ImageSpec, namespace: str, idx: Indexes) -> ImageSpec:
    if spec.source is None or spec.source.rbd_snapshot is None:
        return spec
    snaps = list(idx.snapshots.get((namespace, spec.source.rbd_snapshot), []))
    images = list(tracking.by_key(idx.images).get((namespace, snaps[0].get("image")), []) or []) if snaps else []
    return tracking.resolve_snapshot(spec, namespace, snaps[0] if snaps else None, images)


def _revert_request(spec: ImageSpec, name: str, namespace: str, body: Mapping[str, Any],
                    idx: Indexes) -> RevertRequest | None:
    """spec.revert with its RbdSnapshot resolved (same namespace, of this RbdImage) and what status recorded."""
    if spec.revert is None:
        return None
    status = body.get("status") or {}
    recorded = (status.get("revert") or {}).get("generation")
    snaps = list(idx.snapshots.get((namespace, spec.revert.snapshot), []))
    snap, problem = None, None
    try:
        snap = tracking.resolve_revert(spec.revert.snapshot, name, namespace, snaps[0] if snaps else None)
    except OperatorError as exc:
        problem = exc
    return RevertRequest(spec.revert.generation, spec.revert.snapshot, snap, problem,
                         recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else None,
                         status.get("imageId"), tracking.node_addresses(idx.hypervisors))


def _has_condition(body: Mapping[str, Any], type_: ConditionType) -> bool:
    return any(c.get("type") == type_ for c in ((body.get("status") or {}).get("conditions") or []))


def fast_path_note(problem: str) -> Note:
    """The Warning for the pass that turned the fast path off (an image's pass, or a storage's sweep)."""
    return Note(EventReason.FAST_PATH_DISABLED, f"librbd's object layout on this Ceph cluster differs from what the "
                f"operator's fast path expects ({problem}): librbd's own calls are used on this cluster from now on "
                "(slower; drift detection included)", "Warning")


def report(pool: str, spec: ImageSpec, result: Converged, nodes: dict[str, str], generation: int | None,
           had_within: bool, recorded_import: Any = None) -> Outcome:
    """What status and events say after a pass: one event per reconcile that changed an existing image; none
    on the happy path of a creation (the status says it all, and an Event per image costs the API server as
    much as the image). `recorded_import`: status.import as the pass found it."""
    out = Outcome()
    image = result.image
    imported = [s for s in result.done if isinstance(s, ImportImage)]
    done = {"bytes": image.size, "totalBytes": image.size, "percent": 100, "phase": "done"}
    if imported:
        out.set(**{"import": done})
        out.note(EventReason.IMPORTED, f"{pool}/{spec.name} imported from {redact(imported[0].url)} ({image.size} bytes)")
    elif isinstance(recorded_import, Mapping) and recorded_import.get("phase") != "done" and spec.source \
            and spec.source.url:
        # An import of ours was under way and the image is in place now (an import renames into place
        # last): the pass that finished it ended before its report (a crash, an error after the import).
        out.set(**{"import": done})
    if result.fast_path_off:
        out.events.append(fast_path_note(result.fast_path_off))
    if result.done and not all(s.creation for s in result.done):
        out.note(result.done[0].reason, "; ".join(s.describe() for s in result.done))
    reverted = [s for s in result.done if isinstance(s, RevertImage)]
    if result.revert_generation is not None and spec.revert is not None:
        out.set(revert={"generation": result.revert_generation, **({"snapshot": spec.revert.snapshot,
                                                                    "at": _now()} if reverted else {})})
    out.set(sizeBytes=image.size, features=bits_to_features(image.features), imageId=image.id, parent=image.parent,
            watchers=image.watchers, qos=tracking.qos_status(image.qos), usedBy=used_by(image.watchers, nodes),
            pool=pool, acceptedGeneration=generation)
    if result.used is not None:
        out.set(usedBytes=result.used)
    if result.beyond:
        out.cond(ConditionType.WITHIN_LIMITS, False, Reason.LIMIT_EXCEEDED, "; ".join(result.beyond) + " (kept as it "
                 "is: only changes beyond the storage's spec.imageLimits are refused)")
    elif had_within:
        out.cond(ConditionType.WITHIN_LIMITS, True, Reason.WITHIN, "within the storage's spec.imageLimits")
    out.cond(ConditionType.READY, True, Reason.CONVERGED, f"{pool}/{spec.name} matches the spec",
             event=not result.done)
    return out


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _importing(target: Target, spec: ImageSpec, owner: ImageOwner, live: Callable[[str], bool],
                     tenancy: Tenancy, namespace: str, name: str, logger: logging.Logger,
                     revert: RevertRequest | None = None) -> Converged:
    """An image imported from a URL: the import runs in the bounded import pool (it may take long); its
    progress is reported into status.import every few seconds while it runs."""
    progress = importer.Progress(phase="queued")
    task = asyncio.ensure_future(run_blocking(in_ceph, target.creds, target.storage, spec, owner, live, tenancy,
                                              logger, None, progress, revert, timeout=IMPORT_TIMEOUT,
                                              reason=Reason.TIMEOUT,
                                              pool=Pool.IMPORT))
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
                                   timeout=30, pool=Pool.KUBE)
            except (ApiException, OperatorError) as exc:  # progress is informative: keep importing
                logger.debug("could not report import progress: %s", exc)


# -- deletion ----------------------------------------------------------------------------------------
@dataclass
class Deletion:
    """What a deletion did: moved to the trash (or nothing was ours), or waits for the image's users."""
    message: str = ""
    in_use: Outcome | None = None  # status fields while it waits
    waiting: str = ""


@ceph.with_session
def trash_in_ceph(cluster: ceph.CephCluster, pool: str, spec: ImageSpec, owner: ImageOwner,
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


async def delete(spec: ImageSpec, name: str, namespace: str, uid: str, idx: Indexes) -> Deletion:
    """Move the image to the trash. A storage that is being deleted waits for its images: they must still go.
    Raises Waiting(StorageNotFound) when the storage is gone (the image is left in Ceph)."""
    target = await storage_for(spec, namespace, idx, admit=False, deleting_ok=True)
    owner = ImageOwner(namespace, name, uid, await cluster_identity(idx.namespaces),
                       target.namespace.uid if target.namespace else None)
    pool = target.storage.pool.name
    delay = trash_delay(spec.trash_retention_seconds, target.storage.image_limits)
    in_use = await run_blocking(trash_in_ceph, target.creds, pool, spec, owner, delay, timeout=CEPH_TIMEOUT,
                                reason=Reason.CEPH_UNREACHABLE)
    if in_use:
        users = used_by(in_use.watchers, tracking.node_addresses(idx.hypervisors))
        status = Outcome()
        status.set(watchers=in_use.watchers, usedBy=users)
        return Deletion(in_use=status, waiting=f"{pool}/{spec.name} is in use by {describe_users(users)}; "
                        "not deleting")
    return Deletion(message=f"{pool}/{spec.name} moved to the RBD trash, restorable for {delay}s")


# -- the drift sweep -----------------------------------------------------------------------------------
@ceph.with_session
def _headers(cluster: ceph.CephCluster, pool: str, names: set[str]) -> tuple[dict[str, ObservedImage], str | None]:
    """The images' headers (one listing, their omap read in parallel; no image opened, no watchers), and what
    differed if the fast path was turned off in this very call (its probe runs at a cluster's first use)."""
    probed = cluster.fast_path
    headers = cluster.image_headers(pool, names)
    return headers, _turned_off(cluster, probed)


def _turned_off(cluster: ceph.CephCluster, probed: bool | None) -> str | None:
    """What differed, if the fast path was unknown before a call (`probed`: cluster.fast_path then) and the
    probe in that call turned it off; None otherwise."""
    return cluster.fast_path_problem if probed is None and cluster.fast_path is False else None


@ceph.with_session
def _watchers(cluster: ceph.CephCluster, pool: str, ids: dict[str, str]) -> dict[str, list[str]]:
    """The watchers of the images the rota picked (`ids`: name -> image id; each one opened read-only)."""
    return cluster.image_watchers(pool, ids)


async def _listed_watchers(storage_name: str, pool: str, creds: Credentials, headers: dict[str, ObservedImage],
                           rota: WatcherRota) -> dict[str, list[str]]:
    """Watchers of at most WATCHERS_PER_SWEEP images of this storage, least recently listed first
    (reconcile/watchers.py): status.watchers and usedBy of an image nobody reconciles are at most
    ceil(images / WATCHERS_PER_SWEEP) intervals late (VMs on HypervisorNodes: seconds, by libvirt's events)."""
    ids = {n: h.id for n, h in headers.items() if h.id}
    rota.keep_only(storage_name, ids.values())
    picked = rota.pick(storage_name, ids, WATCHERS_PER_SWEEP)
    if not picked:
        return {}
    listed = await run_blocking(_watchers, creds, pool, picked, timeout=CEPH_TIMEOUT, reason=Reason.CEPH_UNREACHABLE)
    rota.record(storage_name, picked.values())
    return listed


@dataclass
class _Namespaces:
    """What the sweep reads of each namespace once."""
    index: Mapping[Any, Any]
    infos: dict[str, NamespaceInfo | None] = field(default_factory=dict)

    async def get(self, name: str) -> NamespaceInfo | None:
        if name not in self.infos:
            self.infos[name] = await namespace_info(self.index, name)
        return self.infos[name]


@dataclass
class SweepMemory:
    """What this process remembers between the drift sweeps of its storages (one, the Runtime's): the used space
    it measured (reconcile/used.py), whose watchers it listed when (reconcile/watchers.py), and the verdicts that
    found nothing to do with the inputs they were made from (reconcile/verdicts.py)."""
    used: UsedCache = field(default_factory=UsedCache)
    watchers: WatcherRota = field(default_factory=WatcherRota)
    verdicts: VerdictMemo = field(default_factory=VerdictMemo)


async def sweep(storage_name: str, storage: StorageSpec, creds: Credentials, idx: Indexes,
                busy: Callable[[str], bool], memory: SweepMemory, logger: logging.Logger) -> Note | None:
    """Drift detection for all images of one storage. Images whose status no longer tells the truth are poked
    (an annotation: kopf then reconciles them); nothing else is written. Returns the Warning to post on the
    storage when this sweep turned the fast path off (the first use of a cluster is often a sweep's).
    `memory`: what this process keeps between sweeps (the Runtime's)."""
    everyone = list(tracking.by_storage(idx.images).get(storage_name, []))
    identity = await cluster_identity(idx.namespaces)
    verdicts = memory.verdicts.sweep(storage_name, (storage, identity))
    tracked: list[tuple[tracking.Tracked, str, ImageSpec | None]] = []  # (entry, name in Ceph, spec if parsed)
    for t in everyone:
        if t.deleting:
            continue
        name, spec = verdicts.name_of(t), None
        if name is None:
            try:
                spec = parse_image(t.name, t.spec)
            except SpecError:
                continue  # never reached Ceph; its condition says so
            name = spec.name
        tracked.append((t, name, spec))
    if not tracked:
        memory.verdicts.forget(storage_name)
        return None
    headers, fast_path_off = await run_blocking(_headers, creds, storage.pool.name, {name for _, name, _ in tracked},
                                                timeout=CEPH_TIMEOUT, reason=Reason.CEPH_UNREACHABLE)
    listed = await _listed_watchers(storage_name, storage.pool.name, creds, headers, memory.watchers)
    spaces = _Namespaces(idx.namespaces)
    live, poked = tracking.by_uid(idx.images).__contains__, 0
    entries: dict[str, list[UsageEntry]] = {}  # per namespace, made once (perNamespace limits only)
    if tracking.limited_per_namespace(storage):
        for t in everyone:
            if not t.deleting:
                entries.setdefault(t.namespace, []).append(t.usage_entry())
    for t, name, spec in tracked:
        info = await spaces.get(t.namespace)
        usage = namespace_usage(entries.get(t.namespace, []), t.uid, t.created) if entries else None
        header = headers.get(name)
        watchers = listed.get(name)
        if busy(t.uid):
            continue
        context = (info, usage)
        if verdicts.quiet(t, header, context):
            drifted = False
        else:
            spec = spec or parse_image(t.name, t.spec)
            owner = ImageOwner(t.namespace, t.name, t.uid, identity, info.uid if info else None)
            drifted = _verdict(storage, t, spec, header, info, owner, usage, live)
            if not drifted and header is not None and header.owner == owner.record:
                verdicts.remember(t, name, header, context)  # decided without a liveness lookup
        if not (drifted or (watchers is not None and tracking.watchers_changed(t, replace(header, watchers=watchers)))):
            continue
        logger.info("drift: RbdImage %s/%s (%s) no longer matches; reconciling it", t.namespace, t.name,
                    t.ready[1] if t.ready else "no status")
        await run_blocking(kube.poke, GROUP, VERSION, PLURAL, t.namespace, t.name, timeout=30, pool=Pool.KUBE)
        poked += 1
    verdicts.done()
    logger.info("swept %d image(s) of %s: %d found changed", len(tracked), storage_name, poked)
    await used_space.refresh(storage_name, storage.pool.name, creds, [(t, name) for t, name, _ in tracked], headers,
                             busy, memory.used, logger)
    return fast_path_note(fast_path_off) if fast_path_off else None


def _verdict(storage: StorageSpec, t: tracking.Tracked, spec: ImageSpec, header: ObservedImage | None,
             info: NamespaceInfo | None, owner: ImageOwner, usage: Usage | None, live: Callable[[str], bool]) -> bool:
    allowed = storage.image_namespaces is None or (
        info is not None and matches_namespaces(storage.image_namespaces, info.labels))
    tenancy = tracking.tenancy(storage, info.labels if info else None, t.settled, usage)
    return sweep_verdict(spec, header, owner, t.ready, storage.pool.quota_max_bytes or 0, live, allowed, tenancy,
                         t.within)
