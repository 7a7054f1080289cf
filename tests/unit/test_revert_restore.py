"""spec.revert and spec.source.trash: the pure decisions (reconcile/image_plan.py, reconcile/tracking.py)."""

import pytest

from rbd_operator.api.errors import Refused, SpecError, Waiting
from rbd_operator.api.image import features_to_bits, parse_image
from rbd_operator.reconcile.image_plan import (ObservedImage, RevertRequest, TrashedImage, pick_trashed, plan_image,
                                               sweep_verdict)
from rbd_operator.reconcile.ownership import ImageOwner
from rbd_operator.reconcile.tracking import resolve_revert

GI = 2**30
FEATURES = features_to_bits(["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"])
ME = ImageOwner("ns", "disk", "uid-new", "cluster-a", "ns-uid")
GONE = ImageOwner("ns", "disk", "uid-old", "cluster-a", "ns-uid")


def image(**spec):
    return parse_image("disk", {"storage": "s", "size": "1Gi", **spec})


def observed(size=GI, watchers=(), snapshots=None, owner=ME.record, image_id="id-1"):
    return ObservedImage(size=size, features=FEATURES, id=image_id, owner=owner, watchers=list(watchers),
                         snapshots={"s1": GI} if snapshots is None else snapshots)


def request(generation=1, applied=0, snap="s1", problem=None, image_id="id-1", nodes=None):
    return RevertRequest(generation, "snap-a", snap, problem, applied, image_id, nodes or {})


def kinds(plan):
    return [s.kind for s in plan]


# -- spec -----------------------------------------------------------------------------------------------
def test_spec_revert_and_source_trash_are_parsed_and_checked():
    spec = image(revert={"snapshot": "snap-a", "generation": 3})
    assert spec.revert and (spec.revert.snapshot, spec.revert.generation) == ("snap-a", 3)
    for bad in ({"snapshot": "Bad_Name", "generation": 1}, {"snapshot": "a", "generation": -1},
                {"snapshot": "a", "generation": True}, {"snapshot": "a"}, "snap-a"):
        with pytest.raises(SpecError):
            image(revert=bad)
    restored = parse_image("disk", {"storage": "s", "source": {"trash": True}})
    assert restored.source and restored.source.trash and restored.size is None
    with pytest.raises(SpecError):
        image(source={"trash": True, "image": "x", "snapshot": "y"})
    with pytest.raises(SpecError):
        image(source={"trash": "yes"})


# -- revert ---------------------------------------------------------------------------------------------
def test_a_raised_generation_reverts_first_and_records_it():
    plan = plan_image(image(revert={"snapshot": "snap-a", "generation": 1}), observed(), ME, revert=request())
    assert kinds(plan) == ["revert"] and plan[0].snapshot == "s1" and plan.revert_generation == 1
    assert plan[0].reason == "Reverted"


def test_a_generation_not_above_the_recorded_one_does_nothing():
    plan = plan_image(image(), observed(), ME, revert=request(generation=2, applied=2))
    assert plan == [] and plan.revert_generation == 2
    plan = plan_image(image(), observed(), ME, revert=request(generation=1, applied=2))
    assert plan == [] and plan.revert_generation == 2  # lowered: nothing, the record stays


def test_creation_adoption_and_a_new_image_record_the_generation_without_reverting():
    plan = plan_image(image(), None, ME, revert=request(generation=5, applied=None, image_id=None))
    assert kinds(plan) == ["create"] and plan.revert_generation == 5
    # status lost or another image under the name: the spec's generation is recorded, no rollback
    for image_id in (None, "id-other"):
        plan = plan_image(image(), observed(), ME, revert=request(generation=5, applied=None, image_id=image_id))
        assert plan == [] and plan.revert_generation == 5
    # adoption of an image a deleted RbdImage of the namespace left (Retain): claimed, not reverted
    plan = plan_image(image(adopt=True), observed(owner=GONE.record), ME, live=lambda uid: uid != GONE.uid,
                      revert=request(generation=5, applied=3))
    assert kinds(plan) == ["set-owner"] and plan.revert_generation == 5
    # an image converged before spec.revert was set: generation 1 is above "none yet"
    plan = plan_image(image(), observed(), ME, revert=request(generation=1, applied=None, image_id="id-1"))
    assert kinds(plan) == ["revert"]


def test_a_watched_image_is_not_reverted_and_the_message_names_the_node():
    with pytest.raises(Waiting) as err:
        plan_image(image(), observed(watchers=["10.0.0.7:0/123"]), ME,
                   revert=request(nodes={"10.0.0.7": "hv-1"}))
    assert err.value.reason == "InUse" and "hv-1" in err.value.message and "nothing was changed" in err.value.message


