"""Base directories: where repositories live, and the links that make them visible.

A base directory (``/tmp``, ``/var/tmp``, or one the user names) is shared by every user of the
host, and any of them may plant anything in it.  So each user has a directory of their own in
it, in the way of tmux and ssh-agent, and sc touches nothing else in the base but the group
caches the user asked for::

    <base>/.shared-cache-<uid>/            this user's directory: 0700, checked on every open
        <name>                             the repository's path: a link to its entry's data
        .cache/                            this user's private FsCache (see sharedcache.engine)
        .cache/populate/                   the population files (sharedcache.repository.population)
    <base>/.shared-cache-g<gid>/           the FsCache of group <gid>: used only with --group
        populate/

A user directory or group cache that another user owns (squatted), or that is open to others,
is refused with a clear line and the base is skipped; so is a base that belongs to another user
or that others may write without its sticky bit.  The printed path of a repository,
``<base>/.shared-cache-<uid>/<name>``, is stable for a user and a name, and nobody else can
redirect it: only this user (and root) can write the directory that holds the link.  The link
of a group repository points into the group's cache; so a name is one repository per user and
base, and a name that links into one of the user's caches is refused for another
(:meth:`Base.linked`) until released.  A ``<base>/.shared-cache`` made by
shared-cache 0.2 is never read, changed or removed.

This module owns the list of candidate bases, a base's paths, its cache, its free space and the
space reserved by populations in progress, and the links.
"""

from __future__ import annotations

import os
from _thread import RLock  # threading's, without importing threading
from _weakref import ref as weak_reference  # weakref.ref, without importing weakref

from ..engine import locks
from ..engine.fscache import FsCache, stored_budget
from ..engine.fsutil import shown_path, unlink_if_present
from ..engine.layout import (
    GID_MAX,
    absolute_path,
    check_base,
    check_user_directory,
    group_directory,
    is_gid,
    user_directory,
    user_directory_name,
)
from ..errors import (
    QUOTED_CHARACTERS,
    CacheError,
    ConflictError,
    MissError,
    NameTakenError,
    NoSpaceError,
    SettingError,
    SharedCacheError,
    UsageError,
    cannot_write_here,
    clipped,
)
from ..lean import scoped
from ..sizes import format_size

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from ..progress import Reporter
    from .records import Record
    from .repositories import Request

#: Base directories used when none are given.
DEFAULT_DIRECTORIES = ("/tmp", "/var/tmp")
#: The directory of the population files in a cache (see the layout in sharedcache.repository).
POPULATE = "populate"
#: The lock under which a population reserves its size, in the population files' directory (no
#: repository's name starts with a dot, so no population's files are named so).
RESERVATIONS_LOCK = ".reservations.lock"
#: The suffix of the file whose shared lock says that a use waits for the population of its name
#: (see :meth:`Base.await_population`).
WAITING = ".waiting"
#: The private cache's directory in a user's directory (hidden: no repository is named so).
PRIVATE_CACHE = ".cache"
#: How many caches this process keeps open for its next uses (see _open_caches).
KEPT_CACHES = 8
# The caches this process used last, the latest last, kept so that a program calling use() in a
# loop opens each cache and its index once (a new FsCache costs checks, and its connection to
# the index).  A few only: a program that uses a fresh base each time (a test suite's temporary
# directories) kept every one, with its descriptors, until it could open no file.  A cache
# dropped from here closes what it holds open once its last user lets it go, leaving the index's
# journals for the next connection (see FsCache.let_go).
_open_caches: dict[tuple[str, int | None], FsCache] = {}
# Held to change _open_caches (use() may be called from several threads), and across a fork: a
# child never finds it taken by a thread it has not.  Re-entrant, as locks._recording is: a fork
# by the thread that holds it (a signal handler's) or a use() by a signal handler there cannot
# wait for itself.  No cache is let go while it is held (see _dropped).
_open_caches_change = RLock()
os.register_at_fork(before=_open_caches_change.acquire, after_in_parent=_open_caches_change.release,
                    after_in_child=_open_caches_change.release)


