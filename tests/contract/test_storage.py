"""RbdStorage: failures the operator must report before it ever talks to Ceph."""
from __future__ import annotations

import base64
import re

import kmock

from .conftest import (GROUP, STORAGES, STORAGES_URL, VERSION, check_bookkeeping, create,
                       crd_schema, leaked, storage_body, wait_for)

SCHEMA = crd_schema("rbdstorages")
CONDITION_KEYS = set(SCHEMA["properties"]["status"]["properties"]["conditions"]["items"]["properties"])
SECRET_PATH = "/api/v1/namespaces/ceph/secrets/ceph-admin"


def ready_condition(request) -> dict:
    (cond,) = [c for c in request.data["status"]["conditions"] if c["type"] == "Ready"]
    return cond


async def test_invalid_pool_parameter_is_reported_once_and_not_retried(k8s, operator):
    # Passes the CRD schema: the value matches the pattern, the key is none of the CEL-forbidden ones.
    params = SCHEMA["properties"]["spec"]["properties"]["pool"]["properties"]["parameters"]
    assert re.fullmatch(params["additionalProperties"]["pattern"], "1")
    assert "bogus_key" not in ("size", "pg_num", "pgp_num")

    created = await create(k8s, STORAGES_URL, storage_body("bad-params", {"pool": {"parameters": {"bogus_key": "1"}}}))
    status_patches = await wait_for(lambda: operator.patches("rbdstorages", "bad-params", status=True),
                                    what="the status PATCH")
    events = await wait_for(lambda: operator.events(reason="InvalidSpec", name="bad-params"), what="the Event")
    await wait_for(lambda: operator.handled("rbdstorages", "bad-params"),
                   what="kopf to mark the spec as handled")

    # Exactly one status write: the Ready condition and observedGeneration, nothing else.
    assert len(status_patches) == 1
    status = status_patches[0].data["status"]
    assert set(status) - {"kopf"} == {"conditions", "observedGeneration"}  # kopf: its bookkeeping
    assert status["observedGeneration"] == 1
    cond = ready_condition(status_patches[0])
    assert set(cond) == CONDITION_KEYS
    assert cond["status"] == "False"
    assert cond["reason"] == "InvalidSpec"
    assert cond["message"].startswith("spec.pool.parameters.bogus_key: is not a pool setting")
    assert cond["observedGeneration"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cond["lastTransitionTime"])
    assert k8s.objects[STORAGES, None, "bad-params"]["status"]["conditions"] == [cond]

    # One Warning Event about the object (cluster-scoped: kopf posts it to "default").
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "Warning"
    assert event["message"] == cond["message"]
    assert kmock.ObjectVersion(event["involvedObject"]) >= {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdStorage", "name": "bad-params",
        "uid": created["metadata"]["uid"]}
    (post,) = [r for r in operator.requests() if r.method.value == "POST" and r.data.get("reason") == "InvalidSpec"]
    assert post.url.path == "/api/v1/namespaces/default/events"

    # Permanent: kopf stored the spec as handled and keeps no retry record for the handler.
    assert operator.progress("rbdstorages", "bad-params") == []
    assert operator.log("bad-params", "Handler 'reconcile' failed permanently")
    assert not operator.log("bad-params", "Handler 'reconcile' failed temporarily")
    check_bookkeeping(operator, "rbdstorages", "bad-params")
    # Refused while parsing the spec: not even the admin Secret was read.
    assert not [r for r in operator.requests() if r.resource is not None and r.resource.plural == "secrets"]


async def test_invalid_monitor_is_reported(k8s, operator):
    # The schema pattern accepts port 99999 ([0-9]{1,5}); the operator refuses ports above 65535.
    monitors = SCHEMA["properties"]["spec"]["properties"]["cluster"]["properties"]["monitors"]
    assert re.fullmatch(monitors["items"]["pattern"], "mon1:99999")

    await create(k8s, STORAGES_URL, storage_body("bad-mon", {"cluster": {"monitors": ["mon1:99999"]}}))
    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "bad-mon", status=True), what="the status PATCH")
    cond = ready_condition(patch)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert cond["message"] == "spec.cluster.monitors[0]: 'mon1:99999' is not host:port"
    (event,) = await wait_for(lambda: operator.events(reason="InvalidSpec", name="bad-mon"), what="the Event")
    assert event["type"] == "Warning"
    check_bookkeeping(operator, "rbdstorages", "bad-mon")


async def test_missing_admin_secret_is_auth_failed_and_retried(k8s, operator):
    await create(k8s, STORAGES_URL, storage_body("no-secret"))
    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "no-secret", status=True),
                              what="the status PATCH")
    cond = ready_condition(patch)
    assert (cond["status"], cond["reason"]) == ("False", "AuthFailed")
    assert cond["message"] == "admin Secret ceph/ceph-admin does not exist"
    (event,) = await wait_for(lambda: operator.events(reason="AuthFailed", name="no-secret"), what="the Event")
    assert event["type"] == "Warning"

    # The Secret was read by the kubernetes client (adapters/kube.py) from kmock, which answered 404.
    gets = [r for r in operator.requests() if r.method.value == "GET" and r.url.path == SECRET_PATH]
    assert gets and all(r.headers["User-Agent"].startswith("OpenAPI-Generator/") for r in gets)

    # Temporary: kopf keeps a retry record in the annotations (not in status) and will call again.
    (progress,) = await wait_for(lambda: operator.progress("rbdstorages", "no-secret"), what="the retry record")
    assert progress["retries"] == 1 and progress["success"] is False and progress["failure"] is False
    assert progress["delayed"]
    assert operator.log("no-secret", "Handler 'reconcile' failed temporarily")
    check_bookkeeping(operator, "rbdstorages", "no-secret")


async def test_admin_secret_value_never_leaves_the_operator(k8s, operator):
    key = "AQB-not-a-cephx-key-S3CR3T-VALUE=="
    encoded = base64.b64encode(key.encode()).decode()
    await create(k8s, "/api/v1/namespaces/ceph/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ceph-admin", "namespace": "ceph"},
        "data": {"userID": base64.b64encode(b"admin").decode(), "userKey": encoded}})
    await create(k8s, STORAGES_URL, storage_body("bad-key"))

    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "bad-key", status=True),
                              what="the status PATCH")
    cond = ready_condition(patch)
    assert (cond["status"], cond["reason"]) == ("False", "AuthFailed")
    assert cond["message"] == "admin Secret ceph/ceph-admin: userKey is not a cephx key"
    await wait_for(lambda: operator.events(reason="AuthFailed", name="bad-key"), what="the Event")
    await wait_for(lambda: operator.progress("rbdstorages", "bad-key"), what="the retry record")

    # The operator did read the Secret (so it had the key in hand) ...
    assert [r for r in operator.requests() if r.method.value == "GET" and r.url.path == SECRET_PATH]
    # ... and nothing it sent (status, annotations, events, any URL or header) nor logged contains it.
    secret_values = [key, key.rstrip("="), encoded]
    assert leaked(secret_values, operator.requests()) == []
    assert not [r.getMessage() for r in operator.records if any(v in r.getMessage() for v in secret_values)]
    check_bookkeeping(operator, "rbdstorages", "bad-key")
