"""The drift sweep's quiet verdicts, reused only with equal inputs (reconcile/verdicts.py, converge/image.py sweep)."""
from __future__ import annotations

import dataclasses

import pytest

from rbd_operator.adapters.namespaces import NamespaceInfo
from rbd_operator.api.storage import parse_storage
from rbd_operator.converge import image as converge
from rbd_operator.reconcile import image_plan
from rbd_operator.reconcile.image_plan import ObservedImage
from rbd_operator.reconcile.ownership import ImageOwner
from rbd_operator.reconcile.tracking import Tracked
from rbd_operator.reconcile.verdicts import VerdictMemo, header_key

CLUSTER, NS_UID = "c1c1c1c1-0000-4000-8000-000000000001", "a1a1a1a1-0000-4000-8000-000000000002"
GIB = 2**30
STORAGE_RAW = {"cluster": {"monitors": ["h:3300"], "adminSecretRef": {"name": "a", "namespace": "b"}},
               "pool": {"name": "p"}, "client": {"name": "p"}}


def tracked(i: int, size: str = "1Gi", reason: str = "Converged") -> Tracked:
    return Tracked.of(f"img-{i}", "vms", f"uid-{i}", {
        "metadata": {"generation": 1, "creationTimestamp": "2026-12-07T00:00:00Z"},
        "spec": {"storage": "p", "size": size},
        "status": {"acceptedGeneration": 1, "imageId": f"id{i}", "sizeBytes": GIB, "watchers": [],
                   "conditions": [{"type": "Ready", "status": "True" if reason == "Converged" else "False",
                                   "reason": reason, "observedGeneration": 1}]}})


def header(i: int, **changes) -> ObservedImage:
    owner = ImageOwner("vms", f"img-{i}", f"uid-{i}", CLUSTER, NS_UID).record
    return dataclasses.replace(ObservedImage(size=GIB, features=61, id=f"id{i}", owner=owner, flags=0), **changes)


CHANGED = {"size": 2 * GIB, "features": 1, "id": "other", "parent": {"present": True}, "watchers": ["10.0.0.1:0/1"],
           "owner": "vms/img-0/uid-9", "qos": {"rbd_qos_iops_limit": 10}, "old_format": True, "flags": 1,
           "snapshots": {"s": GIB}}


def test_the_header_key_covers_every_field_of_a_header():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(ObservedImage)}, "a new field: add it to header_key"
    for name, value in CHANGED.items():
        assert header_key(header(0, **{name: value})) != header_key(header(0)), name
    assert header_key(header(0)) == header_key(header(0))


def test_a_verdict_is_reused_only_with_every_input_equal():
    memo, t, h, ctx = VerdictMemo(), tracked(0), header(0), (NamespaceInfo(NS_UID, {}), None)
    first = memo.sweep("p", ("spec", CLUSTER))
    assert not first.quiet(t, h, ctx) and first.name_of(t) is None
    first.remember(t, "img-0", h, ctx)
    first.done()
    again = memo.sweep("p", ("spec", CLUSTER))
    assert again.name_of(t) == "img-0" and again.quiet(t, header(0), ctx)
    assert again.name_of(tracked(0)) == "img-0", "an equal entry (a relisting) is the same entry"
    assert not again.quiet(tracked(0, size="2Gi"), h, ctx), "the spec changed"
    assert again.name_of(tracked(0, size="2Gi")) is None
    assert not again.quiet(tracked(0, reason="InUse"), h, ctx), "its status changed"
    assert not again.quiet(t, None, ctx), "the image is gone from Ceph"
    for name, value in CHANGED.items():
        assert not again.quiet(t, header(0, **{name: value}), ctx), f"the header's {name} changed"
    assert not again.quiet(t, h, (NamespaceInfo(NS_UID, {"tenant": "b"}), None)), "the namespace's labels changed"
    assert not again.quiet(t, h, (NamespaceInfo("another-uid", {}), None)), "another namespace of that name"
    assert not again.quiet(t, h, (NamespaceInfo(NS_UID, {}), "usage")), "the namespace's usage changed"
    assert not memo.sweep("p", ("spec changed", CLUSTER)).quiet(t, h, ctx), "the storage's spec changed"
    assert not memo.sweep("p", ("spec", "another cluster")).quiet(t, h, ctx)
    assert not memo.sweep("q", ("spec", CLUSTER)).quiet(t, h, ctx), "another storage"


def test_a_sweep_keeps_only_what_it_looked_up_and_a_sweep_cut_short_keeps_the_last():
    memo, ctx = VerdictMemo(), (None, None)
    first = memo.sweep("p", "basis")
    for i in range(3):
        first.remember(tracked(i), f"img-{i}", header(i), ctx)
    first.done()
    assert len(memo) == 3
    cut = memo.sweep("p", "basis")
    assert cut.quiet(tracked(0), header(0), ctx)  # no done(): the sweep failed half-way
    assert len(memo) == 3
    second = memo.sweep("p", "basis")
    assert second.quiet(tracked(0), header(0), ctx) and not second.quiet(tracked(1), header(1, size=1), ctx)
    second.done()  # img-1 changed, img-2 is gone: neither is kept
    assert len(memo) == 1
    memo.forget("p")
    assert len(memo) == 0


