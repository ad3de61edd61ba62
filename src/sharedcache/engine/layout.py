"""A cache's directory: its names, its modes, its format marker, and the checks made when it is
opened.

The layout itself (what lives where) is described in :mod:`sharedcache.engine.fscache`, beside
the protocol that uses it.  This module owns how a cache directory is created and accepted.
Anything in a directory another user can write may be replaced at any moment by a symlink, a
FIFO or a directory, so:

* a *private* cache (the default) is a directory of this user that no one else can write,
  created with mode 0700 whatever the umask; everything in it is created with explicit modes
  (:class:`Modes`: directories 0700, files 0600), so no other user can read, write or lock
  anything in it;
* a *group* cache exists only by consent: the caller names the group (``group=``), and its
  directory must then be that group's, setgid and writable by the group, and not by others.
  A setgid or group-writable directory is never taken for a group cache on its own, and is
  refused as a private one.  Its directories appear with their mode (made aside, then renamed
  into place: :func:`make_directory`), never the maker's alone for a moment;
* directories are checked on what was opened (``O_NOFOLLOW|O_DIRECTORY``, then ``fstat``),
  never by a path looked up twice; control files are read with ``O_NOFOLLOW|O_NONBLOCK`` and
  must be regular files, so a planted symlink or FIFO is refused, never followed or waited on;
* a new cache is refused if file locks do nothing on its file system, and gets its format
  marker ``cache.info`` only once that check passed;
* a marker of the format before (2) is brought to this one (3) by the first open that the
  caller, asked, tells no command of that version is under way in the cache; until then the
  cache stays of that format, and what this version commits there is readable by it (see
  "Entries for this boot" in :mod:`sharedcache.engine.fscache`);
* a marker that names another format or another tool is refused (one of a later format of
  ours as a newer version's cache, not as another tool's); a damaged one (emptied, truncated,
  garbage, replaced by a directory) beside our layout is rewritten by a repairing open
  (``sc gc``), which first puts away what is not a file (into the trash, or renamed aside where
  it cannot go there, or removed in place where overlayfs moves it nowhere: :func:`put_away`);
* a name of an entry is one path component of at most 200 bytes of UTF-8, not hidden, written
  on disk as those bytes: a process whose locale would write other bytes for it (a name not
  ASCII, under a Latin-1 locale) is refused it (:func:`~sharedcache.errors.writes_as_utf8`).

Per-user directories in a shared base (:func:`user_directory`) follow the same rules, in the
way of tmux and ssh-agent: ``<base>/.shared-cache-<uid>``, 0700, refused when it is not this
user's or is open to others.  The uid in the name is the user's outside a user namespace
(:func:`user_directory_name`), so that a rootless container's root shares its user's cache.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import (
    CacheError,
    LeasedError,
    UsageError,
    no_space_for,
    not_utf8_here,
    over_limit,
    unresolvable,
    writes_as_utf8,
)
from ..lean import scoped
from ..modes import mkdir, taken
from . import locks
from .fsutil import (
    create_exclusive,
    open_directory,
    read_control,
    remove_tree,
    rename_noreplace,
    temp_beside,
    unique_name,
    write_atomic,
)

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

FORMAT_LINE = b"shared-cache fscache 3\n"
# Caches whose every entry this layout reads as it is: an open rewrites their marker, once no
# command of their version is under way there.  Format 3 adds entries committed for one boot
# (entry.<boot id>.json, see sharedcache.engine.fscache), which a version of format 2 would take
# for leftovers of a crash and delete, in use or not: it refuses a cache of format 3 instead, but
# one of its commands that opened the cache before the rewrite (a use waiting for a population)
# never looks at the marker again.
_COMPATIBLE_FORMATS = frozenset({b"shared-cache fscache 2\n"})
# Caches in an older layout (marker -> the versions that made it): refused with a clear error
# rather than taken for foreign content.
_OLD_FORMATS = {b"shared-cache fscache 1\n": "shared-cache 0.1"}
MAX_NAME_BYTES = 200
#: The subdirectories of a cache (see the layout in sharedcache.engine.fscache).
OBJECTS, STAGE, TRASH = "objects", "stage", "trash"
#: The beginning of the name of what was set aside in its own directory, not in the trash.
ASIDE = ".aside-"
#: The subdirectories that hold only what is being made or deleted, where every member of a
#: group cache must write: one that is not the cache's own is refused, and set aside by gc.
_DISPOSABLE = (STAGE, TRASH)


def set_aside(directory: int | None, name: str) -> None:
    """Rename ``name`` aside (:data:`ASIDE`) within the directory open as ``directory`` (None:
    ``name`` is a path, renamed within its directory), which frees the name.  A directory that
    another member of a group cache made cannot move to another directory (only its owner may
    rewrite its ``..``), nor can anything move into a trash that is not the cache's own; a
    rename within their directory is what any member may do with them."""
    aside = os.path.join(os.path.dirname(name), ASIDE + unique_name())
    os.rename(name, aside, src_dir_fd=directory, dst_dir_fd=directory)


def _rename_into_trash(directory: int | None, name: str, trash: int) -> None:
    try:
        os.rename(name, unique_name(), src_dir_fd=directory, dst_dir_fd=trash)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        remove_tree(name, dir_fd=directory)  # (nor would a rename aside move it: see put_away)


def put_away(directory: int | None, name: str, trash: int | None,
             move: Callable[[int | None, str, int], object] = _rename_into_trash) -> None:
    """Free the name ``name`` in the directory open as ``directory`` (None: ``name`` is a path):
    move what is there into the trash open as ``trash`` with ``move``, or, where it cannot go
    there, rename it aside where it is (:func:`set_aside`).  It cannot go where the cache has no
    trash of its own (``trash`` None: a file, link or directory of a member's, which the repair
    of the subdirectories then replaces, takes nothing), nor, being another member's directory,
    to another directory (PermissionError).  overlayfs renames a directory of a lower layer
    nowhere, not even aside (EXDEV): ``move`` removes it in place, as a plain tree unless the
    caller says how (the engine's removes an entry's commit markers first: see "Delete" in
    :mod:`sharedcache.engine.fscache`, and names the path in its other errors)."""
    if trash is not None:
        try:
            move(directory, name, trash)
            return
        except PermissionError:
            pass
    set_aside(directory, name)


class Modes:
    """The modes a cache gives what it creates: ``directory`` and ``file``, and ``entry`` for a
    committed entry's directory.

    In a private cache nothing is open to anyone else.  In a group cache directories are setgid
    (what is created in them belongs to the group) and writable by the group, files readable
    and writable by it; a committed entry's directory is also sticky, so that a member may
    rename the entry away (delete it) and add files to it (a keep flag) but not remove or
    replace the committer's files in it.  The data itself is sealed read-only for everyone.
    """

    __slots__ = ("directory", "entry", "file", "group")

    def __init__(self, group: bool) -> None:
        self.group = group
        self.directory = 0o2770 if group else 0o700
        self.entry = 0o3770 if group else 0o700
        self.file = 0o660 if group else 0o600


PRIVATE, GROUP = Modes(False), Modes(True)


def absolute_path(path: object, what: str) -> str:
    """``path`` (a ``str`` or a ``pathlib.Path``) made absolute; :class:`UsageError` naming
    ``what`` it should be if it is no path of text (a number, bytes), or the empty string (which
    ``abspath`` would read as the current directory: ``Path("")``, written so, is "." already)."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text or "\0" in text:  # (no system call takes a NUL)
        raise UsageError(f"{what} must be a path, not {path!r}")
    try:
        return os.path.abspath(text)
    except FileNotFoundError:
        raise unresolvable(text) from None


