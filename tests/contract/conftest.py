"""Contract tests: the real kopf machinery of rbd-operator against kmock's Kubernetes emulator.

No Ceph is involved: every scenario fails before the operator would open a librados connection.

Wiring:

* kmock's ``KubernetesEmulator`` (slightly extended below for API-server fidelity) serves HTTP on
  127.0.0.1:<random port>;
* a temporary kubeconfig (http + bearer token) points at it; both kopf's login (the default
  ``login_via_client`` handler, since ``kubernetes`` is installed) and ``rbd_operator.adapters.kube``
  (``kubernetes.config.load_kube_config()``) read it, so both API paths of the operator hit kmock;
* the operator runs through ``kopf.testing.KopfRunner`` (the ``kopf run`` CLI in a thread with its
  own event loop), exactly like ``rbd-operator`` runs it: cluster-wide, standalone, handlers from
  ``rbd_operator.handlers``.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import json
import logging
import os
import pathlib
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import jsonpatch
import jsonpointer
import kmock as kmock_lib
import kubernetes
import pytest
import yaml
from kmock._internal import dicts as kmock_dicts

# RESYNC_SECONDS is read when rbd_operator.handlers.common is imported: make the resync timers fire
# every second for these tests, without leaking the variable into other tests of the same session.
_previous_resync = os.environ.get("RBD_OPERATOR_RESYNC_SECONDS")
os.environ["RBD_OPERATOR_RESYNC_SECONDS"] = "1"
try:
    import kopf
    from kopf.testing import KopfRunner

    import rbd_operator.handlers  # noqa: F401 - registers the handlers in kopf's default registry
    from rbd_operator.adapters import kube
    from rbd_operator.handlers import common
finally:
    if _previous_resync is None:
        os.environ.pop("RBD_OPERATOR_RESYNC_SECONDS", None)
    else:
        os.environ["RBD_OPERATOR_RESYNC_SECONDS"] = _previous_resync

RESYNC_SECONDS = common.RESYNC_SECONDS
ROOT = pathlib.Path(__file__).resolve().parents[2]
GROUP, VERSION = "rbd-operator.io", "v1alpha1"
STORAGES = f"{GROUP}/{VERSION}/rbdstorages"
IMAGES = f"{GROUP}/{VERSION}/rbdimages"
STORAGES_URL = f"/apis/{GROUP}/{VERSION}/rbdstorages"
ANNOTATION_PREFIX = f"{GROUP}/"
TEST_CLIENT_AGENT = "kmock/"
OPERATOR_NAMESPACE = "ceph"  # the operator reads Secrets only in its own namespace  # requests made by the tests themselves through kmock's own client


def images_url(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/rbdimages"


def crds() -> list[dict]:
    """The operator's CustomResourceDefinitions, as installed from crds/."""
    docs = [yaml.safe_load(path.read_text()) for path in sorted((ROOT / "crds").glob("*.yaml"))]
    return [doc for doc in docs if doc and doc.get("kind") == "CustomResourceDefinition"]


def crd_schema(plural: str) -> dict:
    (crd,) = [crd for crd in crds() if crd["spec"]["names"]["plural"] == plural]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    return version["schema"]["openAPIV3Schema"]


# --------------------------------------------------------------------------------------------------
# The emulator.
# --------------------------------------------------------------------------------------------------

