import pytest

from rbd_operator.api.quantity import format_bytes, parse_quantity


@pytest.mark.parametrize("text,expected", [
    ("2Gi", 2 * 2**30), ("2G", 2 * 10**9), ("500Mi", 500 * 2**20), ("1.5Gi", 3 * 2**29),
    ("10737418240", 10737418240), (4096, 4096), ("1e9", 10**9), ("1k", 1000), ("0", 0),
    ("0.5Ki", 512), ("1.0001", 2),
])
def test_parse_quantity(text, expected):
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["2 Gi", "Gi", "2GB", "two", "", None, True, "2/3", "1Ki1"])
def test_parse_quantity_rejects(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_negative_quantity_parses_negative():
    assert parse_quantity("-1Gi") == -(2**30)


def test_format_bytes():
    assert format_bytes(2 * 2**30) == "2Gi"
    assert format_bytes(1536 * 2**20) == "1536Mi"
    assert format_bytes(1000) == "1000"
