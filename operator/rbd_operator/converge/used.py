"""status.usedBytes in the storage's drift sweep (reconcile/used.py decides which images to measure).

Per sweep while it catches up (after a start, after new images or writes), otherwise once per
RBD_OPERATOR_USED_IDLE_SECONDS (300): one stat of the object map of each converged fast-diff image
(parallel, no image opened), then
librbd's diff_iterate (whole objects, from the object map) for at most RBD_OPERATOR_USED_PER_SWEEP images
whose object map changed (or that were never measured by this process); a status write only where the
figure differs from status.usedBytes. Images without fast-diff (or with an invalid object map) are not
measured: diff_iterate would read every data object of the image.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable

from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import ceph, kube
from ..adapters.blocking import Pool, run_blocking
from ..adapters.ceph import Credentials
from ..api.errors import OperatorError
from ..api.reasons import Reason
from ..reconcile import used
from ..reconcile.image_plan import ObservedImage
from ..reconcile.tracking import Tracked

PLURAL = "rbdimages"
CEPH_TIMEOUT = 60.0
PER_SWEEP = int(os.environ.get("RBD_OPERATOR_USED_PER_SWEEP", "500"))
# Images measured per call into the Ceph pool: a measurement is ~4-7 ms (open, diff_iterate, close), so a call
# of 200 stays far inside CEPH_TIMEOUT whatever PER_SWEEP says (one call of 20,000 did not, every sweep: the
# catch-up never ended).
MEASURE_CHUNK = 200
IDLE_SECONDS = float(os.environ.get("RBD_OPERATOR_USED_IDLE_SECONDS", str(used.IDLE_SECONDS)))


@ceph.with_session
def _stamps(cluster: ceph.CephCluster, pool: str, ids: list[str]) -> dict[str, float]:
    return cluster.object_map_stamps(pool, ids)


@ceph.with_session
def _measure(cluster: ceph.CephCluster, pool: str, names: list[str]) -> dict[str, int]:
    return cluster.used_bytes(pool, names)


def subjects(tracked: Iterable[tuple[Tracked, str]],
             headers: dict[str, ObservedImage]) -> dict[str, tuple[Tracked, str]]:
    """Converged images with a valid fast-diff object map, by image id: (index entry, name in Ceph).
    `tracked`: (index entry, name in Ceph)."""
    out = {}
    for t, name in tracked:
        header = headers.get(name)
        if header and header.id and t.ready == ("True", Reason.CONVERGED) and used.measurable(header.features,
                                                                                               header.flags):
            out[header.id] = (t, name)
    return out


async def refresh(storage: str, pool: str, creds: Credentials, tracked: Iterable[tuple[Tracked, str]],
                  headers: dict[str, ObservedImage], busy: Callable[[str], bool], cache: used.UsedCache,
                  logger: logging.Logger) -> int:
    """Measure what changed, write what differs; returns the status writes. `cache`: what this process measured
    (the Runtime's, handlers/runtime.py)."""
    if not cache.look_due(storage, time.monotonic(), IDLE_SECONDS):
        return 0
    found = subjects(tracked, headers)
    cache.keep_only(storage, found)
    if not found:
        cache.looked(storage, time.monotonic(), False)
        return 0
    stamps = await run_blocking(_stamps, creds, pool, list(found), timeout=CEPH_TIMEOUT,
                                reason=Reason.CEPH_UNREACHABLE)
    due = used.pick(cache, storage, stamps, time.time(), PER_SWEEP)
    measured: dict[str, int] = {}
    for start in range(0, len(due), MEASURE_CHUNK):
        names = [found[i][1] for i in due[start:start + MEASURE_CHUNK]]
        measured.update(await run_blocking(_measure, creds, pool, names, timeout=CEPH_TIMEOUT,
                                           reason=Reason.CEPH_UNREACHABLE))
    writes = 0
    for image_id, stamp in stamps.items():
        t, name = found[image_id]
        figure = measured.get(name) if image_id in due else cache.known((storage, image_id), stamp)
        if figure is None or busy(t.uid):
            continue  # not measured (yet), or being reconciled: the next sweep
        if figure != t.used and not await _write(t, figure, logger):
            continue
        writes += figure != t.used
        cache.record((storage, image_id), stamp, figure)
    cache.looked(storage, time.monotonic(), bool(due))
    if due or writes:
        logger.info("used space of %s: %d image(s) measured, %d status update(s)", storage, len(due), writes)
    return writes


async def _write(t: Tracked, figure: int, logger: logging.Logger) -> bool:
    try:
        await run_blocking(kube.patch_status, GROUP, VERSION, PLURAL, t.namespace, t.name, {"usedBytes": figure},
                           timeout=30, pool=Pool.KUBE)
        return True
    except (ApiException, OperatorError) as exc:
        logger.debug("could not write usedBytes of %s/%s: %s", t.namespace, t.name, exc)
        return False
