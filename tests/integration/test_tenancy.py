"""Tenants reach only what is theirs (#19): adoption granted by the storage, storage-level limits over
tenant specs, owner records tied to one Kubernetes cluster and namespace, purges that never stall a
storage, key rotations that are resumed rather than repeated.

Everything against the real platform: a hand-made disk and a hand-made foreign pool (rbd/ceph CLIs),
tenant namespaces of the real API server, the operator under deploy/'s RBAC.
"""

from __future__ import annotations

import base64
import datetime
import time

import rados
import rbd

from . import cephcheck
from .harness import OPERATOR_NAMESPACE, sh, wait_for
from .manifests import image, storage

MI, GI, TI = 2**20, 2**30, 2**40
OWNER_KEY = "rbd-operator.io/owner"


def tag(ceph, pool: str, name: str) -> str | None:
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        try:
            return img.metadata_get(OWNER_KEY)
        except KeyError:
            return None


def set_tag(ceph, pool: str, name: str, value: str) -> None:
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name) as img:
        img.metadata_set(OWNER_KEY, value)


def size_of(ceph, pool: str, name: str) -> int | None:
    with ceph.open_ioctx(pool) as ioctx:
        try:
            with rbd.Image(ioctx, name, read_only=True) as img:
                return img.size()
        except rbd.ImageNotFound:
            return None


def qos_of(ceph, pool: str, name: str) -> dict[str, int]:
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        return {k[len("conf_"):]: int(v) for k, v in img.metadata_list() if k.startswith("conf_rbd_qos_")}


def objects(ceph, pool: str) -> list[str]:
    with ceph.open_ioctx(pool) as ioctx:
        ioctx.set_namespace(rados.LIBRADOS_ALL_NSPACES)
        return sorted(o.key for o in ioctx.list_objects())


def uid_of(platform, kind: str, name: str, namespace: str | None = None) -> str:
    return platform.get(kind, name, namespace)["metadata"]["uid"]


def events(platform, name: str, namespace: str) -> list[dict]:
    return platform.events(name, namespace)


def namespaces(platform, uniq: str, *labels: str) -> list[str]:
    out = []
    for i, label in enumerate(labels):
        ns = f"t{i}-{uniq}"
        platform.kubectl("create", "namespace", ns)
        if label:
            platform.kubectl("label", "namespace", ns, label)
        out.append(ns)
    return out


