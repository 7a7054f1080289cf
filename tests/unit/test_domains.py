"""Running domains -> the RBD images they use, usedBy and online grow policy (reconcile/domains.py)."""

from __future__ import annotations

from rbd_operator.reconcile.domains import (WATCH_LINGER_SECONDS, GuestDisk, changed_images, guest_disks,
                                            live_users, must_grow, rbd_disks, released, unmanaged)


def disk(name: str, dev: str, protocol: str = "rbd", type_: str = "network") -> str:
    return (f"<disk type='{type_}' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='{protocol}' name='{name}'><host name='10.0.0.1' port='3300'/></source>"
            f"<target dev='{dev}' bus='virtio'/></disk>")


def domain(*disks: str) -> str:
    return f"<domain type='qemu'><name>vm</name><devices>{''.join(disks)}</devices></domain>"


def test_rbd_disks_of_a_domain():
    xml = domain(disk("pool/img", "vda"), disk("pool/other", "vdb"), disk("pool/img@snap", "vdc"),
                 disk("pool/ns/img", "vdd"), disk("vol", "vde", protocol="nbd"),
                 "<disk type='file' device='disk'><source file='/x.img'/><target dev='vdf'/></disk>")
    assert rbd_disks(xml) == {"pool/img": "vda", "pool/other": "vdb"}


def test_rbd_disks_of_bad_xml():
    assert rbd_disks("<domain><devices>") == {}
    assert rbd_disks('<!DOCTYPE x [<!ENTITY a "aaaa">]><domain/>') == {}
    assert rbd_disks(domain(disk("pool/img", ""))) == {}


def test_changed_and_released_images():
    before = {"a": {"p/1": "vda"}, "b": {"p/2": "vda", "p/3": "vdb"}}
    after = {"b": {"p/2": "vda", "p/3": "vdb"}, "c": {"p/4": "vda"}}
    assert changed_images(before, after) == {"p/1", "p/4"}
    assert released(before, after) == {"p/1"}
    assert changed_images(after, after) == set()
    # the image moved from one domain to another on the same host: both changed, none released
    assert changed_images({"a": {"p/1": "vda"}}, {"b": {"p/1": "vda"}}) == {"p/1"}
    assert released({"a": {"p/1": "vda"}}, {"b": {"p/1": "vda"}}) == set()


def test_guest_disks():
    hosts = {"h1": {"vm1": {"p/1": "vda"}, "vm2": {"p/2": "vda"}}, "h2": {"vm3": {"p/1": "vdb"}}}
    assert guest_disks("p/1", hosts) == [GuestDisk("h1", "vm1", "vda"), GuestDisk("h2", "vm3", "vdb")]
    assert guest_disks("p/9", hosts) == []


NODES = {"10.0.0.11": "h1", "10.0.0.12": "h2"}


def test_live_users_adds_hosts_libvirt_names():
    hosts = {"h1": {"vm": {"p/1": "vda"}}}
    assert live_users([], NODES, "p/1", hosts, {}, 100.0) == [{"node": "h1", "address": "10.0.0.11"}]
    assert live_users(["10.0.0.11:0/123"], NODES, "p/1", hosts, {}, 100.0) == [{"node": "h1", "address": "10.0.0.11"}]


def test_live_users_drops_a_lingering_watch_after_the_domain_went():
    watchers = ["10.0.0.11:0/1", "10.0.0.12:0/2"]
    hosts = {"h2": {"vm": {"p/1": "vda"}}}
    users = live_users(watchers, NODES, "p/1", hosts, {"h1": 100.0}, 110.0)
    assert users == [{"node": "h2", "address": "10.0.0.12"}]
    # once the watch had time to expire, a watcher still there is a real user (krbd, qemu-img)
    later = live_users(watchers, NODES, "p/1", hosts, {"h1": 100.0}, 100.0 + WATCH_LINGER_SECONDS + 1)
    assert [u["node"] for u in later] == ["h1", "h2"]


def test_live_users_keeps_watchers_libvirt_does_not_know():
    users = live_users(["10.9.9.9:0/1", "10.0.0.12:0/2"], NODES, "p/1", {}, {}, 0.0)
    assert users == [{"address": "10.9.9.9"}, {"node": "h2", "address": "10.0.0.12"}]
    assert unmanaged(users) == ["10.9.9.9"]


def test_must_grow():
    assert must_grow(16 << 20, 80 << 20)
    assert not must_grow(80 << 20, 80 << 20)
    assert not must_grow(100 << 20, 80 << 20)  # a shrink is never pushed into a guest
    assert not must_grow(0, 80 << 20)  # no answer: nothing to compare


def test_the_sweep_reconciles_an_image_whose_watchers_changed():
    from rbd_operator.reconcile.image_plan import ObservedImage
    from rbd_operator.reconcile.tracking import Tracked, watchers_changed

    def tracked(watchers):
        status = {"imageId": "1", **({} if watchers is None else {"watchers": watchers})}
        return Tracked.of("img", "default", "u", {"spec": {}, "status": status, "metadata": {}})
    header = ObservedImage(size=1, features=0, id="1", watchers=["10.0.0.1:0/2", "10.0.0.9:0/1"])
    assert not watchers_changed(tracked(["10.0.0.9:0/1", "10.0.0.1:0/2"]), header)
    assert watchers_changed(tracked([]), header)
    assert watchers_changed(tracked(["10.0.0.9:0/1"]), header)
    assert not watchers_changed(tracked(None), header)  # never recorded: the image's own reconcile writes it
    assert not watchers_changed(tracked([]), None)
