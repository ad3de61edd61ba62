"""The index of a cache: its accounting, the order of eviction, and what listing shows.

The index is an SQLite database, ``index.sqlite`` in the cache (see :mod:`sharedcache.engine.fscache`
for the protocol it takes part in).  It holds one row per committed entry: its size as measured
at commit, its creation time, its caller's metadata, and two facts that only ever grow and are
also kept in the entry's own directory, where holding and loading record them without the
index: the time of the last use and the keep flag.  The index's copies of those two are lower
bounds, brought up to date by whoever needs them exact (eviction, release, gc).  It also holds
the accounted size, the sum of the rows' sizes, so that a store need not add them up.  Nothing
else is only here: gc can rebuild the index from the entries' directories.

SQLite gives atomic, durable, multi-process transactions, and its locks, like ours, are released
by the kernel when a process dies.  A write transaction (``BEGIN IMMEDIATE``) serialises every
change of the accounting; it is held for milliseconds and never while waiting for another lock
that could be held for longer.

A full file system must not make the index unusable: SQLite's journal (``-wal``) grows with
every write transaction, and the transactions that free space (a release, an eviction, gc) are
writes too.  So the index keeps a *reserve*, ``index.reserve``, a file of :data:`RESERVE`
allocated bytes.  Every process of the index shares it, as they share the journals it is for;
between them:

1. *Giving it up.*  A process about to connect (its first statement may make the journals) or
   to begin a write transaction that finds less than :data:`RESERVE` free removes it.  Its room
   is then the journals', whoever's transaction writes them: not this process's alone.
2. *Making it again.*  Whoever finds room for the reserve and as much again (twice
   :data:`RESERVE` free) makes it, whole: after connecting, after a transaction, after emptying
   the trash, at the exit of a process that gave it up.  Never with less while the journals
   are there (another connection is open): what stays free is for the journals of the
   transactions that began once it was given up, which may be writing still (a reserve made of
   whatever was free took that room from another process's journal, whose release then
   failed).  With no connection open, what is free is made the reserve, up to its size: a
   process that gave it up and freed nothing gives its room back as it exits.  A whole reserve
   is not even opened: a process that gives it up gets its room back only once nobody has it
   open.
3. *Waiting for the room.*  A connection that finds no room for its journals, the reserve
   given up, tries again for :data:`JOURNALS_SETTLE`: others' journals take that room only for
   as long as their transactions, and their releases free more.

A file system can also run out of inodes, with bytes to spare (another user's many small files
on a shared tmpfs): SQLite then cannot even make the journals (``-wal`` and ``-shm``, made anew
by the first connection), and the index cannot be opened.  So the reserve also holds the inodes they
take: its file and an empty one beside it, ``index.reserve-inode``, removed together.  Running
out of space (or inodes) all the same is :class:`NoSpaceError`, not damage; a write past this
process's file size limit (``ulimit -f``), which SQLite reports as one or as an I/O error, is
:class:`~sharedcache.errors.FileSizeLimitError`.

This module is imported only by the operations that change or list the accounting.  Holding and
loading an entry do not import it: loading SQLite's shared library alone costs more than a warm
``sc --use`` may take.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import gc
import itertools
import os
import stat
import struct
import sys
import time
import weakref
from _thread import RLock, get_ident  # threading's, without importing threading

try:  # sqlite3's Python layer only adds datetime adapters, which would cost every start
    import _sqlite3 as sqlite3
except ImportError:  # pragma: no cover - an interpreter without the C module's usual name
    import sqlite3  # type: ignore[no-redef]  # the same module under its public name

from ..errors import (
    CacheError,
    FileSizeLimitError,
    LeasedError,
    NoSpaceError,
    WaitTimeoutError,
    file_size_limit_error,
    memory_refused,
    no_space_for,
    out_of_files_now,
    over_limit,
)
from ..lean import scoped
from .fsutil import open_directory, open_unleased, unlink_if_present
from .leases import INTERRUPTS

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

#: A row: name, size, created, last used, keep, meta.
Row = tuple[str, int, float, float, int, "str | None"]
#: What each column of a row holds, as read (a REAL column's integral values may read as ints).
_KINDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "size": int, "created": (float, int), "last_used": (float, int), "keep": int,
    "meta": (str, type(None)),
}

#: Bytes kept allocated beside the index for its journal to grow into on a full file system.
RESERVE = 256 * 1024
_RESERVE = "index.reserve"  # the reserve's file, in the cache's directory
#: The reserve's second file, empty: with the first, the inodes of the journals (-wal, -shm).
_RESERVE_INODE = "index.reserve-inode"
#: Inodes the journals take when a connection makes them.
_JOURNAL_INODES = 2

SCHEMA_VERSION = 2
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
INSERT OR IGNORE INTO settings VALUES ('total', 0);
"""


