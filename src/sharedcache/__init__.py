"""shared-cache: share read-only data between the processes of a host.

* :func:`use` (:mod:`sharedcache.repository`): hold a use of a repository described by a loader
  stack; the first user downloads and prepares it, the others wait and share it.
* :class:`FsCache` (:mod:`sharedcache.engine`): the crash-safe multi-process cache engine.
* :class:`FetchPolicy` (:mod:`sharedcache.config`): how downloads fetch.
* :mod:`sharedcache.errors`: every error meant for a user.

The sub-systems, from the top down (each imports only those below it):

* :mod:`sharedcache.cli`: the ``sc`` command;
* :mod:`sharedcache.repository`: repositories in base directories, one population for all;
* :mod:`sharedcache.loaders`: recipes and their loaders, and running them;
* :mod:`sharedcache.engine`: the cache engine;
* :mod:`sharedcache.config`, and the shared modules :mod:`~sharedcache.errors`,
  :mod:`~sharedcache.sizes`, :mod:`~sharedcache.progress`, :mod:`~sharedcache.lean`.

Submodules are imported on first access, so ``import sharedcache`` costs almost nothing.
"""

from __future__ import annotations

# The C module behind `signal`, loaded with the interpreter (see sharedcache.cli), as os is.
import _signal  # type: ignore[import-not-found]  # typeshed stubs signal, not its C module
import os
import sys

TYPE_CHECKING = False  # see sharedcache.lean

__version__ = "0.3.0.dev0"  # the one place the version is written (pyproject.toml reads it)

_EXPORTS = {
    "FsCache": "engine.fscache",
    "FetchPolicy": "config.settings",
    "use": "repository.repositories",
    "MissError": "errors",
    "SharedCacheError": "errors",
    "UsageError": "errors",
    "LoaderError": "errors",
    "DownloadError": "errors",
    "ChecksumError": "errors",
    "UnsafeArchiveError": "errors",
    "NoSpaceError": "errors",
    "BusyError": "errors",
    "CacheError": "errors",
    "WaitTimeoutError": "errors",
}
# Written out, not computed from _EXPORTS (a test checks they agree): type checkers read only a
# literal list, and a name a user's program imports from here must be in it, or mypy --strict
# refuses the import ("does not explicitly export").
__all__ = [
    "BusyError",
    "CacheError",
    "ChecksumError",
    "DownloadError",
    "FetchPolicy",
    "FsCache",
    "LoaderError",
    "MissError",
    "NoSpaceError",
    "SharedCacheError",
    "UnsafeArchiveError",
    "UsageError",
    "WaitTimeoutError",
    "use",
]

if TYPE_CHECKING:
    from .config.settings import FetchPolicy
    from .engine.fscache import FsCache
    from .errors import (
        BusyError,
        CacheError,
        ChecksumError,
        DownloadError,
        LoaderError,
        MissError,
        NoSpaceError,
        SharedCacheError,
        UnsafeArchiveError,
        UsageError,
        WaitTimeoutError,
    )
    from .repository.repositories import use


def _say(line: str) -> None:
    """Write ``line``, one of sc's own lines (an error, a warning), to stderr, in one write: whole
    or not at all.  A stderr that cannot take it (a full disk under ``2>>job.log``, a reader
    gone, one closed) loses the line, and those after it (:func:`_silence_stderr`), not the
    decided exit status: the error escaped, exit status 1 whatever the outcome, and Python wrote
    its traceback.  With no memory left to write it (its bytes are made as it is written), the
    line said is the one that says so, which needs none (:func:`_say_out_of_memory`).  Here, not
    in :mod:`sharedcache.cli`, for the command's entry points too (``bin/sc``, ``python -m
    sharedcache``), which say "interrupted" of a Ctrl-C that comes as that module loads."""
    if sys.stderr is None:  # started with descriptor 2 closed
        return
    try:
        sys.stderr.write(f"{line}\n")
    except (OSError, ValueError):  # (ValueError: the stream was closed)
        _silence_stderr()
    except MemoryError:
        _say_out_of_memory()


def _silence_stderr() -> None:
    """Replace stderr, which failed a write, by a stream that takes everything and keeps nothing.
    What the failed write left in its buffer (Python's, unless ``PYTHONUNBUFFERED`` is set)
    would fail the interpreter's flush at exit once more, and make the exit status 120 whatever
    sc had decided (the entry points end by that flush after a Ctrl-C as sc starts)."""
    try:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - kept for the process
    except OSError:  # no descriptor left (the line lost may have said so): None flushes nothing either
        sys.stderr = None


#: The line that ends sc when memory runs out, as the bytes to write: made before it does
#: (:func:`_make_out_of_memory_line`), since by then even a line may not be made.  Made under a
#: cap on address space, it names the cap; without one, it is this.
_out_of_memory_line = b"sc: error: out of memory\n"


