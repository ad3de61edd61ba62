"""A cache's directory: its names, its format marker, and the checks made when it is opened.

The layout itself (what lives where) is described in :mod:`sharedcache.engine.fscache`, beside
the protocol that uses it.  This module owns how a cache directory is created and accepted:

* it must be a directory of this user, not a symlink (on a shared ``/tmp`` anyone could create it
  first), unless it is a group cache: setgid and writable by a group this process is in;
* a new cache is refused if file locks do nothing on its file system, and gets its format
  marker ``cache.info`` only once that check passed;
* a marker that is not ours is refused, except a damaged one (emptied, truncated, replaced by a
  directory, beside our layout), which a repairing open rewrites;
* a name of an entry is one path component of at most 200 bytes of UTF-8, not hidden.
"""

from __future__ import annotations

import os
import stat

from ..errors import CacheError, UsageError
from . import locks
from .fsutil import create_exclusive, unique_name, write_atomic

FORMAT_LINE = b"shared-cache fscache 2\n"
# Caches in an older layout (marker -> the versions that made it): refused with a clear error
# rather than taken for foreign content.
_OLD_FORMATS = {b"shared-cache fscache 1\n": "shared-cache 0.1"}
_MAX_NAME_BYTES = 200
#: The subdirectories of a cache (see the layout in sharedcache.engine.fscache).
OBJECTS, STAGE, TRASH = "objects", "stage", "trash"


def check_name(name: str) -> str:
    """Return ``name`` if it can name an entry (one path component, not hidden), else raise."""
    try:
        length = len(name.encode("utf-8"))  # strict: the index cannot store a lone surrogate
    except (AttributeError, UnicodeEncodeError):
        length = -1
    if (
        not isinstance(name, str)
        or not 0 < length <= _MAX_NAME_BYTES
        or name.startswith(".")
        or "/" in name
        or "\0" in name
    ):
        raise UsageError(
            f"invalid entry name {name!r}: it must be one path component of at most "
            f"{_MAX_NAME_BYTES} bytes of UTF-8, without '/' and not starting with '.'"
        )
    return name


def open_cache(root: str, group: int | None, *, repair: bool) -> bool:
    """Create the cache at ``root`` if needed (safe when many processes do it at once) and check it;
    return whether it is a group cache.  ``group``: make a new cache a group cache of that gid."""
    try:
        os.makedirs(root, exist_ok=True)
    except FileExistsError:
        raise CacheError(f"cache {root} is not a directory") from None
    except OSError as e:
        raise CacheError(f"cannot create cache {root}: {e.strerror}") from None
    shared = _check_owner(root, _share_with_group(root, group))
    info = os.path.join(root, "cache.info")
    try:
        with open(info, "rb") as f:
            found = f.read(256)
    except FileNotFoundError:
        # A new cache: refuse it if locks lock nothing there.  The marker records that the
        # check passed, so the operations that follow pay nothing for it.
        check_locks(root)
        create_exclusive(info, FORMAT_LINE)
        with open(info, "rb") as f:
            found = f.read(256)
    except IsADirectoryError:
        found = None
    except OSError as e:
        raise CacheError(f"cannot read {info}: {e.strerror}") from None
    if found != FORMAT_LINE:
        _repair_marker(root, info, found, repair=repair)
    for sub in (OBJECTS, STAGE, TRASH):
        try:
            os.mkdir(os.path.join(root, sub))
        except FileExistsError:
            pass
    return shared


def _repair_marker(root: str, info: str, found: bytes | None, *, repair: bool) -> None:
    """A marker that is not ours: rewrite it if it is only damaged (emptied, truncated, or
    replaced by a directory, in a directory that holds our layout) and this is a repairing
    open; refuse it otherwise, and always if it holds anything else."""
    damaged = (found is None or FORMAT_LINE.startswith(found)) and os.path.isdir(os.path.join(root, OBJECTS))
    if found in _OLD_FORMATS:
        raise CacheError(
            f"cache {root} was made by {_OLD_FORMATS[found]}, whose layout this version "
            "does not use; remove it (its data is fetched again) to let this version make a "
            "new one"
        )
    if not damaged:
        shown = b"<a directory>" if found is None else found[:40]
        raise CacheError(
            f"{root} is not a shared-cache cache ({info} holds {shown!r}); refusing to use it"
        )
    if not repair:
        raise CacheError(f"the marker {info} of cache {root} is damaged; run gc to repair it")
    if found is None:
        os.rename(info, os.path.join(root, TRASH, unique_name()))
    write_atomic(info, FORMAT_LINE)


def _share_with_group(root: str, group: int | None) -> os.stat_result:
    """Make our cache directory a group cache if asked to (or if it was created in a setgid
    directory, whose group it inherited), and, in a group cache, open the umask to the
    group."""
    st = os.lstat(root)
    ours = st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode)
    wanted = group is not None and (st.st_gid != group or not st.st_mode & stat.S_ISGID)
    inherited = st.st_mode & stat.S_ISGID and not st.st_mode & stat.S_IWGRP
    if ours and (wanted or inherited) and not os.path.exists(os.path.join(root, "cache.info")):
        try:
            if group is not None:
                os.chown(root, -1, group)
            os.chmod(root, 0o2770)
        except OSError as e:
            raise CacheError(f"cannot give cache {root} to group {group}: {e.strerror}") from None
        st = os.lstat(root)
    elif group is not None and st.st_gid != group:
        raise CacheError(f"cache {root} exists and does not belong to group {group}")
    if st.st_mode & stat.S_ISGID:
        os.umask(os.umask(0) & 0o007)
    return st


def _check_owner(root: str, st: os.stat_result) -> bool:
    """Refuse a cache directory that is a symlink or belongs to another user (on a shared
    /tmp anyone can create it first), unless it is a group cache: setgid, writable by a
    group this process is in."""
    if stat.S_ISLNK(st.st_mode):
        raise CacheError(f"cache {root} is a symlink; refusing to follow it")
    group_cache = (
        st.st_mode & stat.S_ISGID
        and st.st_mode & stat.S_IWGRP
        and (st.st_gid == os.getegid() or st.st_gid in os.getgroups())
    )
    if st.st_uid != os.geteuid() and not group_cache:
        raise CacheError(
            f"cache {root} belongs to uid {st.st_uid}, not to this user; refusing to use "
            "it (its owner could change what is read from it)"
        )
    return bool(st.st_mode & stat.S_ISGID)


def check_locks(root: str) -> None:
    if not locks.locks_work(root):
        raise CacheError(
            f"file locks do not work on the file system of {root} (a network file "
            "system without lock support?); refusing to use it"
        )
