"""``http:URL``: a file on an HTTP or HTTPS server.

``http:URL`` (http:// or https://) follows redirects (each to the route of its own URL: see
:mod:`sharedcache.loaders.transport`), retries connection failures, 5xx answers (a proxy's own,
once its retries are spent, fails over along the route: :func:`_proxy_failure`), 408 and 429
with exponential backoff, or after the wait an answer's ``Retry-After`` asks for if longer (up to
:data:`_RETRY_AFTER_MAX`; a server that asks for more fails the request at once, saying so), while
other 4xx answers fail at once, and continues an interrupted transfer with a
``Range: bytes=N-`` request guarded by ``If-Range`` (the strong ETag, else Last-Modified; neither
while the Last-Modified is less than a second before the answer's Date: see :func:`_validator`).  Only a
``206`` answer that starts at byte N, has the same total size and the same validator is stitched
to what came before; anything else means the file changed or the server ignores ranges, and the
stream raises :class:`ResumeError` so that the population starts over: no mix of two versions is
ever delivered.  But a ``200`` with the same Last-Modified date and size, when that date is the
validator and a checksum reads the bytes as they come, is read on from, past the bytes already
had: Apache takes a date under 60 s old for too recent to be sure of (RFC 9110 8.8.2.2) and answers
every range guarded by it so, and a population started over would meet the same answer (parts
always do: the download goes on over one connection).  The date cannot tell two versions of the
same size written within one second apart, which is why the server refused the range: without
the checksum, which such a mix fails, the population starts over.
It is resumable across processes (see :mod:`sharedcache.loaders.pipeline`).

A body is complete when it has its ``Content-Length``, or is chunked and ends with its final
chunk (a chunked body's ``Content-Length`` is ignored, as RFC 9112 has it).  Only a
``Transfer-Encoding`` of ``chunked`` alone is read; any other (``gzip``, ``gzip, chunked``, chunked
twice, an unknown coding) is refused, its bytes being neither the file nor known to end where it
does.  A body that has neither ends with a close, which a cut connection also is: what follows is
asked for as after an interruption, and either comes (with the size, checked at its end) or a
``416`` that gives the size says the file ended there.  A server that cannot be asked (it gives no
validator, or answers the range with the whole file again, of the same version) would end every
download the same way: the end is handed on when a checksum follows the source
(``ctx.checksummed``), which proves the bytes whole (a mismatch says that the close may have cut
them: ``unconfirmed_end``), and is refused at once otherwise.
Continuations and parts are asked of the URL that gave the first answer, where its redirects led
(a redirector that spreads requests over mirrors would send each to another one, whose validators
differ); if that URL answers 403, 404 or 410 (a mirror's signed URL that expired), the request is
made once more from the source's URL, as it is when that URL fails past its retries (a mirror
that went down).
With ``ctx.deadline`` (``--timeout``), every connection, read and back-off waits at most what is
left of it.

With ``ctx.fetch.connections`` N > 1 the first request asks for ``bytes=0-`` (or, resuming, for the rest).
If the answer is a ``206`` with the total size and a validator and the rest is worth splitting
(:func:`sharedcache.loaders.ranged.part_size`), that answer delivers the first part and N threads fetch the
others with ``Range: bytes=A-B`` requests guarded by ``If-Range``; the bytes are handed on strictly
in order (:mod:`sharedcache.loaders.ranged`).  Each part is checked as a resume is (a ``206`` with exactly
the range asked for, the same size and validator) and each is continued on its own after an
interruption.  A part that fails the check is never stitched: the parts before it are fetched to
their end and handed on, with what the failed part received, and the stream goes on with one
connection from the byte it has handed on, with a range request guarded by ``If-Range``, so that no
byte is asked for twice and a file that changed raises :class:`ResumeError`.  So does a part
refused with ``503`` or ``429`` (:data:`_BUSY`), at its first refusal: a server that allows a
client one connection (nginx's ``limit_conn``) refuses the others while that one is busy, and their
retries would run out.  A server that answers ``200`` or gives no validator, and a small file, get one connection.  This
holds for fresh downloads and for resumed ones alike.  So does an ``http://`` URL reached through
a proxy that sees its requests (an HTTP or HTTPS proxy: :meth:`Transport.forwards
<sharedcache.loaders.transport.Transport.forwards>`), whatever N, the first request asking for no
range through it.  The route that sends the first request decides, at each attempt and each
redirect: a chain that fails over past a proxy to ``DIRECT``, or a redirect to a host that
``no_proxy`` names, splits the download as without a proxy.  Such a proxy is a site's cache,
near, there so that a fleet's hosts share one download from the origin, and parts defeat it or gain
nothing.  Squid by default forwards a range to the origin and caches no ``206`` answer, so every
host downloaded the whole file from the origin; configured to fetch the whole object for a range
(``range_offset_limit -1``), it fetches it over one connection to the origin for all the parts.
The throttling per connection that parts work around is the origin's.  An ``https://`` URL is
tunnelled through the proxy to the origin, end to end, and is split as without one.

TLS trust, the client certificate and the ``Authorization`` header come from
:mod:`sharedcache.loaders.credentials` (``ctx.fetch.credentials``; the user info of the URL, which
is removed from the URL that messages show); a 401 or 403 answer says what was sent.
Connections go through :mod:`sharedcache.loaders.transport` (proxies, fail-over, the pool
managers).  An answer through a proxy that sees the request is marked as such (``cached_by``),
and with ``ctx.refresh`` every request asks the caches on the way to check their copy with the
origin, or to fetch it anew (:data:`_REFRESH`).  Every retry and every fail-over is told to
``ctx.notice`` with its reason.
Offline (``ctx.fetch.offline``) the source refuses to open before any connection is tried.
"""

from __future__ import annotations

import contextlib
import errno
import math
import posixpath
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import (
    QUOTED_CHARACTERS,
    AuthorizationError,
    DownloadError,
    ResumeError,
    UsageError,
    WaitTimeoutError,
    ascii_lower,
    quoted,
    said_by_server,
    server_says,
    size_change,
    unparsed_url,
    user_info_problem,
)
from . import threads
from .credentials import Authorization, certificate_problem, tls_context, url_login
from .local import safe_filename
from .protocol import Context, Source
from .ranged import RangedReader, part_size
from .streams import CHUNK, SourceStream

if TYPE_CHECKING:
    import urllib3

    from .transport import Transport


