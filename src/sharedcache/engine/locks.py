"""File locks that the kernel releases when their holder dies.

Every lock in shared-cache is a ``flock(2)`` lock on an open file description.  Such a lock is
released when the last descriptor referring to that description is closed, which includes the
process exiting for any reason, ``SIGKILL`` among them.  That is the whole reason for using them:
a crashed process can never leave a lock behind.  Two consequences shape the code that uses them:

* ``flock`` locks belong to the open file description, not to the process: two ``open()`` calls of
  the same file in one process conflict with each other like two processes would.  Each use of a
  lock therefore opens its own descriptor.
* A lock protects an inode, not a path.  Whoever locks a file that others may rename or unlink
  must, after acquiring the lock, check that the path still names the inode it locked
  (:func:`still_linked`) and start over if it does not.
* ``fork`` without ``exec`` copies every descriptor, and the copy shares the lock (``O_CLOEXEC``
  does nothing there): a child that another thread of a program forks (a worker pool, a
  preforking server) would hold the lock for as long as it lives, even once its parent has died
  holding it.  So every descriptor of a lock file is recorded from its opening
  (:func:`open_lock_file`, or :func:`open_recorded` for a caller that judges what it finds
  itself; never a plain ``os.open``, whose descriptor a fork before the lock would copy
  unrecorded, to share the lock once it is taken), and again as it is locked (:func:`try_lock`
  and :func:`lock` record it before they lock or wait), with the thread that locks it,
  until it is closed through :func:`close` or :func:`release` (never ``os.close``); and a child
  forked by Python (``os.fork``, ``multiprocessing``) gives up its copies as it starts
  (:func:`_give_up_inherited`): every one but the shared locks of the forking thread.  A fork
  waits for an opening (the ``open`` system call and its record, :data:`_recording`) or a close
  (the record's removal and the ``close``) in another thread to be over: between the two steps
  the descriptor is open and unrecorded, and a child forked there would keep its copy, to share
  the lock taken on it next, or to hold it once its parent has died; a fork by the thread in
  such a step (a signal handler's) cannot wait for itself, and its child keeps that one copy.
  Since the child may start after the parent has closed its own descriptor, the parent's close of one
  whose copies a child gives up unlocks it first, unless another child keeps a copy (an unlock
  is the open file description's: it would take that child's lock too).  A child that a thread
  forks while it reads an entry (inside ``load()`` or ``use()``) keeps that read, and holds the
  entry for as long as it keeps the descriptor: it is meant to read the entry too.  A child
  forked by Python also counts the fork as it starts (:data:`fork_generation`), by which, with
  its pid (:func:`process_key`), the package tells what it inherited (its parent's stage, use,
  connections to the index) from what it makes.  A child forked in C, which runs no hook of
  Python's, keeps every copy (:func:`release` unlocks, so that one holds nothing once its parent
  is done), and is told from its parent by its pid alone.

Ctrl-C of a :func:`sharedcache.use` (under ``leases.InterruptGuard``) is held back from the
``open`` system call of a lock file to its record, then raised with the descriptor closed, and
from the entry of :func:`close` or :func:`release` to the ``close``: raised between the two, it
left the descriptor open, out of its caller's reach, for the life of the process.  A caller takes
the descriptor into its ``try`` at once, with no call in between, where the interrupt could come.

``flock`` has no timeout, so a blocking acquisition polls with a non-blocking attempt and a short,
growing sleep; the holders this waits for keep their locks for milliseconds (commits, removals)
or for a download, where the caller reports progress between attempts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from _thread import RLock, get_ident  # threading's, without importing threading

from ..errors import CacheError, WaitTimeoutError
from ..modes import taken
from .fsutil import leased, open_directory, shown_path, temp_beside
from .leases import INTERRUPTS, deferring_from_entry

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable

SHARED = fcntl.LOCK_SH
EXCLUSIVE = fcntl.LOCK_EX


#: How a lock file is opened: read access is enough for ``flock``; never through a link, never
#: waiting (for a FIFO's writer).
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


#: Held by a thread from the ``open`` system call of a lock file to its record, and from the
#: removal of a record to the ``close``, and taken by a fork (its ``before`` hook) so that no fork
#: copies a descriptor in between (see the module's docstring).  Re-entrant: a fork by the thread
#: that holds it (a signal handler's, run between the two steps) cannot wait for itself.
_recording = RLock()


def _open(path: str | os.PathLike[str], flags: int, mode: int = 0o777, *,
          dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open ``path`` with ``flags`` (``mode``: a new file's), recorded before a fork can copy
    it; return the descriptor and its status.  Ctrl-C that comes meanwhile is held back, then
    raised with the descriptor closed: raised as the ``open`` system call returned, it left the
    descriptor open, out of every caller's reach (the caller takes it at once in its ``try``)."""
    deferred = not INTERRUPTS.deferring
    INTERRUPTS.deferring = True
    try:
        with _recording:
            try:
                fd = os.open(path, flags, mode, dir_fd=dir_fd)
            except BlockingIOError:
                # The file's owner (another member of a group cache) holds a lease on it (fcntl
                # F_SETLEASE): refused at once, as no wait here may hold up the forks of other threads.
                raise leased(path, dir_fd=dir_fd) from None
            try:
                status = os.fstat(fd)
                _record(fd, EXCLUSIVE, status)
            except BaseException:
                close(fd)
                raise
    except BaseException:
        if deferred:
            INTERRUPTS.stop_deferring()
        raise
    if deferred:
        try:
            INTERRUPTS.stop_deferring()
        except BaseException:
            close(fd)
            raise
    return fd, status


