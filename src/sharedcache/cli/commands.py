"""The commands of ``sc``, as a table from action to function.

Each command takes the parsed :class:`~sharedcache.cli.parser.Arguments` and the
:class:`~sharedcache.repository.repositories.Repositories` built from them, and returns the exit
status.  The settings are built here, at the edge, from the config files, the environment and
the options (:mod:`sharedcache.config.files`), and passed down as values.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (signal's C module: signal imports enum, see sharedcache.cli.leave)
import os
import sys

# What a command needs is imported here, not in the functions: the sc scripts import this
# module before they freeze what start-up made (see bin/sc).
from .. import _PASSED_ON, _release_held_signals, _say
from ..config import files
from ..engine.fscache import DamagedBudget
from ..engine.leases import (
    INITIAL_PID_NAMESPACE,
    INTERRUPTS,
    Owner,
    forget_hosts,
    job_of,
    pid_namespace,
    process_of,
    start_time,
)
from ..errors import CacheError, Ended, SharedCacheError, UsageError, clipped, end_by_exception, printable, shown_proxy
from ..progress import Reporter
from ..repository.bases import group_id
from ..repository.repositories import (
    Repositories,
    acquire_deferring_interrupts,
    check_repository_name,
    release_deferring_interrupts,
)
from ..sizes import format_size

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    import signal
    import subprocess
    from collections.abc import Callable
    from types import FrameType
    from typing import TextIO

    from ..config.files import Effective
    from ..config.settings import FetchPolicy
    from ..repository.bases import Base
    from ..repository.records import Record
    from ..repository.repositories import Held
    from .parser import Arguments

# The owner of a use is the job that ran sc (see _owner), found from sc's parent.  The parent is
# read first thing: should it die while sc runs, sc is re-parented (to init or a subreaper),
# which must not inherit the use.
PARENT = os.getppid()


def run(options: Arguments) -> int:
    """Run the command ``options`` asks for; return its exit status."""
    # An option not given is None, False, or a count (-v, -q) of 0.
    given = {setting.key: value for setting in files.SETTINGS
             if (value := getattr(options, setting.key, None)) is not None and value is not False
             and setting.key not in ("verbose", "quiet")}
    given.update(_verbosity_given(options))
    effective = files.effective(given, os.environ)
    group = files.converted(effective, "group", group_id)  # (before sc config shows a row)
    if options.action == "config":
        return show_config(effective, files.fetch_policy(effective, os.environ), group)  # checked, as a miss would
    for key in ("max_size", "keep", "timeout", "verbose", "quiet"):
        if key in effective:
            setattr(options, key, effective[key][0])
    options.fetch = files.fetch_when_needed(effective, os.environ, given)
    repositories = Repositories(
        # The environment's, a file's, or the option's (files.effective); options.directories
        # stays the option's alone: list and gc fail for a base that -d names and they skip.
        files.value(effective, "directories"),
        reporter=Reporter(options.verbosity, owns_stderr=True),
        group=group,
    )
    assert options.action is not None
    return COMMANDS[options.action](repositories, options)


def _verbosity_given(options: Arguments) -> dict[str, object]:
    """The ``verbose`` and ``quiet`` settings that the options' -v and -q give, and ``options``'
    counts made the same: each -q takes back a -v, so that ``-q -v`` is neither and ``-vv -q``
    verbose, as every command speaks; ``sc config`` showed both turned on."""
    if not (options.verbose or options.quiet):
        return {}
    net = options.verbosity
    options.verbose, options.quiet = max(net, 0), max(-net, 0)
    if net == 0:  # the pair given cancels: neither, whatever the files say
        return {"verbose": False, "quiet": False}
    return {"verbose": net} if net > 0 else {"quiet": -net}


def use(repositories: Repositories, options: Arguments) -> int:
    # Ctrl-C is deferred from the making of the lease on (as for use() of Python); the data are
    # complete by then, and it is moot (see Population._ignore_interrupts) if the output takes
    # the path at once; else it ends sc's wait, which may be for good, its use released, whether
    # it comes then or came before.  (What came once the lease was made left the job the use
    # while sc said "interrupted", or printed the path, then a traceback; what came before the
    # wait was dropped, and sc hung there until a second one.)  SIGTERM and SIGHUP are held back
    # with it, and act as it does.  (Their default action ended sc with the lease made, no path
    # printed, and the use left to the job until it ended.)
    held, guarded = acquire_deferring_interrupts(lambda: _acquire(repositories, options, _owner(options)),
                                                 _endings())
    # Written out now, not at exit: a use whose path cannot be written, or that is interrupted
    # first, is released rather than left to its owner, who was never told of it.  The path is
    # the use's contract: a closed output fails it too.
    try:
        if sys.stdout is None:  # started with descriptor 1 closed
            raise SharedCacheError(f"{_UNWRITTEN}: the standard output is closed")
        if guarded:
            # Deferring no more, then what was deferred taken: in the other order, one that came
            # between the two would be left pending, and dropped once the path is written.
            INTERRUPTS.deferring = False
            interrupted, INTERRUPTS.pending = INTERRUPTS.pending, False
            # (a pipe nobody reads: an interrupt, or an end, releases the use; the endings stay
            # blocked after it, for good: once the path is written they are moot)
            _until_writable(sys.stdout, INTERRUPTS.take_endings(), interrupted=interrupted)
            INTERRUPTS.deferring = True
        output(f"{held.path}\n")
    except BaseException:
        if guarded:
            INTERRUPTS.deferring = True  # (first: no call comes before it)
        try:
            repositories.release_held(held)
        finally:
            if guarded:
                INTERRUPTS.disarm()  # (what came meanwhile is raised now, the use released)
        raise
    _decided_under(guarded)
    return 0


def _decided_under(guarded: bool) -> None:
    """The command's outcome decided, under the guard if ``guarded``: an interrupt deferred
    meanwhile is moot, and in sc's own process so is any later one (see sharedcache.cli.leave);
    a program that called main() has its handler back."""
    ignore_interrupts()
    if guarded:
        INTERRUPTS.pending = False
        INTERRUPTS.disarm()


def _until_writable(stream: TextIO, ending: tuple[int, ...] = (), *, interrupted: bool = False) -> None:
    """Wait until ``stream`` takes a write: a pipe whose reader does not read, or a terminal, may
    hold it.  A file never does, and the module that waits is not loaded for one.  The signals
    ``ending``, which the caller blocked, end a wait if there is one (raising
    :class:`~sharedcache.errors.Ended`), one that came before it included, and are blocked again
    after it.  ``interrupted``: Ctrl-C came before, held back by the caller; it ends a wait if
    there is one (raising KeyboardInterrupt), as one that comes during it does."""
    import stat

    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # (io.UnsupportedOperation: a stream of Python's, no descriptor)
        return
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return
    try:
        import select
    except ImportError:  # (no descriptor left to load it with: the write, which needs none, goes on)
        return

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if poller.poll(0):
        return
    if interrupted:
        raise KeyboardInterrupt
    if not ending:
        poller.poll()
        return
    handlers = {signum: _signal.signal(signum, end_by_exception) for signum in ending}
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, ending)
    try:
        poller.poll()
    finally:
        _signal.pthread_sigmask(_signal.SIG_BLOCK, ending)
        for signum, handler in handlers.items():
            _signal.signal(signum, handler)


def _endings() -> tuple[int, ...]:
    """The signals that end sc (SIGTERM, SIGHUP) that its acquire holds back with Ctrl-C: those
    whose default action is in force, or that end it by an exception (``sc run`` as a PID
    namespace's first process); in sc's own process only, a program that calls main() keeping
    its signals as they are (see :data:`ENDS_THE_PROCESS`)."""
    if not ENDS_THE_PROCESS:
        return ()
    return tuple(signum for signum in (_signal.SIGTERM, _signal.SIGHUP)
                 if _signal.getsignal(signum) in (_signal.SIG_DFL, end_by_exception))


#: Whether this process is sc's own, ended by :func:`sharedcache.cli.leave` (:func:`main`
#: called with no arguments), not a program that calls :func:`main`: only sc's own ignores
#: Ctrl-C once the outcome is decided.
ENDS_THE_PROCESS = False


_UNWRITTEN = "cannot write the output"


def output(text: str) -> None:
    """Write ``text`` to the standard output now.  An output that cannot take it (a full disk
    under a redirection, a reader gone) fails the command in a line that says so, where the
    error of the system alone read as the cache's.  Started with the output closed, a command
    writes nothing and fails nothing (one run for its exit status), :func:`use` excepted."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:
        # What stays in the stream's buffer would fail the flush at exit (leave) once more.
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - kept for the process
        raise SharedCacheError(f"{_UNWRITTEN}: {e.strerror or e}") from None


def outcome(text: str) -> int:
    """Write ``text``, the command's outcome, to the standard output (see :func:`output`); return
    0.  It goes in pieces that a pipe with room takes whole, each once the output has room
    (:func:`_until_writable`), Ctrl-C heeded meanwhile: a pipe nobody reads holds sc until it
    is interrupted.  Ctrl-C is ignored from just before the last piece (one that came first is
    raised): once the output was whole, it made sc say "interrupted" (130) after it."""
    pieces = [text[start:start + _PIECE] for start in range(0, len(text), _PIECE)] or [""]
    for number, piece in enumerate(pieces, 1):
        if sys.stdout is not None:
            _until_writable(sys.stdout)
        if number == len(pieces):
            ignore_interrupts()
        output(piece)
    return 0


#: The characters of a piece of :func:`outcome`: at most ``PIPE_BUF`` (4096) bytes, written whole
#: by a pipe that reports room, even at ten bytes a character (a character escaped).
_PIECE = 400


def ignore_interrupts() -> None:
    """Ignore Ctrl-C (SIGINT) from now on, the command's outcome decided, in sc's own process
    only (:data:`ENDS_THE_PROCESS`): a program that calls main() keeps its handler.  One that
    came first is raised."""
    if ENDS_THE_PROCESS:
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


def unuse(repositories: Repositories, options: Arguments) -> int:
    if options.pid is not None:
        owner = process_of(options.pid)
        owners = [Owner.of(owner) or Owner.ended(owner)]  # (the last one is named by an error)
        # A process of another PID namespace (a container's job) names itself in its leases as
        # that namespace does; a use taken for it here with --pid names it as this one does.
        inside = Owner.in_its_namespace(owner)
        if inside is not None:
            owners.insert(0, inside)
    else:
        # The nearest process first: a shell execs its last command (bash -c '...; sc --unuse'),
        # so sc itself, or a wrapper it runs under, may be the very process that took the use.
        found = (Owner.of(pid) for pid in _job_chain()[0]) if PARENT != 0 else iter(())
        owners = [Owner.current(), *(owner for owner in found if owner is not None)]
    # Ctrl-C is deferred from the removal of the lease on: it said "interrupted" of a release
    # done (the index's commit, the trash emptied, the link removed after it).  SIGTERM and
    # SIGHUP, whose default action ended sc there and left a last use's repository undeleted
    # until gc, are blocked over the release, and act once it is done (as for sc run's).
    ending = {_signal.SIGTERM, _signal.SIGHUP}
    mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, ending)
    try:
        deleted, guarded = release_deferring_interrupts(lambda: repositories.release(
            options.loaders, owners=owners, name=options.name, keep=options.keep, max_size=options.max_size,
            timeout=options.timeout))
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
    _decided_under(guarded)
    repositories.reporter.info("repository deleted" if deleted else "use released")
    return 0