@attrs.define(kw_only=True)
class ApiServer(kmock_lib.KubernetesEmulator):
    """kmock's KubernetesEmulator with the API-server behaviour kopf relies on.

    kmock 0.8 stores objects exactly as posted and merges patches into them (whatever the URL).
    Kopf, like any controller, depends on a few more server-side semantics, which this subclass
    adds to the emulator's state handling (responses, reactions and recording stay kmock's):

    * ``metadata.generateName`` (kopf posts Events with ``generateName: kopf-event-``; kmock keys
      every such Event as name ``None`` and answers 409 to the second one);
    * ``uid``, ``creationTimestamp``, ``generation``, and a ``resourceVersion`` bumped on every
      write; ``generation`` bumped when the spec changes;
    * the status subresource: a PATCH of ``.../status`` changes only ``status``, a PATCH of the
      object itself ignores ``status``;
    * a failed JSON-patch ``test`` op (kopf's optimistic lock on resourceVersion) answers 422;
    * LIST returns the collection's resourceVersion, and a WATCH from it does not replay the objects
      already listed (kmock 0.8 replays every existing object as ADDED to every watch request).
    """

    _rv_counter: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _rv_last: int = attrs.field(default=0, init=False)
    _created: dict = attrs.field(factory=dict, init=False)

    # Namespaces: kmock 0.8 cannot parse the core `namespaces` collection (its path parser takes
    # /api/v1/namespaces/<name> for a namespace prefix), so they are served here, read-only: the
    # operator indexes namespaces (uids for owner records, kube-system's uid as the cluster identity).
    NAMESPACES = ("kube-system", "default", "vms", OPERATOR_NAMESPACE)

    @staticmethod
    def _namespace(name: str) -> dict:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.contract")),
                             "resourceVersion": "1", "labels": {"kubernetes.io/metadata.name": name}}}

    async def __call__(self, raw_request):
        import aiohttp.web  # noqa: PLC0415 - kmock serves through aiohttp

        parts = raw_request.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) > 4 or raw_request.method != "GET":
            return await super().__call__(raw_request)
        if len(parts) == 4:
            if parts[3] not in self.NAMESPACES:
                return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                  "reason": "NotFound", "code": 404}, status=404)
            return aiohttp.web.json_response(self._namespace(parts[3]))
        if raw_request.query.get("watch") in ("true", "1"):
            response = aiohttp.web.StreamResponse()
            await response.prepare(raw_request)
            while True:  # nothing ever changes; the client closes it
                await asyncio.sleep(3600)
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                          "metadata": {"resourceVersion": "1"},
                                          "items": [self._namespace(n) for n in self.NAMESPACES]})

    def _next_rv(self) -> str:
        self._rv_last = next(self._rv_counter)
        return str(self._rv_last)

    async def _handle(self, request: kmock_lib.Request):
        gc_key = None
        if request.resource is not None:
            async with self._lock:
                key = None
                if request.action == kmock_lib.action.CREATE and isinstance(request.data, dict):
                    key = await self._create(request)
                elif request.action == kmock_lib.action.UPDATE and request.name is not None:
                    key = await self._update(request)
                elif request.action == kmock_lib.action.DELETE and request.name is not None:
                    key = await self._delete(request)
                if key is not None and key in self.objects and not self.objects[key].deleted:
                    meta = self.objects[key].get("metadata", {})
                    if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                        gc_key = key
        try:
            # Past the emulator's own state handling: straight to the reactions (kmock's fallbacks).
            return await kmock_lib.KubernetesScaffold._handle(self, request)
        finally:
            if gc_key is not None:  # released from its finalizers: gone after the response
                async with self._lock:
                    raw = self.objects[gc_key].raw
                    self.objects[gc_key].delete()
                    await self._buses[request.resource].put({"type": "DELETED", "object": raw})

    async def _create(self, request: kmock_lib.Request):
        obj = copy.deepcopy(request.data)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        key = (request.resource, meta.get("namespace"), meta.get("name"))
        if key in self.objects and not self.objects[key].deleted:
            raise kmock_lib.KubernetesError(status=409, reason="AlreadyExists", message=f"{meta.get('name')} exists")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self.objects[key] = obj
        self._created[request.id] = key
        await self._buses[request.resource].put({"type": "ADDED", "object": self.objects[key].raw})
        return key

    async def _update(self, request: kmock_lib.Request):
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock_lib.KubernetesObjectNotFoundError()
        current = copy.deepcopy(self.objects[key].raw)
        on_status = request.subresource == "status"
        patch = request.data
        if isinstance(patch, list):  # JSON patch
            ops = [op for op in patch
                   if op.get("op") == "test" or op.get("path", "").startswith("/status") == on_status]
            try:
                new = jsonpatch.apply_patch(current, ops)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise kmock_lib.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        elif isinstance(patch, dict):  # merge patch
            if on_status:
                patch = {"status": patch["status"]} if "status" in patch else {}
            else:
                patch = {k: v for k, v in patch.items() if k != "status"}
            new = dict(kmock_dicts.merge_patch_dict(current, patch))
        else:
            raise kmock_lib.KubernetesError(status=415, reason="UnsupportedMediaType", message=repr(patch))
        meta = new.setdefault("metadata", {})
        if new.get("spec") != current.get("spec"):
            meta["generation"] = int(meta.get("generation") or 0) + 1
        meta["resourceVersion"] = self._next_rv()
        self.objects[key].patch([{"op": "replace", "path": "", "value": new}])
        await self._buses[request.resource].put({"type": "MODIFIED", "object": self.objects[key].raw})
        return key

    async def _delete(self, request: kmock_lib.Request):
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock_lib.KubernetesObjectNotFoundError()
        obj = self.objects[key]
        if obj.get("metadata", {}).get("deletionTimestamp"):
            return key
        if obj.get("metadata", {}).get("finalizers"):
            obj.patch({"metadata": {"deletionTimestamp": _now(), "resourceVersion": self._next_rv()}})
            await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
        else:
            raw = obj.raw
            obj.delete()
            await self._buses[request.resource].put({"type": "DELETED", "object": raw})
        return key

    async def _serve_create(self, request: kmock_lib.Request):
        return self.objects[self._created.pop(request.id)].raw

    async def _serve_list(self, request: kmock_lib.Request):
        payload = await super()._serve_list(request)
        payload["metadata"]["resourceVersion"] = str(self._rv_last)
        return payload

    async def _serve_watch(self, request: kmock_lib.Request):
        yield b""  # send the headers now
        since = request.params.get("resourceVersion") or ""
        since_rv = int(since) if since.isdigit() else 0
        bus = self._buses[request.resource]
        async with self._lock:  # writers publish under this lock: no gap, no duplicate
            marker = await bus.mark()
            events = [{"type": "ADDED", "object": obj.raw}
                      for (resource, namespace, name), obj in self.objects.items()
                      if not obj.deleted and self._watched(request, resource, namespace, name)
                      and int(obj.raw.get("metadata", {}).get("resourceVersion") or 0) > since_rv]
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if self._watched(request, request.resource, meta.get("namespace"), meta.get("name")):
                    yield event
        finally:
            await bus.unmark(marker)

    @staticmethod
    def _watched(request: kmock_lib.Request, resource: Any, namespace: str | None, name: str | None) -> bool:
        return (resource == request.resource
                and (request.namespace is None or namespace == request.namespace)
                and (request.name is None or name == request.name))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def kmock_options(kmock_options):
    kmock_options["cls"] = ApiServer
    kmock_options["strict"] = False
    return kmock_options