#: Seconds SQLite waits for a busy index (another connection has its write lock) at a time.
#: Python runs no signal handler while SQLite waits, in C: a longer wait is made of such slices,
#: each statement run again after one (see :meth:`Index.waits_again`), so that Ctrl-C and the
#: signals sc makes exceptions of act between two, not once the whole wait is over (and those it
#: holds back, while a population can still undo itself: see ``INTERRUPTS.let_endings_act``).
BUSY_SLICE = 0.05


class Index(sqlite3.Connection):
    """A connection to the index whose failures are shared-cache errors.

    A damaged index raises :class:`CacheError` wherever SQLite notices it (including while rows
    are fetched) or a value read is not of its column's kind, and the connection is marked
    broken so that the next use opens the file again (another process's gc may have rebuilt it);
    a lock held too long raises :class:`WaitTimeoutError`.
    """

    root: str
    file: tuple[int, int]  # the device and inode of the index's file
    file_mode: int  # the cache's mode for the files it makes (the reserve)
    broken = False
    waits: float  # seconds a statement waits for a busy index, as last set
    busy_slice: float  # seconds SQLite waits for a busy index at a time (its busy timeout) now
    _ends: list[tuple[Callable[[], object], Callable[[], object]]]  # the open transaction's (see at_end)

    def close_leaving_journals(self) -> None:
        """Close this connection leaving the index's journals (``-wal``, ``-shm``) where they are,
        unfolded, even as the last one: for a close at a moment that nobody chose (a cache
        freed by whichever thread let it go last), when another thread may be removing the
        cache's directory (``shutil.rmtree`` fails on a file it listed that is gone when it
        comes to unlink it).

        SQLite's last connection folds the journal back and unlinks both, by name, once it has
        taken an exclusive lock on the index's file: a POSIX lock, which conflicts with an open
        file description's (OFD) lock, even one of its own process.  So each of this process's
        descriptors of the index (SQLite's own: closing a descriptor that this process opened
        would drop every POSIX lock it holds on the file, those of its other connections among
        them) gets an OFD read lock on one byte of that exclusive lock's range for the close.
        SQLite's attempt fails then, as when another connection is open: the journals stay for
        the next connection, which folds them back.  Another process's connections take no lock
        there but as they close, and then leave the journals too.  Each close locks a byte of
        its own (:data:`_BYTES_LEFT_LOCKED`), so that it unlocks no other close's."""
        byte = _EXCLUSIVE_RANGE[0] + next(_BYTES_LEFT_LOCKED) % _EXCLUSIVE_RANGE[1]
        for fd in _descriptors_of(self.file):
            _lock_byte(fd, byte, fcntl.F_RDLCK)
        try:
            self.close()
        finally:
            for fd in _descriptors_of(self.file):  # (SQLite's of this connection is closed, with its lock)
                _lock_byte(fd, byte, fcntl.F_UNLCK)

    def at_end(self, undo: Callable[[], object], done: Callable[[], object]) -> None:
        """Within a transaction: what to do once it ends.  ``undo`` undoes what the caller did
        beside the index (a rename, which no rollback undoes) if it fails, its COMMIT included,
        before its rollback; ``done`` then runs whether it committed or not (it releases what
        kept others from what ``undo`` puts back: an entry's lock).  Last registered, first run."""
        self._ends.append((undo, done))

    def wait_at_most(self, seconds: float) -> None:
        """Wait for a busy index at most ``seconds`` in each statement from now on."""
        self.waits = seconds

    def busy_deadline(self) -> float:
        """When a statement starting now stops waiting for a busy index; SQLite's busy timeout
        set to the first slice of that wait."""
        self._wait_slice(self.waits)
        return time.monotonic() + self.waits

    def waits_again(self, began: float, deadline: float) -> bool:
        """Whether a statement that began at ``began`` and met a busy index is to be run again,
        SQLite's busy timeout set to the next slice of the wait until ``deadline``: time is
        left, and SQLite waited its whole slice.  Some statements it refuses without waiting (a
        switch of the journal mode while another connection reads, a checkpoint while another
        runs one): a longer wait would not have changed their outcome, which is theirs at once,
        as it was before the wait was cut in slices."""
        now = time.monotonic()
        # (A refusal without waiting takes microseconds, a slice at least its milliseconds.)
        if now >= deadline or now - began < self.busy_slice / 2:
            return False
        self._wait_slice(deadline - now)
        return True

    def _wait_slice(self, seconds: float) -> None:
        """Have SQLite wait for a busy index ``seconds``, at most :data:`BUSY_SLICE`."""
        seconds = min(seconds, BUSY_SLICE)
        if seconds != self.busy_slice:
            super().execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
            self.busy_slice = seconds

    def execute(self, sql: str, parameters: tuple[object, ...] = ()) -> _Rows:  # type: ignore[override]  # rows are fetched through _Rows, whose errors are ours
        return self.cursor(_Rows).execute(sql, parameters)

    def failure(self, e: sqlite3.DatabaseError) -> Exception:
        if isinstance(e, sqlite3.ProgrammingError):
            return e
        if memory_refused(e):  # (under ulimit -v: neither damage nor a reason to rebuild the index)
            return MemoryError(str(e))
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return WaitTimeoutError(f"cache {self.root} index is busy ({e})")
        if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR) and (too_large := _at_file_size_limit(self.root)):
            return too_large  # (neither a full disk, whose remedy evicts others' data, nor damage)
        if code == sqlite3.SQLITE_FULL or getattr(e, "sqlite_errorcode", 0) == sqlite3.SQLITE_IOERR_SHMSIZE or (
                code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) and _full(self.root)):
            # (No inode for a journal is CANTOPEN: not damage, and gc must not set the index aside.
            # No room to grow the -shm is SHMSIZE, whatever the room by now: others' journals that
            # took it may have ended.)
            full = no_space_for(f"the index of cache {self.root}", OSError(errno.ENOSPC, e), self.root)
            assert full is not None
            return full
        if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) and (limit := out_of_files_now()):
            return limit  # (not damage either: gc must not set the index aside)
        unusable = _JournalUnopened if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY) else CacheError
        return self.damaged(str(e), unusable)

    def damaged(self, why: str, kind: type[CacheError] = CacheError) -> CacheError:
        """The error of an index found unusable for ``why``; the connection is marked broken."""
        self.broken = True
        return kind(f"the index of cache {self.root} is unusable ({why}); run gc to rebuild it")

    def _typed(self, rows: Iterable[Any], columns: tuple[str, ...]) -> Iterator[Any]:
        """``rows``, whose values are those of ``columns``, once each value is checked to be of
        its column's kind: SQLite stores whatever a damaged record says (text where a size was,
        bytes that are no UTF-8), and its checks (``PRAGMA integrity_check``) do not look at types."""
        for row in rows:
            for column, value in zip(columns, row, strict=True):
                if not isinstance(value, _KINDS[column]):
                    raise self.damaged(f"an entry's {column} is {value!r:.40}")
            yield row

    # -- the queries: every statement the engine runs is one of these ------------------------

    def total(self) -> int:
        """The accounted size: the sum of the rows' sizes, kept up to date by every change."""
        row = self.execute("SELECT value FROM settings WHERE key='total'").fetchone()
        return self._number(None if row is None else row[0], "its accounted size")

    def set_total(self, total: int) -> None:
        self.execute("UPDATE settings SET value=? WHERE key='total'", (total,))

    def sum_of_sizes(self) -> int:
        """The accounted size recomputed from the rows."""
        # (A size that is no integer makes SQLite's sum a float.)
        return self._number(self.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0],
                            "the sum of its entries' sizes")

    def _number(self, value: object, what: str) -> int:
        if not isinstance(value, int):
            raise self.damaged(f"{what} is {value!r:.40}")
        return value

    def add(self, name: str, size: int, created: float, last_used: float, keep: bool,
            meta: str | None) -> None:
        """Insert the row of a committed entry and account for its size."""
        self.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                     (name, size, created, last_used, int(keep), meta))
        self.execute("UPDATE settings SET value=value+? WHERE key='total'", (size,))

    def forget(self, name: str) -> None:
        """Delete the row of ``name``, if any, and the size it accounted for."""
        row = self.execute("SELECT size FROM entries WHERE name=?", (name,)).fetchone()
        if row is not None:
            self.execute("DELETE FROM entries WHERE name=?", (name,))
            self.execute("UPDATE settings SET value=value-? WHERE key='total'", row)

    def check_for_commit(self, name: str) -> None:
        """Read where a commit of ``name`` writes (its row's place, the accounted size): damage
        there, which SQLite finds only as a statement reaches it, is found by a store before it
        is filled (a download) rather than by its commit, once the work is done."""
        self.execute("SELECT 1 FROM entries WHERE name=?", (name,)).fetchone()
        self.execute("SELECT value FROM settings WHERE key='total'").fetchone()

    def has(self, name: str) -> bool:
        return self.execute("SELECT 1 FROM entries WHERE name=?", (name,)).fetchone() is not None

    def kept(self, name: str) -> bool:
        """Whether the row of ``name`` says it is kept (False without a row)."""
        row = self.execute("SELECT keep FROM entries WHERE name=?", (name,)).fetchone()
        return bool(row and row[0])

    def mark_kept(self, name: str) -> None:
        self.execute("UPDATE entries SET keep=1 WHERE name=?", (name,))

    def unkept(self) -> list[tuple[str, int]]:
        """The rows not marked kept: (name, size)."""
        return list(self._typed(self.execute("SELECT name, size FROM entries WHERE keep=0"), ("name", "size")))

    def swept_boot(self) -> str | None:
        """The boot in which an eviction last retired the entries of the boots before (see
        "Entries for this boot" in :mod:`sharedcache.engine.fscache`), if any."""
        row = self.execute("SELECT value FROM settings WHERE key='swept boot'").fetchone()
        return None if row is None else str(row[0])

    def set_swept_boot(self, boot: str) -> None:
        self.execute("INSERT OR REPLACE INTO settings VALUES ('swept boot', ?)", (boot,))

    def set_last_used(self, name: str, last_used: float) -> None:
        """Record a use of ``name`` at ``last_used``, unless its row has a later one: the copy
        only ever grows."""
        self.execute("UPDATE entries SET last_used=MAX(last_used, ?) WHERE name=?", (last_used, name))

    def eviction_batch(self, after: tuple[float, str], *, unkept_only: bool = False,
                       count: int = 256) -> list[tuple[float, str, int]]:
        """The next ``count`` rows (``unkept_only``: of those not marked kept) in the order of
        eviction (last use, then name) after ``after``: (last used, name, size)."""
        unkept = "AND keep=0 " if unkept_only else ""
        rows = self.execute(f"SELECT last_used, name, size FROM entries WHERE (last_used, name) > (?, ?) {unkept}"
                            "ORDER BY last_used, name LIMIT ?", (*after, count))
        return list(self._typed(rows, ("last_used", "name", "size")))

    def sizes_by_last_use(self) -> Iterator[tuple[str, int]]:
        """(name, size) of every row, least recently used first, read as they are asked for."""
        return self._typed(self.execute("SELECT name, size FROM entries ORDER BY last_used, name"), ("name", "size"))

    _ROW = ("name", "size", "created", "last_used", "keep", "meta")
    _SELECT_ROW = f"SELECT {', '.join(_ROW)} FROM entries"

    def rows(self) -> list[Row]:
        """Every row, by name: (name, size, created, last used, keep, meta)."""
        return list(self._typed(self.execute(self._SELECT_ROW + " ORDER BY name"), self._ROW))

    def row(self, name: str) -> Row | None:
        return next(self._typed(self.execute(self._SELECT_ROW + " WHERE name=?", (name,)), self._ROW), None)

    def names(self) -> set[str]:
        return {name for (name,) in self._typed(self.execute("SELECT name FROM entries"), ("name",))}

    def names_and_keep(self) -> list[tuple[str, int]]:
        return list(self._typed(self.execute("SELECT name, keep FROM entries"), ("name", "keep")))

    def intact(self) -> bool:
        """Whether the index can be used as it is: SQLite finds the database sound (``PRAGMA
        integrity_check``, which also finds an index of a table that disagrees with the table,
        as ``quick_check`` does not), and every value the queries read is of its kind."""
        if self.execute("PRAGMA integrity_check(1)").fetchone()[0] != "ok":
            return False
        try:
            self.total()
            self.rows()
        except CacheError:
            return False
        return True

    @scoped
    def transaction(self) -> Iterator[Index]:
        """A write transaction: all of it or none of it happens.

        A thread writes the index in one transaction at a time.  One that begins another while
        its first is under way (in :data:`_writing`) is a signal handler's, run in the thread
        whose transaction it interrupted, which keeps the write lock until the handler returns:
        it is refused at once (:class:`WaitForItselfError`), rather than wait for itself until
        its timeout (on a connection of its own) or roll the interrupted transaction back under
        its feet (on that one's connection)."""
        writer = (get_ident(), self.file)
        if writer in _writing:
            from ..errors import WaitForItselfError  # (made on first use: a ready use never meets it)

            raise WaitForItselfError(f"the index of cache {self.root} is being written by this very thread, in the "
                                     "step that a signal handler interrupted: the handler would wait for itself; "
                                     "try again once that step is over")
        if _full(self.root):
            _remove_reserve(self.root)
        if self.in_transaction:
            # Transactions never nest: one is open only if an interrupt (KeyboardInterrupt, an
            # exception a signal handler raised) came between its BEGIN and its COMMIT where
            # nothing could roll it back.  It still holds the index's write lock.
            self.execute("ROLLBACK")
        self._ends = []
        try:
            # Before the BEGIN: a handler that comes as it returns finds the write lock taken.  In
            # the try: an exception that a handler raises as it returns leaves no mark (one left
            # behind refused every write transaction of this thread on this index for good).
            _writing.add(writer)
            try:
                self.execute("BEGIN IMMEDIATE")  # (a busy index: WaitTimeoutError, see failure)
                yield self
                self.execute("COMMIT")
            except BaseException as e:
                # Whatever ended it (the block's exception, a COMMIT that failed, or an interrupt
                # that came just after the BEGIN or just before the COMMIT ran): what was done
                # beside the index is undone, while the write lock is still held if SQLite has
                # not let it go, and the write lock is not kept.
                self._end(committed=False)
                if self.in_transaction:
                    self.execute("ROLLBACK")
                if isinstance(e, sqlite3.DatabaseError):
                    raise self.failure(e) from None
                raise
            self._end(committed=True)
        finally:
            _writing.discard(writer)
        if _full(self.root):
            # Give back what the journal took, so that the reserve can be made again now: once
            # the readers of the journal are done (its first column says they were not yet).
            with contextlib.suppress(sqlite3.DatabaseError):
                deadline = self.busy_deadline()
                while True:
                    began = time.monotonic()
                    if not super().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] or \
                            not self.waits_again(began, deadline):
                        break
        make_reserve(self.root, self.file_mode)


    def _end(self, *, committed: bool) -> None:
        """Run what :meth:`at_end` registered: the undos (unless ``committed``), last first, then
        what is done either way, last first: an entry's lock goes only once everything that it
        kept others off is back (a lease given back after the rename back).  An undo that fails
        stops the undos: those registered before it would put back what assumes it done (a
        lease given back into a tree left in the trash).  What is left is what a process killed
        there leaves, which gc and the next store repair: the transaction's own error is the
        one to raise."""
        ends, self._ends = self._ends, []
        try:
            if not committed:
                for undo, _ in reversed(ends):
                    try:
                        undo()
                    except OSError:
                        break
        finally:
            for _, done in reversed(ends):
                with contextlib.suppress(OSError):
                    done()


