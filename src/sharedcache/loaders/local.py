"""``file:PATH``: a local file; and the helpers every source that ends in a local file uses."""

from __future__ import annotations

import os
import stat

from ..errors import AuthorizationError, DownloadError, over_limit
from .protocol import Context, Source
from .streams import FileStream, SourceStream


def safe_filename(name: str) -> str:
    """``name``, or "download" if no file in a directory can have it (a plugin's rename may give
    a path)."""
    unusable = (name in ("", ".", "..") or "\x00" in name or "/" in name
                or len(name.encode(errors="surrogateescape")) > 255)
    return "download" if unusable else name


def open_file(path: str, what: str, *, remove: bool = False) -> FileStream:
    try:
        # Opened without blocking and checked by what was opened, not by the path: a FIFO put in
        # the file's place after a look at the path would otherwise hang the open or the reads.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise DownloadError(f"cannot read {what}: it is a directory")
            if not stat.S_ISREG(mode):
                raise DownloadError(f"cannot read {what}: not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return FileStream(path, fd=fd, remove=remove, what=what)
    except FileNotFoundError:
        raise DownloadError(f"cannot read {what}: no such file") from None
    except PermissionError as exc:
        # Refused to this process's uid and groups, not for what the file is: another user (a
        # member of a group cache), or the same one in a job given a group more, may read it.
        raise AuthorizationError(f"cannot read {what}: {exc.strerror or exc}") from None
    except OSError as exc:  # (out of descriptors: no failure of the source, for another to replace)
        raise over_limit(exc) or DownloadError(f"cannot read {what}: {exc.strerror or exc}") from None


class FileSource(Source):
    """``file:PATH``: a local file."""

    argument = "path"

    def describe(self) -> str:
        assert self.arg is not None
        return self.arg

    def filename(self) -> str:
        assert self.arg is not None
        return safe_filename(os.path.basename(os.path.normpath(self.arg)))

    def open(self, ctx: Context, start: int = 0, validator: str | None = None) -> SourceStream:
        return open_file(os.path.expanduser(self.describe()), self.describe())
