"""Safe on a production Ceph cluster and a shared Kubernetes cluster (ownership, adoption, tenancy).

Brownfield objects are made by hand with the ceph and rbd CLIs, as VMmanager's procedure leaves
them; tenants are namespaces of the real API server; the operator runs under deploy/'s RBAC.
"""

from __future__ import annotations

import base64
import json
import time

import rbd

from . import cephcheck
from .harness import OPERATOR_NAMESPACE, wait_for
from .manifests import image, storage

MI = 2**20


def pool_owner(ceph, pool: str) -> str | None:
    meta = (cephcheck.pool(ceph, pool) or {}).get("application_metadata") or {}
    return next((m["rbd-operator.owner"] for m in meta.values() if "rbd-operator.owner" in m), None)


def client_owners(platform, entity: str) -> list[str]:
    out = platform.ceph_cli("config-key", "get", f"rbd-operator.io/clients/{entity}", check=False)
    return json.loads(out)["owners"] if out.strip() else []


def image_size(ceph, pool: str, name: str) -> int | None:
    with ceph.open_ioctx(pool) as ioctx:
        try:
            with rbd.Image(ioctx, name, read_only=True) as img:
                return img.size()
        except rbd.ImageNotFound:
            return None


def image_owner_tag(ceph, pool: str, name: str) -> str | None:
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        try:
            return img.metadata_get("rbd-operator.io/owner")
        except KeyError:
            return None


def warnings_for(platform, name: str, namespace: str = "default") -> set[str]:
    return {e["reason"] for e in platform.events(name, namespace) if e["type"] == "Warning"}


def vmmanager_brownfield(platform, pool: str, client: str) -> None:
    """What VMmanager's documented procedure leaves: a pool, a client with its caps, a disk."""
    platform.ceph_cli("osd", "pool", "create", pool, "16")
    platform.ceph_cli("osd", "pool", "set", pool, "pg_autoscale_mode", "warn")
    platform.rbd_cli("pool", "init", pool)
    platform.ceph_cli("auth", "get-or-create", f"client.{client}", "mon", "allow r",
                      "osd", f"allow class-read object_prefix rbd_children, allow rwx pool={pool}")
    platform.rbd_cli("create", "--size", "64", f"{pool}/vm-disk")


def test_brownfield_pool_client_and_image_change_only_once_adopted(platform, operator, ceph, uniq):
    pool, client, name = f"vmm-{uniq}", f"vmmgr-{uniq}", f"brown-{uniq}"
    entity = f"client.{client}"
    vmmanager_brownfield(platform, pool, client)
    caps_before, key_before = cephcheck.caps(ceph, entity), cephcheck.key(ceph, entity)

    # Named but not adopted: NotOwned, and nothing in Ceph changes (not even pg_num or the caps).
    platform.apply(storage(platform, name, pool={"name": pool, "pgNum": 128}, client={"name": client},
                           deletionPolicy="Delete"))
    cond = platform.wait_condition("rbds", name, "False", "NotOwned")
    assert f"pool {pool!r}" in cond["message"] and "spec.pool.adopt" in cond["message"]
    assert "NotOwned" in warnings_for(platform, name)
    # Only the pool adopted: the client still is not ours, so still nothing changes.
    platform.apply(storage(platform, name, pool={"name": pool, "adopt": True}, client={"name": client},
                           deletionPolicy="Delete"))
    wait_for(lambda: entity in (platform.condition("rbds", name) or {}).get("message", ""), 60,
             what="NotOwned names the client")
    time.sleep(6)  # a resync later
    got = cephcheck.pool(ceph, pool)
    assert got["pg_num_target"] == 16 and got["pg_autoscale_mode"] == "warn"
    assert pool_owner(ceph, pool) is None and client_owners(platform, entity) == []
    assert cephcheck.caps(ceph, entity) == caps_before
    assert platform.get("secret", f"{name}-client", OPERATOR_NAMESPACE) is None

    # Adopted: ownership recorded in Ceph (with this cluster's identity); the key is kept; what the spec does
    # not state stays. The default namespace is granted adoption of the disk below.
    grant = {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}
    platform.apply(storage(platform, name, pool={"name": pool, "adopt": True},
                           client={"name": client, "adopt": True}, deletionPolicy="Retain", adoption=grant))
    platform.wait_condition("rbds", name, "True")
    uid = platform.get("rbds", name)["metadata"]["uid"]
    cluster = platform.get("namespace", "kube-system")["metadata"]["uid"]
    assert pool_owner(ceph, pool) == uid and client_owners(platform, entity) == [f"{uid}@{cluster}"]
    got = cephcheck.pool(ceph, pool)
    assert got["pg_num_target"] == 16 and got["pg_autoscale_mode"] == "warn", "pg_num and autoscaler kept"
    assert got["quota_max_bytes"] == 0
    assert cephcheck.caps(ceph, entity) == caps_before, "caps kept: the spec states none"
    assert cephcheck.key(ceph, entity) == key_before, "the adopted client's key is kept"
    secret = platform.get("secret", f"{name}-client", OPERATOR_NAMESPACE)
    assert base64.b64decode(secret["data"]["userKey"]).decode() == key_before
    assert platform.condition("rbds", name, "CapsWeak")["status"] == "True", "the seed's caps cannot blocklist"

    # The hand-made disk: NotOwned, untouched, until an RbdImage adopts it.
    platform.apply(image(f"disk-{uniq}", name, name="vm-disk", size="128Mi"))
    cond = platform.wait_condition("rbdimg", f"disk-{uniq}", "False", "NotOwned", namespace="default")
    assert "spec.adopt" in cond["message"]
    assert image_size(ceph, pool, "vm-disk") == 64 * MI and image_owner_tag(ceph, pool, "vm-disk") is None
    platform.apply(image(f"disk-{uniq}", name, name="vm-disk", size="64Mi", adopt=True))
    platform.wait_condition("rbdimg", f"disk-{uniq}", "True", namespace="default")
    img_uid = platform.get("rbdimg", f"disk-{uniq}", "default")["metadata"]["uid"]
    default_uid = platform.get("namespace", "default")["metadata"]["uid"]
    assert image_owner_tag(ceph, pool, "vm-disk") == f"default/disk-{uniq}/{img_uid}@{cluster}/{default_uid}"
    assert image_size(ceph, pool, "vm-disk") == 64 * MI
    platform.apply(image(f"disk-{uniq}", name, name="vm-disk", size="128Mi", adopt=True))
    wait_for(lambda: image_size(ceph, pool, "vm-disk") == 128 * MI, 60, what="an adopted image grows")

    # Retain: the storage goes, the pool, client and image stay.
    platform.delete("rbdimg", f"disk-{uniq}", "default", wait=True)
    platform.delete("rbds", name, wait=True)
    assert cephcheck.pool(ceph, pool) is not None and cephcheck.key(ceph, entity) == key_before