def location(repositories: Repositories, options: Arguments) -> int:
    path = repositories.locate(options.loaders, name=options.name)
    if path is None:
        repositories.reporter.info("no such repository")
        return 1
    return outcome(f"{path}\n")


def run_command(repositories: Repositories, options: Arguments) -> int:
    """Hold a use as sc's own process while COMMAND runs; COMMAND inherits the entry's lock.

    The lock is a kernel lock held while any process keeps the descriptor open: should sc be
    killed (SIGKILL, the OOM killer), the command and what it started go on holding the data,
    which stays until they end (then ``sc gc``, or the next release, deletes it unless kept).
    So does what the command leaves running as it ends, but for sc as PID 1 of a PID namespace,
    which kills it first (see :func:`_end_the_namespace`).
    """
    import signal

    command = options.command
    # Ignored (inherited: an ignored signal stays so across exec), SIGCHLD has the kernel reap
    # the command itself, and its status is lost: Popen reads 0 for a command that failed.  Its
    # command gets the default, as under `timeout`.
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    forwarded = _passed_on()  # (asked before sc sets a handler of its own)
    # What a job is told (USR1 and USR2: a batch system's "time is almost up") is the command's
    # to hear: their default action would end sc, orphaning the command, or, while sc populates,
    # leaving its work for a takeover.  One that comes before the command is being started is not
    # passed on (a command just started has no handler for it yet, and would die of it): sc says
    # so (see _run_holding).
    warnings: list[signal.Signals] = [s for s in forwarded if s in (signal.SIGUSR1, signal.SIGUSR2)]
    early: list[int] = []
    original = {s: signal.signal(s, lambda sig, _: early.append(sig)) for s in warnings}
    # SIGTERM and SIGHUP left to their default action end sc by an exception instead, until the
    # command's fork takes them (see _run_holding): held back from the making of the lease, they
    # act in _run_holding's try, which releases the use before sc ends by them.  Their default
    # action, there, killed sc with its own lease made, and left the use, and a repository it had
    # made, until a gc.  The kernel drops a signal left to its default action that is sent to
    # the first process of a PID namespace (a container's entrypoint): a SIGTERM that came while
    # sc waited for another's population was lost, the command started, and the orchestrator
    # waited out its grace period; there Ctrl-C is handled so too.  A population of sc's own
    # undoes itself first (see repository.population).
    for ending in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        # (A program that calls main() keeps its signals, as PID 1 not.)
        by_exception = os.getpid() == 1 or (ENDS_THE_PROCESS and ending != signal.SIGINT)
        if by_exception and signal.getsignal(ending) == signal.SIG_DFL:
            original[ending] = signal.signal(ending, end_by_exception)
    try:
        # As PID 1, what came since sc started was held back for these handlers (see
        # sharedcache._hold_signals_as_init): it acts now, in this try.
        _release_held_signals()
        # Ctrl-C is deferred from the making of the lease to _run_holding's try, which releases
        # it (it left the use, and the repository, to gc after saying "interrupted"), and so are
        # SIGTERM and SIGHUP (their exception, raised before that try, left them so).
        held, guarded = acquire_deferring_interrupts(lambda: _acquire(repositories, options, Owner.current()),
                                                     _endings())
        try:
            return _run_holding(repositories, options, command, held, forwarded, early, guarded)
        finally:
            if guarded:
                INTERRUPTS.disarm()
    except Ended as ended:  # (its use released, or never taken)
        return _ended_by(-ended.signum)
    finally:
        for sig, handler in original.items():
            signal.signal(sig, handler)


