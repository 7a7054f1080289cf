"""Tenancy, pure: owner records with the cluster identity, the storage's adoption grant, imageLimits."""

from __future__ import annotations

import pytest

from rbd_operator.api.errors import Refused, SpecError, Waiting
from rbd_operator.api.image import features_to_bits, parse_image
from rbd_operator.api.storage import ImageLimits, NamespaceLimits, parse_storage
from rbd_operator.reconcile.image_plan import ObservedImage, ObservedSource, Tenancy, plan_image, sweep_verdict
from rbd_operator.reconcile.limits import (LimitInput, Usage, UsageEntry, check_limits, effective_qos,
                                           namespace_usage, trash_delay)
from rbd_operator.reconcile.ownership import (Decision, ImageOwner, Record, Subject, check_image_owner, decide,
                                              staging_name)
from rbd_operator.reconcile.storage_plan import (POOL_CLUSTER_KEY, POOL_OWNER_KEY, ObservedPool, owns_client,
                                                 plan_client, plan_pool, with_owner, without_owner)

GI = 2**30
CLUSTER, OTHER_CLUSTER = "c0ffee00-0000-4000-8000-000000000001", "beef0000-0000-4000-8000-000000000002"
NS_UID, NEW_NS_UID = "11111111-0000-4000-8000-000000000001", "22222222-0000-4000-8000-000000000002"
ME = ImageOwner("vms", "disk", "uid-1", CLUSTER, NS_UID)
BASE = {"cluster": {"monitors": ["h:3300"], "adminSecretRef": {"name": "a"}}}


def image(**spec):
    return parse_image("disk", {"storage": "s", **spec})


def observed(size=GI, owner=None, watchers=(), **kw):
    bits = features_to_bits(["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"])
    return ObservedImage(size=size, features=bits, id="abc", owner=owner, watchers=list(watchers), **kw)


def refused(fn, *args, **kwargs) -> Refused:
    with pytest.raises(Refused) as err:
        fn(*args, **kwargs)
    return err.value


# -- owner records --------------------------------------------------------------------------------
def test_an_owner_record_carries_the_cluster_and_the_namespace_uid_and_reads_earlier_records():
    assert ME.record == f"vms/disk/uid-1@{CLUSTER}/{NS_UID}"
    assert ImageOwner.parse(ME.record) == ME
    assert ME.legacy == "vms/disk/uid-1"
    legacy = ImageOwner.parse("vms/disk/uid-1")
    assert legacy == ImageOwner("vms", "disk", "uid-1") and legacy.cluster is None
    assert ME.owns(ME.record) and ME.owns("vms/disk/uid-1"), "this release's record and an earlier one's"
    assert not ME.owns(f"vms/disk/uid-1@{OTHER_CLUSTER}/{NS_UID}"), "the same uid in another cluster: not ours"
    assert not ME.owns("vms/disk/uid-2") and not ME.owns(None)
    # Staging names (a crashed creation's leftovers) must not change with the record's format.
    assert staging_name(ME.legacy) == staging_name("vms/disk/uid-1")


@pytest.mark.parametrize("hostile", [
    "", "a/b", "a/b/c/d", "//", "a//c", "a/b/c@", "a/b/c@/x", "a/b/c@bad cluster/x", "a/b/c@c/ns uid",
    "a/b/c@" + "x" * 200, "x" * 5000, "a/b/c@c\n/x", "a/b/c@ü/x",
])
def test_unreadable_owner_records_are_nobody_s_and_never_ours(hostile):
    parsed = ImageOwner.parse(hostile)
    if parsed is not None:  # a readable shape: then it names someone else
        assert not ME.owns(hostile)
        return
    assert not ME.owns(hostile)
    err = refused(check_image_owner, "image 'x'", hostile, ME, False, lambda uid: False, True)
    assert err.reason in ("OwnedByOther", "NotOwned")
    assert hostile[:40] not in err.message or not hostile


