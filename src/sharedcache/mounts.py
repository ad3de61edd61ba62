"""The mount table of this process, as /proc/self/mountinfo lists it: what the engine asks of a
cache's file system (its type) and what the writer processes ask of the control groups (where
their CPU quotas are mounted)."""

from __future__ import annotations

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Iterator

#: One mount: its device (``major:minor``), the root of the file system it shows, its mount
#: point, the file system's type and its options.
Mount = tuple[str, str, str, str, str]


def mounts() -> Iterator[Mount]:
    """Every mount of this process's namespace, in the table's order; none if it cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            for line in table:
                # ID, parent ID, major:minor, root, mount point, options, optional fields..., "-",
                # type, source, super options
                fields = line.split()
                try:
                    after = fields.index("-", 6) + 1
                    yield fields[2], fields[3], fields[4], fields[after], fields[after + 2]
                except (ValueError, IndexError):
                    continue  # not a line of that form
    except OSError:
        return
