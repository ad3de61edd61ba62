"""Population records: the status of a population in progress and the error of one that failed.

``populate/<name>.json`` (pid, recipe identity, reserved size, bytes so far, start time) is
written by the populating process about twice a second, and read by its waiters (to say how far
it has got) and by the choice of a base directory (the space it reserves).
``populate/<name>.error`` (time, message, error class; the ``--size`` that the data outgrew)
answers the waiters of a population that failed, so that one failure is not repeated by every
waiter; it counts for
:data:`ERROR_RECORD_TTL` seconds at most.  Both are written atomically, and not flushed: after
a power loss the population they speak of is dead, and a record lost or garbled reads as none,
so a flush would only make the download wait for the disk twice a second.
"""

from __future__ import annotations

from ..engine.fsutil import read_control, write_atomic

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from typing import Any

    #: A record as JSON makes it: names to values.
    Record = dict[str, Any]

#: An error record answers the waiters of the population that failed; later users try afresh.
ERROR_RECORD_TTL = 600.0


def write_record(path: str, record: Record, mode: int) -> None:
    """Write a status or error record atomically, with ``mode`` (the cache's file mode)."""
    import json  # records are written on a miss only

    write_atomic(path, json.dumps(record).encode(), mode=mode, durable=False)


#: The fields a record may have: the text ones, and the numbers (never negative).
_TEXT_FIELDS = frozenset({"identity", "error", "message"})
_NUMBER_FIELDS = frozenset({"pid", "pid_ns", "size", "done", "total", "started", "time", "limit"})


def read_status(path: str) -> Record | None:
    """A status or error record, or None if it is missing or unreadable.  A field that is not of
    its kind reads as absent: in a group cache the record may be another user's, and hold anything
    (a size that is text, a time that is NaN) that would fail whoever reads it."""
    import json
    import math

    try:
        value = json.loads(read_control(path, 1 << 16) or b"")
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    return {key: field for key, field in value.items()
            if (key in _TEXT_FIELDS and isinstance(field, str))
            or (key in _NUMBER_FIELDS and type(field) in (int, float) and math.isfinite(field) and field >= 0)}