def test_ours_in_either_format_and_earlier_records_are_upgraded():
    live = lambda uid: True  # noqa: E731
    assert check_image_owner("x", ME.record, ME, False, live, False) == Decision.OURS
    assert check_image_owner("x", ME.legacy, ME, False, live, False) == Decision.UPGRADE
    actions = plan_image(image(size="1Gi"), observed(owner=ME.legacy), ME)
    assert [(a.kind, a.owner) for a in actions] == [("upgrade-owner", ME.record)]
    assert plan_image(image(size="1Gi"), observed(owner=ME.record), ME) == []


def test_adoption_needs_the_grant_except_for_an_image_left_in_the_same_namespace():
    gone = lambda uid: False  # noqa: E731
    hand_made = None
    assert refused(check_image_owner, "x", hand_made, ME, True, gone, False).reason == "AdoptionNotAllowed"
    assert check_image_owner("x", hand_made, ME, True, gone, True) == Decision.CLAIM
    # Left by a deleted RbdImage of the same namespace (same namespace uid, or an earlier release's record).
    for left in (f"vms/old/uid-0@{CLUSTER}/{NS_UID}", "vms/old/uid-0"):
        assert check_image_owner("x", left, ME, True, gone, False) == Decision.CLAIM
        assert refused(check_image_owner, "x", left, ME, False, gone, True).reason == "NotOwned"
    # A namespace deleted and made again under the same name is another namespace: the grant is needed.
    recreated = ImageOwner("vms", "disk", "uid-9", CLUSTER, NEW_NS_UID)
    err = refused(check_image_owner, "x", f"vms/old/uid-0@{CLUSTER}/{NS_UID}", recreated, True, gone, False)
    assert err.reason == "AdoptionNotAllowed"
    # Another namespace's left-over image: the grant too; its object is never named.
    err = refused(check_image_owner, "x", f"tenant-b/secret-db/uid-7@{CLUSTER}/{NEW_NS_UID}", ME, True, gone, False)
    assert err.reason == "AdoptionNotAllowed" and "tenant-b" not in err.message and "secret-db" not in err.message
    assert check_image_owner("x", f"tenant-b/secret-db/uid-7@{CLUSTER}/x", ME, True, gone, True) == Decision.CLAIM


def test_a_live_owner_is_never_taken_and_another_namespace_s_is_not_named():
    live = lambda uid: True  # noqa: E731
    err = refused(check_image_owner, "image 'db'", f"tenant-b/secret-db/uid-7@{CLUSTER}/x", ME, True, live, True)
    assert err.reason == "OwnedByOther" and "another RbdImage" in err.message
    assert "tenant-b" not in err.message and "secret-db" not in err.message
    err = refused(check_image_owner, "image 'db'", f"vms/other/uid-7@{CLUSTER}/{NS_UID}", ME, True, live, True)
    assert err.reason == "OwnedByOther" and "RbdImage vms/other" in err.message, "the same namespace may be named"


def test_another_cluster_s_record_is_owned_by_other_and_adoptable_only_with_the_grant():
    whatever = lambda uid: False  # noqa: E731 - nothing of the other cluster is known here
    theirs = f"vms/disk/uid-5@{OTHER_CLUSTER}/{NS_UID}"
    err = refused(check_image_owner, "x", theirs, ME, False, whatever, True)
    assert err.reason == "OwnedByOther" and "another Kubernetes cluster" in err.message
    assert refused(check_image_owner, "x", theirs, ME, True, whatever, False).reason == "AdoptionNotAllowed"
    assert check_image_owner("x", theirs, ME, True, whatever, True) == Decision.CLAIM
    # Its uid being live here proves nothing: records of another cluster are never checked against this one.
    assert refused(check_image_owner, "x", theirs, ME, False, lambda uid: True, True).reason == "OwnedByOther"