def _run_holding(repositories: Repositories, options: Arguments, command: list[str], held: Held,
                 forwarded: tuple[signal.Signals, ...], early: list[int], guarded: bool) -> int:
    """:func:`run_command` once the use is held, passing on the signals ``forwarded``
    (:func:`_passed_on`); ``early``: the warnings (SIGUSR1, SIGUSR2) that came before, not
    passed on; ``guarded``: whether Ctrl-C is deferred until the use is in hand here."""
    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    unblocked: list[set[int | signal.Signals]] = []  # the mask before the command's fork blocked what sc takes
    try:
        if guarded:
            INTERRUPTS.settle()  # in the try: the release below runs
        # (Within: a signal that ends sc as PID 1 may come at once, and the use is released.)
        import signal

        # From here on, the signals are the command's: until its fork they are recorded, to be
        # passed on once there is a child (the default action of SIGINT, SIGTERM and SIGHUP ended
        # sc, and the command, just started, ran on never told; a warning went to run_command's
        # handler, which only says what came before, and was dropped unsaid).
        recorded: list[int] = []
        for sig in forwarded:
            previous[sig] = signal.signal(sig, lambda number, _: recorded.append(number))
        # (Said once no more can come: a later one is recorded, and passed on.)
        for number in dict.fromkeys(early):
            repositories.reporter.warning(f"{signal.Signals(number).name} came before the command ran: not passed on")
        # From just before the fork on, they are blocked instead, and taken with what tells a
        # terminal's from another's (see _wait_passing_on): a handler cannot tell them apart, and
        # passed on the Ctrl-C that the command, in sc's process group, had from the terminal.
        taken = {*forwarded, signal.SIGCHLD}
        lock = held.cache.lock_for_reading(held.name)
        try:
            try:
                child = _started(command, dict(os.environ, SC_PATH=str(held.path)), lock, taken, unblocked)
            except OSError as e:
                if unblocked:  # what came since goes to the handlers that record it
                    signal.pthread_sigmask(signal.SIG_SETMASK, unblocked[0])
                # sc ends by what would have ended it (a warning ends nothing: there is no one to warn).
                if endings := [number for number in recorded if number not in (signal.SIGUSR1, signal.SIGUSR2)]:
                    return _ended_by(-endings[0])
                # (The name is the caller's, a newline or a terminal control in it: one line still.)
                _say(f"sc: error: cannot run {clipped(printable(command[0]), 200)}: {e.strerror}")
                # As shells and timeout(1) tell them apart: not found, or found and not runnable.
                return 127 if isinstance(e, FileNotFoundError) else 126
        finally:
            os.close(lock)  # the child has its copy; sc's own use is its lease
        # These handlers pass on what another thread of sc takes, since a mask is a thread's
        # own.  What was recorded is passed on once they are in place, so that none comes in
        # between unheard.
        for sig in forwarded:
            previous.setdefault(sig, signal.signal(sig, lambda number, _: child.send_signal(number)))
        for number in recorded:
            child.send_signal(number)
        status = _wait_passing_on(child, taken)
        if os.getpid() == 1:
            _end_the_namespace(repositories.reporter)
    finally:
        _release_deferring_signals(repositories, held, options.keep, forwarded, previous, unblocked)
    return _ended_by(status)


