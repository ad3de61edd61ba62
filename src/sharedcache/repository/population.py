"""One population for all: the population lock, the waiters, and the filling of a repository.

The steps refer to the protocol in :mod:`sharedcache.repository` (its package docstring).

A :class:`Population` is one attempt to make a repository (step 4): it writes the status record,
keeps a work directory for a takeover, fills a store of the engine, retries after evicting the
kept data it needs when the file system is full, and leaves an error record for its waiters when it
fails.  :meth:`Population.fill` is the one place where the data comes from: today it runs the
recipe (:mod:`sharedcache.loaders.pipeline`); a tier that serves prepared data (another host, a
remote cache) takes its place there, and everything around it (locks, records, accounting,
commit) stays the same.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from .. import errors
from ..engine import locks
from ..engine.fsutil import read_control, shown_path, unlink_if_present, write_atomic
from ..engine.layout import open_made_directory, user_id_outside
from ..engine.leases import INTERRUPTS, Owner, boot_id, pid_namespace
from ..errors import (
    AuthorizationError,
    CacheError,
    ConfigError,
    CredentialError,
    DownloadError,
    Ended,
    LoaderError,
    NoSpaceError,
    ProcessLimitError,
    SharedCacheError,
    SizeLimitError,
    UsageError,
    WaitTimeoutError,
    end_by_exception,
    shown_to_others,
)
from ..lean import scoped
from ..loaders.words import reads_files, reads_over_network
from ..sizes import format_size
from .bases import conflict, say_if_budget_damaged
from .records import local, populator, read_status, write_record

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from ..engine.fsutil import Seal
    from ..progress import Reporter
    from .bases import Base
    from .records import Record
    from .repositories import Request


def hold_or_populate(base: Base, request: Request, reporter: Reporter) -> str:
    """Steps 2-4 of the protocol: a lease on the repository in ``base``, made here if needed."""
    lock_path = base.population_file(request.name, ".lock")
    # A population that fails after this moment fails for this use too (step 3), whether this
    # use had to wait for it or found its lock just released: one that failed before is past.
    asked = time.time()
    # Before the population lock is looked at: a population found under way has not yet handed
    # out what it makes, and what it makes stays until this use holds it.
    base.await_population(request.name)
    try:
        while True:
            lease = base.try_hold(request, reporter)
            if lease is not None:
                return lease
            try:
                fd = locks.open_lock_file(lock_path, mode=base.cache().modes.file)
            except OSError as e:  # (named by a descriptor's path: the line names the file system)
                full = errors.no_space_for(f"repository {request.name!r}", e, base.path)
                if full is None:
                    raise
                if not base.make_room_for_a_file(full, reporter):
                    raise full from None
                continue
            try:
                if not locks.try_lock(fd, locks.EXCLUSIVE):
                    _refuse_own_population(base, request, fd)
                    _wait(base, request, fd, reporter)
                if not locks.still_linked(fd, lock_path):
                    continue
                lease = base.try_hold(request, reporter)
                if lease is not None:
                    return lease
                _raise_recorded_failure(base, request, asked)
                # Taken again if its file found no room before: the population lock's making
                # may have evicted for it since.  The file is then there for the whole
                # population, and a waiter on a full (or read-only) file system opens it,
                # where it could not make it, and is not left out of what this use's last
                # release spares.
                base.await_population(request.name, at_once=True)
                return Population(base, request, reporter).run()
            finally:
                locks.release(fd)
    finally:
        base.stop_awaiting()


def _refuse_own_population(base: Base, request: Request, fd: int) -> None:
    """Refuse the use of ``request`` whose population lock (open on ``fd``, found taken) this
    very thread holds: a signal handler's use, run in the thread whose population it interrupted.
    Waiting, it would wait for itself, for good or until its timeout, the population stopped
    meanwhile.  Another thread's use waits for the population as any waiter does."""
    if locks.held_in_this_thread(fd):
        raise UsageError(f"use of repository {request.name!r} in {base.path} from a signal handler that "
                         "interrupted its own population of it: it would wait for itself; use it once "
                         "the population is over")