def close_caches() -> None:
    """Close the connections to the indexes of the caches this process keeps open, and their
    directories (see :meth:`FsCache.close`)."""
    with _open_caches_change:
        caches = list(_open_caches.values())
    for cache in caches:
        cache.close()


def _drop_removed_caches() -> None:
    """Drop the caches whose directory was removed (with their base, often): what they hold open
    keeps deleted files' space."""
    with _open_caches_change:
        controls = list(_open_caches)
    removed = [key for key in controls if not os.path.isdir(os.path.join(key[0], POPULATE))]
    with _open_caches_change:
        dropped = _dropped(removed)
    del dropped  # (let go with the lock released: see _dropped)


def _keep_open(key: tuple[str, int | None], cache: FsCache) -> None:
    """Keep ``cache`` as the one of ``key``, the latest used, dropping the least recently used
    beyond :data:`KEPT_CACHES` (and what it replaces)."""
    with _open_caches_change:
        replaced = [] if _open_caches.get(key) is cache else _dropped([key])
        _open_caches.pop(key, None)  # (to come last: the latest used)
        _open_caches[key] = cache
        dropped = _dropped(list(_open_caches)[:-KEPT_CACHES])
    del replaced, dropped  # (let go with the lock released: see _dropped)


def _dropped(keys: list[tuple[str, int | None]]) -> list[FsCache]:
    """Drop the caches of ``keys`` from the table, those still there (a signal handler's use()
    may have dropped one as this thread held the lock), and return them, let go (see
    :meth:`FsCache.let_go`: another thread may be removing their base).  Called with the lock
    held, by a caller that lets them go once it has released it: a cache whose last user was
    the table closes its connections to the index and its directories as it is freed, which
    may take SQLite a while, and every other thread's use() and fork would wait for it, and a
    signal handler's use() find the table half changed."""
    dropped = []
    for key in keys:
        cache = _open_caches.pop(key, None)
        if cache is not None:
            cache.let_go()
            dropped.append(cache)
    return dropped


def base_directories(
    directories: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
) -> list[str]:
    """Candidate base directories as absolute paths: a ``:``-separated string, one path, or a
    sequence of paths; None gives :data:`DEFAULT_DIRECTORIES`.  A directory named again (``/b``
    and ``/b/``, or through a symlink) is one candidate, at its first place: else ``sc list``
    showed its repositories twice, and ``gc`` collected it twice."""
    if directories is None:
        directories = DEFAULT_DIRECTORIES
    if isinstance(directories, str):
        directories = [d for d in directories.split(":") if d]
    elif isinstance(directories, os.PathLike):
        directories = [directories]
    elif not hasattr(directories, "__iter__") or isinstance(directories, (bytes, bytearray)):  # type: ignore[unreachable]
        # (bytes are iterable, but as numbers: each would be refused as "not 47")
        raise UsageError(f"directories must be paths, not {directories!r}")
    result, seen = [], set()
    for directory in directories:
        path = absolute_path(directory, "a candidate directory")
        try:
            found = os.stat(path)
            same: tuple[int, int] | str = (found.st_dev, found.st_ino)
        except (OSError, ValueError):  # not there (yet), or no name here: its path alone says which
            same = path
        if same not in seen:
            seen.add(same)
            result.append(path)
    if not result:
        raise UsageError("no candidate directory given")
    return result


def group_id(group: str | int | None) -> int | None:
    """The gid of the group cache asked for (``--group``, ``use(group=)``, a config file's
    ``group``): a gid, or a group's name; None for none."""
    if group is None:
        return None
    if isinstance(group, bool) or not isinstance(group, (int, str)):
        raise UsageError(f"a group is a name or a gid, not {group!r}")
    # (isdigit alone takes '²', which int() refuses)
    if isinstance(group, int) or (group.isascii() and group.isdigit()):
        gid = int(group)
        if not is_gid(gid):
            # (A SettingError, that the edge says where it was given, as for a name: below.)
            raise SettingError("group", f"{group!r}: no gid is negative or over {GID_MAX}")
        return gid
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name, which a config file's line can hold
        # (A SettingError, that the edge says where the name was given: a file's line, an option.)
        raise SettingError("group", f"{group!r}: no such group") from None


