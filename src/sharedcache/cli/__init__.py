"""The ``sc`` (alias ``shared-cache``) command line.

Turns arguments into calls of :mod:`sharedcache.repository` and outcomes into exit statuses:
0 success, 1 failure, 2 usage error, 130 interrupted; ``--use`` ended by SIGTERM or SIGHUP as it
waits for its output to take the path ends by that signal, its use released; ``sc run`` ends as
its command ends (its status, or by the signal that killed it; as PID 1 with 128+N), 127 if it
finds no such command, 126 if it cannot run it.  Paths are the only thing printed on stdout by
``--use`` and ``--location``; every message goes to stderr as one line starting with ``sc:``.  No traceback is
shown for an error a user can cause.

* :mod:`~.parser`: the grammar (the options table, the parser, the help text);
* :mod:`~.commands`: the commands, as a table from action to function.
"""

from __future__ import annotations

# The C module behind `signal`, loaded with the interpreter: `signal` itself imports enum, about
# 3 ms of every command.
import _signal  # type: ignore[import-not-found]  # typeshed stubs signal, not its C module
import atexit
import codecs
import io
import os
import sys

from .. import _make_out_of_memory_line, _release_held_signals, _say, _say_out_of_memory
from ..errors import Ended, SharedCacheError, UsageError, clipped, memory_refused, over_limit, printable
from ..repository.bases import close_caches
from . import commands
from .parser import help_text, parse

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv``; its exit status.  With no ``argv``, the command of this process
    (``bin/sc``, ``python -m sharedcache``), which :func:`leave` then ends."""
    commands.ENDS_THE_PROCESS = argv is None
    try:
        if argv is not None:  # (sc's entry points made it as they started: sharedcache._prepare_for_a_cap)
            _make_out_of_memory_line()
        return _outcome(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # at any moment until the outcome is decided, an error's included
        _decided(130)  # (a second one would be a traceback)
        _say("sc: interrupted")
        # Ended by SIGINT as well, once done (see leave): a shell that gets Ctrl-C while it waits
        # for a command goes on with its script unless the command died of it.
        commands.ENDED_BY.append(_signal.SIGINT)
        return 130
    except Ended as ended:  # SIGTERM or SIGHUP as `sc --use` waited for its output, the use released
        commands.ENDED_BY.append(ended.signum)  # (no line: the end says it, as the default action did)
        return _decided(128 + ended.signum)
    except MemoryError:  # under a cap on memory (ulimit -v): the command's, or raised as its error was said
        status = _decided(1)
        _say_out_of_memory()
        return status


def _outcome(argv: Sequence[str]) -> int:
    """The exit status of ``sc ARGV``, decided (see :func:`_decided`): an error is said, in one
    line, once an interrupt can no longer come (one that came first is :func:`main`'s to say)."""
    if sys.stderr is None:
        # Started with descriptor 2 closed (`2>&-`): messages go nowhere, since print() given
        # None writes to stdout, where a job reads the path `--use` prints.
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - kept for the process
    if isinstance(sys.stdout, io.TextIOWrapper):
        # What stdout carries are paths, and names made of them: written as their bytes, as ls
        # writes them, whatever encoding PYTHONIOENCODING asks for (utf-8 cannot encode a name
        # that is not UTF-8, ascii one that is not ASCII: an internal error).
        codecs.register_error(_PATH_BYTES, _path_bytes)
        sys.stdout.reconfigure(encoding=sys.getfilesystemencoding(), errors=_PATH_BYTES)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        options = parse(argv)
        if options.action != "run":  # (sc run lets them through once its handlers are in place)
            _release_held_signals()
        if options.help:
            return commands.outcome(help_text())
        if options.version:
            from .. import __version__

            lines = [f"sc (shared-cache) {__version__}\n"]
            if options.verbose > 0:
                from ..loaders import writer
                from ..loaders.codecs import backends

                lines += [f"{codec}: {library}\n" for codec, library in backends().items()]
                lines.append(f"large archives: {writer.describe()}\n")
            return commands.outcome("".join(lines))
        return _decided(commands.run(options))
    except UsageError as e:
        status = _decided(e.exit_status)
        _say(f"sc: error: {clipped(str(e))} (see 'sc --help')")
        return status
    except SharedCacheError as e:
        status = _decided(e.exit_status)
        _say(f"sc: error: {clipped(str(e))}")
        return status
    except Exception as e:  # unless the system refused: a bug, said in one line, its details on request
        status = _decided(1)
        if memory_refused(e):  # (also a lazy import, or an ENOMEM, under ulimit -v: no bug)
            _say_out_of_memory()
            return status
        if isinstance(e, OSError):
            limit = over_limit(e)  # (whatever was being opened: the limit is the news)
            line = str(limit) if limit else f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            # (printable: a file name is anyone's bytes; shown decoded, a newline would end the line)
            _say(f"sc: error: {clipped(printable(line))}")
            return status
        if verbose:
            raise
        _say(f"sc: internal error ({type(e).__name__}: {clipped(printable(str(e)))}); rerun with -v for details")
        return status


def _decided(status: int) -> int:
    """``status``, the command's outcome, once Ctrl-C (SIGINT) is ignored in sc's own process:
    from the moment it is decided, an interrupt could only turn it into a traceback (after
    :func:`main` returned, or as an error is said) or into "interrupted" after another line
    (before: what :func:`main` says of one that comes here, or comes first).  A program that
    calls :func:`main` keeps its handler."""
    commands.ignore_interrupts()
    return status


_PATH_BYTES = "sharedcache.path-bytes"


def _path_bytes(error: UnicodeError) -> tuple[str | bytes, int]:
    """stdout's handler of what its encoding, the file system's, cannot encode: a byte of a path
    that was no text in it (decoded as a lone surrogate, as ``surrogateescape`` does) is written
    as itself; any other character, which only text read from a UTF-8 file under a locale of
    another encoding can hold (``sc config``), as its escape, rather than failing the command."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    char = error.object[error.start]
    if "\udc80" <= char <= "\udcff":
        return bytes([ord(char) - 0xDC00]), error.start + 1
    return char.encode("ascii", "backslashreplace").decode("ascii"), error.start + 1


def leave(status: int) -> NoReturn:
    """End the ``sc`` process with ``status``, skipping the interpreter's teardown.

    The teardown frees every module and object one by one, which the kernel does at once: it
    cost 44 ms after a miss had loaded the HTTP stack (``python -c 'import urllib3'`` against
    the same ending in ``os._exit``), and a sixteenth of a warm ``sc --use``.  What the teardown
    does that matters is done here: the connections to the indexes are closed (SQLite folds
    its journal back into the index as the last one closes), the exit handlers run (the index
    remakes its full-disk reserve in one), and the standard streams are flushed.  The threads
    left are daemons either way, and a writer process has been waited for.

    The outcome is decided by now, so Ctrl-C (SIGINT) is ignored from here (a command's success
    ignored it already: :func:`_decided`): it could only turn it into a traceback.
    """
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    close_caches()
    # A private name, but the one function that runs the handlers as the teardown would.
    atexit._run_exitfuncs()
    # A stream is None when the process started with that descriptor closed.
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as e:  # a reader that went away (`sc --list | head -0`), a full disk
        _say(f"sc: error: cannot write the output: {e.strerror or e}")
        status = status or 1
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except OSError:
        status = status or 1
    if commands.ENDED_BY and os.getpid() != 1:  # (PID 1 is not ended by a signal of its own)
        _end_by(commands.ENDED_BY[-1])  # (after Ctrl-C, or as sc run's command ended)
    os._exit(status)


def _end_by(signum: int) -> None:
    """End the process by signal ``signum`` (SIGINT after Ctrl-C, or the one that ended ``sc
    run``'s command); return if it does not end it (a signal whose default action is to stop,
    or to do nothing)."""
    import resource

    # The command dumped its core, if any: sc's own would be of no use, and could be large.
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if signum != _signal.SIGKILL:  # (whose action cannot be set, nor needs to be)
        _signal.signal(signum, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