#: What a population needs besides its data, when it evicts for room: the status and partial's
#: records, the entry's lock, marker, metadata and lease, the index's journal, the data's last
#: block rounded up; a few blocks each, of at most 64 KiB on the file systems in use.
ROOM_MARGIN = 1 << 20

#: A population whose status record has not changed for this many seconds is reported as stuck.
STALL_SECONDS = 60.0


def stuck(status_path: str, status: Record) -> str | None:
    """Why the population whose status record is ``status_path`` (read as ``status``) looks
    stuck, and what to do about it: its process is stopped (SIGSTOP, a suspended job, a frozen
    cgroup; seen only from its own host and PID namespace), or it has written no progress for
    :data:`STALL_SECONDS`; None if it does not."""
    process = populator(status)
    if process is not None and local(process) and not process.alive():
        # Yet its lock is held: by a process that has a copy of it, which a child started
        # without exec outside Python's fork hooks may (see sharedcache.engine.locks).
        from shlex import quote  # (a command to paste: a base's path may hold a space)

        lock = shown_path(status_path.removesuffix(".json") + ".lock")
        return (f"process {process.pid} has ended, but a process it started holds a copy of the population lock "
                f"(fuser {quote(lock)} names it): the next use takes over once that one ends")
    if process is not None and local(process):
        pid = process.pid
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            state = stat[stat.rindex(b")") + 2 :].split()[0].decode()
        except (OSError, ValueError, IndexError):
            state = None  # gone, or hidden by hidepid: nothing to say
        if state in ("T", "t"):
            return (f"process {pid} is stopped (state {state}): it makes no progress until continued "
                    f"(kill -CONT {pid}); or kill it (kill -KILL {pid}: a stopped process heeds no other "
                    "signal) and the next use takes over")
    try:
        idle = time.time() - os.stat(status_path).st_mtime
    except OSError:
        return None
    if idle < STALL_SECONDS:
        return None
    where = "" if process is None or local(process) else " on its host"
    return (f"no progress reported for {idle:.0f} s (if {_named(process)} hangs, end it{where}: "
            "the next use takes over)")


def _named(process: Owner | None) -> str:
    """``process`` as messages name it: qualified when it is of another host or container."""
    return "an unknown process" if process is None else f"process {process}"


def _waiting_for(base: Base, request: Request, status_path: str, it: str) -> tuple[str, str | None]:
    """What a waiter for the population of ``request`` in ``base`` says it waits for (whom, to
    do what, how far it has got; the repository named as ``it``), and why it looks stuck, if it
    does (None if it does not, or there is no status record to tell); a population of another
    recipe under the name is refused."""
    name = request.name
    status = read_status(status_path) or {}
    if status.get("identity") not in (None, request.identity):
        raise conflict(name, base.path, status.get("identity"), request.identity, populating=True)
    done, total = status.get("done", 0), status.get("total")
    of = f" of {format_size(total)}" if total else ""
    why = stuck(status_path, status) if status else None
    return f"{_named(populator(status))} to populate {it} in {base.path}: {format_size(done)}{of} so far", why


def _wait(base: Base, request: Request, fd: int, reporter: Reporter) -> None:
    status_path = base.population_file(request.name, ".json")

    def report(elapsed: float) -> None:
        waited_for, why = _waiting_for(base, request, status_path, repr(request.name))
        reporter.waiting(f"waiting {elapsed:.0f} s for {waited_for}" + (f"; stuck: {why}" if why else ""))

    report(0.0)
    deadline = request.deadline
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        locks.lock(fd, locks.EXCLUSIVE, timeout=remaining, waiting=report)
    except WaitTimeoutError:
        # The line a job's log keeps, -v or not: whom it waited for, why that did not end, and
        # what to do about it, in words that fit sc's --timeout and use()'s timeout= alike.
        waited_for, why = _waiting_for(base, request, status_path, "it")
        raise WaitTimeoutError(
            f"repository {request.name!r}: timed out after {request.timeout:g} s waiting for {waited_for}; "
            + (f"stuck: {why}" if why else "a longer timeout (or none) waits for it to finish")
        ) from None