class _JournalUnopened(CacheError):
    """SQLite could not open the index's journals (``-wal``, ``-shm``), or opened them read-only:
    for the moment, while another connection makes them (what :func:`open_index` waits out),
    or for good."""


class _Rows(sqlite3.Cursor):
    connection: Index

    def execute(self, sql: str, parameters: Any = ()) -> _Rows:
        db = self.connection
        deadline = db.busy_deadline()
        while True:
            began = time.monotonic()
            try:
                super().execute(sql, parameters)
                return self
            except sqlite3.DatabaseError as e:
                # Outside a transaction, a statement that met a busy index changed nothing, and
                # a COMMIT that did leaves its transaction open (as SQLite documents): either is
                # run again.  Any other within a transaction (none meets it in WAL mode, its
                # BEGIN IMMEDIATE having the write lock) needs the transaction rolled back.
                busy = (getattr(e, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
                again = not db.in_transaction or sql == "COMMIT"
                if not (busy and again and db.waits_again(began, deadline)):
                    raise db.failure(e) from None
                if not db.in_transaction:  # (nothing done yet: a COMMIT's wait holds them on)
                    INTERRUPTS.let_endings_act()

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as e:
            raise self.connection.failure(e) from None

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as e:
            raise self.connection.failure(e) from None

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.DatabaseError as e:
            raise self.connection.failure(e) from None


#: The bytes of the index's file that SQLite's exclusive lock takes (unix VFS): first, count.
_EXCLUSIVE_RANGE = (0x40000000 + 2, 510)
#: Numbers the closes of :meth:`Index.close_leaving_journals` (a ``next()`` is atomic).
_BYTES_LEFT_LOCKED = itertools.count()


def _lock_byte(fd: int, byte: int, kind: int) -> None:
    """Take or drop (``kind``) an OFD lock on ``byte`` of the file of ``fd``."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, byte, 1, 0))
    except OSError:
        pass  # closed meanwhile, or a file system without OFD locks: SQLite does as it would


#: Every connection this process made, so that a forked child can close what it inherited.
_connections: weakref.WeakSet[Index] = weakref.WeakSet()
#: The threads of this process as it last forked (see :func:`_close_inherited`).
_threads_at_fork = 1
#: The connections a child of a process with other threads inherited: never closed nor freed.
_kept_from_fork: list[Index] = []


def _count_threads() -> None:
    global _threads_at_fork  # noqa: PLW0603 - what the parent knew at the fork, for the child
    # With the collector held off: sys._current_frames() makes its frame objects holding the
    # interpreter's lock of its threads, and a collection that one of them started, freeing a
    # thread-local (a dropped cache's), waited for that lock for good (Python 3.11, gh-106883).
    collecting = gc.isenabled()
    try:
        gc.disable()
        _threads_at_fork = len(sys._current_frames())  # without importing threading
    finally:
        if collecting:
            gc.enable()


def _close_inherited() -> None:
    """In a forked child: close every connection inherited from the parent, if the parent had
    no other thread.

    SQLite's locks on the index and its journals are POSIX locks, which a child does not
    inherit, while SQLite's record of what "this process" holds (kept per file, shared by all
    its connections) is copied with the memory: a connection the child opened would rely on
    locks it does not hold (its transactions then lose other processes' commits, or theirs
    lose its own).  Once every inherited connection is closed, SQLite forgets that record, and
    the child's next connection takes its own locks.

    Another thread of the parent may have been inside SQLite at the fork, holding mutexes (the
    connection's, SQLite's own) that nobody releases in the child: closing a connection there
    would wait for them for good.  So a child of a process with other threads closes nothing,
    and keeps what it inherited from being freed (which would close it): its connections are
    what they were before this rule (see docs/guarantees.md)."""
    inherited = list(_connections)
    _connections.clear()
    if _threads_at_fork > 1:
        _kept_from_fork.extend(inherited)
        return
    for db in inherited:
        with contextlib.suppress(sqlite3.Error):  # dropped either way
            db.close()


os.register_at_fork(before=_count_threads, after_in_child=_close_inherited)

#: The caches whose reserve this process gave up, to make again when it exits.
_to_remake: set[str] = set()


def _full(root: str) -> bool:
    """Whether the file system of ``root`` has less than :data:`RESERVE` bytes free for us, or
    fewer inodes than the journals take (a file system that counts none says 0 of 0)."""
    try:
        st = os.statvfs(root)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < RESERVE or (st.f_files > 0 and st.f_favail < _JOURNAL_INODES)


#: What SQLite adds to the index's name for the names of its files: the index's own and its
#: journals'.
_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _at_file_size_limit(root: str) -> FileSizeLimitError | None:
    """:class:`FileSizeLimitError` if a write to the index's files of the cache at ``root`` may
    have met this process's file size limit (``ulimit -f``): SQLite tells such a write as a full
    disk (the write that crossed it was short) or an I/O error (EFBIG), not which."""
    sizes = [0]
    for suffix in _SUFFIXES:
        with contextlib.suppress(OSError):
            sizes.append(os.stat(os.path.join(root, "index.sqlite" + suffix)).st_size)
    return file_size_limit_error(tuple(sizes))


def _remove_reserve(root: str) -> None:
    """Remove the reserve of the index of the cache at ``root``, reached as :func:`make_reserve`
    reaches it."""
    try:
        directory = open_directory(root)
    except OSError:
        return  # not a directory: not the cache (see make_reserve)
    try:
        unlink_if_present(_RESERVE, dir_fd=directory)
        unlink_if_present(_RESERVE_INODE, dir_fd=directory)
    finally:
        os.close(directory)


def make_reserve(root: str, mode: int, spare_inodes: int = 0) -> None:
    """Allocate the reserve of the index of the cache at ``root``: :data:`RESERVE` bytes, once
    as much again stays free; with no connection open (no journals), what is free if less
    (see the module's docstring).  Best effort.  ``mode``: the
    cache's file mode, given to a new reserve.  The cache's directory is opened without following
    a symlink at its name: a group cache's creator may rename the directory and put one there,
    and the reserve would be made wherever it led.  Its files leave ``spare_inodes`` free: those
    that a connection about to make the journals takes."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = -1
    journals_open = True
    try:
        directory = open_directory(root)
        try:
            journals_open = any(os.path.lexists(f"/proc/self/fd/{directory}/index.sqlite{suffix}")
                                for suffix in ("-wal", "-shm"))
            for name in (_RESERVE, _RESERVE_INODE):
                try:
                    found = os.stat(name, dir_fd=directory, follow_symlinks=False)
                except FileNotFoundError:
                    fs = os.fstatvfs(directory)
                    if fs.f_files and fs.f_favail <= spare_inodes:
                        break  # its inode would be the journals'
                else:
                    # Made already, or something planted there: not opened, since a process
                    # giving the reserve up gets its room back only once nobody has it open.
                    if name == _RESERVE_INODE or not stat.S_ISREG(found.st_mode) or found.st_blocks * 512 >= RESERVE:
                        continue
                made = os.open(name, flags, mode, dir_fd=directory)
                if name == _RESERVE:
                    fd = made
                else:
                    _give_mode(made, mode)
                    os.close(made)
        finally:
            os.close(directory)
    except OSError:
        pass  # no room even for the inode, or something planted there: next time
    if fd < 0:
        return
    try:
        st = os.fstat(fd)
        size = st.st_blocks * 512
        free = os.fstatvfs(fd)
        room = free.f_bavail * free.f_frsize
        if not stat.S_ISREG(st.st_mode) or size >= RESERVE or (journals_open and room - (RESERVE - size) < RESERVE):
            return
        _give_mode(fd, mode)
        os.posix_fallocate(fd, 0, min(RESERVE, size + room) // 4096 * 4096 or 4096)
    except OSError:
        pass  # what could be allocated stays allocated
    finally:
        os.close(fd)


def _give_mode(fd: int, mode: int) -> None:
    """Give the reserve's file open as ``fd`` exactly ``mode`` if it is this user's: whatever the
    umask took off (the cache's modes are exact)."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def open_index(root: str, index: tuple[int, int], timeout: float, file_mode: int = 0o600, *,
               until: float | None = None) -> Index:
    """A connection to the index of the cache at ``root``, created with its schema if needed;
    ``index`` is the device and inode of the index's file, checked by the caller through the
    cache's directory; ``file_mode`` is the cache's mode for the files it makes (the index's
    reserve).

    SQLite opens the index by its path, and follows symlinks on the way: another member of a
    group cache could put one in place of the file the caller checked, just before, and have
    this process write an index into a file of its own elsewhere.  So SQLite may not create the
    file (``mode=rw``), and the connection is kept only if SQLite's file is the one checked,
    which is known before SQLite reads or writes anything: it opens the file, and not its
    journals, as it connects.

    SQLite makes the journals (``-wal``, ``-shm``) at a connection's first statement if no other
    connection has them open, and the last connection to close removes them.  It makes them with
    the umask's mode, then gives them the index's: a member of a group cache whose connection
    opens them in between gets them read-only (writes then fail), or not at all.  So a
    connection is kept once it has shown that it may write (``BEGIN IMMEDIATE``), and one that
    may not is made again, for at most :data:`JOURNALS_SETTLE` seconds: a connection that has
    its journals open keeps them open, and nobody removes them meanwhile.  So is one that finds no
    room for them, the index's reserve given up (see the module's docstring).  ``until`` (a
    ``time.monotonic()``; None: ``timeout`` from now) bounds the wait for files of the index
    held under a file lease (:func:`_unleased`)."""
    deadline = time.monotonic() + JOURNALS_SETTLE
    until = time.monotonic() + timeout if until is None else until
    while True:
        db = _connect(root, index, timeout, file_mode, until)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                _create_schema(db, timeout)
            if _may_write(db):
                return db
            raise _JournalUnopened(f"the index of cache {root} is unusable (its journals are read-only); "
                                   "run gc to rebuild it")
        except _JournalUnopened:
            db.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.002)
        except NoSpaceError:
            # The room of a reserve given up may be taken for the moment by others' journals
            # (step 3 of the reserve's protocol, in the module's docstring).
            db.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
        except BaseException:
            db.close()
            raise


def _may_write(db: Index) -> bool:
    """Whether SQLite would let ``db`` write, with the journals it has open: it says so before it
    waits for another writer, so that one is not waited for."""
    waits = db.waits
    db.wait_at_most(0)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except WaitTimeoutError:
        pass  # another writer has the lock: SQLite refuses read-only journals before it tries it
    except _JournalUnopened:
        return False
    finally:
        db.wait_at_most(waits)
    return True


#: Seconds within which SQLite gives a journal it made the index's mode (far more than it takes):
#: :func:`open_index` makes a connection whose journals it could not open for writing again for
#: that long, and a cache refuses a journal this user may not write only after that long.
JOURNALS_SETTLE = 1.0


def _connect(root: str, index: tuple[int, int], timeout: float, file_mode: int, until: float) -> Index:
    """A connection to the index of :func:`open_index`'s arguments, which has not yet run a
    statement: SQLite has opened the index's file, and the check that it is the one checked has
    been made."""
    path = os.path.join(root, "index.sqlite")
    if _full(root):  # its -wal and -shm files are made anew by the first connection
        _remove_reserve(root)
        if root not in _to_remake:  # whatever this process frees, the next one has a reserve
            _to_remake.add(root)
            atexit.register(make_reserve, root, file_mode)
    else:
        # (Data deleted after the last transaction may have made room.)
        make_reserve(root, file_mode, spare_inodes=_JOURNAL_INODES)
    uri = "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23") + "?mode=rw"
    try:
        # check_same_thread=False: each connection is used by the thread that made it (FsCache keeps one
        # per thread), but a forked child closes what its parent made (_close_inherited).
        with _unleased(root, index, until):
            db = sqlite3.connect(uri, uri=True, timeout=min(timeout, BUSY_SLICE), isolation_level=None, factory=Index,
                                 check_same_thread=False)
    except LeasedError:
        raise  # (no damage: gc would not help)
    except OSError as e:
        raise over_limit(e) or CacheError(f"the index of cache {root} is unusable ({e}); run gc to rebuild it") \
            from None
    except sqlite3.DatabaseError as e:
        if memory_refused(e):
            raise MemoryError(str(e)) from None
        raise out_of_files_now() or CacheError(f"the index of cache {root} is unusable ({e}); run gc to rebuild it") \
            from None
    if not _open_here(index):
        db.close()
        raise CacheError(f"the index of cache {root} was replaced as it was opened (SQLite found another "
                         "file at its path); run gc to rebuild it")
    db.root, db.file, db.file_mode, db.waits, db.busy_slice = root, index, file_mode, timeout, min(timeout, BUSY_SLICE)
    _connections.add(db)
    return db


#: Held from the opening of the index's files by :func:`_unleased` to their close (see there);
#: reentrant, for a signal handler that connects while its thread holds it.
_connecting = RLock()
#: The descriptors that :func:`_unleased` holds open, under :data:`_connecting`.
_probes: list[int] = []
#: The write transactions under way (see :meth:`Index.transaction`): each thread's, with the
#: device and inode of the index it writes.
_writing: set[tuple[int, tuple[int, int]]] = set()


def _start_afresh_in_child() -> None:
    """In a forked child: a lock of its own, free (another thread of the parent may have held
    it), and none of the other threads' transactions, which do not go on in the child (a thread
    started there may be given the number of one of them)."""
    global _connecting  # noqa: PLW0603 - the child's, in place of what the parent held
    _connecting = RLock()
    forking = get_ident()
    for writer in [writer for writer in _writing if writer[0] != forking]:
        _writing.discard(writer)


os.register_at_fork(after_in_child=_start_afresh_in_child)


@contextlib.contextmanager
def _unleased(root: str, index: tuple[int, int], until: float) -> Iterator[None]:
    """Around SQLite's opening of the index of the cache at ``root``: wait until ``until`` for the
    file leases held on the index's files to be broken, and hold them open meanwhile, so that
    none can be taken again; :class:`LeasedError` past it.

    Any member of a group cache may take a lease on a file of hers there (``fcntl F_SETLEASE``):
    the index, which the member who first opened it owns, or journals she left or planted.
    SQLite opens them for writing, by path, and without ``O_NONBLOCK``: under a lease, its open
    waits for the kernel to break it, ``/proc/sys/fs/lease-break-time`` seconds (45), whatever
    the command's timeout.  An open with ``O_NONBLOCK`` is refused instead, having started the
    break, and is tried again.  SQLite opens the journals at the connection's first statement,
    after these are closed: a holder who takes a lease again in that instant may still hold up
    that statement.

    They are closed as SQLite has connected, before it locks anything: closing a descriptor
    drops every POSIX lock this process holds on its file, SQLite's among them.  So nothing is
    opened while this process has the index open (another connection's: none of its files
    can then be leased by another), and connections are made one at a time (:data:`_connecting`).

    One time only does a thread connect inside another of its connects: a signal handler's,
    which runs in the thread it interrupts.  The interrupted connect may hold descriptors open
    (:data:`_probes`), whose close, once the handler returns, would drop the locks of the
    handler's connection: the handler's connect closes them first, and makes its own connection
    whole, as any other (the interrupted one, half made, is never its).  The interrupted connect
    then goes on without them, like a connect to an index already open here."""
    with _connecting:
        _close_probes()  # (those of a connect of this thread that a signal handler interrupted)
        try:
            if not _open_here(index):
                _open_all(root, until)
            yield
        finally:
            _close_probes()


def _close_probes() -> None:
    # Each taken off the list before it is closed: a handler that runs between the two steps
    # must not close its number again, which the handler may have reused.
    while _probes:
        os.close(_probes.pop())


def _open_all(root: str, until: float) -> None:
    """Open the index's files that are there in the cache at ``root`` as :func:`_unleased` says,
    into :data:`_probes`."""
    directory = open_directory(root)
    try:
        for suffix in _SUFFIXES:
            try:
                _probes.append(open_unleased("index.sqlite" + suffix, _PROBE_FLAGS, dir_fd=directory, until=until))
            except LeasedError:
                raise
            except OSError:
                pass  # missing (a journal, most often) or unusable: what SQLite's own open says
    finally:
        os.close(directory)


#: How :func:`_unleased` opens the index's files: as SQLite does (for writing: a write open
#: breaks a read lease too), but never waiting, nor through a link.
_PROBE_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_here(file: tuple[int, int]) -> bool:
    """Whether this process has the file of this device and inode open (SQLite, once it has
    connected to it; or another connection of this process to the same index, a case this check
    cannot tell from the first)."""
    return bool(_descriptors_of(file))


def _descriptors_of(file: tuple[int, int]) -> list[int]:
    """This process's descriptors of the file of this device and inode."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            status = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor among them)
        if (status.st_dev, status.st_ino) == file:
            found.append(int(name))
    return found


def _create_schema(db: Index, timeout: float) -> None:
    # WAL lets readers go on while one process writes; the mode is stored in the file, and
    # switching needs no transaction, so it comes first.  SQLite reports a concurrent switch
    # (many processes creating the cache at once) as busy without waiting: retry.  A switch
    # still refused after seconds is not that race: connections to an index that was emptied
    # under them hold it.
    deadline = time.monotonic() + min(timeout, 5.0)
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except WaitTimeoutError as e:
            if time.monotonic() >= deadline:
                raise CacheError(
                    f"the index of cache {db.root} is unusable (empty, and {e}); run gc to rebuild it"
                ) from None
            time.sleep(0.005)
    with db.transaction():
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise CacheError(
                f"the index of cache {db.root} has format {version}, this version of "
                f"shared-cache knows {SCHEMA_VERSION}"
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
