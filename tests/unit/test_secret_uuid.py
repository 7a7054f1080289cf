"""spec.hypervisors.libvirtSecretUUID: an existing libvirt secret's UUID adopted; changing it under hosts refused."""

import pytest

from rbd_operator.api.errors import Refused, SpecError
from rbd_operator.api.reasons import Reason
from rbd_operator.api.storage import parse_storage
from rbd_operator.reconcile.storage_plan import check_secret_uuid_change, libvirt_secret_uuid

BASE = {"cluster": {"monitors": ["h:3300"], "adminSecretRef": {"name": "a"}}, "client": {"name": "vmmgr"}}
FSID = "0f3b1c2d-1111-4222-8333-444455556666"
VMMGR = "5b1e4f0a-6c2d-4e8f-9a7b-3c1d2e4f6a8b"


def spec(uuid=None):
    return parse_storage("vms", {**BASE, "hypervisors": {} if uuid is None else {"libvirtSecretUUID": uuid}})


def hosts(*entries):
    return {f"h{i}": [{"labels": {}, "storages": [e]}] for i, e in enumerate(entries)}


def test_default_is_derived_and_stable():
    derived = libvirt_secret_uuid(FSID, "client.vmmgr", "vms", spec().libvirt_secret_uuid)
    assert derived == libvirt_secret_uuid(FSID, "client.vmmgr", "vms")
    assert derived != libvirt_secret_uuid(FSID, "client.vmmgr", "other")


def test_adopted_uuid_wins():
    assert libvirt_secret_uuid(FSID, "client.vmmgr", "vms", spec(VMMGR).libvirt_secret_uuid) == VMMGR


@pytest.mark.parametrize("bad", ["", "5B1E4F0A-6C2D-4E8F-9A7B-3C1D2E4F6A8B", "5b1e4f0a6c2d4e8f9a7b3c1d2e4f6a8b",
                                 "5b1e4f0a-6c2d-4e8f-9a7b-3c1d2e4f6a8b\n", "../../etc/passwd", 42, True,
                                 "5b1e4f0a-6c2d-4e8f-9a7b-3c1d2e4f6a8b'; rm -rf /", "ü" * 36])
def test_bad_uuids_are_refused_with_the_field(bad):
    with pytest.raises(SpecError) as err:
        spec(bad)
    assert err.value.field == "spec.hypervisors.libvirtSecretUUID"


def test_a_new_storage_may_name_any_uuid():
    check_secret_uuid_change(spec(VMMGR), "vms", {}, hosts())
    check_secret_uuid_change(spec(VMMGR), "vms", {"fsid": FSID}, hosts())


def test_unchanged_uuid_passes_under_hosts():
    status = {"fsid": FSID, "libvirtSecretUUID": VMMGR}
    check_secret_uuid_change(spec(VMMGR), "vms", status, hosts({"name": "vms", "secretUUID": VMMGR}))
    derived = libvirt_secret_uuid(FSID, "client.vmmgr", "vms")
    check_secret_uuid_change(spec(), "vms", {"fsid": FSID, "libvirtSecretUUID": derived},
                             hosts({"name": "vms", "secretUUID": derived}))


@pytest.mark.parametrize("before,after", [("derived", VMMGR), (VMMGR, None), (VMMGR, "derived-other")])
def test_changing_it_while_a_host_holds_the_old_one_is_refused(before, after):
    derived = libvirt_secret_uuid(FSID, "client.vmmgr", "vms")
    old = derived if before == "derived" else before
    new = "0a0b0c0d-0000-4000-8000-000000000001" if after == "derived-other" else after
    status = {"fsid": FSID, "libvirtSecretUUID": old, "hosts": {"selected": 1, "current": 1}}
    with pytest.raises(Refused) as err:
        check_secret_uuid_change(spec(new), "vms", status, hosts({"name": "vms", "secretUUID": old}))
    assert err.value.reason == Reason.LIBVIRT_SECRET_UUID_IN_USE
    assert old in err.value.message and "h0" in err.value.message


def test_changing_it_is_allowed_when_no_host_holds_the_old_one():
    status = {"fsid": FSID, "libvirtSecretUUID": VMMGR}
    # another storage's entry with the same UUID, and this storage's entry with another UUID, do not count
    check_secret_uuid_change(spec(), "vms", status, hosts({"name": "other", "secretUUID": VMMGR},
                                                          {"name": "vms", "secretUUID": FSID}))
