"""RbdImage against the real control plane and Ceph."""

import json
import os
import signal
import time

import pytest
import rbd

from .harness import ROOT, wait_for
from .manifests import image, storage

GI = 2**30


@pytest.fixture(scope="module")
def pool(platform, operator, ceph):
    name = "images"
    platform.apply(storage(platform, name, pool={"pgNum": 16, "quota": {"maxBytes": "100Gi"}},
                           client={"name": "images"}))
    platform.wait_condition("rbds", name, "True")
    return name


def rbd_image(ceph, pool, name):
    with ceph.open_ioctx(pool) as ioctx:
        try:
            with rbd.Image(ioctx, name, read_only=True) as img:
                return {"size": img.size(), "features": img.features(), "id": img.id(),
                        "parent": _parent(img)}
        except rbd.ImageNotFound:
            return None


def _trashed(ceph, pool: str, name: str) -> bool:
    with ceph.open_ioctx(pool) as ioctx:
        return any(t["name"] == name for t in rbd.RBD().trash_list(ioctx))


def _parent(img):
    try:
        return img.get_parent_image_spec()["image_name"]
    except rbd.ImageNotFound:
        return None


def test_create_grow_and_refuse_shrink(platform, ceph, pool, uniq):
    name = f"disk-{uniq}"
    platform.apply(image(name, pool, size="1Gi"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    got = rbd_image(ceph, pool, name)
    assert got["size"] == GI
    assert got["features"] & rbd.RBD_FEATURE_EXCLUSIVE_LOCK and got["features"] & rbd.RBD_FEATURE_FAST_DIFF
    obj = platform.get("rbdimg", name, "default")
    status = obj["status"]
    assert status["sizeBytes"] == GI and status["imageId"] == got["id"]
    identity = (f"{platform.get('namespace', 'kube-system')['metadata']['uid']}/"
                f"{platform.get('namespace', 'default')['metadata']['uid']}")  # cluster id / namespace uid
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        assert img.metadata_get("rbd-operator.io/owner") == f"default/{name}/{obj['metadata']['uid']}@{identity}"
    assert status["features"] == ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"]

    platform.apply(image(name, pool, size="2Gi"))
    wait_for(lambda: rbd_image(ceph, pool, name)["size"] == 2 * GI, 30, what="grown")

    platform.apply(image(name, pool, size="1Gi"))
    cond = platform.wait_condition("rbdimg", name, "False", "ShrinkNotAllowed", namespace="default")
    assert "allowShrink" in cond["message"]
    assert rbd_image(ceph, pool, name)["size"] == 2 * GI

    platform.apply(image(name, pool, size="1Gi", allowShrink=True))
    wait_for(lambda: rbd_image(ceph, pool, name)["size"] == GI, 30, what="shrunk with allowShrink")
    platform.wait_condition("rbdimg", name, "True", namespace="default")

    platform.apply(image(name, pool, size="1Gi", allowShrink=True, features=["layering", "exclusive-lock"]))
    wait_for(lambda: not rbd_image(ceph, pool, name)["features"] & rbd.RBD_FEATURE_OBJECT_MAP, 30,
             what="object-map disabled")
    platform.delete("rbdimg", name, "default", wait=True)


def test_bad_input_touches_nothing(platform, ceph, pool, uniq):
    big, orphan = f"big-{uniq}", f"orphan-{uniq}"
    platform.apply(image(big, pool, size="200Gi"))
    cond = platform.wait_condition("rbdimg", big, "False", "SizeExceedsQuota", namespace="default")
    assert "quota" in cond["message"]
    assert rbd_image(ceph, pool, big) is None
    assert any(e["reason"] == "SizeExceedsQuota" for e in platform.events(big))

    platform.apply(image(orphan, f"later-{uniq}", size="1Gi"))
    platform.wait_condition("rbdimg", orphan, "False", "StorageNotFound", namespace="default")
    platform.apply(storage(platform, f"later-{uniq}", client={"name": f"later-{uniq}"}, deletionPolicy="Delete"))
    platform.wait_condition("rbdimg", orphan, "True", namespace="default", timeout=120)
    assert rbd_image(ceph, f"later-{uniq}", orphan)["size"] == GI

    clone = f"clone-{uniq}"
    platform.apply(image(clone, pool, source={"image": f"nobase-{uniq}", "snapshot": "s"}))
    platform.wait_condition("rbdimg", clone, "False", "SourceNotFound", namespace="default")
    assert rbd_image(ceph, pool, clone) is None

    for name in (big, orphan, clone):
        platform.delete("rbdimg", name, "default", wait=True)
    platform.delete("rbds", f"later-{uniq}")


def test_clone_from_snapshot_and_flatten(platform, ceph, pool, uniq):
    base, child = f"base-{uniq}", f"child-{uniq}"
    # A clone reads its parent: the parent is an image of an RbdImage of the same namespace.
    platform.apply(image(base, pool, size="1Gi"))
    platform.wait_condition("rbdimg", base, "True", namespace="default")
    with ceph.open_ioctx(pool) as ioctx:
        with rbd.Image(ioctx, base) as img:
            img.write(b"golden", 0)
            img.create_snap("gold")
    platform.apply(image(child, pool, size="2Gi", source={"image": base, "snapshot": "gold"}))
    platform.wait_condition("rbdimg", child, "True", namespace="default")
    got = rbd_image(ceph, pool, child)
    assert got["parent"] == base and got["size"] == 2 * GI
    status = platform.get("rbdimg", child, "default")["status"]
    assert status["parent"] == {"pool": pool, "image": base, "snapshot": "gold"}
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, child, read_only=True) as img:
        assert img.read(0, 6) == b"golden"

    platform.apply(image(child, pool, size="2Gi", source={"image": base, "snapshot": "gold", "flatten": True}))
    wait_for(lambda: rbd_image(ceph, pool, child)["parent"] is None, 60, what="flattened")
    wait_for(lambda: "parent" not in platform.get("rbdimg", child, "default")["status"], 30, what="status parent cleared")
    platform.delete("rbdimg", child, "default", wait=True)


def test_in_use_image_is_not_deleted_and_trash_is_restorable(platform, ceph, pool, uniq):
    name = f"busy-{uniq}"
    platform.apply(image(name, pool, size="1Gi", trashRetention="1h"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    with ceph.open_ioctx(pool) as ioctx:
        holder = rbd.Image(ioctx, name)  # a read-write open registers a watcher, like a running VM
        try:
            platform.delete("rbdimg", name, "default")
            cond = platform.wait_condition("rbdimg", name, "False", "InUse", namespace="default")
            status = platform.get("rbdimg", name, "default")["status"]
            assert status["watchers"] and status["usedBy"]
            assert "in use by" in cond["message"] and status["usedBy"][0]["address"] in cond["message"]
            assert rbd_image(ceph, pool, name) is not None
        finally:
            holder.close()
        wait_for(lambda: platform.get("rbdimg", name, "default") is None, 90, what="deleted once unwatched")
        assert rbd_image(ceph, pool, name) is None
        trashed = [t for t in rbd.RBD().trash_list(ioctx) if t["name"] == name]
        assert len(trashed) == 1
        rbd.RBD().trash_restore(ioctx, trashed[0]["id"], name)
    assert rbd_image(ceph, pool, name)["size"] == GI


def test_trash_is_purged_after_retention(platform, ceph, pool, uniq):
    name = f"short-{uniq}"
    platform.apply(image(name, pool, size="64Mi", trashRetention="3s"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    platform.delete("rbdimg", name, "default", wait=True)
    assert _trashed(ceph, pool, name), "trashed first"
    # The storage's resync purges trash whose retention has ended.
    wait_for(lambda: not _trashed(ceph, pool, name), 60, what="trash purged after retention")


def test_retain_policy_keeps_the_image(platform, ceph, pool, uniq):
    name = f"keep-{uniq}"
    platform.apply(image(name, pool, size="64Mi", deletionPolicy="Retain"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    platform.delete("rbdimg", name, "default", wait=True)
    assert rbd_image(ceph, pool, name)["size"] == 64 * 2**20


def test_operator_killed_mid_work_converges_without_duplicates(platform, operator, ceph, pool, uniq):
    names = [f"crash-{uniq}-{i}" for i in range(40)]
    manifest = "\n---\n".join(
        f"apiVersion: rbd-operator.io/v1alpha1\nkind: RbdImage\nmetadata: {{name: {n}, namespace: default}}\n"
        f"spec: {{storage: {pool}, size: 256Mi}}" for n in names)
    platform.apply(manifest)
    with ceph.open_ioctx(pool) as ioctx:
        wait_for(lambda: any(n in rbd.RBD().list(ioctx) for n in names), 60, interval=0.05, what="first image")
        operator.kill(signal.SIGKILL)
        created_before_restart = sum(n in rbd.RBD().list(ioctx) for n in names)
    operator.start()
    for n in names:
        platform.wait_condition("rbdimg", n, "True", namespace="default", timeout=180)
    with ceph.open_ioctx(pool) as ioctx:
        listed = [n for n in rbd.RBD().list(ioctx) if n.startswith(f"crash-{uniq}-")]
    assert sorted(listed) == sorted(names), "every image exactly once"
    print(f"{created_before_restart}/{len(names)} images existed when the operator was killed")
    for n in names:
        platform.delete("rbdimg", n, "default")
    for n in names:
        wait_for(lambda: platform.get("rbdimg", n, "default") is None, 120, what=f"{n} deleted")


def test_watchers_appear_and_go_with_nobody_touching_the_image(platform, ceph, pool, uniq):
    """A client that is no libvirt domain (krbd, qemu-img, this test's librbd) sends no event: the storage's
    sweep lists each image's watchers and has the image reconciled when they changed (one interval late)."""
    name = f"watched-{uniq}"
    platform.apply(image(name, pool, size="64Mi"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    assert not platform.get("rbdimg", name, "default")["status"].get("usedBy")

    def status():
        return platform.get("rbdimg", name, "default")["status"]
    with ceph.open_ioctx(pool) as ioctx:
        holder = rbd.Image(ioctx, name)  # registers a watch, like a krbd map
        try:
            listed = sorted({w["addr"] for w in holder.watchers_list()})
            wait_for(lambda: status().get("watchers") == listed, 20, what="the watcher in status")
            users = status()["usedBy"]
            assert len(users) == 1 and "node" not in users[0] and users[0]["address"] in listed[0], users
        finally:
            holder.close()
    wait_for(lambda: not status().get("watchers") and not status().get("usedBy"), 20, what="the watcher gone")
    platform.delete("rbdimg", name, "default", wait=True)


def test_drift_is_restored_by_the_storage_sweep_and_idle_images_cost_no_writes(platform, ceph, pool, uniq):
    name = f"drift-{uniq}"
    platform.apply(image(name, pool, size="1Gi"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name) as img:
        img.resize(GI // 2, allow_shrink=True)
        img.update_features(rbd.RBD_FEATURE_FAST_DIFF, False)
    # The sweep (one pool listing + header reads per interval, no per-image timer) notices and reconciles.
    wait_for(lambda: rbd_image(ceph, pool, name)["size"] == GI, 30, what="size restored")
    wait_for(lambda: rbd_image(ceph, pool, name)["features"] & rbd.RBD_FEATURE_FAST_DIFF, 30, what="fast-diff back")
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    # Idle: two more intervals write nothing to the object.
    time.sleep(1)
    version = platform.get("rbdimg", name, "default")["metadata"]["resourceVersion"]
    time.sleep(11)
    assert platform.get("rbdimg", name, "default")["metadata"]["resourceVersion"] == version
    platform.delete("rbdimg", name, "default", wait=True)


def test_used_bytes_come_from_the_fast_diff_object_map_within_one_sweep_and_idle_images_cost_no_writes(
        platform, ceph, pool, uniq):
    name, mib = f"used-{uniq}", 2**20
    platform.apply(image(name, pool, size="64Mi"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    body = platform.get("rbdimg", name, "default")
    assert "fast-diff" in body["status"]["features"]
    assert body["status"]["usedBytes"] == 0, "a new image holds nothing: known at creation, no sweep needed"
    assert "USED" in platform.kubectl("get", "rbdimg", name, "-n", "default").stdout
    # 12 MiB at spread offsets: 1 MiB every 5 MiB lands in 12 distinct 4 MiB objects.
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name) as img:
        for i in range(12):
            img.write(os.urandom(mib), i * 5 * mib)
    written = time.monotonic()
    used = wait_for(lambda: platform.get("rbdimg", name, "default")["status"].get("usedBytes") or None, 15,
                    what="usedBytes after the writes")
    assert time.monotonic() - written < 12, "within one sweep (5 s here) plus the API round trips"
    assert 12 * mib <= used <= 48 * mib, used
    assert used == 48 * mib, "whole objects: 12 objects of 4 MiB"
    # Idle (the object map was written just now, so the sweep measures it again; same figure: no write).
    version = platform.get("rbdimg", name, "default")["metadata"]["resourceVersion"]
    time.sleep(12)
    assert platform.get("rbdimg", name, "default")["metadata"]["resourceVersion"] == version
    # A discard of whole objects gives space back.
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name) as img:
        img.discard(0, 16 * mib)
    wait_for(lambda: platform.get("rbdimg", name, "default")["status"]["usedBytes"] < used, 15,
             what="usedBytes after a discard")
    platform.delete("rbdimg", name, "default", wait=True)


def test_qos_limits_are_applied_shown_and_restored(platform, ceph, pool, uniq):
    name = f"qos-{uniq}"
    platform.apply(image(name, pool, size="64Mi", qos={"iopsLimit": 100, "bpsLimit": "10Mi", "writeIopsLimit": 50}))
    platform.wait_condition("rbdimg", name, "True", namespace="default")

    def limits() -> dict:
        out = platform.rbd_cli("config", "image", "ls", f"{pool}/{name}", "--format", "json")
        return {e["name"]: int(e["value"]) for e in json.loads(out) if e["name"].startswith("rbd_qos_")
                and e["source"] == "image"}
    assert limits() == {"rbd_qos_iops_limit": 100, "rbd_qos_bps_limit": 10 * 2**20, "rbd_qos_write_iops_limit": 50}
    wait_for(lambda: platform.get("rbdimg", name, "default")["status"].get("qos") ==
             {"bpsLimit": 10 * 2**20, "iopsLimit": 100, "writeIopsLimit": 50}, 30, what="qos in status")
    platform.rbd_cli("config", "image", "set", f"{pool}/{name}", "rbd_qos_iops_limit", "5")
    wait_for(lambda: limits()["rbd_qos_iops_limit"] == 100, 30, what="a hand-changed limit restored")
    platform.delete("rbdimg", name, "default", wait=True)


def snapshot(name: str, image_name: str, namespace: str = "default", **spec) -> dict:
    return {"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdSnapshot",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"image": image_name, **spec}}


def test_snapshot_clone_flatten_and_deletion_waits_for_clones(platform, ceph, pool, uniq):
    base, snap, child = f"sbase-{uniq}", f"snap-{uniq}", f"schild-{uniq}"
    platform.apply(image(base, pool, size="64Mi"))
    platform.wait_condition("rbdimg", base, "True", namespace="default")
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, base) as img:
        img.write(b"template data", 0)
    platform.apply(snapshot(snap, base))
    platform.wait_condition("rbdsnap", snap, "True", namespace="default")
    status = platform.get("rbdsnap", snap, "default")["status"]
    assert status["readyToUse"] is True and status["sizeBytes"] == 64 * 2**20 and status["createdAt"]
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, base, read_only=True) as img:
        assert snap in [s["name"] for s in img.list_snaps()]
        uid = platform.get("rbdsnap", snap, "default")["metadata"]["uid"]
        identity = (f"{platform.get('namespace', 'kube-system')['metadata']['uid']}/"
                    f"{platform.get('namespace', 'default')['metadata']['uid']}")
        assert img.metadata_get(f"rbd-operator.io/snapshot.{snap}") == f"default/{snap}/{uid}@{identity}"

    # A clone from the RbdSnapshot (same namespace), size taken from the snapshot.
    platform.apply(image(child, pool, source={"rbdSnapshot": snap}))
    platform.wait_condition("rbdimg", child, "True", namespace="default")
    got = rbd_image(ceph, pool, child)
    assert got["parent"] == base and got["size"] == 64 * 2**20
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, child, read_only=True) as img:
        assert img.read(0, 13) == b"template data"

    # Deleting the snapshot waits while the clone depends on it, naming the clone.
    platform.delete("rbdsnap", snap, "default")
    cond = platform.wait_condition("rbdsnap", snap, "False", "HasClones", namespace="default")
    assert child in cond["message"]
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, base, read_only=True) as img:
        assert snap in [s["name"] for s in img.list_snaps()]

    # Flatten the clone: then the snapshot goes (unprotected and removed by the operator).
    platform.apply(image(child, pool, source={"rbdSnapshot": snap, "flatten": True}))
    wait_for(lambda: rbd_image(ceph, pool, child)["parent"] is None, 60, what="flattened")
    wait_for(lambda: platform.get("rbdsnap", snap, "default") is None, 120, what="snapshot deleted")
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, base, read_only=True) as img:
        assert snap not in [s["name"] for s in img.list_snaps()]
    platform.wait_condition("rbdimg", child, "True", namespace="default")
    for name in (child, base):
        platform.delete("rbdimg", name, "default", wait=True)


def test_a_rename_cut_short_by_a_crash_is_finished_not_lost(platform, ceph, pool, uniq):
    """librbd renames in steps (rbd_id.<new>, then the directory, then rbd_id.<old>). A crash between
    the first two leaves an image that opens under its final name but is listed under its staging
    name: found by the CI run of the crash test (the RbdImage said Ready, `rbd ls` lacked it). The
    operator must finish the rename, not report Ready, and never drop the staged image."""
    from rbd_operator.reconcile.ownership import staging_name

    name = f"halfren-{uniq}"
    platform.apply(image(name, pool, size="64Mi"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    obj = platform.get("rbdimg", name, "default")
    staging = staging_name(f"default/{name}/{obj['metadata']['uid']}")
    marker = b"rename-cut-short-" + uniq.encode()
    with ceph.open_ioctx(pool) as ioctx:
        with rbd.Image(ioctx, name) as img:
            img.write(marker, 4096)
            image_id = img.id()
        # The state a crash leaves: listed as staging, rbd_id.<name> already written.
        rbd.RBD().rename(ioctx, name, staging)
        ioctx.write_full(f"rbd_id.{name}", len(image_id).to_bytes(4, "little") + image_id.encode())
        assert name not in rbd.RBD().list(ioctx) and staging in rbd.RBD().list(ioctx)

    platform.kubectl("annotate", "--overwrite", "rbdimg", name, "-n", "default",
                     f"resync.rbd-operator.io/requested={time.time()}")

    def finished() -> bool:
        with ceph.open_ioctx(pool) as ioctx:
            listed = rbd.RBD().list(ioctx)
            return name in listed and staging not in listed
    wait_for(finished, 60, what="the rename finished")
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        assert img.id() == image_id, "the same image, not a new one"
        assert img.read(4096, len(marker)) == marker, "its data kept"
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    platform.delete("rbdimg", name, "default")


def test_a_name_taken_while_creating_is_left_to_its_owner(platform, ceph, pool, uniq):
    """The operator renames its staged image into place with librbd's own object steps (no image
    open). Someone creating the final name between the staged creation and the rename must win: the
    operator's staged image goes, the other image and its id object stay exactly as they were."""
    from rbd_operator.adapters import ceph as ceph_adapter
    from rbd_operator.adapters.ceph import rbd_raw
    from rbd_operator.reconcile.actions import CreateImage

    keyring = (platform.ceph_dir / "ceph.client.admin.keyring").read_text()
    key = next(line.split("=", 1)[1].strip() for line in keyring.splitlines() if line.strip().startswith("key"))
    cluster = ceph_adapter.CephCluster(ceph_adapter.Credentials(tuple(platform.monitors), "admin", key))
    name, staging = f"race-{uniq}", f"rbdop-new-race{uniq}"
    step = CreateImage(name, staging=staging, owner=f"default/{name}/uid-{uniq}", size=64 << 20,
                       features=rbd.RBD_FEATURE_LAYERING)
    with ceph.open_ioctx(pool) as theirs:
        def make(staged: str) -> None:  # ours, then theirs under the final name (untagged)
            rbd.RBD().create(theirs, staged, 64 << 20, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
            rbd.RBD().create(theirs, name, 32 << 20, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
        try:
            with cluster.ioctx(pool) as ioctx, pytest.raises(ceph_adapter.CephError) as raised:
                cluster._create_staged(ioctx, pool, step, make)
        finally:
            cluster.close()
        assert raised.value.reason == "NotOwned"
        listed = rbd.RBD().list(theirs)
        assert name in listed and staging not in listed
        with rbd.Image(theirs, name, read_only=True) as img:
            assert img.size() == 32 << 20, "their image, untouched"
            assert ("rbd-operator.io/owner", step.owner) not in list(img.metadata_list())
            their_id = img.id()
        assert rbd_raw.read_id_object(theirs, name) == their_id
        rbd.RBD().remove(theirs, name)


FINALIZER = "rbd-operator.io/finalizer"
POLICY = ROOT / "deploy" / "components" / "finalizer-policy" / "finalizer-policy.yaml"
BINDING = "mutatingadmissionpolicybinding/rbdimage-finalizer.rbd-operator.io"


def _kopf_wrote_finalizer(platform, name: str) -> bool:
    out = platform.kubectl("get", "rbdimg", name, "-n", "default", "-o", "json", "--show-managed-fields")
    obj = json.loads(out.stdout)
    assert FINALIZER in obj["metadata"].get("finalizers", [])
    return any(m.get("manager") == "kopf" and "f:finalizers" in (m.get("fieldsV1") or {}).get("f:metadata", {})
               for m in obj["metadata"].get("managedFields", []))


def _policy_in_effect(platform) -> bool:
    probe = json.dumps(image("policy-probe", "probe", size="1Gi"))
    out = platform.kubectl("create", "--dry-run=server", "-o", "jsonpath={.metadata.finalizers}", "-f", "-",
                           input=probe, check=False)
    return out.returncode == 0 and FINALIZER in out.stdout


def test_the_finalizer_policy_saves_a_write_and_without_it_the_operator_adds_the_finalizer(platform, ceph, pool,
                                                                                           uniq):
    """deploy/components/finalizer-policy (installed by hack/bootstrap.sh where the API server has
    MutatingAdmissionPolicy v1): the API server adds the finalizer at creation, so the operator
    never writes it. Without the policy (older clusters) the operator adds it before making the image."""
    served = '"name":"mutatingadmissionpolicies"' in platform.kubectl(
        "get", "--raw", "/apis/admissionregistration.k8s.io/v1", check=False).stdout
    if not served and os.environ.get("RBD_TEST_USE_EXISTING_CLUSTER") == "1":
        pytest.skip("this existing cluster has no MutatingAdmissionPolicy v1 (Kubernetes < 1.36)")
    assert served, "the test control plane (hack/kube) serves MutatingAdmissionPolicy v1"
    if os.environ.get("RBD_FINALIZER_POLICY") == "0":
        pytest.skip("RBD_FINALIZER_POLICY=0: the policy was left out on purpose")
    assert _policy_in_effect(platform), "hack/bootstrap.sh installs the policy on this API server"
    with_policy, without = f"pol-{uniq}", f"nopol-{uniq}"
    platform.apply(image(with_policy, pool, size="1Gi"))
    platform.wait_condition("rbdimg", with_policy, "True", namespace="default")
    assert not _kopf_wrote_finalizer(platform, with_policy), "the finalizer came with the creation"
    platform.delete("rbdimg", with_policy, "default", wait=True)
    assert rbd_image(ceph, pool, with_policy) is None and _trashed(ceph, pool, with_policy), \
        "deleted through the finalizer: moved to the trash"

    platform.kubectl("delete", BINDING)
    try:
        wait_for(lambda: not _policy_in_effect(platform), 30, what="the policy out of effect")
        platform.apply(image(without, pool, size="1Gi"))
        platform.wait_condition("rbdimg", without, "True", namespace="default")
        assert _kopf_wrote_finalizer(platform, without), "the operator added the finalizer itself"
        platform.delete("rbdimg", without, "default", wait=True)
        assert rbd_image(ceph, pool, without) is None and _trashed(ceph, pool, without)
    finally:
        platform.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(POLICY))
        wait_for(lambda: _policy_in_effect(platform), 60, what="the policy back in effect")
