"""Kubernetes objects the operator reads or owns besides its own resources (Secrets)."""

from __future__ import annotations

import base64
import datetime
import os
import threading
import time
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from ..api.errors import Refused
from ..api.reasons import Reason

_lock = threading.Lock()
_core: kubernetes.client.CoreV1Api | None = None
_SECRET_CACHE_SECONDS = 15.0
_secret_cache: dict[tuple[str, str], tuple[float, dict[str, str] | None, str | None]] = {}


def operator_namespace() -> str:
    """Namespace for the Secrets the operator publishes (client keys)."""
    env = os.environ.get("RBD_OPERATOR_NAMESPACE")
    if env:
        return env
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
            return fh.read().strip()
    except OSError:
        return "rbd-operator"


def check_secret_namespace(namespace: str | None, name: str) -> str:
    """The namespace of a Secret reference, which must be the operator's own (Refused otherwise)."""
    own = operator_namespace()
    if namespace not in (None, "", own):
        raise Refused(Reason.SECRET_OUTSIDE_NAMESPACE, f"Secret {namespace}/{name} is outside the operator's namespace "
                      f"{own!r}; the operator reads Secrets only there. Nothing was read")
    return own


def core() -> kubernetes.client.CoreV1Api:
    global _core
    with _lock:
        if _core is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                # $KUBECONFIG as it is now (the library reads it once, at import).
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
            _core = kubernetes.client.CoreV1Api()
        return _core


def read_secret(namespace: str, name: str, *, fresh: bool = False) -> dict[str, str] | None:
    """Decoded data of a Secret, or None when it does not exist. Cached briefly."""
    return read_secret_versioned(namespace, name, fresh=fresh)[0]


def _fresh_cached(namespace: str, name: str) -> tuple[float, dict[str, str] | None, str | None] | None:
    """The cache entry (time, data, resourceVersion) of a Secret while it is fresh, else None."""
    cached = _secret_cache.get((namespace, name))
    return cached if cached and time.monotonic() - cached[0] < _SECRET_CACHE_SECONDS else None


def cached_secret(namespace: str, name: str) -> tuple[bool, dict[str, str] | None]:
    """(True, data) when read_secret would answer from its cache (no I/O: callable on the event loop)."""
    check_secret_namespace(namespace, name)
    cached = _fresh_cached(namespace, name)
    return (True, cached[1]) if cached else (False, None)


def read_secret_versioned(namespace: str, name: str, *, fresh: bool = False,
                          ) -> tuple[dict[str, str] | None, str | None]:
    """(decoded data, resourceVersion) of a Secret; (None, None) when it does not exist.

    Only Secrets of the operator's own namespace are read (its RBAC allows no other).
    """
    check_secret_namespace(namespace, name)
    key = (namespace, name)
    cached = None if fresh else _fresh_cached(namespace, name)
    if cached:
        return cached[1], cached[2]
    try:
        secret = core().read_namespaced_secret(name, namespace)
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        version = secret.metadata.resource_version
    except ApiException as exc:
        if exc.status != 404:
            raise
        data, version = None, None
    _secret_cache[key] = (time.monotonic(), data, version)
    return data, version


def read_namespace(name: str) -> tuple[str, dict[str, str]] | None:
    """A namespace's (uid, labels); None when it does not exist. (Handlers read namespaces from their
    index, handlers/namespaces.py; this is for one the index has not seen yet.)"""
    try:
        found = core().read_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None
    return str(found.metadata.uid), dict(found.metadata.labels or {})


POKE_ANNOTATION = "resync.rbd-operator.io/requested"


def poke(group: str, version: str, plural: str, namespace: str | None, name: str) -> None:
    """Have kopf reconcile an object now: a changed annotation is a change of its essence.

    (Its prefix differs from kopf's own storage prefix, whose annotations kopf ignores.)
    """
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    body = {"metadata": {"annotations": {POKE_ANNOTATION: str(time.time())}}}
    try:
        if namespace:
            api.patch_namespaced_custom_object(group, version, namespace, plural, name, body)
        else:
            api.patch_cluster_custom_object(group, version, plural, name, body)
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to reconcile
            raise


def patch_status(group: str, version: str, plural: str, namespace: str, name: str, status: dict) -> None:
    """A status merge patch outside a handler's own (progress of a long operation)."""
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    api.patch_namespaced_custom_object_status(group, version, namespace, plural, name, {"status": status})


def patch_cluster_status(group: str, version: str, plural: str, name: str, status: dict) -> None:
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    api.patch_cluster_custom_object_status(group, version, plural, name, {"status": status})


def forget_secret(namespace: str, name: str) -> None:
    _secret_cache.pop((namespace, name), None)


