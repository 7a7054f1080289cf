import base64

import pytest

from rbd_operator.api.errors import Refused, SpecError
from rbd_operator.api.hypervisor import parse_host, parse_host_key
from rbd_operator.reconcile import host_plan
from rbd_operator.reconcile.host_plan import HostStorage
from rbd_operator.reconcile.selector import matches


def ed25519_line():
    blob = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + b"k" * 32
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


FSID = "7c9d8d1e-5a0b-4f5e-9c3d-2b1a0f9e8d7c"
UUID = "2f0e4c1a-9b8d-5e7f-8a6b-1c2d3e4f5a6b"
KEY = base64.b64encode(b"\x01\x00" + b"\x00" * 8 + (16).to_bytes(2, "little") + b"k" * 16).decode()

BASE = {"address": "10.254.1.11", "sshKeySecretRef": {"name": "k", "namespace": "n"}, "hostKey": ed25519_line()}


def test_defaults():
    spec = parse_host("h1", BASE)
    assert (spec.port, spec.user, spec.profile, spec.host_key_policy) == (22, "root", "qemu-rbd", "Pinned")
    assert not spec.allow_disruption and not spec.paused


@pytest.mark.parametrize("patch,field", [
    ({"address": "h;rm -rf /"}, "spec.address"),
    ({"address": "$(id)"}, "spec.address"),
    ({"user": "root;id"}, "spec.user"),
    ({"hostKey": None}, "spec.hostKey"),
    ({"hostKey": "ssh-ed25519 not-base64!"}, "spec.hostKey"),
    ({"hostKey": "ssh-rsa " + ed25519_line().split()[1]}, "spec.hostKey"),
    ({"packages": {"install": ["qemu;reboot"]}}, "spec.packages.install[0]"),
    ({"packages": {"remove": ["$(reboot)"]}}, "spec.packages.remove[0]"),
    ({"packages": {"install": ["a"], "remove": ["a"]}}, "spec.packages.remove"),
    ({"packages": {"repositories": [{"name": "x;y", "baseURL": "http://a/", "trusted": True}]}},
     "spec.packages.repositories[0].name"),
    ({"packages": {"repositories": [{"name": "x", "baseURL": "http://a/'\nevil", "trusted": True}]}},
     "spec.packages.repositories[0].baseURL"),
    ({"packages": {"repositories": [{"name": "x", "baseURL": "http://a/"}]}}, "spec.packages.repositories[0].gpgKey"),
    ({"packages": {"repositories": [{"name": "x", "baseURL": "http://a/", "trusted": True,
                                     "distribution": "../../etc"}]}}, "spec.packages.repositories[0].distribution"),
])
def test_invalid(patch, field):
    spec = {**BASE, **patch}
    with pytest.raises(SpecError) as err:
        parse_host("h1", spec)
    assert err.value.field == field


def test_tofu_needs_no_key():
    spec = parse_host("h1", {**BASE, "hostKey": None, "hostKeyPolicy": "TrustOnFirstUse"})
    assert spec.host_key is None


def test_host_key_parse():
    kind, blob = parse_host_key(ed25519_line() + " comment")
    assert kind == "ssh-ed25519" and blob.startswith(b"\x00\x00\x00\x0bssh-ed25519")


def test_packages_per_family():
    spec = parse_host("h", {**BASE, "packages": {"install": ["htop"], "remove": ["ceph-common"]}})
    assert host_plan.desired_packages(spec, "debian") == ["qemu-utils", "qemu-block-extra", "librbd1", "htop"]
    none = parse_host("h", {**BASE, "packages": {"profile": "none", "install": ["qemu-kvm-rhev"]}})
    assert host_plan.desired_packages(none, "rhel") == ["qemu-kvm-rhev"]
    assert host_plan.disruptive(["qemu-kvm", "libvirt", "htop", "kvm"]) == ["qemu-kvm", "libvirt", "kvm"]


def test_family():
    assert host_plan.family_of("debian", "") == "debian"
    assert host_plan.family_of("centos", "rhel fedora") == "rhel"
    assert host_plan.family_of("ubuntu", "debian") == "debian"
    assert host_plan.family_of("arch", "") is None


def test_repository_files():
    spec = parse_host("h", {**BASE, "packages": {"repositories": [
        {"name": "ceph-qemu", "baseURL": "http://repo.example/rpm", "priority": 2, "trusted": True}]}})
    rhel = {f.path: f.content for f in host_plan.repository_plan(spec, "rhel")}
    assert "priority=2" in rhel["/etc/yum.repos.d/rbd-operator-ceph-qemu.repo"]
    assert "gpgcheck=0" in rhel["/etc/yum.repos.d/rbd-operator-ceph-qemu.repo"]
    assert rhel["/etc/yum/pluginconf.d/priorities.conf"] == "# written by rbd-operator\n[main]\nenabled = 1\n"
    deb = {f.path: f.content for f in host_plan.repository_plan(spec, "debian")}
    assert deb["/etc/apt/sources.list.d/rbd-operator-ceph-qemu.list"] == "deb [trusted=yes] http://repo.example/rpm ./\n"
    assert 'Pin: origin "repo.example"' in deb["/etc/apt/preferences.d/rbd-operator-ceph-qemu"]