class Base:
    """One candidate base directory and the repositories in it.

    Its cache is the one this process keeps open for every use (:data:`_open_caches`), but for
    a base ``of_its_own``: a cache opened for it alone, closed as it is freed (a signal
    handler's use, whose thread's interrupted use may be in the middle of a step of the
    process's: see :class:`~.repositories.Repositories`)."""

    def __init__(self, path: str, group: int | None = None, *, of_its_own: bool = False) -> None:
        self.path = path
        self.group = group
        self._of_its_own = of_its_own
        #: this user's directory in the base: the links live there
        self.links = os.path.join(path, user_directory_name())
        if group is None:
            self.control = os.path.join(self.links, PRIVATE_CACHE)
            self._target = f"{PRIVATE_CACHE}/objects/"
        else:
            self.control = group_directory(path, group)
            self._target = f"../{os.path.basename(self.control)}/objects/"
        self._cache: FsCache | None = None
        self._populate: str | None = None
        self._awaiting: tuple[int, str] | None = None  # the waiting file held, and its path (see await_population)
        #: The command's deadline (``--timeout``), which bounds every wait in the cache too.
        self.deadline: float | None = None

    def bound_waits(self, deadline: float | None) -> None:
        """Let no wait in this base's cache go past ``deadline`` (None: the cache's own bound)."""
        self.deadline = deadline
        if self._cache is not None:
            self._cache.deadline = deadline

    def cleaning_warning(self) -> str | None:
        """What a user is told if a cleaner of the system's deletes this base's caches by age
        (:func:`~sharedcache.config.cleaners.cleaning_warning`): this user's directory, which
        holds the paths, or a group cache's directory; None if neither is cleaned."""
        from ..config.cleaners import cleaning_warning

        return cleaning_warning(self.path, (self.links,) if self.group is None else (self.links, self.control))

    def stored_budget(self) -> int | None:
        """The budget stored in this base's cache, which stays there until another is given
        (:func:`~sharedcache.engine.fscache.stored_budget`: read without making anything); None
        if it has none.  CacheError if the base, this user's directory or the cache is there
        but not safe to use, as a use refuses it (squatted): what is there is not this user's."""
        if not os.path.lexists(self.links if self.group is None else self.control):
            return None
        check_base(self.path, self.group)
        check_user_directory(self.path)
        return stored_budget(self.control, self.group)

    def has_cache(self) -> bool:
        return os.path.exists(os.path.join(self.control, "cache.info"))

    def present(self) -> bool:
        """Whether this base has a cache to look into.  CacheError if this user's directory (or
        the group's cache) is there but not safe to use (squatted), so that every command
        skips it saying why, as the choice of a base does."""
        if self.has_cache():
            return True
        if os.path.lexists(self.links if self.group is None else self.control):
            check_base(self.path, self.group)
            if self.group is None:
                user_directory(self.path)
            else:
                self.cache()
        return False

    def cache(self) -> FsCache:
        """The cache of this base, created if needed; CacheError (one line saying why) if the
        base, this user's directory or the cache is not safe to use."""
        if self._cache is None:
            self._cache = self._open_cache() if self._of_its_own else self._kept_cache()
            self._cache.deadline = self.deadline  # (a kept one is shared by the commands of this process)
        return self._cache

    def _kept_cache(self) -> FsCache:
        """The cache of this base that the process keeps open, opened now if it has none."""
        key = (self.control, self.group)
        cache = _open_caches.get(key)
        if cache is None or not os.path.isdir(os.path.join(self.control, POPULATE)):
            cache = self._open_cache()
            _drop_removed_caches()
        _keep_open(key, cache)
        return cache

    def _open_cache(self) -> FsCache:
        check_base(self.path, self.group)
        user_directory(self.path)
        return open_with_waiters(self.control, self.group, deadline=self.deadline)

    def use_cache(self, cache: FsCache) -> None:
        """Work with ``cache``, opened by the caller (for a repair, or the use it holds), as this
        base's cache."""
        self._cache, self._populate = cache, None

    @property
    def populate_dir(self) -> str:
        """The directory of the population files, named so that what is swapped in the cache
        (by another member of a group cache) never redirects them."""
        if self._populate is None:
            self._populate = self.cache().own_directory(POPULATE)
        return self._populate

    def hold(self, request: Request, reporter: Reporter) -> str:
        """A lease on the repository if it is ready here; MissError if it is not.  A file system
        with no room for the lease (an empty file: an inode) gets it as a population gets its
        lock file (:meth:`make_room_for_a_file`).

        A repository made before checksummed recipes had their own identity holds the words
        themselves as its identity (:func:`~sharedcache.loaders.words.legacy_identity`): it is
        the same recipe, and is held."""
        while True:
            try:
                return self._hold(request)
            except NoSpaceError as full:
                # Read-locked meanwhile: the repository asked for is not what gives room.
                spared = self.cache().lock_for_reading(request.name)
                try:
                    if not self.make_room_for_a_file(full, reporter):
                        raise
                finally:
                    os.close(spared)

    def _hold(self, request: Request) -> str:
        try:
            return self.cache().hold(request.name, request.owner, keep=request.keep, meta=request.identity)
        except ConflictError as e:
            from ..loaders.words import earlier_identities, legacy_identity

            if e.existing is not None and (e.existing == legacy_identity(request.words)
                                           or e.existing in earlier_identities(request.given)):
                return self.cache().hold(request.name, request.owner, keep=request.keep, meta=e.existing)
            raise conflict(request.name, self.path, e.existing, request.identity) from None

    def try_hold(self, request: Request, reporter: Reporter) -> str | None:
        """A lease on the repository if it is ready here, else None."""
        try:
            return self.hold(request, reporter)
        except MissError:
            return None

    def make_room_for_a_file(self, full: NoSpaceError, reporter: Reporter) -> bool:
        """After ``full``, the error of a file that found no room (a lock or a lease: an inode,
        a block), evict the least recently used repository that nobody uses, saying so; return
        whether one was.  One at a time, as the caller tries again: a kept repository goes only
        if the file still finds no room without it."""
        freed = self.evict(1)
        if freed:
            reporter.info(f"{full}; evicted {format_size(freed)} of kept data, trying again")
        return freed > 0

    def evict(self, nbytes: int | None = None, *, only_if_enough: bool = False) -> int:
        """Evict unused repositories of this base's cache to make room for what met a full file
        system, or lacks room (:meth:`FsCache.evict`); return the bytes freed.  0 if the eviction
        itself finds no room: the index of a new cache, opened for the first time, has no reserve
        yet for its journal, and what needed the room is what the caller's error must name."""
        try:
            return self.cache().evict(nbytes, only_if_enough=only_if_enough)
        except NoSpaceError:
            return 0

    def link(self, name: str) -> str:
        return os.path.join(self.links, name)

    def link_target(self, name: str) -> str:
        return f"{self._target}{name}/data"

    def population_file(self, name: str, suffix: str) -> str:
        return os.path.join(self.populate_dir, name + suffix)

    def free_space(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def file_system_size(self) -> int:
        """The bytes that the base's file system holds, used or free."""
        st = os.statvfs(self.path)
        return st.f_blocks * st.f_frsize

    def full(self) -> bool:
        """Whether the base's file system has no block, or no inode, left for this user (a file
        system that counts no inodes, as btrfs, has one for each file)."""
        st = os.statvfs(self.path)
        return st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0)

    def room(self, size: int, reserved: int) -> int:
        """The room here for ``size`` bytes, of which populations under way have ``reserved``:
        the free space less ``reserved``, once the least recently used repositories that nobody
        uses are evicted for what it lacks of ``size``, if they hold that much (unused kept data
        is room, but evicted for a size it cannot make up, it would be lost for nothing).  The
        caller holds the reservations lock (:meth:`reservations_held`): two uses that counted
        the same unused bytes as their room would both take it."""
        free = self.free_space() - reserved
        if free < size and self.has_cache() and self.evict(size - free, only_if_enough=True):
            free = self.free_space() - reserved
        return free

    def read_only(self) -> bool:
        """Whether the base is on a file system mounted read-only."""
        return bool(os.statvfs(self.path).f_flag & os.ST_RDONLY)

    def reserved(self, besides: str | None = None) -> int:
        """Space reserved by the populations in progress here (but that of ``besides``): see
        :meth:`reservations`."""
        counted, _ = self.reservations()
        return sum(claim for name, claim in counted.items() if name != besides)

    def reservations(self) -> tuple[dict[str, int], dict[str, int]]:
        """What each population in progress here has yet to write of its size (``--size``), by
        name: those counted, and apart those ignored, past the size of the file system.

        What a population has written is off :meth:`free_space` already: counted again, a
        population half done held its size and a half.  Its status record's ``done``, the
        source's bytes received, is what it has written at least (a download is written as it
        comes; an archive unpacks to more than it took), so the rest is never counted short.
        No population writes more than its file system holds: a claim past that is a record that
        a member of a group cache wrote (any size below 2^63), or a takeover's ``--size``, which
        no room was checked for; counted, it left every use with a size no room here while its
        lock was held, and nothing to evict for it."""
        counted: dict[str, int] = {}
        ignored: dict[str, int] = {}
        bound = self.file_system_size()
        for name, status in self.populations():
            claim = max(int(status.get("size") or 0) - int(status.get("done") or 0), 0)
            (counted if claim <= bound else ignored)[name] = claim
        return counted, ignored

    @scoped
    def reservations_held(self) -> Iterator[None]:
        """Hold this base's reservations lock, which a population with a size holds while it
        checks the room the reservations before it leave and writes its first status record (its
        reservation) (:meth:`~sharedcache.repository.population.Population.run`)."""
        fd = locks.open_lock_file(os.path.join(self.populate_dir, RESERVATIONS_LOCK), mode=self.cache().modes.file)
        try:
            # (As long as any wait in the cache: a member of a group cache may hold it.)
            locks.lock(fd, locks.EXCLUSIVE, timeout=self.cache().wait_left, what=f"the reservations of {self.path}")
            yield
        finally:
            locks.release(fd)

    def populations(self) -> list[tuple[str, Record]]:
        """(name, status) of every population in progress (its lock is held)."""
        return [(name, status) for name, status in self._records(".json") if self.populating(name)]

    def failures(self) -> list[tuple[str, Record]]:
        """(name, error record) of every population that failed and is not under way again, for
        as long as its record counts (:data:`~.records.ERROR_RECORD_TTL`; one dated in the future,
        which no population wrote, does not)."""
        import time

        from .records import ERROR_RECORD_TTL

        now = time.time()
        return [(name, record) for name, record in self._records(".error")
                if 0 <= now - float(record.get("time", 0)) <= ERROR_RECORD_TTL and not self.populating(name)]

    def _records(self, suffix: str) -> list[tuple[str, Record]]:
        """(name, record) of every readable population record of this suffix."""
        from .records import read_status  # (populations are looked at on a miss only)

        found: list[tuple[str, Record]] = []
        try:
            files = [f for f in os.listdir(self.populate_dir) if f.endswith(suffix)]
        except OSError:
            return found
        for file in files:
            record = read_status(os.path.join(self.populate_dir, file))
            if record is not None:
                found.append((file[: -len(suffix)], record))
        return found

    def populating(self, name: str) -> bool:
        """Whether some process holds the population lock of ``name`` now."""
        return _locked(self.population_file(name, ".lock"), self.cache().modes.file)

    def await_population(self, name: str, *, at_once: bool = False) -> None:
        """Say, until :meth:`stop_awaiting`, that this process waits for the population of
        ``name`` and will hold what it makes: a shared lock on ``<name>.waiting``, beside the
        population lock.  The release of the repository's last use leaves it, unused, while
        such a lock is held, instead of deleting it before its waiters hold it (they made it
        again, one after another).  The lock dies with its holder: a waiter killed leaves the
        repository to the release of the next use, or gc.  Taken once (a second call keeps the
        first); not taken where the file cannot be made (a full file system, whose room the
        population lock's own making makes or says is lacking; a read-only one, where nothing
        is populated; a populator tries again once it holds the population lock, whose making
        may have made room, so that such a waiter finds the file to open).  ``at_once``: not
        taken if it cannot be taken now (a base looked at among others, which waits for none:
        the one chosen takes it, waiting)."""
        if self._awaiting is not None:
            return
        path = self.population_file(name, WAITING)
        while True:
            try:
                fd = locks.open_lock_file(path, mode=self.cache().modes.file)
            except OSError as e:
                if not cannot_write_here(e):
                    raise
                return
            try:
                # (Held exclusively only for an instant, by a release or gc that looks; a member
                # of a group cache may hold it for longer: as long as any wait in the cache.)
                if at_once:
                    if not locks.try_lock(fd, locks.SHARED):
                        locks.release(fd)
                        return
                else:
                    locks.lock(fd, locks.SHARED, timeout=self.cache().wait_left,
                               what=f"the waiters' file of repository {name!r} in {self.path}")
                if locks.still_linked(fd, path):  # (removed when nobody holds it: see stop_awaiting)
                    _refuse_the_population_lock(fd, path, self.population_file(name, ".lock"))
                    self._awaiting = fd, path
                    return
            except BaseException:
                locks.release(fd)
                raise
            locks.release(fd)

    def stop_awaiting(self) -> None:
        """End what :meth:`await_population` said (nothing if it said nothing); the last waiter
        removes the file, as gc does."""
        if self._awaiting is None:
            return
        (fd, path), self._awaiting = self._awaiting, None
        try:
            unlink_unless_locked(fd, path)
        finally:
            locks.release(fd)

    # -- links -----------------------------------------------------------------------------------

    def ensure_link(self, name: str) -> str:
        """Make this user's link ``<name>`` point to the entry's data; refuse anything else found
        there (see :meth:`linked`)."""
        link = self.link(name)
        while not self.linked(name):
            try:
                os.symlink(self.link_target(name), link)  # fails, rather than replaces, if anything is there
            except FileExistsError:
                pass  # made meanwhile: looked at again
        return link

    def linked(self, name: str) -> bool:
        """Whether this user's link ``<name>`` is there, pointing to this base's repository of
        that name.  Anything else there is refused: the link of the user's repository of the
        name in another cache of this base (their own, or a group's), which the caller is to
        release or give another name, or what is no link of ours."""
        link = self.link(name)
        try:
            current = os.readlink(link)
        except FileNotFoundError:
            return False
        except OSError:
            raise SharedCacheError(f"{link} exists and is not a shared-cache link; refusing to use it") from None
        if current == self.link_target(name):
            return True
        import re

        group = re.fullmatch(rf"\.\./\.shared-cache-g(\d+)/objects/{re.escape(name)}/data", current)
        if current == f"{PRIVATE_CACHE}/objects/{name}/data" or group:
            where = f"the cache of group {group[1]}" if group else "your own cache"
            if not os.path.exists(link):  # that repository is gone, its link not yet removed by a gc
                from shlex import quote  # (a command to paste: a base's path may hold a space)

                gc = f"sc gc -d {quote(self.path)}" + (f" --group {group[1]}" if group else "")
                raise NameTakenError(f"{link} is the link of repository {name!r} of {where}, which is gone: "
                                     f"run '{gc}' to remove it, or give this one another name")
            raise NameTakenError(f"{link} is the path of repository {name!r} of {where} already: give this "
                                 "one another name, or release that one's uses first")
        raise SharedCacheError(f"{link} is a symlink to {current!r}, not to repository {name!r}; "
                               "refusing to follow it")

    def drop_links_of_evicted(self) -> None:
        """Remove this user's links of the repositories that this thread's evictions in this
        base's cache deleted (:meth:`FsCache.take_evicted`): those of the store, budget or
        release that evicted them on behalf of another repository.  Only this user's links are
        in reach: in a group cache, another member's link of a repository evicted here stays
        until that member's ``sc gc``, or next use of the name."""
        if self._cache is None:
            return  # (no cache opened here: nothing evicted)
        self.drop_links(self._cache.take_evicted())

    def drop_links(self, names: Iterable[str]) -> None:
        """Remove this user's links of the deleted repositories ``names``, and their lock files
        (:meth:`drop_link_if_unused`), as far as can be done now."""
        for name in sorted(names):
            try:
                self.drop_link_if_unused(name)
            except (OSError, SharedCacheError):
                # (No room for its lock file, or one planted there.)  A link left behind is what
                # gc removes: no cause to fail the command, whose own work is done.
                continue

    def drop_link_if_unused(self, name: str) -> None:
        """Remove the link of a deleted repository, unless it is being populated again; then its
        population lock file, unless a population left a record there (see below)."""
        lock_path = self.population_file(name, ".lock")
        fd = locks.open_lock_file(lock_path, mode=self.cache().modes.file)
        try:
            if (not locks.try_lock(fd, locks.EXCLUSIVE) or not locks.still_linked(fd, lock_path)
                    or name in self.cache()):
                return
            try:
                if os.readlink(self.link(name)) == self.link_target(name):
                    os.unlink(self.link(name))
            except OSError:
                pass  # no link, or not ours: nothing to remove
            # The lock file, made by the population or just now to be locked, would stay behind
            # until a gc.  It goes under its lock, checked, as gc removes it: whoever waits on
            # it finds it unlinked and takes the new one.  Not while a population's status, work
            # directory or error record is there: those are gc's to clean under it, and an error
            # record keeps its lock as gc keeps it.
            if not any(os.path.lexists(self.population_file(name, suffix)) for suffix in (".json", ".work", ".error")):
                os.unlink(lock_path)
        finally:
            locks.close(fd)


