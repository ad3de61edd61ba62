"""FsCache: a cache of directories that many processes share, crash-safe at every step.

This module owns the on-disk layout of a cache, its index, and the protocols by which processes
add, read, hold, release, evict and remove entries.  Every step below can be interrupted by
``SIGKILL``; the text says, step by step, what a crash there leaves and who cleans it up.

Layout
======
::

    <root>/
      cache.info        format marker: one line, "shared-cache fscache 1"
      index.sqlite      the index (SQLite, WAL journal; -wal and -shm files beside it)
      stage.lock        guards the creation of staging directories against gc
      stage/<id>/       a staging directory: "lock" (held exclusively by its owner) and "data/"
      objects/<name>/   a committed entry: "lock", "entry.json" (the commit marker) and "data/"
      trash/<id>/       an entry being deleted; anything here is garbage

The index holds one row per committed entry (size, creation, last use, keep flag, caller's
metadata), the *leases* (uses held by processes, see :mod:`sharedcache.leases`), and the settings
shared by every process: the size budget and the accounted size.  SQLite gives atomic,
durable, multi-process transactions; its locks, like ours, are released by the kernel when a
process dies.  A write transaction (``BEGIN IMMEDIATE``) serialises every change of the
accounting; it is held for milliseconds and never while waiting for another lock.

An entry *exists* when its directory is in ``objects/`` with its commit marker **and** its row is
in the index.  Either without the other is a leftover of a crash: :meth:`FsCache.gc` reconciles
them (a directory with a valid marker but no row is adopted, anything else is removed), and a
reader treats both as a miss.

Entry locks
===========
Every entry directory holds a file ``lock``.  A reader holds a shared ``flock`` on it for as long
as it uses the entry; whoever deletes the entry first takes an exclusive lock *without waiting*:
if that fails, the entry is in use and is not deleted.  The staging directory's ``lock`` becomes
the entry's ``lock`` by the commit rename, so the storer's exclusive lock covers the entry until
the commit is complete.

Store (``store(name)``)
-----------------------
1. Take ``stage.lock`` shared; create ``stage/<random id>/``, create its ``lock`` and lock it
   exclusively; release ``stage.lock``.  (gc takes ``stage.lock`` exclusively, so it never sees a
   staging directory whose owner has not locked it yet.)
2. The caller fills ``stage/<id>/data``.  An exception here: the staging directory is removed and
   the exception re-raised; nothing is committed.
3. Measure the tree and make it read-only (:func:`~sharedcache.fsutil.disk_usage` with
   ``seal``), flush it to disk (:func:`~sharedcache.fsutil.sync_tree`), and write the commit marker ``entry.json`` with the
   name and size (atomically: temp file, fsync, rename).
4. Begin a write transaction.  If the index already has the name, another store won: discard
   ours, done.  If the size exceeds the budget: refuse (nothing is evicted).  If the accounted
   size plus ours exceeds the budget: evict (below) until it fits, or refuse if what is in use
   leaves too little.
5. Rename ``stage/<id>`` to ``objects/<name>`` (a leftover directory there that has no row is moved
   to ``trash/`` first), insert the row, add the size to the accounted size, and commit the
   transaction.  Release the lock.

A crash in steps 1-3 leaves a staging directory whose lock is free: gc removes it.  A crash in
step 4-5 before the transaction commits rolls the index back; the directory may already be in
``objects/``, with its marker but no row: a miss for readers, adopted by gc.

Load (``load(name)``)
---------------------
Open ``objects/<name>/lock`` (absent: miss), take it shared, then check that the path still names
that lock file and the marker is there (else the entry was deleted meanwhile: retry, then miss),
and record the use time in the index (no row: miss).  Hold the lock until the caller is done.
Recording the last use explicitly keeps LRU eviction right on ``noatime`` mounts and for users
who do not own the files.

Delete (eviction, ``remove``, release of the last use)
------------------------------------------------------
Within a write transaction: take the entry's lock exclusively without waiting (busy: skip it),
rename ``objects/<name>`` to ``trash/<id>``, delete the row and its leases, subtract the size the
row recorded, commit, release the lock; then delete ``trash/<id>``.  The rename is what removes
the entry, atomically: a reader either locked it before (and the delete skipped it) or finds it
gone.  A crash before the commit leaves a row whose directory is gone: a miss, and gc deletes
the row.  A crash after it leaves a tree in ``trash/``, which gc and the next store delete.

Because the size recorded at commit is the size subtracted at deletion, the accounting cannot
drift; gc recomputes it from the rows anyway.  Eviction picks victims in order of last use
through an index of the table, so it never walks other entries' files.

Leases
------
A lease is a row naming an entry and an owner process.  An entry with a lease of a live owner is
in use exactly as if it were locked.  Leases of dead owners are reclaimed whenever their entry is
held or released, and by eviction and gc.  An entry whose ``keep`` flag is false is deleted as
soon as its last use is released (or, if its users died, by the next gc); one with ``keep`` set
stays as a cache entry under the budget.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from _thread import _local as thread_local  # threading.local, without importing threading

try:  # sqlite3's Python layer only adds datetime adapters, and importing them costs every start
    import _sqlite3 as sqlite3
except ImportError:  # pragma: no cover - an interpreter without the C module's usual name
    import sqlite3  # type: ignore[no-redef]

from . import locks
from .errors import (
    BusyError,
    CacheError,
    ConflictError,
    EntryTooLargeError,
    MissError,
    NoSpaceError,
    UsageError,
    WaitTimeoutError,
)
from .fsutil import (
    create_exclusive,
    disk_usage,
    fsync_dir,
    remove_tree,
    sync_tree,
    unique_name,
    write_atomic,
)
from .leases import Owner, key_alive
from .sizes import format_size, parse_size

FORMAT_LINE = b"shared-cache fscache 1\n"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    keep INTEGER NOT NULL,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_last_use ON entries (last_used, name);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_name ON leases (name);
INSERT OR IGNORE INTO settings VALUES ('max_size', NULL);
INSERT OR IGNORE INTO settings VALUES ('total', 0);
"""
TYPE_CHECKING = False  # typing itself is not imported: it is costly on the warm path
if TYPE_CHECKING:
    from pathlib import Path