def check_flag(what: str, value: object) -> None:
    """Refuse a flag argument that is not a bool: ``"no"`` or ``1`` would be taken as true."""
    if type(value) is not bool:
        raise UsageError(f"{what} must be True or False, not {value!r}")


#: The largest gid: (gid_t)-1, one more, stands for "no change" to chown.
GID_MAX = 2**32 - 2


def is_gid(value: object) -> bool:
    """Whether ``value`` is a gid: a whole number from 0 to :data:`GID_MAX`, not a bool (an int
    to Python, and no group to a caller)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= GID_MAX


def check_name(name: str) -> str:
    """Return ``name`` if it can name an entry (one path component, not hidden), else raise."""
    try:
        length = len(name.encode("utf-8"))  # strict: the index cannot store a lone surrogate
    except (AttributeError, UnicodeEncodeError):
        length = -1
    if (
        not isinstance(name, str)
        or not 0 < length <= MAX_NAME_BYTES
        or name.startswith(".")
        or "/" in name
        or "\0" in name
    ):
        raise UsageError(
            f"invalid entry name {name!r}: it must be one path component of at most "
            f"{MAX_NAME_BYTES} bytes of UTF-8, without '/' and not starting with '.'"
        )
    if not writes_as_utf8(name):
        raise not_utf8_here(f"entry name {name!r}")
    return name


def make_directory(path: str, mode: int, *, dir_fd: int | None = None, group: int | None = None) -> bool:
    """Create the directory ``path`` with exactly ``mode`` (and with ``group``, of that group),
    whatever the umask; return whether this call created it (False: something is there already,
    left as it is and unchecked)."""
    if not _made_aside(mode, group):
        return _mkdir(path, mode, dir_fd)
    fd = _make_aside(path, mode, dir_fd, group)
    if fd is None:
        return False
    os.close(fd)
    return True


def open_made_directory(path: str, mode: int, *, dir_fd: int | None = None) -> tuple[int, bool]:
    """The directory ``path``, created as :func:`make_directory` does if there is none, then
    opened without following a link: its descriptor, and whether this call created it.
    NotADirectoryError if what is there is anything else, FileNotFoundError if it went away.
    Made and opened back to back, so that whoever replaces it has the least time to do so."""
    if not _made_aside(mode, None):
        created = _mkdir(path, mode, dir_fd)
        return open_directory(path, dir_fd=dir_fd), created
    fd = _make_aside(path, mode, dir_fd, None)
    if fd is None:
        return open_directory(path, dir_fd=dir_fd), False
    return fd, True


def _mkdir(path: str, mode: int, dir_fd: int | None) -> bool:
    """Create the directory ``path`` with the permission bits of ``mode`` (those of a mode that
    :func:`_made_aside` does not take: the umask can take none of them); whether this call
    created it."""
    try:
        mkdir(path, mode & 0o777, dir_fd=dir_fd)
    except FileExistsError:
        return False
    return True


def _made_aside(mode: int, group: int | None) -> bool:
    """Whether a directory of ``mode`` (and ``group``) is made aside (:func:`_make_aside`): when
    it has bits for others that the umask takes or that mkdir does not set (a group cache's)."""
    return bool(mode & 0o7000 or taken(mode & 0o077)) or group is not None


def _make_aside(path: str, mode: int, dir_fd: int | None, group: int | None) -> int | None:
    """A descriptor of the new directory ``path`` that had exactly ``mode`` (and ``group``)
    before anyone could find it there; None if something is at ``path`` already.

    Made in place, a directory of a group cache would be its maker's alone for a moment (a
    member with umask 077 makes it 0700, then gives it its mode), and another member's use
    that came then would be refused it ("Permission denied").  So it is made under a temporary
    name beside it, given its mode, and renamed into place without replacing anything (what
    another process made there first wins).  A file system that cannot rename so (some network
    ones) gets it made in place, as before."""
    try:
        os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        return None  # (there, as it is on every use but the first: nothing is made)
    except FileNotFoundError:
        pass
    temp = temp_beside(path)
    mkdir(temp, 0o700, dir_fd=dir_fd)
    fd = None
    try:
        fd = open_directory(temp, dir_fd=dir_fd)
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
        try:
            rename_noreplace(temp, path, dir_fd=dir_fd)
        except FileExistsError:
            os.close(fd)
            return None
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            os.close(fd)
            fd = None
            if not _mkdir(path, mode, dir_fd):
                return None
            fd = open_directory(path, dir_fd=dir_fd)
            if group is not None:
                os.fchown(fd, -1, group)
            _give_mode(fd, mode)
        return fd
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    finally:
        try:
            os.rmdir(temp, dir_fd=dir_fd)
        except OSError:
            pass  # renamed into place


def _give_mode(fd: int, mode: int) -> None:
    """Give the directory open as ``fd`` exactly ``mode``, if it is this user's."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


@scoped
def making(what: str, path: str) -> Iterator[None]:
    """Raise a full file system or quota that the block meets as it makes ``what`` under ``path``
    as :class:`~sharedcache.errors.NoSpaceError` (:func:`~sharedcache.errors.no_space_for`: the
    mount point, and whether no inode was free), not the system's bare error: a base with no room
    for a cache is then skipped, saying so, as one that is no use for any other reason."""
    try:
        yield
    except OSError as e:
        full = no_space_for(what, e, path)
        if full is None:
            raise
        raise full from None


_IDENTITY_MAP = [b"0", b"0", b"4294967295"]


def _user_namespace_map() -> list[int] | None:
    """The uid map of this process's user namespace as ``[inside, outside, count, ...]``, each
    range mapping ``count`` uids from ``inside`` on to the parent namespace's from ``outside``
    on; None in the initial namespace (or without ``/proc``)."""
    try:
        fd = os.open("/proc/self/uid_map", os.O_RDONLY | os.O_CLOEXEC)
        try:
            words = os.read(fd, 1 << 14).split()  # (340 ranges at most, of 33 bytes each at most)
        finally:
            os.close(fd)
    except OSError:
        return None
    return None if words == _IDENTITY_MAP else [int(word) for word in words]


def user_id_outside() -> int:
    """This user's uid outside its user namespace, by which its directories in a base are named
    (:func:`user_directory_name`, and its work directories in a group cache's).  The root of a
    rootless container is its user on the host: a job there and one on the host share one
    directory, and so one download (and one partial download), where the names
    ``.shared-cache-0`` and ``.shared-cache-1000`` made two.  The files keep their checks by
    ``st_uid``, which the kernel shows in the namespace's numbering: the same user either way.

    One level is mapped, the parent namespace's (a namespace nested in a container's names the
    container's uid).  A user the map does not cover (``unshare --user`` without a map, where
    every file's owner shows as the kernel's overflow uid, and the checks by owner mean nothing)
    is refused; so is a user mapped to that overflow uid itself (rootless podman's ``USER
    nobody``), whose own files and those of every user outside the namespace show one owner:
    another user's base, or directory in place of this user's, would pass for its own."""
    key = (locks.process_key(), os.geteuid())  # (read once: every candidate base's directory asks)
    if key not in _outside:
        _outside[key] = _mapped_outside(key[1])
    return _outside[key]


#: :func:`user_id_outside` of (a process, by :func:`~sharedcache.engine.locks.process_key`, and its uid).
_outside: dict[tuple[tuple[int, int], int], int] = {}


def _mapped_outside(uid: int) -> int:
    """``uid`` mapped by this process's user namespace to its parent's (see :func:`user_id_outside`)."""
    ranges = _user_namespace_map()
    if ranges is None:
        return uid
    for inside, outside, count in zip(ranges[0::3], ranges[1::3], ranges[2::3], strict=True):
        if inside <= uid < inside + count:
            if uid == _overflow_uid():
                raise CacheError(f"this process's user (uid {uid} here) has the uid that the files of every user "
                                 "outside its user namespace show (the kernel's overflow uid), so their files cannot "
                                 "be told from its own: run sc where its user is mapped to another uid")
            return outside + uid - inside
    raise CacheError(f"this process's user (uid {uid} here) has no uid outside its user namespace (no uid_map "
                     "covers it), so neither its own files nor anyone else's can be told: run sc where its user "
                     "is mapped (unshare --map-root-user or --map-current-user)")


def user_directory_name() -> str:
    """The name of this user's directory in a base: ``.shared-cache-<uid>``, by
    :func:`user_id_outside`."""
    return f".shared-cache-{user_id_outside()}"


def user_directory(base: str) -> str:
    """This user's directory in the base directory ``base``, created if needed (0700); refused
    with a clear error if another user owns it (squatted) or others may write or enter it
    (:func:`check_user_directory`)."""
    path = os.path.join(base, user_directory_name())
    try:
        with making(f"this user's directory {path}", base):
            make_directory(path, 0o700)
    except OSError as e:
        raise over_limit(e) or CacheError(f"cannot create {path}: {e.strerror}") from None
    if not check_user_directory(base):  # (removed as soon as made)
        raise CacheError(f"cannot create {path}: {os.strerror(errno.ENOENT)}")
    return path


def check_user_directory(base: str) -> bool:
    """Whether this user's directory in the base directory ``base`` is there, nothing made;
    CacheError if it is not safe to use (a link or a file, another user's, open to others).

    It is looked at through a mere path reference (``O_PATH``), which needs no permission on it:
    one that its owner may not enter or write (made under a umask such as 0177 or 0777 by an
    sc that did not give the owner's bits back) is given them back, as it was meant to have."""
    path = os.path.join(base, user_directory_name())
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise over_limit(e) or CacheError(f"cannot use {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise CacheError(f"{path} is not a directory (a symlink or a file); refusing to use it")
        if st.st_uid != os.geteuid():
            raise CacheError(f"{path} belongs to uid {st.st_uid}, not to this user; refusing to use it")
        if st.st_mode & 0o077:
            raise CacheError(
                f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); refusing to use "
                "it (remove it to let sc create it again)"
            )
        if st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    except OSError as e:
        raise CacheError(f"cannot use {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return True


def group_directory(base: str, group: int) -> str:
    """Where the group cache of gid ``group`` lives in the base directory ``base``."""
    return os.path.join(base, f".shared-cache-g{group}")


#: Bytes that the paths of the cache's own files take past the base directory's, at most:
#: ``/.shared-cache-<uid>/.cache/objects/<name of 128>/`` and a temporary file's name, rounded up.
CACHE_DEPTH = 256


def check_base(base: str, group: int | None) -> None:
    """Refuse a base directory in which another user could move this user's files: one that
    belongs to another user (root excepted), or that others may write without its sticky bit
    (as ``/tmp`` has), except by the members of the group of a group cache."""
    try:
        st = os.stat(base)
    except OSError as e:
        raise CacheError(f"cannot use {base}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"{base} is not a directory")
    # Some of the cache's files are opened by their paths (SQLite's, a staging directory's),
    # which the kernel takes up to PATH_MAX bytes: else they fail deep in a miss, as damage.
    length = len(os.fsencode(base))
    if length > 2048 and length + CACHE_DEPTH >= (limit := os.pathconf(base, "PC_PATH_MAX")):
        raise CacheError(f"{base} is too deep for a cache: its path takes {length:,} bytes, and the cache's "
                         f"own files need {CACHE_DEPTH} more within the {limit - 1:,} the system allows")
    if st.st_uid not in (0, os.geteuid()):
        raise CacheError(
            f"{base} belongs to {owner_shown(st.st_uid)}, who could replace what sc puts in it; refusing to use it"
        )
    if st.st_mode & stat.S_ISVTX:
        return
    if st.st_mode & 0o002:
        raise CacheError(f"{base} is writable by every user and not sticky; refusing to use it")
    if st.st_mode & 0o020 and st.st_gid != group:
        raise CacheError(
            f"{base} is writable by group {st.st_gid} and not sticky; refusing to use it "
            f"(unless as a cache of that group: --group {st.st_gid})"
        )


def _overflow_uid() -> int | None:
    """The uid that a file of a user this user namespace does not map shows as its owner (the
    kernel's overflow uid, 65534 unless set otherwise); None if ``/proc`` does not say."""
    try:
        with open("/proc/sys/kernel/overflowuid", "rb") as overflow:
            return int(overflow.read())
    except (OSError, ValueError):
        return None


def owner_shown(uid: int) -> str:
    """The owner ``uid`` of a file as a message names it.  In a user namespace (a rootless
    container's) a file of a user it does not map, the host's root among them, shows the
    kernel's overflow uid: that is said, as the uid alone reads as the user ``nobody``."""
    unmapped = uid == _overflow_uid() and _user_namespace_map() is not None
    return (f"a user outside this user namespace (shown as uid {uid}: the host's root, or another)" if unmapped
            else f"uid {uid}")


def open_cache(root: str, group: int | None, *, repair: bool,
               older_at_work: Callable[[int], bool] | None = None, until: float | None = None,
               ) -> tuple[Modes, int, bool]:
    """Create the cache at ``root`` if needed (safe when many processes do it at once) and check
    it; return the modes of what is created in it, how many of its subdirectories a
    repairing open replaced (:func:`make_subdirectory`), and whether it is still of the format
    before (:data:`_COMPATIBLE_FORMATS`), its marker left as it was.  ``group``: the gid of a
    group cache.  ``older_at_work`` (given the cache's directory, open) says whether a command of
    the version before may be under way in it: its marker is then left alone.  The marker,
    which its maker (another member of a group cache) may hold under a file lease, is waited
    for until ``until`` (a ``time.monotonic()``), as the kernel breaks the lease."""
    modes = GROUP if group is not None else PRIVATE
    _check_member(root, group)
    try:
        with making(f"cache {root}", root):
            try:
                make_directory(root, modes.directory, group=group)
            except FileNotFoundError:  # its parents first (a caller's choice of place: default modes)
                os.makedirs(os.path.dirname(root), exist_ok=True)
                make_directory(root, modes.directory, group=group)
        fd = _open_cache_directory(root)
    except OSError as e:
        raise over_limit(e) or CacheError(f"cannot create cache {root}: {e.strerror}") from None
    try:
        with making(f"cache {root}", root):
            repaired, format_before = _check_and_complete(root, fd, group, modes, repair=repair,
                                                          older_at_work=older_at_work, until=until)
    finally:
        os.close(fd)
    return modes, repaired, format_before


def open_existing_cache(root: str, group: int | None) -> int | None:
    """The directory of the cache at ``root`` (of ``group``), open, checked as :func:`open_cache`
    checks it, with nothing made or changed: None if there is none; CacheError if it is not safe
    to read (a link, another user's, not the group's)."""
    _check_member(root, group)
    try:
        fd = _open_cache_directory(root)
    except (FileNotFoundError, UnicodeEncodeError):  # (or a path the file system's encoding cannot name)
        return None
    except OSError as e:
        raise over_limit(e) or CacheError(f"cannot open cache {root}: {e.strerror}") from None
    try:
        _check_owner(root, os.fstat(fd), group)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_member(root: str, group: int | None) -> None:
    """Refuse the group cache at ``root`` to a user who is not in its ``group``."""
    if group is not None and group != os.getegid() and group not in os.getgroups():
        raise CacheError(f"cannot use a cache of group {group} at {root}: this user is not in that group")


def _open_cache_directory(root: str) -> int:
    """The cache directory ``root``, open; CacheError if a link or anything but a directory is
    there (planted in a base that others write), which is never followed."""
    try:
        return open_directory(root)
    except NotADirectoryError:
        kind = "a symlink" if os.path.islink(root) else "not a directory"
        raise CacheError(f"cache {root} is {kind}; refusing to use it") from None


def _check_and_complete(root: str, fd: int, group: int | None, modes: Modes, *, repair: bool,
                        older_at_work: Callable[[int], bool] | None, until: float | None) -> tuple[int, bool]:
    """Check the cache directory ``root``, open as ``fd``, and give it what it lacks: its marker
    (once its locks are known to work), its subdirectories; a marker of an earlier compatible
    format is brought to this one's unless ``older_at_work(fd)``.  Return how many
    subdirectories a repair replaced, and whether the cache is still of the format before."""
    st = os.fstat(fd)
    if group is not None and st.st_gid != group and st.st_uid == os.geteuid():
        st = _give_to_group(root, fd, group, st)
    _check_owner(root, st, group)
    try:
        found = read_control("cache.info", dir_fd=fd, until=until)
    except FileNotFoundError:
        # A new cache: refuse it if locks lock nothing there.  The marker records that the
        # check passed, so the operations that follow pay nothing for it.
        check_locks(root)
        create_exclusive(f"/proc/self/fd/{fd}/cache.info", FORMAT_LINE, mode=modes.file)
        found = read_control("cache.info", dir_fd=fd)
    except LeasedError:
        raise
    except OSError as e:
        raise over_limit(e) or CacheError(f"cannot read {root}/cache.info: {e.strerror}") from None
    format_before = found in _COMPATIBLE_FORMATS
    if format_before and (older_at_work is None or not older_at_work(fd)):
        try:
            write_atomic(f"/proc/self/fd/{fd}/cache.info", FORMAT_LINE, mode=modes.file)
            format_before = False
        except OSError as e:
            # A read-only cache can still be read, and nothing of format 3 can be put in it.
            if e.errno != errno.EROFS:
                raise over_limit(e) or CacheError(
                    f"cannot bring cache {root} to this version's format: {e.strerror}") from None
    elif not format_before and found != FORMAT_LINE:
        _repair_marker(root, fd, found, group, modes, repair=repair)
    return sum(make_subdirectory(fd, sub, modes, repair=repair) for sub in (OBJECTS, STAGE, TRASH)), format_before


def make_subdirectory(root: int, sub: str, modes: Modes, *, repair: bool) -> bool:
    """Create the subdirectory ``sub`` of the cache open as ``root`` if it is missing; a repairing
    open removes anything but a directory found there first (a planted link, FIFO or file), and
    sets aside a ``stage`` or ``trash`` that is not the cache's own (:func:`foreign_subdirectory`).
    Return whether it replaced what was there (what gc reports)."""
    if make_directory(sub, modes.directory, dir_fd=root) or not repair:
        return False
    found = os.stat(sub, dir_fd=root, follow_symlinks=False)
    if not stat.S_ISDIR(found.st_mode):
        os.unlink(sub, dir_fd=root)
    elif foreign_subdirectory(sub, found, os.fstat(root).st_gid if modes.group else None):
        set_aside(root, sub)
    else:
        return False
    make_directory(sub, modes.directory, dir_fd=root)
    return True


def foreign_subdirectory(sub: str, found: os.stat_result | int, group: int | None) -> bool:
    """Whether the subdirectory ``sub`` of a cache of ``group`` (None: a private cache, which
    nobody else may write), whose status is ``found`` (or that is open as the descriptor
    ``found``), is a ``stage`` or ``trash`` that a member made her own (a mode that others of the
    group may not write): nobody else could stage or delete anything in the cache.  A descriptor
    is looked at only there: the other directories, and a private cache's, are asked for on
    every use."""
    if group is None or sub not in _DISPOSABLE:
        return False
    return not _of_group(os.fstat(found) if isinstance(found, int) else found, group)


def _of_group(found: os.stat_result, group: int) -> bool:
    """Whether the directory whose status is ``found`` is one of ``group``: its group's, setgid,
    writable by the group and not by others."""
    mode = stat.S_IMODE(found.st_mode)
    return found.st_gid == group and bool(mode & stat.S_ISGID) and mode & 0o070 == 0o070 and not mode & 0o002


def _give_to_group(root: str, fd: int, group: int, st: os.stat_result) -> os.stat_result:
    """Make our new, empty cache directory a group cache of ``group``."""
    try:
        if any(True for _ in os.scandir(fd)):
            return st  # not new: left to the checks
        os.fchown(fd, -1, group)
        os.fchmod(fd, GROUP.directory)
    except OSError as e:
        raise over_limit(e) or CacheError(f"cannot give cache {root} to group {group}: {e.strerror}") from None
    return os.fstat(fd)


def _looks_like_a_marker(found: bytes) -> bool:
    """Whether ``found`` is one line naming a format ("<words> <number>"), ours or another's."""
    words = found[:-1].split(b" ")
    return (found.endswith(b"\n") and len(words) >= 2 and words[-1].isdigit()
            and all(w.isalnum() or w.replace(b"-", b"").isalnum() for w in words))


def _newer_format(found: bytes | None) -> int | None:
    """The format named by the marker ``found`` if it is ours, of a format after this one's."""
    prefix, _, ours = FORMAT_LINE.rstrip(b"\n").rpartition(b" ")
    if found is None or not found.startswith(prefix + b" ") or not found.endswith(b"\n"):
        return None
    number = found[len(prefix) + 1 : -1]
    if not (number.isdigit() and number.isascii()) or int(number) <= int(ours):
        return None
    return int(number)


def _repair_marker(root: str, fd: int, found: bytes | None, group: int | None, modes: Modes, *,
                   repair: bool) -> None:
    """A marker that is not ours: rewrite it if it is only damaged (emptied, truncated, garbage,
    or replaced by something not a file, in a directory that holds our layout) and this is a
    repairing open; refuse it otherwise, and always if it names another format.  Something not
    a file is put away first (:func:`_put_away_in_cache`)."""
    if found in _OLD_FORMATS:
        raise CacheError(
            f"cache {root} was made by {_OLD_FORMATS[found]}, whose layout this version "
            "does not use; remove it (its data is fetched again) to let this version make a "
            "new one"
        )
    newer = _newer_format(found)
    if newer is not None:  # (healthy, and another version's to use: nothing invites its removal)
        raise CacheError(f"cache {root} was made by a newer version of shared-cache (format {newer}); "
                         "this version cannot use it")
    try:
        ours = stat.S_ISDIR(os.stat(OBJECTS, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        ours = False
    damaged = found is None or FORMAT_LINE.startswith(found) or not _looks_like_a_marker(found)
    if not (damaged and ours):
        shown = b"<not a file>" if found is None else found[:40]
        raise CacheError(
            f"{root} is not a shared-cache cache ({root}/cache.info holds {shown!r}); refusing to use it"
        )
    if not repair:
        raise CacheError(f"the marker {root}/cache.info of cache {root} is damaged; run gc to repair it")
    try:
        if found is None:
            try:
                _put_away_in_cache(fd, "cache.info", group)
            except FileNotFoundError:
                pass  # (removed by its maker meanwhile: the name is free)
        write_atomic(f"/proc/self/fd/{fd}/cache.info", FORMAT_LINE, mode=modes.file)
    except OSError as e:
        raise over_limit(e) or no_space_for(f"cache {root}", e, root) or CacheError(
            f"cannot repair the marker {root}/cache.info of cache {root}: {e.strerror}") from None


def _put_away_in_cache(root: int, name: str, group: int | None) -> None:
    """:func:`put_away` ``name`` from the cache's directory open as ``root`` (of ``group``; None:
    a private cache), into its trash reached without following a link, if that is the cache's
    own."""
    try:
        trash: int | None = open_directory(TRASH, dir_fd=root)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        trash = None
    try:
        own = trash is not None and not foreign_subdirectory(TRASH, trash, group)
        put_away(root, name, trash if own else None)
    finally:
        if trash is not None:
            os.close(trash)


def _check_owner(root: str, st: os.stat_result, group: int | None) -> None:
    """Refuse a cache directory that another user could change: in a private cache, one that
    belongs to another user or that others may write; in a group cache, one that is not that
    group's (setgid, writable by the group, not by others) or whose group this user is not in."""
    mode = stat.S_IMODE(st.st_mode)
    if group is None:
        if st.st_uid != os.geteuid():
            raise CacheError(
                f"cache {root} belongs to uid {st.st_uid}, not to this user; refusing to use "
                "it (its owner could change what is read from it)"
            )
        if mode & 0o022:
            raise CacheError(
                f"cache {root} is writable by other users (mode {mode:o}); refusing to use it as "
                "a private cache"
            )
        return
    if not _of_group(st, group):
        raise CacheError(
            f"cache {root} is not a cache of group {group} (group {st.st_gid}, mode {mode:o}); "
            "refusing to use it"
        )


def check_locks(root: str, existing: str | None = None) -> None:
    """Refuse the cache at ``root`` if file locks lock nothing there (:func:`locks.locks_work`,
    which probes ``existing`` where no new file can be made)."""
    if not locks.locks_work(root, existing):
        raise CacheError(
            f"file locks do not work on the file system of {root} (a network file "
            "system without lock support?); refusing to use it"
        )