@pytest.fixture
def k8s(kmock):
    """The emulated API server with the builtin resources (k3s discovery) and the operator's CRDs."""
    with warnings.catch_warnings():  # kmock 0.8 uses importlib.resources.read_binary (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        kmock.resources.load_bundled()
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    for crd in crds():
        names = crd["spec"]["names"]
        for version in crd["spec"]["versions"]:
            kmock.resources[f"{crd['spec']['group']}/{version['name']}/{names['plural']}"] = kmock_lib.ResourceInfo(
                kind=names["kind"], singular=names["singular"], shortnames=names.get("shortNames", []),
                categories=names.get("categories", []), namespaced=crd["spec"]["scope"] == "Namespaced",
                verbs=verbs, subresources=set(version.get("subresources") or {}))
    return kmock


@pytest.fixture
def kubeconfig(k8s, tmp_path, monkeypatch):
    """A kubeconfig pointing at kmock, seen by kopf's login and by rbd_operator.adapters.kube."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "contract-test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    # kubernetes.config reads $KUBECONFIG once, when it is first imported (here: at collection time).
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config
    monkeypatch.setenv("RBD_OPERATOR_NAMESPACE", OPERATOR_NAMESPACE)  # where the admin Secret lives
    # Per-process caches of the operator: a fresh API client, Secret cache and locks per test.
    monkeypatch.setattr(kube, "_core", None)
    monkeypatch.setattr(kube, "_secret_cache", {})
    return path


@pytest.fixture
async def warm_kube_client(kubeconfig):
    """Build the operator's CoreV1Api (kube.core(): load_kube_config etc.) before kopf starts.

    Done lazily by the first handler, it takes 0.5-1 s here, long enough for the 1 s resync timer
    to overlap the first handler run (see test_races.py for what that overlap does).
    """
    api = await asyncio.to_thread(kube.core)
    assert api.api_client.configuration.host == kubeconfig_server(kubeconfig)
    return api


def kubeconfig_server(path: pathlib.Path) -> str:
    return yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]


class Operator:
    """The running operator plus helpers to look at what it sent to the API."""

    def __init__(self, k8s: ApiServer, runner: KopfRunner, records: list[logging.LogRecord]) -> None:
        self.k8s = k8s
        self.runner = runner
        self.records = records

    # What the operator sent (kopf's client or the kubernetes client), not what the tests sent.
    def requests(self) -> list[kmock_lib.Request]:
        return [r for r in list(self.k8s)
                if not r.headers.get("User-Agent", "").startswith(TEST_CLIENT_AGENT)]

    def writes(self) -> list[kmock_lib.Request]:
        return [r for r in self.requests() if r.method.value in ("POST", "PUT", "PATCH", "DELETE")]

    def patches(self, plural: str, name: str, *, status: bool) -> list[kmock_lib.Request]:
        return [r for r in self.requests()
                if r.method.value == "PATCH" and r.resource is not None and r.resource.plural == plural
                and r.name == name and (r.subresource == "status") == status]

    def events(self, reason: str | None = None, name: str | None = None) -> list[dict]:
        return [r.data for r in self.requests()
                if r.method.value == "POST" and r.resource is not None and r.resource.plural == "events"
                and (reason is None or r.data.get("reason") == reason)
                and (name is None or r.data.get("involvedObject", {}).get("name") == name)]

    def kopf_states(self, plural: str, name: str) -> list[dict]:
        """kopf's own bookkeeping (status.kopf: diffbase, progress) in every status patch of the object."""
        return [r.data["status"]["kopf"] for r in self.patches(plural, name, status=True)
                if isinstance(r.data, dict) and isinstance(r.data.get("status", {}).get("kopf"), dict)]

    def handled(self, plural: str, name: str) -> list[dict]:
        """The specs kopf recorded as handled (status.kopf.diffbase), oldest first."""
        return [json.loads(k["diffbase"]) for k in self.kopf_states(plural, name) if k.get("diffbase")]

    def log(self, name: str, prefix: str) -> list[logging.LogRecord]:
        """kopf's per-object log records (from the operator's thread) starting with `prefix`."""
        return [r for r in self.records
                if getattr(r, "k8s_ref", {}).get("name") == name and r.getMessage().startswith(prefix)]

    def namespace_of(self, plural: str, name: str) -> str | None:
        for resource, namespace, obj_name in self.k8s.objects:
            if resource.plural == plural and obj_name == name:
                return namespace
        raise LookupError(f"no {plural} {name!r} in the emulator")

    def progress(self, plural: str, name: str, handler: str = "reconcile") -> list[dict]:
        """kopf's per-handler progress records (retries, delays) as written to status.kopf.progress."""
        return [k["progress"][handler] for k in self.kopf_states(plural, name)
                if isinstance(k.get("progress"), dict) and k["progress"].get(handler)]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def operator(k8s, kubeconfig, warm_kube_client):
    """Run the operator (``kopf run --standalone --all-namespaces -m rbd_operator.handlers``).

    Yields when kopf is watching both resources; objects created then arrive through the watch.
    """
    async with run_operator(k8s) as op:
        yield op


