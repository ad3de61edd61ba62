"""Streams: the pull model that every loader reads and produces.

A stream is a readable binary file object whose ``read(size)`` returns at most ``size`` bytes
(``size`` > 0), and ``b""`` only at the end.  Each loader pulls from the stream below it, so
memory stays bounded whatever the size of the data: never return more than asked for, and never
read the whole stream below into memory.  :data:`CHUNK` is the read size used throughout.

:class:`Layer` is a stream computed from the one below it, :class:`SourceStream` what a source
delivers (with its total size and validator, for progress and resuming), :class:`FileStream` a
local file served as a source stream.  :class:`Buffered` hands out the bytes of a stream in exact
counts or as views, for parsers.  :class:`Prefetch` reads the stream below in a thread of its
own, a few chunks ahead, telling a :class:`Meter` (the progress callback, throttled) how far it got;
in the consumer's, if the system refuses the thread (:mod:`sharedcache.loaders.threads`).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..errors import DownloadError
from . import threads

#: What a population is told of its progress: ``progress(bytes received, total or None)``.
Progress = Callable[[int, "int | None"], None]

CHUNK = 1 << 20  # the read size used throughout: large enough for speed, small enough for memory
_QUEUE_DEPTH = 4            # chunks in flight between a Prefetch's thread and its consumer
_PROGRESS_INTERVAL = 0.1    # seconds between progress calls
_THREAD_EXIT_WAIT = 2.0     # seconds to wait for a Prefetch's thread after a failure


class Stream(io.RawIOBase):
    """A readable binary stream; subclasses implement ``read(size)``."""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # io's Buffer
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _abandon(self) -> None:
        """Mark a stream whose making failed closed, with nothing of its own to close: its
        finalizer's ``close()`` then does nothing, where it would meet what was never made
        (Python 3.13 reports what a finalizer's ``close()`` raises, on the user's stderr)."""
        io.RawIOBase.close(self)


class Layer(Stream):
    """A stream computed from the stream below it; closing it closes the one below."""

    def __init__(self, below: Stream | IO[bytes]) -> None:
        super().__init__()
        self.below = below

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.below.close()


class SourceStream(Stream):
    """What :meth:`Source.open` returns: the bytes of the source from ``start`` on."""

    start: int = 0
    total: int | None = None
    validator: str | None = None
    #: Why the bytes may have ended before the file did, if nothing could confirm their end (a
    #: checksum then decides, and a mismatch says this).
    unconfirmed_end: str | None = None
    #: The cache on the way that bytes came through (a forwarding proxy, as messages name it), if
    #: any: a copy it holds may be stale, or cut short, which a checksum that fails them has it check
    #: with the origin, or fetch anew, once (:attr:`~sharedcache.loaders.protocol.Context.refresh`),
    #: and names if they fail again.
    cached_by: str | None = None


class FileStream(SourceStream):
    """A local file as a stream, for sources that fetch into a file first; ``remove`` deletes the
    file when the stream is closed.  ``fd``: the file, opened and checked already by the caller
    (the stream then owns it); else ``path`` is opened."""

    def __init__(self, path: str | os.PathLike[str], *, fd: int | None = None, remove: bool = False,
                 what: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self._what = str(path) if what is None else what  # the file as messages name it
        # Open as long as the stream is.
        try:
            self._file = open(path if fd is None else fd, "rb", buffering=0)  # noqa: SIM115
        except BaseException:
            self._abandon()
            raise
        status = os.fstat(self._file.fileno())
        self.total = status.st_size
        self._version = (status.st_size, status.st_mtime_ns)
        self._remove = remove

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._file.read(size if size > 0 else CHUNK)
            status = None if data else os.fstat(self._file.fileno())
        except OSError as exc:
            raise DownloadError(f"cannot read {self._what}: {exc.strerror or exc}") from None
        # A file written while it is read (appended to, truncated, rewritten in place; a process
        # that the DIRAC client left behind) gives a copy that is neither its old content nor its
        # new one: at its end, it must be the file that was opened.
        if status is not None and (status.st_size, status.st_mtime_ns) != self._version:
            raise DownloadError(f"{self._what} changed while it was read ({self._version[0]} bytes when "
                                f"opened, {status.st_size} at the end)")
        return data

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()
            if self._remove:
                self.path.unlink(missing_ok=True)


class Buffered:
    """Bytes got from ``read(size)`` a chunk at a time and handed out as exact counts
    (:meth:`read_exact`, copies) or as views of the chunk (:meth:`view`, valid until the next read:
    ``read`` may fill the same buffer again), so that a parser copies nothing it does not keep.
    Subclasses may read ``_buffer`` in place from ``_at`` (their fast paths), and must then move
    ``_at`` and ``_position`` on."""

    def __init__(self, read: Callable[[int], bytes | memoryview]) -> None:
        self._source_read = read
        self._buffer: bytes | memoryview = b""  # the last chunk read...
        self._view = memoryview(self._buffer)
        self._at = 0            # ...and how much of it is consumed
        self._position = 0      # of the first byte not consumed, in the whole input

    def _fill(self) -> bool:
        """Read the next chunk once the buffer is consumed; False at the end."""
        data = self._source_read(CHUNK)
        self._buffer, self._view, self._at = data, memoryview(data), 0
        return bool(data)

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes, fewer only at the end of the input."""
        end = self._at + size
        if end <= len(self._buffer):
            data = bytes(self._buffer[self._at:end])
            self._at = end
        else:
            pieces = [bytes(self._buffer[self._at:])]  # copies: the next read may reuse the buffer
            missing = size - len(pieces[0])
            while missing and self._fill():
                piece = bytes(self._buffer[:missing])
                self._at = len(piece)
                pieces.append(piece)
                missing -= len(piece)
            data = b"".join(pieces)
        self._position += len(data)
        return data

    def skip(self, size: int) -> bool:
        """Pass over ``size`` bytes; False if the input ended first."""
        while size:
            if self._at == len(self._buffer) and not self._fill():
                return False
            step = min(size, len(self._buffer) - self._at)
            self._at += step
            self._position += step
            size -= step
        return True

    def view(self, size: int) -> memoryview:
        """Up to ``size`` bytes, at least one (none only at the end of the input), as a view of the
        chunk that holds them."""
        if self._at == len(self._buffer) and not self._fill():
            return self._view[:0]
        at = self._at
        size = min(size, len(self._buffer) - at)
        self._at = at + size
        self._position += size
        return self._view[at:at + size]


