"""Kubernetes resource quantities ("2Gi", "500M", "1.5e9") as exact integers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "": 1,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)(?:(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?$")


_MAX = Decimal(2 ** 63)


def parse_quantity(value: object) -> int:
    """Return the quantity in base units, rounded up to a whole number.

    Raises ValueError for anything that is not a Kubernetes quantity.
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
    number, suffix, exponent = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{value!r} is not a quantity") from exc
    try:
        if exponent is not None:
            if abs(int(exponent)) > 100:
                raise ValueError(f"{value!r} is out of range")
            amount = amount.scaleb(int(exponent))
        else:
            amount *= _SUFFIXES[suffix or ""]
    except ArithmeticError:  # decimal.Overflow and friends: far beyond anything meaningful
        raise ValueError(f"{value!r} is out of range") from None
    if amount > _MAX:  # checked before int(): 1e99 would otherwise become a 330-bit integer, 1e999999 worse
        raise ValueError(f"{value!r} is out of range (at most 2^63)")
    whole = int(amount.to_integral_value(rounding="ROUND_CEILING"))
    return whole


def format_bytes(value: int) -> str:
    """Human-readable binary size, exact when possible: 2147483648 -> '2Gi'."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)