#: Sizes and positions at or past this are absurd (no file system holds such a file).
_MAX_SIZE = 2**63
_NUMBER = re.compile(r"[0-9]+")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)")
#: Redirects followed from the URL asked for.
_MAX_REDIRECTS = 10
#: The answers of a URL a redirect led to that say it may have expired (a mirror's signed URL).
_EXPIRED = (403, 404, 410)
#: The 4xx answers that another try may not get (Request Timeout, Too Many Requests), retried as 5xx are.
_TRANSIENT = (408, 429)
#: The answers of a server that refuses more connections than it allows a client (nginx's
#: ``limit_conn`` answers 503, or 429 as configured): a part that gets one gives up at once, and
#: the download goes on over the one connection (see :meth:`_HttpStream.read`).
_BUSY = (429, 503)
#: The longest wait a ``Retry-After`` is followed for.  A server that asks for more (the rest of a
#: day's quota) fails the request at once, saying so, rather than hold the job that long.
_RETRY_AFTER_MAX = 300.0
#: What the caches on the way are asked (``ctx.refresh``).  ``revalidate`` asks every cache for a
#: copy no older than now, which it must check with the origin (RFC 9111 5.2.1.1): squid asks it
#: conditionally (``If-None-Match``, ``If-Modified-Since``) and serves its copy on a ``304``,
#: fetching the file anew only when the origin replaced it.  A reload (``no-cache``) would have it
#: fetch the whole file again even when its copy is current: once per host of a site for a recipe
#: whose checksum is simply wrong.  But a copy that may be cut short (of an answer without a
#: length, which a cut connection ends as its close does) is reloaded: checked, the origin answers
#: ``304`` and the cache serves the cut copy again.
_REFRESH = {
    "revalidate": {"Cache-Control": "max-age=0"},
    "reload": {"Cache-Control": "no-cache", "Pragma": "no-cache"},
}
#: How much of an error answer's body is read for what the server says, and how long for.
_ERROR_BODY_BYTES = 4096
_ERROR_BODY_SECONDS = 2.0
#: The error answers whose body may say why: object stores' XML (S3, GCS, Azure), JSON APIs, text.
_ERROR_BODY_TYPES = ("application/xml", "text/xml", "application/json", "application/problem+json", "text/plain")
#: How often the heartbeat of a download under a speed limit beats, and the most time its clock
#: counts from one beat to the next (see :class:`_Heartbeat`).
_BEAT = 0.5
_BEAT_COUNTS_AT_MOST = 2 * _BEAT
#: The address space that importing the HTTP stack takes (urllib3, http.client, email, ssl:
#: 3.5 MiB with CPython 3.11 and urllib3 2.8), with a margin (see :func:`_room_for_the_stack`).
_STACK_ROOM = 4 << 20


def _room_for_the_stack() -> None:
    """Before the HTTP stack is first imported, a MemoryError if this process may not take the
    room it needs (:data:`_STACK_ROOM`, under a cap on address space: ``ulimit -v``).  Without
    that room, the import ran out of memory in its midst, where CPython 3.11 may loop for good
    as it unwinds the MemoryError (it retries an allocation that cannot succeed: CPython issue
    132508): ``sc --use`` over HTTP hung so at a cap of 30 MiB, up to one run in eight, as the
    allocation that failed moved with every object made before the import.  A mapping of that
    size, made and given back at once (never written, so that it is only address space), fails
    first, where nothing is half done."""
    if "urllib3" in sys.modules:
        return
    import mmap

    try:
        mmap.mmap(-1, _STACK_ROOM, flags=mmap.MAP_PRIVATE, prot=0).close()
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise
        raise MemoryError(f"no room for the {_STACK_ROOM >> 20} MiB that the HTTP stack takes") from None


class HttpSource(Source):
    """``http:URL``: a file on an HTTP or HTTPS server."""

    argument = "URL"
    resumable = True
    network = True

    def __init__(self, name: str, arg: str | None) -> None:
        super().__init__(name, arg)
        from urllib.parse import urlsplit

        assert arg is not None
        if arg.startswith("//"):  # http://HOST/PATH written without the word's name
            raise UsageError(f"'{unparsed_url(self.word)}' looks like a bare URL: write http:{unparsed_url(self.word)}")
        problem = user_info_problem(arg)
        if problem is not None:
            raise UsageError(f"'{self.word}': {problem}")
        try:
            parts = urlsplit(arg)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
                or any(char.isspace() for char in arg):
            raise UsageError(f"'{self.name}:{unparsed_url(arg)}': malformed URL, expected http://HOST/PATH or "
                             "https://HOST/PATH")
        if "\\" in parts.netloc:
            # Python's parser takes "evil.example\.good.example" for one host, urllib3 connects
            # to evil.example: what is shown, and where credentials go, would not be where it leads.
            raise UsageError(f"'{self.name}:{unparsed_url(arg)}': a '\\' in the host of a URL, where URL "
                             "parsers disagree on where the host ends")
        # User info is a credential: sent as basic auth, never shown or stored.
        self.url, self.login = url_login(arg)

    def describe(self) -> str:
        return self.url

    def filename(self) -> str:
        from urllib.parse import unquote, urlsplit

        return safe_filename(posixpath.basename(unquote(urlsplit(self.url).path)))

    def open(self, ctx: Context, start: int = 0, validator: str | None = None) -> SourceStream:
        return _HttpStream(self.url, ctx, start, validator, self.login)


def _validator(response: urllib3.BaseHTTPResponse) -> str | None:
    """What ``If-Range`` may use: a strong ETag (weak ones are not allowed there), else a
    Last-Modified date; none while the Last-Modified is less than a second before the answer's
    Date.  Such a date is weak (RFC 9110 8.8.2.2): a file written again within that second, at the
    same size, has the same date, and a server that honours it answers a range of the new version,
    which was stitched to the old one.  So is an ETag then, however strong it says it is: nginx's
    is the modification time in seconds and the size, the same for both versions (Apache marks
    such an ETag weak itself).  (Without a validator, nothing is resumed: parts are not used, and
    an interrupted download starts over.)"""
    modified = _field(response, "Last-Modified")
    if modified and _too_recent(modified, _field(response, "Date")):
        return None
    etag = _field(response, "ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return modified or None


def _too_recent(modified: str, date: str) -> bool:
    """Whether the date ``modified`` is less than a second before the date ``date`` (or after
    it); False when either is no date (a missing Date: the Last-Modified is taken as it is)."""
    import email.utils  # (loaded with http.client already)

    try:
        age = (email.utils.parsedate_to_datetime(date) - email.utils.parsedate_to_datetime(modified)).total_seconds()
    except (TypeError, ValueError, IndexError):
        return False
    return age < 1


def _is_date(validator: str | None) -> bool:
    """Whether ``validator`` is a Last-Modified date rather than an ETag (always quoted)."""
    return validator is not None and not validator.endswith('"')


def _server_says(response: Any, wait: float) -> str | None:
    """What the body of an error answer says, if it says it in a form known here: an object
    store's ``<Code>`` and ``<Message>`` (an expired signed URL: "AccessDenied: Request has
    expired"), a JSON ``message`` or ``error``, or a line of text.  At most
    :data:`_ERROR_BODY_BYTES` are read, in ``wait`` seconds at most; None if nothing is said so
    (an HTML page, a compressed body, none, or one that does not come in time)."""
    kind = _field(response, "Content-Type").partition(";")[0].strip(" \t").lower()
    if kind not in _ERROR_BODY_TYPES or _field(response, "Content-Encoding") not in ("", "identity"):
        return None
    import http.client  # loaded with urllib3 already

    import urllib3

    sock = _socket_of(response)
    if sock is None or not hasattr(response, "read1"):  # (read1: urllib3 >= 2.3)
        return None
    ends, body = time.monotonic() + wait, b""
    try:
        while len(body) < _ERROR_BODY_BYTES:  # a server that trickles it is given ``wait`` in all
            left = ends - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(OSError):  # (closed with the answer's end: no read waits then)
                sock.settimeout(left)
            piece = response.read1(_ERROR_BODY_BYTES - len(body))
            if not piece:
                break
            body += piece
    except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException):
        return None  # the status speaks alone
    text = body.decode("utf-8", "replace")
    if kind.endswith("xml"):
        found = [match.group(1).strip() for tag in ("Code", "Message")
                 if (match := re.search(f"<{tag}>([^<]*)</{tag}>", text))]
        said = ": ".join(part for part in found if part)
    elif kind.endswith("json"):
        said = _json_message(text)
    else:
        said = next((line.strip() for line in text.splitlines() if line.strip()), "")
    said = " ".join(said.split())
    return said or None


