"""Known operator defects, pinned as strict xfails: each turns into a failure once the bug is fixed."""
from __future__ import annotations

import asyncio

import kmock
import pytest

from .conftest import STORAGES_URL, create, storage_body, wait_for

SECRET_URL = "/api/v1/namespaces/ceph/secrets/ceph-admin"


@pytest.mark.xfail(strict=True, reason=(
    "handlers/storage.py resync (and handlers/image.py resync): a timer tick that waits on object_lock "
    "while a handler runs then reconciles with the body kopf gave it BEFORE the handler's status patch, "
    "so it repeats the Warning Event and the status PATCH (and could apply a stale spec)"))
async def test_resync_overlapping_a_slow_handler_repeats_nothing(k8s, operator):
    async def slow_404(request):  # the first handler run outlasts the 1 s initial delay of the timer
        await asyncio.sleep(1.5)
        return kmock.KubernetesObjectNotFoundError()

    k8s[f"get {SECRET_URL}"] << slow_404
    await create(k8s, STORAGES_URL, storage_body("slow"))
    await wait_for(lambda: operator.log("slow", "Timer 'resync' succeeded"), timeout=8, what="the first resync")
    await asyncio.sleep(0.2)  # let kopf apply the timer's patch and post its events

    assert len(operator.events(reason="AuthFailed", name="slow")) == 1
    assert len(operator.patches("rbdstorages", "slow", status=True)) == 1


@pytest.mark.xfail(strict=True, reason=(
    "handlers/common.py admin_credentials / adapters/kube.py read_secret: any API error other than 404 "
    "(e.g. 403 when RBAC lacks 'get secrets') escapes converge() as an ApiException: no Ready condition, "
    "no Event, kopf's default retry"))
async def test_forbidden_admin_secret_is_reported(k8s, operator):
    k8s[f"get {SECRET_URL}"] << kmock.KubernetesError(status=403, reason="Forbidden",
                                                          message='secrets "ceph-admin" is forbidden')
    await create(k8s, STORAGES_URL, storage_body("forbidden"))
    await wait_for(lambda: [r for r in operator.requests() if r.url.path == SECRET_URL], what="the Secret GET")
    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "forbidden", status=True), timeout=2,
                              what="the status PATCH")
    (cond,) = patch.data["status"]["conditions"]
    assert cond["status"] == "False" and "ceph/ceph-admin" in cond["message"]