def _raise_recorded_failure(base: Base, request: Request, asked: float) -> None:
    """Step 3: the population that failed after this use asked for the repository: raise its
    error.  Data past the populator's own ``--size`` is not past a larger one (or none): that use
    populates for itself, and so does a use whose populator's credentials were refused (an
    :class:`~sharedcache.errors.AuthorizationError`: by a server, or a ``file:`` source refused
    to its uid and groups), and a use whose view of the recipe's
    sources is not the one the failure was seen from (:func:`seen_elsewhere`).  (A record is
    written before its population lock is released, so one dated after now was not written by a
    population: in a group cache a member could plant it, to fail every use of the name.)"""
    name = request.name
    record = read_status(base.population_file(name, ".error"))
    # (Under a name given with -n, the population that failed may have been of another recipe:
    # this one has not been tried.  A record without an identity was written by an earlier version.)
    if (record and asked <= float(record.get("time", 0)) <= time.time()
            and record.get("identity", request.identity) == request.identity):
        if record.get("error") == SizeLimitError.__name__ and "limit" in record and (
                request.limit is None or request.limit > record["limit"]):
            return
        kind = getattr(errors, str(record.get("error")), None)
        if not (isinstance(kind, type) and issubclass(kind, SharedCacheError)):
            kind = LoaderError
        if issubclass(kind, AuthorizationError):
            # The credentials refused (or missing) were the populator's, and this use sends its
            # own (or opens the file with its own uid and groups).  Told apart from them by
            # nothing in the record: what would tell them apart (a hash of a password) is read by
            # every member of a group cache, who may test guesses against it; a use with the same
            # credentials spends one refused request.
            return
        if seen_elsewhere(record, request.words):
            # A container's view of the sources (no network, often; a captive portal's page,
            # another file at a file: path, or none): this use's own may give the data.
            return
        raise kind(str(record.get("message", f"repository {name!r}: population failed")))


#: The namespaces that make a process's view of a recipe's sources, by the field of an error
#: record that holds each one's inode and its name in /proc/self/ns: the network (routes, proxies,
#: the server at an address) and the mounts (what a file: path names).
_VIEW_NAMESPACES = (("network", "net"), ("mount", "mnt"))


def view() -> dict[str, int]:
    """This process's view of a recipe's sources, as an error record holds it: the inode of each
    namespace of :data:`_VIEW_NAMESPACES`, but one that cannot be read."""
    seen = {}
    for field, namespace in _VIEW_NAMESPACES:
        try:
            seen[field] = os.stat(f"/proc/self/ns/{namespace}").st_ino
        except OSError:
            pass
    return seen


def seen_elsewhere(record: Record, words: tuple[str, ...]) -> bool:
    """Whether the failure of ``record`` was seen from another view of the sources of the recipe
    ``words`` than this process's: from another network namespace, for a recipe that reads over
    the network; from another mount namespace, for one with a ``file:`` source.  A namespace the
    record does not name (written by an earlier version, or unreadable there) is taken for this
    process's.

    Only the namespaces its sources depend on count: every job of an Apptainer container, of an
    HTCondor slot with a scratch /tmp or of a systemd service with PrivateTmp has mounts of its
    own, and if another mount namespace counted for a URL, a failing origin's retries would be
    repeated by each of their waiters in turn.  So a URL's host that a container's own
    /etc/hosts, resolv.conf or CA files resolve or trust otherwise does not count."""
    here = view()
    fields = (("network",) if reads_over_network(words) else ()) + (("mount",) if reads_files(words) else ())
    return any(record.get(field, here.get(field)) != here.get(field) for field in fields)


#: The SIGTERM or SIGHUP ending this process's population, once its handler has run (see
#: :func:`_ending_cleanly`).  The handler's exception can be lost: raised while Python runs a
#: weakref callback, a ``__del__`` or a collector's callback, it is printed and ignored.  So the
#: population's progress raises it again, and so does the end of the population.
_ending: list[int] = []