def test_adoption_is_granted_by_the_storage(platform, operator, ceph, uniq):
    """A hand-made disk (as VMmanager leaves them), three tenant namespaces: only a granted one adopts it;
    a refused adopter changes nothing and deletes nothing; a Retain-deleted image is re-adopted from its own
    namespace without a grant, never from a namespace made again under the same name."""
    name = f"grant-{uniq}"
    a, b, c = namespaces(platform, uniq, "adopt=yes", "", "")
    platform.apply(storage(platform, name, adoption={"namespaces": {"matchLabels": {"adopt": "yes"}}}))
    platform.wait_condition("rbds", name, "True")
    platform.rbd_cli("create", "--size", "64", f"{name}/vm-disk")
    with ceph.open_ioctx(name) as ioctx, rbd.Image(ioctx, "vm-disk") as img:
        img.write(b"a VM's data", 0)

    # Namespace b is admitted to the storage (imageNamespaces absent) but not granted adoption.
    platform.apply(image("take", name, namespace=b, name="vm-disk", size="1Mi", allowShrink=True, adopt=True,
                         trashRetention="0s"))
    cond = platform.wait_condition("rbdimg", "take", "False", "AdoptionNotAllowed", namespace=b)
    assert "spec.adoption" in cond["message"]
    assert "AdoptionNotAllowed" in {e["reason"] for e in events(platform, "take", b) if e["type"] == "Warning"}
    assert size_of(ceph, name, "vm-disk") == 64 * MI and tag(ceph, name, "vm-disk") is None, "nothing changed"
    platform.delete("rbdimg", "take", b, wait=True)
    time.sleep(6)  # a storage resync (purges) later
    assert size_of(ceph, name, "vm-disk") == 64 * MI, "a refused adopter's deletion deletes nothing"

    # Namespace a is granted: it adopts (no shrink: the size it states is the image's).
    platform.apply(image("disk", name, namespace=a, name="vm-disk", size="64Mi", adopt=True,
                         deletionPolicy="Retain"))
    platform.wait_condition("rbdimg", "disk", "True", namespace=a)
    cluster = uid_of(platform, "namespace", "kube-system")
    a_uid = uid_of(platform, "namespace", a)
    disk_uid = uid_of(platform, "rbdimg", "disk", a)
    assert tag(ceph, name, "vm-disk") == f"{a}/disk/{disk_uid}@{cluster}/{a_uid}"
    # b now finds it owned by a live RbdImage of another namespace: OwnedByOther, and a is never named.
    platform.apply(image("take2", name, namespace=b, name="vm-disk", size="64Mi", adopt=True))
    cond = platform.wait_condition("rbdimg", "take2", "False", "OwnedByOther", namespace=b)
    assert a not in cond["message"] and "disk" not in cond["message"].replace("vm-disk", "")
    platform.delete("rbdimg", "take2", b, wait=True)

    # Deleted with Retain: the same namespace adopts it again without the grant...
    platform.delete("rbdimg", "disk", a, wait=True)
    platform.kubectl("label", "namespace", a, "adopt-")
    platform.apply(image("again", name, namespace=a, name="vm-disk", size="64Mi", adopt=True,
                         deletionPolicy="Retain"))
    platform.wait_condition("rbdimg", "again", "True", namespace=a)
    platform.delete("rbdimg", "again", a, wait=True)
    # ... c (not granted) cannot ...
    platform.apply(image("other", name, namespace=c, name="vm-disk", size="64Mi", adopt=True))
    platform.wait_condition("rbdimg", "other", "False", "AdoptionNotAllowed", namespace=c)
    platform.delete("rbdimg", "other", c, wait=True)
    # ... nor does a namespace made again under a's name (another namespace uid).
    platform.kubectl("delete", "namespace", a, "--wait=true", "--timeout=120s")
    platform.kubectl("create", "namespace", a)
    platform.apply(image("again", name, namespace=a, name="vm-disk", size="64Mi", adopt=True))
    platform.wait_condition("rbdimg", "again", "False", "AdoptionNotAllowed", namespace=a)
    with ceph.open_ioctx(name) as ioctx, rbd.Image(ioctx, "vm-disk", read_only=True) as img:
        assert img.read(0, 11) == b"a VM's data" and img.size() == 64 * MI
    for ns in (a, b, c):
        platform.kubectl("delete", "namespace", ns, "--wait=false")


def test_records_of_another_cluster_and_of_an_earlier_release(platform, operator, ceph, uniq):
    name = f"ident-{uniq}"
    platform.apply(storage(platform, name, adoption={"namespaces": {}}))
    platform.wait_condition("rbds", name, "True")
    cluster = uid_of(platform, "namespace", "kube-system")
    meta = cephcheck.pool(ceph, name)["application_metadata"]["rbd"]
    assert meta == {"rbd-operator.owner": uid_of(platform, "rbds", name), "rbd-operator.cluster": cluster}

    # An image recorded by another Kubernetes cluster pointing at the same Ceph: not ours, whatever its uid.
    platform.rbd_cli("create", "--size", "16", f"{name}/theirs")
    foreign = f"default/theirs/0d0a1b2c-0000-4000-8000-00000000000a@{'f' * 8}-0000-4000-8000-000000000000/x"
    set_tag(ceph, name, "theirs", foreign)
    platform.apply(image(f"theirs-{uniq}", name, name="theirs", size="16Mi"))
    cond = platform.wait_condition("rbdimg", f"theirs-{uniq}", "False", "OwnedByOther", namespace="default")
    assert "another Kubernetes cluster" in cond["message"] and tag(ceph, name, "theirs") == foreign
    platform.apply(image(f"theirs-{uniq}", name, name="theirs", size="16Mi", adopt=True))  # granted to all here
    platform.wait_condition("rbdimg", f"theirs-{uniq}", "True", namespace="default")
    assert tag(ceph, name, "theirs").endswith(f"@{cluster}/{uid_of(platform, 'namespace', 'default')}")

    # An image an earlier release tagged (no identity): still ours, and its record is upgraded in place.
    platform.apply(image(f"old-{uniq}", name, size="16Mi"))
    platform.wait_condition("rbdimg", f"old-{uniq}", "True", namespace="default")
    uid = uid_of(platform, "rbdimg", f"old-{uniq}", "default")
    set_tag(ceph, name, f"old-{uniq}", f"default/old-{uniq}/{uid}")
    wait_for(lambda: tag(ceph, name, f"old-{uniq}") != f"default/old-{uniq}/{uid}", 60,
             what="the earlier record upgraded by the sweep")
    assert tag(ceph, name, f"old-{uniq}").startswith(f"default/old-{uniq}/{uid}@{cluster}/")
    assert "OwnerRecordUpgraded" in {e["reason"] for e in events(platform, f"old-{uniq}", "default")}
    # A pool recorded without the cluster (earlier release): upgraded in place too.
    platform.ceph_cli("osd", "pool", "application", "rm", name, "rbd", "rbd-operator.cluster")
    wait_for(lambda: cephcheck.pool(ceph, name)["application_metadata"]["rbd"].get("rbd-operator.cluster") == cluster,
             60, what="the pool's record upgraded")
    for obj in (f"theirs-{uniq}", f"old-{uniq}"):
        platform.delete("rbdimg", obj, "default", wait=True)


