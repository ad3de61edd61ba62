"""The writer processes: the files of an archive made by child processes while this one reads on.

An unpack of many small files is bound by one core.  Parsing a header and making a file (``open``,
``write``, ``futimens``, ``close``) are both interpreter work, and a thread cannot share it out:
the second thread would wait for the interpreter lock after every system call.  So past
:data:`SERIAL_MEMBERS` members, the unpacking of a tar or zip archive
(:mod:`sharedcache.loaders.archives`) forks.  The children go on with the
:class:`~sharedcache.loaders.archives.SafeTree` as fork copied it: every rule, and all its state
(the directories made and their descriptors, the links to check at the end, the entry count, the
bytes charged to the size limit).  The parent reads, decompresses and parses, and sends each
member down a pipe.  Small archives never fork: for them the fork would cost more
than it saves.  Nor do archives whose first files are larger than a few KiB on average
(:func:`worth_forking`), as software trees' are: the children save the parent the system calls of
each file, but cost it a copy of every byte (into the shared ring, or through a pipe), and on two
cores they take its CPU.
Nor does a process that may use only one CPU (:func:`available`): there the
processes would only take turns.

There are two children (:data:`WRITERS`), because on a disk the kernel's work of making each file
is itself more than one core can do at the pace of the parsing.  The *authority* executes every
member but some plain files, with every rule of the tree, and finishes it.  The *helper* makes
only plain files, in directories the authority has made: its tree :meth:`adopts
<sharedcache.loaders.archives.SafeTree.adopt>` them.  If the helper cannot be made, the authority
makes everything; if the authority cannot, this process does.

The protocol:

1. Parent to child, on each child's command pipe: a frame per member, in archive order.  A frame
   is a fixed header (:data:`_FRAME`: operation, sizes of the name and of the link target, mode,
   time in seconds and nanoseconds, data size, the member's number, and how many frames of the
   other child must be done before this one, and where a file's data is in the child's ring), the
   name and the target in UTF-8 (other bytes kept as surrogate escapes), then a file's data,
   unless the ring holds it.  A full pipe makes the parent wait: memory stays a pipe's and a
   ring's worth per child.

   The *ring* is memory shared with the child before the fork (:data:`_RING` bytes), for the data
   of small files (:data:`_RING_FILE` bytes or fewer), which then crosses no pipe: the bytes are
   copied once, from the parent's buffer, rather than into a pipe and out of it.  The parent puts
   a file's data at the ring's next place (at its start again rather than across its end), and
   only then the frame that names the place in the pipe.  After it has made the file, the child
   publishes where that data ended, in the shared memory beside its count of frames: the parent
   puts nothing over data it has not seen so published.  A ring without room for a file sends its
   data through the pipe after its frame, as for a larger file: the parent never waits for room.
2. Which child makes a plain file: the helper, if the directory it goes in was made by a frame
   sent to the authority before, the name is not that of such a directory nor of a hard link or
   its target nor of a file made of a member that stands for none (a replaceable one, which only
   the authority makes), and a hash of its last component falls on the helper; else the
   authority.  (A replaced file's blocks leave the tree's count only with its last link, and a
   directory may replace a replaceable file only until another member has: so every change to
   a name that a hard link shares, or that a replaceable file had, is made by one process, in
   archive order.)  The same name in the same directory
   always falls on the same child, so two files of one name are made in archive order.  With a
   helper, the parent counts every member and every directory it implies against the cap on
   entries, and charges every file's size to the size limit, in archive order and before any of
   it is sent, as the tree would (its own copy of the tree does it); the children count and charge
   again what they make, a part of the whole that never reaches a limit first.  (One difference
   remains, at the cap alone: a member whose directories take the count past it is refused for
   that, where one process might first have refused it for a file in the way of one of them.)
3. Every other member goes to the authority, and so does what it implies: the directories of its
   path.  The parent keeps the authority's directories as a tree of ids (as the tree itself
   does, starting from those made before the fork), and for each directory two counts: the
   authority's frames that must be done before the helper makes a file in it (the frame that made
   it, and every later one that made, replaced or read an entry there whose name falls on the
   helper), and the helper's frames sent with a file in it.  A frame waits for the other child's
   count that it needs:

   * a helper frame, for the authority's first count of its directory: the directory exists, and
     nothing of the same name that came before is still to be made;
   * an authority frame that makes, replaces or reads (a hard link's target) an entry whose name
     falls on the helper, for the helper's second count of that directory: a file of that name
     sent before is made.

   Every other pair of frames touches different names, in directories that are never replaced
   (the tree refuses to replace a directory), so the children's work commutes.  Each child
   publishes how many frames it has done in a few bytes of memory shared before the fork; a child
   waiting for the other polls them, and stops if the other has exited short of the count it
   needs (it holds the read end of a pipe whose only writer is the other child).
4. No wait can close a circle: a frame waits only for frames of earlier members.  The parent
   writes a frame that waits only once what it waits for is in the other child's pipe (it first
   writes out what it holds for the other), so a child never waits for a frame still in the
   parent, and the parent's wait on one full pipe ends as both children drain theirs.
5. :data:`FINISH`: the helper answers with the bytes it counted, if measuring; the authority,
   once the helper's frames are all done, checks where the links lead and sets the directories'
   modes.  The parent adds the two counts.
6. Child to parent, on its result pipe, once: the pickled outcome (finished, with what it
   measured; stopped, when its command pipe ended without FINISH or the other child ended short;
   or the exception that stopped it, with the member's number).  Then it exits.
7. A failure is reported as one process would report it: the first in archive order.  When the
   parent fails (a corrupt header, a refused name, an interrupt), it closes the command pipes and
   waits for the outcomes: the children execute what they were sent, which came before the
   failure.  The children's first failure by member number (each member goes to one child) is
   then raised in place of the parent's; else the parent's stands.  When a child fails first, the
   parent's next write to it finds the pipe closed, and the same choice is made.
8. If the parent dies, each child reads the end of its command pipe (or finds the other gone) and
   exits, without finishing.  A child that is stopped reads nothing: the kernel kills it as its
   parent ends (``PR_SET_PDEATHSIG``, set by the child as it starts; one whose parent ended
   before that exits at once), else it would stay stopped for good, holding the staging tree's
   directories and its memory.
9. No wait of the parent on a child lasts for good: a writer may be stopped (``kill -STOP``, a
   debugger) while the parent runs on.  The parent's ends of the pipes do not block: a write to
   a full pipe, or a read of an answer not yet there, returns at once, and only then does the
   parent wait, in ``poll``, until the population's deadline (``--timeout``); past it, the unpack
   fails with :class:`~sharedcache.errors.WaitTimeoutError`, naming the writer that did not
   answer (a stopped one if any, saying so).  A writer found stopped once the parent has waited
   :data:`_TELL_STOPPED` seconds is named in a warning, once while it stays stopped, and left
   stopped: whoever stopped it (the user, a debugger) continues it, and the unpack goes on.
   Once the parent gives up (step 7), it kills the writers at once after an interrupt, a job's
   signal or the deadline (what they were sent is of no use then); after a failure, a writer
   that is stopped at once, and every writer once they have done no frame for :data:`_GRACE`
   seconds; then it reaps them: a writer killed so reports nothing, and the parent's failure
   stands.  A signal that comes as a child is forked loses no child (:meth:`WriterProcess.start`).

The children hold no more than they need: each closes every descriptor but its two pipes, the
other's end of the liveness pipe and the tree's directories at once (the parent's locks,
connections and index are not kept alive by it), restores the default action of the signals the
parent handles in Python, loads no module (the ones they need are loaded before the fork), never
logs or prints, and leaves with ``os._exit``.

The parent forks with other threads running (the source's reader, the checksums, the
decompression, which also calls the progress callback that writes to stderr), and a lock that
one of them held at that moment stays held in the child for good: a stream's, a queue's,
logging's, a library's (zlib, zstd, OpenSSL, a hash object's).  So a child touches nothing those
threads may hold.  It runs only this module's code and the tree's, on objects of its own (its
pipes and buffer, the tree's descriptors and records), and reports a failure only on its result
pipe; the one call into libc it makes itself (``prctl``, step 8) is looked up before the fork and
takes no lock.  It is forked with the collector off and every signal blocked (:func:`_fork`), so that no
finalizer of the parent's garbage and no handler of the parent's signals runs in it, and it has
no ``sys.stdout`` or ``sys.stderr``: what would print there (a warning, an exception nothing
catches) is dropped.  ``os._exit`` runs no exit handler and flushes no buffer of the parent's.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from ..errors import LoaderError, UnsafeArchiveError, WaitTimeoutError
from .streams import CHUNK, Buffered

if TYPE_CHECKING:
    import mmap

    from .archives import SafeTree

# Enough members to tell small files from a software tree's, and no more: each one before the fork
# costs an archive of small files half as much again as one after it (docs/performance.md, "The
# writers forked after 512 members").
#: Members unpacked in this process before the rest is handed to writer processes...
SERIAL_MEMBERS = 512
#: ...if their files held at most this many bytes each, on average (see worth_forking).
SMALL_FILE_BYTES = 8 << 10
#: Writer processes: the authority alone (1), or with a helper (2).
WRITERS = 2

FILE, DIRECTORY, SYMLINK, HARDLINK, FINISH, REPLACEABLE_FILE = range(1, 7)
# operation, name bytes, target bytes, mode, mtime (seconds, nanoseconds), data bytes, the member's
# number, the other child's frames to be done first, where the data starts in the ring (counted
# from the ring's first use, -1 for data in the pipe)
_FRAME = struct.Struct("<BIIqqIqqqq")
_AUTHORITY, _HELPER = 0, 1         # each child's slot in the shared counts
_DONE = struct.Struct("<q")        # in the shared memory: a child's count of frames done...
_RING_SEEN = 2                     # ...and after both counts, where the ring's data it has made ends
_RING = 2 << 20                    # bytes of each child's ring (see the protocol's step 1)...
_RING_FILE = 64 << 10              # ...for files of at most this many bytes
_FORKING = threading.Lock()        # held across a fork (see _fork)
_POLL = 0.0002                     # seconds between two looks at the other child's count
_PIPE_SIZE = 1 << 20               # asked of the kernel for the command pipes (its default is 64 KiB)
_BATCH = 256 << 10                 # bytes gathered before a write to a pipe...
_MAX_PENDING = 512                 # ...or pieces (well below IOV_MAX, 1024)
_FINISHED, _STOPPED, _FAILED = "finished", "stopped", "failed"
# Once this process has given up (a failure, a signal, the deadline), how long the writers may go
# without doing a frame before they are killed: they are given the time to execute what they were
# sent (their failure may be the one to report), not for ever.
_GRACE = 2.0
# How long this process waits on its writers before it looks for a stopped one, to say so: a
# wait on a writer that runs lasts milliseconds.
_TELL_STOPPED = 5.0
# What a child answers: how it ended, the failure that ended it, what it measured, and the
# number of the member it was at.
_Outcome = tuple[str, BaseException | None, int | None, int]
_PR_SET_PDEATHSIG = 1              # prctl's option (linux/prctl.h)
_UNNUMBERED = 1 << 63              # the member of a failure no child reported (a child killed)
# A pax header can say any number.  A time whose seconds a frame cannot hold, no clock holds
# either (time_t has 64 bits): it is sent as _NO_TIME, and the child gives the tree a time that
# fails to be set as it would have (so the file keeps its creation time, as in one process).
# The modes of tar headers always fit.
_LARGEST = (1 << 63) - 1
_NO_TIME = -(1 << 63)
_UNSETTABLE_TIME = 10**30


def available() -> bool:
    """Whether writer processes can run here (fork, and /proc to find descriptors), and would
    help: this process may use more than one CPU.  On one, the processes would only take turns,
    and copy every byte through pipes besides: under ``taskset -c 0``, W10's 50,000 files took
    0.84 s in one process, 1.02 s with one writer and 1.10 s with two."""
    return _can_fork() and usable_cpus() >= 2


def worth_forking(tree: SafeTree) -> bool:
    """Whether the files ``tree`` made so far were small enough for writer processes to pay: at
    most :data:`SMALL_FILE_BYTES` each, on average.

    The writers save the parent the system calls of each file (``open``, ``write``, ``futimens``,
    ``close``), but cost it, and the machine, every byte once more (into a pipe and out of it, when
    this was measured; into the ring now, for small files).
    What they save grows with the files, what they cost with the bytes; on two cores, where they
    take the CPU that the parent, which sets the pace, needs, they pay for small files only.
    Measured into tmpfs on real trees (docs/performance.md, "Writer processes for small files
    only"), with writers against one process, with the first 4,096 members' bytes per file: W10's
    50,000 files (4.5 KiB) 0.83x, man pages (1.9 KiB) 0.85-0.91x; a virtual environment (16 KiB)
    1.2-1.3x, a Python installation's ``lib`` (18 KiB) 1.2x, ``/usr/include`` (19 KiB) 0.95-1.15x,
    51,398 members of ``site-packages`` (19 KiB) 1.4-1.5x.  On the disk the runs spread too widely
    to tell either way; the writers' CPU is spent everywhere.  (Links count as files of no
    bytes.)"""
    return tree.file_bytes() <= SMALL_FILE_BYTES * (tree.entries - len(tree.directories()))


def _can_fork() -> bool:
    return sys.platform == "linux" and hasattr(os, "fork") and os.path.isdir("/proc/self/fd")


def describe() -> str:
    """How this process would unpack a large archive, for ``sc --version -v``."""
    if not _can_fork():
        return "one process (no fork, or no /proc to find descriptors)"
    cpus = usable_cpus()
    if cpus < 2:
        return f"one process ({cpus:g} usable CPU{'' if cpus == 1 else 's'})"
    return (f"{WRITERS} writer processes past {SERIAL_MEMBERS:,} members, if their files hold "
            f"{SMALL_FILE_BYTES // 1024} KiB or less on average ({cpus:g} usable CPUs)")


def usable_cpus() -> float:
    """How many CPUs this process can use: those its affinity allows (``taskset``, a batch
    system's cpuset), or fewer if a control group's CPU quota allows fewer (a container's
    ``--cpus``)."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # a system without affinities (macOS has no such call)
        cpus = os.cpu_count() or 1
    return min(cpus, _cgroup_quota())


def _cgroup_quota() -> float:
    """The smallest CPU quota, in CPUs, of this process's control group and the groups above it:
    cgroup v2's ``cpu.max``, v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; infinite if
    there is none, or none can be read."""
    from ..mounts import mounts

    quota = math.inf
    try:
        with open("/proc/self/cgroup") as listing:
            groups = [line.rstrip("\n").split(":", 2) for line in listing]
    except OSError:
        return quota
    for _, root, mountpoint, kind, options in mounts():
        if kind == "cgroup2":
            path = next((path for hierarchy, _, path in groups if hierarchy == "0"), None)
        elif kind == "cgroup" and "cpu" in options.split(","):
            path = next((path for _, controllers, path in groups if "cpu" in controllers.split(",")), None)
        else:
            continue
        if path is None or not (root == "/" or path == root or path.startswith(root + "/")):
            continue  # a group this mount does not show
        directory = os.path.normpath(mountpoint + "/" + path[len(root.rstrip("/")):])
        while True:
            quota = min(quota, _quota_of(directory, v2=kind == "cgroup2"))
            if len(directory) <= len(mountpoint):
                break
            directory = os.path.dirname(directory)
    return quota


def _quota_of(directory: str, *, v2: bool) -> float:
    """The CPU quota, in CPUs, that the control group ``directory`` sets (infinite if none)."""
    try:
        if v2:
            with open(os.path.join(directory, "cpu.max")) as limit:
                quota, period = limit.read().split()
        else:
            with open(os.path.join(directory, "cpu.cfs_quota_us")) as limit:
                quota = limit.read().strip()
            with open(os.path.join(directory, "cpu.cfs_period_us")) as limit:
                period = limit.read().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return math.inf
        return int(quota) / int(period)
    except (OSError, ValueError):
        return math.inf


class _Stopped(Exception):
    """The command pipe ended within a frame (the parent stopped sending), or the other child
    ended before doing what a frame waits for."""


class _Child:
    """The parent's side of one writer process: its pipes, what is gathered for it, its answer."""

    def __init__(self, slot: int, commands: int, results: int) -> None:
        self.slot = slot
        self.commands, self.results = commands, results  # -1 once closed
        self.pid = 0
        self.pending: list[bytes | memoryview] = []
        self.pending_bytes = 0
        self.sent = 0  # frames sent but FINISH: the count the child publishes once it has done them
        self.written = 0  # of those, the frames written to the pipe (the rest are pending)
        self.outcome: _Outcome | None = None
        self.answer: list[bytes] = []  # what the child has answered so far (see WriterProcess._stop)
        self.status: int | None = None  # its exit status, once waited for
        self.killed = False  # by this process, which gave up waiting for it
        self.placed = 0  # where the next data goes in its ring, counted from the ring's first use
        self.unsent = 0  # bytes put in its ring since its frames were last written


def _pipe_pair() -> tuple[tuple[int, int], tuple[int, int]]:
    """A command pipe and a result pipe: ((read, write), (read, write)); nothing left open on OSError."""
    commands = os.pipe()
    try:
        return commands, os.pipe()
    except OSError:
        for descriptor in commands:
            os.close(descriptor)
        raise


class WriterProcess:
    """The parent's side: a stand-in for the tree that the tar loop calls, with its methods, once
    :meth:`start` has forked the children.  OSError if no child can be made (no process or memory
    left): one process will do."""

    def __init__(self, tree: SafeTree, what: str, deadline: float | None = None,
                 warning: Callable[[str], None] | None = None) -> None:
        self._tree = tree  # this process's copy, from now on used only for names, messages and charges
        self._what = what
        self._deadline = deadline  # (a time.monotonic(): the population's, see _await)
        self._warning = warning  # told of a writer that holds the unpack stopped
        # Once abandoning: when the writers were last seen doing frames, and the frames they had done.
        self._quiet: tuple[float, int] | None = None
        self._number = 0  # the current member's
        # The authority's directories as the parent sees them, from those the tree has made so
        # far (counted already), as in the tree: (parent's id, name) -> id, the root being 0; by
        # id, the two counts of the protocol's step 3.
        self._dirs = tree.directories()
        self._ready = [0] * (len(self._dirs) + 1)
        self._helper_sent = [0] * (len(self._dirs) + 1)
        self._last_parent: tuple[tuple[str, ...], int] = ((), 0)
        self._authority_only = tree.linked() | tree.replaceable()  # names the helper never makes a file of (step 2)
        # Loaded here, before the fork, so that the children load no module (nor does an unpack
        # that never forks: these cost a few milliseconds).
        import mmap
        import pickle  # noqa: F401
        import select  # noqa: F401
        import signal  # noqa: F401

        self._end_with_parent = _parent_death_signal()
        self._shared = mmap.mmap(-1, 4 * _DONE.size)
        self._rings = [mmap.mmap(-1, _RING) for _ in range(WRITERS)]
        self._children: list[_Child] = []  # those forked, the authority first

    def start(self) -> None:
        """Fork the children; OSError if not even the authority can be made.  A signal's exception
        may cut in: :meth:`abandon` stops the children forked by then."""
        before = _children_of_this_thread()
        try:
            self._fork(self._tree)
        except BaseException:
            # Another thread can take the signal while this one has it blocked (see _fork), and
            # its exception then comes between a fork and the child's record: that child is one
            # this thread has now and had not before.
            recorded = {child.pid for child in self._children}
            for pid in _children_of_this_thread() - before - recorded:
                import signal

                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            raise
        self._authority = self._children[0]
        self._helper = self._children[1] if len(self._children) > 1 else None

    def _fork(self, tree: SafeTree) -> None:
        """Fork the children into ``self._children``, the authority first."""
        (command_read, command_write), (result_read, result_write) = _pipe_pair()
        children = [_Child(_AUTHORITY, command_write, result_read)]
        ends = [(command_read, result_write)]
        lives: list[tuple[int, int]] = []  # each child's liveness pipe: (read end, write end)
        try:
            if WRITERS > 1:
                (command_read, command_write), (result_read, result_write) = _pipe_pair()
                children.append(_Child(_HELPER, command_write, result_read))
                ends.append((command_read, result_write))
                lives.append(os.pipe())
                lives.append(os.pipe())
        except OSError:  # out of descriptors: the authority alone
            for read_end, write_end in lives:
                os.close(read_end)
                os.close(write_end)
            lives = []
            if len(children) > 1:
                self._close(children.pop(), *ends.pop())
        import fcntl

        for child in children:
            with contextlib.suppress(OSError):
                # Above the system's limit for this user, the default size works, with more switches.
                fcntl.fcntl(child.commands, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            # A write that would wait and a read that would wait return at once, and only then
            # does this process wait, bounded (see _await): a writer may be stopped for good.
            os.set_blocking(child.commands, False)
            os.set_blocking(child.results, False)
        parent = os.getpid()
        for child, (command_read, result_write) in zip(children, ends, strict=True):
            # Its own liveness pipe's write end, and the other's read end, which it watches.
            keep = (lives[child.slot][1], lives[1 - child.slot][0]) if lives else (-1, -1)

            def forked(pid: int, child: _Child = child, ends: tuple[int, int] = (command_read, result_write)) -> None:
                child.pid = pid
                for descriptor in ends:  # the child's: its answer's end is its exit
                    os.close(descriptor)
                self._children.append(child)

            try:
                pid, mask = _fork(forked)
            except OSError:  # out of processes or memory: one process fewer will do
                self._close(child, command_read, result_write)
                if not self._children:
                    for other, (read_end, write_end) in zip(children[1:], ends[1:], strict=True):
                        self._close(other, read_end, write_end)
                    for read_end, write_end in lives:
                        os.close(read_end)
                        os.close(write_end)
                    raise
                break
            if pid == 0:
                _child(tree, child.slot, command_read, result_write, keep, self._shared, self._rings[child.slot], mask,
                       parent, self._end_with_parent)
        for read_end, write_end in lives:
            os.close(read_end)
            os.close(write_end)

    @staticmethod
    def _close(child: _Child, *ends: int) -> None:
        for descriptor in (child.commands, child.results, *ends):
            os.close(descriptor)

    # --- the tree's methods --------------------------------------------------------------------

    def parts(self, name: str) -> tuple[str, ...]:
        return self._tree.parts(name)

    def refuse(self, name: str, why: str) -> UnsafeArchiveError:
        return self._tree.refuse(name, why)

    def write_file(self, name: str, size: int, mode: int, mtime_ns: int,
                   read: Callable[[int], bytes | memoryview]) -> None:
        self._number += 1
        helper = self._helper
        if helper is None:
            child, after = self._authority, 0
        else:
            parts = self._tree.parts(name)
            self._tree.count()
            self._tree.charge(size)
            directory = self._directory(parts[:-1]) if parts and hash(parts[-1]) & 1 else None
            if directory is not None and (directory, parts[-1]) not in self._dirs \
                    and not (self._authority_only and parts in self._authority_only):
                child, after = helper, self._ready[directory]
                self._helper_sent[directory] = helper.sent + 1
            else:
                child, after = self._authority, self._before_authority(parts[:-1], parts[-1:])
        if size <= _RING_FILE and self._place(child, name, size, mode, mtime_ns, after, read):
            return
        self._frame(child, FILE, name, "", mode, mtime_ns, size, after)
        self._send_data(child, size, read)

    def write_replaceable_file(self, name: str, size: int, mode: int, mtime_ns: int,
                               read: Callable[[int], bytes | memoryview]) -> None:
        self._number += 1
        after = 0
        if self._helper is not None:
            parts = self._tree.parts(name)
            self._tree.count()
            self._tree.charge(size)
            after = self._before_authority(parts[:-1], parts[-1:])
            self._authority_only.add(parts)
        self._frame(self._authority, REPLACEABLE_FILE, name, "", mode, mtime_ns, size, after)
        self._send_data(self._authority, size, read)

    def _send_data(self, child: _Child, size: int, read: Callable[[int], bytes | memoryview]) -> None:
        """Send ``child`` the ``size`` bytes of the file whose frame was just gathered for it, got
        by calls of ``read``, through its pipe."""
        pending, left = child.pending, size
        while left:
            piece = read(min(left, CHUNK))  # a view of the reader's buffer: sent, never copied here
            left -= len(piece)
            pending.append(piece)
            child.pending_bytes += len(piece)
            if child.pending_bytes >= _BATCH:
                self._flush(child)
                pending = child.pending
        if len(pending) >= _MAX_PENDING:
            self._flush(child)

    def _place(self, child: _Child, name: str, size: int, mode: int, mtime_ns: int, after: int,
               read: Callable[[int], bytes | memoryview]) -> bool:
        """Put the data of a small file in ``child``'s ring, then its frame; False if the ring has no
        room for it now (see the protocol's step 1)."""
        start = child.placed
        at = start % _RING
        if at + size > _RING:
            start += _RING - at
            at = 0
        seen = _DONE.unpack_from(self._shared, (_RING_SEEN + child.slot) * _DONE.size)[0]
        if start + size - seen > _RING:
            return False
        ring, end = self._rings[child.slot], at + size
        while at < end:
            piece = read(end - at)
            ring[at:at + len(piece)] = piece
            at += len(piece)
        child.placed = start + size
        self._frame(child, FILE, name, "", mode, mtime_ns, size, after, start)
        child.unsent += size
        if child.unsent >= _BATCH:  # its frames go as often as if the data went with them
            self._flush(child)
        return True

    def mkdir(self, name: str, mode: int, mtime_ns: int) -> None:
        after = self._authority_member(name, directory=True)
        self._frame(self._authority, DIRECTORY, name, "", mode, mtime_ns, 0, after)

    def symlink(self, name: str, target: str, mtime_ns: int | None = None) -> None:
        after = self._authority_member(name)
        self._frame(self._authority, SYMLINK, name, target, 0, _UNSETTABLE_TIME if mtime_ns is None else mtime_ns,
                    0, after)

    def hardlink(self, name: str, target: str) -> None:
        after = self._authority_member(name)
        if self._helper is not None:
            try:
                target_parts = self._tree.parts(target)
            except UnsafeArchiveError:  # the authority refuses it
                target_parts = ()
            if target_parts:
                after = max(after, self._before_authority(target_parts[:-1], target_parts[-1:], reads=True))
                self._authority_only.update((self._tree.parts(name), target_parts))
        self._frame(self._authority, HARDLINK, name, target, 0, 0, 0, after)

    def finish(self) -> int | None:
        """Have the children finish the tree, and return what they measured (see
        :meth:`SafeTree.finish`); raise what stopped them, if anything did."""
        self._number += 1
        after = 0
        if self._helper is not None:
            self._frame(self._helper, FINISH, "", "", 0, 0, 0, 0)
            after = self._helper.sent
        self._frame(self._authority, FINISH, "", "", 0, 0, 0, after)
        for child in self._children:
            self._flush(child)
        self._stop()
        failure = self._first_failure()
        if failure is not None:
            raise failure
        outcomes = [child.outcome for child in self._children]
        if any(outcome is None or outcome[0] != _FINISHED for outcome in outcomes):
            raise LoaderError(f"cannot unpack {self._what}: its writer process ended before finishing")
        counts = [outcome[2] for outcome in outcomes if outcome is not None]
        allocated = None if None in counts else sum(count for count in counts if count is not None)
        self._tree.vouch(allocated)
        return allocated

    def abandon(self, failure: BaseException) -> BaseException:
        """After this process failed with ``failure``: stop the children once they have executed
        what they were sent, and return the failure to raise (a child's, which came first, if
        one failed).  After a signal's exception (an interrupt, a job's end) or the deadline,
        what they were sent is of no use, and no failure of theirs would be raised: they are
        killed at once (draining what they were sent, a megabyte of small files, took seconds)."""
        self._quiet = (time.monotonic(), self._done())
        if not isinstance(failure, Exception) or isinstance(failure, WaitTimeoutError):
            for child in self._children:
                self._kill(child)
        else:
            for child in self._children:
                try:
                    self._flush(child)
                except BaseException:  # a child's failure (or an interrupt): _stop tells which
                    break
        self._stop()
        child_failure = self._first_failure()
        if child_failure is not None and isinstance(failure, Exception):
            return child_failure
        return failure

    # --- the protocol --------------------------------------------------------------------------

    def _authority_member(self, name: str, *, directory: bool = False) -> int:
        """Number the member ``name`` that only the authority makes (a ``directory``, or a link)
        and, with a helper, count it and return the helper's frames it waits for."""
        self._number += 1
        if self._helper is None:
            return 0
        parts = self._tree.parts(name)
        self._tree.count()
        return self._before_authority(parts, ()) if directory else self._before_authority(parts[:-1], parts[-1:])

    def _directory(self, parts: tuple[str, ...]) -> int | None:
        """The id of the authority's directory ``parts``, None if no frame sent to it made it."""
        if parts == self._last_parent[0]:  # members come directory by directory
            return self._last_parent[1]
        ident: int | None = 0
        for part in parts:
            ident = self._dirs.get((ident, part))  # type: ignore[arg-type]  # None ends the loop
            if ident is None:
                return None
        assert ident is not None
        self._last_parent = (parts, ident)
        return ident

    def _before_authority(self, directory: tuple[str, ...], leaf: tuple[str, ...], *, reads: bool = False) -> int:
        """For a frame to the authority that makes the directories ``directory`` (unless ``reads``)
        and then makes, replaces or (``reads``) reads the entry ``leaf`` (none if empty) in the last
        of them: the helper's frames it must wait for, with the counts updated (step 3)."""
        number = self._authority.sent + 1  # what the authority's count will be once it has done it
        touched: list[int] = []
        ident = self._directory(directory)
        if ident is None:
            if reads:
                return 0  # a hard link into no directory: the authority refuses it
            ident = 0
            for part in directory:
                below = self._dirs.get((ident, part))
                if below is None:
                    self._tree.count()
                    if hash(part) & 1:
                        touched.append(ident)
                    below = self._dirs[(ident, part)] = len(self._ready)
                    self._ready.append(number)
                    self._helper_sent.append(0)
                ident = below
        if leaf and hash(leaf[0]) & 1:
            touched.append(ident)
        after = 0
        for ident in touched:
            after = max(after, self._helper_sent[ident])
            self._ready[ident] = number
        return after

    def _frame(self, child: _Child, operation: int, name: str, target: str, mode: int, mtime_ns: int, size: int,
               after: int, place: int = -1) -> None:
        if after:  # what it waits for must be in the other child's pipe, not held here (step 4)
            other = self._children[1 - child.slot]
            if after > other.written:
                self._flush(other)
        seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
        if not _NO_TIME < seconds <= _LARGEST:
            seconds = _NO_TIME
        size = min(size, _LARGEST)  # no archive holds more: its reader ends first, as in one process
        name_bytes = name.encode("utf-8", "surrogateescape")
        target_bytes = target.encode("utf-8", "surrogateescape") if target else b""
        frame = _FRAME.pack(operation, len(name_bytes), len(target_bytes), mode, seconds, nanoseconds,
                            size, self._number, after, place) + name_bytes + target_bytes
        if operation != FINISH:
            child.sent += 1
        child.pending.append(frame)
        child.pending_bytes += len(frame)
        if child.pending_bytes >= _BATCH or len(child.pending) >= _MAX_PENDING:
            self._flush(child)

    def _flush(self, child: _Child) -> None:
        pending, left = child.pending, child.pending_bytes
        child.pending, child.pending_bytes, child.unsent = [], 0, 0
        child.written = child.sent
        while pending:
            try:
                written = os.writev(child.commands, pending)
            except BlockingIOError:  # the pipe is full
                self._await(child, child.commands)
                continue
            except BrokenPipeError:  # the child ended: failed, or stopped by the other's end
                self._stop()
                failure = self._first_failure()
                raise failure if failure is not None else LoaderError(
                    f"cannot unpack {self._what}: its writer process stopped reading") from None
            left -= written
            if not left:  # all of it, as the pipe takes it when it has room
                return
            done = 0
            while done < len(pending) and written >= len(pending[done]):
                written -= len(pending[done])
                done += 1
            del pending[:done]
            if written:
                pending[0] = memoryview(pending[0])[written:]
            self._await(child, child.commands)  # the pipe took what it had room for: it is full

    def _first_failure(self) -> BaseException | None:
        """The children's failure that came first in archive order (the authority's, for one
        member), once they are stopped."""
        failures = [(outcome[3], child.slot, outcome[1]) for child in self._children
                    if (outcome := child.outcome) is not None and outcome[1] is not None]
        return min(failures, key=lambda failure: failure[:2])[2] if failures else None

    def _stop(self) -> None:
        """Close the command pipes, wait for the children's answers and their exits, and keep
        what each answered (stopped, if it could not: then the failure says why).  A signal's
        exception (an interrupt, a job's end) may cut in at any step; :meth:`abandon` then calls
        this again, which goes on from that step: a descriptor closed twice could be one opened
        meanwhile."""
        for child in self._children:
            if child.commands >= 0:
                os.close(child.commands)
                child.commands = -1
        for child in self._children:
            if child.outcome is not None:
                continue
            while child.results >= 0:
                try:
                    chunk = os.read(child.results, 1 << 16)
                except BlockingIOError:
                    self._await(child, child.results)
                    continue
                if chunk:
                    child.answer.append(chunk)
                else:
                    os.close(child.results)
                    child.results = -1
            if child.status is None:
                try:  # the answer's end is the child's exit: this waits for no more than that
                    child.status = os.waitpid(child.pid, 0)[1]
                except ChildProcessError:  # reaped already: the process ignores SIGCHLD
                    child.status = 0
            status = child.status
            if child.killed:  # what this process gave up on: its failure, if any, stands
                child.outcome = (_STOPPED, None, None, _UNNUMBERED)
            elif child.answer:
                import pickle

                child.outcome = pickle.loads(b"".join(child.answer))
            elif os.WIFSIGNALED(status):
                child.outcome = (_STOPPED, LoaderError(
                    f"cannot unpack {self._what}: its writer process was killed by signal {os.WTERMSIG(status)}"),
                    None, _UNNUMBERED)
            else:
                child.outcome = (_STOPPED, None, None, _UNNUMBERED)

    def _await(self, child: _Child, pipe: int) -> None:
        """Return once ``pipe``, ``child``'s command pipe or result pipe, can be written to or
        read from, or the child has ended; raise WaitTimeoutError past the deadline.  Every
        :data:`_TELL_STOPPED` seconds of the wait, warn of the writers newly found stopped.  Once
        abandoning, wait no longer for writers that are stopped (a ``kill -STOP``, a debugger), nor
        for any once they have done no frame for :data:`_GRACE` seconds: kill them, and return
        once they are gone."""
        import select

        poller = select.poll()
        poller.register(pipe, select.POLLOUT if pipe == child.commands else select.POLLIN)
        began = time.monotonic()
        look = began + _TELL_STOPPED
        told: set[int] = set()  # the writers this wait has warned of, while they stay stopped
        while True:
            now = time.monotonic()
            if self._quiet is None:
                until = self._deadline
                if until is not None and now >= until:
                    raise WaitTimeoutError(self._unanswered(child))
                if self._warning is not None:
                    if now >= look:
                        self._tell_stopped(told, now - began)
                        look = now + _TELL_STOPPED
                    until = look if until is None else min(until, look)
            elif child.killed:
                until = None  # SIGKILL ends a process, stopped or traced: its pipes end with it
            else:
                for other in self._children:
                    if self._running(other) and _stopped_state(other.pid):
                        self._kill(other)
                done = self._done()
                if done != self._quiet[1]:
                    self._quiet = (now, done)
                until = self._quiet[0] + _GRACE
                if now >= until:
                    for other in self._children:
                        self._kill(other)
                    until = None
            if poller.poll(None if until is None else math.ceil((until - now) * 1000)):
                return

    def _tell_stopped(self, told: set[int], waited: float) -> None:
        """Warn of each writer that is stopped and not in ``told`` (then put there), after
        ``waited`` seconds; forget those of ``told`` that run again."""
        assert self._warning is not None
        for other in self._children:
            state = _stopped_state(other.pid) if self._running(other) else None
            if state is None:
                told.discard(other.pid)
            elif other.pid not in told:
                told.add(other.pid)
                pid = other.pid
                self._warning(f"the unpack of {self._what} has waited {waited:.0f} s for its writer process {pid}, "
                              f"which is stopped (state {state}): it goes on once that is continued (kill -CONT {pid})")

    def _done(self) -> int:
        """The frames the children have done, as they published them."""
        return sum(_DONE.unpack_from(self._shared, child.slot * _DONE.size)[0] for child in self._children)

    @staticmethod
    def _running(child: _Child) -> bool:
        """Whether ``child`` may still run: neither reaped (its pid is still its own) nor killed."""
        return child.status is None and not child.killed

    def _kill(self, child: _Child) -> None:
        if self._running(child):
            import signal

            os.kill(child.pid, signal.SIGKILL)
            child.killed = True

    def _unanswered(self, child: _Child) -> str:
        """Which writer this process waited for in vain: a stopped one, if any, else ``child``."""
        stopped = next((other for other in self._children
                        if self._running(other) and _stopped_state(other.pid)), None)
        culprit = child if stopped is None else stopped
        return (f"cannot unpack {self._what}: its writer process {culprit.pid} did not answer"
                + (" (it is stopped)" if stopped is not None else ""))


def _children_of_this_thread() -> set[int]:
    """The pids of the processes this thread forked that are not reaped (none if /proc does not
    say)."""
    try:
        with open("/proc/thread-self/children", "rb") as listing:
            return {int(pid) for pid in listing.read().split()}
    except OSError:
        return set()


def _stopped_state(pid: int) -> str | None:
    """The state of process ``pid`` if it is stopped: ``T`` by a signal (``kill -STOP``, Ctrl-Z),
    ``t`` by its tracer; else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            state = status.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return None
    return state.decode() if state in (b"T", b"t") else None


def _fork(forked: Callable[[int], None]) -> tuple[int, set[int]]:
    """``os.fork()``, with the collector off and every signal blocked in this thread across it;
    and the signal mask to restore, which the child restores once its handlers are the defaults.
    The parent calls ``forked`` with the child's pid before it unblocks the signals, whose
    exception may cut in as soon as they are (one that another thread took meanwhile can cut in
    sooner: see :meth:`WriterProcess.start`).

    A collection in the child would run the finalizers of the parent's garbage there (one that
    takes a lock, flushes a file or writes to stderr), and a handler of the parent's (Python's
    for SIGINT, the population's for SIGTERM) would raise in the child, maybe in the handlers
    that Python runs after a fork, which print the exception to stderr, or before the child's
    code catches anything: it would run the parent's code from there.  The child keeps the
    collector off (nothing it runs makes cycles); a signal that came meanwhile does to it, once
    unblocked, what it does to any process."""
    import signal

    # One fork at a time in the process: the collector's state is the process's, and two threads
    # unpacking at once (a program using the library) would otherwise leave it off for good, or
    # switch it on while the other forks.
    with _FORKING:
        collecting = gc.isenabled()
        gc.disable()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        pid = -1
        # Python 3.12 warns of fork in a process with threads: the child runs none of the code
        # that the other threads (reading ahead, decompressing, showing progress) may hold locks
        # of.  The filters are put back by the parent alone: from 3.13 that takes the warnings
        # module's lock, which another thread may have held at the fork.
        filters = warnings.catch_warnings()
        filters.__enter__()
        try:
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
            if pid > 0:
                forked(pid)
        finally:
            if pid != 0:
                filters.__exit__(None, None, None)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                if collecting:
                    gc.enable()
    return pid, mask


def _parent_death_signal() -> Callable[[], int] | None:
    """A call of ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, made ready before the fork (the child loads
    nothing), that returns 0 once it has bound the calling process's life to its parent's; None
    if libc has no ``prctl``."""
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    # prctl is variadic: its second argument is read as an unsigned long, so it is passed as one.
    option, signum = ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL)
    return lambda: int(prctl(option, signum))


def _child(tree: SafeTree, slot: int, commands: int, results: int, lives: tuple[int, int],
           shared: mmap.mmap, ring: mmap.mmap, mask: set[int], parent: int,
           end_with_parent: Callable[[], int] | None) -> NoReturn:
    """A writer process: execute the frames read from ``commands``, answer on ``results``.
    ``lives`` holds the write end of its liveness pipe and the read end of the other child's
    (both -1 if there is no other); ``mask`` is the signal mask to restore (see :func:`_fork`);
    ``parent`` is the pid of the process that forked it, which ``end_with_parent`` binds its life
    to (see the protocol's step 8)."""
    import pickle  # loaded before the fork: found, not loaded
    import signal

    # First: a parent killed from now on takes this process with it, even stopped.  One killed
    # before has left it to another parent (init, a subreaper), which tells it apart.  (The signal
    # comes when the thread that forked ends, which it does only once it has reaped this process.)
    if end_with_parent is not None and end_with_parent() == 0 and os.getppid() != parent:
        os._exit(0)
    # Another thread of the parent may have been writing to them at the fork, holding their lock
    # for good here: what would print (a warning, an exception nothing catches) prints nothing.
    sys.stdout = sys.stderr = None
    outcome: _Outcome
    try:
        for number in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError):
                if callable(signal.getsignal(number)):
                    signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        keep = {commands, results, *lives, *tree.descriptors()}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        watch = lives[1]
        if watch >= 0:  # to the lowest number free, for select(), which watches none past 1023
            low = os.dup(watch)
            os.close(watch)
            watch = low
        outcome = _serve(tree, slot, commands, watch, shared, ring)
    except BaseException as exc:  # sent to the parent, which raises it
        outcome = (_FAILED, exc, None, 0)
    try:
        try:
            answer = pickle.dumps(outcome)
        except Exception:  # an exception that does not pickle: its message will do
            answer = pickle.dumps((_FAILED, LoaderError(f"cannot unpack: {outcome[1]}"), None, outcome[3]))
        while answer:
            answer = answer[os.write(results, answer):]
    finally:
        os._exit(0)


class _Frames(Buffered):
    """The command pipe's frames, read in place from the buffer when whole in it.

    The pipe is read into one buffer, again and again: reads of changing sizes into fresh bytes
    left the allocator's heap in pieces, and the child grew by 150 bytes a member (133 MiB at a
    million).  What :meth:`view` hands out is written to its file before the next read."""

    def __init__(self, commands: int) -> None:
        space = memoryview(bytearray(_PIPE_SIZE))

        def read(_size: int) -> memoryview:
            return space[:os.readv(commands, [space])]

        super().__init__(read)
        self.within = False  # whether a frame has begun: an end of the pipe now means the parent stopped

    def _fill(self) -> bool:
        if super()._fill():
            return True
        if self.within:
            raise _Stopped
        return False

    def next(self) -> tuple[int, str, str, int, int, int, int, int, int] | None:
        """The next frame's operation, name, target, mode, mtime, data size, member's number, the
        other child's count to wait for and the data's place in the ring; None at the end."""
        self.within = False
        at, buffer = self._at, self._buffer
        start = at + _FRAME.size
        if start <= len(buffer):
            operation, name_size, target_size, mode, seconds, nanoseconds, size, number, after, place = \
                _FRAME.unpack_from(buffer, at)
            end = start + name_size + target_size
            if end <= len(buffer):  # the usual case: all of it is here
                self._at = end
                self._position += end - at
                self.within = True
                target = str(buffer[start + name_size:end], "utf-8", "surrogateescape") if target_size else ""
                return (operation, str(buffer[start:start + name_size], "utf-8", "surrogateescape"), target,
                        mode, _time(seconds, nanoseconds), size, number, after, place)
        header = self.read_exact(_FRAME.size)
        if not header:
            return None
        self.within = True
        if len(header) < _FRAME.size:
            raise _Stopped
        operation, name_size, target_size, mode, seconds, nanoseconds, size, number, after, place = \
            _FRAME.unpack(header)
        name_bytes = self.read_exact(name_size)
        target_bytes = self.read_exact(target_size)
        if len(name_bytes) < name_size or len(target_bytes) < target_size:
            raise _Stopped
        return (operation, name_bytes.decode("utf-8", "surrogateescape"),
                target_bytes.decode("utf-8", "surrogateescape"), mode, _time(seconds, nanoseconds), size, number,
                after, place)


def _time(seconds: int, nanoseconds: int) -> int:
    """A frame's time, in nanoseconds."""
    return _UNSETTABLE_TIME if seconds == _NO_TIME else seconds * 1_000_000_000 + nanoseconds


def _wait(shared: mmap.mmap, slot: int, count: int, watch: int) -> None:
    """Return once the child in ``slot`` has done ``count`` frames; _Stopped if it exits first."""
    import select  # loaded before the fork: found, not loaded

    while _DONE.unpack_from(shared, slot * _DONE.size)[0] < count:
        if select.select([watch], [], [], _POLL)[0]:  # it has exited: what it did last is published
            if _DONE.unpack_from(shared, slot * _DONE.size)[0] < count:
                raise _Stopped
            return


class _Placed:
    """The data of a file in the ring, from ``at``, handed out as :meth:`SafeTree.write_file
    <sharedcache.loaders.archives.SafeTree.write_file>` reads it."""

    __slots__ = ("_at", "_ring")

    def __init__(self, ring: memoryview, at: int) -> None:
        self._ring, self._at = ring, at

    def __call__(self, size: int) -> memoryview:
        at = self._at
        self._at = at + size
        return self._ring[at:at + size]


def _serve(tree: SafeTree, slot: int, commands: int, watch: int, shared: mmap.mmap, ring: mmap.mmap) -> _Outcome:
    frames = _Frames(commands)
    data = frames.view  # within a file's frame, it raises _Stopped rather than end short
    placed = memoryview(ring)
    other, offset, seen = 1 - slot, slot * _DONE.size, (_RING_SEEN + slot) * _DONE.size
    start = tree.measured()
    if slot == _HELPER:
        tree.adopt()
    done = number = 0
    try:
        while (frame := frames.next()) is not None:
            operation, name, target, mode, mtime_ns, size, number, after, place = frame
            if after:
                _wait(shared, other, after, watch)
            if operation == FILE and place >= 0:
                tree.write_file(name, size, mode, mtime_ns, _Placed(placed, place % _RING))
                _DONE.pack_into(shared, seen, place + size)
            elif operation == FILE:
                tree.write_file(name, size, mode, mtime_ns, data)
            elif operation == REPLACEABLE_FILE:
                tree.write_replaceable_file(name, size, mode, mtime_ns, data)
            elif operation == FINISH:
                if slot == _HELPER:
                    end = tree.measured()
                    return _FINISHED, None, None if end is None or start is None else end - start, number
                return _FINISHED, None, tree.finish(), number
            elif operation == DIRECTORY:
                tree.mkdir(name, mode, mtime_ns)
            elif operation == SYMLINK:
                tree.symlink(name, target, mtime_ns)
            elif operation == HARDLINK:
                tree.hardlink(name, target)
            done += 1
            _DONE.pack_into(shared, offset, done)
    except _Stopped:
        pass
    except BaseException as exc:  # sent to the parent, which raises it
        return _FAILED, exc, None, number
    return _STOPPED, None, None, number