class Damage(CacheError):
    """What is planted or broken in a cache at a name it needs, which gc repairs: ``damage`` says
    what is there, and the message adds what to do (a caller that knows better says that
    instead)."""

    def __init__(self, damage: str, advice: str) -> None:
        super().__init__(f"{damage}; {advice}")
        self.damage = damage


def open_recorded(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open the existing lock file ``path`` (never through a link), recorded from its opening
    (see the module's docstring), for a caller that judges what it finds there itself: raises
    what ``os.open`` raises, and takes whatever is not a link (:func:`open_lock_file` refuses
    all but a regular file)."""
    return _open(path, _OPEN_FLAGS, dir_fd=dir_fd)[0]


def open_lock_file(
    path: str | os.PathLike[str], *, create: bool = True, mode: int = 0o600, dir_fd: int | None = None
) -> int:
    """Open (and by default create, with exactly ``mode``) a lock file; anything but a regular
    file found at ``path`` (a planted symlink, FIFO, socket or directory), or a file this user may not
    read, is refused with a CacheError, never followed or waited on.

    Read access is enough for ``flock``, so a lock file created by another member of a group
    cache can be used without write permission on it.  For the same reason a private cache's
    lock files are readable by their owner only: nobody else can hold them.
    """
    flags = _OPEN_FLAGS
    # A mode the umask cuts (a group cache's, or the owner's own under umask 0277): the file
    # appears at ``path`` only once it has that mode (made aside, then linked), so that another
    # member never finds it hers alone, nor another process of this user's unreadable.
    aside = create and bool(taken(mode))
    if create and not aside:
        flags |= os.O_CREAT
    while True:
        try:
            fd, st = _open(path, flags, mode & 0o777, dir_fd=dir_fd)
        except FileNotFoundError:
            if not aside:
                raise
            made = _create_aside(path, mode, dir_fd)
            if made is None:
                continue  # another process made it first: open theirs
            fd, st = made
        except PermissionError:
            # Another user's file, not readable by the group (a member's umask): a bare
            # "Permission denied" would name neither the file nor what to do.
            raise Damage(f"{shown_path(path)} is not readable by this user (another user's file?)",
                         "refusing to use it (gc removes it)") from None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # (ENXIO: a UNIX socket)
                raise
            fd = -1
        break
    try:
        if fd < 0 or not stat.S_ISREG(st.st_mode):
            raise Damage(f"{shown_path(path)} is not a regular file (a planted symlink, FIFO, socket or directory?)",
                         "refusing to use it (gc removes it)")
        if create and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode and st.st_size == 0:
            os.fchmod(fd, mode)  # ours, and new: the umask may have dropped bits (never a mere look's)
    except BaseException:
        if fd >= 0:
            close(fd)
        raise
    return fd


def _create_aside(path: str | os.PathLike[str], mode: int, dir_fd: int | None) -> tuple[int, os.stat_result] | None:
    """A descriptor (and its status) of a new lock file at ``path`` that had exactly ``mode``
    before anyone could open it there: made under a temporary name, given ``mode``, then linked
    at ``path``; None if something is at ``path`` already."""
    temp = temp_beside(path)
    fd, st = _open(temp, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777,
                   dir_fd=dir_fd)
    try:
        try:
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
            os.link(temp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass  # removed by gc as a leftover (see fsutil.LEFTOVER_SECONDS), if this one was stopped that long
    except (FileExistsError, FileNotFoundError):  # (the latter: the temporary file removed by gc)
        close(fd)
        return None
    except BaseException:
        close(fd)
        raise
    return fd, st


#: The descriptors of lock files this process has open, from their opening (:func:`open_lock_file`,
#: :func:`open_recorded`) or locking (:func:`try_lock`, :func:`lock`) to their close (:func:`close`): the thread that
#: locked each (or waits for it, or opened it), whether it may be held exclusively (so recorded
#: until a shared lock is taken on it), and the file's device and inode (see the module's
#: docstring).
_held: dict[int, tuple[int, bool, int, int]] = {}
#: Those of them whose copies a child forked since gives up: this process's close unlocks them
#: (see :func:`close`), unless a child keeps a copy too (:data:`_kept`).
_given_up: set[int] = set()
#: Those whose copies a child forked since keeps (the forking thread's shared locks): an unlock,
#: which is the open file description's, would take its lock from that child too.
_kept: set[int] = set()


def _record(fd: int, mode: int, status: os.stat_result | None = None) -> None:
    """Record ``fd`` in :data:`_held`, as this thread's, locked (or to be) in ``mode``."""
    known = _held.get(fd)
    if status is not None or known is None:
        status = status or os.fstat(fd)
        device, inode = status.st_dev, status.st_ino
    else:
        _, _, device, inode = known  # (recorded from its opening: one fstat is enough)
    _held[fd] = (get_ident(), mode == EXCLUSIVE, device, inode)


def try_lock(fd: int, mode: int) -> bool:
    """Take the lock ``mode`` (SHARED or EXCLUSIVE) on ``fd`` if it is free now; return whether taken."""
    before = _held.get(fd)
    _record(fd, mode)  # (before the lock: a fork that comes as it is taken copies it recorded)
    if _flock_now(fd, mode):
        return True
    _restore(fd, before)
    return False


def held_in_this_thread(fd: int) -> bool:
    """Whether this thread holds the lock of the file ``fd`` is open on, through another of its
    descriptors: a wait on ``fd`` would then wait for itself (a signal handler's, run in the
    thread whose lock it interrupted, which holds it until the handler returns).  The kernel
    says which open file description holds a flock (``/proc/self/fdinfo``): a descriptor
    recorded as about to take the lock, or as waiting for it, holds nothing."""
    status = os.fstat(fd)
    thread = get_ident()
    return any(other != fd and (owner, device, inode) == (thread, status.st_dev, status.st_ino)
               and _holds_a_flock(other, status) for other, (owner, _, device, inode) in list(_held.items()))


def _holds_a_flock(fd: int, status: os.stat_result) -> bool:
    """Whether ``fd``, open on the file of ``status``, holds a flock on it."""
    try:
        if not os.path.samestat(os.fstat(fd), status):  # (a number closed unrecorded, and reused)
            return False
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            return b" FLOCK " in info.read()
    except OSError:
        return False  # (no /proc to ask: the caller waits, as for another holder)


def _flock_now(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _restore(fd: int, record: tuple[int, bool, int, int] | None) -> None:
    """Put back the record of ``fd`` as it was before a lock that was not taken (None: none)."""
    if record is None:
        _held.pop(fd, None)
    else:
        _held[fd] = record


def _inherited() -> list[int]:
    """The locked descriptors that a child forked by this thread now may not hold: every
    exclusive one, and the shared ones of other threads."""
    forking = get_ident()
    # (A copy, taken at once: the other threads run again as the parent's hook runs.)
    return [fd for fd, (thread, exclusive, _, _) in list(_held.items()) if exclusive or thread != forking]


def _after_fork_in_parent() -> None:
    try:
        _note_given_up()
    finally:
        _recording.release()


#: How many forks this process is from the one that loaded this module: a child of fork counts
#: one more than its parent.  What a process remembers with the count it had then is its own
#: while the count stays the same, and its parent's once it differs: so the package tells a child
#: of fork from the process that forked it (whose stage, use and connections to the index it must
#: leave alone).  Not by the pid: a child forked as PID 1 of a new PID namespace has the pid of a
#: parent that is PID 1 of its own (a container's entrypoint).
fork_generation = 0


def process_key() -> tuple[int, int]:
    """What tells this process from the one it was forked from and from those it forks: its
    :data:`fork_generation` and its pid.  The count tells a child that Python forked, whose pid
    may be its parent's (both PID 1, of two PID namespaces); the pid tells one forked in C,
    which runs no hook of Python's and keeps its parent's count (the workers of uWSGI, unless
    ``--py-call-osafterfork``: by the count alone, one released its master's use, and committed
    a stage its parent was still filling)."""
    return fork_generation, os.getpid()


def _after_fork_in_child() -> None:
    global fork_generation  # noqa: PLW0603 - the process's count (see there)
    try:
        fork_generation += 1
        _give_up_inherited()
    finally:
        _recording.release()


def _note_given_up() -> None:
    # The child gives its copies up as it starts, which may be after this process closes its
    # own: the close then unlocks, so that no copy holds the lock meanwhile; but not the copies
    # it keeps, whose lock is its own as well.
    held = set(_held)
    given_up = _inherited()
    _given_up.update(given_up)
    _kept.update(held - set(given_up))


def _give_up_inherited() -> None:
    """In a forked child: give up the copies of the locks it may not hold (see the module's
    docstring).  Each is replaced by a descriptor of ``/dev/null`` rather than closed, so that
    its number is not reused: the forking thread goes on in the child, and its code closes the
    descriptors it locked as it leaves them (a child that a store's block forks, and that
    unwinds it), which must not close what the child opened meanwhile."""
    inherited = _inherited()
    _given_up.clear()  # (the copies it keeps are its parent's locks too: never unlocked by it)
    _kept.clear()
    if not inherited:
        return
    try:
        stand_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        stand_in = -1  # (no /dev/null in this container: closed, then)
    for fd in inherited:
        _, _, device, inode = _held.pop(fd)
        try:
            # (A descriptor closed without close() would leave its record, and its number may
            # be another file's now: that one is the child's to keep.)
            status = os.fstat(fd)
            if (status.st_dev, status.st_ino) != (device, inode):
                continue
            if stand_in >= 0:
                os.dup2(stand_in, fd)
            else:
                os.close(fd)
        except OSError:
            pass  # (closed already: nothing is held through it)
    if stand_in >= 0:
        os.close(stand_in)


# (At import, not once a lock is first recorded: a thread that registered them while another
# forked could have that fork run the hooks after it and not the one before it.)
os.register_at_fork(before=_recording.acquire, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def lock(
    fd: int,
    mode: int,
    *,
    timeout: float | None = None,
    what: str = "lock",
    waiting: Callable[[float], None] | None = None,
) -> None:
    """Take the lock ``mode`` on ``fd``, waiting at most ``timeout`` seconds (None: forever).

    ``waiting(elapsed)`` is called between attempts so a caller can report whom it waits for.
    Raises :class:`WaitTimeoutError` naming ``what`` when the time is up, and
    :class:`WaitForItselfError` at once if this thread holds the lock through another descriptor
    (:func:`held_in_this_thread`): a signal handler's wait for the step it interrupted.
    """
    before = _held.get(fd)
    _record(fd, mode)  # (for the whole wait: a fork while it waits copies it recorded)
    if _flock_now(fd, mode):
        return
    start = time.monotonic()
    delay = 0.001
    try:
        if held_in_this_thread(fd):
            from ..errors import WaitForItselfError  # (made on first use: a ready use never meets it)

            raise WaitForItselfError(f"{what} is held by this very thread, in the step that a signal handler "
                                     "interrupted: the handler would wait for itself; try again once that step is over")
        while True:
            elapsed = time.monotonic() - start
            if timeout is not None and elapsed >= timeout:
                raise WaitTimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            if waiting is not None:
                waiting(elapsed)
            time.sleep(delay if timeout is None else max(0.0, min(delay, timeout - elapsed)))
            delay = min(delay * 2, 0.05)
            if _flock_now(fd, mode):
                return
    except BaseException:
        _restore(fd, before)
        raise


@deferring_from_entry
def release(fd: int) -> None:
    """Release the lock held on ``fd`` (if any), then close it.  A close alone releases a flock
    only once every copy of the open file description is closed: a child forked meanwhile
    (without exec) in a way that runs no hook of Python's (by a C library) holds a copy, and
    would hold the lock for as long as it lives."""
    _close(fd, unlock=True)


@deferring_from_entry
def close(fd: int) -> None:
    """Close ``fd``, a descriptor that may have been locked: the lock goes with it (once no
    copy is left, or at once if a child forked meanwhile gives its copy up, or if it may be
    held exclusively), and so does the record of it (see the module's docstring).  An exclusive
    lock goes before its record: a signal handler run in between, in this thread, would not know
    the lock for its thread's (:func:`held_in_this_thread`), and would wait for it."""
    record = _held.get(fd)
    may_be_exclusive = record is not None and record[1]
    # (Not what a child keeps: it holds the lock through its copy, as it should.)
    _close(fd, unlock=(fd in _given_up or may_be_exclusive) and fd not in _kept)


@deferring_from_entry
def _close(fd: int, *, unlock: bool) -> None:
    """Close ``fd``, unlocking it first if ``unlock``, with Ctrl-C held back from the entry of
    :func:`close` or :func:`release` to the close (a caller's ``finally`` calls them), then raised."""
    deferred = not INTERRUPTS.deferring
    INTERRUPTS.deferring = True
    try:
        with _recording:
            try:
                if unlock:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                hand_over(fd)  # (its records go)
                os.close(fd)
    finally:
        if deferred:
            INTERRUPTS.stop_deferring()


def hand_over(fd: int) -> None:
    """Forget the lock on ``fd``, which a copy of it (``os.dup``) goes on holding for the caller
    once ``fd`` is closed: a child forked then inherits that copy, and holds the lock with it."""
    _held.pop(fd, None)
    _given_up.discard(fd)
    _kept.discard(fd)


def still_linked(fd: int, path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (it was not renamed or replaced)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def locks_work(directory: str | os.PathLike[str], existing: str | None = None) -> bool:
    """Whether ``flock`` really excludes on the file system of ``directory``.

    Some network file systems accept lock calls and lock nothing.  Two descriptions of one file
    are opened here: if the second can take an exclusive lock while the first holds one, locking
    does not work there.  The file is a new one, or on a file system with no inode left for it,
    the file ``existing`` in ``directory`` if given (one that nobody else locks).
    """
    at = open_directory(directory)  # not through a symlink at its name, as a group cache's creator may put
    try:
        name = temp_beside("lockprobe")  # a leftover's name, for gc, if this process is killed here
        made: str | None = name
        try:
            first = open_lock_file(name, dir_fd=at)
        except OSError as e:
            if existing is None or e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            name, made = existing, None
            first = open_lock_file(name, create=False, dir_fd=at)
        try:
            second = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
            try:
                if made is None and not try_lock(first, EXCLUSIVE):
                    # ``existing`` is locked by another (a member of a group cache may hold it for
                    # as long as it likes): waiting would be for good, and its lock that kept this
                    # one out is the exclusion asked about.
                    return True
                fcntl.flock(first, fcntl.LOCK_EX)
                return not try_lock(second, EXCLUSIVE)
            finally:
                close(second)
        finally:
            close(first)
            if made:
                os.unlink(made, dir_fd=at)
    finally:
        os.close(at)
