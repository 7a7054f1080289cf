"""The API server itself rejects invalid objects, naming the field (CRD schema + CEL)."""

import pytest

from .manifests import image, storage


@pytest.mark.parametrize("pool,client,field", [
    ({"pgNum": -1}, {}, "spec.pool.pgNum"),
    ({}, {"capsProfile": "superuser"}, "spec.client.capsProfile"),
    ({"name": "a/b"}, {}, "spec.pool.name"),
    ({"parameters": {"size": "3"}}, {}, "spec.pool.parameters"),
    # No privileged identities: Ceph's admin and bootstrap users, or names spelling another entity type.
    ({}, {"name": "admin"}, "spec.client.name"),
    ({}, {"name": "bootstrap-osd"}, "spec.client.name"),
    ({}, {"name": "client.admin"}, "spec.client.name"),
    ({}, {"name": "osd.0"}, "spec.client.name"),
])
def test_invalid_storage_rejected(platform, pool, client, field):
    result = platform.apply(storage(platform, "invalid-storage", pool=pool, client=client), check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert platform.get("rbdstorage", "invalid-storage") is None


@pytest.mark.parametrize("spec,field", [
    ({"name": "a/b", "size": "1Gi"}, "spec.name"),
    ({"name": "a b", "size": "1Gi"}, "spec.name"),
    ({"size": "-1Gi"}, "spec.size"),
    ({"size": "0"}, "spec.size"),
    ({"size": "2 lots"}, "spec.size"),
    ({}, "spec.size"),
    ({"size": "1Gi", "features": ["layering", "teleport"]}, "spec.features"),
    ({"size": "1Gi", "features": ["layering", "fast-diff"]}, "spec.features"),
    ({"size": "1Gi", "deletionPolicy": "Purge"}, "spec.deletionPolicy"),
    ({"size": "1Gi", "revert": {"snapshot": "before", "generation": -1}}, "spec.revert.generation"),
    ({"size": "1Gi", "revert": {"generation": 1}}, "spec.revert.snapshot"),
    ({"size": "1Gi", "revert": {"snapshot": "Not_A_Name", "generation": 1}}, "spec.revert.snapshot"),
    ({"source": {"trash": True, "image": "base", "snapshot": "s1"}}, "spec.source"),
    ({"source": {"trash": "yes"}}, "spec.source.trash"),
])
def test_invalid_image_rejected(platform, spec, field):
    result = platform.apply(image("invalid-image", "vmstore", **spec), check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr


SCHED = {"selector": {"matchLabels": {"backup": "daily"}}, "interval": "1h", "keep": 2}


@pytest.mark.parametrize("spec,field", [
    ({**SCHED, "keep": 0}, "spec.keep"),
    ({**SCHED, "interval": "hourly"}, "spec.interval"),
    ({**SCHED, "selector": {}}, "spec.selector"),
    ({**SCHED, "selector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}}, "operator"),
    ({**SCHED, "deletionPolicy": "Orphan"}, "spec.deletionPolicy"),
    ({"selector": SCHED["selector"], "keep": 1}, "spec.interval"),
])
def test_invalid_snapshot_schedule_rejected(platform, spec, field):
    body = {"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdSnapshotSchedule",
            "metadata": {"name": "invalid-schedule", "namespace": "default"}, "spec": spec}
    result = platform.apply(body, check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert platform.get("rbdsnapsched", "invalid-schedule", "default") is None


def test_immutable_fields(platform):
    body = image("immutable-image", "some-storage", size="1Gi")
    platform.apply(body)
    try:
        body["spec"]["storage"] = "other-storage"
        result = platform.apply(body, check=False)
        assert result.returncode != 0 and "spec.storage is immutable" in result.stderr
        body["spec"]["storage"] = "some-storage"
        body["spec"]["name"] = "renamed"
        result = platform.apply(body, check=False)
        assert result.returncode != 0 and "spec.name is immutable" in result.stderr
    finally:
        platform.delete("rbdimage", "immutable-image", "default")


def test_defaults_and_category(platform):
    body = storage(platform, "defaults-only", pool={}, secret="defaults-only-no-such-secret")
    body["spec"].pop("client")
    # No operator involvement needed: defaults come from the schema. An operator running meanwhile (the
    # session's) stops at the missing admin Secret (AuthFailed): it must not make client.vmmgr, which later
    # tests (a VMmanager host) expect to find absent.
    platform.apply(body)
    try:
        obj = platform.get("rbds", "defaults-only")
        # pgNum and capsProfile have no schema default: the operator applies its defaults only to what
        # it creates, so an adopted pool or client keeps what the spec does not state.
        assert obj["spec"]["pool"] == {"adopt": False, "application": "rbd"}
        assert obj["spec"]["client"] == {"name": "vmmgr", "adopt": False}
        assert obj["spec"]["deletionPolicy"] == "Retain"
        listed = platform.kubectl("get", "rbd", "-A").stdout
        assert "rbdstorage.rbd-operator.io/defaults-only" in listed
        names = platform.kubectl("api-resources", "--categories=rbd", "-o", "name").stdout.split()
        assert sorted(names) == ["hypervisornodes.rbd-operator.io", "rbdimages.rbd-operator.io",
                                 "rbdsnapshots.rbd-operator.io", "rbdsnapshotschedules.rbd-operator.io",
                                 "rbdstorages.rbd-operator.io"]
    finally:
        platform.delete("rbds", "defaults-only")


def test_deploy_base_is_accepted_by_the_api_server(platform):
    """deploy/ (namespace, CRDs, least-privilege RBAC, Deployment) passes server-side validation."""
    result = platform.kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-k", "deploy/")
    applied = result.stdout
    for kind in ("clusterrole.rbac.authorization.k8s.io/rbd-operator", "role.rbac.authorization.k8s.io/rbd-operator-secrets",
                 "deployment.apps/rbd-operator", "serviceaccount/rbd-operator"):
        assert kind in applied, applied