def _refuse_the_population_lock(fd: int, path: str, lock_path: str) -> None:
    """Refuse the waiters' file ``path`` (open as ``fd``) if it is the population lock's file
    under another name (a hard link a member planted): the use that holds it shared would wait
    for ever on its own lock."""
    try:
        lock = os.stat(lock_path, follow_symlinks=False)
    except OSError:
        return  # none yet: nothing it can be
    if os.path.samestat(os.fstat(fd), lock):
        raise CacheError(f"{shown_path(path)} is the population lock's file under another name (a hard link "
                         "planted there?); refusing to use it ('sc gc' removes it)")


def say_if_budget_damaged(cache: FsCache, reporter: Reporter, consequence: str) -> None:
    """Say in one line that the budget of ``cache`` is damaged, and ``consequence``: a use takes
    a damaged budget for none (gc removes it), so that it fails no job."""
    try:
        cache.max_size  # noqa: B018 - read for its error alone
    except CacheError as e:
        reporter.warning(f"{e}; {consequence}")


def _locked(path: str, mode: int) -> bool:
    """Whether some process holds a lock on the population file ``path`` (of ``mode``) now."""
    try:
        fd = locks.open_lock_file(path, create=False, mode=mode)
    except (FileNotFoundError, SharedCacheError):
        return False
    try:
        return not locks.try_lock(fd, locks.EXCLUSIVE)
    finally:
        locks.close(fd)