_MAX_NAME_BYTES = 200
# How long a process waits for another's index transaction before reporting a wedged cache.
_INDEX_TIMEOUT = 60.0
_UNSET = object()


def _path(path: str) -> Path:
    """``path`` as the :class:`pathlib.Path` the API hands out (imported only when needed)."""
    from pathlib import Path

    return Path(path)


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


class _Index(sqlite3.Connection):
    """A connection to the index whose failures are shared-cache errors.

    A damaged index raises :class:`CacheError` wherever SQLite notices it (including while rows
    are fetched), and the connection is marked broken so that the next use opens the file again
    (another process's gc may have rebuilt it); a lock held too long raises
    :class:`WaitTimeoutError`.
    """

    root: str
    broken = False

    def execute(self, sql: str, parameters=()) -> sqlite3.Cursor:  # type: ignore[no-untyped-def, override]
        return self.cursor(_Rows).execute(sql, parameters)

    def failure(self, e: sqlite3.DatabaseError) -> Exception:
        if isinstance(e, sqlite3.ProgrammingError):
            return e
        if getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return WaitTimeoutError(f"cache {self.root} index is busy ({e})")
        self.broken = True
        return CacheError(f"the index of cache {self.root} is unusable ({e}); run gc to rebuild it")


class _Rows(sqlite3.Cursor):
    connection: _Index

    def execute(self, sql: str, parameters=()) -> _Rows:  # type: ignore[no-untyped-def, override]
        try:
            return super().execute(sql, parameters)
        except sqlite3.DatabaseError as e:
            raise self.connection.failure(e) from None

    def fetchone(self):  # type: ignore[no-untyped-def]
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as e:
            raise self.connection.failure(e) from None

    def fetchall(self):  # type: ignore[no-untyped-def]
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as e:
            raise self.connection.failure(e) from None

    def __next__(self):  # type: ignore[no-untyped-def]
        try:
            return super().__next__()
        except sqlite3.DatabaseError as e:
            raise self.connection.failure(e) from None


