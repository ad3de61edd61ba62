"""Population records: the status of a population in progress and the error of one that failed.

``populate/<name>.json`` (pid, its owner key as a lease names a process, recipe identity,
reserved size, bytes so far, start time) is written by the populating process about twice a
second, and read by its waiters (to say whom they wait for and how far it has got), by ``sc list``
and by the choice of a base directory (the space it reserves).
``populate/<name>.error`` (time, message, error class; the ``--size`` that the data outgrew; the
network and mount namespaces it was seen from) answers the uses that asked while the population
that failed was under way, so that one failure is not repeated by each of them (by those that see
the recipe's sources as it did: a container's network and files are its own); ``sc list`` shows
it; it counts for :data:`ERROR_RECORD_TTL` seconds at most.  Both are written atomically,
and not flushed: after a power loss the population they speak of is dead, and a record lost or
garbled reads as none, so a flush would only make the download wait for the disk twice a second.
Each write is a new file (an inode): an update of the status that finds no room for it (no inode,
no block, a quota, a read-only file system) is skipped, and the one before stays, whole.

Both are readable by every member of a group cache, so neither holds a credential: the identity
holds no user info and no query (see :mod:`sharedcache.loaders.words`), and the message of an
error has the queries of the URLs it names hidden, as a presigned URL's signature or a token may
be there, in the URL of the recipe or of a redirect, and so has what a server wrote in an error
answer, which may repeat them (:func:`~sharedcache.errors.shown_to_others`).
"""

from __future__ import annotations

from ..engine.fsutil import read_control, write_atomic
from ..engine.leases import Owner, boot_id, pid_namespace

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from typing import Any

    #: A record as JSON makes it: names to values.
    Record = dict[str, Any]

#: An error record answers the uses that asked before the population failed; later ones try
#: afresh, and gc removes it once it is this many seconds old.
ERROR_RECORD_TTL = 600.0


def write_record(path: str, record: Record, mode: int) -> None:
    """Write a status or error record atomically, with ``mode`` (the cache's file mode)."""
    import json  # records are written on a miss only

    write_atomic(path, json.dumps(record).encode(), mode=mode, durable=False)


#: The fields a record may have: the text ones, the counts (bytes, process and namespace ids:
#: whole numbers) and the times (seconds since the epoch).
_TEXT_FIELDS = frozenset({"identity", "error", "message", "owner"})
_COUNT_FIELDS = frozenset({"pid", "pid_ns", "size", "done", "total", "limit", "network", "mount"})
_TIME_FIELDS = frozenset({"started", "time"})

#: Every number of a record is below this: the largest size of a file is one less.
_NUMBER_BOUND = 1 << 63


def read_status(path: str) -> Record | None:
    """A status or error record, or None if it is missing or unreadable.  A field that is not of
    its kind reads as absent: in a group cache the record may be another user's, and hold anything
    (a size that is text, a time that is NaN, a count that is a fraction or past any float) that
    would fail whoever reads it."""
    import json

    try:
        value = json.loads(read_control(path, 1 << 16) or b"")
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    return {key: field for key, field in value.items()
            if (key in _TEXT_FIELDS and isinstance(field, str)) or _number_of_its_kind(key, field)}


def _number_of_its_kind(key: str, field: object) -> bool:
    """Whether ``field`` is a number that the field ``key`` may hold: a count is whole (JSON's
    true is not, though Python's is an int), a time may be a fraction; neither is negative, nor
    past :data:`_NUMBER_BOUND` (NaN and infinities are not within, and a greater integer is not
    even a float's)."""
    kinds: tuple[type, ...] = (int,) if key in _COUNT_FIELDS else (int, float) if key in _TIME_FIELDS else ()
    return isinstance(field, (int, float)) and type(field) in kinds and 0 <= field < _NUMBER_BOUND


#: The longest owner key a status record is taken to hold: a lease file's name holds it.
_KEY_LENGTH = 255


def populator(status: Record) -> Owner | None:
    """The process that writes the status record ``status``, as a lease names it (so that one of
    another host or container is told from this one's); None if the record names nobody (a
    member of a group cache may write anything there)."""
    key = status.get("owner", "")
    # As a lease's name holds it: a file name's length, printable (a member's key of 64 KiB, or
    # with terminal controls, would be in each waiter's line and in the listing).
    if len(key) <= _KEY_LENGTH and key.isprintable():
        try:
            return Owner.parse(key)
        except ValueError:
            pass
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    # A record without its owner's key (written by an earlier version) is of this host: its
    # start time is unknown (0), and its PID namespace, if it does not say, is this one.
    return Owner(boot_id(), pid, 0, int(status.get("pid_ns", pid_namespace())))


def local(process: Owner) -> bool:
    """Whether ``process`` is one this process can look at in ``/proc``: of this boot and host,
    and of this PID namespace."""
    return process.boot_id == boot_id() and process.pid_ns in (None, pid_namespace())