def claimable_secret(namespace: str, name: str, owner: dict[str, Any]) -> Any | None:
    """The Secret `owner` may write under that name: None when absent, the object when `owner`
    controls it. Any other Secret of that name is never written: Refused(SecretConflict).

    Called before anything else is done, so a conflict changes nothing anywhere.
    """
    try:
        current = core().read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None
    if not any(o.uid == owner["uid"] and o.controller for o in (current.metadata.owner_references or [])):
        raise Refused(Reason.SECRET_CONFLICT, f"Secret {namespace}/{name} exists and does not belong to "
                      f"{owner['kind']} {owner['name']}; it was not written (choose another spec.client.secretName "
                      "or delete that Secret). Nothing was changed")
    return current


def ensure_secret(namespace: str, name: str, data: dict[str, str], owner: dict[str, Any], labels: dict[str, str],
                  annotations: dict[str, str] | None = None) -> tuple[str, str]:
    """Create or correct a Secret owned (controller reference) by `owner`; return
    ('created'|'updated'|'unchanged', resourceVersion). Refused(SecretConflict) for anyone else's.
    """
    api = core()
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    annotations = annotations or {}
    current = claimable_secret(namespace, name, owner)
    if current is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations,
                         "ownerReferences": [owner]},
            "data": encoded,
        }
        created = api.create_namespaced_secret(namespace, body)
        return "created", created.metadata.resource_version
    have = current.metadata.annotations or {}
    if current.data == encoded and all(have.get(k) == v for k, v in annotations.items()):
        return "unchanged", current.metadata.resource_version
    patched = api.patch_namespaced_secret(name, namespace, {"metadata": {"labels": labels, "annotations": annotations},
                                                            "data": encoded})
    return "updated", patched.metadata.resource_version


def published_key(secret: Any, generation_annotation: str) -> tuple[str | None, int]:
    """(the key a client Secret holds, the rotateKeyGeneration recorded with it) of a Secret read by
    claimable_secret (None: no Secret yet)."""
    if secret is None:
        return None, 0
    raw = (secret.data or {}).get("userKey")
    key = base64.b64decode(raw).decode().strip() if raw else None
    try:
        generation = int((secret.metadata.annotations or {}).get(generation_annotation) or 0)
    except ValueError:
        generation = 0
    return key, max(generation, 0)


def ensure_cluster_peering(name: str) -> bool:
    """Create the ClusterKopfPeering the replicas share when it is missing. True when created."""
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        api.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def create_namespaced(group: str, version: str, plural: str, namespace: str, body: dict) -> bool:
    """Create a namespaced custom object; False when one of that name exists already (AlreadyExists)."""
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    try:
        api.create_namespaced_custom_object(group, version, namespace, plural, body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def delete_namespaced(group: str, version: str, plural: str, namespace: str, name: str) -> bool:
    """Delete a namespaced custom object; False when it is gone already."""
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    try:
        api.delete_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def drop_owner(group: str, version: str, plural: str, namespace: str, name: str, owner_uid: str) -> bool:
    """Remove the ownerReference to `owner_uid` from a namespaced custom object (Kubernetes' garbage collector
    then leaves it when its owner goes). False when the object is gone or had no such reference."""
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    try:
        current = api.get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    meta = current.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    kept = [r for r in refs if r.get("uid") != owner_uid]
    if len(kept) == len(refs):
        return False
    # With the resourceVersion read: a concurrent change fails (409, retried) instead of being lost.
    body = {"metadata": {"ownerReferences": kept, "resourceVersion": meta.get("resourceVersion")}}
    try:
        api.patch_namespaced_custom_object(group, version, namespace, plural, name, body)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def list_namespaced(group: str, version: str, plural: str, namespace: str, label_selector: str) -> list[dict]:
    """The custom objects of a namespace that a label selector picks (fresh from the API server)."""
    api = kubernetes.client.CustomObjectsApi(core().api_client)
    found = api.list_namespaced_custom_object(group, version, namespace, plural, label_selector=label_selector)
    return list(found.get("items") or [])


def pod_event(type_: str, reason: str, message: str) -> bool:
    """An Event on the operator's own Pod (POD_NAME, POD_ID from the downward API); False when the process runs
    out of cluster without them, or the API refused it (the caller logs the same message anyway)."""
    pod = os.environ.get("POD_NAME")
    if not pod:
        return False
    namespace = operator_namespace()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    involved = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": pod}
    if os.environ.get("POD_ID"):
        involved["uid"] = os.environ["POD_ID"]
    body = {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{pod}.{reason.lower()}.", "namespace": namespace},
            "involvedObject": involved, "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "rbd-operator"}, "reportingComponent": "rbd-operator",
            "reportingInstance": pod[:128], "firstTimestamp": now, "lastTimestamp": now, "count": 1}
    try:
        core().create_namespaced_event(namespace, body, _request_timeout=30)
    except Exception:  # noqa: BLE001 - urllib3's errors are not OSErrors; best effort
        return False
    return True
