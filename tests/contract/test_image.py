"""RbdImage: failures the operator must report before it ever talks to Ceph."""
from __future__ import annotations

import datetime
import json
import re

import kmock

from .conftest import (GROUP, IMAGES, VERSION, check_bookkeeping, create, crd_schema, image_body,
                       images_url, wait_for)

SCHEMA = crd_schema("rbdimages")
CONDITION_KEYS = set(SCHEMA["properties"]["status"]["properties"]["conditions"]["items"]["properties"])


def the_ready_condition(request) -> dict:
    status = request.data["status"]
    assert set(status) - {"kopf"} == {"conditions", "observedGeneration"}, status  # kopf: its bookkeeping
    (cond,) = status["conditions"]
    assert set(cond) == CONDITION_KEYS
    assert cond["type"] == "Ready"
    assert cond["observedGeneration"] == status["observedGeneration"] == 1
    return cond


async def test_missing_storage_is_reported_and_retried(k8s, operator):
    created = await create(k8s, images_url("vms"), image_body("vms", "disk-a", {"storage": "no-such-storage", "size": "1Gi"}))

    (patch,) = await wait_for(lambda: operator.patches("rbdimages", "disk-a", status=True), what="the status PATCH")
    assert patch.url.path == f"/apis/{GROUP}/{VERSION}/namespaces/vms/rbdimages/disk-a/status"
    cond = the_ready_condition(patch)
    assert (cond["status"], cond["reason"]) == ("False", "StorageNotFound")
    assert cond["message"] == "RbdStorage 'no-such-storage' does not exist (waiting for it)"

    (event,) = await wait_for(lambda: operator.events(reason="StorageNotFound", name="disk-a"), what="the Event")
    assert event["type"] == "Warning"
    assert kmock.ObjectVersion(event["involvedObject"]) >= {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdImage", "namespace": "vms", "name": "disk-a",
        "uid": created["metadata"]["uid"]}
    (post,) = [r for r in operator.requests() if r.method.value == "POST" and r.data.get("reason") == "StorageNotFound"]
    assert post.url.path == "/api/v1/namespaces/vms/events"

    # Temporary, not permanent: kopf records a retry in status.kopf, 5 s later (backoff(0) < Waiting's 10 s).
    (first,) = await wait_for(lambda: operator.progress("rbdimages", "disk-a"), what="the retry record")
    assert first["retries"] == 1 and first["success"] is False and first["failure"] is False
    delay = datetime.datetime.fromisoformat(first["delayed"]) - datetime.datetime.fromisoformat(first["started"])
    assert 4 < delay.total_seconds() < 7
    assert operator.log("disk-a", "Handler 'reconcile' failed temporarily")
    assert not operator.log("disk-a", "Handler 'reconcile' failed permanently")

    # ... and kopf does call the handler again.
    await wait_for(lambda: [p for p in operator.progress("rbdimages", "disk-a") if p["retries"] == 2],
                   timeout=10, what="the second attempt")
    # The retry found the same condition: no second write of the status (only kopf's retry records in
    # status.kopf), no second Event.
    ours = [r for r in operator.patches("rbdimages", "disk-a", status=True) if set(r.data["status"]) - {"kopf"}]
    assert len(ours) == 1
    assert len(operator.events(reason="StorageNotFound", name="disk-a")) == 1
    assert k8s.objects[IMAGES, "vms", "disk-a"]["status"]["conditions"] == [cond]
    check_bookkeeping(operator, "rbdimages", "disk-a")


async def test_object_size_not_a_power_of_two_is_permanent(k8s, operator):
    # "3Mi" passes the CRD (pattern ^[0-9]+(Ki|Mi)?$); the operator needs a power of two.
    assert re.fullmatch(SCHEMA["properties"]["spec"]["properties"]["objectSize"]["pattern"], "3Mi")

    await create(k8s, images_url("vms"), image_body("vms", "disk-b", {"storage": "whatever", "size": "1Gi",
                                                                      "objectSize": "3Mi"}))
    (patch,) = await wait_for(lambda: operator.patches("rbdimages", "disk-b", status=True), what="the status PATCH")
    cond = the_ready_condition(patch)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert cond["message"] == "spec.objectSize: must be a power of two from 4Ki to 32Mi"
    (event,) = await wait_for(lambda: operator.events(reason="InvalidSpec", name="disk-b"), what="the Event")
    assert event["type"] == "Warning" and event["message"] == cond["message"]

    # Permanent: kopf marks this spec as handled and keeps no retry record.
    handled = await wait_for(lambda: operator.handled("rbdimages", "disk-b"),
                             what="kopf to mark the spec as handled")
    assert handled[-1]["spec"]["objectSize"] == "3Mi"
    assert operator.progress("rbdimages", "disk-b") == []
    assert operator.log("disk-b", "Handler 'reconcile' failed permanently")
    assert not operator.log("disk-b", "Handler 'reconcile' failed temporarily")
    check_bookkeeping(operator, "rbdimages", "disk-b")