def test_stale_files_only_ours():
    desired = [host_plan.RemoteFile("/etc/yum.repos.d/rbd-operator-a.repo", "")]
    existing = {"/etc/yum.repos.d": ["rbd-operator-a.repo", "rbd-operator-b.repo", "CentOS-Base.repo"]}
    assert host_plan.stale_files(existing, desired) == ["/etc/yum.repos.d/rbd-operator-b.repo"]


def test_ceph_files_and_secret():
    storage = HostStorage("vmstore", FSID, ("[v2:10.0.0.1:3300,v1:10.0.0.1:6789]",), "vmmgr", "vmstore",
                          UUID, KEY)
    assert "mon_host = [v2:10.0.0.1:3300,v1:10.0.0.1:6789]" in host_plan.ceph_conf([storage])
    assert host_plan.ceph_conf([storage]) == ("# written by rbd-operator\n[global]\nfsid = " + FSID
                                               + "\nmon_host = [v2:10.0.0.1:3300,v1:10.0.0.1:6789]\n")
    assert host_plan.keyring(storage) == f"# written by rbd-operator\n[client.vmmgr]\n\tkey = {KEY}\n"
    xml = host_plan.secret_xml(storage)
    assert "private='yes'" in xml and f"<uuid>{UUID}</uuid>" in xml and KEY[:10] not in xml
    assert storage.keyring_path == "/etc/ceph/ceph.client.vmmgr.keyring"
    assert host_plan.monitor_hosts([{"name": "a", "v1": "1.2.3.4:6789", "v2": "1.2.3.4:3300"}]) == (
        "[v2:1.2.3.4:3300,v1:1.2.3.4:6789]",)


