"""RbdImage spec.revert (roll back to an RbdSnapshot) and spec.source.trash (restore a deleted RbdImage's
image from the RBD trash), against the real control plane and Ceph."""

import re

import pytest
import rbd

from .harness import wait_for
from .manifests import image, storage

MI = 2**20
BLOCK = 4096


@pytest.fixture(scope="module")
def pool(platform, operator, ceph):
    name = "revert"
    platform.apply(storage(platform, name, pool={"pgNum": 8, "quota": {"maxBytes": "20Gi"}},
                           client={"name": "revert"}))
    platform.wait_condition("rbds", name, "True")
    return name


def snapshot(name: str, image_name: str, namespace: str = "default") -> dict:
    return {"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdSnapshot",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"image": image_name}}


def write(ceph, pool, name, data: bytes, offset: int = 0) -> None:
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name) as img:
        img.write(data, offset)
        img.flush()


def read(ceph, pool, name, length: int = BLOCK, offset: int = 0) -> bytes:
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        return img.read(offset, length)


def image_id(ceph, pool, name) -> str | None:
    with ceph.open_ioctx(pool) as ioctx:
        try:
            with rbd.Image(ioctx, name, read_only=True) as img:
                return img.id()
        except rbd.ImageNotFound:
            return None


def reasons(platform, name, namespace="default") -> list[str]:
    return [e["reason"] for e in platform.events(name, namespace)]


def test_revert_restores_the_snapshot_s_content_and_refuses_under_a_watcher(platform, ceph, pool, uniq):
    name, snap, other, other_snap = f"rv-{uniq}", f"rv-snap-{uniq}", f"rvo-{uniq}", f"rvo-snap-{uniq}"
    before, after = b"before the upgrade".ljust(BLOCK, b"\0"), b"after a failed upgrade".ljust(BLOCK, b"\0")
    # Created with a spec.revert already in the manifest: recorded, never reverted.
    platform.apply(image(name, pool, size="64Mi", revert={"snapshot": snap, "generation": 1}))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    assert platform.get("rbdimg", name, "default")["status"]["revert"] == {"generation": 1}
    write(ceph, pool, name, before)
    write(ceph, pool, name, before, 40 * MI)
    platform.apply(snapshot(snap, name))
    platform.wait_condition("rbdsnap", snap, "True", namespace="default")
    write(ceph, pool, name, after)
    write(ceph, pool, name, after, 40 * MI)
    ident = image_id(ceph, pool, name)

    # Under a watcher (a read-write open, like a running VM): refused, nothing changed.
    with ceph.open_ioctx(pool) as ioctx:
        holder = rbd.Image(ioctx, name)
        try:
            platform.apply(image(name, pool, size="64Mi", revert={"snapshot": snap, "generation": 2}))
            cond = platform.wait_condition("rbdimg", name, "False", "InUse", namespace="default")
            assert "in use by" in cond["message"] and "nothing was changed" in cond["message"]
            status = platform.get("rbdimg", name, "default")["status"]
            address = re.search(r"\d+\.\d+\.\d+\.\d+", list(holder.watchers_list())[0]["addr"]).group(0)
            assert status["revert"] == {"generation": 1} and address in cond["message"]
            assert read(ceph, pool, name) == after and read(ceph, pool, name, offset=40 * MI) == after
        finally:
            holder.close()

    # Unwatched: rolled back (the handler retries by itself), status and Event say so.
    wait_for(lambda: (platform.get("rbdimg", name, "default")["status"].get("revert") or {}).get("generation") == 2,
             120, what="reverted once unwatched")
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    assert read(ceph, pool, name) == before and read(ceph, pool, name, offset=40 * MI) == before
    assert image_id(ceph, pool, name) == ident
    revert = platform.get("rbdimg", name, "default")["status"]["revert"]
    assert revert["snapshot"] == snap and revert["at"].endswith("Z")
    wait_for(lambda: "Reverted" in reasons(platform, name), 30, what="Reverted event")

    # Re-applying the same manifest does not revert again.
    write(ceph, pool, name, after)
    platform.apply(image(name, pool, size="64Mi", revert={"snapshot": snap, "generation": 2}, qos={"iopsLimit": 0}))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    assert read(ceph, pool, name) == after

    # A snapshot of another image: SourceNotAllowed, nothing changed.
    platform.apply(image(other, pool, size="64Mi"))
    platform.wait_condition("rbdimg", other, "True", namespace="default")
    platform.apply(snapshot(other_snap, other))
    platform.wait_condition("rbdsnap", other_snap, "True", namespace="default")
    platform.apply(image(name, pool, size="64Mi", revert={"snapshot": other_snap, "generation": 3}))
    cond = platform.wait_condition("rbdimg", name, "False", "SourceNotAllowed", namespace="default")
    assert other in cond["message"] and "Nothing was changed" in cond["message"]
    assert read(ceph, pool, name) == after
    assert platform.get("rbdimg", name, "default")["status"]["revert"]["generation"] == 2

    for snap_name in (snap, other_snap):
        platform.delete("rbdsnap", snap_name, "default", wait=True)
    for image_name in (name, other):
        platform.delete("rbdimg", image_name, "default", wait=True)


