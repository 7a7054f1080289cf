from rbd_operator.api.storage import ClientSpec
from rbd_operator.reconcile.caps import caps_for, caps_weak, merge_caps, same_caps


def test_rbd_profile():
    assert caps_for(ClientSpec(), "vms") == {
        "mon": "profile rbd", "osd": "profile rbd pool=vms", "mgr": "profile rbd pool=vms"}


def test_legacy_profile_is_exactly_the_seed():
    assert caps_for(ClientSpec(caps_profile="legacy"), "vms") == {
        "mon": "allow r", "osd": "allow class-read object_prefix rbd_children, allow rwx pool=vms"}


def test_cache_pool_gets_rwx():
    caps = caps_for(ClientSpec(caps_profile="legacy", cache_pool="hot"), "vms")
    assert caps["osd"].endswith("allow rwx pool=vms, allow rwx pool=hot")
    assert "profile rbd pool=hot" in caps_for(ClientSpec(cache_pool="hot"), "vms")["osd"]


def test_explicit_caps_override_profile():
    assert caps_for(ClientSpec(caps={"mon": "allow r"}), "vms") == {"mon": "allow r"}


def test_merge_shared_client():
    merged = merge_caps([caps_for(ClientSpec(), "a"), caps_for(ClientSpec(), "b")])
    assert merged == {"mgr": "profile rbd pool=a, profile rbd pool=b", "mon": "profile rbd",
                      "osd": "profile rbd pool=a, profile rbd pool=b"}


def test_same_caps_ignores_order_and_spacing():
    assert same_caps({"osd": "a,  b"}, {"osd": "b, a"})
    assert not same_caps({"osd": "a"}, {"osd": "a", "mgr": "x"})
    assert not same_caps({"osd": "a"}, None)


def test_weakness():
    assert caps_weak(caps_for(ClientSpec(caps_profile="legacy"), "vms"))
    assert not caps_weak(caps_for(ClientSpec(), "vms"))
    assert not caps_weak({"mon": 'allow r, allow command "osd blocklist"'})
    assert caps_weak({})


def test_cephx_key_validation():
    import base64
    import struct

    from rbd_operator.adapters.ceph import valid_cephx_key
    good = base64.b64encode(struct.pack("<HIIH", 1, 0, 0, 16) + b"k" * 16).decode()
    assert valid_cephx_key(good)
    assert not valid_cephx_key("AQBkZW1vZGVtb2RlbW9kZW1vZGVtb2RlbW8xMjM0NQ==")
    assert not valid_cephx_key("not base64!")
    assert not valid_cephx_key(base64.b64encode(struct.pack("<HIIH", 2, 0, 0, 16) + b"k" * 16).decode())