def _population_under_way(cache: int) -> bool:
    """Whether a population may be under way in the cache open as ``cache``, of this version or
    of one before, with uses of the name waiting for it: one of its locks is held, or a status
    record is there (a population that ended removes its own; a waiter of a version of format 2
    polls the lock, so between the death of its populator and its takeover the record alone
    says it may come back).  Such a use goes on in the cache whatever its marker says meanwhile
    (see "Entries for this boot" in :mod:`sharedcache.engine.fscache`)."""
    populate = f"/proc/self/fd/{cache}/{POPULATE}"
    try:
        names = os.listdir(populate)
    except (FileNotFoundError, NotADirectoryError):
        return False  # (no population was ever there)
    except OSError:
        return True  # (none can be told: the marker waits for an open that can)
    # (A record's name is a repository's, which never begins with a dot: what does is no one's
    # record, and gc leaves it, so that it would keep the marker for good.)
    return any(name.endswith(".json") and not name.startswith(".") for name in names) or \
        any(_locked(f"{populate}/{name}", 0o600) for name in names if name.endswith(".lock"))


def unlink_unless_locked(fd: int, path: str) -> bool:
    """Remove the population file ``path``, open as ``fd``, unless another holds a lock on it;
    return whether it was removed.  Whoever locks it checks, once it holds it, that its path
    still names it (else it makes it again): one removed meanwhile names nothing."""
    if locks.try_lock(fd, locks.EXCLUSIVE) and locks.still_linked(fd, path):
        unlink_if_present(path)
        return True
    return False


