"""status.import across passes: only a pass that imports waits for an import slot or reports progress, and an
import finished by a pass that ended before its report is shown done by the next pass (CI once saw an imported
image Ready with status.import stuck at a later pass's "queued 0 %")."""

import logging

import pytest

from rbd_operator.api.image import features_to_bits, parse_image
from rbd_operator.api.storage import parse_storage
from rbd_operator.converge import image as converge
from rbd_operator.reconcile.image_plan import ObservedImage, Tenancy
from rbd_operator.reconcile.ownership import ImageOwner

GI = 2**30
ME = ImageOwner("vms", "disk", "uid-1", "cluster-1", "ns-uid")
URL = "https://t.example/templates/debian.qcow2"
STORAGE = parse_storage("s", {"cluster": {"monitors": ["h:3300"], "adminSecretRef": {"name": "a"}},
                              "pool": {"name": "vms"},
                              "imports": {"allowedURLPrefixes": ["https://t.example/templates/"]}})
DONE = {"bytes": GI, "totalBytes": GI, "percent": 100, "phase": "done"}


def imported_spec():
    return parse_image("disk", {"storage": "s", "source": {"url": URL}})


def existing(owner=ME.record):
    features = features_to_bits(["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"])
    return ObservedImage(size=GI, features=features, id="abc", owner=owner)


class Cluster:
    """What in_ceph asks of a cluster; any step applied is recorded (none may be, with imports=False)."""
    fast_path = True

    def __init__(self, observed):
        self.observed, self.applied = observed, []

    def observe_image(self, pool, name):
        return self.observed

    def finish_rename(self, pool, staging, image_id):
        pass

    def apply_image_step(self, pool, step, progress):
        self.applied.append(step)
        self.observed = existing()
        return self.observed

    def used_bytes(self, pool, names):
        return {}


def in_ceph(cluster, spec, imports):
    return converge.in_ceph.__wrapped__(cluster, STORAGE, spec, ME, lambda uid: True, Tenancy(),
                                        logging.getLogger("test"), imports=imports)


def test_a_pass_that_would_import_returns_before_its_first_step_without_imports():
    cluster = Cluster(None)
    assert in_ceph(cluster, imported_spec(), imports=False) is None
    assert cluster.applied == []
    result = in_ceph(cluster, imported_spec(), imports=True)
    assert [s.kind for s in cluster.applied] == ["import"] and result.image.id == "abc"


def test_a_pass_over_an_imported_image_converges_outside_the_import_pool():
    cluster = Cluster(existing())
    result = in_ceph(cluster, imported_spec(), imports=False)
    assert result is not None and result.done == [] and cluster.applied == []


def report(result, recorded):
    return converge.report("vms", imported_spec(), result, {}, 1, False, recorded).status.get("import")


def test_the_importing_pass_reports_done():
    result = in_ceph(Cluster(None), imported_spec(), imports=True)
    assert report(result, None) == DONE
    assert report(result, {"phase": "converting", "percent": 40}) == DONE


@pytest.mark.parametrize("recorded", [{"phase": "queued", "percent": 0}, {"phase": "converting", "percent": 97},
                                      {"phase": "downloading", "bytes": 5}])
def test_an_import_left_under_way_is_done_once_the_image_is_in_place(recorded):
    result = in_ceph(Cluster(existing()), imported_spec(), imports=False)
    assert report(result, recorded) == DONE


@pytest.mark.parametrize("recorded", [None, DONE, "hostile", ["phase"]])
def test_a_pass_without_an_import_under_way_leaves_status_import_alone(recorded):
    result = in_ceph(Cluster(existing()), imported_spec(), imports=False)
    assert report(result, recorded) is None


def test_an_image_that_is_not_imported_never_gets_status_import():
    spec = parse_image("disk", {"storage": "s", "size": "1Gi"})
    result = in_ceph(Cluster(existing()), spec, imports=False)
    out = converge.report("vms", spec, result, {}, 1, False, {"phase": "queued", "percent": 0})
    assert "import" not in out.status
