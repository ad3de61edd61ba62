"""The built-in source words: ``http:URL``, ``file:PATH`` and ``dirac:LFN``.

``http:URL`` (http:// or https://) follows redirects, retries connection failures and 5xx answers
with exponential backoff (4xx answers fail at once), and continues an interrupted transfer with a
``Range: bytes=N-`` request guarded by ``If-Range`` (the strong ETag, else Last-Modified).  Only a
``206`` answer that starts at byte N, has the same total size and the same validator is stitched
to what came before; anything else means the file changed or the server ignores ranges, and the
stream raises :class:`ResumeError` so that the population starts over: no mix of two versions is
ever delivered.  It is resumable across processes (see :mod:`sharedcache.pipeline`).

``file:PATH`` reads a local file.  ``dirac:LFN`` runs ``dirac-dms-get-file LFN`` in the work
directory, streams the file it writes, and deletes it; the DIRAC tool does its own retrying.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import time
from typing import TYPE_CHECKING, Any

from .errors import DownloadError, ResumeError, UsageError
from .recipe import CHUNK, Context, FileStream, Source, SourceStream

if TYPE_CHECKING:
    import urllib3

_BACKOFF_FIRST = 0.25  # seconds before the first retry; doubles each time
_BACKOFF_MAX = 8.0
_MAX_REDIRECTS = 10
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _backoff(attempt: int) -> float:
    return min(_BACKOFF_FIRST * 2**attempt, _BACKOFF_MAX)


def _safe_filename(name: str) -> str:
    unusable = name in ("", ".", "..") or "\x00" in name or len(name.encode(errors="surrogateescape")) > 255
    return "download" if unusable else name


def _open_file(path: str, what: str, *, remove: bool = False) -> FileStream:
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise DownloadError(f"cannot read {what}: it is a directory")
        if not stat.S_ISREG(mode):  # opening a FIFO would block
            raise DownloadError(f"cannot read {what}: not a regular file")
        return FileStream(path, remove=remove)
    except FileNotFoundError:
        raise DownloadError(f"cannot read {what}: no such file") from None
    except OSError as exc:
        raise DownloadError(f"cannot read {what}: {exc.strerror or exc}") from None


class FileSource(Source):
    """``file:PATH``: a local file."""

    argument = "path"

    def describe(self) -> str:
        assert self.arg is not None
        return self.arg

    def filename(self) -> str:
        assert self.arg is not None
        return _safe_filename(os.path.basename(os.path.normpath(self.arg)))

    def open(self, ctx: Context, start: int = 0, validator: str | None = None) -> SourceStream:
        return _open_file(os.path.expanduser(self.describe()), self.describe())


class DiracSource(Source):
    """``dirac:LFN``: a file of the DIRAC grid file catalogue, fetched with the DIRAC client."""

    argument = "LFN"
    tool = "dirac-dms-get-file"

    def __init__(self, name: str, arg: str | None) -> None:
        super().__init__(name, arg)
        if posixpath.basename(self.lfn) in ("", ".", ".."):
            raise UsageError(f"'{self.word}': an LFN names a file, such as /vo/data/file.root")

    @property
    def lfn(self) -> str:
        assert self.arg is not None
        return self.arg

    def filename(self) -> str:
        return posixpath.basename(self.lfn)

    def open(self, ctx: Context, start: int = 0, validator: str | None = None) -> SourceStream:
        import subprocess

        tool = shutil.which(self.tool)
        if tool is None:
            raise DownloadError(f"{self.tool} not found on PATH (install the DIRAC client)")
        target = ctx.work / self.filename()
        target.unlink(missing_ok=True)  # left by a process that died while fetching it
        result = subprocess.run([tool, self.lfn], cwd=ctx.work, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            target.unlink(missing_ok=True)
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            why = lines[-1].strip() if lines else f"exit status {result.returncode}"
            raise DownloadError(f"{self.tool} failed for {self.lfn}: {why}")
        if not target.is_file():
            raise DownloadError(f"{self.tool} did not write {self.filename()} for {self.lfn}")
        return _open_file(str(target), self.word, remove=True)


class HttpSource(Source):
    """``http:URL``: a file on an HTTP or HTTPS server."""

    argument = "URL"
    resumable = True

    def __init__(self, name: str, arg: str | None) -> None:
        super().__init__(name, arg)
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
                or any(char.isspace() for char in self.url):
            raise UsageError(f"'{self.word}': malformed URL, expected http://HOST/PATH or https://HOST/PATH")

    @property
    def url(self) -> str:
        assert self.arg is not None
        return self.arg

    def describe(self) -> str:
        return self.url

    def filename(self) -> str:
        from urllib.parse import unquote, urlsplit

        return _safe_filename(posixpath.basename(unquote(urlsplit(self.url).path)))

    def open(self, ctx: Context, start: int = 0, validator: str | None = None) -> SourceStream:
        return _HttpStream(self.url, ctx, start, validator)


def _validator(response: urllib3.BaseHTTPResponse) -> str | None:
    """What ``If-Range`` may use: a strong ETag (weak ones are not allowed there), else Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _content_range(response: urllib3.BaseHTTPResponse) -> tuple[int, int | None] | None:
    """The first byte and total size that ``Content-Range`` announces, if it is well formed."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    if match is None:
        return None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _reason(exc: BaseException) -> str:
    """A short reason for a urllib3 or socket error (urllib3 nests and decorates them)."""
    inner = getattr(exc, "reason", None)
    if isinstance(inner, BaseException):
        return _reason(inner)
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc) or type(exc).__name__
    # "HTTPConnection(host=..., port=...): Failed to establish a new connection: [Errno 111] ..."
    return text.rpartition("): ")[2] if text.startswith(("HTTPConnection", "HTTPSConnection")) else text


class _HttpStream(SourceStream):
    def __init__(self, url: str, ctx: Context, start: int, validator: str | None) -> None:
        super().__init__()
        import urllib3

        self._url = url
        self._retries = ctx.retries
        self._errors = (urllib3.exceptions.HTTPError, OSError)
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=ctx.connect_timeout, read=ctx.read_timeout),
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0,
                                  redirect=_MAX_REDIRECTS),
            headers={"User-Agent": "shared-cache", "Accept-Encoding": "identity"})
        self._failures = 0  # consecutive interruptions without progress
        try:
            self._response = self._first_response(start, validator)
        except BaseException:
            self._pool.clear()
            raise
        self._position = self.start

    def _first_response(self, start: int, validator: str | None) -> Any:
        if start and validator:
            response = self._get(start, validator)
            if response.status == 200 or self._continuation_problem(response, start, validator) is None:
                self._adopt(response)
                return response
            response.close()  # a wrong range or 416: fetch the whole file again
        response = self._get(0, None)
        if response.status != 200:
            raise self._status_error(response)
        self._adopt(response)
        return response

    def _adopt(self, response: Any) -> None:
        self.validator = _validator(response)
        content_range = _content_range(response)
        if response.status == 206 and content_range is not None:
            self.start, self.total = content_range
        else:
            self.start = 0
            length = response.headers.get("Content-Length", "")
            self.total = int(length) if length.isdigit() else None

    def _status_error(self, response: Any) -> DownloadError:
        from http import HTTPStatus

        reason = response.reason
        if not reason:
            try:
                reason = HTTPStatus(response.status).phrase
            except ValueError:
                reason = "(unknown status)"
        response.close()
        return DownloadError(f"HTTP {response.status} {reason} for {self._url}")

    def _get(self, start: int, validator: str | None) -> Any:
        """GET from byte ``start`` on, retrying connection failures and 5xx answers."""
        import urllib3

        headers = {"Range": f"bytes={start}-", "If-Range": validator} if start and validator else {}
        attempt = 0
        while True:
            try:
                response = self._pool.request("GET", self._url, headers=headers, preload_content=False,
                                              decode_content=False)
            except self._errors as exc:
                inner = getattr(exc, "reason", exc)
                permanent = isinstance(inner, (urllib3.exceptions.SSLError,  # no retry fixes these
                                               urllib3.exceptions.ResponseError,
                                               urllib3.exceptions.LocationValueError))
                if permanent or attempt >= self._retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise DownloadError(f"cannot download {self._url}: {_reason(exc)}{tries}") from None
            else:
                if response.status < 500:
                    return response
                error = self._status_error(response)
                if attempt >= self._retries:
                    raise DownloadError(f"{error} (after {attempt + 1} attempts)") from None
            time.sleep(_backoff(attempt))
            attempt += 1

    def _continuation_problem(self, response: Any, start: int, validator: str) -> str | None:
        """Why ``response`` cannot be appended to the first ``start`` bytes, or None if it can."""
        if response.status == 200:
            return "the server sent the whole file again (it changed, or it ignores ranges)"
        if response.status == 416:
            return f"the server no longer has {start} bytes"
        if response.status != 206:
            raise self._status_error(response)
        content_range = _content_range(response)
        if content_range is None or content_range[0] != start:
            return f"asked for bytes {start}- but got '{response.headers.get('Content-Range')}'"
        total = content_range[1]
        if self.total is not None and total != self.total:
            return f"its size changed from {self.total} to {total} bytes"
        now = _validator(response)
        if now is not None and now != validator:
            return f"it changed ({validator} became {now})"
        return None

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else CHUNK
        while True:
            try:
                # read1 (urllib3 >= 2.3) hands on what has arrived rather than wait for a full buffer.
                response = self._response
                data = response.read1(size) if hasattr(response, "read1") else response.read(size)
            except self._errors as exc:
                self._resume(_reason(exc))
                continue
            if data:
                self._position += len(data)
                self._failures = 0
                return data
            if self.total is None or self._position >= self.total:
                return b""
            self._resume(f"the connection closed after {self._position} of {self.total} bytes")

    def _resume(self, why: str) -> None:
        """Continue the transfer at the current position with a validated range request."""
        self._response.close()
        if self.validator is None:
            raise ResumeError(f"cannot resume {self._url} at byte {self._position} ({why}): "
                              "the server gives no ETag or Last-Modified to check it did not change")
        if self._failures >= self._retries:
            raise DownloadError(f"download of {self._url} failed at byte {self._position}: {why} "
                                f"(after {self._failures + 1} attempts)")
        time.sleep(_backoff(self._failures))
        self._failures += 1
        response = self._get(self._position, self.validator)
        problem = self._continuation_problem(response, self._position, self.validator)
        if problem is not None:
            response.close()
            raise ResumeError(f"cannot resume {self._url} at byte {self._position}: {problem}")
        self._response = response

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._response.close()
            self._pool.clear()