def open_with_waiters(control: str, group: int | None, *, repair: bool = False,
                      deadline: float | None = None) -> FsCache:
    """The cache at ``control`` (of ``group``), told which of its repositories uses wait for (its
    ``awaited``: the waiting file of the name is held, see :meth:`Base.await_population`), so
    that the release of the last use of one of them, and gc, leave it for them; and whether uses
    wait for a population there, which leaves a cache of format 2 of that format (see
    :func:`_population_under_way`).  ``deadline``: the command's, which bounds the opening too."""
    cache = FsCache(control, group=group, repair=repair, older_at_work=_population_under_way, deadline=deadline)
    # (Through a weak reference: one of the cache to itself would keep it open after its last
    # user let it go, until the collector found the cycle.)
    reach = weak_reference(cache)
    mode = cache.modes.file

    def awaited(name: str) -> bool:
        itself = reach()
        assert itself is not None  # (called by the cache)
        return _locked(os.path.join(itself.own_directory(POPULATE), name + WAITING), mode)

    cache.awaited = awaited
    return cache


#: Why a repository whose record of its recipe is lost (:func:`recipe_lost`) is damaged.
RECIPE_LOST = "the record of its recipe (its meta file) is lost; sc gc deletes it once unused"


def recipe_lost(identity: str | None) -> bool:
    """Whether ``identity``, read from a repository's record of its recipe, is no recipe's: the
    record missing (None), emptied, or overwritten with NUL bytes, which no loader word holds.
    Every repository records its recipe, so such a one is damaged."""
    return not identity or "\0" in identity


