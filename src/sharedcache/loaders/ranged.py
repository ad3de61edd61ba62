"""Parallel ranged reading: one in-order stream of bytes made of parts fetched at the same time.

This module owns how a span of bytes is split into parts (:func:`part_size`), the worker threads
that fetch the parts, and :class:`RangedReader`, which hands the bytes on strictly in order.  It
knows nothing of HTTP: a part is anything that follows :class:`Part`; :mod:`sharedcache.sources`
supplies validated HTTP range requests.

Memory is bounded by a window: workers claim parts only up to ``connections + 1`` parts ahead of
the one being read (``connections`` being fetched, one finished and waiting), and a part holds
at most its own bytes, so at most ``(connections + 1) * part size`` is buffered, 64 MiB at most.
The consumer reads the part at the head of the window as its bytes arrive.

Workers are threads, and the system may refuse them (:mod:`sharedcache.loaders.threads`): the
download goes on with those it started, and without any, the reader fetches the parts itself, one
after another, as it reads them.

Stopping: a failure of a part is raised to the consumer once it has read what came before it.  A
failure the consumer goes on from with other means (``goes_on``: one connection from there) stops
the parts after the failed one only: those before it are fetched to their end and handed on, and
so is what the failed part received, so that the consumer asks for no byte twice.  Any other
failure stops every worker at once.  :meth:`RangedReader.close` stops the workers too.  Workers look for the
stop between reads, and ``Part.abort`` makes a read under way return, so no thread outlives a
close by more than a moment; every wait here has a timeout.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from . import threads

__all__ = ["Part", "RangedReader", "part_size"]

_PART_MIN = 1 << 20       # smaller parts would spend more on requests than parallelism saves
_PART_MAX = 8 << 20
_BUFFER_MAX = 64 << 20    # what the parts of the window may hold together
_PIECE = 256 << 10        # a worker's read size: small, so that it notices a stop soon
_WAIT = 0.5               # seconds between checks of a waiting thread
_EXIT_WAIT = 2.0          # seconds close() waits for the workers in all


def part_size(length: int, connections: int) -> int | None:
    """The size of the parts to fetch ``length`` bytes with ``connections`` connections, or None if
    splitting is not worth it (one connection, or less than two parts of data)."""
    largest = max(_PART_MIN, min(_PART_MAX, _BUFFER_MAX // (connections + 1)))
    # Whole rounds of equal parts: the connections finish together, and none idles at the end.
    rounds = -(-length // (connections * largest))
    size = max(_PART_MIN, -(-length // (connections * rounds)))
    return size if connections > 1 and length >= 2 * size else None


class Part(Protocol):
    """The bytes of one part, fetched by a worker thread."""

    def read(self, size: int) -> bytes:
        """At most ``size`` bytes (``size`` > 0), ``b""`` once the whole part has been read; raises
        if the part cannot be fetched."""

    def close(self) -> None:
        """Release what the part holds."""

    def abort(self) -> None:
        """Called from another thread: make a read under way return (or raise) soon."""


class _Buffered:
    """A claimed part: the bytes received and not yet read by the consumer."""

    def __init__(self, part: Part, index: int) -> None:
        self.part = part
        self.index = index
        self.pieces: deque[bytes] = deque()
        self.done = False


class RangedReader:
    """Bytes ``start`` to ``end`` (exclusive) of something, fetched in parts of ``part_size`` bytes by
    ``connections`` threads and read in order with :meth:`read`.

    ``first`` is the first part, already under way; ``open_part(start, end)`` makes the others.  The
    threads start with the first read, so that a reader that is never read costs nothing.  A failure
    of a type in ``goes_on`` lets the parts before the failed one finish (see the module's docstring).
    """

    def __init__(self, open_part: Callable[[int, int], Part], start: int, end: int, *, part_size: int,
                 connections: int, first: Part, goes_on: tuple[type[BaseException], ...] = ()) -> None:
        self._open_part = open_part
        self._starts = range(start, end, part_size)
        self._end = end
        self._size = part_size
        self._window = connections + 1
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # the consumer waits here for bytes
        self._room = threading.Condition(self._lock)     # workers wait here for the window to move
        self._parts: dict[int, _Buffered] = {0: _Buffered(first, 0)}  # claimed and not yet read
        self._head = 0     # the part the consumer reads
        self._claimed = 1  # parts handed out so far (the first came under way)
        self._goes_on = goes_on
        self._failure: BaseException | None = None
        self._failed_at: int | None = None  # the index of the first part that failed
        self._stopping = False  # no part is claimed any more
        self._closing = False
        self._started = False
        self._closed = False
        self._workers = min(connections, len(self._starts))
        self._threads: list[threading.Thread] = []  # the workers started

    def read(self, size: int) -> bytes:
        """The next at most ``size`` bytes, ``b""`` at the end; raises what made a part fail."""
        if self._closed:
            raise ValueError("read of a closed stream")
        if not self._started:
            self._started = True
            # Up to the first the system refuses: the first carries the part under way.
            workers = (threading.Thread(target=self._work, args=(self._parts[0] if number == 0 else None,),
                                        name=f"sharedcache-range-{number}", daemon=True)
                       for number in range(self._workers))
            self._threads = list(itertools.takewhile(threads.start, workers))
        if not self._threads:
            return self._read_here(size)
        with self._lock:
            while self._head < len(self._starts):
                buffered = self._parts.get(self._head)
                if buffered is not None and buffered.pieces:
                    return self._take(buffered.pieces, size)
                if buffered is not None and buffered.done:
                    del self._parts[self._head]
                    self._head += 1
                    self._room.notify_all()
                    continue
                if self._failure is not None and (self._head == self._failed_at or not self._finishing()):
                    raise self._failure
                if not any(thread.is_alive() for thread in self._threads):  # (a part is left unfinished)
                    raise threads.ended_unheard()
                self._arrived.wait(_WAIT)
            return b""

    def _read_here(self, size: int) -> bytes:
        """The next bytes when no worker could be started: the parts fetched here, in turn."""
        while (buffered := self._parts.get(self._head)) is not None:
            data = buffered.part.read(size)
            if data:
                return data
            buffered.part.close()
            del self._parts[self._head]
            self._head += 1
            self._claim()
        return b""

    @staticmethod
    def _take(pieces: deque[bytes], size: int) -> bytes:
        """Up to ``size`` bytes off the front of ``pieces``, joined."""
        taken: list[bytes] = []
        length = 0
        while pieces and length < size:
            piece = pieces.popleft()
            if length + len(piece) > size:
                cut = size - length
                pieces.appendleft(piece[cut:])
                piece = piece[:cut]
            taken.append(piece)
            length += len(piece)
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def _claim(self) -> _Buffered | None:
        """The next part to fetch, once the window has room for it; None when there is no more work."""
        with self._lock:
            while (not self._stopping and self._claimed < len(self._starts)
                   and self._claimed >= self._head + self._window):
                self._room.wait(_WAIT)
            if self._stopping or self._claimed >= len(self._starts):
                return None
            start = self._starts[self._claimed]
            buffered = _Buffered(self._open_part(start, min(start + self._size, self._end)), self._claimed)
            self._parts[self._claimed] = buffered
            self._claimed += 1
            return buffered

    def _work(self, buffered: _Buffered | None) -> None:
        """A worker thread: fetch ``buffered`` if given, then the parts it claims, until none is left."""
        if buffered is None:
            buffered = self._claim()
        while buffered is not None:
            try:
                self._fetch(buffered)
            except BaseException as exc:  # handed to the consumer, which raises it
                self._fail(buffered.index, exc)
                return
            finally:
                buffered.part.close()
            buffered = self._claim()

    def _fetch(self, buffered: _Buffered) -> None:
        while True:
            with self._lock:
                if self._given_up(buffered.index):
                    return
            data = buffered.part.read(_PIECE)
            with self._lock:
                if data:
                    buffered.pieces.append(data)
                else:
                    buffered.done = True
                self._arrived.notify()
            if not data:
                return

    def _finishing(self) -> bool:
        """Whether the parts before the one that failed are still fetched (called with the lock held)."""
        return not self._closing and isinstance(self._failure, self._goes_on)

    def _given_up(self, index: int) -> bool:
        """Whether part ``index`` is no longer wanted (called with the lock held)."""
        return self._closing or (self._failed_at is not None
                                 and (index > self._failed_at or not self._finishing()))

    def _fail(self, index: int, failure: BaseException) -> None:
        """Part ``index`` failed with ``failure``: no part is claimed any more, and the parts that are
        no longer wanted are made to stop now (one may be waiting for bytes or for a retry)."""
        with self._lock:
            # An earlier part's failure comes first, unless every part was stopped already (a part
            # stopped then fails for that alone).
            if self._failed_at is None or (index < self._failed_at and self._finishing()):
                self._failed_at, self._failure = index, failure
            self._stopping = True
            self._arrived.notify_all()
            self._room.notify_all()
            unwanted = [buffered.part for buffered in self._parts.values()
                        if not buffered.done and buffered.index != index and self._given_up(buffered.index)]
        for part in unwanted:
            part.abort()

    def _stop(self) -> list[Part]:
        """Tell every thread to stop; return the parts under way."""
        with self._lock:
            self._stopping = self._closing = True
            self._arrived.notify_all()
            self._room.notify_all()
            return [buffered.part for buffered in self._parts.values() if not buffered.done]

    def close(self) -> None:
        """Stop the workers and drop what they fetched; returns within about two seconds."""
        if self._closed:
            return
        self._closed = True
        under_way = self._stop()
        if not self._threads:
            for part in under_way:  # no thread will read it: close it here
                part.close()
            return
        for part in under_way:
            part.abort()
        deadline = time.monotonic() + _EXIT_WAIT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._parts.clear()