def test_pools_and_clients_carry_the_cluster_too():
    subject = Subject("pool 'p'", "spec.pool.adopt")
    me = Record("s-1", CLUSTER)
    gone = lambda uid: False  # noqa: E731
    assert decide(subject, [Record("s-1", CLUSTER)], me, False, gone) == Decision.OURS
    assert decide(subject, [Record("s-1")], me, False, gone) == Decision.UPGRADE
    err = refused(decide, subject, [Record("s-2", OTHER_CLUSTER)], me, False, gone)
    assert err.reason == "OwnedByOther" and "another Kubernetes cluster" in err.message
    assert decide(subject, [Record("s-2", OTHER_CLUSTER)], me, True, gone) == Decision.CLAIM
    assert Record.parse("s-1@" + CLUSTER) == me and str(me) == f"s-1@{CLUSTER}" and str(Record("s-1")) == "s-1"

    spec = parse_storage("p", BASE)

    def pool(owner, cluster=None):
        meta = {POOL_OWNER_KEY: owner, **({POOL_CLUSTER_KEY: cluster} if cluster else {})}
        return ObservedPool.from_osd_dump({"pool": 3, "pool_name": "p", "pg_num": 128, "pg_num_target": 128,
                                           "size": 1, "quota_max_bytes": 0, "quota_max_objects": 0,
                                           "application_metadata": {"rbd": meta}, "pg_autoscale_mode": "off",
                                           "options": {}, "flags_names": ""})
    legacy = plan_pool(spec, pool("s-1"), {"p": pool("s-1")}, "s-1", gone, CLUSTER)
    assert [(a.kind, a.cluster) for a in legacy] == [("upgrade-pool-owner", CLUSTER)]
    assert plan_pool(spec, pool("s-1", CLUSTER), {"p": pool("s-1", CLUSTER)}, "s-1", gone, CLUSTER) == []
    err = refused(plan_pool, spec, pool("s-1", OTHER_CLUSTER), {}, "s-1", gone, CLUSTER)
    assert err.reason == "OwnedByOther", "the same uid recorded by another cluster is not ours"

    owners = ["s-1", f"s-2@{OTHER_CLUSTER}"]
    assert owns_client(owners, "s-1", CLUSTER) and not owns_client(owners, "s-2", CLUSTER)
    assert with_owner(owners, "s-1", CLUSTER) == sorted([f"s-1@{CLUSTER}", f"s-2@{OTHER_CLUSTER}"])
    assert without_owner(with_owner(owners, "s-1", CLUSTER), "s-1", CLUSTER) == [f"s-2@{OTHER_CLUSTER}"]
    actions = plan_client("client.x", {"mon": "profile rbd"}, {"mon": "profile rbd"}, owners, "s-1", False, gone,
                          CLUSTER)
    assert [a.kind for a in actions] == ["upgrade-client-owners"]
    err = refused(plan_client, "client.x", None, {"mon": "profile rbd"}, [f"s-2@{OTHER_CLUSTER}"], "s-1", False,
                  gone, CLUSTER)
    assert err.reason == "OwnedByOther"
    shared = plan_client("client.x", None, {"mon": "profile rbd"}, [f"s-2@{OTHER_CLUSTER}"], "s-1", True, gone,
                         CLUSTER)
    assert shared[0].owners == tuple(sorted([f"s-1@{CLUSTER}", f"s-2@{OTHER_CLUSTER}"]))


# -- limits -----------------------------------------------------------------------------------------
LIMITS = ImageLimits(max_size=10 * GI, min_trash_retention_seconds=3600,
                     qos={"rbd_qos_iops_limit": 2000, "rbd_qos_bps_limit": 100 * 2**20}, data_pools=("ec-data",),
                     per_namespace=NamespaceLimits(max_images=3, max_bytes=20 * GI))