class _Record:
    """Compared and shown by value, like a dataclass (importing dataclasses would cost more
    than a warm ``sc --use``)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Entry(_Record):
    """What :meth:`FsCache.entries` reports of one entry; ``users`` are the pids of the live
    processes holding a lease on it."""

    def __init__(self, name: str, size: int, created: float, last_used: float, keep: bool,
                 meta: str | None, in_use: bool, users: tuple[int, ...]) -> None:
        self.name, self.size, self.created, self.last_used = name, size, created, last_used
        self.keep, self.meta, self.in_use, self.users = keep, meta, in_use, users


class GcReport(_Record):
    """What :meth:`FsCache.gc` cleaned and repaired."""

    def __init__(self) -> None:
        self.stages_removed = 0
        self.trash_removed = 0
        self.orphans_adopted = 0
        self.orphans_removed = 0
        self.rows_dropped = 0
        self.leases_reclaimed = 0
        self.entries_deleted = 0
        self.accounting_fixed = 0
        self.index_rebuilt = False


class FsCache:
    """A cache of directories at ``root``, shared safely by any number of processes.

    ``max_size`` sets the cache's size budget (bytes, a string such as ``"10GB"``, or None for
    unlimited); the budget is stored in the cache, so every process sees the latest one set.
    Leave it out to use the budget already stored (unlimited for a new cache).
    ``durable`` flushes each entry to disk before committing it, so that even a power loss
    cannot leave a committed entry with missing data.  Without it nothing is flushed: every
    guarantee against crashed processes holds, but a power loss may damage recent entries.

    ``group`` (a gid) makes a new cache a *group cache*, shared by the members of that group:
    its directory is given to the group and made setgid, so that everything created in it
    belongs to the group.  A cache created in a setgid directory is a group cache too.  Using a
    group cache sets the process umask to give the group what it gives the owner, whatever the
    user's umask, because files in it are created by many hands (SQLite, unpackers); and its
    committed directories stay writable by the group, so that any member can delete them
    (their files stay read-only for everyone).

    ``repair`` lets the opening rewrite a damaged format marker (emptied, truncated or replaced
    by a directory); :meth:`gc` repairs the rest.  ``FsCache(root, repair=True).gc()`` is what
    ``sc gc`` does.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_size: int | str | None | object = _UNSET,
        *,
        durable: bool = True,
        timeout: float = _INDEX_TIMEOUT,
        group: int | None = None,
        repair: bool = False,
    ) -> None:
        self.root = os.path.abspath(root)
        self.group = group
        self.repair = repair
        self.durable = durable
        self.timeout = timeout
        self._objects = os.path.join(self.root, "objects")
        self._stage = os.path.join(self.root, "stage")
        self._trash = os.path.join(self.root, "trash")
        self._local = thread_local()
        self._open()
        if max_size is not _UNSET:
            self.max_size = max_size  # type: ignore[assignment]

    # -- setup ---------------------------------------------------------------------------------

    def _open(self) -> None:
        """Create the cache if needed (safe when many processes do it at once) and check it."""
        try:
            os.makedirs(self.root, exist_ok=True)
        except FileExistsError:
            raise CacheError(f"cache {self.root} is not a directory") from None
        except OSError as e:
            raise CacheError(f"cannot create cache {self.root}: {e.strerror}") from None
        self._check_owner(self._share_with_group())
        info = os.path.join(self.root, "cache.info")
        try:
            with open(info, "rb") as f:
                found = f.read(256)
        except FileNotFoundError:
            # A new cache: refuse it if locks lock nothing there.  The marker records that the
            # check passed, so the operations that follow pay nothing for it.
            self._check_locks()
            create_exclusive(info, FORMAT_LINE)
            with open(info, "rb") as f:
                found = f.read(256)
        except IsADirectoryError:
            found = None
        except OSError as e:
            raise CacheError(f"cannot read {info}: {e.strerror}") from None
        if found != FORMAT_LINE:
            self._repair_marker(info, found)
        for sub in (self._objects, self._stage, self._trash):
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub)

    def _repair_marker(self, info: str, found: bytes | None) -> None:
        """A marker that is not ours: rewrite it if it is only damaged (emptied, truncated, or
        replaced by a directory, in a directory that holds our layout) and this is a repairing
        open; refuse it otherwise, and always if it holds anything else."""
        damaged = (found is None or FORMAT_LINE.startswith(found)) and os.path.isdir(self._objects)
        if not damaged:
            shown = b"<a directory>" if found is None else found[:40]
            raise CacheError(
                f"{self.root} is not a shared-cache cache ({info} holds {shown!r}); refusing to use it"
            )
        if not self.repair:
            raise CacheError(f"the marker {info} of cache {self.root} is damaged; run gc to repair it")
        if found is None:
            os.rename(info, os.path.join(self._trash, unique_name()))
        write_atomic(info, FORMAT_LINE)

    def _share_with_group(self) -> os.stat_result:
        """Make our cache directory a group cache if asked to (or if it was created in a setgid
        directory, whose group it inherited), and, in a group cache, open the umask to the
        group."""
        st = os.lstat(self.root)
        ours = st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode)
        wanted = self.group is not None and (st.st_gid != self.group or not st.st_mode & stat.S_ISGID)
        inherited = st.st_mode & stat.S_ISGID and not st.st_mode & stat.S_IWGRP
        if ours and (wanted or inherited) and not os.path.exists(os.path.join(self.root, "cache.info")):
            try:
                if self.group is not None:
                    os.chown(self.root, -1, self.group)
                os.chmod(self.root, 0o2770)
            except OSError as e:
                raise CacheError(f"cannot give cache {self.root} to group {self.group}: {e.strerror}") from None
            st = os.lstat(self.root)
        elif self.group is not None and st.st_gid != self.group:
            raise CacheError(f"cache {self.root} exists and does not belong to group {self.group}")
        self.shared = bool(st.st_mode & stat.S_ISGID)
        if self.shared:
            os.umask(os.umask(0) & 0o007)
        return st

    def _check_owner(self, st: os.stat_result) -> None:
        """Refuse a cache directory that is a symlink or belongs to another user (on a shared
        /tmp anyone can create it first), unless it is a group cache: setgid, writable by a
        group this process is in."""
        if stat.S_ISLNK(st.st_mode):
            raise CacheError(f"cache {self.root} is a symlink; refusing to follow it")
        group_cache = (
            st.st_mode & stat.S_ISGID
            and st.st_mode & stat.S_IWGRP
            and (st.st_gid == os.getegid() or st.st_gid in os.getgroups())
        )
        if st.st_uid != os.geteuid() and not group_cache:
            raise CacheError(
                f"cache {self.root} belongs to uid {st.st_uid}, not to this user; refusing to use "
                "it (its owner could change what is read from it)"
            )

    def _check_locks(self) -> None:
        if not locks.locks_work(self.root):
            raise CacheError(
                f"file locks do not work on the file system of {self.root} (a network file "
                "system without lock support?); refusing to use it"
            )

    def _db(self) -> sqlite3.Connection:
        """This thread's connection to the index (a fresh one after a fork)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid() and not conn.broken:
            return conn
        path = os.path.join(self.root, "index.sqlite")
        try:
            # Created here rather than by SQLite, which would use mode 0644 whatever the umask:
            # the members of a group cache must be able to write it (its -wal and -shm files
            # take its mode).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
            conn = sqlite3.connect(
                path, timeout=self.timeout, isolation_level=None, factory=_Index
            )
        except (OSError, sqlite3.DatabaseError) as e:
            raise CacheError(
                f"the index of cache {self.root} is unusable ({e}); run gc to rebuild it"
            ) from None
        conn.root = self.root
        conn.execute("PRAGMA synchronous=NORMAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self._create_schema(conn)
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # WAL lets readers go on while one process writes; the mode is stored in the file, and
        # switching needs no transaction, so it comes first.  SQLite reports a concurrent switch
        # (many processes creating the cache at once) as busy without waiting: retry.  A switch
        # still refused after seconds is not that race: connections to an index that was
        # emptied under them hold it.
        deadline = time.monotonic() + min(self.timeout, 5.0)
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except WaitTimeoutError as e:
                if time.monotonic() >= deadline:
                    raise CacheError(
                        f"the index of cache {self.root} is unusable (empty, and {e}); "
                        "run gc to rebuild it"
                    ) from None
                time.sleep(0.005)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise CacheError(
                    f"the index of cache {self.root} has format {version}, this version "
                    f"of shared-cache knows {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the index: all of it or none of it happens."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise WaitTimeoutError(f"cache {self.root} index is busy ({e})") from None
        try:
            yield db
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(e, sqlite3.DatabaseError):
                raise CacheError(
                    f"the index of cache {self.root} is unusable ({e}); run gc to rebuild it"
                ) from None
            raise
        db.execute("COMMIT")

    # -- settings --------------------------------------------------------------------------------

    @property
    def max_size(self) -> int | None:
        """The size budget in bytes (None: unlimited), as stored in the cache now."""
        return self._setting(self._db(), "max_size")

    @max_size.setter
    def max_size(self, value: int | str | None) -> None:
        budget = None if value is None else parse_size(value, "max_size")
        with self._transaction() as db:
            db.execute("UPDATE settings SET value=? WHERE key='max_size'", (budget,))
            self._restore_budget(db)
        self._empty_trash()

    @property
    def size(self) -> int:
        """The accounted size of all committed entries, in bytes."""
        return self._setting(self._db(), "total")

    @staticmethod
    def _setting(db: sqlite3.Connection, key: str):  # type: ignore[no-untyped-def]
        return db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()[0]

    # -- staging ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self) -> Iterator[tuple[str, int]]:
        """A fresh staging directory, locked by this process, removed on exit unless committed."""
        guard = locks.open_lock_file(os.path.join(self.root, "stage.lock"))
        try:
            locks.lock(guard, locks.SHARED, timeout=self.timeout, what=f"{self.root}/stage.lock")
            stage = os.path.join(self._stage, unique_name())
            os.mkdir(stage)
            fd = locks.open_lock_file(os.path.join(stage, "lock"))
            locks.lock(fd, locks.EXCLUSIVE)  # nobody else knows the file yet: immediate
        finally:
            os.close(guard)
        try:
            yield stage, fd
        finally:
            remove_tree(stage)  # a no-op once the commit renamed it away
            os.close(fd)

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A volatile scratch directory on the cache's file system, removed on exit."""
        with self._staging() as (stage, _):
            data = os.path.join(stage, "data")
            os.mkdir(data)
            yield _path(data)

    # -- store -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def store(
        self,
        name: str,
        *,
        meta: str | None = None,
        keep: bool = True,
        holder: Owner | None = None,
        strict_budget: bool = True,
    ) -> Iterator[Path]:
        """Fill a fresh directory, committed atomically as entry ``name`` on normal exit.

        If another process commits ``name`` first, this copy is discarded without error.  An
        exception inside the block commits nothing and propagates.  ``meta`` is an opaque string
        kept with the entry.  ``holder`` gets a lease on the entry committed under ``name``
        (this copy or the one that won) in the same transaction, so the entry cannot be
        deleted as unused between its commit and its first use.

        Unused entries are evicted to make room under the budget.  If that is not enough, a
        store with ``strict_budget`` is refused (:class:`NoSpaceError`, or
        :class:`EntryTooLargeError` for an entry larger than the whole budget); without it the
        entry is committed anyway, and the budget is restored by eviction as soon as entries
        in use are released.  (Repositories use the latter: a budget for kept data must never
        fail a job that needs data now.)
        """
        check_name(name)
        try:
            with self._staging() as (stage, _):
                data = os.path.join(stage, "data")
                os.mkdir(data)
                yield _path(data)
                self._commit(stage, name, meta=meta, keep=keep, holder=holder, strict=strict_budget)
        finally:
            # Only now: until the staging context is left, the new entry's lock is held, and
            # readers of it would wait for the deletion of whatever the commit evicted.
            self._empty_trash()
        self._sweep()

    def _commit(
        self,
        stage: str,
        name: str,
        *,
        meta: str | None,
        keep: bool,
        holder: Owner | None,
        strict: bool,
    ) -> bool:
        size = disk_usage(os.path.join(stage, "data"), seal=0o575 if self.shared else 0o555)
        now = time.time()
        if self.durable:
            sync_tree(stage)
        import json  # a store or gc only

        marker = {"name": name, "size": size, "created": now, "keep": keep, "meta": meta}
        write_atomic(os.path.join(stage, "entry.json"), json.dumps(marker).encode(), durable=self.durable)
        with self._transaction() as db:
            row = db.execute("SELECT 1 FROM entries WHERE name=?", (name,)).fetchone()
            if row and not os.path.exists(os.path.join(self._objects, name, "entry.json")):
                # A row without its entry (what a delete killed before its commit leaves) is a
                # miss: drop it and commit ours.
                row = None if self._retire(db, name) else row
            if row:
                if holder is not None:
                    self._add_lease(db, name, holder)
                return False
            fits = self._make_room(db, name, size, strict=strict) or not strict
            if fits:
                db.execute(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                    (name, size, now, now, int(keep), meta),
                )
                db.execute("UPDATE settings SET value=value+? WHERE key='total'", (size,))
                if holder is not None:
                    self._add_lease(db, name, holder)
                self._rename_into_objects(stage, name)
        if not fits:
            raise NoSpaceError(
                f"cache {self.root} cannot fit {name!r} ({format_size(size)}) in its budget "
                f"of {format_size(self.max_size)}: the rest is in use"
            )
        if self.durable:
            fsync_dir(self._objects)
        return True

    def _make_room(self, db: sqlite3.Connection, name: str, size: int, *, strict: bool) -> bool:
        """Within a transaction: evict until ``size`` more bytes fit the budget; return whether
        they do.  Entries evicted are gone even if they do not (a rename into the trash cannot be
        rolled back), so the caller commits the transaction either way."""
        budget = self._setting(db, "max_size")
        if budget is None:
            return True
        if size > budget and strict:
            raise EntryTooLargeError(
                f"entry {name!r} ({format_size(size)}) is larger than the budget of cache "
                f"{self.root} ({format_size(budget)})"
            )
        excess = self._setting(db, "total") + size - budget
        return excess <= 0 or self._evict(db, excess) >= excess

    def _rename_into_objects(self, stage: str, name: str) -> None:
        target = os.path.join(self._objects, name)
        try:
            os.rename(stage, target)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # A directory without a row (the caller holds the index, so nobody is committing
            # it): the leftover of a crashed commit or delete.
            os.rename(target, os.path.join(self._trash, unique_name()))
            os.rename(stage, target)

    # -- load ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def load(self, name: str) -> Iterator[Path]:
        """Yield the data directory of entry ``name``, read-locked; MissError if there is none."""
        fd = self._lock_shared(check_name(name))
        try:
            yield _path(os.path.join(self._objects, name, "data"))
        finally:
            os.close(fd)

    def _lock_shared(self, name: str) -> int:
        """Take entry ``name``'s lock shared and record the use; return the locked descriptor."""
        entry = os.path.join(self._objects, name)
        for _ in range(3):
            try:
                fd = os.open(os.path.join(entry, "lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                break
            try:
                locks.lock(fd, locks.SHARED, timeout=self.timeout, what=f"entry {name!r}")
                if not locks.still_linked(fd, os.path.join(entry, "lock")):
                    os.close(fd)
                    continue  # deleted (and maybe stored again) while we waited: look again
                if os.path.exists(os.path.join(entry, "entry.json")) and self._touch(name):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            break
        raise MissError(f"no entry {name!r} in cache {self.root}")

    def _touch(self, name: str) -> bool:
        db = self._db()
        try:
            cursor = db.execute("UPDATE entries SET last_used=? WHERE name=?", (time.time(), name))
        except sqlite3.OperationalError as e:
            raise WaitTimeoutError(f"cache {self.root} index is busy ({e})") from None
        return cursor.rowcount == 1

    def path(self, name: str) -> Path:
        """Where entry ``name``'s data is (or would be); it is safe to read only under a use."""
        return _path(os.path.join(self._objects, check_name(name), "data"))

    # -- leases ----------------------------------------------------------------------------------

    def hold(
        self, name: str, owner: Owner, *, keep: bool = False, meta: str | None = None
    ) -> int:
        """Add a lease of ``owner`` on entry ``name``; return its id.  MissError if no entry.

        ``keep`` marks the entry to stay cached once unused (it never clears the mark).  With
        ``meta``, the entry's metadata must equal it, else :class:`ConflictError` is raised and
        no lease is taken.
        """
        check_name(name)
        with self._transaction() as db:
            row = db.execute("SELECT meta FROM entries WHERE name=?", (name,)).fetchone()
            if row is None or not os.path.exists(os.path.join(self._objects, name, "entry.json")):
                raise MissError(f"no entry {name!r} in cache {self.root}")
            if meta is not None and row[0] != meta:
                raise ConflictError(name, row[0])
            self._reclaim_leases(db, name)
            db.execute(
                "UPDATE entries SET last_used=?, keep=max(keep, ?) WHERE name=?",
                (time.time(), int(keep), name),
            )
            return self._add_lease(db, name, owner)

    def release(
        self,
        name: str,
        owner: Owner | None = None,
        *,
        lease: int | None = None,
        keep: bool = False,
    ) -> bool:
        """Release one lease on ``name``: the lease ``lease``, or one held by ``owner``.

        If no live use remains, the entry is deleted unless it is marked to keep (``keep`` marks
        it).  Returns whether the entry was deleted.  Raises MissError if there is no such
        entry, UsageError if that owner holds no lease on it.
        """
        check_name(name)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM entries WHERE name=?", (name,)).fetchone() is None:
                raise MissError(f"no entry {name!r} in cache {self.root}")
            if lease is not None:
                found = db.execute(
                    "SELECT id FROM leases WHERE id=? AND name=?", (lease, name)
                ).fetchone()
            else:
                assert owner is not None
                found = db.execute(
                    "SELECT id FROM leases WHERE name=? AND owner=? ORDER BY id DESC LIMIT 1",
                    (name, owner.key),
                ).fetchone()
            if found is None:
                who = f"lease {lease}" if lease is not None else f"process {owner.pid if owner else '?'}"
                raise UsageError(f"{who} holds no use of {name!r} in {self.root}")
            db.execute("DELETE FROM leases WHERE id=?", found)
            if keep:
                db.execute("UPDATE entries SET keep=1 WHERE name=?", (name,))
            deleted = self._delete_if_unused(db, name)
            self._restore_budget(db)
        self._empty_trash()
        return deleted

    def _restore_budget(self, db: sqlite3.Connection) -> None:
        """Within a transaction: evict down to the budget (exceeded by non-strict stores)."""
        budget = self._setting(db, "max_size")
        if budget is not None and self._setting(db, "total") > budget:
            self._evict(db, self._setting(db, "total") - budget)

    def lease_of(self, name: str, owner: Owner) -> int | None:
        """The newest lease of ``owner`` on ``name``, if it holds one."""
        (lease,) = self._db().execute(
            "SELECT max(id) FROM leases WHERE name=? AND owner=?", (name, owner.key)
        ).fetchone()
        return lease

    def users(self, name: str) -> list[int]:
        """pids of the live processes holding a lease on ``name``."""
        rows = self._db().execute("SELECT owner, pid FROM leases WHERE name=?", (name,))
        return [pid for owner, pid in rows if key_alive(owner)]

    def _add_lease(self, db: sqlite3.Connection, name: str, owner: Owner) -> int:
        cursor = db.execute(
            "INSERT INTO leases (name, owner, pid, created) VALUES (?, ?, ?, ?)",
            (name, owner.key, owner.pid, time.time()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _reclaim_leases(self, db: sqlite3.Connection, name: str | None = None) -> int:
        """Delete the leases (of ``name``, or all) whose owner is dead; return how many."""
        query = "SELECT DISTINCT owner FROM leases" + (" WHERE name=?" if name else "")
        dead = [o for (o,) in db.execute(query, (name,) if name else ()) if not key_alive(o)]
        for owner in dead:
            if name:
                db.execute("DELETE FROM leases WHERE owner=? AND name=?", (owner, name))
            else:
                db.execute("DELETE FROM leases WHERE owner=?", (owner,))
        return len(dead)

    def _delete_if_unused(self, db: sqlite3.Connection, name: str) -> bool:
        """Within a transaction: delete ``name`` if it is not to be kept and nobody uses it."""
        self._reclaim_leases(db, name)
        row = db.execute("SELECT keep FROM entries WHERE name=?", (name,)).fetchone()
        if row is None or row[0]:
            return False
        if db.execute("SELECT 1 FROM leases WHERE name=? LIMIT 1", (name,)).fetchone():
            return False
        return self._retire(db, name)

    # -- deletion --------------------------------------------------------------------------------

    def remove(self, name: str) -> None:
        """Delete entry ``name``.  MissError if there is none, BusyError if it is in use."""
        check_name(name)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM entries WHERE name=?", (name,)).fetchone() is None:
                raise MissError(f"no entry {name!r} in cache {self.root}")
            self._reclaim_leases(db, name)
            users = db.execute("SELECT pid FROM leases WHERE name=?", (name,)).fetchall()
            if users:
                pids = ", ".join(str(pid) for (pid,) in users)
                raise BusyError(f"entry {name!r} in {self.root} is in use by process {pids}")
            if not self._retire(db, name):
                raise BusyError(f"entry {name!r} in {self.root} is in use")
        self._empty_trash()

    def _retire(self, db: sqlite3.Connection, name: str) -> bool:
        """Within a transaction: move entry ``name`` to the trash unless it is locked.

        Returns whether it was removed.  The caller checks leases; the tree itself is deleted
        after the commit, by :meth:`_empty_trash`.
        """
        entry = os.path.join(self._objects, name)
        try:
            fd = os.open(os.path.join(entry, "lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            fd = None  # the directory is gone (a crashed delete): only the row is left
        try:
            if fd is not None:
                if not self._lock_if_unused(fd):
                    return False
                os.rename(entry, os.path.join(self._trash, unique_name()))
            (size,) = db.execute("SELECT size FROM entries WHERE name=?", (name,)).fetchone()
            db.execute("DELETE FROM entries WHERE name=?", (name,))
            db.execute("DELETE FROM leases WHERE name=?", (name,))
            db.execute("UPDATE settings SET value=value-? WHERE key='total'", (size,))
            return True
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _lock_if_unused(fd: int) -> bool:
        """Take an entry's lock exclusively unless a reader holds it.

        Readers hold it shared for as long as they use the entry.  An exclusive holder (the
        in-use probe of :meth:`entries`, a store finishing its commit) holds it for an instant:
        it is waited for, briefly, rather than taken for a user.
        """
        if locks.try_lock(fd, locks.EXCLUSIVE):
            return True
        if locks.try_lock(fd, locks.SHARED):  # held shared: by readers, unless they just left
            return locks.try_lock(fd, locks.EXCLUSIVE)
        try:
            locks.lock(fd, locks.EXCLUSIVE, timeout=0.05)
        except WaitTimeoutError:
            return False
        return True

    def evict(self, nbytes: int | None = None) -> int:
        """Delete unused entries, least recently used first, until ``nbytes`` are freed (all of
        them if None); return the bytes freed.  For making room on a full file system."""
        with self._transaction() as db:
            freed = self._evict(db, float("inf") if nbytes is None else nbytes)  # type: ignore[arg-type]
        self._empty_trash()
        return freed

    def _evict(self, db: sqlite3.Connection, need: int) -> int:
        """Within a transaction: delete unused entries, least recently used first, until
        ``need`` bytes are freed or nothing more can go.  Returns the bytes freed."""
        self._reclaim_leases(db)
        freed = 0
        after: tuple[float, str] = (float("-inf"), "")
        while freed < need:
            batch = db.execute(
                "SELECT last_used, name, size FROM entries "
                "WHERE (last_used, name) > (?, ?) "
                "AND name NOT IN (SELECT name FROM leases) "
                "ORDER BY last_used, name LIMIT 256",
                after,
            ).fetchall()
            if not batch:
                break
            for last_used, name, size in batch:
                after = (last_used, name)
                if self._retire(db, name):
                    freed += size
                    if freed >= need:
                        break
        return freed

    def _empty_trash(self) -> int:
        """Delete whatever is in the trash; return how many trees were removed."""
        removed = 0
        with os.scandir(self._trash) as trees:
            for tree in trees:
                remove_tree(tree.path)
                removed += 1
        return removed

    # -- inspection ------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every committed entry, with its size, times, and whether it is in use now."""
        db = self._db()
        alive: dict[str, bool] = {}
        users: dict[str, list[int]] = {}
        for name, owner, pid in db.execute("SELECT name, owner, pid FROM leases"):
            if alive.setdefault(owner, key_alive(owner)):
                users.setdefault(name, []).append(pid)
        result = []
        rows = db.execute(
            "SELECT name, size, created, last_used, keep, meta FROM entries ORDER BY name"
        ).fetchall()
        for name, size, created, last_used, keep, meta in rows:
            held = tuple(users.get(name, ()))
            in_use = bool(held) or self._locked(name)
            result.append(Entry(name, size, created, last_used, bool(keep), meta, in_use, held))
        return result

    def info(self, name: str) -> Entry:
        """What :meth:`entries` says of entry ``name``; MissError if there is none."""
        row = self._db().execute(
            "SELECT name, size, created, last_used, keep, meta FROM entries WHERE name=?",
            (check_name(name),),
        ).fetchone()
        if row is None:
            raise MissError(f"no entry {name!r} in cache {self.root}")
        held = tuple(self.users(name))
        name, size, created, last_used, keep, meta = row
        return Entry(name, size, created, last_used, bool(keep), meta, bool(held) or self._locked(name), held)

    def __contains__(self, name: str) -> bool:
        row = self._db().execute("SELECT 1 FROM entries WHERE name=?", (name,)).fetchone()
        return row is not None

    def _locked(self, name: str) -> bool:
        """Whether some process holds entry ``name``'s lock (a reader, or a storer committing)."""
        try:
            fd = os.open(os.path.join(self._objects, name, "lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            return not locks.try_lock(fd, locks.EXCLUSIVE)
        finally:
            os.close(fd)

    # -- garbage collection ----------------------------------------------------------------------

    def _sweep(self) -> int:
        """Remove the staging directories of dead processes, if nobody is creating one now."""
        guard = locks.open_lock_file(os.path.join(self.root, "stage.lock"))
        try:
            if not locks.try_lock(guard, locks.EXCLUSIVE):
                return 0
            removed = 0
            with os.scandir(self._stage) as stages:
                for stage in stages:
                    removed += self._remove_if_abandoned(stage.path)
            return removed
        finally:
            os.close(guard)

    @staticmethod
    def _remove_if_abandoned(stage: str) -> int:
        try:
            fd = os.open(os.path.join(stage, "lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            fd = None  # created under stage.lock, so a lock-less one was abandoned
        try:
            if fd is not None and not locks.try_lock(fd, locks.EXCLUSIVE):
                return 0
            remove_tree(stage)
            return 1
        finally:
            if fd is not None:
                os.close(fd)

    def gc(self) -> GcReport:
        """Clean what crashed processes left, reclaim dead leases, and repair the accounting.

        Removes abandoned staging directories and the trash; reconciles ``objects/`` with the
        index (adopts committed directories that lost their row, removes directories without a
        valid marker and rows without a directory); deletes unused entries not marked to keep;
        recomputes the accounted size; and evicts down to the budget.
        """
        self._check_locks()
        report = GcReport()
        try:
            if self._db().execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise CacheError("damaged index")
        except CacheError:
            self._set_index_aside()
            report.index_rebuilt = True
        report.stages_removed = self._sweep()
        with self._transaction() as db:
            report.leases_reclaimed = self._reclaim_leases(db)
            rows = {name for (name,) in db.execute("SELECT name FROM entries")}
            with os.scandir(self._objects) as found:
                on_disk = {e.name for e in found}
            for name in on_disk - rows:
                if self._adopt(db, name):
                    report.orphans_adopted += 1
                else:
                    os.rename(os.path.join(self._objects, name), os.path.join(self._trash, unique_name()))
                    report.orphans_removed += 1
            for name in rows - on_disk:
                db.execute("DELETE FROM entries WHERE name=?", (name,))
                db.execute("DELETE FROM leases WHERE name=?", (name,))
                report.rows_dropped += 1
            unused = db.execute(
                "SELECT name FROM entries WHERE keep=0 AND name NOT IN (SELECT name FROM leases)"
            ).fetchall()
            for (name,) in unused:
                report.entries_deleted += self._retire(db, name)
            (actual,) = db.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()
            if actual != self._setting(db, "total"):
                report.accounting_fixed = 1
                db.execute("UPDATE settings SET value=? WHERE key='total'", (actual,))
            self._restore_budget(db)
        report.trash_removed = self._empty_trash()
        return report

    def _set_index_aside(self) -> None:
        """Move an unusable index into the trash; the next connection creates a new one, and
        gc then adopts every committed entry from its marker."""
        self._local.conn = None
        for suffix in ("", "-wal", "-shm"):
            try:
                os.rename(os.path.join(self.root, f"index.sqlite{suffix}"), os.path.join(self._trash, unique_name()))
            except FileNotFoundError:
                pass

    def _adopt(self, db: sqlite3.Connection, name: str) -> bool:
        """Within a transaction: give a committed directory that has no row its row back."""
        try:
            import json

            with open(os.path.join(self._objects, name, "entry.json"), "rb") as f:
                marker = json.loads(f.read())
            if marker["name"] != name or not os.path.isdir(os.path.join(self._objects, name, "data")):
                return False
            size, created = int(marker["size"]), float(marker["created"])
            keep, meta = bool(marker["keep"]), marker["meta"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        db.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", (name, size, created, created, keep, meta)
        )
        return True
