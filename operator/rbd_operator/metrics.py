"""Prometheus metrics (`/metrics`, `--metrics` address): reconciles, errors and durations per kind and
reason; Ceph and SSH call latency; pool capacity and host rollout per storage; whether this replica is
the one that works (`rbd_operator_active`, adapters/replica.py); the objects it holds, by kind
(`rbd_operator_objects`) and the memory they need by the measured formula (handlers/memory.py).

Label values are bounded: kinds, registered reasons (api/reasons.py; anything else becomes `other`),
adapter function names, storage names. Secrets never become labels.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .api.reasons import REASONS
from .api.reasons import ConditionType

_ALL_REASONS = frozenset(r.name for r in REASONS)

RECONCILES = Counter("rbd_operator_reconciles_total", "Handler runs, by kind and the Ready reason they ended with",
                     ["kind", "reason"])
ERRORS = Counter("rbd_operator_reconcile_errors_total", "Handler runs that ended Ready=False or with an error",
                 ["kind", "reason"])
DURATION = Histogram("rbd_operator_reconcile_duration_seconds", "Handler run time", ["kind"],
                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CEPH_CALLS = Histogram("rbd_operator_ceph_call_seconds", "Ceph (librados/librbd) calls", ["call"], buckets=CALL_BUCKETS)
SSH_CALLS = Histogram("rbd_operator_ssh_call_seconds", "Calls to hypervisors over SSH/libvirt", ["call"],
                      buckets=CALL_BUCKETS)
CALL_TIMEOUTS = Counter("rbd_operator_call_timeouts_total", "Blocking calls given up on", ["pool", "call"])
POOL_STORED = Gauge("rbd_operator_pool_stored_bytes", "Bytes stored in the storage's pool", ["storage"])
POOL_AVAIL = Gauge("rbd_operator_pool_max_avail_bytes", "Bytes the pool can still take", ["storage"])
POOL_QUOTA = Gauge("rbd_operator_pool_quota_bytes", "Pool quota in bytes (0: none)", ["storage"])
HOSTS_SELECTED = Gauge("rbd_operator_storage_hosts_selected", "Hypervisors the storage selects", ["storage"])
HOSTS_CURRENT = Gauge("rbd_operator_storage_hosts_current", "Selected hypervisors holding the current key",
                      ["storage"])

FASTPATH_DISABLED = Gauge("rbd_operator_fastpath_disabled", "1 where librbd's object layout differs from what the "
                          "operator's fast path expects (librbd's own calls are used there)", ["fsid"])
ACTIVE = Gauge("rbd_operator_active", "1 on the replica that handles objects, 0 on a standby (kopf peering)")
OBJECTS = Gauge("rbd_operator_objects", "Objects the operator holds in memory (its indexes), by kind", ["kind"])
MEMORY_EXPECTED = Gauge("rbd_operator_memory_expected_bytes", "Memory the held objects need by the measured formula "
                        "(reconcile/memory.py; compare with process_resident_memory_bytes)")
MEMORY_LIMIT = Gauge("rbd_operator_memory_limit_bytes", "The memory limit the operator was given "
                     "(RBD_OPERATOR_MEMORY_LIMIT; 0: none)")

_HISTOGRAMS = {"ceph": CEPH_CALLS, "ssh": SSH_CALLS}


def reason_label(reason: str | None) -> str:
    if not reason:
        return "none"
    return reason if reason in _ALL_REASONS else "other"


def _ready(conditions: Any) -> tuple[str | None, str | None]:
    for cond in conditions or []:
        if isinstance(cond, Mapping) and cond.get("type") == ConditionType.READY:
            return cond.get("status"), cond.get("reason")
    return None, None


def handler_done(kind: str, body: Mapping[str, Any], patch: Any, seconds: float, failed: bool) -> None:
    """Record one handler run: the Ready reason it wrote (or the object still has)."""
    status = getattr(patch, "status", None) or {}
    state, reason = _ready(status.get("conditions") if isinstance(status, Mapping) else None)
    if state is None:
        state, reason = _ready((body.get("status") or {}).get("conditions"))
    label = reason_label(reason)
    RECONCILES.labels(kind, label).inc()
    if failed or state == "False":
        ERRORS.labels(kind, label).inc()
    DURATION.labels(kind).observe(seconds)


def call_done(pool: str, call: str, seconds: float, timed_out: bool = False) -> None:
    hist = _HISTOGRAMS.get(pool)
    if hist is not None:
        hist.labels(call).observe(seconds)
    if timed_out:
        CALL_TIMEOUTS.labels(pool, call).inc()


def storage_figures(name: str, capacity: Mapping[str, Any] | None, hosts: Mapping[str, Any] | None) -> None:
    if capacity:
        POOL_STORED.labels(name).set(float(capacity.get("storedBytes") or 0))
        POOL_AVAIL.labels(name).set(float(capacity.get("maxAvailBytes") or 0))
        POOL_QUOTA.labels(name).set(float(capacity.get("quotaMaxBytes") or 0))
    if hosts:
        HOSTS_SELECTED.labels(name).set(float(hosts.get("selected") or 0))
        HOSTS_CURRENT.labels(name).set(float(hosts.get("current") or 0))


def fast_path(fsid: str, disabled: bool) -> None:
    FASTPATH_DISABLED.labels(fsid=fsid).set(1 if disabled else 0)


def objects_held(counts: Mapping[str, int], expected_bytes: float, limit_bytes: int | None) -> None:
    for kind, count in counts.items():
        OBJECTS.labels(kind).set(count)
    MEMORY_EXPECTED.set(expected_bytes)
    MEMORY_LIMIT.set(limit_bytes or 0)


def storage_gone(name: str) -> None:
    for gauge in (POOL_STORED, POOL_AVAIL, POOL_QUOTA, HOSTS_SELECTED, HOSTS_CURRENT):
        try:
            gauge.remove(name)
        except KeyError:
            pass


def serve(address: str) -> None:
    """Start the /metrics endpoint on host:port (a daemon thread)."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")


class Timer:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start