def _passed_on() -> tuple[signal.Signals, ...]:
    """The signals that ``sc run`` passes on to its command: SIGINT, SIGTERM, SIGHUP, SIGUSR1
    and SIGUSR2, but those that sc is ignoring (as it started: asked before it sets a handler).

    One that its caller ignores stays ignored, by sc and by the command, as a shell leaves it:
    ``nohup`` ignores SIGHUP, a script's background job SIGINT (and SIGQUIT, which sc leaves
    alone).  sc caught them, passed them on, and started the command with their default
    action: the hangup that nohup was there to ignore ended the command, and sc with 129.
    """
    import signal

    return tuple(signal.Signals(sig) for sig in _PASSED_ON if signal.getsignal(sig) != signal.SIG_IGN)


def _release_deferring_signals(
        repositories: Repositories, held: Held, keep: bool, forwarded: tuple[signal.Signals, ...],
        previous: dict[int, Callable[[int, FrameType | None], object] | int | None],
        unblocked: list[set[int | signal.Signals]]) -> None:
    """Release ``held``, the use of ``sc run``, with the signals it passes on (``forwarded``)
    blocked over the release, and the ``previous`` handlers of those it replaced put back first: one that comes
    meanwhile acts once the release is done, on them.  (SIGTERM to sc as PID 1, whose handler
    raises, broke the release off and left the use for gc; to another sc its default action
    did.)  The mask is then the one before the command's fork (``unblocked``, if it came), else
    the one before this."""
    import signal

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
    try:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        repositories.release_held(held, keep=keep)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked[0] if unblocked else blocked)