def test_storage_limits_bound_what_tenants_ask_for(platform, operator, ceph, uniq):
    name, foreign = f"limits-{uniq}", f"foreign-{uniq}"
    (ns,) = namespaces(platform, uniq, "")
    platform.ceph_cli("osd", "pool", "create", foreign, "8")  # someone else's pool, no RBD in it
    before = objects(ceph, foreign)
    snap_mode = cephcheck.pool(ceph, foreign).get("pool_snaps"), cephcheck.pool(ceph, foreign).get("snap_seq")
    limits = {"maxSize": "1Gi", "minTrashRetention": "1h", "qos": {"iopsLimit": 500, "bpsLimit": "50Mi"},
              "perNamespace": {"maxImages": 2, "maxBytes": "1536Mi"}}
    platform.apply(storage(platform, name, imageLimits=limits, imageDefaults={"qos": {"iopsLimit": 300}}))
    platform.wait_condition("rbds", name, "True")

    refused = {
        "big": ({"size": "2Gi"}, "LimitExceeded", "spec.imageLimits.maxSize"),
        "fast": ({"size": "8Mi", "qos": {"iopsLimit": 0}}, "LimitExceeded", "spec.qos.iopsLimit"),
        "brief": ({"size": "8Mi", "trashRetention": "0s"}, "LimitExceeded", "minTrashRetention"),
        "elsewhere": ({"size": "8Mi", "dataPool": foreign}, "DataPoolNotAllowed", "spec.imageLimits.dataPools"),
    }
    for obj, (spec, _, _) in refused.items():
        platform.apply(image(obj, name, namespace=ns, **spec))
    for obj, (_, reason, words) in refused.items():
        cond = platform.wait_condition("rbdimg", obj, "False", reason, namespace=ns)
        assert words in cond["message"], cond["message"]
        assert size_of(ceph, name, obj) is None
    assert objects(ceph, foreign) == before, "nothing written into a pool the storage does not allow (no rbd_info)"
    assert (cephcheck.pool(ceph, foreign).get("pool_snaps"), cephcheck.pool(ceph, foreign).get("snap_seq")) == \
        snap_mode, "its snapshot mode untouched"
    for obj in refused:
        platform.delete("rbdimg", obj, ns, wait=True)

    # Within the limits: no QoS stated gets imageDefaults (300) else the ceiling (bps 50Mi).
    platform.apply(image("one", name, namespace=ns, size="1Gi"))
    platform.wait_condition("rbdimg", "one", "True", namespace=ns)
    assert qos_of(ceph, name, "one") == {"rbd_qos_iops_limit": 300, "rbd_qos_bps_limit": 50 * MI}
    # perNamespace: 1 GiB used of 1.5 GiB: a second image of 1 GiB is refused, one of 512 MiB fits.
    platform.apply(image("two", name, namespace=ns, size="1Gi"))
    cond = platform.wait_condition("rbdimg", "two", "False", "LimitExceeded", namespace=ns)
    assert "perNamespace.maxBytes" in cond["message"]
    platform.apply(image("two", name, namespace=ns, size="512Mi"))
    platform.wait_condition("rbdimg", "two", "True", namespace=ns)
    platform.apply(image("three", name, namespace=ns, size="1Mi"))
    cond = platform.wait_condition("rbdimg", "three", "False", "LimitExceeded", namespace=ns)
    assert "perNamespace.maxImages" in cond["message"]
    # A grow beyond maxSize is refused, nothing written.
    platform.apply(image("two", name, namespace=ns, size="2Gi"))
    platform.wait_condition("rbdimg", "two", "False", "LimitExceeded", namespace=ns)
    assert size_of(ceph, name, "two") == 512 * MI

    # Deletion keeps the image in the trash for the minimum, whatever the spec says (the spec is refused).
    platform.apply(image("two", name, namespace=ns, size="512Mi"))
    platform.wait_condition("rbdimg", "two", "True", namespace=ns)
    platform.delete("rbdimg", "two", ns, wait=True)
    with ceph.open_ioctx(name) as ioctx:
        (entry,) = [t for t in rbd.RBD().trash_list(ioctx) if t["name"] == "two"]
        left = entry["deferment_end_time"] - datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        assert left.total_seconds() > 3000, "restorable for at least minTrashRetention (1h)"
        rbd.RBD().trash_remove(ioctx, entry["id"], force=True)

    # A limit made stricter later: the existing image stays Ready (WithinLimits=False, a Warning event) and its
    # QoS is lowered to the new ceiling at the next sweep; only changes beyond it are refused.
    platform.apply(storage(platform, name, imageDefaults={"qos": {"iopsLimit": 300}},
                           imageLimits={**limits, "maxSize": "512Mi", "qos": {"iopsLimit": 100, "bpsLimit": "50Mi"}}))
    within = wait_for(lambda: (c := platform.condition("rbdimg", "one", "WithinLimits", ns)) and c["status"] == "False"
                      and c, 60, what="WithinLimits=False")
    assert "spec.imageLimits.maxSize" in within["message"]
    assert platform.condition("rbdimg", "one", "Ready", ns)["status"] == "True"
    wait_for(lambda: qos_of(ceph, name, "one")["rbd_qos_iops_limit"] == 100, 60, what="QoS lowered to the ceiling")
    assert "LimitExceeded" in {e["reason"] for e in events(platform, "one", ns) if e["type"] == "Warning"}
    assert size_of(ceph, name, "one") == GI
    platform.delete("rbdimg", "one", ns, wait=True)
    platform.kubectl("delete", "namespace", ns, "--wait=false")
    platform.ceph_cli("osd", "pool", "delete", foreign, foreign, "--yes-i-really-really-mean-it")


