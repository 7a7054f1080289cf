"""Names starting with `rbdop-` are the operator's own in Ceph (staging pools and images, the fast-path probe
image): no RbdImage, RbdStorage or RbdSnapshot spec may name one (a tenant would reach another object's
staged image, or make an image the stray-probe cleanup looks at)."""

from __future__ import annotations

import pytest

from rbd_operator.adapters.ceph import rbd_raw
from rbd_operator.api.errors import SpecError
from rbd_operator.api.image import parse_image
from rbd_operator.api.names import RESERVED_PREFIX
from rbd_operator.api.reasons import Reason
from rbd_operator.api.snapshot import parse_snapshot
from rbd_operator.api.storage import parse_storage
from rbd_operator.reconcile.ownership import STAGING_PREFIX, staging_name

STAGED = staging_name("default/victim/0b9f6c1e-0000-4000-8000-000000000001@cluster")
PROBE = rbd_raw.PROBE_PREFIX + "0123456789ab"


def test_the_reserved_prefix_covers_every_name_of_ours():
    assert STAGING_PREFIX.startswith(RESERVED_PREFIX) and rbd_raw.PROBE_PREFIX.startswith(RESERVED_PREFIX)
    assert STAGED.startswith(RESERVED_PREFIX) and rbd_raw.PROBE_NAME.fullmatch(PROBE)


@pytest.mark.parametrize("spec", [
    {"storage": "s", "size": "1Gi", "name": STAGED},
    {"storage": "s", "size": "1Gi", "name": PROBE},
    {"storage": "s", "size": "1Gi", "name": PROBE + "-moved"},
    {"storage": "s", "size": "1Gi", "name": "rbdop-anything"},
    {"storage": "s", "source": {"image": STAGED, "snapshot": "s1"}},
    {"storage": "s", "size": "1Gi", "name": "fine", "dataPool": STAGED},
])
def test_an_rbd_image_may_not_name_one(spec):
    with pytest.raises(SpecError) as caught:
        parse_image("fine", spec)
    assert caught.value.reason == Reason.INVALID_NAME and "operator's own" in caught.value.message


def test_the_object_name_is_the_default_image_name_and_is_checked_too():
    with pytest.raises(SpecError):
        parse_image(STAGED, {"storage": "s", "size": "1Gi"})
    assert parse_image("rbdop", {"storage": "s", "size": "1Gi"}).name == "rbdop", "only the prefix is reserved"
    assert parse_image("my-rbdop-disk", {"storage": "s", "size": "1Gi"}).name == "my-rbdop-disk"


def test_a_storage_pool_and_a_snapshot_may_not_name_one():
    with pytest.raises(SpecError) as caught:
        parse_storage("s", {"cluster": {"monitors": ["10.254.0.1:3300"],
                                        "adminSecretRef": {"name": "ceph-admin", "namespace": "ceph"}},
                            "pool": {"name": STAGED}})
    assert caught.value.reason == Reason.INVALID_NAME
    with pytest.raises(SpecError):
        parse_snapshot("snap", {"image": "disk", "name": "rbdop-x"})