def test_delete_policy_never_deletes_what_is_not_ours(platform, operator, ceph, uniq):
    pool, client, name = f"hand-{uniq}", f"hand-{uniq}", f"notours-{uniq}"
    platform.ceph_cli("osd", "pool", "create", pool, "8")
    platform.rbd_cli("pool", "init", pool)
    platform.ceph_cli("auth", "get-or-create", f"client.{client}", "mon", "profile rbd")
    platform.apply(storage(platform, name, pool={"name": pool}, client={"name": client}, deletionPolicy="Delete"))
    platform.wait_condition("rbds", name, "False", "NotOwned")
    platform.delete("rbds", name, wait=True)
    assert cephcheck.pool(ceph, pool) is not None, "an empty pool that is not ours stays"
    assert cephcheck.caps(ceph, f"client.{client}") == {"mon": "profile rbd"}


def test_emptiness_counts_every_rbd_namespace_and_trash_purge_only_ours(platform, operator, ceph, uniq):
    name = f"ns-{uniq}"
    platform.apply(storage(platform, name, deletionPolicy="Delete"))
    platform.wait_condition("rbds", name, "True")
    assert pool_owner(ceph, name) == platform.get("rbds", name)["metadata"]["uid"]

    # Trash: an entry of ours is purged after its retention, one trashed by hand is not.
    platform.apply(image(f"ours-{uniq}", name, size="8Mi", trashRetention="2s"))
    platform.wait_condition("rbdimg", f"ours-{uniq}", "True", namespace="default")
    platform.rbd_cli("create", "--size", "8", f"{name}/handmade")
    platform.delete("rbdimg", f"ours-{uniq}", "default", wait=True)
    with ceph.open_ioctx(name) as ioctx:
        rbd.RBD().trash_move(ioctx, "handmade", delay=1)  # by hand, expiring at once
        trashed = lambda: sorted(t["name"] for t in rbd.RBD().trash_list(ioctx))  # noqa: E731
        assert trashed() == ["handmade", f"ours-{uniq}"]
        wait_for(lambda: trashed() == ["handmade"], 60, what="our trash entry purged")
        time.sleep(6)  # another resync
        assert trashed() == ["handmade"], "a trash entry the operator did not make is never purged"
        rbd.RBD().trash_remove(ioctx, [t["id"] for t in rbd.RBD().trash_list(ioctx)][0], force=True)

    # An image in an RBD namespace keeps the pool alive.
    platform.rbd_cli("namespace", "create", f"{name}/tenant")
    platform.rbd_cli("create", "--size", "8", f"{name}/tenant/hidden")
    platform.delete("rbds", name)
    cond = platform.wait_condition("rbds", name, "False", "PoolNotEmpty")
    assert "1 image(s)" in cond["message"] and "2 RBD namespace(s)" in cond["message"]
    assert cephcheck.pool(ceph, name) is not None
    platform.rbd_cli("rm", f"{name}/tenant/hidden")
    platform.rbd_cli("namespace", "remove", f"{name}/tenant")
    wait_for(lambda: platform.get("rbds", name) is None, 120, what="storage deleted once empty")
    assert cephcheck.pool(ceph, name) is None


