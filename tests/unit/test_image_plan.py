import pytest

from rbd_operator.api.errors import Refused, SpecError, Waiting
from rbd_operator.api.image import features_to_bits, parse_image
from rbd_operator.api.storage import ImageLimits
from rbd_operator.reconcile.image_plan import ObservedImage, ObservedSource, Tenancy, plan_image
from rbd_operator.reconcile.ownership import staging_name

GI = 2**30
OWNER = "ns/disk/uid-1"
SOURCE = "ns/base/uid-0"


def image(**spec):
    return parse_image("disk", {"storage": "s", **spec})


def observed(size=GI, features=("layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"), **kw):
    return ObservedImage(size=size, features=features_to_bits(list(features)), id="abc", owner=kw.pop("owner", OWNER), **kw)


def kinds(actions):
    return [a.kind for a in actions]


def test_create_is_staged_under_an_owner_derived_name():
    actions = plan_image(image(size="1Gi"), None, OWNER)
    assert kinds(actions) == ["create"]
    assert actions[0].size == GI
    assert actions[0].owner == OWNER and actions[0].staging == staging_name(OWNER)
    assert staging_name(OWNER) != staging_name("ns/disk/uid-2")


def test_converged():
    assert plan_image(image(size="1Gi"), observed(), OWNER) == []


def test_grow_and_refuse_shrink():
    assert kinds(plan_image(image(size="2Gi"), observed(), OWNER)) == ["resize"]
    with pytest.raises(SpecError) as err:
        plan_image(image(size="512Mi"), observed(), OWNER)
    assert err.value.reason == "ShrinkNotAllowed"
    actions = plan_image(image(size="512Mi", allowShrink=True), observed(), OWNER)
    assert kinds(actions) == ["resize"] and actions[0].shrink


def test_quota():
    with pytest.raises(SpecError) as err:
        plan_image(image(size="2Gi"), None, OWNER, quota_max_bytes=GI)
    assert err.value.reason == "SizeExceedsQuota"


def test_unowned_image_needs_adopt_and_the_storage_s_grant():
    with pytest.raises(Refused) as err:
        plan_image(image(size="2Gi"), observed(owner=None), OWNER)
    assert err.value.reason == "NotOwned" and "spec.adopt" in err.value.message
    with pytest.raises(Refused) as err:
        plan_image(image(size="1Gi", adopt=True), observed(owner=None), OWNER)
    assert err.value.reason == "AdoptionNotAllowed" and "spec.adoption" in err.value.message
    assert kinds(plan_image(image(size="1Gi", adopt=True), observed(owner=None), OWNER,
                            tenancy=Tenancy(granted=True))) == ["set-owner"]


def test_image_of_another_object_is_never_taken():
    with pytest.raises(Refused) as err:
        plan_image(image(size="1Gi", adopt=True), observed(owner="other/x/1"), OWNER, tenancy=Tenancy(granted=True))
    assert err.value.reason == "OwnedByOther", "another namespace's live image"
    assert "other/x" not in err.value.message, "another namespace's object is never named"
    with pytest.raises(Refused) as err:
        plan_image(image(size="1Gi", adopt=True), observed(owner="other/x/1"), OWNER, live=lambda uid: False)
    assert err.value.reason == "AdoptionNotAllowed", "another namespace's left-over image needs the grant"
    with pytest.raises(Refused) as err:
        plan_image(image(size="1Gi", adopt=True), observed(owner="ns/x/2"), OWNER, live=lambda uid: True)
    assert err.value.reason == "OwnedByOther", "a live RbdImage's image"
    # Left by a deleted RbdImage of this namespace (deletionPolicy Retain): adoptable without a grant.
    assert kinds(plan_image(image(size="1Gi", adopt=True), observed(owner="ns/x/2"), OWNER,
                            live=lambda uid: uid == "uid-1")) == ["set-owner"]


def test_clone_source_must_be_owned_in_the_same_namespace():
    spec = image(source={"image": "base", "snapshot": "gold"})
    for owner in (None, "other/base/9", "ns/base/gone"):
        with pytest.raises(Refused) as err:
            plan_image(spec, None, OWNER, source=ObservedSource(True, True, True, GI, owner=owner),
                       live=lambda uid: uid != "gone")
        assert err.value.reason == "SourceNotAllowed"