@contextlib.asynccontextmanager
async def run_operator(k8s: ApiServer, *, debug: bool = False) -> AsyncIterator[Operator]:
    """The operator running against `k8s` (the `operator` fixture; a test may run it more than once); `debug`:
    kopf's per-object debug lines are recorded too (what it processed, even when it found nothing to do)."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    settings = kopf.OperatorSettings()
    settings.queueing.exit_timeout = 0.1  # shutdown only: do not wait 2 s for workers sleeping in a retry delay
    runner = KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "rbd_operator.handlers"],
                        timeout=15, settings=settings)
    records = _Records()
    loggers = [logging.getLogger("kopf.objects"), logging.getLogger("rbd_operator")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        if debug:
            logger.setLevel(logging.DEBUG)
    await asyncio.to_thread(runner.__enter__)
    op = Operator(k8s, runner, records.records)
    try:
        plurals = {crd["spec"]["names"]["plural"] for crd in crds()}
        await wait_for(lambda: {r.resource.plural for r in op.requests()
                                if r.action == kmock_lib.action.WATCH and r.resource is not None} >= plurals,
                       timeout=10, what=f"kopf to watch {sorted(plurals)}")
        yield op
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)
        # `kopf run` reconfigures the root logger for the process: undo it for the next tests.
        for logger, level in zip(loggers, levels):
            logger.removeHandler(records)
            logger.setLevel(level)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert runner.exit_code == 0, runner.output


async def wait_for(condition: Callable[[], Any], *, timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def create(k8s: ApiServer, url: str, body: dict) -> dict:
    async with k8s.post(url, json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


def storage_body(name: str, spec: dict | None = None) -> dict:
    """An RbdStorage as the API server stores it after defaulting (see crds/rbdstorages.yaml)."""
    defaults = {
        "cluster": {"monitors": ["10.0.0.1:6789"], "adminSecretRef": {"name": "ceph-admin", "namespace": "ceph"}},
        "pool": {"application": "rbd", "adopt": False},
        "client": {"name": "vmmgr", "adopt": False},
        "deletionPolicy": "Retain",
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdStorage", "metadata": {"name": name},
            "spec": dict(kmock_dicts.merge_patch_dict(defaults, spec or {}))}


def image_body(namespace: str, name: str, spec: dict) -> dict:
    """An RbdImage as the API server stores it after defaulting (see crds/rbdimages.yaml)."""
    defaults = {"features": ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"],
                "allowShrink": False, "deletionPolicy": "Delete", "trashRetention": "24h"}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdImage",
            "metadata": {"name": name, "namespace": namespace},
            "spec": dict(kmock_dicts.merge_patch_dict(defaults, spec))}


def undeclared_status_fields(status: dict, schema: dict, path: str = "status") -> list[str]:
    """Paths in `status` that the CRD's structural schema does not declare (would be pruned)."""
    found: list[str] = []
    if isinstance(status, dict):
        props = schema.get("properties")
        if props is None:
            return found if schema.get("additionalProperties") or schema.get(
                "x-kubernetes-preserve-unknown-fields") else [f"{path}.{k}" for k in status]
        for key, value in status.items():
            if key not in props:
                found.append(f"{path}.{key}")
            else:
                found += undeclared_status_fields(value, props[key], f"{path}.{key}")
    elif isinstance(status, list) and "items" in schema:
        for i, item in enumerate(status):
            found += undeclared_status_fields(item, schema["items"], f"{path}[{i}]")
    return found


