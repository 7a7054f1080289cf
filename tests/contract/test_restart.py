"""A restart: kopf is handed only the RbdImages it has something to do for (kopf_fixes 5, the quiet first
listing); an image changed while the operator was down is still handled, an unchanged one costs kopf nothing."""
from __future__ import annotations

import asyncio

from .conftest import (STORAGES_URL, create, image_body, images_url, run_operator, storage_body, wait_for)

QUIET = "first listing of rbdimages"


def _quiet_lines(op) -> list[str]:
    return [r.getMessage() for r in op.records if r.getMessage().startswith(QUIET)]


async def test_a_restart_hands_kopf_only_the_images_with_something_to_do(k8s, kubeconfig, warm_kube_client):
    names = ("calm-a", "calm-b", "edited")
    async with run_operator(k8s) as op:
        await create(k8s, STORAGES_URL, storage_body("calm-storage", {"pool": {"parameters": {"bogus_key": "1"}}}))
        for name in names:
            await create(k8s, images_url("vms"), image_body("vms", name, {"storage": "calm-storage", "size": "1Gi",
                                                                           "objectSize": "3Mi"}))
        for name in names:
            await wait_for(lambda: op.handled("rbdimages", name), what=f"kopf to finish with {name}")
        assert [" 0 of 0 objects" in line for line in _quiet_lines(op)] == [True], "the first start listed none"
    before = len(op.requests())  # what the operator sent until it stopped (kmock keeps every request)

    # while the operator is down, one image's spec changes
    async with k8s.patch(images_url("vms") + "/edited", json={"spec": {"size": "2Gi"}},
                         headers={"Content-Type": "application/merge-patch+json"}) as resp:
        assert resp.status == 200, await resp.text()

    async with run_operator(k8s, debug=True) as op:
        await wait_for(lambda: any(h.get("spec", {}).get("size") == "2Gi" for h in op.handled("rbdimages", "edited")),
                       timeout=10, what="kopf to handle the image changed while the operator was down")
        await asyncio.sleep(0.5)  # the listing was over before the edited image was handled: give kopf time
        for name in ("calm-a", "calm-b"):
            assert op.log(name, "") == [], f"kopf processed {name}: {[r.getMessage() for r in op.log(name, '')]}"
            assert [r for r in op.requests()[before:] if r.name == name] == [], f"the restarted operator sent requests about {name}"
        assert op.log("edited", ""), "kopf processed the edited image"
        assert [r for r in op.requests()[before:] if r.name == "edited"], "the restarted operator patched it"
        assert [" 2 of 3 objects" in line for line in _quiet_lines(op)] == [True], _quiet_lines(op)