def _ended_by(status: int) -> int:
    """The exit status of ``sc run`` whose command ended with ``status`` (-N: killed by signal N)."""
    if status < 0:
        ENDED_BY.append(-status)  # sc ends by it too, once done (see sharedcache.cli.leave)
    return status if status >= 0 else 128 - status


#: The signal that killed ``sc run``'s command.  sc then ends by it too, as the command would
#: have ended its caller's wait: a shell that gets Ctrl-C while it waits goes on (runs the next
#: command of a loop) unless what it waited for died of SIGINT.
ENDED_BY: list[int] = []


#: ``si_code`` of a signal the kernel sent (``SI_KERNEL``), as a terminal does.
_SI_KERNEL = 0x80


def _started(command: list[str], env: dict[str, str], lock: int, taken: set[signal.Signals],
             unblocked: list[set[int | signal.Signals]]) -> subprocess.Popen[bytes]:
    """``command`` started with ``env``, given the descriptor ``lock``; the signals ``taken``
    blocked in sc from just before its fork, and the mask that this replaced appended to
    ``unblocked`` (not if the fork never came), for the caller to restore.

    Blocked earlier, a terminal's signal that came while Popen prepared the fork would have been
    taken for one the command had too; the hook runs as the fork is made, in the parent, Python
    running no handler in between.  The command gets the mask sc had, and the default action of
    the signals sc handled (as exec gives it), in that order: one that comes meanwhile acts as it
    would on the command, where the handler inherited from sc took it, unheard.
    """
    import signal
    import subprocess

    def as_exec_leaves_them() -> None:  # (in the child, before the exec)
        for sig in taken - {signal.SIGCHLD}:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked[0])

    global _fork_hooked  # noqa: PLW0603 - a hook of os.register_at_fork stays for the process: made once
    if not _fork_hooked:
        os.register_at_fork(before=_block_as_the_command_forks)
        _fork_hooked = True
    _FORKING_COMMAND.append((taken, unblocked))
    try:
        # (A preexec_fn is what has Popen run the hooks of os.register_at_fork.)
        return subprocess.Popen(command, env=env, pass_fds=(lock,),
                                preexec_fn=as_exec_leaves_them)  # noqa: PLW1509 - it takes no lock another thread holds
    finally:
        _FORKING_COMMAND.clear()


#: The signals to block as the fork of ``sc run``'s command is made, and the list to append the
#: mask they replace to (see _started); empty at any other fork.  (A hook of os.register_at_fork
#: cannot be removed: it is registered once, and does nothing at other forks.)
_FORKING_COMMAND: list[tuple[set[signal.Signals], list[set[int | signal.Signals]]]] = []
_fork_hooked = False


def _block_as_the_command_forks() -> None:
    import signal

    for taken, unblocked in _FORKING_COMMAND:
        unblocked.append(signal.pthread_sigmask(signal.SIG_BLOCK, taken))


def _wait_passing_on(child: subprocess.Popen[bytes], taken: set[signal.Signals]) -> int:
    """Wait for ``child``, passing on to it each of the signals ``taken`` but SIGCHLD that sc
    gets, save one that reached it too; return its status.

    The signals are blocked (since the child's fork: see :func:`_started`), and taken with
    :func:`signal.sigtimedwait`, for their ``si_code``, which a handler does not see.  SIGCHLD
    is taken with them, to hear at once that the child ended.  As PID 1 of a PID namespace (a
    container's entrypoint), sc also reaps the orphans that the kernel makes its children, as an
    init must: else each stays a zombie, holding its pid.
    """
    import signal

    init = os.getpid() == 1
    # The child is polled with SIGCHLD blocked: an end after that leaves it pending.  The timeout
    # covers a SIGCHLD that sc ignores (the kernel then sends none), or that another thread took.
    while child.poll() is None:
        if init:
            _reap_orphans(child.pid)
        info = signal.sigtimedwait(taken, 1.0)
        if info is not None and info.si_signo != signal.SIGCHLD and not _reached_it_too(child, info):
            child.send_signal(info.si_signo)
    # What came as the child ended was for it (a terminal's Ctrl-C that it handled, then ended):
    # taken, passed on to no one, rather than left to end sc once its use is released.
    while signal.sigtimedwait(taken, 0) is not None:
        pass
    return child.returncode


