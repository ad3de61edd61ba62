"""The system's cleaners of old files: whether one deletes the files of a base directory's caches.

systemd-tmpfiles (``systemd-tmpfiles-clean.timer``, once a day) deletes, below a directory that a
``tmpfiles.d`` line gives a cleanup age, every file whose access, change and modification times
are all older than that age, then the directories left empty, whoever uses them: Red Hat family
systems ship ``q /tmp 1777 root root 10d`` (and ``/var/tmp`` 30 days).  A cache there loses the
data of a job that has run that long, its lease and its index.  Only root may write a line that
keeps it out, so sc says where the cleaning comes from and what line would keep the caches rather
than change anything: ``sc config``, for every candidate base directory, and the command that
first makes a cache in one.  With a group cache, both of its directories in a base are looked
at: the group's, and the member's own (``<base>/.shared-cache-<uid>``), which holds the paths a
job is given (links into the group's); a line that keeps the one alone (the ``d`` line of a
group directory root made) leaves the other to be cleaned.

What cleans a cache, as ``systemd-tmpfiles --clean`` (the timer's command) does, checked against it:

* A line whose type has an age (``d D e v q Q C``), with an age, cleans what is below its path;
  lines marked ``!`` are for the boot, when nothing is cleaned by age, and count for nothing.
* Its walk down to the cache passes over a directory that another line names (an entry of its
  own, whose own age, if any, then applies), or that an ``x`` line's glob matches: that line keeps
  the directory and all below it.  An ``X`` line keeps the directory alone, not what is in it, so
  it keeps no cache; and a line that names the cleaned directory, or one above it, is not on the
  walk.
* Globs match as ``fnmatch(3)`` with ``FNM_PATHNAME|FNM_PERIOD`` does: a wildcard matches no
  slash and no leading dot of a name (``x /tmp/*`` keeps no ``/tmp/.shared-cache-0``).

The configuration is read as systemd-tmpfiles reads it: the ``*.conf`` files of
:data:`TMPFILES_DIRECTORIES`, a file of an earlier directory hiding one of the same name in a
later one, in the order of their names.  Lines with specifiers (``%``) are passed over.  A line
that keeps only part of a cache (``x /tmp/.shared-cache-0/objects``) is not looked for: the cache
is said to be cleaned.
"""

from __future__ import annotations

import os

from .files import regular_file_bytes, text_lines

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Sequence

#: Where the tmpfiles.d files are, the first hiding the files of the same name in the others.
TMPFILES_DIRECTORIES = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/local/lib/tmpfiles.d", "/usr/lib/tmpfiles.d")
#: The line types whose age cleans what is below their path.
_AGED = frozenset("dDevqQC")


def cleaning_of(cache: str, directories: tuple[str, ...] = TMPFILES_DIRECTORIES) -> str | None:
    """Where a cleaner deletes the files of the cache directory ``cache`` (``<base>/.shared-cache-
    <uid>``) by age: ``FILE:LINE`` and the age; None if nothing cleans it by age, or lines keep it."""
    path = [os.path.normpath(os.path.abspath(cache))]  # the cache directory, then those above it
    while os.path.dirname(path[-1]) != path[-1]:  # up to "/"
        path.append(os.path.dirname(path[-1]))
    lines = _lines(directories)
    for where, kind, glob, age in lines:
        if kind not in _AGED or age in ("", "-"):
            continue
        cleaned = next((depth for depth, directory in enumerate(path) if _matches(glob, directory)), None)
        # The directories its walk passes down to the cache, the cache's included.
        if cleaned is not None and not any(_matches(other, directory) for directory in path[:cleaned]
                                           for _, other_kind, other, _ in lines if other_kind != "X"):
            return f"{where}: files older than {age.lstrip('~')}"
    return None


def _matches(glob: str, path: str) -> bool:
    """Whether ``path`` matches ``glob`` as ``fnmatch(3)`` with ``FNM_PATHNAME|FNM_PERIOD`` matches
    it: name by name, a name's leading dot matched by a dot alone."""
    from fnmatch import fnmatchcase

    names, patterns = path.split("/"), glob.split("/")
    return len(names) == len(patterns) and all(
        fnmatchcase(name, pattern) and (pattern.startswith(".") or not name.startswith("."))
        for name, pattern in zip(names, patterns, strict=True))


def cleaning_warning(base: str, caches: Sequence[str],
                     directories: tuple[str, ...] = TMPFILES_DIRECTORIES) -> str | None:
    """What a user is told of the cleaning of the cache directories ``caches`` of the base
    directory ``base`` (:func:`cleaning_of`): where the first cleaned one's cleaning comes from
    and the line that keeps the caches out of it; None if nothing cleans any of them by age."""
    cleaning = next(filter(None, (cleaning_of(cache, directories) for cache in caches)), None)
    if cleaning is None:
        return None
    kept = os.path.join(os.path.normpath(base), ".shared-cache-*")
    return (f"warning: systemd-tmpfiles deletes the files of the caches in {base} by age ({cleaning}), a live "
            f"job's too; a site keeps them with the line 'x {kept}' in a file of /etc/tmpfiles.d, or sc is "
            "given other base directories")


def _lines(directories: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """Every line of the tmpfiles.d configuration: where it is (``FILE:LINE``), its type (without
    its modifiers), its path and its age (empty if it has none)."""
    files: dict[str, str] = {}
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.endswith(".conf"):
                files.setdefault(name, os.path.join(directory, name))
    lines = []
    for name in sorted(files):
        try:
            data = regular_file_bytes(files[name], 1 << 20)
        except OSError:
            continue
        if data is None:  # (a FIFO, or a link to /dev/null that masks the file of a later directory)
            continue
        text = data.decode("utf-8", "surrogateescape")
        for number, line in enumerate(text_lines(text), start=1):
            fields = line.split()
            if len(fields) < 2 or fields[0].startswith("#") or "%" in fields[1]:
                continue
            if "!" in fields[0]:  # (for the boot only)
                continue
            kind = fields[0].strip("+-=~^$?")[:1]
            lines.append((f"{files[name]}:{number}", kind, os.path.normpath(fields[1]),
                          fields[5] if len(fields) > 5 else ""))
    return lines