def test_a_new_image_beyond_any_limit_is_refused_naming_the_field_and_the_limit():
    cases = [
        (image(size="11Gi", trashRetention="2h"), "LimitExceeded", "spec.size", "spec.imageLimits.maxSize"),
        (image(size="1Gi", trashRetention="0s"), "LimitExceeded", "spec.trashRetention", "minTrashRetention"),
        (image(size="1Gi", trashRetention="2h", qos={"iopsLimit": 0}), "LimitExceeded", "spec.qos.iopsLimit",
         "(unlimited)"),
        (image(size="1Gi", trashRetention="2h", qos={"bpsLimit": "200Mi"}), "LimitExceeded", "spec.qos.bpsLimit",
         "spec.imageLimits.qos.bpsLimit"),
        (image(size="1Gi", trashRetention="2h", dataPool="other-pool"), "DataPoolNotAllowed", "spec.dataPool",
         "ec-data"),
    ]
    for spec, reason, field, limit in cases:
        err = refused(plan_image, spec, None, ME, tenancy=Tenancy(limits=LIMITS))
        assert (err.reason, field in err.message, limit in err.message) == (reason, True, True), err.message
        assert "Nothing was written in Ceph" in err.message
    ok = plan_image(image(size="10Gi", trashRetention="1h", dataPool="ec-data", qos={"iopsLimit": 2000}), None, ME,
                    tenancy=Tenancy(limits=LIMITS))
    assert [a.kind for a in ok] == ["create", "set-qos"]
    assert ok[1].qos == {"rbd_qos_iops_limit": 2000, "rbd_qos_bps_limit": 100 * 2**20}, "the ceiling"


def test_limits_are_checked_before_the_data_pool_is_looked_up_and_bind_clones_and_grows():
    err = refused(plan_image, image(size="1Gi", dataPool="secret-pool"), None, ME, data_pool_exists=False)
    assert err.reason == "DataPoolNotAllowed", "DataPoolNotFound would tell which pools exist"
    clone = image(source={"image": "base", "snapshot": "s"}, trashRetention="1h")
    source = ObservedSource(True, True, True, 12 * GI, owner=f"vms/base/uid-0@{CLUSTER}/{NS_UID}")
    err = refused(plan_image, clone, None, ME, source=source, tenancy=Tenancy(limits=LIMITS))
    assert err.reason == "LimitExceeded" and "spec.imageLimits.maxSize" in err.message, "a clone takes its source's size"
    grow = image(size="12Gi", trashRetention="1h")
    assert refused(plan_image, grow, observed(size=5 * GI, owner=ME.record), ME,
                   tenancy=Tenancy(limits=LIMITS, settled=True)).reason == "LimitExceeded", "a grow beyond maxSize"


def test_a_limit_added_later_keeps_what_exists_and_lowers_qos_to_the_ceiling():
    big = image(size="12Gi", trashRetention="0s", qos={"iopsLimit": 0})
    have = observed(size=12 * GI, owner=ME.record, qos={"rbd_qos_iops_limit": 0})
    plan = plan_image(big, have, ME, tenancy=Tenancy(limits=LIMITS, settled=True))
    assert [a.kind for a in plan] == ["set-qos"]
    assert plan[0].qos == {"rbd_qos_iops_limit": 2000, "rbd_qos_bps_limit": 100 * 2**20}
    assert len(plan.beyond) == 3 and any("maxSize" in b for b in plan.beyond)
    # The same spec, changed since it was accepted (a new generation): refused, nothing written.
    assert refused(plan_image, big, have, ME, tenancy=Tenancy(limits=LIMITS, settled=False)).reason == "LimitExceeded"
    # Within: nothing beyond.
    fine = plan_image(image(size="1Gi", trashRetention="1h"), observed(owner=ME.record, qos={
        "rbd_qos_iops_limit": 2000, "rbd_qos_bps_limit": 100 * 2**20}), ME, tenancy=Tenancy(limits=LIMITS))
    assert fine == [] and fine.beyond == ()


