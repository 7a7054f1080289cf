import pytest

from rbd_operator.api.errors import SpecError
from rbd_operator.api.storage import parse_storage

BASE = {"cluster": {"monitors": ["10.254.0.1:3300"], "adminSecretRef": {"name": "ceph-admin", "namespace": "ceph"}}}


def spec(**parts):
    merged = dict(BASE)
    merged.update(parts)
    return merged


def test_defaults():
    s = parse_storage("vmstore", BASE)
    assert s.pool.name == "vmstore"
    assert s.pool.pg_num is None and s.pool.pg_num_or_default == 128, "stated only when given"
    assert s.pool.replicas is None
    assert s.pool.application == "rbd"
    assert s.pool.adopt is False and s.client.adopt is False
    assert s.client.entity == "client.vmmgr"
    assert s.client.caps_profile is None and not s.client.caps_stated
    assert s.image_namespaces is None
    assert s.client.secret_name == "vmstore-client"
    assert s.deletion_policy == "Retain"


def test_full_spec():
    s = parse_storage("x", spec(
        pool={"name": "vms", "pgNum": 64, "replicas": 3, "quota": {"maxBytes": "10Gi", "maxObjects": 1000},
              "parameters": {"compression_mode": "aggressive", "noscrub": True}},
        client={"name": "kvm", "capsProfile": "legacy", "cachePool": "cache", "secretName": "kvm-key"},
        deletionPolicy="Delete",
    ))
    assert (s.pool.name, s.pool.pg_num, s.pool.replicas) == ("vms", 64, 3)
    assert s.pool.quota_max_bytes == 10 * 2**30 and s.pool.quota_max_objects == 1000
    assert s.pool.parameters == {"compression_mode": "aggressive", "noscrub": "true"}
    assert s.client.cache_pool == "cache" and s.client.secret_name == "kvm-key"


@pytest.mark.parametrize("parts,field,reason", [
    ({"pool": {"pgNum": -1}}, "spec.pool.pgNum", "InvalidSpec"),
    ({"pool": {"pgNum": 0}}, "spec.pool.pgNum", "InvalidSpec"),
    ({"pool": {"name": "a/b"}}, "spec.pool.name", "InvalidName"),
    ({"pool": {"name": "a@b"}}, "spec.pool.name", "InvalidName"),
    ({"pool": {"name": "a b"}}, "spec.pool.name", "InvalidName"),
    ({"pool": {"name": "p" * 64}}, "spec.pool.name", "InvalidName"),
    ({"pool": {"quota": {"maxBytes": "lots"}}}, "spec.pool.quota.maxBytes", "InvalidSpec"),
    ({"pool": {"quota": {"maxBytes": "-1Gi"}}}, "spec.pool.quota.maxBytes", "InvalidSpec"),
    ({"pool": {"parameters": {"size": "3"}}}, "spec.pool.parameters.size", "InvalidSpec"),
    ({"pool": {"parameters": {"compression_mode": "a;rm -rf /"}}}, "spec.pool.parameters.compression_mode", "InvalidSpec"),
    ({"client": {"capsProfile": "admin"}}, "spec.client.capsProfile", "InvalidSpec"),
    ({"client": {"name": "x y"}}, "spec.client.name", "InvalidName"),
    ({"client": {"caps": {"mds": "allow *"}}}, "spec.client.caps.mds", "InvalidSpec"),
    ({"client": {"caps": {"mon": "allow r; rm"}}}, "spec.client.caps.mon", "InvalidSpec"),
    ({"deletionPolicy": "Orphan"}, "spec.deletionPolicy", "InvalidSpec"),
    ({"cluster": {"monitors": [], "adminSecretRef": {"name": "a", "namespace": "b"}}}, "spec.cluster.monitors", "InvalidSpec"),
    ({"cluster": {"monitors": ["host"], "adminSecretRef": {"name": "a", "namespace": "b"}}}, "spec.cluster.monitors[0]", "InvalidSpec"),
    ({"cluster": {"monitors": ["h:99999"], "adminSecretRef": {"name": "a", "namespace": "b"}}}, "spec.cluster.monitors[0]", "InvalidSpec"),
    ({"cluster": {"monitors": ["h:1"], "adminSecretRef": {"namespace": "a"}}}, "spec.cluster.adminSecretRef", "InvalidSpec"),
    ({"client": {"name": "admin"}}, "spec.client.name", "InvalidName"),
    ({"client": {"name": "bootstrap-osd"}}, "spec.client.name", "InvalidName"),
    ({"client": {"name": "client.admin"}}, "spec.client.name", "InvalidName"),
    ({"client": {"name": "osd.0"}}, "spec.client.name", "InvalidName"),
    ({"client": {"caps": {"mon": "allow *"}}}, "spec.client.caps", "InvalidSpec"),
    ({"client": {"caps": {"mon": "profile rbd", "osd": "allow rwx"}}}, "spec.client.caps", "InvalidSpec"),
    ({"pool": {"adopt": "yes"}}, "spec.pool.adopt", "InvalidSpec"),
    # Values Ceph would refuse only after the pool exists are refused before anything is done.
    ({"pool": {"parameters": {"compression_mode": "0"}}}, "spec.pool.parameters.compression_mode", "InvalidSpec"),
    ({"pool": {"parameters": {"target_size_ratio": "7"}}}, "spec.pool.parameters.target_size_ratio", "InvalidSpec"),
    ({"pool": {"parameters": {"noscrub": "maybe"}}}, "spec.pool.parameters.noscrub", "InvalidSpec"),
    ({"pool": {"parameters": {"min_size": "0"}}}, "spec.pool.parameters.min_size", "InvalidSpec"),
    ({"imageNamespaces": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
     "spec.imageNamespaces.matchExpressions[0]", "InvalidSpec"),
])
def test_invalid(parts, field, reason):
    with pytest.raises(SpecError) as err:
        parse_storage("vmstore", spec(**parts))
    assert err.value.field == field
    assert err.value.reason == reason
    assert field in err.value.message


def test_metadata_name_must_be_a_valid_pool_name():
    with pytest.raises(SpecError):
        parse_storage("bad name", BASE)