def test_shrinking_is_refused_while_the_image_has_watchers(platform, operator, ceph, uniq):
    name = f"shrink-{uniq}"
    platform.apply(storage(platform, name))
    platform.wait_condition("rbds", name, "True")
    platform.apply(image(name, name, size="64Mi"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    with ceph.open_ioctx(name) as ioctx:
        holder = rbd.Image(ioctx, name)  # a read-write open registers a watcher, like a running VM
        try:
            platform.apply(image(name, name, size="8Mi", allowShrink=True))
            cond = platform.wait_condition("rbdimg", name, "False", "InUse", namespace="default")
            assert "watcher" in cond["message"] and size_of(ceph, name, name) == 64 * MI
        finally:
            holder.close()
    wait_for(lambda: size_of(ceph, name, name) == 8 * MI, 90, what="shrunk once unwatched")
    platform.delete("rbdimg", name, "default", wait=True)


def test_a_big_purge_never_stalls_its_storage_and_a_rotation_is_resumed_not_repeated(platform, operator, ceph, uniq):
    """A 1 TiB image without object-map written sparsely across it, deleted with retention 0: librbd removes
    262,144 objects. Meanwhile caps changed by hand are restored and a key rotation completes."""
    name = f"purge-{uniq}"
    entity = f"client.c-{name}"
    platform.apply(storage(platform, name))
    platform.wait_condition("rbds", name, "True")
    platform.apply(image("huge", name, size="1Ti", features=["layering"], trashRetention="0s"))
    platform.wait_condition("rbdimg", "huge", "True", namespace="default")
    with ceph.open_ioctx(name) as ioctx, rbd.Image(ioctx, "huge") as img:
        for i in range(64):
            img.write(b"x" * 4096, i * (TI // 64))
    platform.delete("rbdimg", "huge", "default", wait=True)
    purges = wait_for(lambda: (platform.get("rbds", name)["status"].get("purges") or None), 60,
                      what="status.purges lists the purge")
    assert purges[0]["imageId"] and 0 <= purges[0]["percent"] < 100
    started = time.monotonic()

    # Drift repair while the purge runs.
    caps = cephcheck.caps(ceph, entity)
    cephcheck.set_caps(ceph, entity, {"mon": "allow r"})
    wait_for(lambda: cephcheck.caps(ceph, entity) == caps, 60, what="caps restored during the purge")
    # A rotation while the purge runs: Ceph, the Secret, status.
    secret_key = lambda: base64.b64decode(platform.get("secret", f"{name}-client", OPERATOR_NAMESPACE)  # noqa
                                          ["data"]["userKey"]).decode()
    old = secret_key()
    platform.apply(storage(platform, name, client={"name": f"c-{name}", "rotateKeyGeneration": 1}))
    wait_for(lambda: platform.get("rbds", name)["status"].get("keyGeneration") == 1, 60, what="rotation done")
    new = secret_key()
    assert new != old and cephcheck.key(ceph, entity) == new
    assert platform.get("rbds", name)["status"].get("purges"), "both finished while the purge still ran"
    repaired_in = time.monotonic() - started

    wait_for(lambda: not platform.get("rbds", name)["status"].get("purges"), 600, interval=2,
             what="the purge finished")
    purged_in = time.monotonic() - started
    with ceph.open_ioctx(name) as ioctx:
        assert not [t for t in rbd.RBD().trash_list(ioctx) if t["name"] == "huge"]
    print(f"\npurge of 1 TiB: {purged_in:.0f}s; caps repair and rotation done {repaired_in:.0f}s into it")
    assert repaired_in < purged_in
    platform.delete("rbds", name, wait=True)



def test_a_rotation_cut_short_is_resumed_with_the_key_ceph_has(platform, operator, ceph, uniq):
    """The operator stopped after Ceph took a rotation's new key and before the Secret was written (simulated:
    the operator is stopped, the key in Ceph replaced, the generation raised): on start it publishes the key
    Ceph has and makes no second one."""
    name = f"resume-{uniq}"
    entity = f"client.c-{name}"
    platform.apply(storage(platform, name))
    platform.wait_condition("rbds", name, "True")
    secret_key = lambda: base64.b64decode(platform.get("secret", f"{name}-client", OPERATOR_NAMESPACE)  # noqa
                                          ["data"]["userKey"]).decode()
    published = secret_key()
    operator.stop()
    try:
        cut_short = sh("ceph-authtool", "--gen-print-key").stdout.strip()
        keyring = platform.ceph_cli("auth", "get", entity)
        sh("ceph", "-c", str(platform.ceph_conf), "auth", "import", "-i", "-",
           input=keyring.replace(published, cut_short))
        platform.apply(storage(platform, name, client={"name": f"c-{name}", "rotateKeyGeneration": 1}))
    finally:
        operator.start()
    wait_for(lambda: platform.get("rbds", name)["status"].get("keyGeneration") == 1, 60, what="rotation done")
    assert secret_key() == cut_short == cephcheck.key(ceph, entity), "the key Ceph had, published; no other"
    assert "RotationResumed" in {e["reason"] for e in platform.events(name, "default")}
    secret = platform.get("secret", f"{name}-client", OPERATOR_NAMESPACE)
    assert secret["metadata"]["annotations"]["rbd-operator.io/key-generation"] == "1"
    # A later generation rotates for real (a new key, not the one before).
    platform.apply(storage(platform, name, client={"name": f"c-{name}", "rotateKeyGeneration": 2}))
    wait_for(lambda: platform.get("rbds", name)["status"].get("keyGeneration") == 2, 60, what="rotation 2 done")
    assert secret_key() not in (cut_short, published) and secret_key() == cephcheck.key(ceph, entity)
    platform.delete("rbds", name, wait=True)


def test_the_api_server_checks_image_limits_itself(platform, uniq):
    """CEL and the schema refuse nonsensical limits before the operator sees them."""
    name = f"cel-{uniq}"
    for limits, words in (({"qos": {"iopsLimit": 0}}, "greater than zero"),
                          ({"maxSize": 0}, "greater than zero"),
                          ({"maxSize": "-1Gi"}, "greater than zero"),
                          ({"minTrashRetention": "forever"}, "minTrashRetention"),
                          ({"dataPools": ["a", "a"]}, "Duplicate value"),
                          ({"perNamespace": {"maxImages": -1}}, "maxImages")):
        result = platform.apply(storage(platform, name, imageLimits=limits), check=False)
        assert result.returncode != 0 and words in result.stderr, (limits, result.stderr)
    assert platform.get("rbds", name) is None