def test_effective_qos_image_then_defaults_then_ceiling_never_beyond():
    ceilings = {"rbd_qos_iops_limit": 2000, "rbd_qos_bps_limit": 1000}
    assert effective_qos(None, None, {}) is None, "not managed at all"
    assert effective_qos(None, None, ceilings) == ceilings
    assert effective_qos(None, {"rbd_qos_iops_limit": 500}, ceilings) == {"rbd_qos_iops_limit": 500,
                                                                         "rbd_qos_bps_limit": 1000}
    assert effective_qos(None, {"rbd_qos_iops_limit": 0}, ceilings)["rbd_qos_iops_limit"] == 2000, "0 = unlimited"
    assert effective_qos(None, {"rbd_qos_iops_limit": 9000}, ceilings)["rbd_qos_iops_limit"] == 2000
    assert effective_qos({"rbd_qos_iops_limit": 100}, {"rbd_qos_iops_limit": 500}, {}) == {"rbd_qos_iops_limit": 100}
    assert effective_qos({"rbd_qos_iops_limit": 0}, {"rbd_qos_iops_limit": 500}, {}) == {"rbd_qos_iops_limit": 0}, \
        "without a ceiling 0 (unlimited) is the image's to ask for"


def test_per_namespace_counts_are_race_free_the_older_request_wins():
    entries = [UsageEntry("a", "2026-01-01T00:00:01Z", 8 * GI, True, False),
               UsageEntry("b", "2026-01-01T00:00:02Z", 8 * GI, False, False),   # being created, older than c
               UsageEntry("c", "2026-01-01T00:00:02Z", 8 * GI, False, False),   # same second: uid decides
               UsageEntry("d", "2026-01-01T00:00:03Z", 50 * GI, False, True)]   # refused: holds nothing
    assert namespace_usage(entries, "b", "2026-01-01T00:00:02Z") == Usage(1, 8 * GI)
    assert namespace_usage(entries, "c", "2026-01-01T00:00:02Z") == Usage(2, 16 * GI)
    tenancy = lambda uid, created: Tenancy(limits=ImageLimits(per_namespace=NamespaceLimits(3, 20 * GI)),  # noqa
                                           usage=namespace_usage(entries, uid, created))
    spec = image(size="8Gi")
    assert [a.kind for a in plan_image(spec, None, ME, tenancy=tenancy("b", "2026-01-01T00:00:02Z"))] == ["create"]
    err = refused(plan_image, spec, None, ME, tenancy=tenancy("c", "2026-01-01T00:00:02Z"))
    assert err.reason == "LimitExceeded" and "perNamespace.maxBytes" in err.message
    many = Tenancy(limits=ImageLimits(per_namespace=NamespaceLimits(max_images=2)), usage=Usage(2, 0))
    assert "perNamespace.maxImages" in refused(plan_image, image(size="1Gi"), None, ME, tenancy=many).message
    # An existing image that does not grow is never refused for the namespace's total.
    full = Tenancy(limits=ImageLimits(per_namespace=NamespaceLimits(1, GI)), usage=Usage(5, 99 * GI))
    assert plan_image(image(size="1Gi"), observed(owner=ME.record), ME, tenancy=full) == []
    # An import without a size: bounded by the room left; no room at all is refused before fetching.
    imports = ("https://t.example/templates/",)
    url = {"url": "https://t.example/templates/debian.qcow2"}
    room = Tenancy(limits=ImageLimits(per_namespace=NamespaceLimits(max_bytes=20 * GI)), usage=Usage(1, 15 * GI))
    act = plan_image(image(source=url), None, ME, import_prefixes=imports, tenancy=room)[0]
    assert (act.limit, act.limit_reason) == (5 * GI, "LimitExceeded")
    act = plan_image(image(source=url), None, ME, 2 * GI, import_prefixes=imports, tenancy=room)[0]
    assert (act.limit, act.limit_reason) == (2 * GI, "SizeExceedsQuota")
    none_left = Tenancy(limits=ImageLimits(per_namespace=NamespaceLimits(max_bytes=GI)), usage=Usage(1, GI))
    assert refused(plan_image, image(source=url), None, ME, import_prefixes=imports,
                   tenancy=none_left).reason == "LimitExceeded"


