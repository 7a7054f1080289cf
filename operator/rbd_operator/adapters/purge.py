"""Removing trashed images for good, in the background, apart from the storage's reconcile.

librbd removes an image object by object: a 1 TiB image without object-map is 262,144 object
removals whatever was written (~24 s on the test cluster at librbd's default concurrency, minutes on
a busy one). Done inside the storage's reconcile, that blocked drift repair and key rotation and was
cut off by the reconcile's timeout. Here each purge runs in a small pool of its own (`purge` workers,
RBD_OPERATOR_PURGES, default 2), on a connection of its own whose librbd concurrency is bounded
(RBD_OPERATOR_PURGE_CONCURRENCY, default 2, librbd's rbd_concurrent_management_ops: a purge never
floods the cluster), with its progress readable at any time for the storage's status.purges.

Check-then-act: a job re-checks that the entry is still this operator's and expired before removing
it (trash_remove itself refuses an entry whose deferment has not ended). A job that fails is
forgotten: the storage's next reconcile lists the entry again. On shutdown, running purges are told to
stop (librbd aborts when the progress callback returns an error); what they removed stays removed
and the next start finishes them.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import rados
import rbd

from . import ceph

log = logging.getLogger(__name__)

WORKERS = max(1, int(os.environ.get("RBD_OPERATOR_PURGES", "2")))
CONCURRENCY = max(1, int(os.environ.get("RBD_OPERATOR_PURGE_CONCURRENCY", "2")))
MAX_TRACKED = 256  # jobs queued or running at once, over all storages (the rest waits for a later reconcile)


@dataclass
class Job:
    storage: str
    pool: str
    image_id: str
    name: str
    size: int
    percent: int = 0
    started: float = field(default_factory=time.monotonic)


class Purger:
    """The purges in progress, by storage. One per operator process: made at kopf's startup (handlers/storage.py,
    in kopf's memo), stopped at its cleanup."""

    def __init__(self, workers: int = WORKERS, concurrency: int = CONCURRENCY) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="purge-worker")
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], Job] = {}
        self._done: dict[str, list[str]] = {}
        self._stopping = threading.Event()

    def submit(self, storage: str, creds: ceph.Credentials, pool: str, entries: list[dict],
               cluster: str | None) -> int:
        """Start purging these expired entries of ours (those not already under way); returns how many started."""
        started = 0
        for entry in entries:
            key = (storage, entry["id"])
            with self._lock:
                if key in self._jobs or len(self._jobs) >= MAX_TRACKED or self._stopping.is_set():
                    continue
                job = self._jobs[key] = Job(storage, pool, entry["id"], entry.get("name") or "", entry.get("size") or 0)
            self._pool.submit(self._run, job, creds, cluster)
            started += 1
        return started

    def status(self, storage: str) -> list[dict]:
        """status.purges of a storage: [{imageId, percent}] of the purges under way."""
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if j.storage == storage), key=lambda j: j.image_id)
            return [{"imageId": j.image_id, "percent": j.percent} for j in jobs]

    def take_done(self, storage: str) -> list[str]:
        """Names of the images purged since the last call (for events)."""
        with self._lock:
            return self._done.pop(storage, [])

    def busy(self) -> bool:
        with self._lock:
            return bool(self._jobs)

    def stop(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _progress(self, job: Job):  # noqa: ANN202 - librbd's callback signature
        def update(offset: int, total: int) -> int:
            if total:
                job.percent = min(99, offset * 100 // total)
            return -errno.ECANCELED if self._stopping.is_set() else 0
        return update

    def _run(self, job: Job, creds: ceph.Credentials, cluster_id: str | None) -> None:
        key = (job.storage, job.image_id)
        cluster = ceph.CephCluster(creds, {"rbd_concurrent_management_ops": str(self._concurrency)})
        purged = False
        try:
            with cluster.ioctx(job.pool) as ioctx:
                if cluster.trashed_by_us(ioctx, job.image_id, cluster_id) is None:
                    return  # restored, or not ours after all: left as it is
                log.info("purging trashed image %s/%s (id %s, %d bytes) in the background", job.pool, job.name,
                         job.image_id, job.size)
                rbd.RBD().trash_remove(ioctx, job.image_id, on_progress=self._progress(job))
                purged = True
                log.info("purged %s/%s (id %s) in %.1fs", job.pool, job.name, job.image_id,
                         time.monotonic() - job.started)
        except rbd.ImageNotFound:
            purged = False  # gone meanwhile (another replica, a person)
        except (rbd.Error, rados.Error, ceph.CephError) as exc:
            log.warning("purging trashed image %s/%s (id %s) stopped: %s; the storage's next reconcile retries",
                        job.pool, job.name, job.image_id, getattr(exc, "message", type(exc).__name__))
        except Exception:  # noqa: BLE001 - a worker thread must not die silently
            log.exception("purging trashed image %s/%s failed", job.pool, job.name)
        finally:
            try:
                cluster.close()
            finally:
                with self._lock:
                    self._jobs.pop(key, None)
                    if purged:
                        self._done.setdefault(job.storage, []).append(job.name or job.image_id)

