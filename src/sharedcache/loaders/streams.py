"""Streams: the pull model that every loader reads and produces.

A stream is a readable binary file object whose ``read(size)`` returns at most ``size`` bytes
(``size`` > 0), and ``b""`` only at the end.  Each loader pulls from the stream below it, so
memory stays bounded whatever the size of the data: never return more than asked for, and never
read the whole stream below into memory.  :data:`CHUNK` is the read size used throughout.

:class:`Layer` is a stream computed from the one below it, :class:`SourceStream` what a source
delivers (with its total size and validator, for progress and resuming), :class:`FileStream` a
local file served as a source stream.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO

from ..errors import DownloadError

CHUNK = 1 << 20  # the read size used throughout: large enough for speed, small enough for memory


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


class FileStream(SourceStream):
    """A local file as a stream, for sources that fetch into a file first; ``remove`` deletes the
    file when the stream is closed.  ``fd``: the file, opened and checked already by the caller
    (the stream then owns it); else ``path`` is opened."""

    def __init__(self, path: str | os.PathLike[str], *, fd: int | None = None, remove: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        # Open as long as the stream is.
        self._file = open(path if fd is None else fd, "rb", buffering=0)  # noqa: SIM115
        self.total = os.fstat(self._file.fileno()).st_size
        self._remove = remove

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.read(size if size > 0 else CHUNK)
        except OSError as exc:
            raise DownloadError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()
            if self._remove:
                self.path.unlink(missing_ok=True)
