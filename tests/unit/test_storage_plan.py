import pytest

from rbd_operator.api.errors import Refused, SpecError
from rbd_operator.api.storage import parse_storage
from rbd_operator.reconcile.actions import ClaimPool, CreatePool
from rbd_operator.reconcile.ownership import staging_name
from rbd_operator.reconcile.storage_plan import POOL_OWNER_KEY, ObservedPool, plan_client, plan_pool

BASE = {"cluster": {"monitors": ["h:3300"], "adminSecretRef": {"name": "a"}}}
ME, OTHER = "uid-me", "uid-other"


def live(*uids):
    return set(uids).__contains__


def dump(owner=ME, **over):
    meta = {"rbd": {POOL_OWNER_KEY: owner} if owner else {}}
    pool = {"pool": 3, "pool_name": "vms", "pg_num": 128, "pg_num_target": 128, "size": 1,
            "quota_max_bytes": 0, "quota_max_objects": 0, "application_metadata": meta,
            "pg_autoscale_mode": "off", "options": {}, "flags_names": "hashpspool"}
    pool.update(over)
    return ObservedPool.from_osd_dump(pool)


def kinds(actions):
    return [(a.kind, getattr(a, "var", None) or getattr(a, "field", None)) for a in actions]


def plan(spec, observed, pools=None, alive=live(ME)):
    return plan_pool(spec, observed, pools if pools is not None else ({"vms": observed} if observed else {}), ME, alive)


def test_new_pool_is_staged_marked_and_renamed_in_one_step():
    spec = parse_storage("vms", BASE)
    actions = plan(spec, None)
    assert kinds(actions) == [("create-pool", None), ("set-pool", "pg_autoscale_mode"), ("rbd-pool-init", None)]
    assert actions[0] == CreatePool("vms", pg_num=128, app="rbd", owner=ME, cluster=None, staging=staging_name(ME),
                                    staged=False)


def test_a_staged_pool_left_by_a_crash_is_resumed():
    spec = parse_storage("vms", BASE)
    staged = dump(owner=None, pool_name=staging_name(ME))
    actions = plan(spec, None, {staging_name(ME): staged})
    assert actions[0].kind == "create-pool" and actions[0].staged is True


def test_owner_marker_is_read_from_application_metadata():
    assert dump().owner == ME
    assert dump(owner=None).owner is None


def test_converged_pool_needs_nothing():
    spec = parse_storage("vms", BASE)
    assert plan(spec, dump()) == []


def test_drift_is_corrected():
    spec = parse_storage("vms", {**BASE, "pool": {"pgNum": 64, "replicas": 2, "quota": {"maxBytes": "1Gi"},
                                                  "parameters": {"compression_mode": "aggressive", "nodelete": "true"}}})
    observed = dump(options={"compression_mode": "none"})
    assert kinds(plan(spec, observed)) == [
        ("set-pool", "pg_num"), ("set-pool", "pgp_num"), ("set-pool", "size"),
        ("set-pool", "compression_mode"), ("set-pool", "nodelete"), ("set-quota", "max_bytes")]
    converged = dump(pg_num_target=64, size=2, quota_max_bytes=2**30, options={"compression_mode": "aggressive"},
                     flags_names="hashpspool,nodelete")
    assert plan(spec, converged) == []


def test_quota_removed_when_unset_on_an_owned_pool():
    spec = parse_storage("vms", BASE)
    assert kinds(plan(spec, dump(quota_max_objects=10))) == [("set-quota", "max_objects")]


def test_unowned_pool_is_refused_before_any_step():
    spec = parse_storage("vms", BASE)
    with pytest.raises(Refused) as err:
        plan(spec, dump(owner=None, pg_num_target=16))
    assert err.value.reason == "NotOwned" and "spec.pool.adopt" in err.value.message


def test_pool_of_another_live_storage_is_refused_even_with_adopt():
    spec = parse_storage("vms", {**BASE, "pool": {"adopt": True}})
    with pytest.raises(Refused) as err:
        plan(spec, dump(owner=OTHER), alive=live(ME, OTHER))
    assert err.value.reason == "OwnedByOther"


def test_pool_of_a_gone_storage_needs_adopt():
    spec = parse_storage("vms", BASE)
    with pytest.raises(Refused) as err:
        plan(spec, dump(owner=OTHER))
    assert err.value.reason == "NotOwned" and "no longer exists" in err.value.message
    adopting = parse_storage("vms", {**BASE, "pool": {"adopt": True}})
    assert kinds(plan(adopting, dump(owner=OTHER))) == [("set-pool-owner", None)]