def test_the_snapshot_must_exist_and_resolve():
    with pytest.raises(Waiting) as err:
        plan_image(image(), observed(snapshots={}), ME, revert=request())
    assert err.value.reason == "SnapshotNotFound"
    problem = Refused("SourceNotAllowed", "not this image's")
    with pytest.raises(Refused) as refused:
        plan_image(image(), observed(), ME, revert=request(snap=None, problem=problem))
    assert refused.value.reason == "SourceNotAllowed"
    # a problem with a revert already done (its RbdSnapshot deleted since) blocks nothing
    assert plan_image(image(), observed(), ME, revert=request(generation=1, applied=1, snap=None,
                                                              problem=problem)) == []


def test_revert_then_the_spec_size_from_the_snapshot_s_size():
    plan = plan_image(image(size="2Gi"), observed(size=2 * GI, snapshots={"s1": GI}), ME, revert=request())
    assert kinds(plan) == ["revert", "resize"] and plan[1].size == 2 * GI


def test_resolve_revert_same_image_only():
    entry = {"uid": "u", "image": "disk", "name": "s1", "ready": True}
    assert resolve_revert("snap-a", "disk", "ns", entry) == "s1"
    with pytest.raises(Refused) as err:
        resolve_revert("snap-a", "other", "ns", entry)
    assert err.value.reason == "SourceNotAllowed"
    with pytest.raises(Refused):
        resolve_revert("snap-a", "other", "ns", {**entry, "ready": False})
    for missing in (None, {**entry, "ready": False}):
        with pytest.raises(Waiting) as waiting:
            resolve_revert("snap-a", "disk", "ns", missing)
        assert waiting.value.reason == "SnapshotPending"


def test_the_sweep_leaves_a_revert_waiting_for_its_watchers_to_the_handler():
    spec = image(revert={"snapshot": "snap-a", "generation": 1})
    for reason in ("InUse", "SourceNotAllowed", "SnapshotPending", "SnapshotNotFound"):
        assert not sweep_verdict(spec, observed(), ME, ("False", reason))
        assert sweep_verdict(image(), observed(), ME, ("False", reason))
    assert sweep_verdict(spec, observed(), ME, ("False", "CephUnreachable"))
    assert sweep_verdict(image(revert={"snapshot": "snap-a", "generation": 1}, size="2Gi"), observed(), ME,
                         ("False", "InUse"))  # drift beside the revert: reconciled


# -- restore from the trash -----------------------------------------------------------------------------
def trashed(owner=GONE, mark=True, name="disk", image_id="t1", deleted_at=100.0, user=True):
    img = ObservedImage(size=GI, features=FEATURES, id=image_id, owner=owner.record)
    return TrashedImage(image_id, name, img, owner.record if mark else None, deleted_at, user)


def test_restore_picks_the_namespace_s_own_trashed_image():
    spec = parse_image("disk", {"storage": "s", "source": {"trash": True}})
    plan = plan_image(spec, None, ME, trashed=(trashed(),))
    assert kinds(plan) == ["restore"] and plan[0].image_id == "t1" and plan[0].owner == ME.record
    assert plan[0].reason == "Restored" and ME.record not in plan[0].describe()


def test_restore_then_converges_to_the_spec():
    spec = parse_image("disk", {"storage": "s", "size": "2Gi", "source": {"trash": True}})
    assert kinds(plan_image(spec, None, ME, trashed=(trashed(),))) == ["restore", "resize"]


def test_never_another_namespace_s_cluster_s_or_unmarked_image():
    others = (
        trashed(owner=ImageOwner("other", "disk", "u", "cluster-a", "o-uid")),     # another namespace
        trashed(owner=ImageOwner("ns", "disk", "u", "cluster-b", "ns-uid")),       # another cluster
        trashed(owner=ImageOwner("ns", "disk", "u", "cluster-a", "old-ns-uid")),   # the namespace made again
        trashed(owner=ImageOwner("ns", "other", "u", "cluster-a", "ns-uid")),      # another RbdImage's
        trashed(mark=False),                                                        # moved by hand
        trashed(name="elsewhere"),                                                  # another image name
        trashed(user=False),                                                        # librbd's own removal
    )
    spec = parse_image("disk", {"storage": "s", "source": {"trash": True}})
    for entry in others:
        assert pick_trashed("disk", (entry,), ME) is None, entry
    with pytest.raises(Refused) as err:
        plan_image(spec, None, ME, trashed=others)
    assert err.value.reason == "NotInTrash" and "other" not in err.value.message


def test_a_restore_cut_short_is_found_by_its_new_tag_and_the_latest_deletion_wins():
    half = trashed(owner=ME, mark=False, image_id="t-half", deleted_at=1.0)
    assert pick_trashed("disk", (trashed(deleted_at=500.0), half), ME) is half
    newest = trashed(image_id="t-new", deleted_at=200.0)
    assert pick_trashed("disk", (trashed(image_id="t-old", deleted_at=100.0), newest), ME) is newest


def test_an_existing_image_is_not_restored_over():
    spec = parse_image("disk", {"storage": "s", "size": "1Gi", "source": {"trash": True}})
    assert plan_image(spec, observed(), ME, trashed=(trashed(),)) == []
