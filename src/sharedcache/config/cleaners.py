"""The system's cleaners of old files: whether one deletes the files of a base directory's caches.

systemd-tmpfiles (``systemd-tmpfiles-clean.timer``, once a day) deletes, below a directory that a
``tmpfiles.d`` line gives a cleanup age, every file whose access, change and modification times
are all older than that age, then the directories left empty, whoever uses them: Red Hat family
systems ship ``q /tmp 1777 root root 10d`` (and ``/var/tmp`` 30 days).  A cache there loses the
data of a job that has run that long, its lease and its index.  An ``x`` or ``X`` line whose glob
names the cache's directory (or one above it) keeps it out; only root may write one, so sc says
where the cleaning comes from and what line would keep the caches rather than change anything:
``sc config``, for every candidate base directory, and the command that first makes a cache in
one.

The configuration is read as systemd-tmpfiles reads it: the ``*.conf`` files of
:data:`TMPFILES_DIRECTORIES`, a file of an earlier directory hiding one of the same name in a
later one, in the order of their names.  Lines with specifiers (``%``) are passed over.
"""

from __future__ import annotations

import os

#: Where the tmpfiles.d files are, the first hiding the files of the same name in the others.
TMPFILES_DIRECTORIES = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/local/lib/tmpfiles.d", "/usr/lib/tmpfiles.d")
#: The line types whose age cleans what is below their path.
_AGED = frozenset("dDevqQC")
#: The line types that keep what their glob names (and what is below it) from the cleaning.
_EXCLUDING = frozenset("xX")


def cleaning_of(cache: str, directories: tuple[str, ...] = TMPFILES_DIRECTORIES) -> str | None:
    """Where a cleaner deletes the files of the cache directory ``cache`` (``<base>/.shared-cache-
    <uid>``) by age: ``FILE:LINE`` and the age; None if nothing cleans it by age, or a line keeps
    it (or a directory above it) out."""
    from fnmatch import fnmatchcase

    above = [os.path.normpath(os.path.abspath(cache))]
    while os.path.dirname(above[-1]) != above[-1]:  # up to "/"
        above.append(os.path.dirname(above[-1]))
    cleaning = None
    for where, kind, path, age in _lines(directories):
        if kind in _AGED and age not in ("", "-") and path in above[1:]:
            cleaning = cleaning or f"{where}: files older than {age.lstrip('~')}"
        elif kind in _EXCLUDING and any(fnmatchcase(directory, path) for directory in above):
            return None
    return cleaning


def cleaning_warning(base: str, cache: str, directories: tuple[str, ...] = TMPFILES_DIRECTORIES) -> str | None:
    """What a user is told of the cleaning of the cache directory ``cache`` of the base directory
    ``base`` (:func:`cleaning_of`): where it comes from and the line that keeps the caches out
    of it; None if nothing cleans it by age."""
    cleaning = cleaning_of(cache, directories)
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
            with open(files[name], encoding="utf-8", errors="surrogateescape") as file:
                text = file.read(1 << 20)
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if len(fields) < 2 or fields[0].startswith("#") or "%" in fields[1]:
                continue
            kind = fields[0].strip("!+-=~^$?")[:1]
            lines.append((f"{files[name]}:{number}", kind, os.path.normpath(fields[1]),
                          fields[5] if len(fields) > 5 else ""))
    return lines