def test_adopted_pool_keeps_what_the_spec_does_not_state():
    spec = parse_storage("vms", {**BASE, "pool": {"adopt": True}})
    brownfield = dump(owner=None, pg_num_target=16, quota_max_bytes=5 * 2**30, pg_autoscale_mode="on")
    actions = plan(spec, brownfield)
    assert kinds(actions) == [("set-pool-owner", None)], "pg_num, autoscaler and quota stay as they are"
    assert actions[0] == ClaimPool("vms", app="rbd", owner=ME, cluster=None)
    # Once adopted (our marker), still only what the spec states.
    assert plan(spec, dump(pg_num_target=16, quota_max_bytes=5 * 2**30, pg_autoscale_mode="on")) == []
    stated = parse_storage("vms", {**BASE, "pool": {"adopt": True, "pgNum": 32}})
    assert kinds(plan(stated, dump(pg_num_target=16, pg_autoscale_mode="on"))) == [
        ("set-pool", "pg_num"), ("set-pool", "pgp_num"), ("set-pool", "pg_autoscale_mode")]


def test_missing_cache_pool_is_bad_input_before_any_step():
    spec = parse_storage("vms", {**BASE, "client": {"cachePool": "hot"}})
    with pytest.raises(SpecError) as err:
        plan(spec, None)
    assert err.value.reason == "CachePoolNotFound"


def test_client_plan_records_the_owner_before_creating():
    want = {"mon": "profile rbd"}
    assert [a.kind for a in plan_client("client.x", want, None, [], ME, False, live(ME))] == [
        "set-client-owners", "create-client"]
    # A crash after the record: the client is still ours.
    assert [a.kind for a in plan_client("client.x", want, None, [ME], ME, False, live(ME))] == ["create-client"]
    assert [a.kind for a in plan_client("client.x", want, {"mon": "allow r"}, [ME], ME, False, live(ME))] == ["set-caps"]
    assert plan_client("client.x", want, {"mon": "profile rbd"}, [ME], ME, False, live(ME)) == []


def test_existing_client_needs_adopt_and_keeps_its_caps_unless_stated():
    seed = {"mon": "allow r", "osd": "allow class-read object_prefix rbd_children, allow rwx pool=vmmgr"}
    with pytest.raises(Refused) as err:
        plan_client("client.vmmgr", {"mon": "profile rbd"}, seed, [], ME, False, live(ME))
    assert err.value.reason == "NotOwned"
    actions = plan_client("client.vmmgr", None, seed, [], ME, True, live(ME))
    assert [a.kind for a in actions] == ["set-client-owners"] and actions[0].owners == (ME,)


def test_shared_client_needs_adopt():
    with pytest.raises(Refused) as err:
        plan_client("client.x", {"mon": "profile rbd"}, {"mon": "profile rbd"}, [OTHER], ME, False, live(ME, OTHER))
    assert err.value.reason == "OwnedByOther"
    actions = plan_client("client.x", {"mon": "profile rbd"}, {"mon": "profile rbd"}, [OTHER], ME, True,
                          live(ME, OTHER))
    assert actions[0].owners == tuple(sorted([ME, OTHER]))


def test_caps_never_leak_keys_into_descriptions():
    action = plan_client("client.x", {"mon": "profile rbd"}, None, [ME], ME, False, live(ME))[0]
    assert action.describe() == "create-client client.x (caps=mon 'profile rbd')"


def test_capacity_in_status_moves_only_with_real_change():
    from rbd_operator.reconcile.storage_plan import capacity_to_report
    old = {"storedBytes": 10 * 2**30, "maxAvailBytes": 100 * 2**30, "quotaMaxBytes": 0}
    jitter = {"storedBytes": 10 * 2**30 + 4096, "maxAvailBytes": 100 * 2**30 - 3 * 2**20, "quotaMaxBytes": 0}
    assert capacity_to_report(old, jitter) is old
    grown = {**jitter, "storedBytes": 12 * 2**30}
    assert capacity_to_report(old, grown) == grown
    assert capacity_to_report(old, {**old, "quotaMaxBytes": 2**30})["quotaMaxBytes"] == 2**30
    assert capacity_to_report(None, jitter) == jitter
    assert capacity_to_report({"storedBytes": "x", "maxAvailBytes": 1, "quotaMaxBytes": 0}, jitter) == jitter
