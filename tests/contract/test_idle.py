"""Idle objects cost nothing: once the status says what the operator knows, resyncs write nothing."""
from __future__ import annotations

from .conftest import (ANNOTATION_PREFIX, RESYNC_SECONDS, STORAGES_URL, check_bookkeeping, create, image_body,
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
        await wait_for(lambda: [a for a in operator.annotation_patches(plural, name)
                                if f"{ANNOTATION_PREFIX}last-handled-configuration" in a],
                       what=f"kopf to finish with {name}")

    writes_before = len(operator.writes())
    ticks_before = {name: len(operator.log(name, "Timer 'resync' succeeded")) for _, name in objects}
    await wait_for(lambda: all(len(operator.log(name, "Timer 'resync' succeeded")) >= ticks_before[name] + 2
                               for _, name in objects), timeout=6 * RESYNC_SECONDS, what="two resyncs of each object")

    # Both timers ran converge() twice over objects whose status is current: not a single write.
    assert [f"{r.method.value} {r.url.path}" for r in operator.writes()[writes_before:]] == []
    for plural, name in objects:
        assert len(operator.patches(plural, name, status=True)) == 1
        assert len(operator.events(reason="InvalidSpec", name=name)) == 1
        check_bookkeeping(operator, plural, name)