def check_bookkeeping(op: Operator, plural: str, name: str) -> None:
    """Status goes through /status with schema fields only (kopf's own state in status.kopf); patches of
    the object itself are kopf's finalizer only: no annotation is written."""
    status_schema = crd_schema(plural)["properties"]["status"]
    for request in op.patches(plural, name, status=True):
        assert set(request.data) == {"status"}, request.data
        assert undeclared_status_fields(request.data["status"], status_schema) == []
    for request in op.patches(plural, name, status=False):
        if isinstance(request.data, dict):  # merge patch: never annotations, never status
            assert "status" not in request.data, request.data
            assert not request.data.get("metadata", {}).get("annotations"), request.data
        else:  # JSON patch: kopf's finalizer
            assert not any(op_["path"].startswith("/status") for op_ in request.data), request.data
            for op_ in request.data:
                if op_["path"].startswith("/metadata/finalizers"):
                    assert op_["value"] in ([f"{GROUP}/finalizer"], f"{GROUP}/finalizer"), request.data
    stored = op.k8s.objects[f"{GROUP}/{VERSION}/{plural}", op.namespace_of(plural, name), name]
    assert undeclared_status_fields(dict(stored.get("status") or {}), status_schema) == []
    assert not (set(stored.get("status") or {}) - set(status_schema["properties"]))


def leaked(secret_values: Iterable[str], requests: Iterable[kmock_lib.Request]) -> list[str]:
    """Requests whose body, URL or headers contain any of `secret_values`."""
    hits = []
    for request in requests:
        headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        blob = request.body + request.url.raw_path_qs.encode() + headers.encode()
        for value in secret_values:
            if value.encode() in blob:
                hits.append(f"{request.method.value} {request.url.path}: contains {value!r}")
    return hits