def test_deletion_keeps_an_image_in_the_trash_at_least_the_minimum():
    assert trash_delay(0, LIMITS) == 3600 and trash_delay(7200, LIMITS) == 7200 and trash_delay(0, ImageLimits()) == 0


def test_shrinking_waits_while_the_image_has_watchers_whoever_owns_it():
    spec = image(size="512Mi", allowShrink=True)
    with pytest.raises(Waiting) as err:
        plan_image(spec, observed(owner=ME.record, watchers=["10.0.0.1:0/1"]), ME)
    assert err.value.reason == "InUse"
    assert [a.kind for a in plan_image(spec, observed(owner=ME.record), ME)] == ["resize"]
    # The sweep sees no watchers (headers only): it does not poke a shrink that waits for them every interval.
    assert not sweep_verdict(spec, observed(owner=ME.record), ME, ("False", "InUse"))


def test_the_sweep_reports_a_limit_added_later_once():
    spec = image(size="12Gi")
    have = observed(size=12 * GI, owner=ME.record)
    limits = Tenancy(limits=ImageLimits(max_size=10 * GI), settled=True)
    assert sweep_verdict(spec, have, ME, ("True", "Converged"), tenancy=limits), "WithinLimits not reported yet"
    assert not sweep_verdict(spec, have, ME, ("True", "Converged"), tenancy=limits, within=False), "already said"
    assert sweep_verdict(spec, have, ME, ("True", "Converged"), tenancy=Tenancy(), within=False), "limit lifted"
    assert not sweep_verdict(spec, have, ME, ("True", "Converged"), tenancy=Tenancy(), within=None)


# -- parsing ----------------------------------------------------------------------------------------
def test_image_limits_and_adoption_parse_and_hostile_values_are_refused():
    spec = parse_storage("s", {**BASE, "adoption": {"namespaces": {"matchLabels": {"tenant": "a"}}},
                               "imageLimits": {"maxSize": "1Ti", "minTrashRetention": "1h",
                                               "qos": {"iopsLimit": 2000, "bpsLimit": "100Mi"},
                                               "dataPools": ["ec", "ec"],
                                               "perNamespace": {"maxImages": 10, "maxBytes": "5Ti"}}})
    assert spec.adoption_namespaces == {"matchLabels": {"tenant": "a"}}
    assert spec.image_limits == ImageLimits(2**40, 3600, {"rbd_qos_iops_limit": 2000, "rbd_qos_bps_limit": 100 * 2**20},
                                            ("ec",), NamespaceLimits(10, 5 * 2**40))
    assert parse_storage("s", BASE).adoption_namespaces is None, "absent: nobody may adopt"
    assert parse_storage("s", BASE).image_limits.data_pools == (), "absent: no data pools"
    hostile = [
        {"maxSize": 0}, {"maxSize": "-1Gi"}, {"maxSize": "1e99"}, {"maxSize": "1e999999"}, {"maxSize": "lots"},
        {"minTrashRetention": "forever"}, {"minTrashRetention": 5}, {"qos": {"iopsLimit": 0}},
        {"qos": {"nope": 1}}, {"qos": {"iopsLimit": "9e99"}}, {"dataPools": "ec"}, {"dataPools": ["../x"]},
        {"dataPools": ["p"] * 65}, {"perNamespace": {"maxImages": -1}}, {"perNamespace": {"maxImages": True}},
        {"perNamespace": {"maxBytes": "-5"}}, {"perNamespace": [1]},
    ]
    for raw in hostile:
        with pytest.raises(SpecError):
            parse_storage("s", {**BASE, "imageLimits": raw})
    with pytest.raises(SpecError):
        parse_storage("s", {**BASE, "adoption": {"namespaces": {"matchExpressions": [{"key": "a", "operator": "Eq"}]}}})
    err = refused(check_limits, LimitInput(image(size="1Gi"), ImageLimits(max_size=GI // 2), True, None, GI))
    assert err.reason == "LimitExceeded"