class RoomTaken(Exception):
    """The room a population's base had when it was chosen was reserved by another population
    since: no failure of the recipe, so none its waiters are told; the use chooses again."""


@scoped
def _ending_cleanly() -> Iterator[None]:
    """Have a SIGTERM or SIGHUP that would end the process mid-population (a batch system ending
    the job, a terminal closed) end it once the population has undone itself, as an interrupt
    does: its staging tree removed (else it stays until a later store sweeps it), its status
    record gone, what it downloaded kept for a takeover, no error recorded for its waiters.  The
    process then ends by that same signal, as it would have.  Only for a signal whose default
    action is in force, or that ``sc run`` as a namespace's first process has end it by an
    exception (:func:`~sharedcache.errors.end_by_exception`), and in the main thread, where Python
    runs handlers: what an application embedding the library does with its signals stays as it
    is.  A second such signal ends the process at once."""
    import signal

    def end(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        _ending.append(signum)
        raise Ended(signum)

    caught = {}  # each signal taken, and the handler it had
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            handler = signal.getsignal(signum)
            if handler == signal.SIG_DFL or handler is end_by_exception:
                signal.signal(signum, end)
                caught[signum] = handler
        except ValueError:  # not the main thread
            break
    shown = sys.unraisablehook

    def unraisable(unraisable: sys.UnraisableHookArgs) -> None:
        # What Python says of an exception it drops: the end lost so is raised again (see
        # _ending), and is no failure to show in a traceback.
        if not (isinstance(unraisable.exc_value, Ended) and _ending):
            shown(unraisable)

    if caught:
        sys.unraisablehook = unraisable
    _ending.clear()
    try:
        yield
        _raise_if_ending()  # the population ended, but the signal's exception had been lost
    except Ended as ended:
        signal.signal(ended.signum, signal.SIG_DFL)
        os.kill(os.getpid(), ended.signum)
        if os.getpid() == 1:
            # The first process of a PID namespace (a container's entrypoint: `sc run`, or a
            # program calling use()) is never ended by a signal it does not handle, its own
            # included: it ends with the status a shell gives such an end.
            raise SystemExit(128 + ended.signum) from None
        raise  # the signal is blocked in this thread: it ends the process once unblocked
    finally:
        _ending.clear()
        if sys.unraisablehook is unraisable:
            sys.unraisablehook = shown
        for signum, handler in caught.items():
            if signal.getsignal(signum) is end:
                signal.signal(signum, handler)


def _raise_if_ending() -> None:
    """Raise :class:`~sharedcache.errors.Ended` again if a SIGTERM or SIGHUP came, in case its exception was lost."""
    if _ending:
        raise Ended(_ending[0])


class Population:
    """Step 4: make the repository of ``request`` in ``base``, holding its population lock."""

    def __init__(self, base: Base, request: Request, reporter: Reporter) -> None:
        self.base, self.request, self.reporter = base, request, reporter
        name = request.name
        self.status_path = base.population_file(name, ".json")
        self.error_path = base.population_file(name, ".error")
        #: A private directory that survives this process, for a takeover (partial download).
        self.work = base.population_file(name, ".work")
        self._work_fd: int | None = None  # the work directory, once prepared: see _prepare_work
        self._seal: Seal | None = None  # what the store asks of the filler, while it fills
        self._interrupts_ignored = self._interrupts_deferred = False  # see _ignore_interrupts
        self.status = {"pid": os.getpid(), "pid_ns": pid_namespace(), "owner": Owner.current().key,
                       "identity": request.identity,
                       "size": request.limit, "done": 0, "total": None, "started": time.time()}
        self._bar = reporter.bar(name)
        self._last_write = 0.0
        self._done = 0  # source bytes received, as progress() last heard
        self._total: int | None = None  # the source's size, if it said it, as progress() last heard
        # Seconds the store took to make the data, then to flush and commit it: said with -v.
        self._times = (0.0, 0.0)

    def run(self) -> str:
        """Populate and commit; return the owner's lease.  On failure leave the error record
        for the waiters, remove the work directory, and raise."""
        from ..loaders.words import shown_words

        request, base, name = self.request, self.base, self.request.name
        self.recipe = request.recipe  # parsed before the base was chosen, or now: before anything is written
        if request.fetch.offline and any(source.network for source in self.recipe.sources):
            # Offline, the sources that need no network (local mirrors, listed first) still do.
            local = tuple(source for source in self.recipe.sources if not source.network)
            if not local:
                raise DownloadError(f"offline: repository {name!r} is not here, and "
                                    f"{self.recipe.sources[0].describe()} needs the network")
            self.recipe.sources = local
        self.reporter.info(f"populating {name!r} in {base.path} from {shown_words(request.words)}")
        try:
            return self._run()
        finally:
            self._heed_interrupts(committed=True)  # (or failed after the commit, which its caller undoes)

    def _run(self) -> str:
        request, base, cache = self.request, self.base, self.base.cache()
        name, owner = request.name, request.owner
        with _ending_cleanly():
            try:
                while True:
                    try:
                        self._attempt()
                        break
                    except NoSpaceError as e:
                        # The file system is full: the space kept repositories hold is given back,
                        # as much as the next try needs (each try evicts, so the tries end).
                        freed = 0 if isinstance(e, SizeLimitError) else self._evict_for_next_try()
                        if not freed:
                            raise
                        self.reporter.info(f"{e}; evicted {format_size(freed)} of kept data, trying again")
            except WaitTimeoutError:
                raise  # our --timeout, not the recipe's failure: the work stays for a takeover
            except (UsageError, ConfigError, CredentialError, ProcessLimitError) as e:
                # Our own settings (a token file, a .netrc, a CA bundle) or limits (ulimit -n, -f),
                # not the recipe's failure: the waiters, who have theirs, are not told it.  What a
                # limit cut short stays for one to take over; a setting fails a request before it
                # is sent, the first one mostly, and is not left a work directory to show for it.
                e.args = (f"repository {name!r}: {e}",)
                if not isinstance(e, ProcessLimitError):
                    cache.discard(self.work)
                raise
            except SharedCacheError as e:
                self._fail_for_waiters(e)
                raise
            except (OSError, RoomTaken):
                raise  # the system's refusal, said as such, or a base to choose again: not the recipe's failure
            except Exception as e:
                if errors.memory_refused(e):
                    raise  # this process's limit, as a ProcessLimitError is
                self._fail_for_waiters(e)
                raise
            finally:
                self._bar.close()
                unlink_if_present(self.status_path)
                self._close_work()
        try:
            unlink_if_present(self.error_path)  # (first: a discard that fails leaves no stale record)
            cache.discard(self.work)
        except (SharedCacheError, OSError):
            pass  # committed, with the owner's use: what is left there is gc's, and fails no use
        lease = cache.lease_of(name, owner)
        if lease is None:  # the commit gave the owner one: the entry was moved away since
            raise SharedCacheError(f"repository {name!r} in {base.path} was moved away as it was committed, "
                                   "with the use it gave: try again")
        entry = cache.info(name)
        if entry.meta != request.identity:  # a direct FsCache user stored the name meanwhile
            cache.release(name, lease=lease)
            raise conflict(name, base.path, entry.meta, request.identity)
        filled, committed = self._times
        # (The commit includes the flush of what is kept, or may be read from another machine.)
        self.reporter.info(f"{name!r} is ready: {format_size(entry.size)} on disk, made in {filled:.2f} s, then "
                           f"committed in {committed:.2f} s")
        return lease

    def _fail_for_waiters(self, e: Exception) -> None:
        """Step 4's failure: write the error record of ``e`` for the waiters, then discard the work
        directory, unless the download failed (an outage longer than its retries) leaving a
        partial download there: the next use goes on from it, as after a ``--timeout``, checking
        it as a takeover does (its validator, its size, its bytes hashed again).  A fault of the
        program's own (an internal error) is recorded too: every waiter would meet it again,
        unpacking the same data to the same end."""
        from ..loaders.pipeline import partial_kept

        request, cache = self.request, self.base.cache()
        if isinstance(e, SharedCacheError):
            e.args = (f"repository {request.name!r}: {e}",)
            message = str(e)
        else:  # (the populator's own line stays sc's "internal error", with its details on -v)
            message = f"repository {request.name!r}: internal error of its population ({type(e).__name__}: {e})"
        record = {"time": time.time(), "message": shown_to_others(message), "error": type(e).__name__,
                  "identity": request.identity, **view()}
        if isinstance(e, SizeLimitError) and request.limit is not None:
            record["limit"] = request.limit  # our --size: a waiter asking for more takes over
        try:  # (before the discard: a populator killed between them has told its waiters)
            write_record(self.error_path, record, cache.modes.file)
        except OSError:
            pass  # no room even for the record: the waiters try for themselves
        # Only a failure of the source keeps the work: bad data (a checksum's mismatch, data past
        # the size) is worth no resuming, and the recipe has thrown its partial away.
        if isinstance(e, DownloadError) and self._work_fd is not None \
                and partial_kept(f"/proc/self/fd/{self._work_fd}"):
            return
        try:
            cache.discard(self.work)
        except (SharedCacheError, OSError):
            pass  # (a trash a member made hers, say: gc's; the failure itself is the news)

    def _evict_for_next_try(self) -> int:
        """After a try met a full file system: evict the least recently used repositories that
        nobody uses, for the room the next try needs; return the bytes freed (0: none evicted).
        The need is known from the data's total (a download's Content-Length; for an archive, the
        least its content takes) or from ``--size``, less the free space and the room a partial
        download takes (which the next try goes on from, or frees): then nothing is evicted unless
        the unused repositories make it up, which otherwise would be lost for a population that
        fails all the same.  Unknown (no total, no size), it is twice what the try wrote: each
        try reaches at least twice as far, and they end once the data fits or nothing is left to
        evict."""
        from ..loaders.pipeline import keeps_partial, partial_room

        limit, total = self.request.limit, self._total
        needed = total if total is not None and (limit is None or keeps_partial(self.recipe)) else limit
        taken = 0 if self._work_fd is None else partial_room(f"/proc/self/fd/{self._work_fd}")
        lacking = (2 * self._done if needed is None else needed) + ROOM_MARGIN - self.base.free_space() - taken
        return self.base.evict(max(lacking, 1), only_if_enough=needed is not None)

    def _attempt(self) -> None:
        """One try: the status record, the work directory, the store; whichever of their writes
        meets a full file system first raises :class:`NoSpaceError`."""
        try:
            if self.request.limit is None or not self.request.chosen:
                self._write_status()
            else:
                self._reserve(self.request.limit)
            self._prepare_work()
            self._store()
        except OSError as e:
            errors.raise_if_over_limit(e)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            path = self.base.path
            raise NoSpaceError(f"no space left on the device of {path}{errors.why_full(e.errno, path)}") from None

    def _write_status(self) -> None:
        """Write the status record; a directory at its name (another member's, planted: gc puts
        such a one away) is put away first, as one at the work directory's is."""
        cache = self.base.cache()
        try:
            write_record(self.status_path, self.status, cache.modes.file)
        except IsADirectoryError:
            cache.discard(self.status_path)
            write_record(self.status_path, self.status, cache.modes.file)

    def _reserve(self, size: int) -> None:
        """Under the base's reservations lock, check that the reservations made before leave
        ``size`` of room (evicting unused repositories for it: :meth:`Base.room`), then write the
        status record, which reserves it.  Two
        uses that chose the base at the same moment saw the same room and took it both, and both
        failed when it ran out where another base had room: the later one gives the base up
        (:class:`RoomTaken`), and its choice is made again."""
        with self.base.reservations_held():
            free = self.base.room(size, self.base.reserved(besides=self.request.name))
            if free < size:
                raise RoomTaken(f"{format_size(max(free, 0))} free once the populations under way have "
                                "what they reserved")
            self._write_status()

    def _store(self) -> None:
        request = self.request
        cache = self.base.cache()
        self._seal = cache.seal()
        say_if_budget_damaged(cache, self.reporter, f"{request.name!r} is committed without a budget")
        started = time.monotonic()
        try:
            with cache.store(request.name, meta=request.identity, keep=request.keep,
                             holder=request.owner, strict_budget=False, seal=self._seal) as data:
                self.fill(data)
                filled = time.monotonic()
                self._ignore_interrupts()
        except BaseException:
            self._heed_interrupts(committed=False)  # a retry downloads again, and may be interrupted
            raise
        finally:
            INTERRUPTS.undoable = False  # (committed: the use is the outcome from now on)
        self._times = (filled - started, time.monotonic() - filled)

    def _ignore_interrupts(self) -> None:
        """Ignore Ctrl-C (SIGINT) from the end of the fill until :meth:`run` returns the lease.

        The data are complete then.  An interrupt during the commit, or after it, would throw the
        download away (and its waiters would make it again), or leave the owner, often the job,
        a use that the command reports as failed.  What is left takes milliseconds, or the
        seconds of a flush.  Where the use's lease is guarded (``use()`` and ``sc --use`` arm
        :data:`~sharedcache.engine.leases.INTERRUPTS` in the main thread), the interrupt is
        deferred to the guard's holder instead, who raises it once its ``try`` holds the use
        (``use()``), or drops it as moot once the path is printed (``sc --use``); so are
        SIGTERM and SIGHUP of the command line (held back from here: see
        :meth:`~sharedcache.engine.leases.InterruptGuard.hold_endings`), which a commit that
        fails lets act at once, on :func:`_ending_cleanly`'s handler, as does the commit's wait
        for a busy index (up to ``--timeout``) before its transaction begins
        (:meth:`~sharedcache.engine.leases.InterruptGuard.let_endings_act`).  Elsewhere only where
        SIGINT raises KeyboardInterrupt (Python's default handler), in the main thread: an
        application's own handler is left alone."""
        if INTERRUPTS.guards_here():
            if not INTERRUPTS.deferring:
                INTERRUPTS.deferring = self._interrupts_deferred = True
                INTERRUPTS.hold_endings()
                INTERRUPTS.undoable = True
            return
        import signal

        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                self._interrupts_ignored = True
        except ValueError:  # not the main thread, where Python runs handlers
            pass

    def _heed_interrupts(self, *, committed: bool) -> None:
        """Undo :meth:`_ignore_interrupts`.  Not ``committed``, an interrupt deferred meanwhile is
        raised: a retry would download again.  Committed, a deferred one stays the guard's."""
        if self._interrupts_ignored:
            import signal

            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._interrupts_ignored = False
        if self._interrupts_deferred and not committed:
            self._interrupts_deferred = False
            INTERRUPTS.stop_deferring()

    def fill(self, data: Path) -> None:
        """Put the repository's data into the empty directory ``data``: run the recipe, in the
        work directory, with the store's seal (the commit's walk then has less or nothing to do)."""
        from ..loaders.pipeline import populate

        request = self.request
        try:
            populate(self.recipe, data, work=f"/proc/self/fd/{self._work_fd}", limit=request.limit,
                     progress=self.progress, fetch=request.fetch, notice=self.reporter.info,
                     deadline=request.deadline, seal=self._seal, warning=self.reporter.warning)
        except WaitTimeoutError as e:
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise self._timed_out(str(e)) from None
            raise

    def progress(self, done: int, total: int | None) -> None:
        """Show how far the population has got, and tell the waiters twice a second; past the
        request's deadline (``--timeout``), give up."""
        _raise_if_ending()
        self._bar(done, total)
        self._done, self._total = done, total
        request = self.request
        if request.deadline is not None and time.monotonic() > request.deadline:
            raise WaitTimeoutError  # said by fill(), which has nothing to add to it
        if time.monotonic() - self._last_write >= 0.5:
            self._last_write = time.monotonic()
            self.status.update(done=done, total=total)
            try:
                self._write_status()
            except OSError as e:
                # Written anew each time (an inode, which another job may have taken while bytes
                # remain), and only advisory: the record written before stays whole for its
                # readers, and the data, which may still fit, is not thrown away for it.
                if not errors.cannot_write_here(e):
                    raise

    def _timed_out(self, cause: str) -> WaitTimeoutError:
        """The deadline's error; ``cause`` is what the recipe was waiting for when it struck
        (empty when it was making progress)."""
        from ..loaders.pipeline import keeps_partial

        request = self.request
        # (What an unpacking or a decompression has done is not kept: the next use starts over.)
        next_use = "takes over from there" if keeps_partial(self.recipe) else "starts over"
        return WaitTimeoutError(
            f"repository {request.name!r}: timed out after {request.timeout:g} s populating it in "
            f"{self.base.path} ({format_size(self._done)} so far; the next use {next_use})"
            + (f": {cause}" if cause else ""))

    def _prepare_work(self) -> None:
        """Keep a dead populator's work for the same recipe; clear any other.

        The work is done in ``<name>.work/<uid>/``: the outer directory is the cache's (in a group
        cache any member may move it away, as gc does), the inner one private to its maker, and
        the recipe works in it through a descriptor, whatever becomes of either name.  Another
        member may rename them and put links in their place, or plant links in the outer one;
        what this process writes (the partial download, its record, a spool) never follows them.
        (So a member does not take over another's partial download: she starts over.)"""
        cache = self.base.cache()
        self._close_work()
        for _attempt in range(_WORK_ATTEMPTS):
            try:
                outer, _made = open_made_directory(self.work, cache.modes.directory)
            except (FileNotFoundError, NotADirectoryError):
                outer = None  # replaced as soon as made
            if outer is not None:
                try:
                    self._work_fd = self._own_work(outer)
                finally:
                    os.close(outer)
                if self._work_fd is not None:
                    return
            try:
                cache.discard(self.work)  # another recipe's work, or what was planted at its name
            except PermissionError:
                pass  # another member's, which she alone may move: the next try says so
        raise CacheError(f"cannot make its work directory in {self.base.path}: something else was put "
                         f"there at once, {_WORK_ATTEMPTS} times over (by another user of the cache)")

    def _own_work(self, outer: int) -> int | None:
        """A descriptor of this user's private directory in the work directory ``outer``: kept if
        it holds the work of the same recipe in this boot of the machine, made if there is none;
        None if something else is there (the whole work directory is then cleared).

        The work is not flushed (a partial download is written back when the kernel sees fit),
        so after a power loss its files may say more than their blocks hold: a partial's size and
        record can survive while the data they count does not.  Hence the marker names the boot
        as well as the recipe, and a work left before a reboot is cleared, however whole it
        looks: no checksum need be there to notice the damage."""
        mine = str(user_id_outside())  # (a rootless container's root is its user: one work directory)
        identity = f"{self.request.identity}\nboot {boot_id()}".encode()
        try:
            fd, made = open_made_directory(mine, 0o700, dir_fd=outer)
        except (FileNotFoundError, NotADirectoryError):
            return None  # something else of that name
        except PermissionError:
            return None  # a work directory another member made, where only she may write
        status = os.fstat(fd)
        if status.st_uid != os.geteuid() or status.st_mode & 0o077:  # not this user's alone
            os.close(fd)
            return None
        if made:
            # Not flushed, like the partial download it names: after a power loss a marker lost or
            # garbled no longer matches either, and the work is cleared.
            try:
                write_atomic(f"/proc/self/fd/{fd}/.identity", identity, mode=0o600, durable=False)
            except BaseException:  # a full disk, say: the caller tries again, or says why
                os.close(fd)
                raise
            return fd
        try:
            kept = read_control(".identity", 1 << 16, dir_fd=fd) == identity
        except OSError:
            kept = False
        if not kept:
            os.close(fd)
            return None
        return fd

    def _close_work(self) -> None:
        if self._work_fd is not None:
            os.close(self._work_fd)
            self._work_fd = None


#: Tries at making a population's work directory and opening it, before giving up.  Another
#: member of a group cache who replaces it in a loop wins the race between the two now and then:
#: the population must still get through, and a file put there for good must still fail it soon.
_WORK_ATTEMPTS = 20
