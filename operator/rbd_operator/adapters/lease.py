"""A coordination.k8s.io Lease as a lock shared by every replica of the operator, fenced.

"One host at a time" for disruptive package changes must hold across replicas and across a
handover (a replica killed, frozen or cut off from the API server mid-`apt`). The Lease names its
holder `<replica identity>/<host address>`; it is taken with the resourceVersion of what was read (a
concurrent taker gets 409 and loses), renewed while the work runs, and cleared at the end.
Anything unexpected (API errors, an unreadable Lease) counts as "not acquired": fail closed.

Fencing (reconcile/disruption.py decides, this module does the I/O):
- expiry is judged on the observer's own clock since it last saw the Lease record change, never on
  the renewTime another replica wrote (clock skew cannot shorten a Lease);
- the holder starts a disruptive step only while its last successful renewal, on its own monotonic
  clock, leaves a margin (`LeaseLock.check`): a holder that cannot renew (frozen, cut off) stops;
- the Lease's annotations name the host (HypervisorNode and address) whose package transaction may
  still be running; a new holder first verifies on that host that none runs (see
  handlers/hypervisor.py), and only then records its own host. A holder whose every command came
  back with an exit status clears them when it releases the Lease (nothing can still be running).
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import kubernetes
from kubernetes.client.rest import ApiException

from ..api.errors import OperatorError
from ..reconcile.disruption import LeaseObserver, LeaseRecord, Tenure
from . import kube
from .shard import SHARD
from ..reconcile.shard import lease_name
from ..api.reasons import Reason

IDENTITY = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
# One per shard (a host belongs to one shard): rbd-operator-disruption-<shard>, unsharded as it always was.
DISRUPTION_LEASE = lease_name("rbd-operator-disruption", SHARD)
# How long a disruption Lease lasts unrenewed (renewed every third of it).
LEASE_SECONDS = int(os.environ.get("RBD_OPERATOR_DISRUPTION_LEASE_SECONDS") or 60)
HOST_ANNOTATION = "rbd-operator.io/disruption-host"        # HypervisorNode whose transaction may still run
ADDRESS_ANNOTATION = "rbd-operator.io/disruption-address"  # the address it ran at


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _stamp(when: datetime.datetime | str) -> str:
    return when if isinstance(when, str) else when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Held:
    holder: str
    expires_in: float


class LeaseLost(OperatorError):
    """The holder can no longer be sure the Lease is its own: no new disruptive step starts."""


class LeaseLock:
    def __init__(self, name: str, purpose: str, *, duration: int = LEASE_SECONDS, namespace: str | None = None,
                 identity: str = IDENTITY, clock: Callable[[], float] = time.monotonic,
                 observer: LeaseObserver | None = None, margin: float | None = None) -> None:
        self.name = name
        self.namespace = namespace or kube.operator_namespace()
        self.duration = duration
        self.holder = f"{identity}/{purpose}"
        self.observer = observer or LeaseObserver(clock)
        self.tenure = Tenure(duration, clock, duration / 4 if margin is None else margin)
        # (HypervisorNode, address) the Lease named when it was taken: verify it before touching a host.
        self.pending: tuple[str, str] | None = None
        self._clock = clock
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _api(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(kube.core().api_client)

    def _body(self, resource_version: str | None, holder: str, acquire: datetime.datetime | None,
              annotations: dict[str, str] | None) -> dict:
        now = _now()
        meta: dict = {"name": self.name, "namespace": self.namespace,
                      "labels": {"app.kubernetes.io/managed-by": "rbd-operator"},
                      "annotations": dict(annotations or {})}
        if resource_version:
            meta["resourceVersion"] = resource_version
        spec = {"holderIdentity": holder, "leaseDurationSeconds": self.duration, "renewTime": _stamp(now),
                "acquireTime": _stamp(acquire or now)}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    @staticmethod
    def _record(lease: object) -> LeaseRecord:
        spec = lease.spec  # type: ignore[attr-defined]
        renewed = spec.renew_time or spec.acquire_time
        return LeaseRecord(spec.holder_identity or "", str(renewed or ""), lease.metadata.resource_version or "",
                           float(spec.lease_duration_seconds or LEASE_SECONDS))

    def try_acquire(self) -> Held | None:
        """Take the Lease. None when taken; otherwise who holds it (or why it cannot be known)."""
        api = self._api()
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return Held(f"unknown (the Lease could not be read: HTTP {exc.status})", float(self.duration))
            sent = self._clock()
            try:
                api.create_namespaced_lease(self.namespace, self._body(None, self.holder, None, None))
            except ApiException as exc2:
                return Held(f"unknown (HTTP {exc2.status} creating the Lease)", float(self.duration))
            self.pending = None
            self.tenure.renewed(sent)
            self._start_renewing()
            return None
        record = self._record(lease)
        left = self.observer.remaining(record)
        if record.holder and record.holder != self.holder and left > 0:
            return Held(record.holder, left)
        annotations = dict(lease.metadata.annotations or {})
        sent = self._clock()
        try:
            api.replace_namespaced_lease(self.name, self.namespace,
                                         self._body(lease.metadata.resource_version, self.holder, None, annotations))
        except ApiException as exc:
            return Held(record.holder or f"unknown (HTTP {exc.status} taking the Lease)", record.duration)
        host, address = annotations.get(HOST_ANNOTATION), annotations.get(ADDRESS_ANNOTATION)
        self.pending = (host, address or "") if host else None
        self.tenure.renewed(sent)
        self._start_renewing()
        return None

    def check(self, step: str) -> None:
        """Before a disruptive step: the Lease must be ours with margin, by this replica's own clock."""
        why = self.tenure.may_start()
        if why is not None:
            raise LeaseLost(Reason.DISRUPTION_LEASE_LOST, f"not {step}: Lease {self.name} may no longer be this "
                            f"replica's ({why}); nothing more is started until it is held again")

    def record_host(self, node: str, address: str) -> None:
        """Name this holder's host in the Lease (after the previous one was verified idle)."""
        self._update({HOST_ANNOTATION: node, ADDRESS_ANNOTATION: address}, "recording the host")

    def _update(self, annotations: dict[str, str | None], what: str) -> None:
        api = self._api()
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.holder:
                self.tenure.lose(f"{lease.spec.holder_identity or 'nobody'} holds it now")
            else:
                merged = {**(lease.metadata.annotations or {}), **annotations}
                body = self._body(lease.metadata.resource_version, self.holder, lease.spec.acquire_time,
                                  {k: v for k, v in merged.items() if v is not None})
                sent = self._clock()
                api.replace_namespaced_lease(self.name, self.namespace, body)
                self.tenure.renewed(sent)
        except ApiException as exc:
            self.tenure.lose(f"HTTP {exc.status} {what}")
        except Exception as exc:  # noqa: BLE001 - cannot know: not ours any more
            self.tenure.lose(f"{type(exc).__name__} {what}")
        self.check(what)

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.duration / 3):
            if not self.renew():
                return

    def renew(self) -> bool:
        """One renewal; False once the Lease is someone else's (nothing of ours left to renew)."""
        try:
            api = self._api()
            lease = api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.holder:
                self.tenure.lose(f"{lease.spec.holder_identity or 'nobody'} holds it now")
                return False
            sent = self._clock()
            api.replace_namespaced_lease(self.name, self.namespace,
                                         self._body(lease.metadata.resource_version, self.holder,
                                                    lease.spec.acquire_time, lease.metadata.annotations))
            self.tenure.renewed(sent)
        except Exception:  # noqa: BLE001 - retried at the next interval; the tenure's clock runs out meanwhile
            pass
        return True

    def release(self, clean: bool = False) -> None:
        """Clear the holder if it is still us (409/404/any error: it expires by itself). `clean`: every
        command of this holder ended, so the host it names needs no verification by the next one."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        self.tenure.lose("released")
        try:
            api = self._api()
            lease = api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.holder:
                annotations = dict(lease.metadata.annotations or {})
                if clean:
                    annotations.pop(HOST_ANNOTATION, None)
                    annotations.pop(ADDRESS_ANNOTATION, None)
                body = self._body(lease.metadata.resource_version, "", lease.spec.acquire_time, annotations)
                body["spec"].pop("holderIdentity")
                api.replace_namespaced_lease(self.name, self.namespace, body)
        except Exception:  # noqa: BLE001 - best effort: an unreleased Lease expires by itself
            pass


class DisruptionFence:
    """One disruptive host change at a time: within this process (a lock) and across replicas (the
    Lease). One per process, held by the handler module; it keeps the Lease's observer, so expiry is
    judged from the first time this process saw the record."""

    def __init__(self, name: str = DISRUPTION_LEASE, duration: int = LEASE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.duration, self._clock = name, duration, clock
        self.observer = LeaseObserver(clock)
        self._local = threading.Lock()

    def acquire(self, address: str) -> LeaseLock | Held:
        if not self._local.acquire(blocking=False):
            return Held("another host of this replica", float(self.duration))
        lock = LeaseLock(self.name, address, duration=self.duration, clock=self._clock, observer=self.observer)
        try:
            held = lock.try_acquire()
        except Exception as exc:  # noqa: BLE001 - the API did not answer: cannot know, so do not act
            held = Held(f"unknown ({type(exc).__name__} talking to the API server)", float(self.duration))
        if held is not None:
            self._local.release()
            return held
        return lock

    def release(self, lock: LeaseLock, clean: bool) -> None:
        try:
            lock.release(clean)
        finally:
            self._local.release()
