"""`rbd-operator discover`'s pure mapping (reconcile/discover.py): facts -> manifests, hostile values."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rbd_operator.api.image import parse_image
from rbd_operator.api.names import K8S_NAME
from rbd_operator.api.snapshot import parse_snapshot
from rbd_operator.api.storage import parse_storage
from rbd_operator.reconcile.discover import (HOST_LABEL, ClusterFacts, DiscoverError, Document, HostFacts,
                                             HostSecret, ImageFacts, Options, PoolFacts, ceph_plan, discover,
                                             k8s_name, render, spec_differences)
from rbd_operator.reconcile.storage_plan import POOL_CLUSTER_KEY, POOL_OWNER_KEY, ObservedPool

FSID = "0f3b1c2d-1111-4222-8333-444455556666"
VMMGR_UUID = "5b1e4f0a-6c2d-4e8f-9a7b-3c1d2e4f6a8b"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GwJl"
LEGACY = {"mon": "allow r", "osd": "allow class-read object_prefix rbd_children, allow rwx pool=vmpool"}
FEATURES = ("layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten")


def pool(*images, name="vmpool", autoscale="off", **over):
    settings_ = {"pg_autoscale_mode": autoscale, "min_size": "1", "noscrub": "false", "nodelete": "true",
                 "compression_mode": "aggressive"}
    base = dict(name=name, pg_num=128, size=3, quota_max_bytes=10 << 30, quota_max_objects=0, applications=("rbd",),
                settings=settings_, options=("compression_mode",), images=tuple(images))
    base.update(over)
    return PoolFacts(**base)


def host(address="10.0.0.11", *secrets):
    return HostFacts(address, 22, "root", HOST_KEY, ("/etc/ceph/ceph.conf",), tuple(secrets))


def facts(*pools, hosts=(), caps=LEGACY, client="vmmgr"):
    return ClusterFacts(FSID, ("10.0.0.1:6789",), client, caps, tuple(pools), tuple(hosts))


def vmmgr_secret(uuid=VMMGR_UUID, name="client.vmmgr secret"):
    return HostSecret(uuid, "ceph", name)


def docs(result, kind):
    return [d for d in result.documents if d.kind == kind]


def test_the_vmmanager_installation_maps_to_adopting_manifests():
    images = (ImageFacts("vm1-disk", 2 << 30, FEATURES, snapshots=("golden",)),
              ImageFacts("vm2-disk", 1 << 30, ("layering",), parent=("vmpool", "vm1-disk", "golden")),
              ImageFacts("vm3-disk", 1 << 30, FEATURES + ("data-pool",), data_pool="vmdata"))
    result = discover(facts(pool(*images), hosts=[host("10.0.0.11", vmmgr_secret())]), Options("vms"))
    (storage,) = docs(result, "RbdStorage")
    spec = storage.body["spec"]
    assert spec["pool"] == {"name": "vmpool", "adopt": True, "replicas": 3, "pgNum": 128,
                            "quota": {"maxBytes": 10 << 30, "maxObjects": 0},
                            "parameters": {"compression_mode": "aggressive", "min_size": "1", "nodelete": "true",
                                           "pg_autoscale_mode": "off"}}
    assert spec["client"]["adopt"] is True and spec["client"]["caps"] == LEGACY
    assert spec["adoption"] == {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "vms"}}}
    assert spec["imageLimits"] == {"dataPools": ["vmdata"]}
    assert spec["hypervisors"] == {"nodeSelector": {"matchLabels": {HOST_LABEL: "true"}},
                                   "libvirtSecretUUID": VMMGR_UUID}
    assert spec["cluster"]["adminSecretRef"] == {"name": "ceph-admin"} and spec["deletionPolicy"] == "Retain"
    images_ = {d.body["spec"]["name"]: d.body["spec"] for d in docs(result, "RbdImage")}
    assert images_["vm1-disk"]["size"] == 2 << 30 and images_["vm1-disk"]["features"] == list(FEATURES)
    assert images_["vm2-disk"]["source"] == {"image": "vm1-disk", "snapshot": "golden"}
    assert images_["vm3-disk"]["dataPool"] == "vmdata" and "data-pool" not in images_["vm3-disk"]["features"]
    assert all(s["adopt"] and s["deletionPolicy"] == "Retain" for s in images_.values())
    (snap,) = docs(result, "RbdSnapshot")
    assert snap.body["spec"] == {"image": "vm1-disk", "name": "golden", "adopt": True, "deletionPolicy": "Retain"}
    (hvn,) = docs(result, "HypervisorNode")
    assert hvn.body["metadata"]["labels"] == {HOST_LABEL: "true"}
    assert hvn.body["spec"]["hostKey"] == HOST_KEY and hvn.body["spec"]["adopt"] is True
    assert hvn.body["spec"]["deletionPolicy"] == "Retain" and hvn.body["spec"]["packages"] == {"profile": "none"}
    # Every document passes the operator's own parsers; the text is valid YAML with the same content.
    parsed = list(yaml.safe_load_all(render(result)))
    assert [d for d in parsed if d] == [dict(d.body) for d in result.documents]


def test_pg_num_only_where_the_autoscaler_is_off():
    result = discover(facts(pool(autoscale="on")), Options("vms"))
    (storage,) = docs(result, "RbdStorage")
    assert "pgNum" not in storage.body["spec"]["pool"]
    assert any("autoscaler is 'on'" in c for c in storage.comments)


def test_caps_the_crd_refuses_are_left_to_the_adopted_client_with_a_comment():
    result = discover(facts(pool(), caps={"mon": "allow *", "osd": "allow *"}), Options("vms"))
    (storage,) = docs(result, "RbdStorage")
    assert "caps" not in storage.body["spec"]["client"]
    assert any("left to the adopted client" in c for c in storage.comments)
    assert "# caps of client.vmmgr left to the adopted client" in render(result)


def test_a_pool_without_the_rbd_application_says_the_one_change():
    result = discover(facts(pool(applications=())), Options("vms"))
    assert any("rbd pool init" in c for c in docs(result, "RbdStorage")[0].comments)


@pytest.mark.parametrize("name", ["$(reboot)", "a;b", "dïsk", "x" * 97, "-rf", "a\nb", "a b", "", "a/b", "a@b"])
def test_image_names_the_crd_cannot_hold_are_refused_with_their_name(name):
    f = facts(pool(ImageFacts("ok", 1 << 20, ()), ImageFacts(name, 1 << 20, ())))
    with pytest.raises(DiscoverError) as err:
        discover(f, Options("vms"))
    assert "--skip-unmappable" in str(err.value) and ascii(name)[:40] in str(err.value)
    result = discover(f, Options("vms", skip_unmappable=True))
    assert [d.body["spec"]["name"] for d in docs(result, "RbdImage")] == ["ok"]
    text = render(result)
    assert all(line.startswith(("#", " ", "-", "apiVersion", "kind", "metadata", "spec")) or not line
               for line in text.splitlines())
    assert all(ord(c) < 127 for c in text)


def test_hostile_snapshot_and_pool_names():
    bad_snap = facts(pool(ImageFacts("ok", 1 << 20, (), snapshots=("good", "ba d'$(x)"))))
    with pytest.raises(DiscoverError, match="snapshot of image vmpool/ok"):
        discover(bad_snap, Options("vms"))
    bad_pool = facts(pool(name="pool with space"))
    with pytest.raises(DiscoverError, match="pool 'pool with space'"):
        discover(bad_pool, Options("vms"))


def test_a_clone_of_another_pool_is_refused():
    f = facts(pool(ImageFacts("c", 1 << 20, ("layering",), parent=("templates", "base", "s"))))
    with pytest.raises(DiscoverError, match="another pool"):
        discover(f, Options("vms"))


@pytest.mark.parametrize("namespace", ["", "Vms", "a_b", "x" * 64, "vms\n"])
def test_a_bad_namespace_is_refused(namespace):
    with pytest.raises(DiscoverError, match="--namespace"):
        discover(facts(pool()), Options(namespace))


def test_a_privileged_client_is_refused():
    with pytest.raises(DiscoverError, match="client name"):
        discover(facts(pool(), client="admin"), Options("vms"))


def test_names_that_are_not_dns_1123_map_deterministically_and_distinctly():
    assert k8s_name("vm1-disk") == "vm1-disk"
    assert k8s_name("VM1_Disk") == k8s_name("VM1_Disk") != k8s_name("vm1_disk")
    assert K8S_NAME.fullmatch(k8s_name("VM1_Disk")) and k8s_name("VM1_Disk").startswith("vm1-disk-")
    assert len(k8s_name("a" * 300)) <= 253 and len(k8s_name("A" * 300, 63)) <= 63
    assert k8s_name("___") .startswith("x-")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_k8s_name_is_always_an_object_name(raw):
    assert K8S_NAME.fullmatch(k8s_name(raw)) and len(k8s_name(raw)) <= 253
    assert len(k8s_name(raw, 63)) <= 63


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x2d, max_codepoint=0x7a), min_size=1, max_size=20),
                min_size=1, max_size=5, unique=True))
def test_any_names_give_parseable_documents_or_a_clear_error(names):
    f = facts(pool(*(ImageFacts(n, 1 << 20, ("layering",), snapshots=(n,)) for n in names)))
    try:
        result = discover(f, Options("vms", skip_unmappable=True))
    except DiscoverError as exc:
        assert "would be named" in str(exc)  # two names mapping to one object name: refused, named
        return
    for doc in yaml.safe_load_all(render(result)):
        if not doc:
            continue
        assert K8S_NAME.fullmatch(doc["metadata"]["name"])
        parser = {"RbdStorage": parse_storage, "RbdImage": parse_image, "RbdSnapshot": parse_snapshot}[doc["kind"]]
        parser(doc["metadata"]["name"], doc["spec"])


def test_mapped_object_names_keep_the_ceph_names_in_spec():
    result = discover(facts(pool(ImageFacts("VM_Disk.1", 1 << 20, ()), name="VmPool")), Options("vms"))
    (storage,) = docs(result, "RbdStorage")
    assert storage.name.startswith("vmpool-") and storage.body["spec"]["pool"]["name"] == "VmPool"
    (image,) = docs(result, "RbdImage")
    assert image.name.startswith("vm-disk.1-") and image.body["spec"]["name"] == "VM_Disk.1"
    assert image.body["spec"]["storage"] == storage.name


def test_libvirt_secret_found_by_usage_overridden_or_ambiguous():
    other = HostSecret("11111111-2222-4333-8444-555555555555", "ceph", "client.other secret")
    vol = HostSecret("22222222-2222-4333-8444-555555555555", "volume", "client.vmmgr")
    result = discover(facts(pool(), hosts=[host("h1", vmmgr_secret(), other, vol), host("h2")]), Options("vms"))
    storage = docs(result, "RbdStorage")[0]
    assert storage.body["spec"]["hypervisors"]["libvirtSecretUUID"] == VMMGR_UUID
    assert any("defines it on h2" in c for c in storage.comments)
    # None found: derived, said so.
    result = discover(facts(pool(), hosts=[host("h1", other)]), Options("vms"))
    assert "libvirtSecretUUID" not in docs(result, "RbdStorage")[0].body["spec"]["hypervisors"]
    # Two: refused unless one names the pool, or --libvirt-secret-uuid picks.
    two = [host("h1", vmmgr_secret()), host("h2", vmmgr_secret("33333333-2222-4333-8444-555555555555"))]
    with pytest.raises(DiscoverError, match="--libvirt-secret-uuid"):
        discover(facts(pool(), hosts=two), Options("vms"))
    picked = discover(facts(pool(), hosts=two), Options("vms", secret_uuid=VMMGR_UUID))
    assert docs(picked, "RbdStorage")[0].body["spec"]["hypervisors"]["libvirtSecretUUID"] == VMMGR_UUID
    named = [host("h1", vmmgr_secret(), vmmgr_secret("33333333-2222-4333-8444-555555555555", "client.vmmgr vmpool"))]
    result = discover(facts(pool(), hosts=named), Options("vms"))
    assert docs(result, "RbdStorage")[0].body["spec"]["hypervisors"]["libvirtSecretUUID"].startswith("33333333")


def test_a_host_the_crd_cannot_hold_is_refused():
    bad = HostFacts("host;reboot", 22, "root", HOST_KEY)
    with pytest.raises(DiscoverError, match="host 'host;reboot'"):
        discover(facts(pool(), hosts=[bad]), Options("vms"))


def test_spec_differences_compare_only_what_the_document_states():
    want = {"size": 1 << 30, "features": ["layering"], "adopt": True}
    assert spec_differences(want, {**want, "trashRetention": "24h"}) == []
    assert spec_differences(want, {**want, "size": "1Gi"}) == []
    assert spec_differences(want, {**want, "size": "2Gi"}) == ["spec.size: '2Gi' -> 1073741824"]
    assert spec_differences(want, {**want, "features": ["layering", "striping"]})[0].startswith("spec.features")


def _observed(owner=None, size=3, quota=10 << 30):
    meta = {"rbd": {POOL_OWNER_KEY: owner, POOL_CLUSTER_KEY: "cluster-1"} if owner else {}}
    return ObservedPool.from_osd_dump({"pool": 4, "pool_name": "vmpool", "pg_num": 128, "pg_num_target": 128,
                                       "size": size, "quota_max_bytes": quota, "quota_max_objects": 0,
                                       "application_metadata": meta, "pg_autoscale_mode": "off", "min_size": 1,
                                       "options": {"compression_mode": "aggressive"},
                                       "flags_names": "hashpspool,nodelete"})


def test_ceph_plan_of_a_fresh_discovery_is_only_ownership_markers():
    result = discover(facts(pool()), Options("vms"))
    (storage,) = docs(result, "RbdStorage")
    markers, changes = ceph_plan(storage, {"vmpool": _observed()}, dict(LEGACY), [], "uid-1", "cluster-1")
    assert changes == [] and len(markers) == 2, (markers, changes)
    # Once adopted (records ours): nothing at all.
    markers, changes = ceph_plan(storage, {"vmpool": _observed("uid-1")}, dict(LEGACY), ["uid-1@cluster-1"],
                                 "uid-1", "cluster-1")
    assert (markers, changes) == ([], [])


def test_ceph_plan_shows_what_drifted_since_discovery():
    storage = docs(discover(facts(pool()), Options("vms")), "RbdStorage")[0]
    _, changes = ceph_plan(storage, {"vmpool": _observed(size=2, quota=0)}, {"mon": "allow r"}, [], "u", "c")
    assert any("size" in c for c in changes) and any("max_bytes" in c for c in changes)
    assert any("caps" in c for c in changes)


def test_documents_render_comments_safely():
    doc = Document({"apiVersion": "v1", "kind": "RbdImage", "metadata": {"name": "x"}, "spec": {}},
                   ("a comment\nwith: a newline and \x1b[31m escapes and ünïcode",))
    text = render(type("R", (), {"documents": [doc], "notes": [], "skipped": []})(), ["head\nline"])
    assert text.splitlines()[0] == "# head?line"
    assert "\n---\n# a comment?with" in text and "\x1b" not in text


def test_a_host_whose_ceph_conf_names_another_cluster_is_said_to_change():
    other = HostFacts("h1", 22, "root", HOST_KEY, ("/etc/ceph/ceph.conf",), (), "11111111-0000-4000-8000-$(x)")
    same = HostFacts("h2", 22, "root", HOST_KEY, ("/etc/ceph/ceph.conf",), (), FSID)
    result = discover(facts(pool(), hosts=[other, same]), Options("vms"))
    comments = {d.name: d.comments for d in docs(result, "HypervisorNode")}
    assert any("another cluster" in c for c in comments["h1"]) and not any("cluster" in c for c in comments["h2"])


def test_conf_fsid_reads_the_first_fsid_line():
    from rbd_operator.adapters.discover import conf_fsid
    assert conf_fsid(b"[global]\n  fsid = abc\nfsid = def\n") == "abc"
    assert conf_fsid(b"[global]\nmon_host = x\n") is None and conf_fsid(None) is None
    assert conf_fsid(b"fsid=\xff\xfe" + b"a" * 100) == "\ufffd\ufffd" + "a" * 62


def test_an_old_format_image_is_refused_with_the_way_out():
    f = facts(pool(ImageFacts("ok", 1 << 20, ()), ImageFacts("v1", 1 << 20, (), old_format=True)))
    with pytest.raises(DiscoverError, match="old-format .*rbd migration prepare"):
        discover(f, Options("vms"))
    result = discover(f, Options("vms", skip_unmappable=True))
    assert [d.body["spec"]["name"] for d in docs(result, "RbdImage")] == ["ok"]


@pytest.mark.parametrize("client", ["../../root/.ssh/id_rsa", "a b", "vm;rm -rf /", "admin", "client.vmmgr", "", "x" * 64,
                                    "vmmgr\n", "ünï"])
def test_a_client_name_that_is_not_a_plain_cephx_name_never_reaches_a_host_path_or_ceph(client):
    from rbd_operator.adapters import discover as reader
    with pytest.raises(DiscoverError):
        reader.read_host("192.0.2.1", 22, "root", "unused", ("ssh-ed25519", b"k"), client)
    with pytest.raises(DiscoverError):
        reader.read_cluster(None, client, None)  # refused before the cluster is touched
    assert reader.checked_client("vmmgr") == "vmmgr"
