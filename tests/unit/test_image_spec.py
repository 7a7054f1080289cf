import pytest

from rbd_operator.api.errors import SpecError
from rbd_operator.api.image import DEFAULT_FEATURES, bits_to_features, parse_duration, parse_image


def test_defaults():
    s = parse_image("disk1", {"storage": "vmstore", "size": "2Gi"})
    assert s.name == "disk1" and s.size == 2 * 2**30
    assert s.features == DEFAULT_FEATURES
    assert bits_to_features(s.feature_bits) == list(DEFAULT_FEATURES)
    assert s.deletion_policy == "Delete" and s.trash_retention_seconds == 86400
    assert not s.allow_shrink and s.source is None and s.order is None


def test_clone_without_size_and_object_size():
    s = parse_image("c", {"storage": "s", "source": {"image": "base", "snapshot": "gold", "flatten": True},
                          "objectSize": "8Mi"})
    assert s.size is None and s.source.flatten and s.order == 23


@pytest.mark.parametrize("spec,field,reason", [
    ({"size": "lots"}, "spec.size", "InvalidSize"),
    ({"size": "0"}, "spec.size", "InvalidSize"),
    ({"size": 0}, "spec.size", "InvalidSize"),
    ({"size": "-2Gi"}, "spec.size", "InvalidSize"),
    ({}, "spec.size", "InvalidSize"),
    ({"size": "1Gi", "name": "a/b"}, "spec.name", "InvalidName"),
    ({"size": "1Gi", "name": "a@b"}, "spec.name", "InvalidName"),
    ({"size": "1Gi", "name": "a\tb"}, "spec.name", "InvalidName"),
    ({"size": "1Gi", "name": "x" * 97}, "spec.name", "InvalidName"),
    ({"size": "1Gi", "features": ["layering", "teleport"]}, "spec.features", "InvalidFeatures"),
    ({"size": "1Gi", "features": ["object-map"]}, "spec.features", "InvalidFeatures"),
    ({"size": "1Gi", "features": ["exclusive-lock", "fast-diff"]}, "spec.features", "InvalidFeatures"),
    ({"size": "1Gi", "objectSize": "3Mi"}, "spec.objectSize", "InvalidSpec"),
    ({"size": "1Gi", "objectSize": "64Mi"}, "spec.objectSize", "InvalidSpec"),
    ({"size": "1Gi", "trashRetention": "1 day"}, "spec.trashRetention", "InvalidSpec"),
    ({"size": "1Gi", "deletionPolicy": "Purge"}, "spec.deletionPolicy", "InvalidSpec"),
    ({"size": "1Gi", "source": {"image": "a/b", "snapshot": "s"}}, "spec.source.image", "InvalidName"),
])
def test_invalid(spec, field, reason):
    with pytest.raises(SpecError) as err:
        parse_image("disk", {"storage": "vmstore", **spec})
    assert (err.value.field, err.value.reason) == (field, reason)


def test_storage_required():
    with pytest.raises(SpecError) as err:
        parse_image("disk", {"size": "1Gi"})
    assert err.value.field == "spec.storage"


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90m", 5400), ("7d", 604800), ("1h30m", 5400), ("5s", 5)])
def test_duration(text, seconds):
    assert parse_duration(text, "x") == seconds