def _socket_of(response: Any) -> Any:
    """The socket that ``response`` is read from, whose timeout bounds each wait: its
    connection's, or, once http.client has let go of the connection (an answer that ends it:
    ``Connection: close``, HTTP/1.0), the one that the answer itself reads and keeps
    (:func:`sharedcache.loaders.transport._final_answer_class`, behind urllib3's ``_fp``)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    return sock if sock is not None else getattr(getattr(response, "_fp", None), "_socket", None)


def _json_message(text: str) -> str:
    """The message of a JSON error: ``message``, ``error`` (a string, or an object with a
    ``message``), ``error_description`` or ``detail``; empty if it has none, or is cut short."""
    import json

    try:
        error = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested a thousand deep
        return ""
    if not isinstance(error, dict):
        return ""
    for key in ("message", "error", "error_description", "detail"):
        value = error.get(key)
        message = value.get("message") if isinstance(value, dict) else value
        if isinstance(message, str) and message.strip():
            return message
    return ""


def _size(digits: str) -> int:
    """The number that a header's ``digits`` (matched by :data:`_NUMBER`) give.  Past 19 digits
    (leading zeros aside) it is :data:`_MAX_SIZE`: absurd as a size, and not converted (``int``
    refuses 4,300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(_MAX_SIZE)) else _MAX_SIZE


def _header_size(text: str) -> int | None:
    """The size a header's value gives if it is decimal digits (not ``str.isdigit()``, which takes
    "²", and ``int()`` then refuses), else None."""
    return _size(text) if _NUMBER.fullmatch(text) else None


def _field(response: urllib3.BaseHTTPResponse, name: str) -> str:
    """The value of the header field ``name`` (several joined by commas), without the whitespace
    around it, which RFC 9110 §5.5 says is no part of it (http.client keeps what trails it)."""
    return response.headers.get(name, "").strip(" \t")


def _content_length(text: str) -> int | None:
    """The size a ``Content-Length`` value gives, or None.  It may be the same number repeated as
    a list (RFC 9110 §8.6: what a proxy makes of the field sent twice); a list of different
    numbers never gets here (urllib3 refuses the answer)."""
    sizes = {_header_size(value.strip(" \t")) for value in text.split(",")}
    return sizes.pop() if len(sizes) == 1 else None


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    """The seconds an answer's ``Retry-After`` asks a client to wait before it asks again (a
    number of seconds, or an HTTP date), if it asks in a form that can be read."""
    text = response.headers.get("Retry-After", "").strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        return float(_size(text))
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return None if when.tzinfo is None else max(0.0, when.timestamp() - time.time())


def _after(attempts: int) -> str:
    """What an error line adds of the attempts that failed: nothing for one."""
    return f" (after {attempts} attempts)" if attempts > 1 else ""


def _shown_range(response: urllib3.BaseHTTPResponse) -> str:
    """What a ``206`` answer says it holds, for an error line."""
    content_range = response.headers.get("Content-Range")
    if content_range is not None:
        return f"'{content_range}'"
    if _field(response, "Content-Type").lower().startswith("multipart/byteranges"):
        return "several ranges in one answer (multipart/byteranges)"
    return "an answer without Content-Range"


def _content_range(response: urllib3.BaseHTTPResponse) -> tuple[int, int, int | None] | None:
    """The first and last byte and the total size that ``Content-Range`` announces, if it is well
    formed."""
    match = _CONTENT_RANGE.fullmatch(_field(response, "Content-Range"))
    if match is None:
        return None
    first, last, total = _size(match[1]), _size(match[2]), None if match[3] == "*" else _size(match[3])
    if not first <= last < (_MAX_SIZE if total is None else total) or (total or 0) >= _MAX_SIZE:
        return None  # an impossible range, or a size no file system holds: not an answer to trust
    return first, last, total


def _size_of_unsatisfiable(response: urllib3.BaseHTTPResponse) -> int | None:
    """The size a 416 answer gives (``Content-Range: bytes */SIZE``), if it gives one."""
    unit, _, text = _field(response, "Content-Range").partition(" */")
    size = _header_size(text) if unit.strip() == "bytes" else None
    return size if size is not None and size < _MAX_SIZE else None


#: The name endings of files compressed in each Content-Encoding: a file so named, served with that
#: encoding, is labelled with its own (S3 objects whose uploader set it from the name, as
#: django-storages does; Apache's AddEncoding), and its bytes are the file.
_OWN_ENCODINGS = {"gzip": (".gz", ".tgz"), "x-gzip": (".gz", ".tgz"), "compress": (".z", ".taz"),
                  "x-compress": (".z", ".taz"), "br": (".br",), "zstd": (".zst", ".tzst"),
                  "xz": (".xz", ".txz"), "bzip2": (".bz2", ".tbz2", ".tbz")}


def _chunked(response: urllib3.BaseHTTPResponse) -> bool:
    """Whether the body is chunked as the connections read it (urllib3 only passes its bytes on):
    as chunks only if its one Transfer-Encoding field is "chunked" (``transport.chunked_alone``),
    and any other body to its Content-Length or to the close, codings and all.  urllib3's
    ``chunked`` says yes to any list that names chunked ("gzip, chunked"); this says yes to
    chunked alone, and :func:`_refuse_encoding` refuses the others."""
    from .transport import chunked_alone  # (loaded: the answer came through it)

    return chunked_alone(response.headers.getlist("Transfer-Encoding"))


def _refuse_encoding(response: urllib3.BaseHTTPResponse, url: str) -> None:
    """Refuse a body in a Content-Encoding that was not asked for (identity was): its bytes are
    not the file's, and storing them under the file's name would be a silent lie.  Unless the
    file's name says it is compressed that way: then the label is the file's own, and its bytes
    are the file's, as curl, wget and pip keep them.  Refuse as well a Transfer-Encoding other than
    chunked alone (see :func:`_chunked`), which no name makes the file's own: nothing here decodes
    its codings, and a body that names chunked but is not read as chunked would be stored with its
    framing, or cut short by a close that seems its end."""
    coding = _field(response, "Transfer-Encoding")
    if coding.lower() not in ("", "identity") and not _chunked(response):
        response.close()
        raise DownloadError(f"{url}: the server sent the file with Transfer-Encoding {quoted(coding)}, which "
                            "is not read here (only 'chunked' alone is); refusing to store its bytes as the file")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return
    from urllib.parse import unquote, urlsplit

    if unquote(urlsplit(url).path).lower().endswith(_OWN_ENCODINGS.get(encoding, ())):
        return
    response.close()
    raise DownloadError(f"{url}: the server sent the file with Content-Encoding {quoted(encoding)} "
                        "though none was asked for; refusing to store encoded bytes as the file")


#: The answers of a gateway that could not get one from the next server (Bad Gateway, Service
#: Unavailable, Gateway Timeout): a forwarding proxy's own when it cannot reach the origin or its
#: parent, or the origin's (or the origin's own gateway's), relayed.
_GATEWAY_FAILURES = (502, 503, 504)