def _make_out_of_memory_line() -> None:
    """Make :data:`_out_of_memory_line` now, while there is memory to make it, from what
    :func:`sharedcache.errors.out_of_memory` says of this process's cap."""
    global _out_of_memory_line  # noqa: PLW0603 - a fact of this process, made before it is needed
    from .errors import out_of_memory

    _out_of_memory_line = f"sc: error: {out_of_memory()}\n".encode()


def _say_out_of_memory() -> None:
    """Write :data:`_out_of_memory_line` to stderr, making no object to do it: the bytes made
    before, written to its descriptor, once what the stream holds is out (the start of a report
    of Python's that found no memory to end its line: it would follow).  Made as memory ran out,
    the line failed as it was made, and so did Python's report of that (at a cap of 32 MiB, two
    bare "MemoryError" lines): sc ended with no word of its own.  A stream that cannot take it
    loses it, as :func:`_say` does; one with no descriptor (a program's own capture of what
    :func:`sharedcache.cli.main` says, an ``io.StringIO``) is written to as a stream."""
    if sys.stderr is None:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError, MemoryError):
        pass  # (what it holds goes later, if ever: the line is said all the same)
    try:
        descriptor = sys.stderr.fileno()
    except (OSError, ValueError):  # (io.UnsupportedOperation is both)
        try:
            sys.stderr.write(_out_of_memory_line.decode())
        except (OSError, ValueError, MemoryError):
            pass
        return
    try:
        os.write(descriptor, _out_of_memory_line)
    except OSError:
        pass


#: How deep the entry points grow the stack under a cap on address space (see
#: _prepare_for_a_cap): 450 calls of some 470 bytes of C stack, 200 KiB past where a process
#: starts, where a population at a cap of 24 MiB had reached 208 KiB when its stack could grow no
#: more.
_STACK_CALLS = 450


def _prepare_for_a_cap() -> None:
    """Under a cap on address space (``ulimit -v``, ``prlimit --as``), make now, before anything
    else is allocated, what running out of memory needs and could not get then.

    * The main thread's stack, grown.  The kernel grows that stack only while the cap has room,
      and what a command allocates may take the rest: the next call deeper than the stack had
      been then dies of SIGSEGV, with no line, where running out of memory is otherwise a
      MemoryError said in one line (a population did, at a cap of 24 MiB, its stack then 208
      KiB).  Grown first, the stack keeps its pages.  Each call goes through C (``map``), which
      takes the C stack that the interpreter's Python calls do not.
    * The line that says so, naming the cap (:func:`_make_out_of_memory_line`).

    For the command's entry points (``bin/sc``, ``python -m sharedcache``); without a cap,
    nothing is done (and a warm use reads no more than this)."""
    try:
        with open("/proc/self/limits", "rb") as limits:
            capped = any(line.startswith(b"Max address space") and b"unlimited" not in line for line in limits)
    except OSError:
        return
    if capped:

        def down(calls: int) -> int:
            return calls and min(map(down, (calls - 1,)))

        down(_STACK_CALLS)
        _make_out_of_memory_line()


#: The signals that ``sc run`` passes on to its command (but those its caller ignores: see
#: :func:`sharedcache.cli.commands._passed_on`).
_PASSED_ON: tuple[int, ...] = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGUSR1, _signal.SIGUSR2)

#: Those of :data:`_PASSED_ON` that :func:`_hold_signals_as_init` blocked, until
#: :func:`_release_held_signals`.
_held: list[int] = []


def _hold_signals_as_init() -> None:
    """As PID 1 of a PID namespace (a container's entrypoint), block the signals that ``sc run``
    passes on until sc has its handlers for them (:func:`_release_held_signals`).  The kernel
    drops a signal left to its default action that is sent to PID 1, but keeps a blocked one
    pending: SIGTERM that came as sc's modules loaded was lost, and ``sc run`` ran its command
    all the same.  For the command's entry points (``bin/sc``, ``python -m sharedcache``), first
    thing; elsewhere it costs a ``getpid()``.  What the caller blocked stays its own."""
    if os.getpid() == 1:
        blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, _PASSED_ON)
        _held.extend(signum for signum in _PASSED_ON if signum not in blocked)


def _release_held_signals() -> None:
    """Unblock what :func:`_hold_signals_as_init` blocked: one that came meanwhile acts now, on
    the handler then in place (the default action of a signal to PID 1 drops it, as it did)."""
    if _held:
        held = _held.copy()
        _held.clear()
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, held)


def _start_command() -> None:
    """The first steps of the command's entry points (``bin/sc``, ``python -m sharedcache``),
    before they import its modules: as PID 1, the signals that would be lost meanwhile are held
    back (:func:`_hold_signals_as_init`); under a cap on address space, what running out of
    memory needs is made while there is room (:func:`_prepare_for_a_cap`)."""
    _hold_signals_as_init()
    _prepare_for_a_cap()


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sharedcache' has no attribute {name!r}")
    # __import__ rather than importlib.import_module: importing importlib costs a warm sc --use
    # a tenth of its budget.
    __import__(f"{__name__}.{module}")
    value = getattr(sys.modules[f"{__name__}.{module}"], name)
    globals()[name] = value
    return value
