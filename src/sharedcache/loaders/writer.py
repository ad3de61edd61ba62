"""The writer process: the files of a tar archive made by a child process while this one reads on.

An unpack of many small files is bound by one core.  Parsing a header and making a file (``open``,
``write``, ``futimens``, ``close``) are both interpreter work, and a thread cannot share it out:
the second thread would wait for the interpreter lock after every system call.  So past
:data:`SERIAL_MEMBERS` members, :func:`~sharedcache.loaders.archives.extract_tar` forks.  The child
goes on with the :class:`~sharedcache.loaders.archives.SafeTree` as fork copied it: every rule, and
all its state (the directories made and their descriptors, the links to check at the end, the
entry count, the bytes charged to the size limit).  The parent decompresses and parses, and sends
each member down a pipe.  Small archives never fork: for them the fork would cost more than it
saves.

The protocol:

1. Parent to child, on the command pipe: a frame per member, in archive order.  A frame is a
   fixed header (:data:`_FRAME`: operation, sizes of the name and of the link target, mode, time
   in seconds and nanoseconds, data size), the name and the target in UTF-8 (other bytes kept as
   surrogate escapes), then a file's data.  A full pipe makes the parent wait: memory stays a pipe's worth.
2. The child executes each frame with the tree's own methods, which check and refuse exactly as
   they do in one process.  :data:`FINISH` asks it to finish the tree (check where the links
   lead, set the directories' modes).
3. Child to parent, on the result pipe, once: the pickled outcome (finished, with what the
   tree's finish measured; stopped, when the command pipe ended without FINISH; or the exception
   that stopped it).  Then it exits.
4. A failure is reported as one process would report it, the first in archive order.  When the
   parent fails (a corrupt header, a refused name, an interrupt), it closes the command pipe and
   waits for the outcome: the child executes what it was sent, which came before the failure.  A
   failure of the child is then raised in place of the parent's; else the parent's stands.  When
   the child fails first, the parent's next write finds the pipe closed, and the child's failure
   is raised.
5. If the parent dies, the child reads the end of the command pipe and exits, without finishing.

The child holds no more than it needs: it closes every descriptor but the two pipes and the
tree's directories at once (the parent's locks, connections and index are not kept alive by it),
restores the default action of the signals the parent handles in Python, loads no module (the
two it needs are loaded before the fork), never logs or prints, and leaves with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from ..errors import LoaderError, UnsafeArchiveError
from .streams import CHUNK, Buffered

if TYPE_CHECKING:
    from .archives import SafeTree

#: Members unpacked in this process before the rest is handed to a writer process.
SERIAL_MEMBERS = 4096

FILE, DIRECTORY, SYMLINK, HARDLINK, FINISH = range(1, 6)
# operation, name bytes, target bytes, mode, mtime (seconds, nanoseconds), data bytes
_FRAME = struct.Struct("<BIIqqIq")
_PIPE_SIZE = 1 << 20               # asked of the kernel for the command pipe (its default is 64 KiB)
_BATCH = 256 << 10                 # bytes gathered before a write to the pipe...
_MAX_PENDING = 512                 # ...or pieces (well below IOV_MAX, 1024)
_FINISHED, _STOPPED, _FAILED = "finished", "stopped", "failed"
# What the child answers: how it ended, the failure that ended it, what the tree's finish measured.
_Outcome = tuple[str, BaseException | None, int | None]
# A pax header can say any number.  A time whose seconds a frame cannot hold, no clock holds
# either (time_t has 64 bits): it is sent as _NO_TIME, and the child gives the tree a time that
# fails to be set as it would have (so the file keeps its creation time, as in one process).
# The modes of tar headers always fit.
_LARGEST = (1 << 63) - 1
_NO_TIME = -(1 << 63)
_UNSETTABLE_TIME = 10**30


def available() -> bool:
    """Whether this system can run a writer process (fork, and /proc to find descriptors)."""
    return sys.platform == "linux" and hasattr(os, "fork") and os.path.isdir("/proc/self/fd")


class _Stopped(Exception):
    """The command pipe ended within a frame: the parent stopped sending."""


class WriterProcess:
    """The parent's side: a stand-in for the tree that the tar loop calls, with its methods.
    OSError if the child cannot be made (no process or memory left): one process will do."""

    def __init__(self, tree: SafeTree, what: str) -> None:
        self._tree = tree  # this process's copy, from now on used only for names and messages
        self._what = what
        commands, self._commands = os.pipe()
        try:
            self._results, results = os.pipe()
        except OSError:  # out of descriptors: the caller goes on in one process
            os.close(commands)
            os.close(self._commands)
            raise
        try:
            import fcntl

            fcntl.fcntl(self._commands, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # above the system's limit for this user: the default size works, with more switches
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._outcome: _Outcome | None = None
        self._answer: list[bytes] = []  # what the child has answered so far (see _stop)
        self._status: int | None = None  # its exit status, once waited for
        # Loaded here, before the fork, so that the child loads no module (nor does an unpack
        # that never forks: these two cost a few milliseconds).
        import pickle  # noqa: F401
        import signal  # noqa: F401

        try:
            with warnings.catch_warnings():
                # Python 3.12 warns of fork in a process with threads.  The child runs none of the
                # code that the other threads (reading ahead, decompressing) may hold locks of.
                warnings.simplefilter("ignore", DeprecationWarning)
                self._pid = os.fork()
        except OSError:  # out of processes or memory: the caller goes on in one process
            for descriptor in (commands, self._commands, self._results, results):
                os.close(descriptor)
            raise
        if self._pid == 0:
            os.close(self._commands)
            os.close(self._results)
            _child(tree, commands, results)
        os.close(commands)
        os.close(results)

    # --- the tree's methods --------------------------------------------------------------------

    def parts(self, name: str) -> tuple[str, ...]:
        return self._tree.parts(name)

    def refuse(self, name: str, why: str) -> UnsafeArchiveError:
        return self._tree.refuse(name, why)

    def write_file(self, name: str, size: int, mode: int, mtime_ns: int,
                   read: Callable[[int], bytes | memoryview]) -> None:
        self._frame(FILE, name, "", mode, mtime_ns, size)
        pending, left = self._pending, size
        while left:
            piece = read(min(left, CHUNK))  # a view of the reader's buffer: sent, never copied here
            left -= len(piece)
            pending.append(piece)
            self._pending_bytes += len(piece)
            if self._pending_bytes >= _BATCH:
                self._flush()
                pending = self._pending
        if len(pending) >= _MAX_PENDING:
            self._flush()

    def mkdir(self, name: str, mode: int, mtime_ns: int) -> None:
        self._frame(DIRECTORY, name, "", mode, mtime_ns, 0)

    def symlink(self, name: str, target: str) -> None:
        self._frame(SYMLINK, name, target, 0, 0, 0)

    def hardlink(self, name: str, target: str) -> None:
        self._frame(HARDLINK, name, target, 0, 0, 0)

    def finish(self) -> int | None:
        """Have the child finish the tree, and return what its finish measured (see
        :meth:`SafeTree.finish`); raise what stopped it, if anything did."""
        self._frame(FINISH, "", "", 0, 0, 0)
        self._flush()
        kind, failure, allocated = self._stop()
        if failure is not None:
            raise failure
        if kind != _FINISHED:
            raise LoaderError(f"cannot unpack {self._what}: its writer process ended before finishing")
        self._tree.vouch(allocated)
        return allocated

    def abandon(self, failure: BaseException) -> BaseException:
        """After this process failed with ``failure``: stop the child once it has executed what it
        was sent, and return the failure to raise (the child's, which came first, if it failed)."""
        try:
            self._flush()
        except BaseException:  # the child's failure (or an interrupt): _stop tells which
            pass
        _kind, child_failure, _allocated = self._stop()
        if child_failure is not None and isinstance(failure, Exception):
            return child_failure
        return failure

    # --- the protocol --------------------------------------------------------------------------

    def _frame(self, operation: int, name: str, target: str, mode: int, mtime_ns: int, size: int) -> None:
        seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
        if not _NO_TIME < seconds <= _LARGEST:
            seconds = _NO_TIME
        size = min(size, _LARGEST)  # no archive holds more: its reader ends first, as in one process
        name_bytes = name.encode("utf-8", "surrogateescape")
        target_bytes = target.encode("utf-8", "surrogateescape") if target else b""
        frame = _FRAME.pack(operation, len(name_bytes), len(target_bytes), mode, seconds, nanoseconds,
                            size) + name_bytes + target_bytes
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes >= _BATCH or len(self._pending) >= _MAX_PENDING:
            self._flush()

    def _flush(self) -> None:
        pending, left = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        while pending:
            try:
                written = os.writev(self._commands, pending)
            except BrokenPipeError:  # the child failed and left
                _kind, failure, _allocated = self._stop()
                raise failure if failure is not None else LoaderError(
                    f"cannot unpack {self._what}: its writer process stopped reading") from None
            left -= written
            if not left:  # all of it, as a blocking pipe takes it unless a signal cuts in
                return
            done = 0
            while done < len(pending) and written >= len(pending[done]):
                written -= len(pending[done])
                done += 1
            del pending[:done]
            if written:
                pending[0] = memoryview(pending[0])[written:]

    def _stop(self) -> _Outcome:
        """Close the command pipe, wait for the child's answer and its exit; what it answered
        (stopped, if it could not: then the failure says why).  A signal's exception (an
        interrupt, a job's end) may cut in at any step; :meth:`abandon` then calls this again,
        which goes on from that step: a descriptor closed twice could be one opened meanwhile."""
        if self._outcome is None:
            if self._commands >= 0:
                os.close(self._commands)
                self._commands = -1
            while self._results >= 0:
                if chunk := os.read(self._results, 1 << 16):
                    self._answer.append(chunk)
                else:
                    os.close(self._results)
                    self._results = -1
            if self._status is None:
                try:
                    self._status = os.waitpid(self._pid, 0)[1]
                except ChildProcessError:  # reaped already: the process ignores SIGCHLD
                    self._status = 0
            status = self._status
            if self._answer:
                import pickle

                self._outcome = pickle.loads(b"".join(self._answer))
            elif os.WIFSIGNALED(status):
                self._outcome = (_STOPPED, LoaderError(
                    f"cannot unpack {self._what}: its writer process was killed by signal {os.WTERMSIG(status)}"), None)
            else:
                self._outcome = (_STOPPED, None, None)
        return self._outcome


def _child(tree: SafeTree, commands: int, results: int) -> NoReturn:
    """The writer process: execute the frames read from ``commands``, answer on ``results``."""
    import pickle  # loaded before the fork: found, not loaded
    import signal

    outcome: _Outcome
    try:
        gc.disable()  # nothing here makes cycles, and a collection would walk the parent's objects
        for number in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError):
                if callable(signal.getsignal(number)):
                    signal.signal(number, signal.SIG_DFL)
        keep = {commands, results, *tree.descriptors()}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        outcome = _serve(tree, commands)
    except _Stopped:
        outcome = (_STOPPED, None, None)
    except BaseException as exc:  # sent to the parent, which raises it
        outcome = (_FAILED, exc, None)
    try:
        try:
            answer = pickle.dumps(outcome)
        except Exception:  # an exception that does not pickle: its message will do
            answer = pickle.dumps((_FAILED, LoaderError(f"cannot unpack: {outcome[1]}"), None))
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

    def next(self) -> tuple[int, str, str, int, int, int] | None:
        """The next frame's operation, name, target, mode, mtime and data size; None at the end."""
        self.within = False
        at, buffer = self._at, self._buffer
        start = at + _FRAME.size
        if start <= len(buffer):
            operation, name_size, target_size, mode, seconds, nanoseconds, size = _FRAME.unpack_from(buffer, at)
            end = start + name_size + target_size
            if end <= len(buffer):  # the usual case: all of it is here
                self._at = end
                self._position += end - at
                self.within = True
                target = str(buffer[start + name_size:end], "utf-8", "surrogateescape") if target_size else ""
                return (operation, str(buffer[start:start + name_size], "utf-8", "surrogateescape"), target,
                        mode, _time(seconds, nanoseconds), size)
        header = self.read_exact(_FRAME.size)
        if not header:
            return None
        self.within = True
        if len(header) < _FRAME.size:
            raise _Stopped
        operation, name_size, target_size, mode, seconds, nanoseconds, size = _FRAME.unpack(header)
        name_bytes = self.read_exact(name_size)
        target_bytes = self.read_exact(target_size)
        if len(name_bytes) < name_size or len(target_bytes) < target_size:
            raise _Stopped
        return (operation, name_bytes.decode("utf-8", "surrogateescape"),
                target_bytes.decode("utf-8", "surrogateescape"), mode, _time(seconds, nanoseconds), size)


def _time(seconds: int, nanoseconds: int) -> int:
    """A frame's time, in nanoseconds."""
    return _UNSETTABLE_TIME if seconds == _NO_TIME else seconds * 1_000_000_000 + nanoseconds


def _serve(tree: SafeTree, commands: int) -> _Outcome:
    frames = _Frames(commands)
    data = frames.view  # within a file's frame, it raises _Stopped rather than end short
    while (frame := frames.next()) is not None:
        operation, name, target, mode, mtime_ns, size = frame
        if operation == FINISH:
            return _FINISHED, None, tree.finish()
        if operation == FILE:
            tree.write_file(name, size, mode, mtime_ns, data)
        elif operation == DIRECTORY:
            tree.mkdir(name, mode, mtime_ns)
        elif operation == SYMLINK:
            tree.symlink(name, target)
        elif operation == HARDLINK:
            tree.hardlink(name, target)
    return _STOPPED, None, None