def _proxy_failure(response: urllib3.BaseHTTPResponse, transport: Transport) -> str | None:
    """Why the proxy in use failed ``response``'s request itself, if the answer says it did: a
    502, 503 or 504 that a proxy that forwards the request (:meth:`Transport.forwards`) marks as
    its own.  Squid marks the answers it makes with ``X-Squid-Error`` and a ``Via`` of its own hop
    alone (or none); one relayed from an origin behind a squid of its own has that origin's hop in
    ``Via`` before the site squid's, and is the origin's.  But a relayed answer may carry any
    header, and the origin's own 503 with ``X-Squid-Error`` and no ``Via`` reads as the proxy's:
    such an answer is retried through the proxy as any 5xx, and only when the retries are spent
    and the last answer still reads so does the route go on past the proxy (one answer of an
    origin moves no client off its site's proxy).  A proxy gone past so, that the route comes back
    to in the same request (a later member's connection failed), is gone past at its first such
    answer.  A proxy that marks nothing (nginx, Apache's mod_proxy: their own errors look like
    relayed ones) has its 5xx taken for the origin's.  None if the answer does not read as the
    proxy's failure."""
    squid_error = _field(response, "X-Squid-Error")
    if response.status not in _GATEWAY_FAILURES or not squid_error or not transport.forwards():
        return None
    # Via lists a hop per comma; a hop's comment (in parentheses) may hold commas of its own.
    hops = [hop for hop in re.sub(r"\([^)]*\)", "", _field(response, "Via")).split(",") if hop.strip()]
    if len(hops) > 1:
        return None
    return f"HTTP {response.status}, its own error: X-Squid-Error {quoted(squid_error)}"


def _origin(url: str) -> str:
    """The scheme, host and port of ``url``: what a connection is made to."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


#: The names of urllib3's connections, which begin the messages of their errors.
_CONNECTIONS = ("HTTPConnection", "HTTPSConnection", "SOCKSConnection", "SOCKSHTTPSConnection")


#: How http.client begins the error of a CONNECT that a proxy refused, its status line following.
_TUNNEL_REFUSED = "Tunnel connection failed: "


def _reason(exc: BaseException) -> str:
    """A short reason for a urllib3 or socket error (urllib3 nests and decorates them)."""
    inner = getattr(exc, "reason", None)
    if isinstance(inner, BaseException):
        return _reason(inner)
    if len(exc.args) == 2 and isinstance(exc.args[1], BaseException):  # ProxyError(what, why)
        answer = _answer_problem(exc.args[1])
        if answer is not None:
            from urllib3.exceptions import ProtocolError

            # ProtocolError("Connection aborted.", why): urllib3's words for any failure before an answer
            return answer if isinstance(exc, ProtocolError) else f"{exc.args[0]}: {answer}"
        why = _reason(exc.args[1])
        # ProtocolError("Connection broken: IncompleteRead(...)", IncompleteRead(...)) says it twice
        return exc.args[0] if why in str(exc.args[0]) else f"{exc.args[0]}: {why}"
    if len(exc.args) == 2 and isinstance(exc.args[1], str):  # ConnectTimeoutError(connection, what)
        return exc.args[1]
    socks = sys.modules.get("socks")  # PySocks, loaded if a SOCKS proxy is in use
    refusal = exc.__cause__ or exc.__context__
    if socks is not None and isinstance(refusal, socks.ProxyError):
        # urllib3 words both "Failed to establish a new connection", whoever failed.
        if isinstance(refusal, socks.ProxyConnectionError):
            return f"Unable to connect to proxy: {refusal.socket_err or refusal.msg}"
        return f"the SOCKS exchange failed: {refusal.msg.removeprefix('Socket error: ')}"
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc) or type(exc).__name__
    code, _, reason = text.removeprefix(_TUNNEL_REFUSED).partition(" ")
    if text.startswith(_TUNNEL_REFUSED) and code.isdigit():  # a proxy's status line
        return _TUNNEL_REFUSED + _status(int(code), reason)
    # "HTTPConnection(host=..., port=...): Failed to establish a new connection: [Errno 111] ..."
    return text.rpartition("): ")[2] if text.startswith(_CONNECTIONS) else text


def _status(code: int, reason: str | None) -> str:
    """A status code and its reason phrase, as a message shows them: the phrase bare if it is the
    code's own (RFC 9110's, in upper or lower case), else as what the server says (see
    :func:`~sharedcache.errors.said_by_server`).  The phrase is the server's to choose, and one
    may repeat a token it was sent, or hold a lone quote that would hide the quoting of the rest
    of the line from :func:`~sharedcache.errors.without_queries`."""
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "(unknown status)"
    if not reason or ascii_lower(reason) == ascii_lower(phrase):
        return f"{code} {reason or phrase}"
    return f"{code} ({said_by_server(reason)})"


def _answer_problem(exc: BaseException) -> str | None:
    """What was wrong with the answer to a request, for an error that http.client raised as it
    read the answer's head (from the server, or from a proxy); None for any other error."""
    import http.client  # loaded with urllib3 already

    from .transport import HeadCutError  # (loaded: the answer came through it)

    if isinstance(exc, HeadCutError):
        return str(exc)
    if isinstance(exc, http.client.RemoteDisconnected):  # (a BadStatusLine too)
        return "the connection was closed without an answer"
    if isinstance(exc, http.client.BadStatusLine):
        first = str(exc).rstrip("\r\n")  # its one argument, the line
        return f"the answer is not HTTP: it begins with {quoted(first) if first else 'an empty line'}"
    if isinstance(exc, http.client.LineTooLong):  # "got more than 65536 bytes when reading header line"
        return f"the answer's head is too long: {exc}"
    if isinstance(exc, http.client.HTTPException) and not isinstance(exc, http.client.IncompleteRead):
        # "got more than 100 headers", the cap on 1xx answers
        return f"the answer was refused: {str(exc) or type(exc).__name__}"
    return None


class _WholeAgain(ResumeError):
    """A range asked for was answered with the whole file, of the same version and size: the
    server ignores ranges, or (the version being a date) takes the date for too recent to be sure
    of.  ``response`` is that answer, not yet read; whoever catches this reads or closes it."""

    def __init__(self, message: str, response: Any) -> None:
        super().__init__(message)
        self.response = response


class _Refused(DownloadError):
    """A part's request refused with one of :data:`_BUSY`: one connection too many."""


#: The failures of a part that one connection goes on from (see :meth:`_HttpStream.read`).
_FALLS_BACK = (ResumeError, _Refused)


