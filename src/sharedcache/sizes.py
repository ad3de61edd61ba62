"""Parsing and printing of sizes: ``10GB``, ``512MiB``, ``1PB``, plain bytes.

Decimal suffixes (kB, MB, GB, TB, PB) are powers of 1000, binary ones (KiB, MiB, ...) powers of
1024, as in the SI and IEC standards.  Case of the unit is not significant except that a bare
``b`` means bytes.
"""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str, what: str = "size") -> int:
    """Return ``value`` in bytes; raise :class:`UsageError` naming ``what`` if it is not a size."""
    if isinstance(value, bool):
        raise UsageError(f"invalid {what}: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"invalid {what}: {value} is negative")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise UsageError(f"invalid {what}: {value!r} (expected bytes or a number with a unit such as 10GB or 512MiB)")


def format_size(n: int | None) -> str:
    """Return ``n`` bytes as a short human-readable string (binary units)."""
    if n is None:
        return "unlimited"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
