"""Python's `$` also matches before a trailing newline: the validators at the point of use match the whole
value, so "name\\n" is refused like any other unsafe value (the CRDs' RE2 patterns refuse it too, but a value
can come from status, a Secret or Ceph)."""

import pytest

from rbd_operator.api.errors import OperatorError
from rbd_operator.api.hypervisor import check_package
from rbd_operator.api.names import check_client_name, check_image_name, check_pool_name, is_k8s_label, is_k8s_name
from rbd_operator.reconcile.host_plan import check_managed_path, check_monitor_addr, check_uuid

GOOD = {
    check_pool_name: "vmpool", check_image_name: "disk-0", check_client_name: "vmmgr",
}


@pytest.mark.parametrize("check", [check_pool_name, check_image_name, check_client_name])
def test_names_with_a_trailing_newline_are_refused(check):
    assert check("f", GOOD[check]) == GOOD[check]
    with pytest.raises(OperatorError):
        check("f", GOOD[check] + "\n")


def test_kubernetes_names_and_labels_with_a_trailing_newline_are_not_names():
    assert is_k8s_name("a-b") and is_k8s_label("a-b")
    assert not is_k8s_name("a-b\n") and not is_k8s_label("a-b\n")


def test_host_values_with_a_trailing_newline_never_reach_a_host():
    uuid = "0f3c2a4e-1b2c-4d5e-8f90-123456789abc"
    assert check_uuid(uuid) == uuid
    assert check_monitor_addr("10.0.0.1:3300") == "10.0.0.1:3300"
    assert check_managed_path("/etc/ceph/ceph.conf") == "/etc/ceph/ceph.conf"
    for bad, check in ((uuid + "\n", check_uuid), ("10.0.0.1:3300\n", check_monitor_addr),
                       ("/etc/ceph/ceph.conf\n", check_managed_path)):
        with pytest.raises(OperatorError):
            check(bad)


def test_package_names_with_a_trailing_newline_are_refused():
    assert check_package("qemu-block-extra", "p") == "qemu-block-extra"
    with pytest.raises(OperatorError):
        check_package("qemu-block-extra\n", "p")


def test_recorded_keyring_paths_and_stale_files_with_a_trailing_newline_are_not_ours():
    """status.storages keyringPath (status: anyone with status write can set it) and host directory entries:
    a trailing newline makes them not a path of ours (they were `re.match` with `$`)."""
    from rbd_operator.reconcile.host_plan import _entry_problem, keyring_settings_for, stale_files
    path = "/etc/ceph/ceph.client.vmmgr.keyring"
    assert keyring_settings_for(path) is not None
    assert keyring_settings_for(path + "\n") is None
    uuid = "0f3c2a4e-1b2c-4d5e-8f90-123456789abc"
    assert _entry_problem({"name": "s", "keyringPath": path, "secretUUID": uuid}) is None
    assert _entry_problem({"name": "s", "keyringPath": path + "\n", "secretUUID": uuid})
    assert _entry_problem({"name": "s", "keyringPath": path, "secretUUID": uuid + "\n"})
    listed = {"/etc/apt/sources.list.d": ["rbd-operator-ceph.list", "rbd-operator-ceph.list\n"]}
    assert stale_files(listed, []) == ["/etc/apt/sources.list.d/rbd-operator-ceph.list"]