class _HttpStream(SourceStream):
    """The file from ``start`` on (from 0 if it cannot be continued there): through one connection,
    or in parts over ``ctx.fetch.connections`` connections when the server allows it."""

    def __init__(self, url: str, ctx: Context, start: int, validator: str | None,
                 login: tuple[str, str] | None = None) -> None:
        # First, for close(), which the finalizer calls whatever stopped the making (a signal's
        # exception too, in the import of urllib3): a stream not made is closed as it fails.
        self._transports: dict[str, Transport] = {}  # by origin: see _transport
        self._transports_lock = threading.Lock()  # parts ask from their threads
        self._heartbeat: _Heartbeat | None = None  # with a speed limit: see running_time
        super().__init__()
        try:
            self._start(url, ctx, start, validator, login)
        except BaseException:
            self._clear()
            self._abandon()
            raise

    def _start(self, url: str, ctx: Context, start: int, validator: str | None,
               login: tuple[str, str] | None) -> None:
        """Ask for the file, and keep what reads the rest of it."""
        _room_for_the_stack()
        # Loaded with the HTTP stack, not by the first resolution of a host name (the socket module
        # looks the codec up for each): a library it needs that cannot be mapped (under a cap on
        # memory) is then this ImportError, which says so, not "unknown encoding: idna".
        import encodings.idna  # noqa: F401

        import urllib3

        from .transport import TlsOptions

        self.url = url
        self.fetch = fetch = ctx.fetch
        self.notice = ctx.notice
        self.deadline = ctx.deadline
        self.checksummed = ctx.checksummed
        self.refresh = ctx.refresh
        self.retries = fetch.retries
        self.errors = (urllib3.exceptions.HTTPError, OSError)
        if fetch.speed_limit:
            self._heartbeat = _Heartbeat.started()
        self._connections = fetch.connections
        # Credentials: the Authorization of every request of this URL, and the TLS trust and
        # client certificate of every pool of its transport.
        self._auth = Authorization(fetch.credentials, url, login)
        # The client certificate is presented to every server the download reaches, the targets
        # of redirects too, as curl and davix present it: grid storage redirects to disk servers
        # that ask for it.  An HTTPS proxy is verified against the same CAs and shown none.
        self._tls = TlsOptions(tls_context(fetch.credentials, url),
                               proxy_context=tls_context(fetch.credentials, url, client_certificate=False))
        #: Where the parts and the continuations of this download are asked for: the URL that gave
        #: the first answer, once its redirects are followed (see continuation).
        self.resume_url = url
        response = self._first_response(start, validator)
        self._position = self.start
        self._reader = self._rest(response)

    def _rest(self, response: Any) -> _Body | RangedReader:
        """The reader of the file after the first answer: in parts over several connections if the
        answer is a 206 with the size and a validator to check the parts against, and the file is
        large enough to be worth it; else the first answer alone, continued after interruptions."""
        if response.status == 206 and self.validator is not None and self.total is not None:
            connections = self._connections_to(self.resume_url)
            size = part_size(self.total - self.start, connections)
            if size is not None:
                first = _Body(self, self.start, self.start + size - 1, response)
                return RangedReader(lambda start, end: _Body(self, start, end - 1), self.start, self.total,
                                    part_size=size, connections=connections, first=first,
                                    goes_on=_FALLS_BACK)
        return _Body(self, self.start, None, response)

    def _first_response(self, start: int, validator: str | None) -> Any:
        # A resume asks for the rest, guarded by the validator.  A fresh download that may use several
        # connections asks for "bytes=0-" (unless its route is a proxy that sees it, which gets the
        # whole file: see _connections_to): a 206 answer shows that the server serves ranges, and
        # gives the size and the validator that the parts are then checked against.  Past the first
        # part that answer is dropped, wasting what is in flight on its connection; a bounded first
        # range would instead cost a second request for every file that turns out not worth splitting.
        start = start if validator else 0
        if start or self._connections > 1:
            response = self._get(start, validator, may_split=True)
            if response.status == 200 or self._continuation_problem(response, start, validator) is None:
                self._adopt(response)
                return response
            response.close()  # a wrong range or 416 (the file shrank, or it is empty): fetch it whole
        response = self._get(None, None)
        if response.status != 200:
            raise self._status_error(response)
        self._adopt(response)
        return response

    def _connections_to(self, target: str) -> int:
        """How many connections a download from ``target`` may use: one through a proxy that sees
        its requests (a site's cache, which parts defeat: see the module's docstring)."""
        return 1 if self._transport(target).forwards() else self._connections

    def _adopt(self, response: Any) -> None:
        _refuse_encoding(response, self.url)
        self.resume_url = response.url
        self.validator = _validator(response)
        content_range = _content_range(response)
        if response.status == 206 and content_range is not None:
            self.start, _, self.total = content_range
        else:
            self.start = 0
            # A chunked body ends with its final chunk, whatever a Content-Length says: http.client
            # reads it so (RFC 9112 §6.3), and the header's length would cut it, or take its end for a cut.
            length = "" if _chunked(response) else _field(response, "Content-Length")
            self.total = _content_length(length)
            if self.total is not None and self.total >= _MAX_SIZE:
                response.close()
                raise DownloadError(f"{self.url}: the server announces an absurd size "
                                    f"(Content-Length {quoted(length)})")

    def _status_error(self, response: Any) -> DownloadError:
        # (Within the deadline, as every wait of a download is.)
        wait = _ERROR_BODY_SECONDS if self.deadline is None else min(_ERROR_BODY_SECONDS,
                                                                       self.deadline - time.monotonic())
        says = _server_says(response, wait) if response.status >= 400 and wait > 0 else None
        response.close()
        target = response.url or self.url
        refused = ""
        # A proxy's 407 is of its credentials from this process's settings, and so is the origin's
        # 401 or 403 (see AuthorizationError).
        kind = AuthorizationError if response.status == 407 else DownloadError
        if response.status in (401, 403):
            # The credentials went to the URL's own origin alone (see _get): a refusal after a
            # redirect elsewhere is of a request that carried none of them.
            if _origin(target) == _origin(self.url):
                kind, refused = AuthorizationError, f" ({self._auth.sent})"
            else:
                refused = " (redirected to another origin: the Authorization of the URL was not sent there)"
        elif response.status == 203:  # RFC 9110 15.3.4: what a transforming proxy made of a 200
            refused = " (a proxy on the way changed the file: its bytes are not the server's)"
        elif 200 <= response.status < 300:  # a success, but not a file's: curl would store its body
            refused = " (only a 200 answer, or a 206 to a range request, brings the file)"
        elif 300 <= response.status < 400:  # (curl -L follows any with a Location)
            location = _field(response, "Location")
            if response.status in response.REDIRECT_STATUSES:  # (the ones get_redirect_location follows)
                refused = " (a redirect without a Location)"
            elif response.status == 304:
                refused = " (the answer to a conditional request, and none was made)"
            else:
                refused = (" (not followed: only 301, 302, 303, 307 and 308 are redirects"
                           + (f"; its Location is {quoted(location)}" if location else "") + ")")
        said = "" if says is None else server_says(says)
        return kind(f"HTTP {_status(response.status, response.reason)} for {self._where(target)}{refused}{said}")

    def _transport(self, target: str) -> Transport:
        """The connections to ``target``'s origin.  Each origin of a redirect chain has its own
        route, as curl takes one for each URL it is sent to: a host that ``no_proxy`` names is
        reached directly, and the others through the proxies."""
        from .transport import Transport

        origin = _origin(target)
        with self._transports_lock:
            transport = self._transports.get(origin)
            if transport is None:
                transport = self._transports[origin] = Transport(
                    target, self.fetch, maxsize=self._connections, notice=self.notice, tls=self._tls)
            return transport

    def _where(self, target: str) -> str:
        """How messages name a request of ``target``: the URL asked for, the URL that a redirect
        led to, and the proxy."""
        # A server chooses the URL it redirects to, up to 64 KiB of it: a long one is shown by its ends,
        # and one with a space quoted, so that the other members of a group cache see where it ends
        # (see errors.without_queries).
        bare = len(target) <= QUOTED_CHARACTERS and not any(char.isspace() for char in target)
        shown = target if bare else quoted(target)
        redirected = "" if target == self.url else f", redirected to {shown}"
        return f"{self.url}{redirected}{self._transport(target).via()}"

    def _redirected(self, target: str, location: str, redirects: int) -> str:
        """Where a redirect from ``target`` to ``location`` leads (the user info of a URL there is
        dropped: a server does not choose what to send); an error if nowhere we may go."""
        from urllib.parse import urljoin, urlsplit

        if redirects >= _MAX_REDIRECTS:
            raise DownloadError(f"cannot download {self.url}: more than {_MAX_REDIRECTS} redirects")
        try:
            parts = urlsplit(urljoin(target, location.strip()))
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError(f"cannot download {self.url}: redirected to {quoted(location)}, "
                                "which is no http:// or https:// URL")
        if "\\" in parts.netloc:  # (as in a source's URL: the route would be chosen for another host)
            raise DownloadError(f"cannot download {self.url}: redirected to {quoted(location)}, whose host "
                                "holds a '\\' (URL parsers disagree on where such a host ends)")
        # The user info is dropped from the authority as urlsplit found it: a "@" in the query of a
        # URL without a path ("http://host?sig=a@b") is no end of user info.
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    def _get(self, start: int | None, validator: str | None, last: int | None = None,
             stop: threading.Event | None = None, url: str | None = None, busy_fails: bool = False,
             may_split: bool = False) -> Any:
        """GET bytes ``start`` to ``last`` (the whole file if ``start`` is None, to its end if ``last``
        is), guarded by ``validator``, from ``url`` (default: the source's URL); follows redirects,
        each through the route of its own URL (:meth:`_transport`); retries connection failures and
        5xx answers from ``url``, but with ``busy_fails`` not the answers of :data:`_BUSY`.  The answer's
        ``url`` is the URL that gave it.  ``may_split``: the first request of a download that may be
        split, which asks for a range from byte 0 only where the route that sends it lets the
        download be split (:meth:`_connections_to`), decided at each attempt and each redirect (a
        chain may fail over past a proxy, a redirect lead to a host that ``no_proxy`` names)."""
        import urllib3

        from .transport import shown

        ranges: dict[str, str] = {}
        if start is not None:
            ranges["Range"] = f"bytes={start}-{'' if last is None else last}"
            if validator:
                ranges["If-Range"] = validator
        url = url or self.url
        attempt, target, redirects = 0, url, 0
        failed_over: set[int] = set()  # the members failed over for their own errors past their retries
        while True:
            asked: float | None = None  # the wait an answer's Retry-After asks for
            transport = self._transport(target)
            member, pool = transport.pool()
            where = self._where(target)
            # Headers given to a request replace the pool's (User-Agent...): they are merged.  The
            # credentials go to the origin of the URL asked for alone.  Whether a download is split is
            # the route's that sends this attempt: the first may have failed over, or been redirected.
            ranged = not (may_split and start == 0 and self._connections_to(target) == 1)
            headers = {**pool.headers, **(ranges if ranged else {}), **(_REFRESH[self.refresh] if self.refresh else {})}
            if _origin(target) == _origin(self.url):
                headers.update(self._auth.headers)
            try:
                response = pool.request("GET", target, headers=headers, redirect=False,
                                        preload_content=False, decode_content=False, **self._timeout(pool))
            except (*self.errors, ValueError) as exc:  # ValueError: a URL that http.client refuses
                inner = getattr(exc, "reason", exc)
                permanent = isinstance(inner, (urllib3.exceptions.SSLError,  # no retry fixes these
                                               urllib3.exceptions.ResponseError,
                                               ValueError))  # urllib3's LocationValueError is one
                # No connection through this member (a proxy that is down, or refuses the tunnel):
                # the next member of the route is tried at once.
                connecting = isinstance(inner, (urllib3.exceptions.NewConnectionError,
                                                urllib3.exceptions.ConnectTimeoutError,
                                                urllib3.exceptions.ProxyError))
                if connecting and not permanent and transport.fail_over(member, _reason(exc)):
                    continue
                # A proxy that answered and refused the tunnel (407, 403) would refuse it again.
                cause = inner.args[1] if isinstance(inner, urllib3.exceptions.ProxyError) and len(inner.args) > 1 \
                    else None
                # So would an HTTPS proxy whose certificate is not trusted.
                refused = isinstance(cause, (OSError, urllib3.exceptions.SSLError)) and not isinstance(
                    cause, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
                if permanent or refused or attempt >= self.retries:
                    why = certificate_problem(exc, self.fetch.credentials) or _reason(exc)
                    # (http.client says a refused tunnel's status in these words alone.)
                    kind = AuthorizationError if str(cause).startswith(f"{_TUNNEL_REFUSED}407") \
                        else DownloadError
                    raise kind(f"cannot download {where}: {why}{_after(attempt + 1)}") from None
                why = _reason(exc)
            else:
                # Only a proxy answers 407, to a plain-HTTP request it forwards: the next member of
                # the route is tried at once, as when a proxy refuses a tunnel (past the last, the
                # answer stands: it would refuse again).
                if response.status == 407 and transport.via() and transport.fail_over(member, "HTTP 407"):
                    response.close()
                    continue
                location = response.get_redirect_location()
                if location:
                    response.close()
                    target = self._redirected(target, location, redirects)
                    redirects += 1
                    continue
                response.url = target
                if response.status < 500 and response.status not in _TRANSIENT:
                    if transport.forwards():
                        self.cached_by = shown(transport.route[member])
                    return response
                failure = _proxy_failure(response, transport)
                # A proxy that still answers that it cannot forward once its retries are spent is
                # failed over, and the next member gets the retries anew.  The route comes back to
                # it when a later member's connection fails: having had its retries, it is failed
                # over again at once, no attempt spent (the last member's failure spends one, so
                # a route of broken members ends with the retries).
                spent = member in failed_over
                if failure is not None and (spent or attempt >= self.retries) \
                        and transport.fail_over(member, failure):
                    response.close()
                    if not spent:
                        failed_over.add(member)
                        attempt = 0
                    target, redirects = url, 0
                    continue
                asked = _retry_after(response)
                error = self._status_error(response)
                if busy_fails and response.status in _BUSY:
                    raise _Refused(str(error)) from None
                if attempt >= self.retries:
                    raise DownloadError(f"{error}{_after(attempt + 1)}") from None
                if asked is not None and asked > _RETRY_AFTER_MAX:
                    raise DownloadError(f"{error}, which asks to be asked again in {asked:.0f} s "
                                        f"(more than the {_RETRY_AFTER_MAX:.0f} s waited for)") from None
                why = f"HTTP {response.status}" + ("" if asked is None else f", which asks for {asked:.3g} s")
            delay = max(self.fetch.delay(attempt), asked or 0.0)
            self.notice(f"retrying {where} in {delay:.3g} s ({why}; "
                        f"attempt {attempt + 2} of {self.retries + 1})")
            self.pause(delay, stop, why)
            attempt, target, redirects = attempt + 1, url, 0  # a redirect may lead elsewhere now

    def pause(self, seconds: float, stop: threading.Event | None, why: str) -> None:
        """Wait before a retry, which ``why`` failed; a part stopped meanwhile (``stop`` set) gives
        up, and so does everyone at the deadline."""
        left = self.time_left(why)
        if left is not None:
            seconds = min(seconds, left)
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise self.stopped_error()
        self.time_left(why)

    def time_left(self, why: str | None = None) -> float | None:
        """Seconds left before the population's deadline (None: it has none); past it,
        :class:`WaitTimeoutError`, which says ``why`` the last attempt failed, if one did: a
        deadline that ends the retries of a refused connection says that it was refused."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            last = f" (the last attempt: {why})" if why else ""
            raise WaitTimeoutError(f"{self.url} gave no complete answer in the time left{last}")
        return left

    def _timeout(self, pool: Any) -> dict[str, Any]:
        """The timeouts of a request: the pool's, shortened to the time left before the deadline."""
        left = self.time_left()
        if left is None:
            return {}
        import urllib3

        configured = pool.connection_pool_kw.get("timeout") or urllib3.Timeout()

        left = math.ceil(left * 100) / 100  # (shown in urllib3's messages: "read timeout=2.88")

        def shortened(seconds: object) -> float:
            return min(seconds, left) if isinstance(seconds, (int, float)) else left

        return {"timeout": urllib3.Timeout(connect=shortened(configured.connect_timeout),
                                           read=shortened(configured.read_timeout))}

    def running_time(self) -> float:
        """Seconds on the clock that the speed limit judges by: one that stands still while this
        process is not running (see :class:`_Heartbeat`); without a speed limit, none is needed,
        and without the heartbeat's thread, the wall clock serves."""
        return time.monotonic() if self._heartbeat is None else self._heartbeat.running_time()

    def stopped_error(self) -> DownloadError:
        return DownloadError(f"download of {self.url} was stopped")

    def _continuation_problem(self, response: Any, start: int, validator: str | None,
                              last: int | None = None) -> str | None:
        """Why ``response`` cannot be the bytes ``start`` to ``last`` (to the end if None) of the file
        that ``validator`` names, or None if it can."""
        if response.status == 200:
            return "the server sent the whole file again (it changed, or it ignores ranges)"
        if response.status == 416:
            return f"the server no longer has {start} bytes"
        if response.status != 206:
            raise self._status_error(response)
        content_range = _content_range(response)
        if content_range is None or content_range[0] != start or last not in (None, content_range[1]):
            asked = f"{start}-{'' if last is None else last}"
            return f"asked for bytes {asked} but got {_shown_range(response)}"
        total = content_range[2]
        if self.total is not None and total != self.total:
            return size_change(self.total, total)
        now = _validator(response)
        if validator is not None and now is None:
            # A server that ignores If-Range answers with the range of whatever it has now; one
            # that also names no version cannot be taken at its word (RFC 9110 15.3.7 has a 206
            # repeat the ETag its 200 would send).
            return "the server did not say which version it sent (no ETag or Last-Modified)"
        if validator is not None and now != validator:
            return f"it changed ({validator} became {now})"
        return None

    def continuation(self, position: int, last: int | None, stop: threading.Event, busy_fails: bool = False,
                     broken_off: str | None = None) -> Any:
        """An answer with bytes ``position`` to ``last`` (to the end if None) of the same file;
        None if the file's size was not known and it ends at ``position`` (a 416 that says its
        size is that); else :class:`ResumeError` if the server does not give exactly those.

        It is asked of :attr:`resume_url`, where the redirects of the first request led, as aria2
        and curl continue a download: a redirector that spreads requests over mirrors would send
        each part to another mirror, whose validators differ, and the part would be fetched again.
        A URL a redirect led to that has since gone (403, 404 or 410: a mirror's signed URL that
        expired) or that fails past its retries (a mirror that went down: the redirector would send
        the request elsewhere) is given up for the source's URL, once for each request; the URL its
        redirects lead to then serves the rest, if it has the same file.  ``busy_fails``: as
        :meth:`_get`'s; ``broken_off``: why the transfer stopped, which a failure to resume names
        too (it may be what the user can mend: a server that stalls)."""
        redirected = self.resume_url != self.url
        try:
            response = self._get(position, self.validator, last, stop, self.resume_url, busy_fails)
        except DownloadError:
            if not redirected or stop.is_set():
                raise
            response = None
        if response is None or (redirected and response.status in _EXPIRED):
            if response is not None:
                response.close()
            response = self._get(position, self.validator, last, stop, busy_fails=busy_fails)
            if response.status == 206:
                self.resume_url = response.url
        if (response.status == 416 and last is None and self.total is None
                and _size_of_unsatisfiable(response) == position):
            response.close()
            return None
        _refuse_encoding(response, self.url)
        problem = self._continuation_problem(response, position, self.validator, last)
        if problem is not None:
            after = "" if broken_off is None else f" (it broke off: {broken_off})"
            message = f"cannot resume {self.url} at byte {position}{after}: {problem}"
            if response.status == 200 and _validator(response) == self.validator and \
                    _content_length("" if _chunked(response) else _field(response, "Content-Length")) == self.total:
                raise _WholeAgain(message, response)
            response.close()
            raise ResumeError(message)
        return response

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else CHUNK
        try:
            data = self._reader.read(size)
        except _FALLS_BACK as exc:
            if not isinstance(self._reader, RangedReader):
                raise
            # A part was not the same file (it changed, or the server stopped serving ranges), or
            # could not be fetched (a server that allows a client one connection refuses the others
            # with 503 or 429 while the first is busy).  What came before it was checked, and has
            # been handed on with what the part itself received (the reader finishes the parts
            # before it): go on with one connection from there, with a range guarded by If-Range,
            # so that no byte is fetched twice and a file that did change starts the population over.
            self._reader.close()
            self.notice(f"going on with one connection from byte {self._position} of {self.url} "
                        f"(a part failed: {exc})")
            self._reader = _Body(self, self._position, None)
            data = self._reader.read(size)
        self._position += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._reader.close()
            self._clear()

    def _clear(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        with self._transports_lock:
            for transport in self._transports.values():
                transport.clear()


class _Heartbeat:
    """A clock of the time this process runs, for the speed limit: a process stopped (SIGSTOP, as
    a batch system suspends a job, or Ctrl-Z) or not scheduled receives nothing, through no fault
    of the origin; counted, a stop longer than ``speed_time`` would fail the download as too slow
    once the process is continued, and its waiters with it.

    A daemon thread beats every :data:`_BEAT` seconds, for as long as the download, and the clock
    counts at most :data:`_BEAT_COUNTS_AT_MOST` from one beat to the next: while the process runs
    (a wait to retry too), beats come on time and the clock keeps to ``time.monotonic``; a stop
    holds the beats back, and the clock counts one late beat's worth of it, whether the next beat
    or a read comes first after the continue (a read that takes at once all that came meanwhile).
    The stop is told by the process not running, never by the socket: what waits there is the
    same for a stopped reader as for an origin that sends in bursts, or over TLS (the start of a
    record always waits), and judging by it would let slow origins pass.  Nor by a handler of
    SIGCONT: Python runs it in the main thread alone, which a program using the library may not
    give up, and the parts of a download read in threads of their own, which may judge their
    window before it has run.

    Where the system refuses the thread (:mod:`sharedcache.loaders.threads`), there is no
    heartbeat: the speed limit judges by ``time.monotonic``, a stop counted against the origin,
    rather than every download failing for a thread that only spares stops."""

    def __init__(self) -> None:
        start = time.monotonic()
        #: The time of the last beat, and this clock's reading then: one tuple, read and replaced
        #: whole, so that a reader in another thread never sees one without the other.
        self._beat = (start, start)
        self._stopped = threading.Event()

    @classmethod
    def started(cls) -> _Heartbeat | None:
        """A heartbeat beating in a thread of its own; None if the system refused the thread."""
        heartbeat = cls()
        beating = threads.start(threading.Thread(target=heartbeat._beats, name="sharedcache-heartbeat", daemon=True))
        return heartbeat if beating else None

    def running_time(self) -> float:
        beat, reading = self._beat
        return reading + min(time.monotonic() - beat, _BEAT_COUNTS_AT_MOST)

    def _beats(self) -> None:
        while not self._stopped.wait(_BEAT):
            now = time.monotonic()
            beat, reading = self._beat
            self._beat = (now, reading + min(now - beat, _BEAT_COUNTS_AT_MOST))

    def stop(self) -> None:
        self._stopped.set()


class _Body:
    """Bytes ``start`` to ``last`` (to the end if None) of the file: from ``response`` if one is under
    way, else from a range request.  An interrupted transfer goes on with a range request guarded by
    ``If-Range`` (see :meth:`_HttpStream.continuation`), after a backoff, at most ``retries`` times in
    a row without progress.  A :class:`~sharedcache.loaders.ranged.Part` of a parallel download."""

    def __init__(self, http: _HttpStream, start: int, last: int | None, response: Any = None) -> None:
        self._http = http
        self._position = start
        self._last = last
        self._end = http.total if last is None else last + 1
        self._response = response
        self._failures = 0  # consecutive interruptions without progress
        #: Why the end of a body ended by a close is not known to be the file's, while what follows
        #: it is asked for (None otherwise).
        self._closed_early: str | None = None
        self._broken_off: str | None = None  # why the last transfer stopped, while the rest is asked for
        self._skipping = 0  # bytes of the answer under way to drop: they are the ones before _position
        self._stop = threading.Event()
        #: Since when, and how many bytes since (speed limit), from the first read: the time
        #: before it is the consumer's (a download gone on from reads and hashes its kept bytes
        #: first, and the first part of several connections waits for that too).  From then on, a
        #: consumer slower than the origin (a slow disk, an unpacker) holds the origin back through
        #: the connection, and counts against it, as in curl: the limit is the download's.  (Any
        #: other part is read from the moment it is made.)
        self._window: tuple[float, int] | None = None

    def read(self, size: int) -> bytes:
        if self._window is None:
            self._window = (self._http.running_time(), 0)
        if self._end is not None:
            size = min(size, self._end - self._position)
            if size <= 0:
                return b""
        while True:
            if self._response is None:
                self._check_speed(0)
                # A part that the server refuses as one connection too many fails at once: the others
                # are then stopped and one connection goes on (see _HttpStream.read).
                try:
                    self._response = self._http.continuation(self._position, self._last, self._stop,
                                                             busy_fails=self._last is not None,
                                                             broken_off=self._broken_off)
                except _WholeAgain as again:
                    if self._closed_early is not None:
                        # A server that ignores ranges would send the same body again, ended the same way.
                        again.response.close()
                        return self._unconfirmed_end(self._closed_early, "serves no ranges to ask for what follows")
                    if not self._read_on(again):
                        raise
                if self._stop.is_set():  # aborted while asking: abort() may not have seen this answer
                    raise self._http.stopped_error()
                if self._response is None:  # the file ends here: what came was the whole of it
                    self._end = self._position
                    return b""
                content_range = _content_range(self._response)
                if self._end is None and content_range is not None and content_range[2] is not None:
                    # The size, now known: the end is checked against it.
                    self._end = self._http.total = content_range[2]
            try:
                # read1 (urllib3 >= 2.3) hands on what has arrived rather than wait for a full buffer.
                response = self._response
                self._bound_wait(response)
                data: bytes = response.read1(size) if hasattr(response, "read1") else response.read(size)
            except self._http.errors as exc:
                self._interrupted(_reason(exc))
                continue
            if data and self._skipping:  # the bytes of a whole answer that were handed on already
                skipped = min(self._skipping, len(data))
                self._skipping -= skipped
                data = data[skipped:]
                if not data:
                    continue
            if data:
                self._position += len(data)
                self._failures = 0
                self._closed_early = None
                self._check_speed(len(data))
                return data
            if self._end is None:
                if not _chunked(self._response):
                    # Ended by a close, which a cut connection also is: nothing says it is whole.
                    # Asking for what follows tells: the rest, or a 416 saying the file ends here.
                    why = (f"the server sent neither a length nor a chunked body, so the {self._position} "
                           "bytes received cannot be known to be the whole file")
                    if self._http.validator is None:
                        # Nothing can be asked: each download from the start would end the same way.
                        return self._unconfirmed_end(why, "gives no ETag or Last-Modified to ask for what follows")
                    self._closed_early = why
                    self._interrupted(why)
                    continue
                return b""
            self._interrupted(f"the connection closed after {self._position} of {self._http.total} bytes")

    def _read_on(self, again: _WholeAgain) -> bool:
        """Whether to read on from ``again``'s answer, the whole file again, of the same date and
        size, past the bytes already handed on: with one connection (a part fails, and one connection
        goes on: see _HttpStream.read) and a date for validator, which Apache takes for too recent to
        be sure of when it is under 60 s old (RFC 9110 8.8.2.2) and answers every range guarded by it
        with the whole file.  An ETag is exact: a server that answers a range guarded by it with the
        whole file ignores ranges, and the population starts over."""
        # (A file rewritten within the second at the same size has the same date: only the checksum
        # above tells such a mix of two versions, and without one the population starts over.)
        if self._last is not None or not (_is_date(self._http.validator) and self._http.checksummed):
            again.response.close()
            return False
        self._http.notice(f"reading on from byte {self._position} of {self._http.url} in the server's answer "
                          "with the whole file: it has the same Last-Modified and size (a date the server "
                          "takes for too recent to serve a range by)")
        self._response = again.response
        self._skipping = self._position
        return True

    def _unconfirmed_end(self, why: str, server: str) -> bytes:
        """The end of a body ended by a close that nothing here can confirm (``why``), from a
        server that cannot be asked for what follows: handed on to the checksum above, which proves
        the bytes whole, else refused at once."""
        http = self._http
        self.close()
        if not http.checksummed:
            raise DownloadError(f"download of {http.url} refused: {why}, the server {server}, and "
                                "the recipe has no checksum after the source to prove them whole")
        http.unconfirmed_end = ("the server ended the body by closing the connection, without a length, "
                                f"so it may have been cut after {self._position} bytes")
        self._end = self._position
        return b""

    def _bound_wait(self, response: Any) -> None:
        """With a deadline, let the next read wait no longer than the time left (a silent server
        would otherwise hold it for the whole read timeout)."""
        left = self._http.time_left()
        sock = _socket_of(response)
        if left is not None and sock is not None:
            from .transport import read_timeout

            sock.settimeout(min(read_timeout(self._http.fetch), left))

    def _check_speed(self, got: int) -> None:
        """Fail if fewer than ``speed_limit`` bytes a second came over the last ``speed_time`` seconds
        that this process ran (a process stopped meanwhile gets the bytes queued for it)."""
        fetch = self._http.fetch
        assert self._window is not None  # (started by the read that calls this)
        since, count = self._window
        count += got
        now = self._http.running_time()
        self._window = (since, count)
        if not fetch.speed_limit or now - since < fetch.speed_time:
            return
        if count < fetch.speed_limit * (now - since):
            raise DownloadError(
                f"download of {self._http.url} too slow: {count} bytes in the last {now - since:.0f} s "
                f"(less than {fetch.speed_limit} bytes/s for {fetch.speed_time:g} s), at byte {self._position}")
        self._window = (now, 0)

    def _interrupted(self, why: str) -> None:
        """Get ready to ask for the rest, or give up: without a validator, after too many attempts,
        or at the deadline."""
        self.close()
        self._broken_off = why
        http = self._http
        http.time_left(why)
        if http.validator is None:  # started over by the population, which needs no validator
            if not self._position:
                raise ResumeError(f"download of {http.url} failed before its first byte: {why}")
            raise ResumeError(f"download of {http.url} broke off at byte {self._position} ({why}), and cannot "
                              "go on from there: the server gives no ETag or Last-Modified to check it did not change")
        if self._failures >= http.retries:
            raise DownloadError(f"download of {http.url} failed at byte {self._position}: "
                                f"{why}{_after(self._failures + 1)}")
        delay = http.fetch.delay(self._failures)
        http.notice(f"resuming {http.url} at byte {self._position} in {delay:.2g} s ({why}; "
                    f"attempt {self._failures + 2} of {http.retries + 1})")
        http.pause(delay, self._stop, why)
        self._failures += 1

    def close(self) -> None:
        self._skipping = 0
        if self._response is not None:
            self._response.close()
            self._response = None

    def abort(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # shutdown() (urllib3 >= 2.3) makes a read blocked in another thread return at once; without
            # it, or once the response is done, the reader stops at its next read or read timeout.
            with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
                response.shutdown()