class Index(dict):
    pass


def platform(n: int, monkeypatch, headers: dict[str, ObservedImage], owner_lookups: list[str]):
    """The sweep of storage "p" over n images with its I/O faked: what it pokes, how often it plans."""
    entries = [tracked(i) for i in range(n)]
    images = Index({("storage", "p"): entries, **{("uid", t.uid): [True] for t in entries}})
    namespaces = {"vms": [NamespaceInfo(NS_UID, {})]}
    idx = converge.Indexes({}, images, {}, {}, namespaces)
    poked, planned = [], []

    async def identity(namespaces):
        return CLUSTER

    async def run_blocking(fn, *args, **kwargs):
        if fn is converge._headers:
            return dict(headers), None
        if fn is converge.kube.poke:
            poked.append(args[4])
            return None
        raise AssertionError(f"unexpected call {fn}")

    async def no_watchers(*args):
        return {}

    async def no_used(*args):
        return 0

    real = image_plan.plan_image

    def counting(spec, *args, **kwargs):
        planned.append(spec.name)
        return real(spec, *args, **kwargs)

    def live(uid):
        owner_lookups.append(uid)
        return uid in {t.uid for t in entries}

    monkeypatch.setattr(converge, "cluster_identity", identity)
    monkeypatch.setattr(converge, "run_blocking", run_blocking)
    monkeypatch.setattr(converge, "_listed_watchers", no_watchers)
    monkeypatch.setattr(converge.used_space, "refresh", no_used)
    monkeypatch.setattr(image_plan, "plan_image", counting)
    monkeypatch.setattr(converge.tracking, "by_uid", lambda index: type("L", (), {"__contains__": staticmethod(live)})())
    return idx, poked, planned


@pytest.fixture
def storage():
    return parse_storage("p", STORAGE_RAW)


async def test_an_unchanged_image_is_planned_once_and_a_change_in_ceph_is_still_found(monkeypatch, storage):
    headers = {f"img-{i}": header(i) for i in range(5)}
    idx, poked, planned = platform(5, monkeypatch, headers, [])
    memory = converge.SweepMemory()
    busy = lambda uid: False  # noqa: E731
    for _ in range(3):
        await converge.sweep("p", storage, None, idx, busy, memory, converge.logging.getLogger("t"))
    assert poked == [] and sorted(planned) == [f"img-{i}" for i in range(5)], "planned again with equal inputs"
    assert len(memory.verdicts) == 5

    headers["img-3"] = header(3, size=2 * GIB)  # grown by hand
    del headers["img-4"]                         # removed by hand
    planned.clear()
    await converge.sweep("p", storage, None, idx, busy, memory, converge.logging.getLogger("t"))
    assert poked == ["img-3", "img-4"]
    assert planned == ["img-3"], "img-4 has no header: found without a plan"
    assert len(memory.verdicts) == 3


async def test_a_verdict_that_looked_up_another_owner_is_made_afresh_every_sweep(monkeypatch, storage):
    """An image whose owner record names another RbdImage: refused (OwnedByOther) while that one lives. That
    depends on the index, not on the verdict's inputs: never reused."""
    other = ImageOwner("vms", "img-1", "uid-1", CLUSTER, NS_UID).record
    headers = {"img-0": header(0, owner=other), "img-1": header(1)}
    lookups: list[str] = []
    idx, poked, planned = platform(2, monkeypatch, headers, lookups)
    idx.images[("storage", "p")][0] = Tracked.of("img-0", "vms", "uid-0", {
        "metadata": {"generation": 1}, "spec": {"storage": "p", "size": "1Gi"},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "OwnedByOther",
                                   "observedGeneration": 1}]}})
    memory = converge.SweepMemory()
    for _ in range(3):
        await converge.sweep("p", storage, None, idx, lambda uid: False, memory, converge.logging.getLogger("t"))
    assert poked == [] and lookups == ["uid-1"] * 3 and planned.count("img-0") == 3 and planned.count("img-1") == 1
    assert len(memory.verdicts) == 1


async def test_a_storage_change_plans_every_image_again(monkeypatch, storage):
    headers = {f"img-{i}": header(i) for i in range(3)}
    idx, poked, planned = platform(3, monkeypatch, headers, [])
    memory, log = converge.SweepMemory(), converge.logging.getLogger("t")
    await converge.sweep("p", storage, None, idx, lambda uid: False, memory, log)
    quota = parse_storage("p", {**STORAGE_RAW, "pool": {"name": "p", "quota": {"maxBytes": "512Mi"}}})
    await converge.sweep("p", quota, None, idx, lambda uid: False, memory, log)
    assert len(planned) == 6 and sorted(poked) == ["img-0", "img-1", "img-2"], "beyond the new quota: reported"


async def test_a_busy_image_is_neither_planned_nor_remembered(monkeypatch, storage):
    idx, poked, planned = platform(2, monkeypatch, {f"img-{i}": header(i) for i in range(2)}, [])
    memory = converge.SweepMemory()
    await converge.sweep("p", storage, None, idx, lambda uid: uid == "uid-0", memory, converge.logging.getLogger("t"))
    assert planned == ["img-1"] and len(memory.verdicts) == 1
