"""Kubernetes quantity notation ("2Gi", "500m", "100M") as plain numbers.

Local runs and cluster runs read the same `spec.limits`, so they must agree on
what "2Gi" means.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal(10**3), "K": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
            "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18)}
_PATTERN = re.compile(r"^\s*([+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]{0,2})\s*$")


class QuantityError(ValueError):
    pass


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a quantity; raises QuantityError with the offending text."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise QuantityError(f"quantity must not be negative: {value!r}")
        return Decimal(str(value))
    match = _PATTERN.match(str(value))
    if not match:
        raise QuantityError(f"not a Kubernetes quantity: {value!r} (examples: 2Gi, 512Mi, 500m, 1)")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise QuantityError(f"not a number: {number!r}") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix in _DECIMAL:
        return base * _DECIMAL[suffix]
    raise QuantityError(f"unknown quantity suffix {suffix!r} in {value!r}")


def parse_bytes(value: str | int | float) -> int:
    return int(parse_quantity(value))


def parse_cpu(value: str | int | float) -> float:
    return float(parse_quantity(value))


def format_bytes(value: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= size and value % size == 0:
            return f"{value // size}{suffix}"
    return str(value)
