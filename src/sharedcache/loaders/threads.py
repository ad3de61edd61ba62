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
"""

from __future__ import annotations

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

_refused = False  # a thread was refused in this process...
_told = False     # ...and a notice has said so


def start(thread: threading.Thread) -> bool:
    """Start ``thread`` (a new one); False if the system refused it."""
    global _refused  # noqa: PLW0603 - a fact of this process, told once
    try:
        thread.start()
    except RuntimeError:  # "can't start new thread": no task or no memory left
        _refused = True
        return False
    return True


def tell(notice: Callable[[str], None]) -> None:
    """Tell ``notice`` that a thread was refused, if one was and it has not been told yet."""
    global _told  # noqa: PLW0603 - told once per process
    if _refused and not _told:
        _told = True
        notice("the system refused another thread (a limit on tasks or memory): "
               "working in fewer threads, more slowly")