def _reap_orphans(command: int) -> None:
    """Reap the children that have ended, but for ``command``, whose status its ``Popen`` takes."""
    while True:
        try:
            # Looked at without reaping (WNOWAIT) first: the command's end is not ours to take.
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if ended is None or ended.si_pid == command:
            return
        os.waitpid(ended.si_pid, 0)


#: How long ``sc run`` as PID 1 waits for the processes its command left to end, once it has
#: killed them (see _end_the_namespace).
_LEFT_ENDING = 5.0


def _end_the_namespace(reporter: Reporter) -> None:
    """As PID 1 of a PID namespace, once the command has ended: kill every other process of the
    namespace (what the command left running) and reap them, before sc releases its use.

    They held the repository's lock, which the command passed on, and the release could not
    delete it: it stayed, unused, until a gc, though the kernel kills them as PID 1 ends, a
    moment later.  SIGCHLD is blocked (since the command's fork: see :func:`_started`), and
    waited for; the wait is bounded, for one that sc may not kill (another user's) or that is
    slow to die (in uninterruptible sleep): the release then leaves the repository to them.
    """
    import signal
    import time

    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:  # (none left)
        return
    deadline = time.monotonic() + _LEFT_ENDING
    while True:
        try:
            ended, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # all reaped
            return
        if ended == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                reporter.warning(f"processes that the command left did not end within {_LEFT_ENDING:.0f} s of "
                                 "SIGKILL; they hold the repository until they do")
                return
            signal.sigtimedwait({signal.SIGCHLD}, left)


def _reached_it_too(child: subprocess.Popen[bytes], info: signal.struct_siginfo) -> bool:
    """Whether the signal ``info`` tells of went to ``child`` as well: the kernel's signal to a
    terminal's foreground process group (Ctrl-C, the hangup as its session ends).

    A terminal sends only to its foreground group, so sc getting it says that its group was it;
    the terminal is not asked: as a session ends, its processes lose it before sc could ask.
    The child shares it unless it made its own (setsid, a shell with job control).
    """
    import signal

    # Sent by a process (kill(), sigqueue()): to sc alone, as far as can be told; to its group
    # (a shell passing on its hangup) reads the same.
    if info.si_code != _SI_KERNEL:
        return False
    if info.si_signo == signal.SIGHUP and os.getsid(0) == os.getpid():
        return False  # a hangup goes to the session's leader alone
    try:
        return os.getpgid(child.pid) == os.getpgrp()
    except ProcessLookupError:
        return False


def listing(repositories: Repositories, options: Arguments) -> int:
    if options.directories is not None:
        repositories.skip_missing()
    rows = repositories.listing()
    for line in _cacheless_named(repositories, options):
        repositories.reporter.warning(line)
    if options.json:
        import json

        outcome(json.dumps(rows, indent=2) + "\n")
    else:
        outcome(_table(rows))
    return 1 if _fails_for_named_skips(repositories, options) else 0


def _table(rows: list[Record]) -> str:
    """The rows of ``sc list`` as its table, under a line of headings."""
    lines = [f"{'NAME':24} {'STATE':17} {'SIZE':>10}  {'PATH':40} USERS\n"]
    for row in rows:
        # In use without a lease: held through its lock (by what a killed `sc run` started).
        # Another host's or PID namespace's process is qualified (PID@MACHINE-ID, PID@pid:[NS]).
        # (escaped too: a lease's machine id is text a member of a group cache may have chosen)
        # Unused, and held by waiting uses: "waiters" (see Base.await_population).
        users = printable(",".join(row["owners"])) or (
            "a lock" if row["in_use"] else "waiters" if row["awaited"] else "-")
        state = row["state"] + (" (kept)" if row["keep"] else "")
        if row["state"] == "populating":  # how far it has got (its size is known once it is ready)
            done, total = row["done"], row["total"]
            state += f" {min(100, 100 * done // total)}%" if total else f" {format_size(done)}"
        elif row["state"] == "failed":  # when, and why: the uses that asked meanwhile were told so
            import time

            why = row["error"].removeprefix(f"repository {row['name']!r}: ")
            users = f"{max(0, time.time() - row['failed_at']):.0f} s ago: {clipped(printable(why), 200)}"
        elif row["state"] == "damaged":  # why no use takes it, and what deletes it
            why = clipped(printable(row["error"]), 200)
            users = why if users == "-" else f"{users}: {why}"
        size = "-" if row["size"] is None else format_size(row["size"])
        # Names and paths are escaped: in a group cache another member chose them.
        name, path = printable(row["name"]), printable(row["path"] or "-")
        lines.append(f"{name:24} {state:17} {size:>10}  {path:40} {users}\n")
    return "".join(lines)


