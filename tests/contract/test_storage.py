"""RbdStorage: failures the operator must report before it ever talks to Ceph."""
from __future__ import annotations

import base64
import re

import kmock

from .conftest import (ANNOTATION_PREFIX, GROUP, STORAGES, STORAGES_URL, VERSION, create, crd_schema, leaked,
                       storage_body, undeclared_status_fields, wait_for)

SCHEMA = crd_schema("rbdstorages")
STATUS_SCHEMA = SCHEMA["properties"]["status"]
CONDITION_KEYS = set(STATUS_SCHEMA["properties"]["conditions"]["items"]["properties"])


def check_bookkeeping(op, name: str) -> None:
    """Status carries only schema fields and goes through /status; kopf's state is in our annotations."""
    for request in op.patches("rbdstorages", name, status=True):
        assert set(request.data) == {"status"}, request.data
        assert undeclared_status_fields(request.data["status"], STATUS_SCHEMA) == []
    for request in op.patches("rbdstorages", name, status=False):
        if isinstance(request.data, dict):  # merge patch
            assert "status" not in request.data, request.data
            annotations = request.data.get("metadata", {}).get("annotations", {})
            assert all(key.startswith(ANNOTATION_PREFIX) for key in annotations), annotations
        else:  # JSON patch (kopf's finalizer)
            assert not any(op_["path"].startswith("/status") for op_ in request.data), request.data
            for op_ in request.data:
                if op_["path"] == "/metadata/finalizers":
                    assert op_["value"] == [f"{GROUP}/finalizer"], request.data


def ready_condition(patch: dict) -> dict:
    (cond,) = [c for c in patch["status"]["conditions"] if c["type"] == "Ready"]
    return cond


async def test_invalid_pool_parameter_is_reported_once_and_not_retried(k8s, operator):
    # Passes the CRD schema: a string value matching the pattern, not one of the CEL-forbidden keys.
    params = SCHEMA["properties"]["spec"]["properties"]["pool"]["properties"]["parameters"]
    assert re.fullmatch(params["additionalProperties"]["pattern"], "1")
    assert "bogus_key" not in ("size", "pg_num", "pgp_num")

    created = await create(k8s, STORAGES_URL, storage_body("bad-params", {"pool": {"parameters": {"bogus_key": "1"}}}))
    status_patches = await wait_for(lambda: operator.patches("rbdstorages", "bad-params", status=True),
                                    what="the status PATCH")
    events = await wait_for(lambda: operator.events(reason="InvalidSpec", name="bad-params"), what="the Event")
    annotations = await wait_for(lambda: [a for a in operator.annotation_patches("rbdstorages", "bad-params")
                                          if f"{ANNOTATION_PREFIX}last-handled-configuration" in a],
                                 what="kopf to mark the spec as handled")

    # Exactly one status write, with exactly the Ready condition and observedGeneration.
    assert len(status_patches) == 1
    status = status_patches[0].data["status"]
    assert set(status) == {"conditions", "observedGeneration"}
    assert status["observedGeneration"] == 1
    cond = ready_condition(status_patches[0].data)
    assert set(cond) == CONDITION_KEYS
    assert cond["status"] == "False"
    assert cond["reason"] == "InvalidSpec"
    assert cond["message"].startswith("spec.pool.parameters.bogus_key: ")
    assert cond["observedGeneration"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cond["lastTransitionTime"])
    assert k8s.objects[STORAGES, None, "bad-params"]["status"]["conditions"] == [cond]

    # One Warning Event about the object (cluster-scoped: kopf posts it to "default").
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "Warning"
    assert "spec.pool.parameters.bogus_key" in event["message"]
    assert kmock.ObjectVersion(event["involvedObject"]) >= {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdStorage",
                                       "name": "bad-params", "uid": created["metadata"]["uid"]}
    (post,) = [r for r in operator.requests() if r.method.value == "POST" and r.data.get("reason") == "InvalidSpec"]
    assert post.url.path == "/api/v1/namespaces/default/events"

    # Permanent: kopf stored the spec as handled and keeps no retry state for the handler.
    assert operator.progress("rbdstorages", "bad-params") == []
    assert operator.log("bad-params", "Handler 'reconcile' failed permanently")
    check_bookkeeping(operator, "bad-params")
    # Nothing but the admin Secret is read... and not even that: parsing fails first.
    assert not [r for r in operator.requests() if r.resource is not None and r.resource.plural == "secrets"]


