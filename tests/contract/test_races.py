"""Races and API errors around the handlers (both were defects once; these pin the fixes)."""
from __future__ import annotations

import asyncio

import kmock
import pytest

from .conftest import STORAGES_URL, create, storage_body, wait_for

SECRET_URL = "/api/v1/namespaces/ceph/secrets/ceph-admin"


async def test_resync_overlapping_a_slow_handler_repeats_nothing(k8s, operator):
    async def slow_404(request):  # the first handler run outlasts the 1 s initial delay of the timer
        await asyncio.sleep(1.5)
        return kmock.KubernetesObjectNotFoundError()

    k8s[f"get {SECRET_URL}"] << slow_404
    await create(k8s, STORAGES_URL, storage_body("slow"))
    # A tick that lands while the handler runs must skip (its body is older than the handler's result) ...
    await wait_for(lambda: operator.log("slow", "Timer 'resync' succeeded"), timeout=8, what="the first resync")
    await wait_for(lambda: operator.patches("rbdstorages", "slow", status=True), timeout=8, what="the handler")
    # ... and the ticks after it find nothing to change.
    await wait_for(lambda: len(operator.log("slow", "Timer 'resync' succeeded")) >= 3, timeout=8,
                   what="two more resyncs")
    await asyncio.sleep(0.2)  # let kopf apply any patch and post any event

    assert len(operator.events(reason="AuthFailed", name="slow")) == 1
    assert len(operator.patches("rbdstorages", "slow", status=True)) == 1


async def test_forbidden_admin_secret_is_reported(k8s, operator):
    k8s[f"get {SECRET_URL}"] << kmock.KubernetesError(status=403, reason="Forbidden",
                                                          message='secrets "ceph-admin" is forbidden')
    await create(k8s, STORAGES_URL, storage_body("forbidden"))
    await wait_for(lambda: [r for r in operator.requests() if r.url.path == SECRET_URL], what="the Secret GET")
    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "forbidden", status=True), timeout=2,
                              what="the status PATCH")
    (cond,) = patch.data["status"]["conditions"]
    assert cond["status"] == "False" and "ceph/ceph-admin" in cond["message"]


async def test_secret_outside_the_operator_namespace_is_never_read(k8s, operator):
    body = storage_body("tenant", {"cluster": {"monitors": ["10.0.0.1:6789"],
                                               "adminSecretRef": {"name": "ceph-admin", "namespace": "tenant-a"}}})
    await create(k8s, STORAGES_URL, body)
    (patch,) = await wait_for(lambda: operator.patches("rbdstorages", "tenant", status=True), timeout=4,
                              what="the status PATCH")
    (cond,) = patch.data["status"]["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "SecretOutsideNamespace")
    assert "tenant-a/ceph-admin" in cond["message"]
    assert not [r for r in operator.requests() if "/secrets" in r.url.path], "nothing was read"