def gc(repositories: Repositories, options: Arguments) -> int:
    if options.forget_host:
        hosts = frozenset(host for given in options.forget_host for host in given.split(",") if host)
        for host in sorted(hosts):
            # A machine id as leases record it (leases.machine_id): an id that is not one
            # (a pid@id copied from `sc list`, a typo with a space) would match no lease and
            # forget nothing, silently.
            if not host.replace("-", "").replace("_", "").isalnum():
                raise UsageError(f"--forget-host: {printable(host)!r} is not a machine id "
                                 "(the MACHINE-ID of a user PID@MACHINE-ID that 'sc list' shows)")
        if not hosts:
            raise UsageError("--forget-host: no machine id given")
        forget_hosts(hosts)
    names = _names_to_evict(options.evict)
    if options.directories is not None:
        repositories.skip_missing()
    # Evicted before the collection, which removes what an eviction could not (a link whose lock
    # file was planted).
    evicted, refusals = repositories.evict(names) if names else ({}, [])
    reports = {base: {"evicted": ", ".join(map(repr, deleted))} for base, deleted in evicted.items()}
    for base, report in repositories.collect().items():
        reports.setdefault(base, {}).update(report)
    lines = []
    for base, report in reports.items():
        done = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report.items() if v)
        # Escaped whole, as `sc list` escapes its rows: in a group cache another member chose the
        # names of populations (a stuck one is named, and so is its lock's path), and a base's
        # path may hold any byte (one that is no text is shown as `sc list` shows it).
        lines.append(printable(f"{base}: {done or 'nothing to do'}") + "\n")
    lines.extend(printable(line) + "\n" for line in _cacheless_named(repositories, options))
    if options.verbosity >= 0:  # (-q: nothing but errors, and a report of what was done is none)
        outcome("".join(lines))
    for refusal in refusals:  # (each its line; the others of the list were evicted all the same)
        _say(f"sc: error: {clipped(printable(refusal))}")
    failed = _fails_for_named_skips(repositories, options)
    return 1 if refusals or failed else 0


def _cacheless_named(repositories: Repositories, options: Arguments) -> list[str]:
    """A line for each base that -d names and that holds no cache to look into (this user's
    own, or the group's): a listing or a report that said nothing of it read as that of a cache
    with nothing in it, or nothing to clean, where the user may have named the wrong directory.
    The bases of a setting or the defaults are every command's candidates, where nothing may
    ever have been made: a line for each would be noise."""
    if options.directories is None:
        return []
    whose = "yours" if repositories.group is None else f"group {repositories.group}"
    return [f"{path}: no cache of {whose} here" for path in repositories.cacheless()]


def _fails_for_named_skips(repositories: Repositories, options: Arguments) -> bool:
    """Whether ``sc list`` or ``sc gc``, its outcome written, fails for a base that -d names and
    that it skipped (another user's, a cache it refuses, an index it cannot open, a read-only
    file system, a directory that is not there); why is said under -q too, as an error.

    A base that -d names is one the command was asked to look into: skipping it must fail the
    command, for a script or a cron job to tell.  The bases of a setting or the defaults
    (/tmp:/var/tmp) are where every command looks, and where another user may squat this one's
    directory: skipping one of those fails nothing."""
    skipped = repositories.unusable if options.directories is not None else {}
    if options.verbosity < 0:  # (-q silenced the warning that said why: failing the command, it is an error)
        for path, why in skipped.items():
            _say(f"sc: error: {clipped(printable(f'skipping {path}: {why}'))}")
    return bool(skipped)


def _names_to_evict(given: list[str]) -> list[str]:
    """The repository names of ``--evict NAME`` (one to each occurrence, as given: a name may
    hold a comma), each checked before anything is done (a name no repository may have is a
    usage error)."""
    return [check_repository_name(name) for name in dict.fromkeys(given)]


COMMANDS: dict[str, Callable[[Repositories, Arguments], int]] = {
    "use": use,
    "unuse": unuse,
    "location": location,
    "run": run_command,
    "list": listing,
    "gc": gc,
}


