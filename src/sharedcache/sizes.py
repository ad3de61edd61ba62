"""Parsing and printing of sizes: ``10GB``, ``512MiB``, ``1PB``, plain bytes.

Decimal suffixes (kB, MB, GB, TB, PB) are powers of 1000, binary ones (KiB, MiB, ...) powers of
1024, as in the SI and IEC standards.  Case of the unit is not significant.  (Parsed by hand,
not with ``re``: sizes are read on the warm path of ``sc --use``, where importing ``re`` would
cost more than the rest of the command.)
"""

from __future__ import annotations

from .errors import UsageError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5,
}


#: What a budget of ``none`` is (``--max-size none``, ``max_size = none``): no budget, the one a
#: base's cache stored lifted.  (No size is negative.)
NO_BUDGET = -1
_SIZE = "bytes or a number with a unit such as 10GB or 512MiB"


def parse_size(value: int | str, what: str = "size") -> int:
    """Return ``value`` in bytes; raise :class:`UsageError` naming ``what`` if it is not a size."""
    return _parsed(value, what, _SIZE)


def parse_budget(value: int | str, what: str) -> int:
    """A size budget: in bytes, as :func:`parse_size` reads it, or :data:`NO_BUDGET` for
    ``none`` (any case)."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return NO_BUDGET
    return _parsed(value, what, f"{_SIZE}, or none")


def _parsed(value: int | str, what: str, expected: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"invalid {what}: {value} is negative")
        return _bounded(value, value, what)
    if isinstance(value, str):
        text = value.strip()
        split = len(text)
        while split and not (text[split - 1].isdigit() or text[split - 1] == "."):
            split -= 1
        number, unit = text[:split].strip(), text[split:].strip().lower()
        if number and number.replace(".", "", 1).isdigit() and number.isascii() and unit in _UNITS:
            return _bounded(float(number) * _UNITS[unit], value, what)
    raise UsageError(f"invalid {what}: {value!r} (expected {expected})")


def _bounded(size: float, value: int | str, what: str) -> int:
    # Sizes are stored as signed 64-bit integers (and a long enough number of digits is infinite).
    if size >= 2**63:
        raise UsageError(f"invalid {what}: {value!r} is more than 8 EiB")
    return int(size)


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
