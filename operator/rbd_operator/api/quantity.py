"""Kubernetes resource quantities ("2Gi", "500M", "1.5e9") as exact integers."""

from __future__ import annotations

import re
from decimal import Decimal

from kubernetes.utils import parse_quantity as k8s_parse_quantity

_SUFFIXES = {
    "": 1,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)(?:(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?\Z")


_MAX = Decimal(2 ** 63)


def parse_quantity(value: object) -> int:
    """Return the quantity in base units, rounded up to a whole number (kubernetes.utils.parse_quantity,
    after a strict syntax check: the library takes whatever Decimal takes, "NaN", "1_0", "1e999999999"
    included; milli/micro/nano suffixes make no sense for bytes or IOPS and are refused).

    Raises ValueError for anything that is not a Kubernetes quantity, or beyond 2^63.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a quantity")
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity (examples: 2Gi, 500M, 10737418240)")
    exponent = match.group(3)
    if exponent is not None and abs(int(exponent)) > 100:  # Decimal would carry it; nothing meaningful is there
        raise ValueError(f"{value!r} is out of range")
    try:
        amount = k8s_parse_quantity(value.strip())
    except (ValueError, ArithmeticError):
        raise ValueError(f"{value!r} is out of range") from None
    if amount > _MAX:  # checked before int(): 1e99 would otherwise become a 330-bit integer
        raise ValueError(f"{value!r} is out of range (at most 2^63)")
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def format_bytes(value: int) -> str:
    """Human-readable binary size, exact when possible: 2147483648 -> '2Gi'."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)