def test_secrets_only_from_the_operator_namespace_and_never_someone_elses(platform, operator, ceph, uniq):
    tenant = f"tenant-{uniq}"
    platform.kubectl("create", "namespace", tenant)
    admin = platform.get("secret", "ceph-admin", OPERATOR_NAMESPACE)
    platform.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ceph-admin", "namespace": tenant},
                    "data": admin["data"]})
    outside = f"outside-{uniq}"
    body = storage(platform, outside)
    body["spec"]["cluster"]["adminSecretRef"] = {"name": "ceph-admin", "namespace": tenant}
    platform.apply(body)
    cond = platform.wait_condition("rbds", outside, "False", "SecretOutsideNamespace")
    assert f"{tenant}/ceph-admin" in cond["message"]
    assert cephcheck.pool(ceph, outside) is None

    conflict = f"conflict-{uniq}"
    before = platform.get("secret", "ceph-admin", OPERATOR_NAMESPACE)
    platform.apply(storage(platform, conflict, client={"name": f"c-{conflict}", "secretName": "ceph-admin"}))
    cond = platform.wait_condition("rbds", conflict, "False", "SecretConflict")
    assert "ceph-admin" in cond["message"]
    after = platform.get("secret", "ceph-admin", OPERATOR_NAMESPACE)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")
    assert cephcheck.pool(ceph, conflict) is None, "refused before Ceph was touched"
    assert cephcheck.caps(ceph, f"client.c-{conflict}") is None
    for name in (outside, conflict):
        platform.delete("rbds", name, wait=True)
    platform.kubectl("delete", "namespace", tenant, "--wait=false")


def test_tenancy_namespaces_and_clone_sources(platform, operator, ceph, uniq):
    name, a, b = f"tenancy-{uniq}", f"team-a-{uniq}", f"team-b-{uniq}"
    for ns in (a, b):
        platform.kubectl("create", "namespace", ns)
    platform.kubectl("label", "namespace", a, "rbd-tenant=yes")
    platform.apply(storage(platform, name, imageNamespaces={"matchLabels": {"rbd-tenant": "yes"}}))
    platform.wait_condition("rbds", name, "True")

    platform.apply(image("disk", name, namespace=b, size="8Mi"))
    cond = platform.wait_condition("rbdimg", "disk", "False", "NamespaceNotAllowed", namespace=b)
    assert b in cond["message"]
    assert image_size(ceph, name, "disk") is None, "nothing in Ceph for a refused namespace"

    platform.apply(image("disk", name, namespace=a, size="8Mi"))
    platform.wait_condition("rbdimg", "disk", "True", namespace=a)
    with ceph.open_ioctx(name) as ioctx, rbd.Image(ioctx, "disk") as img:
        img.write(b"team a's data", 0)
        img.create_snap("s")

    # Team b is let in, but another namespace's image is never theirs, adopt or not, nor a clone source.
    platform.kubectl("label", "namespace", b, "rbd-tenant=yes")
    platform.apply(image("steal", name, namespace=b, name="disk", size="16Mi", adopt=True))
    cond = platform.wait_condition("rbdimg", "steal", "False", "OwnedByOther", namespace=b, timeout=120)
    assert "another RbdImage" in cond["message"] and a not in cond["message"], "never names another namespace's"
    platform.apply(image("peek", name, namespace=b, source={"image": "disk", "snapshot": "s"}))
    cond = platform.wait_condition("rbdimg", "peek", "False", "SourceNotAllowed", namespace=b)
    assert a not in cond["message"], "another namespace's image is never named"
    assert image_size(ceph, name, "disk") == 8 * MI and image_size(ceph, name, "peek") is None
    # Team b deleting its objects does not touch team a's image.
    platform.delete("rbdimg", "steal", b, wait=True)
    platform.delete("rbdimg", "peek", b, wait=True)
    assert image_size(ceph, name, "disk") == 8 * MI
    # A clone within team a is fine.
    platform.apply(image("copy", name, namespace=a, source={"image": "disk", "snapshot": "s"}))
    platform.wait_condition("rbdimg", "copy", "True", namespace=a)
    for ns in (a, b):
        platform.kubectl("delete", "namespace", ns, "--wait=false")
