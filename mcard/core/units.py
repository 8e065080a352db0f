"""Sizes for people: the one formatter every command, report and card uses.

Decimal units, as the Hub and the seed cards show sizes (``7.26 GB``), scaled to
the size so that a tiny test model does not print ``0.00 GB``: two decimals in the
largest unit that keeps the number below 1000, plain bytes below 1 kB.
"""

from __future__ import annotations

# Unit -> bytes, smallest first. parse_size (mcard.registry.schema) reads these back.
UNITS: dict[str, int] = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def format_size(n: int | float | None) -> str:
    """``7.26 GB``, ``979.06 kB``, ``512 B``; ``-`` when unknown.

    >>> format_size(7_260_000_000), format_size(979_064), format_size(17), format_size(999_999_999)
    ('7.26 GB', '979.06 kB', '17 B', '1.00 GB')
    """
    if n is None:
        return "-"
    if abs(n) < 1000:
        return f"{int(n)} B"
    scaled = ((unit, scale) for unit, scale in UNITS.items() if unit != "B")
    for unit, scale in scaled:
        if abs(round(n / scale, 2)) < 1000 or unit == "TB":
            return f"{n / scale:.2f} {unit}"
    raise AssertionError("unreachable")


def size_in(n: int, unit: str) -> float:
    """``n`` bytes in ``unit`` (a key of :data:`UNITS`)."""
    return n / UNITS[unit]