async def test_invalid_monitor_is_reported(k8s, operator):
    # The schema pattern accepts port 99999 ([0-9]{1,5}); the operator rejects ports above 65535.
    monitors = SCHEMA["properties"]["spec"]["properties"]["cluster"]["properties"]["monitors"]
    assert re.fullmatch(monitors["items"]["pattern"], "mon1:99999")

    await create(k8s, STORAGES_URL, storage_body("bad-mon", {"cluster": {"monitors": ["mon1:99999"]}}))
    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "bad-mon", status=True), what="the status PATCH")
    cond = ready_condition(patch.data)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert cond["message"] == "spec.cluster.monitors[0]: 'mon1:99999' is not host:port"
    await wait_for(lambda: operator.events(reason="InvalidSpec", name="bad-mon"), what="the Event")
    check_bookkeeping(operator, "bad-mon")


async def test_missing_admin_secret_is_auth_failed_and_retried(k8s, operator):
    await create(k8s, STORAGES_URL, storage_body("no-secret"))
    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "no-secret", status=True),
                              what="the status PATCH")
    cond = ready_condition(patch.data)
    assert (cond["status"], cond["reason"]) == ("False", "AuthFailed")
    assert cond["message"] == "admin Secret ceph/ceph-admin does not exist"
    (event,) = await wait_for(lambda: operator.events(reason="AuthFailed", name="no-secret"), what="the Event")
    assert event["type"] == "Warning"

    # The Secret was looked up by the kubernetes client (adapters/kube.py), answered 404 by kmock.
    gets = [r for r in operator.requests() if r.method.value == "GET" and r.url.path == "/api/v1/namespaces/ceph/secrets/ceph-admin"]
    assert gets and all(r.headers["User-Agent"].startswith("OpenAPI-Generator/") for r in gets)

    # Temporary: kopf keeps a retry record in the annotations (not in status) and will call again.
    (progress,) = await wait_for(lambda: operator.progress("rbdstorages", "no-secret"), what="the retry record")
    assert progress["retries"] == 1 and not progress["success"] and not progress["failure"]
    assert progress["delayed"]
    check_bookkeeping(operator, "no-secret")


async def test_admin_secret_value_never_leaves_the_operator(k8s, operator):
    key = "AQB-not-a-cephx-key-S3CR3T-VALUE=="
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ceph-admin", "namespace": "ceph"},
              "data": {"userID": base64.b64encode(b"admin").decode(), "userKey": base64.b64encode(key.encode()).decode()}}
    await create(k8s, "/api/v1/namespaces/ceph/secrets", secret)
    await create(k8s, STORAGES_URL, storage_body("bad-key"))

    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "bad-key", status=True),
                              what="the status PATCH")
    cond = ready_condition(patch.data)
    assert (cond["status"], cond["reason"]) == ("False", "AuthFailed")
    assert cond["message"] == "admin Secret ceph/ceph-admin: userKey is not a cephx key"
    await wait_for(lambda: operator.events(reason="AuthFailed", name="bad-key"), what="the Event")
    await wait_for(lambda: operator.progress("rbdstorages", "bad-key"), what="the retry record")

    assert [r for r in operator.requests() if r.url.path == "/api/v1/namespaces/ceph/secrets/ceph-admin"]
    secret_values = [key, secret["data"]["userKey"], key.rstrip("=")]
    assert leaked(secret_values, operator.requests()) == []
    check_bookkeeping(operator, "bad-key")
