"""Operator-wide kopf settings."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from kubernetes.client.rest import ApiException

from .. import GROUP, metrics
from ..adapters import kube
from ..adapters import replica
from ..api.urls import redact


class RedactedDiffBase(kopf.StatusDiffBaseStorage):
    """kopf's copy of the last handled spec (status.kopf.diffbase) without URL query strings: a presigned
    template URL's token stays in the spec only. Harmless for diffs: spec.source.url is immutable (CEL)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        source = (essence.get("spec") or {}).get("source")
        if isinstance(source, dict) and isinstance(source.get("url"), str):
            source["url"] = redact(source["url"], limit=2000)
        return essence


def persistence(settings: kopf.OperatorSettings) -> None:
    """kopf's own bookkeeping goes into status.kopf (declared in the CRDs): a reconcile then costs one
    status write instead of a status write plus an annotations write (and no kopf-managed marker).
    Objects handled by an older version (annotations) are handled once more after an upgrade."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = RedactedDiffBase(field="status.kopf.diffbase")
    settings.persistence.finalizer = f"{GROUP}/finalizer"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    persistence(settings)
    # Handlers post their own events (kopf.event); kopf's own events (handler failures) from WARNING up.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    # Ride out an API server restart or outage of several minutes: a request kopf gives up on (after
    # its default ~54 s) ends the timer of the object it was for (found by make faults: a host's resync
    # timer died with a status PATCH during an API server restart). ~8 min of retries instead.
    settings.networking.error_backoffs = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 60, 60, 60, 60, 60, 60, 60)
    settings.watching.server_timeout = 300
    # Memory at scale (docs/performance.md): the initial listing in pages of 500 instead of one response of
    # every object (at 22,000 objects one response is ~48 MB of JSON decoded at once, managedFields and all,
    # before kopf_fixes strips them object by object); 0 lists in one response. (No kopf worker_limit: workers
    # wait for every index to fill while holding their slot, so a limit below the object count deadlocks the
    # start, measured at 200 with 2,200 objects.)
    # How long an object's kopf worker (task, queue, its last event) outlives its last event: 1 s instead of
    # kopf's 5 s. At a start every listed object's worker lingers so long after its processing: restart peak at
    # 22,000 objects 698-713 MiB with 5 s, 591-598 MiB with 1 s (docs/performance.md). A later event of the
    # object starts a new worker; a worker that patched still waits for its own patch's event (kopf).
    settings.queueing.idle_timeout = float(os.environ.get("RBD_OPERATOR_WORKER_IDLE_SECONDS", "1") or 1)
    chunk = int(os.environ.get("RBD_OPERATOR_LIST_CHUNK", "500") or 0)
    settings.watching.chunk_size = chunk if chunk > 0 else None
    # Replicas (deploy/: replicas 2) elect the active one through kopf peering (ClusterKopfPeering
    # `rbd-operator`, `--peering`): the highest priority works, the others pause until its peering entry
    # is older than `lifetime` (a killed replica cannot clean it up): that bounds the takeover time.
    settings.peering.lifetime = int(os.environ.get("RBD_OPERATOR_PEERING_LIFETIME", "15"))
    if not settings.peering.standalone and settings.peering.name:
        try:
            if kube.ensure_cluster_peering(settings.peering.name):
                logging.getLogger(__name__).info("created ClusterKopfPeering %s", settings.peering.name)
        except ApiException as exc:  # kopf then pauses until it exists: fail closed, and say why
            logging.getLogger(__name__).warning("cannot create ClusterKopfPeering %s: HTTP %s",
                                                settings.peering.name, exc.status)
    metrics_address = os.environ.get("RBD_OPERATOR_METRICS", "")
    if metrics_address and metrics_address != "none":
        metrics.serve(metrics_address)
    # rbd_operator_active and the ActiveReplica Event (which replica works: adapters/replica.py)
    replica.start(settings.peering.name, settings.peering.standalone, settings.peering.priority)


@kopf.on.cleanup()
def stop_replica_monitor(**_: object) -> None:
    replica.stop()


# Connections to the API server kopf may hold at once (its default session has no limit: a burst of
# events opened one TLS connection per concurrent PATCH, ~170 for 500 new RbdImages, each handshake
# paid by both sides). Watch streams hold one each (about 7: four kinds, peering, CRD scanning), so
# the rest is what requests share; a request waits for a free connection instead of opening one.
API_CONNECTIONS = max(16, int(os.environ.get("RBD_OPERATOR_API_CONNECTIONS", "32")))


@kopf.on.login()
async def login(logger: logging.Logger, settings: kopf.OperatorSettings, **kwargs: object) -> kopf.AiohttpSession:
    """kopf's own login through the kubernetes client (in cluster, else $KUBECONFIG), in a session
    built like kopf's but with a bounded connection pool (API_CONNECTIONS)."""
    info = kopf.login_via_client(logger=logger, settings=settings, **kwargs)
    if info is None:
        raise kopf.LoginError("the kubernetes client library is not installed")
    import aiohttp

    session = aiohttp.ClientSession(  # credentials (token, basic auth) come in the headers
        connector=aiohttp.TCPConnector(limit=API_CONNECTIONS, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(), proxy=info.proxy_url, trust_env=info.trust_env)
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server,
                               default_namespace=info.default_namespace, priority=info.priority,
                               expiration=info.expiration)