def test_selector():
    labels = {"rbd": "yes", "zone": "a"}
    assert matches({"matchLabels": {"rbd": "yes"}}, labels)
    assert not matches({"matchLabels": {"rbd": "no"}}, labels)
    assert matches({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, labels)
    assert not matches({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, labels)
    assert matches({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, labels)
    assert not matches({}, labels) and not matches(None, labels)


def test_storage_hosts_summary():
    from rbd_operator.api.storage import parse_storage
    from rbd_operator.reconcile.storage_plan import hosts_summary

    spec = parse_storage("vmstore", {"cluster": {"monitors": ["h:3300"], "adminSecretRef": {"name": "a", "namespace": "b"}},
                                     "hypervisors": {"nodeSelector": {"matchLabels": {"rbd": "yes"}}}})
    index = {
        "h1": [{"labels": {"rbd": "yes"},
                "storages": [{"name": "vmstore", "secretUUID": "u1", "keyVersion": "7", "current": True}]}],
        "h2": [{"labels": {"rbd": "yes"},
                "storages": [{"name": "vmstore", "secretUUID": "old", "keyVersion": "7", "current": True}]}],
        "h3": [{"labels": {"rbd": "no"}, "storages": []}],
        "h4": [{"labels": {"rbd": "yes"},  # still holds the key from before a rotation
                "storages": [{"name": "vmstore", "secretUUID": "u1", "keyVersion": "5", "current": True}]}],
    }
    assert hosts_summary(spec, "u1", "7", "vmstore", index) == {"selected": 3, "current": 1,
                                                                "names": ["h1", "h2", "h4"]}


STATUS = {"fsid": FSID, "pool": "vmstore", "libvirtSecretUUID": UUID,
          "monitors": [{"name": "a", "v1": "10.0.0.1:6789", "v2": "10.0.0.1:3300"}]}


def test_host_storage_validates_every_value_at_the_point_of_use():
    good = host_plan.host_storage("vmstore", STATUS, {"userID": "vmmgr", "userKey": KEY}, "7", None)
    assert good.keyring_path == "/etc/ceph/ceph.client.vmmgr.keyring" and good.key_version == "7"
    bad_cases = [
        ({**STATUS, "pool": "-rf"}, {"userID": "vmmgr", "userKey": KEY}),
        ({**STATUS, "monitors": [{"v1": "10.0.0.1:6789\nmon_host = evil:1"}]}, {"userID": "vmmgr", "userKey": KEY}),
        ({**STATUS, "libvirtSecretUUID": "../../x"}, {"userID": "vmmgr", "userKey": KEY}),
        ({**STATUS, "fsid": "x\n[global]"}, {"userID": "vmmgr", "userKey": KEY}),
        (STATUS, {"userID": "x/../..", "userKey": KEY}),
        (STATUS, {"userID": "admin", "userKey": KEY}),
        (STATUS, {"userID": "vmmgr", "userKey": KEY + "\n[client.admin]"}),
        (STATUS, {"userID": "vmmgr", "userKey": "not a key"}),
    ]
    for status, secret in bad_cases:
        with pytest.raises(Refused) as err:
            host_plan.host_storage("vmstore", status, secret, "7", None)
        assert err.value.reason == "UnsafeValue"
        assert KEY not in err.value.message


def test_managed_paths_only():
    for path in ("/etc/ceph/ceph.client.vmmgr.keyring", "/etc/ceph/ceph.conf",
                 "/etc/apt/sources.list.d/rbd-operator-local.list", "/etc/yum.repos.d/rbd-operator-x.repo"):
        assert host_plan.check_managed_path(path) == path
    for path in ("/etc/ceph/ceph.client.x/../../shadow.keyring", "/etc/ceph/ceph.client.x/../..",
                 "/etc/passwd", "/etc/apt/sources.list.d/other.list", "/etc/ceph/ceph.client..keyring"):
        with pytest.raises(Refused):
            host_plan.check_managed_path(path)
    # A host's own directory listing is untrusted too.
    assert host_plan.stale_files({"/etc/apt/sources.list.d": ["rbd-operator-x;rm -rf .list", "rbd-operator-a.list"]},
                                 []) == ["/etc/apt/sources.list.d/rbd-operator-a.list"]


def test_keys_leave_a_host_only_when_the_storage_stops_selecting_it_or_is_really_gone():
    previous = [{"name": n, "keyringPath": f"/etc/ceph/ceph.client.{n}.keyring", "deletionPolicy": p}
                for n, p in (("fresh", "Retain"), ("pending", "Delete"), ("deselected", "Retain"),
                             ("deleted", "Delete"), ("retained", "Retain"), ("legacy", None))]
    plan = host_plan.plan_previous_storages(previous, converging={"fresh"},
                                            selecting={"fresh", "pending"},
                                            existing={"fresh", "pending", "deselected"})
    assert [e["name"] for e in plan.remove] == ["deselected", "deleted"]
    assert [(e["name"], e.get("retained", False), e["current"]) for e in plan.carry] == [
        ("pending", False, False), ("retained", True, False), ("legacy", True, False)]


def test_dnf_removals_reads_every_removing_section():
    from rbd_operator.adapters.host import dnf_removals
    out = """Dependencies resolved.
================================================================================
 Package            Arch        Version             Repository            Size
================================================================================
Removing:
 qemu-img           x86_64      10:1.5.3-175.el7    @local                1.9 M
Removing dependent packages:
 libvirt            x86_64      4.5.0-36.el7        @local                0
 qemu-kvm           x86_64      10:1.5.3-175.el7    @local                0

Transaction Summary
================================================================================
Remove  3 Packages
Operation aborted.
"""
    assert dnf_removals(out, "") == ["qemu-img", "libvirt", "qemu-kvm"]
    assert dnf_removals("Dependencies resolved.\nNothing to do.\n", "") == []


def test_hosts_to_update_after_a_storage_change():
    from rbd_operator.reconcile.hosts import hosts_to_update
    spec = {"hypervisors": {"nodeSelector": {"matchLabels": {"rbd": "yes"}}}}
    status = {"keyVersion": "7", "libvirtSecretUUID": UUID}
    current = {"name": "vm", "keyVersion": "7", "secretUUID": UUID, "current": True}
    index = {
        "fresh": [{"labels": {"rbd": "yes"}, "storages": []}],                         # selected, holds nothing
        "stale": [{"labels": {"rbd": "yes"}, "storages": [{**current, "keyVersion": "6"}]}],  # old key
        "done": [{"labels": {"rbd": "yes"}, "storages": [current]}],
        "left": [{"labels": {}, "storages": [current]}],                                # no longer selected
        "kept": [{"labels": {}, "storages": [{**current, "retained": True}]}],
        "other": [{"labels": {}, "storages": []}],
    }
    assert hosts_to_update("vm", False, spec, status, index) == ["fresh", "left", "stale"]
    assert hosts_to_update("vm", True, spec, status, index) == ["done", "left", "stale"]
    assert hosts_to_update("vm", False, spec, {}, index) == ["left"], "no key yet: only removals"


def test_adopt_host_files_is_explicit():
    assert parse_host("h1", BASE).adopt is False
    assert parse_host("h1", {**BASE, "adopt": True}).adopt is True
    for bad in ("true", 1, None.__class__):
        with pytest.raises(SpecError) as err:
            parse_host("h1", {**BASE, "adopt": bad})
        assert err.value.field == "spec.adopt"
