from rbd_operator.api.errors import SpecError
from rbd_operator.api.storage import parse_storage
from rbd_operator.reconcile.storage_plan import ObservedPool, plan_client, plan_pool

import pytest

BASE = {"cluster": {"monitors": ["h:3300"], "adminSecretRef": {"name": "a", "namespace": "b"}}}


def dump(**over):
    pool = {"pool": 3, "pool_name": "vms", "pg_num": 128, "pg_num_target": 128, "size": 1,
            "quota_max_bytes": 0, "quota_max_objects": 0, "application_metadata": {"rbd": {}},
            "pg_autoscale_mode": "off", "options": {}, "flags_names": "hashpspool"}
    pool.update(over)
    return ObservedPool.from_osd_dump(pool)


def kinds(actions):
    return [(a.kind, a.args.get("var") or a.args.get("field")) for a in actions]


def test_new_pool():
    spec = parse_storage("vms", BASE)
    actions = plan_pool(spec, None, {})
    assert kinds(actions) == [("create-pool", None), ("set-pool", "pg_autoscale_mode"), ("rbd-pool-init", None)]
    assert actions[0].args == {"pg_num": 128}


def test_converged_pool_needs_nothing():
    spec = parse_storage("vms", BASE)
    assert plan_pool(spec, dump(), {"vms": dump()}) == []


def test_drift_is_corrected():
    spec = parse_storage("vms", {**BASE, "pool": {"pgNum": 64, "replicas": 2, "quota": {"maxBytes": "1Gi"},
                                                  "parameters": {"compression_mode": "aggressive", "nodelete": "true"}}})
    observed = dump(options={"compression_mode": "none"})
    assert kinds(plan_pool(spec, observed, {"vms": observed})) == [
        ("set-pool", "pg_num"), ("set-pool", "pgp_num"), ("set-pool", "size"),
        ("set-pool", "compression_mode"), ("set-pool", "nodelete"), ("set-quota", "max_bytes")]
    converged = dump(pg_num_target=64, size=2, quota_max_bytes=2**30, options={"compression_mode": "aggressive"},
                     flags_names="hashpspool,nodelete")
    assert plan_pool(spec, converged, {"vms": converged}) == []


def test_quota_removed_when_unset():
    spec = parse_storage("vms", BASE)
    observed = dump(quota_max_objects=10)
    assert kinds(plan_pool(spec, observed, {})) == [("set-quota", "max_objects")]


def test_missing_cache_pool_is_bad_input_before_any_step():
    spec = parse_storage("vms", {**BASE, "client": {"cachePool": "hot"}})
    with pytest.raises(SpecError) as err:
        plan_pool(spec, None, {})
    assert err.value.reason == "CachePoolNotFound"


def test_client_plan():
    want = {"mon": "profile rbd"}
    assert [a.kind for a in plan_client("client.x", want, None)] == ["create-client"]
    assert [a.kind for a in plan_client("client.x", want, {"mon": "allow r"})] == ["set-caps"]
    assert plan_client("client.x", want, {"mon": "profile rbd"}) == []


def test_caps_never_leak_keys_into_descriptions():
    action = plan_client("client.x", {"mon": "profile rbd"}, None)[0]
    assert action.describe() == "create-client client.x (caps=mon 'profile rbd')"