def show_config(effective: Effective, fetch: FetchPolicy, group: int | None) -> int:
    """``sc config``: every setting, its effective value and where it comes from (for a
    credential setting not set, what the standard variables or default paths give, and which);
    ``fetch`` is the fetch policy they make, ``group`` the gid of the group cache they name."""
    from ..config.settings import FetchPolicy, shown_rewrites
    from ..loaders.transport import curl_proxies, shown_chain
    from ..repository.bases import DEFAULT_DIRECTORIES, Base, base_directories

    if fetch.credentials is not None:  # (as a miss that downloads checks them)
        fetch.credentials.check_variables()
    defaults = FetchPolicy()
    # (A credential setting that is not set may be what a standard variable or a default path
    # gives: shown, lest a login or token be sent that sc config says nothing of.)
    found = fetch.credentials.found() if fetch.credentials is not None else {}
    # (Made before the rows: naming this user's directory in a base fails for a user its
    # namespace does not map, and a failure prints no row.)
    bases = [Base(base, group) for base in base_directories(files.value(effective, "directories"))]
    rows = []  # all of them made before any is printed: a failure prints none
    for setting in files.SETTINGS:
        key = setting.key
        if key in effective:
            value, where = effective[key]
        elif key == "directories":
            value, where = ":".join(DEFAULT_DIRECTORIES), "default"
        elif key in found:
            value, where = found[key]
        else:
            value, where = getattr(defaults, key, None), "default"
        if key == "proxy" and fetch.proxy is not None:  # user info in a proxy URL is not shown
            value = shown_chain(fetch.proxy)
        elif key == "rewrite" and isinstance(value, str):  # nor in a mirror's
            value = shown_rewrites(value)
        elif key == "proxy":
            value, where = _curl_proxies(*curl_proxies(os.environ)) or (
                "(none: curl's variables apply)", where)
        if key in ("verbose", "quiet") and type(value) is int:  # the count of -v or -q given
            value = value > 0
        text = "yes" if value is True else "no" if value is False else "(not set)" if value is None else value
        if key == "max_size":
            where += _stored_budgets(bases)
        rows.append(f"{key} = {text}  # {where}\n")
    warnings = [warning for warning in (base.cleaning_warning() for base in bases) if warning is not None]
    status = outcome("".join(rows))
    for warning in warnings:
        _say(f"sc: {warning}")
    return status


def _stored_budgets(bases: list[Base]) -> str:
    """What ``sc config`` shows beside ``max_size``: the budget that the cache of each candidate
    base directory holds, which a use that gives none keeps to, until another is given."""
    stored = []
    for base in bases:
        try:
            budget = base.stored_budget()
        except DamagedBudget as e:  # (or another member's that this user may not read: gc removes either)
            stored.append(f"{base.path} unreadable ({e})")
            continue
        except CacheError as e:  # (squatted: what is there is no budget of this user's)
            stored.append(f"{base.path} refused ({e})")
            continue
        if budget is not None:
            stored.append(f"{base.path} {format_size(budget)}")
    return f"; stored: {', '.join(stored)}" if stored else ""


def _curl_proxies(http: tuple[str, str] | None, https: tuple[str, str] | None) -> tuple[str, str] | None:
    """What ``sc config`` shows of the proxies that curl's variables give ``http://`` and
    ``https://`` URLs (each a variable and its proxy, or None), and where they come from; None
    if neither is set."""
    from ..config.settings import DIRECT

    if http == https:
        return None if http is None else (shown_proxy(http[1]), http[0])
    found = (("http", http), ("https", https))
    return (", ".join(f"{DIRECT if proxy is None else shown_proxy(proxy[1])} for {scheme}://"
                      for scheme, proxy in found),
            ", ".join(proxy[0] for _, proxy in found if proxy is not None))


def _acquire(repositories: Repositories, options: Arguments, owner: Owner) -> Held:
    return repositories.acquire(
        options.loaders, owner=owner, name=options.name, size=options.size, keep=options.keep,
        max_size=options.max_size, timeout=options.timeout, fetch=options.fetch,
    )


def _owner(options: Arguments) -> Owner:
    """The owner of the use: the process ``--pid`` names, else the job that ran sc."""
    if options.pid is not None:
        # A thread's id names its process: a lease names processes, which every judge can find.
        owner = Owner.of(process_of(options.pid))
        if owner is None:
            raise UsageError(f"--pid {options.pid}: no such process")
        return owner
    return _job()


def _job() -> Owner:
    """The job sc's parent belongs to (:func:`~sharedcache.engine.leases.job_of`: past
    wrappers and subshells), with the last subshell on the way as a second owner."""
    chain, copy = _job_chain()
    owner = Owner.of(chain[-1])
    if owner is None:
        raise SharedCacheError("the process that ran sc has exited; there is no one to own the use")
    started = None if copy is None else start_time(copy)
    if copy is not None and started is not None:
        owner.via = (copy, started)
    return owner


def _job_chain() -> tuple[list[int], int | None]:
    if PARENT == 0:
        raise SharedCacheError("sc's parent is outside its PID namespace (sc is the namespace's first process, or "
                               "was entered into it, as nsenter and docker exec do): there is no job to own the use "
                               "here; pass --pid to name its owner")
    if PARENT == 1 and pid_namespace() == INITIAL_PID_NAMESPACE:
        raise SharedCacheError("the process that ran sc has exited; there is no one to own the use")
    return job_of(PARENT)
