"""What a user sees while data is fetched: progress bars and waiting messages on stderr.

On a terminal the downloader shows a progress bar (tqdm when the ``progress`` extra is installed,
else a plain line redrawn in place) and waiting processes say whom they wait for.  Off a terminal
nothing is printed but errors, unless the user asks for it with ``-v``: progress is then a line
every :data:`LINE_INTERVAL` seconds and one at the end, fit for a job's log.  ``-q`` silences all
but errors even on a terminal.

What is said never fails what is done: a stream that cannot be written (its reader gone, as in
``sc --use -v ... 2>&1 | head -1``, or a terminal hung up) silences the reporter and its bars for
the rest of the process, and the population goes on (it failed, and its waiters with it, as if
its data could not be written).  Only ``sc``'s reporter silences the process's standard error
too; the library's silences itself alone: the program's stderr is the program's.
"""

from __future__ import annotations

import os
import sys
import time

from . import _silence_stderr
from .errors import printable
from .sizes import format_size

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from typing import Any, TextIO


#: Seconds between two progress lines off a terminal.
LINE_INTERVAL = 5.0


class Reporter:
    """Decides what to print, and prints it to ``stream`` (stderr)."""

    def __init__(self, verbosity: int = 0, stream: TextIO | None = None, *, owns_stderr: bool = False) -> None:
        if stream is None:
            # A process started without stderr (a daemon that embeds the library) hears nothing;
            # print() given None would write to its stdout.
            stream = sys.stderr or open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - the reporter's for life
        self.stream: TextIO | None = stream  # None once silenced
        self.owns_stderr = owns_stderr  # (sc's: see silence)
        self.tty = self.stream.isatty()
        self.verbosity = verbosity
        self._last_wait = 0.0

    @property
    def chatty(self) -> bool:
        """Whether progress and waiting messages are shown."""
        return self.verbosity > 0 or (self.tty and self.verbosity == 0)

    def info(self, message: str) -> None:
        if self.verbosity > 0:
            self._say(message)

    def warning(self, message: str) -> None:
        """A line that something was skipped or repaired: shown unless quiet."""
        if self.verbosity >= 0:
            self._say(message)

    def waiting(self, message: str, *, every: float = 5.0) -> None:
        """A waiting message, at most one per ``every`` seconds."""
        now = time.monotonic()
        if self.chatty and now - self._last_wait >= every:
            self._last_wait = now
            self._say(message)

    def _say(self, message: str) -> None:
        # Messages quote what servers, archives and other users wrote (a status line, a path):
        # escaped, each stays one line and cannot steer the terminal, as an error's line.
        self.write(f"sc: {printable(message)}")

    def write(self, text: str, end: str = "\n") -> None:
        """Write ``text`` to the stream now; one that cannot be written silences the reporter."""
        if self.stream is None:
            return
        try:
            print(text, end=end, file=self.stream, flush=True)
        except (OSError, ValueError):  # (ValueError: a stream closed)
            self.silence()

    def silence(self) -> None:
        """Say nothing more: the stream cannot be written.  The reporter of ``sc``, which owns
        the process's standard error, replaces that too (:func:`sharedcache._silence_stderr`),
        as a stdout that cannot be written is.  A library's leaves it to the program, whose
        other threads write there (and whose next write may well get through)."""
        if self.owns_stderr and self.stream is sys.stderr:
            _silence_stderr()
        self.verbosity, self.tty, self.stream = -1, False, None

    def bar(self, label: str) -> ProgressBar:
        return ProgressBar(label, self, enabled=self.chatty, lines=not self.tty)


class ProgressBar:
    """A byte counter shown on a terminal, or as lines in a log (``lines``); a callable fit for
    ``Recipe.populate(progress=)``."""

    def __init__(self, label: str, reporter: Reporter, *, enabled: bool, lines: bool = False) -> None:
        self.label, self.reporter, self.enabled, self.lines = label, reporter, enabled, lines
        self._bar: Any = None
        self._plain_at = 0.0
        self._line_at: float | None = None  # when the last line was printed; None: no progress yet
        self._last: tuple[int, int | None] | None = None

    def _line(self, done: int, total: int | None) -> None:
        self._line_at = time.monotonic()
        of = f" of {format_size(total)} ({100 * done // total}%)" if total else ""
        self.reporter.write(f"sc: {self.label}: {format_size(done)}{of}")

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled or self.reporter.verbosity < 0:  # (silenced since it was made)
            return
        try:
            self._show(done, total)
        except (OSError, ValueError):  # tqdm's own writes
            self.reporter.silence()

    def _show(self, done: int, total: int | None) -> None:
        if self.lines:
            self._last = (done, total)
            if self._line_at is None:
                self._line_at = time.monotonic()  # the first line comes after an interval
            elif time.monotonic() - self._line_at >= LINE_INTERVAL:
                self._line(done, total)
            return
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = False
            else:
                # Without tqdm's monitor, a thread that would lower `miniters` for a bar whose
                # updates slowed down: ours asks for no minimum, and a thread is one more that the
                # system may refuse (a warning of three lines), or make and lose as it starts, which
                # wedges the process (see sharedcache.loaders.threads).
                bar = type("Bar", (tqdm,), {"monitor_interval": 0})
                self._bar = bar(
                    total=total, desc=self.label, unit="B", unit_scale=True, unit_divisor=1024,
                    file=self.reporter.stream, leave=False, miniters=1,
                )
        if self._bar:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)
        elif time.monotonic() - self._plain_at > 0.2:
            self._plain_at = time.monotonic()
            of = f" of {format_size(total)}" if total else ""
            self.reporter.write(f"\r{self.label}: {format_size(done)}{of}", end="")

    def close(self) -> None:
        if self._last is not None:
            self._line(*self._last)
            self._last = None
        if self._bar:
            try:
                self._bar.close()
            except (OSError, ValueError):
                self.reporter.silence()
        elif self._bar is False:
            self.reporter.write("")
        self._bar = None