def test_features_converge_in_dependency_order():
    actions = plan_image(image(size="1Gi", features=["layering"]), observed(), OWNER)
    assert [(a.kind, a.features, a.enabled) for a in actions] == [
        ("update-features", ("fast-diff", "object-map", "exclusive-lock"), False)]
    actions = plan_image(image(size="1Gi"), observed(features=("layering", "deep-flatten")), OWNER)
    assert (actions[0].features, actions[0].enabled) == (("exclusive-lock", "object-map", "fast-diff"), True)


def test_clone():
    spec = image(source={"image": "base", "snapshot": "gold", "flatten": True}, size="2Gi")
    actions = plan_image(spec, None, OWNER, source=ObservedSource(True, True, False, GI, owner=SOURCE))
    assert kinds(actions) == ["protect-snapshot", "clone", "resize", "flatten"]
    actions = plan_image(spec, None, OWNER, source=ObservedSource(True, True, True, 2 * GI, owner=SOURCE))
    assert kinds(actions) == ["clone", "flatten"]


def test_clone_source_missing_waits():
    spec = image(source={"image": "base", "snapshot": "gold"})
    with pytest.raises(Waiting) as err:
        plan_image(spec, None, OWNER, source=ObservedSource(False, False))
    assert err.value.reason == "SourceNotFound"
    with pytest.raises(Waiting) as err:
        plan_image(spec, None, OWNER, source=ObservedSource(True, False, owner=SOURCE))
    assert err.value.reason == "SnapshotNotFound"


def test_flatten_existing_clone():
    spec = image(size="1Gi", source={"image": "base", "snapshot": "gold", "flatten": True})
    parent = {"pool": "p", "image": "base", "snapshot": "gold"}
    assert kinds(plan_image(spec, observed(parent=parent), OWNER)) == ["flatten"]
    assert plan_image(spec, observed(parent=None), OWNER) == []


def test_missing_data_pool():
    with pytest.raises(SpecError) as err:
        plan_image(image(size="1Gi", dataPool="ec"), None, OWNER, data_pool_exists=False,
                   tenancy=Tenancy(limits=ImageLimits(data_pools=("ec",))))
    assert err.value.reason == "DataPoolNotFound"
    with pytest.raises(Refused) as err:  # not allowed: nothing says whether it exists
        plan_image(image(size="1Gi", dataPool="ec"), None, OWNER, data_pool_exists=False)
    assert err.value.reason == "DataPoolNotAllowed"


def test_sweep_asks_for_a_reconcile_only_when_the_status_is_no_longer_true():
    from rbd_operator.reconcile.image_plan import sweep_verdict
    spec = image(size="1Gi")
    ok = ("True", "Converged")
    assert not sweep_verdict(spec, observed(), OWNER, ok), "nothing changed: no write"
    assert sweep_verdict(spec, observed(size=2 * GI), OWNER, ok), "grown by hand: shrink refused now"
    assert not sweep_verdict(spec, observed(size=2 * GI), OWNER, ("False", "ShrinkNotAllowed")), "already said"
    assert sweep_verdict(spec, observed(size=GI // 2), OWNER, ok), "shrunk by hand: grow back"
    assert sweep_verdict(spec, observed(features=("layering",)), OWNER, ok), "features changed by hand"
    assert sweep_verdict(spec, None, OWNER, ok), "deleted by hand: recreate"
    assert not sweep_verdict(spec, None, OWNER, None), "not made yet: kopf retries it"
    assert sweep_verdict(spec, observed(owner="ns/other/9"), OWNER, ok, live=lambda uid: True)
    assert sweep_verdict(spec, observed(), OWNER, ("False", "CephUnreachable")), "back to normal"
    assert sweep_verdict(spec, observed(), OWNER, ok, namespace_allowed=False)
    assert not sweep_verdict(spec, observed(), OWNER, ("False", "NamespaceNotAllowed"), namespace_allowed=False)


def test_used_by_names_the_hypervisor_of_each_watcher():
    from rbd_operator.reconcile.image_plan import describe_users, used_by
    nodes = {"10.0.0.11": "hv1"}
    users = used_by(["10.0.0.11:0/3418127", "10.0.0.11:0/99", "10.0.0.99:0/1", "v1:[fd00::5]:0/7"], nodes)
    assert users == [{"node": "hv1", "address": "10.0.0.11"}, {"address": "10.0.0.99"}, {"address": "fd00::5"}]
    assert describe_users(users) == "HypervisorNode hv1 (10.0.0.11), 10.0.0.99, fd00::5"
