"""RbdStorage against the real control plane and Ceph."""

import base64
import os
import struct
import uuid

import rbd

from rbd_operator.reconcile.storage_plan import LIBVIRT_SECRET_NAMESPACE

from . import cephcheck
from .harness import OPERATOR_NAMESPACE, wait_for
from .manifests import storage


def test_storage_creates_pool_client_secret_and_status(platform, operator, ceph, uniq):
    name = f"st-{uniq}"
    platform.apply(storage(platform, name, pool={"pgNum": 32, "quota": {"maxBytes": "10Gi"},
                                                 "parameters": {"compression_mode": "passive"}}))
    ready = platform.wait_condition("rbds", name, "True")
    assert ready["reason"] == "Converged"

    pool = cephcheck.pool(ceph, name)
    assert pool["pg_num_target"] == 32 and pool["pg_autoscale_mode"] == "off"
    assert pool["quota_max_bytes"] == 10 * 2**30
    assert pool["options"]["compression_mode"] == "passive"
    assert "rbd" in pool["application_metadata"]
    entity = f"client.c-{name}"
    assert cephcheck.caps(ceph, entity) == {"mon": "profile rbd", "osd": f"profile rbd pool={name}",
                                            "mgr": f"profile rbd pool={name}"}

    obj = platform.get("rbds", name)
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["fsid"] == ceph.get_fsid() and status["poolId"] == pool["pool"]
    assert status["monitors"] and all(m["v1"].endswith(":6789") or m["v2"] for m in status["monitors"])
    assert {"v1", "v2"} <= set(status["monitors"][0])
    assert status["capacity"]["quotaMaxBytes"] == 10 * 2**30
    assert status["libvirtSecretUUID"] == str(uuid.uuid5(LIBVIRT_SECRET_NAMESPACE, f"{ceph.get_fsid()}/{entity}/{name}"))
    types = {c["type"]: c["status"] for c in status["conditions"]}
    assert types == {"Ready": "True", "PoolReady": "True", "ClientReady": "True", "CapsWeak": "False"}

    secret = platform.get("secret", f"{name}-client", OPERATOR_NAMESPACE)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["userID"] == f"c-{name}"
    assert data["userKey"] == cephcheck.key(ceph, entity)
    assert data["keyring"] == f"[{entity}]\n\tkey = {data['userKey']}\n"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert status["clientSecretRef"] == {"name": f"{name}-client", "namespace": OPERATOR_NAMESPACE}

    # The key never reaches the log, the events or the status.
    assert data["userKey"] not in operator.log_text()
    assert data["userKey"] not in str(platform.events(name, "default")) + str(obj)

    platform.delete("rbds", name, wait=True)
    assert cephcheck.pool(ceph, name) is not None, "Retain (default) leaves the pool"
    assert cephcheck.caps(ceph, entity) is not None


def test_drift_is_restored_by_the_timer(platform, operator, ceph, uniq):
    name = f"drift-{uniq}"
    entity = f"client.c-{name}"
    platform.apply(storage(platform, name, pool={"pgNum": 8, "parameters": {"compression_mode": "passive"}}))
    platform.wait_condition("rbds", name, "True")
    wanted = cephcheck.caps(ceph, entity)

    cephcheck.set_caps(ceph, entity, {"mon": "allow r", "osd": "allow rwx"})
    cephcheck.mon(ceph, "osd pool set", pool=name, var="compression_mode", val="none")
    cephcheck.mon(ceph, "osd pool set-quota", pool=name, field="max_objects", val="5")
    wait_for(lambda: cephcheck.caps(ceph, entity) == wanted, 30, what="caps restored")
    wait_for(lambda: cephcheck.pool(ceph, name)["options"].get("compression_mode") == "passive", 30,
             what="compression_mode restored")
    wait_for(lambda: cephcheck.pool(ceph, name)["quota_max_objects"] == 0, 30, what="quota restored")
    reasons = {e["reason"] for e in platform.events(name, "default")}
    assert "CapsCorrected" in reasons
    platform.delete("rbds", name, wait=True)


def test_spec_change_converges_pool_and_legacy_caps_are_weak(platform, operator, ceph, uniq):
    name = f"chg-{uniq}"
    entity = f"client.c-{name}"
    platform.apply(storage(platform, name, pool={"pgNum": 8}))
    platform.wait_condition("rbds", name, "True")
    platform.apply(storage(platform, name, pool={"pgNum": 16, "quota": {"maxObjects": 1000}},
                           client={"name": f"c-{name}", "capsProfile": "legacy"}))
    platform.wait_condition("rbds", name, "True", type_="CapsWeak")
    assert cephcheck.caps(ceph, entity) == {
        "mon": "allow r", "osd": f"allow class-read object_prefix rbd_children, allow rwx pool={name}"}
    pool = cephcheck.pool(ceph, name)
    assert pool["pg_num_target"] == 16 and pool["quota_max_objects"] == 1000
    assert any(e["reason"] == "CannotBlocklist" and e["type"] == "Warning" for e in platform.events(name, "default"))
    platform.delete("rbds", name, wait=True)


