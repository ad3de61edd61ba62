"""What a user sees while data is fetched: progress bars and waiting messages on stderr.

On a terminal the downloader shows a progress bar (tqdm when the ``progress`` extra is installed,
else a plain line redrawn in place) and waiting processes say whom they wait for.  Off a terminal
nothing is printed but errors, unless the user asks for it with ``-v``; ``-q`` silences all but
errors even on a terminal.
"""

from __future__ import annotations

import sys
import time

from .sizes import format_size

TYPE_CHECKING = False  # typing itself is not imported: it is costly on the warm path
if TYPE_CHECKING:
    from typing import Any, TextIO


class Reporter:
    """Decides what to print, and prints it to ``stream`` (stderr)."""

    def __init__(self, verbosity: int = 0, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.verbosity = verbosity
        self._last_wait = 0.0

    @property
    def chatty(self) -> bool:
        """Whether progress and waiting messages are shown."""
        return self.verbosity > 0 or (self.tty and self.verbosity == 0)

    def info(self, message: str) -> None:
        if self.verbosity > 0:
            print(f"sc: {message}", file=self.stream, flush=True)

    def warning(self, message: str) -> None:
        """A line that something was skipped or repaired: shown unless quiet."""
        if self.verbosity >= 0:
            print(f"sc: {message}", file=self.stream, flush=True)

    def waiting(self, message: str, *, every: float = 5.0) -> None:
        """A waiting message, at most one per ``every`` seconds."""
        now = time.monotonic()
        if self.chatty and now - self._last_wait >= every:
            self._last_wait = now
            print(f"sc: {message}", file=self.stream, flush=True)

    def bar(self, label: str) -> ProgressBar:
        return ProgressBar(label, self.stream, enabled=self.chatty and self.tty)


class ProgressBar:
    """A byte counter shown on a terminal; a callable fit for ``Recipe.populate(progress=)``."""

    def __init__(self, label: str, stream: TextIO, *, enabled: bool) -> None:
        self.label, self.stream, self.enabled = label, stream, enabled
        self._bar: Any = None
        self._plain_at = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = False
            else:
                self._bar = tqdm(
                    total=total, desc=self.label, unit="B", unit_scale=True, unit_divisor=1024,
                    file=self.stream, leave=False,
                )
        if self._bar:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)
        elif time.monotonic() - self._plain_at > 0.2:
            self._plain_at = time.monotonic()
            of = f" of {format_size(total)}" if total else ""
            print(f"\r{self.label}: {format_size(done)}{of}", end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar:
            self._bar.close()
        elif self._bar is False:
            print(file=self.stream, flush=True)
        self._bar = None
