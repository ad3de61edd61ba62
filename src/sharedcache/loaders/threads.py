"""Threads the system may refuse: each is started if it can be, and its work done without it if not.

A batch system caps a job's tasks (a control group's ``pids.max``, ``ulimit -u``), and every
thread is a task; it may cap its memory too (``ulimit -v``), from which a thread's stack is
taken.  At either cap ``Thread.start`` raises RuntimeError.  No thread of the loaders is needed
for the work to be done: the read-ahead of :class:`~sharedcache.loaders.streams.Prefetch`, the
range workers of :mod:`sharedcache.loaders.ranged`, and the watchdog and the resolver of
:mod:`sharedcache.loaders.transport` each speed up or bound work that the calling thread can do
itself.  So each is started by :func:`start`, and where it is refused the caller does that work
(more slowly, or bounded by the socket timeouts alone), as one process does the work of the
writer processes when fork fails (:mod:`sharedcache.loaders.writer`).  :func:`tell` says so once.

A thread may also be made and then die before it runs: at the cap on memory, its first
allocations (its lock, its first frame) fail, Python reports the MemoryError as "ignored in
thread started by", and ``Thread.start``, which waits without a limit for the new thread to say
that it started, would wait for ever: a wedged job.  So :func:`start` waits for that word
:data:`START_WAIT` seconds at most.  A thread that has not said it by then is given up for
refused; which of the two goes on with the work is settled by a lock that the thread takes
before it does any (its ``run``) and the starter takes when it gives up, so that a thread
merely late to start, on a loaded host, does nothing, rather than the same work twice.

Python reports such a death on stderr, with a traceback (from ``threading.excepthook``, or as
"Exception ignored in thread started by").  For the threads started here, whose work goes on
without them, and for a thread of the process that the system refused memory as it started,
those reports are left unsaid (:func:`_quiet_deaths`): the user hears of the limit once, from
:func:`tell` or the command's last line.  A report that itself finds no memory may still show.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable

#: Seconds between a consumer's looks at whether the threads it waits on still live (see
#: :func:`ended_unheard`).
ALIVE_CHECK = 1.0

#: Seconds a new thread has to say that it started (it takes microseconds) before it is taken
#: for one that died as it started.
START_WAIT = 2.0

_refused = False  # a thread was refused in this process...
_told = False     # ...and a notice has said so
_quieted = False  # the reports of threads that died as they started are left unsaid


class _StartWait(threading.Event):
    """The event ``Thread.start`` waits on for the new thread's word (its ``_started``), waited
    on :data:`START_WAIT` seconds at most."""

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(START_WAIT if timeout is None else timeout)


def start(thread: threading.Thread) -> bool:
    """Start ``thread`` (a new one); False if the system refused it, or it died as it started
    (then it never does its work: the caller does)."""
    global _refused  # noqa: PLW0603 - a fact of this process, told once
    if not _quieted:
        _quiet_deaths()
    thread.quiet_death = True  # type: ignore[attr-defined]  # (read by the hook of _quiet_deaths)
    settled = threading.Lock()  # taken by the thread as it begins its work, or by us as we give it up
    work = thread.run

    def run() -> None:
        if settled.acquire(blocking=False):
            work()

    thread.run = run  # type: ignore[method-assign]  # the thread's own, as Timer's is
    if isinstance(getattr(thread, "_started", None), threading.Event):
        # Private to threading (3.11 to 3.13 alike): the one way to bound Thread.start's wait.
        thread._started = _StartWait()  # type: ignore[attr-defined]
    try:
        thread.start()
    except RuntimeError:  # "can't start new thread": no task or no memory left
        _refused = True
        return False
    if thread.is_alive() or not settled.acquire(blocking=False):
        return True  # it said it started, or it began its work after all
    _refused = True
    return False


def _quiet_deaths() -> None:
    """Leave unsaid Python's reports of a thread of ours that died of memory refused, and of any
    thread refused memory as it started (as :func:`~sharedcache.errors.memory_refused` judges
    it: a MemoryError, or the SystemError of C code that met an allocation failing under a cap);
    pass every other report on to the hooks there were."""
    import sys

    from ..errors import memory_refused

    global _quieted  # noqa: PLW0603 - hooks of this process, set once
    _quieted = True
    thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

    def thread_died(args: threading.ExceptHookArgs) -> None:
        if not (getattr(args.thread, "quiet_death", False) and memory_refused(args.exc_value)):
            thread_hook(args)

    def unraisable(report: sys.UnraisableHookArgs) -> None:
        # (Python 3.13 puts the thread's function into the message, where 3.11 gave it apart.)
        if not ((report.err_msg or "").startswith("Exception ignored in thread started by")
                and (memory_refused(report.exc_value) or _never_registered(report.exc_value))):
            unraisable_hook(report)

    threading.excepthook, sys.unraisablehook = thread_died, unraisable


def _never_registered(error: BaseException | None) -> bool:
    """Whether ``error`` is threading's bookkeeping failing at the end of a thread that was refused
    memory before it was registered: the KeyError of threading's ``Thread._delete`` (3.11 to 3.13
    alike), which no thread that started meets (the refusal itself goes unreported)."""
    if not isinstance(error, KeyError) or error.__traceback__ is None:
        return False
    last = error.__traceback__
    while last.tb_next is not None:
        last = last.tb_next
    code = last.tb_frame.f_code
    return code.co_name == "_delete" and code.co_filename == threading.__file__


def ended_unheard() -> MemoryError:
    """What a consumer raises when the threads it waits on have all ended without handing on their
    last word (their data, its end, or their failure), rather than wait for ever: each hands on
    whatever stops it, so only the handing on itself failed, and only memory refused makes that
    fail (the frame of the call, the queue's entry)."""
    return MemoryError("a thread ended without handing on its work")


def tell(notice: Callable[[str], None]) -> None:
    """Tell ``notice`` that a thread was refused, if one was and it has not been told yet."""
    global _told  # noqa: PLW0603 - told once per process
    if _refused and not _told:
        _told = True
        notice("the system refused another thread (a limit on tasks or memory): "
               "working in fewer threads, more slowly")