def test_shared_client_gets_the_union_of_caps(platform, operator, ceph, uniq):
    a, b = f"sha-{uniq}", f"shb-{uniq}"
    client = {"name": f"shared-{uniq}"}
    platform.apply(storage(platform, a, client=client, deletionPolicy="Delete"))
    platform.wait_condition("rbds", a, "True")
    # Sharing another storage's client is explicit.
    platform.apply(storage(platform, b, client=client, deletionPolicy="Delete"))
    cond = platform.wait_condition("rbds", b, "False", "OwnedByOther")
    assert f"client.shared-{uniq}" in cond["message"] and "spec.client.adopt" in cond["message"]
    platform.apply(storage(platform, b, client={**client, "adopt": True}, deletionPolicy="Delete"))
    platform.wait_condition("rbds", b, "True")
    entity = f"client.shared-{uniq}"
    wait_for(lambda: f"pool={a}" in cephcheck.caps(ceph, entity)["osd"] and
             f"pool={b}" in cephcheck.caps(ceph, entity)["osd"], 30, what="union of caps")
    platform.delete("rbds", a, wait=True)
    assert cephcheck.pool(ceph, a) is None
    caps = cephcheck.caps(ceph, entity)
    assert caps is not None and f"pool={a}" not in caps["osd"] and f"pool={b}" in caps["osd"]
    platform.delete("rbds", b, wait=True)
    assert cephcheck.caps(ceph, entity) is None


def test_delete_policy_waits_for_an_empty_pool(platform, operator, ceph, uniq):
    name = f"del-{uniq}"
    entity = f"client.c-{name}"
    platform.apply(storage(platform, name, deletionPolicy="Delete"))
    platform.wait_condition("rbds", name, "True")
    with ceph.open_ioctx(name) as ioctx:
        rbd.RBD().create(ioctx, "leftover", 2**20)
    platform.delete("rbds", name)
    cond = platform.wait_condition("rbds", name, "False", "PoolNotEmpty")
    assert "1 image(s)" in cond["message"]
    assert cephcheck.pool(ceph, name) is not None
    with ceph.open_ioctx(name) as ioctx:
        rbd.RBD().remove(ioctx, "leftover")
    wait_for(lambda: platform.get("rbds", name) is None, 120, what="storage deleted once empty")
    assert cephcheck.pool(ceph, name) is None
    assert cephcheck.caps(ceph, entity) is None


def test_bad_credentials_and_monitors_touch_nothing(platform, operator, ceph, uniq):
    wrong = base64.b64encode(struct.pack("<HIIH", 1, 0, 0, 16) + os.urandom(16)).decode()  # well-formed, unknown
    garbled = "AQBkZW1vZGVtb2RlbW9kZW1vZGVtb2RlbW8xMjM0NQ=="  # not a cephx key at all
    cases = {f"wrong-{uniq}": wrong, f"garbled-{uniq}": garbled}
    for name, key in cases.items():
        platform.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
                        "stringData": {"userID": "admin", "userKey": key}})
        platform.apply(storage(platform, name, secret=name))
    platform.apply(storage(platform, f"nosecret-{uniq}", secret=f"missing-{uniq}"))
    platform.apply(storage(platform, f"unreach-{uniq}", monitors=["127.0.0.1:1"]))
    platform.apply(storage(platform, f"cache-{uniq}", client={"name": f"c-cache-{uniq}", "cachePool": f"nope-{uniq}"}))
    for name in cases:
        platform.wait_condition("rbds", name, "False", "AuthFailed", timeout=120)
    platform.wait_condition("rbds", f"nosecret-{uniq}", "False", "AuthFailed")
    platform.wait_condition("rbds", f"unreach-{uniq}", "False", "CephUnreachable", timeout=120)
    cond = platform.wait_condition("rbds", f"cache-{uniq}", "False", "CachePoolNotFound")
    assert "spec.client.cachePool" in cond["message"]
    names = [*cases, f"nosecret-{uniq}", f"unreach-{uniq}", f"cache-{uniq}"]
    for name in names:
        assert cephcheck.pool(ceph, name) is None
        warnings = [e for e in platform.events(name, "default") if e["type"] == "Warning"]
        assert warnings, f"no Warning event for {name}"
        platform.delete("rbds", name, wait=True)
    assert cephcheck.caps(ceph, f"client.c-cache-{uniq}") is None
    assert operator.proc.poll() is None, "the operator must not crash on bad input"
    log = operator.log_text()
    assert wrong not in log and garbled not in log, "a key reached the operator's log"
