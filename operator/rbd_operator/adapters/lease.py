"""A coordination.k8s.io Lease as a lock shared by every replica of the operator.

"One host at a time" for disruptive package changes must hold across replicas and across a
handover (a replica killed mid-`apt` leaves its Lease to expire before anyone else starts). The
Lease names its holder `<replica identity>/<what>`; it is taken with the resourceVersion of what
was read (a concurrent taker gets 409 and loses), renewed while the work runs, and cleared at the end.
Anything unexpected (API errors, an unreadable Lease) counts as "not acquired": fail closed.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
from dataclasses import dataclass

import kubernetes
from kubernetes.client.rest import ApiException

from . import kube

IDENTITY = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
DISRUPTION_LEASE = "rbd-operator-disruption"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Held:
    holder: str
    expires_in: float


class LeaseLock:
    def __init__(self, name: str, purpose: str, *, duration: int = 60, namespace: str | None = None,
                 identity: str = IDENTITY) -> None:
        self.name = name
        self.namespace = namespace or kube.operator_namespace()
        self.duration = duration
        self.holder = f"{identity}/{purpose}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _api(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(kube.core().api_client)

    def _body(self, resource_version: str | None, holder: str, acquire: datetime.datetime | None) -> dict:
        now = _now()
        meta: dict = {"name": self.name, "namespace": self.namespace,
                      "labels": {"app.kubernetes.io/managed-by": "rbd-operator"}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        spec = {"holderIdentity": holder, "leaseDurationSeconds": self.duration, "renewTime": _stamp(now),
                "acquireTime": _stamp(acquire or now)}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def try_acquire(self) -> Held | None:
        """Take the Lease. None when taken; otherwise who holds it (or why it cannot be known)."""
        api = self._api()
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return Held(f"unknown (the Lease could not be read: HTTP {exc.status})", float(self.duration))
            try:
                api.create_namespaced_lease(self.namespace, self._body(None, self.holder, None))
            except ApiException as exc2:
                return Held(f"unknown (HTTP {exc2.status} creating the Lease)", float(self.duration))
            self._start_renewing()
            return None
        spec = lease.spec
        holder = spec.holder_identity or ""
        renewed = spec.renew_time or spec.acquire_time
        duration = spec.lease_duration_seconds or self.duration
        left = duration - (_now() - renewed).total_seconds() if renewed else 0.0
        if holder and holder != self.holder and left > 0:
            return Held(holder, left)
        try:
            api.replace_namespaced_lease(self.name, self.namespace,
                                         self._body(lease.metadata.resource_version, self.holder, None))
        except ApiException as exc:
            return Held(holder or f"unknown (HTTP {exc.status} taking the Lease)", float(duration))
        self._start_renewing()
        return None

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.duration / 3):
            try:
                api = self._api()
                lease = api.read_namespaced_lease(self.name, self.namespace)
                if lease.spec.holder_identity != self.holder:
                    return  # taken over after it expired: nothing of ours left to renew
                api.replace_namespaced_lease(self.name, self.namespace,
                                             self._body(lease.metadata.resource_version, self.holder,
                                                        lease.spec.acquire_time))
            except Exception:  # noqa: BLE001 - retried at the next interval; the Lease stays ours until it expires
                continue

    def release(self) -> None:
        """Clear the holder if it is still us (409/404/any error: it expires by itself)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            api = self._api()
            lease = api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.holder:
                body = self._body(lease.metadata.resource_version, "", lease.spec.acquire_time)
                body["spec"].pop("holderIdentity")
                api.replace_namespaced_lease(self.name, self.namespace, body)
        except Exception:  # noqa: BLE001 - best effort: an unreleased Lease expires by itself
            pass