class Meter:
    """Calls the progress callback, at most every ``_PROGRESS_INTERVAL`` seconds and at the end."""

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self._progress = progress
        self._total = total
        self._last = float("-inf")

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self._progress is not None and (final or now - self._last >= _PROGRESS_INTERVAL):
            self._last = now
            self._progress(done, self._total)


class Prefetch(Stream):
    """Reads the stream below in a background thread, up to ``depth`` chunks ahead of the
    consumer, and tells ``meter`` how many bytes have come.  What the stream below does (a
    download, a checksum, a decompression) then runs beside the consumer, on another core where
    the work releases the GIL.  If the system refuses the thread, the consumer's reads read the
    stream below.

    The thread owns the stream below: it reads it and closes it.
    """

    def __init__(self, below: Stream, meter: Meter | None = None, *, depth: int = _QUEUE_DEPTH) -> None:
        super().__init__()
        self._below = below
        self._meter = meter if meter is not None else Meter(None, None)
        self._queue: queue.Queue[tuple[bytes, int] | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._finished = False
        self._received = 0
        self._thread = threading.Thread(target=self._pump, name="sharedcache-reader", daemon=True)
        self._inline = not threads.start(self._thread)

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._pull()
                self._put((data, self._received))
                if not data:
                    break
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)
        finally:
            self._below.close()

    def _pull(self) -> bytes:
        data = self._below.read(CHUNK)
        self._received += len(data)
        return data

    def _put(self, item: tuple[bytes, int] | BaseException) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def _next(self) -> tuple[bytes, int]:
        """The next chunk of the stream below and the bytes received so far; raises what reading it raised."""
        if self._inline:
            return self._pull(), self._received
        while True:
            # Looked at before the queue: what a thread that has ended put is in it by then.
            alive = self._thread.is_alive()
            try:
                item = self._queue.get(alive, threads.ALIVE_CHECK)
                break
            except queue.Empty:
                if not alive:
                    raise threads.ended_unheard() from None
        if isinstance(item, BaseException):
            raise item
        return item

    def read(self, size: int = -1) -> bytes:
        if self._stop.is_set():  # the reading thread is gone: get() would wait forever
            raise ValueError("read of a closed stream")
        if not self._chunk:
            if self._finished:
                return b""
            try:
                data, received = self._next()
            except BaseException:
                self._finished = True
                raise
            self._meter(received, final=not data)
            if not data:
                self._finished = True
                return b""
            if size <= 0 or len(data) <= size:
                return data
            self._chunk = memoryview(data)
        piece, self._chunk = self._chunk[:size], self._chunk[size:]
        return bytes(piece)

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            if self._inline:
                self._below.close()
            else:
                # A thread blocked in a network read leaves at its read timeout; it closes the source itself.
                self._thread.join(_THREAD_EXIT_WAIT)
            super().close()