def test_a_deleted_image_is_restored_from_the_trash_with_its_data(platform, ceph, pool, uniq):
    name, data = f"tr-{uniq}", b"data worth keeping".ljust(BLOCK, b"\0")
    platform.apply(image(name, pool, size="64Mi", trashRetention="1h"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    write(ceph, pool, name, data, 8 * MI)
    ident = image_id(ceph, pool, name)
    platform.delete("rbdimg", name, "default", wait=True)
    assert image_id(ceph, pool, name) is None

    # Another namespace never gets it, even under the same image name in the same pool.
    platform.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{uniq}"}})
    platform.apply(image(name, pool, namespace=f"ns-{uniq}", source={"trash": True}))
    cond = platform.wait_condition("rbdimg", name, "False", "NotInTrash", namespace=f"ns-{uniq}")
    assert "nothing was created" in cond["message"] and image_id(ceph, pool, name) is None
    platform.delete("rbdimg", name, f"ns-{uniq}", wait=True)

    # The namespace and name of the deleted one: the same image (id and data) comes back.
    platform.apply(image(name, pool, source={"trash": True}))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    assert image_id(ceph, pool, name) == ident
    assert read(ceph, pool, name, offset=8 * MI) == data
    status = platform.get("rbdimg", name, "default")["status"]
    assert status["imageId"] == ident and status["sizeBytes"] == 64 * MI
    with ceph.open_ioctx(pool) as ioctx:
        assert not [t for t in rbd.RBD().trash_list(ioctx) if t["id"] == ident]
        with rbd.Image(ioctx, name, read_only=True) as img:
            uid = platform.get("rbdimg", name, "default")["metadata"]["uid"]
            assert f"/{uid}@" in img.metadata_get("rbd-operator.io/owner")
            with pytest.raises(KeyError):
                img.metadata_get("rbd-operator.io/trashed-by")
    wait_for(lambda: "Restored" in reasons(platform, name), 30, what="Restored event")
    # It is an ordinary image of the new RbdImage: it goes to the trash again when deleted.
    platform.delete("rbdimg", name, "default", wait=True)
    with ceph.open_ioctx(pool) as ioctx:
        assert [t for t in rbd.RBD().trash_list(ioctx) if t["id"] == ident]

    # Nothing in the trash under that name: NotInTrash, nothing created.
    missing = f"tr-none-{uniq}"
    platform.apply(image(missing, pool, source={"trash": True}))
    cond = platform.wait_condition("rbdimg", missing, "False", "NotInTrash", namespace="default")
    assert image_id(ceph, pool, missing) is None
    platform.delete("rbdimg", missing, "default", wait=True)
    platform.delete("namespace", f"ns-{uniq}")