def conflict(name: str, base: str, existing: str | None, wanted: str, *,
             populating: bool = False) -> SharedCacheError:
    """The error for a repository name that holds the recipe whose identity is ``existing`` in
    ``base`` (or is being populated with it), where the recipe whose identity is ``wanted`` was
    asked for; one whose record is lost (:func:`recipe_lost`) is damaged."""
    if recipe_lost(existing) and not populating:
        return CacheError(f"repository {name!r} in {base} is damaged: {RECIPE_LOST}")
    if populating:
        return NameTakenError(
            f"repository {name!r} in {base} is being populated with another recipe ({_shown(existing)}) than "
            f"the one given ({_shown(wanted)}): choose another name"
        )
    # A name may hold what a shell would split (the command is to be pasted), and start with "-":
    # given after "=", it is read as the option's value whatever it is.
    from shlex import quote

    return NameTakenError(
        f"repository {name!r} in {base} holds another recipe ({_shown(existing)}) than the one given "
        f"({_shown(wanted)}): choose another name; this one is free once that repository is deleted: unless "
        "kept, by the last release of a use of its recipe, or by sc gc once its users have ended; kept or not, "
        f"once unused, by sc gc --evict={quote(name)} (with the --directories or --group of the use)"
    )


def _shown(identity: str | None) -> str:
    """A recipe's identity in a line: its words, each digest by its first 12 digits, each word past
    80 characters by its two ends (the identity holds no credentials)."""
    from ..loaders.words import CHECKSUM_WORDS

    if identity is None:
        return "unknown"
    shown = []
    for word in identity.split("\n"):
        kind, colon, digest = word.partition(":")
        short = f"{kind}:{digest[:12]}…" if kind in CHECKSUM_WORDS and colon and len(digest) > 12 else word
        shown.append(clipped(short, QUOTED_CHARACTERS // 2))
    return " ".join(shown)
