"""Idle objects cost nothing: once the status says what the operator knows, resyncs write nothing."""
from __future__ import annotations

from .conftest import (RESYNC_SECONDS, STORAGES_URL, check_bookkeeping, create, image_body,
                       images_url, storage_body, wait_for)


async def test_resync_of_unchanged_objects_writes_nothing(k8s, operator):
    assert RESYNC_SECONDS == 1.0  # set for these tests before rbd_operator.handlers was imported

    await create(k8s, STORAGES_URL, storage_body("idle-storage", {"pool": {"parameters": {"bogus_key": "1"}}}))
    await create(k8s, images_url("vms"), image_body("vms", "idle-image", {"storage": "idle-storage", "size": "1Gi",
                                                                          "objectSize": "3Mi"}))
    objects = (("rbdstorages", "idle-storage"), ("rbdimages", "idle-image"))
    for plural, name in objects:
        await wait_for(lambda: operator.patches(plural, name, status=True), what=f"the status of {name}")
        await wait_for(lambda: operator.events(reason="InvalidSpec", name=name), what=f"the Event of {name}")
        await wait_for(lambda: operator.handled(plural, name),
                       what=f"kopf to finish with {name}")

    writes_before = len(operator.writes())
    ticks_before = len(operator.log("idle-storage", "Timer 'resync' succeeded"))
    await wait_for(lambda: len(operator.log("idle-storage", "Timer 'resync' succeeded")) >= ticks_before + 2,
                   timeout=6 * RESYNC_SECONDS, what="two resyncs of the storage")

    # The storage's timer ran converge() twice over an object whose status is current, and images have
    # no timer of their own (the storage's sweep verifies them): not a single write.
    assert [f"{r.method.value} {r.url.path}" for r in operator.writes()[writes_before:]] == []
    assert operator.log("idle-image", "Timer") == [], "images have no per-object timer"
    for plural, name in objects:
        assert len(operator.patches(plural, name, status=True)) == 1
        assert len(operator.events(reason="InvalidSpec", name=name)) == 1
        check_bookkeeping(operator, plural, name)
