"""The connection layer of HTTP sources: the route of a URL (the proxies to try, in order), fail-over
along it, and the urllib3 pool managers.

The route of a URL:

* a host that ``no_proxy`` names (``FetchPolicy.no_proxy``, else ``no_proxy``/``NO_PROXY``) is
  reached directly.  As curl reads it: a comma-separated list of host names, each matching itself
  and its sub-domains (a leading dot is ignored), IP addresses or CIDR ranges, or ``*`` for all.
  A name outside ASCII is compared in its IDNA (``xn--``) form, the form it is sent in, on either
  side (curl converts the URL's host only, so that an entry written in Unicode names nothing);
* else the proxy chain of the settings (``--proxy``, ``SC_PROXY``, the config file), if set: its
  groups in order, the members of a group in random order (so that a fleet spreads over them);
* else curl's environment variables: ``http_proxy`` for ``http://`` URLs (lower case only: a CGI
  program may find ``HTTP_PROXY`` set from a request's ``Proxy:`` header), ``https_proxy`` or
  ``HTTPS_PROXY`` for ``https://`` ones, then ``all_proxy`` or ``ALL_PROXY`` for both; the lower
  case one wins when both are set.  (requests also reads ``HTTP_PROXY``; we follow curl.)
* else no proxy.

HTTPS through a proxy is a ``CONNECT`` tunnel: the proxy sees neither the URL's path nor the bytes.
A SOCKS proxy (``socks5h://``...; urllib3's ``contrib.socks``, with PySocks) makes the TCP connection
to the origin itself, for plain HTTP and TLS alike; with ``socks5h`` and ``socks4a`` it resolves the
host name too.

Fail-over: a connection error (refused, unreachable, connect timeout, a proxy's refusal to connect,
a tunnel that ends before the origin's TLS answers through it: :func:`_connection_ended`) or a
proxy's 407 moves on to the next member of the route at once, without a retry's back-off;
every member but the last connects with a short timeout (:data:`FAIL_OVER_CONNECT_TIMEOUT`), so
that a proxy that is down costs that much and not a failed job.  When the last member fails too,
the failure counts as one attempt of the retry policy, and the next attempt starts again from the
first member (a proxy may be back).  A 502, 503 or 504 that reads as the proxy's own (see
``sharedcache.loaders.http._proxy_failure``) is retried through it as any 5xx, an origin being
able to send one alike, and moves on to the next member, with the retries anew, only when they
are spent and the last answer still reads so.

A host name's addresses are raced as Happy Eyeballs races them (:func:`_first_to_connect`).

Every pool manager is built by :func:`pool_manager`, which takes the TLS and authentication
options (:class:`TlsOptions`): the one place where connections are configured.  Its connections
bound, in all, the steps that read a peer's words in pieces (:func:`_bounded_steps`): a timeout
bounds each wait for bytes only.  They read past informational answers to the final one, and
take a head that the end of the connection cut for no answer (:func:`_final_answer_class`).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

from ..config.settings import DIRECT, SOCKS_SCHEMES, FetchPolicy, ProxyChain, proxy_url
from ..errors import ConfigError, DownloadError, SettingError, raise_if_over_limit, shown_proxy
from . import threads

if TYPE_CHECKING:
    import http.client
    import socket
    import ssl
    from collections.abc import Callable, Mapping, Sequence

    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

_Connection = TypeVar("_Connection", bound="HTTPConnection")

#: Seconds a member of a route that has a successor may take to connect before we fail over.
FAIL_OVER_CONNECT_TIMEOUT = 5.0


def user_agent() -> str:
    from .. import __version__

    return f"shared-cache/{__version__}"


def route(url: str, fetch: FetchPolicy, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The proxies to try for ``url``, in order: each a proxy URL or ``DIRECT``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    no_proxy = fetch.no_proxy if fetch.no_proxy is not None else (
        environ.get("no_proxy") or environ.get("NO_PROXY") or "")
    if bypassed(parts.hostname or "", no_proxy):
        return [DIRECT]
    if fetch.proxy is not None:
        members: list[str] = []
        for group in fetch.proxy:
            members += random.sample(group, len(group))
        return members
    variable = curl_proxy(parts.scheme, environ)
    return [DIRECT] if variable is None else [variable[1]]


def curl_proxy(scheme: str, environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """The variable of curl's that names the proxy of URLs of ``scheme`` (``http``, ``https``),
    and that proxy's URL; None if none is set."""
    names = ("http_proxy",) if scheme == "http" else ("https_proxy", "HTTPS_PROXY")
    for name in (*names, "all_proxy", "ALL_PROXY"):
        if environ.get(name):
            try:
                return name, proxy_url(environ[name])
            except SettingError as e:
                raise ConfigError(f"{name}: {e.setting} {e.reason}") from None
    return None


def curl_proxies(environ: Mapping[str, str] = os.environ) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """What :func:`curl_proxy` gives ``http://`` URLs and ``https://`` ones: each variable that a
    download may read checked."""
    return curl_proxy("http", environ), curl_proxy("https", environ)


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``host`` is one that the ``no_proxy`` list names (curl's rules)."""
    import ipaddress

    host = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
        host = _on_the_wire(host) or host  # (one IDNA cannot encode fails on any route)
    for written in no_proxy.replace(" ", ",").split(","):
        entry = written.strip().lower().strip(".").removeprefix("[").removesuffix("]")
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = _on_the_wire(entry)  # None: no host is sent by that name
        if name is not None and (host == name or host.endswith("." + name)):
            return True
    return False


def _on_the_wire(name: str) -> str | None:
    """The host ``name`` as a request sends it: each label outside ASCII in its IDNA (``xn--``)
    form, as urllib3 encodes a URL's host; None if one has none.  An administrator writes
    ``no_proxy`` from DNS or a proxy's log, in that form, while ``urlsplit`` gives the URL's host
    as it was written: both sides must be compared so."""
    if name.isascii():  # (idna costs an import: ASCII names are nearly all of them)
        return name
    import idna

    try:
        return ".".join(label if label.isascii() else idna.encode(label, strict=True, std3_rules=True).decode()
                        for label in name.split("."))
    except idna.IDNAError:
        return None


def shown_chain(chain: ProxyChain) -> str:
    """A proxy chain as ``sc config`` shows it: its proxies by scheme, host and port."""
    return ";".join("|".join(shown_proxy(member) for member in group) for group in chain)


def shown(proxy: str) -> str:
    """A route member as messages name it: a proxy by scheme, host and port."""
    return "a direct connection" if proxy == DIRECT else f"proxy {shown_proxy(proxy)}"


def read_timeout(fetch: FetchPolicy) -> float:
    """How long one read may wait: never past the time that judges the transfer too slow."""
    return min(fetch.read_timeout, fetch.speed_time) if fetch.speed_limit else fetch.read_timeout


class TlsOptions:
    """How TLS connections are verified and how requests authenticate: ``context`` makes the
    ``ssl.SSLContext`` of the TLS connections (None for urllib3's defaults), when the first one
    is made; ``proxy_context`` that of the TLS connections to an HTTPS proxy (the same CAs, and
    no client certificate: the proxy is not the origin); ``headers`` are extra request headers.
    Empty by default: urllib3's defaults."""

    def __init__(self, context: Callable[[], ssl.SSLContext | None] | None = None,
                 headers: Mapping[str, str] | None = None, *,
                 proxy_context: Callable[[], ssl.SSLContext | None] | None = None) -> None:
        self.context = context
        self.proxy_context = proxy_context
        self.headers = dict(headers or {})


def pool_manager(member: str, fetch: FetchPolicy, *, connect_timeout: float, maxsize: int,
                 tls: TlsOptions | None = None) -> urllib3.PoolManager:
    """The pool manager for requests through route ``member`` (a proxy URL or ``DIRECT``)."""
    import urllib3

    tls = tls or TlsOptions()
    proxy: tuple[str | None, int | None] | None = None
    common: dict[str, Any] = dict(
        maxsize=maxsize,  # a connection per worker is kept for its next part
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout(fetch)),
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=False),
        headers={"User-Agent": user_agent(), "Accept-Encoding": "identity", **tls.headers},
    )
    if member == DIRECT:
        manager = urllib3.PoolManager(**common)
    elif member.partition("://")[0] in SOCKS_SCHEMES:
        # The proxy makes the TCP connection to the origin, and TLS goes through it as through a
        # CONNECT tunnel: the pools are those of the origins, their connections made by PySocks.
        from urllib3.contrib.socks import SOCKSConnection, SOCKSHTTPSConnection, SOCKSProxyManager

        from .credentials import url_login

        address, login = url_login(member)
        manager = SOCKSProxyManager(address, *(login or (None, None)), **common)
        manager.pool_classes_by_scheme = {"http": _http_pool_class(SOCKSConnection),
                                          "https": _https_pool_class(tls.context, connection=SOCKSHTTPSConnection)}
        return manager
    else:
        from urllib.parse import urlsplit

        from .credentials import basic_auth, url_login

        address, login = url_login(member)
        parts = urlsplit(address)
        proxy_headers = None if login is None else {"Proxy-Authorization": basic_auth(*login)}
        # An HTTPS proxy is verified against the CAs asked for, as the origin is, and is shown no
        # client certificate: through its CONNECT tunnel (proxy_ssl_context) and when it forwards
        # a plain-HTTP URL (a pool of connections to the proxy itself).
        proxy_context = tls.proxy_context() if tls.proxy_context is not None and parts.scheme == "https" else None
        manager = urllib3.ProxyManager(f"{parts.scheme}://{parts.netloc}", proxy_headers=proxy_headers,
                                       proxy_ssl_context=proxy_context, **common)
        assert manager.proxy is not None
        proxy = (manager.proxy.host, manager.proxy.port)  # as urllib3 names the pool of the proxy itself
    manager.pool_classes_by_scheme = {"http": _http_pool_class(),
                                      "https": _https_pool_class(tls.context, tls.proxy_context, proxy)}
    return manager


def _http_pool_class(connection: type[HTTPConnection] | None = None) -> type[urllib3.HTTPConnectionPool]:
    """urllib3's HTTP pool, of ``connection``s (urllib3's own by default) bounded in time as
    :func:`_bounded_steps` says."""
    import urllib3
    from urllib3.connection import HTTPConnection

    class HTTPConnectionPool(urllib3.HTTPConnectionPool):
        ConnectionCls = _bounded_steps(connection or HTTPConnection)

    return HTTPConnectionPool


def _https_pool_class(context: Callable[[], ssl.SSLContext | None] | None,
                      proxy_context: Callable[[], ssl.SSLContext | None] | None = None,
                      proxy: tuple[str | None, int | None] | None = None, *,
                      connection: type[HTTPSConnection] | None = None) -> type[urllib3.HTTPSConnectionPool]:
    """urllib3's HTTPS pool, of ``connection``s (urllib3's own by default) bounded in time as
    :func:`_bounded_steps` says, with the ``ssl_context`` that ``context()`` makes (if not None)
    when the first is made: plain-HTTP pools never ask for it.  A pool of connections to the HTTPS
    ``proxy`` (host, port) itself, which forwards plain-HTTP URLs, has the one ``proxy_context()``
    makes instead."""
    import urllib3
    from urllib3.connection import HTTPSConnection

    class HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = _bounded_steps(connection or HTTPSConnection)

        def __init__(self, host: str, port: int | None = None, **options: Any) -> None:
            maker = proxy_context if proxy is not None and (host, port) == proxy else context
            made = maker() if maker is not None else None
            if made is not None:
                options.setdefault("ssl_context", made)
            super().__init__(host, port, **options)

    return HTTPSConnectionPool


def _bounded_steps(connection: type[_Connection]) -> type[_Connection]:
    """urllib3's ``connection`` class, on which the steps of a request that wait for a peer each
    end within their timeout in all: the resolution of the host name and the connection (a
    proxy's answer to ``CONNECT``, the TLS handshake) within the connect timeout, the head of an
    answer (its status line and headers) within the read timeout.  The timeouts bound each wait
    for bytes, so a server or proxy that sent a byte at a time, each within them, held a request
    for ever, past ``--timeout`` too, whose deadline shortens them; the speed limit counts a
    body's bytes only.  When the time is up the connection is shut down, and the step fails as
    one that timed out (and is retried as such).  The watchdog and the resolver are threads; where
    the system refuses one (:mod:`sharedcache.loaders.threads`), the step is bounded by the
    timeouts of its waits, or the resolver by its own settings, alone."""
    import socket

    base: Any = connection  # mypy takes no variable for a base class

    class Connection(base):  # type: ignore[misc]  # (whose type it then cannot know)
        _dns_host: str  # urllib3's: the host name or address that the socket connects to
        timeout: Any  # http.client's: the step's timeout, set by the pool (seconds, None or a default)
        response_class = _final_answer_class()  # http.client's: the answer it reads

        _tunnelled = False  # whether the proxy has answered this connection's CONNECT

        def connect(self) -> None:
            import ssl

            self._tunnelled = False
            try:
                self._within(super().connect, "connecting")
                return
            except TimeoutError as e:
                if not self._tunnel_host or self._tunnelled:
                    raise
                # A proxy that took the connection but does not answer CONNECT (stopped, or
                # overloaded) is down as one that refuses it: the next member of the route is
                # tried at once.  urllib3 takes the proxy for reached once its TCP connection is
                # made, and this for a read that timed out, retried on the same proxy.
                from urllib3.exceptions import ConnectTimeoutError, ProxyError

                raise ProxyError("Unable to connect to proxy", ConnectTimeoutError(self, str(e))) from None
            except (ssl.SSLError, ConnectionError) as e:
                if not self._tunnelled or not _connection_ended(e):
                    raise
            # The tunnel was opened, then closed before the origin's TLS answered through it: a
            # proxy that could not reach the origin after all, or went away.  Taken for the
            # origin's TLS failing, which nothing fixes, it failed the download although the next
            # member of the route would do; it is tried now, and the attempt counts.  (Raised out
            # of the handler: the TLS error in its context would be read as the origin's.)
            from urllib3.exceptions import NewConnectionError, ProxyError

            raise ProxyError("Unable to connect through the proxy", NewConnectionError(
                self, "it closed the tunnel before the origin's TLS answered"))

        def _tunnel(self) -> None:
            super()._tunnel()
            self._tunnelled = True

        def _new_conn(self) -> Any:
            """The TCP connection, its host name resolved and its addresses tried within the
            connect timeout in all.  The system's resolver waits as long as its own settings say
            (five seconds, twice, for each name server) and cannot be told to stop: left in a
            thread of its own that ends with it, a resolution past the limit fails as one that
            found no address.  The addresses are tried as :func:`_first_to_connect` says, where
            urllib3 would give each in turn the whole timeout."""
            from urllib3.exceptions import (
                ConnectTimeoutError,
                LocationParseError,
                NameResolutionError,
                NewConnectionError,
            )

            host, limit = self._dns_host, self.timeout
            # Through a SOCKS proxy, PySocks connects to the proxy, and the proxy to the host.
            if not isinstance(limit, (int, float)) or _numeric(host) or hasattr(self, "_socks_options"):
                return super()._new_conn()
            # getaddrinfo raises UnicodeError for a name IDNA cannot encode (an empty label, one
            # over 63 characters), which would kill the resolver's thread with a traceback and
            # read as no answer; urllib3, whose resolution this replaces, refuses such a name so,
            # as no retry fixes it.
            try:
                host.encode("idna")
            except UnicodeError:
                raise LocationParseError(f"'{host}', label empty or too long") from None
            ends = time.monotonic() + limit
            try:
                addresses = _resolve(host, self.port, limit)
            except socket.gaierror as e:
                raise NameResolutionError(self.host, self, e) from e
            try:
                sock = _first_to_connect(addresses, self.port, ends - time.monotonic(), self.socket_options,
                                         self.source_address)
            except TimeoutError:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                                f"(connect timeout={limit:g})") from None
            except OSError as e:
                raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e
            sys.audit("http.client.connect", self, self.host, self.port)  # (as urllib3's own does)
            return sock

        def getresponse(self) -> Any:
            return self._within(super().getresponse, "the head of the answer")

        def _within(self, step: Callable[[], Any], what: str) -> Any:
            limit = self.timeout  # the step's timeout, set by the pool
            if not isinstance(limit, (int, float)):
                return step()
            done, late = threading.Event(), threading.Event()

            def cut() -> None:
                while not done.is_set():
                    # No socket yet: the TCP connection, bounded by its own timeout, is being made.
                    if self.sock is not None:
                        late.set()
                        try:
                            self.sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass  # closed meanwhile
                        return
                    done.wait(0.05)

            timer = threading.Timer(limit, cut)
            timer.daemon = True
            if not threads.start(timer):
                return step()  # bounded by the socket's timeout on each wait alone
            result = None
            try:
                result = step()
            except BaseException:
                if not late.is_set():
                    raise
            finally:
                done.set()
                timer.cancel()
            if late.is_set():
                if result is not None:  # a head cut short may parse: what follows is no body of it
                    result.close()
                raise TimeoutError(f"{what} took more than {limit:g} s")
            return result

    # urllib3 names the connection in its messages ("HTTPConnection(host=...): Failed to ..."),
    # which http._reason takes off.
    Connection.__name__ = Connection.__qualname__ = connection.__name__
    return Connection


#: Informational answers read past before the final one: a bound on a server that sends nothing else.
_MAX_INFORMATIONAL = 32
#: The longest line of a chunk's size or of a trailer field that is read (http.client's bound on a line).
_MAX_CHUNK_LINE = 65536
#: The fields of a chunked body's trailer section that are read past (http.client's bound on a head's).
_MAX_TRAILER_FIELDS = 100
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class HeadCutError(ConnectionError):
    """The connection ended within the head of an answer, before the empty line that ends it:
    no answer was read, and the request is retried as one whose connection was cut."""


class _LastLineRead:
    """The buffered reader ``reader`` of a connection, keeping the last line read from it."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.last: bytes | None = None

    def readline(self, limit: int = -1) -> bytes:
        self.last = self.reader.readline(limit)
        return self.last

    def cut(self) -> bool:
        """Whether the connection's end cut what was read: the last line read ends without an end
        of line (empty, where the next line of a head was due)."""
        return self.last is not None and not self.last.endswith(b"\n")

    def cut_status_line(self) -> bool:
        """Whether the last line read is an HTTP status line that the connection's end cut short
        ("HTTP/1.1 20", "HT"): not the bytes of another protocol that hold no end of line (the TLS
        alert of a port that speaks HTTPS alone), which are no HTTP answer, cut or whole."""
        line = self.last or b""
        return self.cut() and (line.startswith(b"HTTP/") or b"HTTP/".startswith(line))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


def chunked_alone(codings: list[str]) -> bool:
    """Whether the ``Transfer-Encoding`` fields ``codings`` say ``chunked`` and nothing else: one
    field, "chunked" but for case and the whitespace around it (no part of a field's value, RFC
    9110 5.5).  The connections read such a body as chunks (:func:`_final_answer_class`)."""
    return len(codings) == 1 and codings[0].strip(" \t").lower() == "chunked"


def _final_answer_class() -> type[http.client.HTTPResponse]:
    """http.client's answer, read past every informational one (1xx) to the final answer, as RFC
    9110 (15.2) asks of a client.  http.client reads past ``100 Continue`` only: a ``103 Early
    Hints``, which a server or a CDN may send ahead of any answer (RFC 8297), or a ``102
    Processing``, was taken for the answer, without a body, and failed every download from there
    ("HTTP 103").  ``101 Switching Protocols`` is final (sc never asks to switch).

    Its body is chunked, too, when its one ``Transfer-Encoding`` field says ``chunked`` with
    whitespace around it, which is no part of a field's value (RFC 9110 5.5): http.client read
    such a body to the close, framing and all (curl reads it as chunked).

    And its chunks are framed as RFC 9112 (7.1) says, or refused.  http.client tosses the two
    bytes after a chunk's data whatever they are, and reads a size with ``int(line, 16)``, which
    takes "0x10", "1_0", "+10" and "-1": a server that ended a chunk with a bare LF lost the first
    digit of the next size, and "1000" read as "000" ended the body there, cut short and taken for
    whole.  Here a chunk ends with CRLF, or LF alone as curl allows, and a size is hexadecimal
    digits; anything else breaks the body off (``IncompleteRead``), as a cut connection does.
    (These are http.client's own steps of a chunked read, which urllib3 calls through ``read``.)

    Its head ends with its empty line, or the answer is none (:class:`HeadCutError`, retried as a
    cut connection).  http.client ends a head at the end of the connection as at that line: a
    head cut there was a whole answer without the fields cut off, a 200 without its length or
    validator (an empty body, handed to the checksum) or a 206 without its Content-Range (whose
    resume started over from byte 0).

    That framing (the end of a chunk, the next size line, the trailer section after the last
    chunk) is read inside one read of the body, which hands on none of its bytes: a server that
    sent it a byte at a time, each within the read timeout, held the download for ever, past
    ``--timeout`` and past the speed limit, which counts a body's bytes.  So each step of the
    framing ends within the socket's timeout as it began (the read timeout, shortened to what is
    left before the deadline) in all, as the head of an answer does (:func:`_bounded_steps`),
    and then fails as a read that timed out; and the trailer section holds at most
    :data:`_MAX_TRAILER_FIELDS` fields, as a head does in http.client."""
    import http.client

    class FinalAnswer(http.client.HTTPResponse):
        def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self._socket = sock
            self._framing_ends: float | None = None  # when the step of the framing under way must end

        def _get_chunk_left(self) -> int | None:
            if self.chunk_left:  # within a chunk's data: no framing to read
                return self.chunk_left
            timeout = self._socket.gettimeout()
            self._framing_ends = None if timeout is None else time.monotonic() + timeout
            try:
                if self.chunk_left == 0:  # at the end of a chunk's data: its CRLF comes next
                    if self._framing_line(2) not in (b"\r\n", b"\n"):
                        self.close()  # (the connection's framing is lost)
                        raise http.client.IncompleteRead(b"")
                    self.chunk_left = None  # read: the next size follows
                return super()._get_chunk_left()  # type: ignore[misc, no-any-return]  # (private, untyped)
            finally:
                self._framing_ends = None
                with contextlib.suppress(OSError):  # (closed, when the framing was refused)
                    self._socket.settimeout(timeout)

        def _framing_line(self, most: int) -> bytes:
            """A line of the framing, with its end of line, read to at most ``most`` bytes (past
            them, ``most`` + 1 bytes of it), each wait for its bytes bounded by the time left of
            the step (none left: :class:`TimeoutError`); what came before the end of the body if
            it ends first."""
            line = b""
            while len(line) <= most:
                if self._framing_ends is not None:
                    left = self._framing_ends - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the framing of a chunked body came too slowly")
                    self._socket.settimeout(left)
                buffered = self.fp.peek(1)  # what is buffered, else one read of the socket
                if not buffered:
                    break
                end = buffered.find(b"\n", 0, most + 1 - len(line))
                line += self.fp.read(end + 1 if end >= 0 else min(len(buffered), most + 1 - len(line)))
                if end >= 0:
                    break
            return line

        def _read_and_discard_trailer(self) -> None:
            for _ in range(_MAX_TRAILER_FIELDS + 1):
                line = self._framing_line(_MAX_CHUNK_LINE)
                if len(line) > _MAX_CHUNK_LINE:
                    raise http.client.LineTooLong("trailer line")
                if line in (b"\r\n", b"\n", b""):
                    return
            raise http.client.HTTPException(f"more than {_MAX_TRAILER_FIELDS} trailer fields")

        def _read_next_chunk_size(self) -> int:
            line = self._framing_line(_MAX_CHUNK_LINE)
            if len(line) > _MAX_CHUNK_LINE:
                raise http.client.LineTooLong("chunk size")
            # chunk-size [ BWS ";" chunk-ext ] CRLF
            size = line.partition(b";")[0].rstrip(b" \t\r\n")
            if not size or not _HEX_DIGITS.issuperset(size):
                self.close()
                raise ValueError(f"not a chunk's size: {line[:40]!r}")  # (an IncompleteRead, to the caller)
            return int(size, 16)

        def begin(self) -> None:
            reader = self.fp
            lines = _LastLineRead(reader)
            self.fp = lines  # type: ignore[assignment]  # (read through as the reader, for the head only)
            try:
                self._begin()
            except http.client.RemoteDisconnected:
                raise  # nothing was read: no head to be cut
            except http.client.BadStatusLine:
                if not lines.cut_status_line():
                    raise
            finally:
                if self.fp is not None:  # (None if begin() closed it)
                    self.fp = reader
            if lines.cut():
                self.close()
                raise HeadCutError("the connection was closed within the head of the answer")

        def _begin(self) -> None:
            for _ in range(_MAX_INFORMATIONAL):
                super().begin()
                if not (102 <= self.status < 200):  # (100: http.client itself read past it)
                    if not self.chunked and chunked_alone(self.headers.get_all("Transfer-Encoding") or []):
                        # As begin() sets them for a chunked body: its length is the chunks'.
                        self.chunked, self.chunk_left, self.length = True, None, None
                    return
                # begin() reads an answer once, unless told that none was read yet: its fields
                # were the informational answer's, which has no body; the next answer follows.
                self.headers = self.msg = None  # type: ignore[assignment]  # (None: "none read yet", as it starts)
            raise http.client.HTTPException(f"more than {_MAX_INFORMATIONAL} informational answers (1xx) "
                                            "and no final one")

    return FinalAnswer


def _connection_ended(error: OSError) -> bool:
    """Whether ``error``, raised by a TLS handshake, says that the connection ended under it,
    however the interpreter tells it.  The end of the stream is ``SSLEOFError``, or a plain
    ``SSLError`` of OpenSSL 3's reason where the interpreter does not map it (Python 3.11.2), or
    ``SSLZeroReturnError`` where the context sets ``OP_IGNORE_UNEXPECTED_EOF`` (Debian's Python
    sets it on every one); a peer that closed with bytes unread resets the connection, or breaks
    its pipe.  A refusal of the peer's TLS (a certificate, an alert) is none of these."""
    import ssl

    return (isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError))
            or getattr(error, "reason", None) == "UNEXPECTED_EOF_WHILE_READING")


def _numeric(host: str) -> bool:
    """Whether ``host`` is an IP address, which needs no resolver."""
    import ipaddress

    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


#: Seconds an address has to connect before the next one is tried beside it: RFC 8305's
#: Connection Attempt Delay (curl waits 200 ms).
NEXT_ADDRESS_DELAY = 0.25


def _first_to_connect(addresses: list[str], port: int, limit: float,
                      options: Sequence[tuple[int, int, int]] | None,
                      source: tuple[str, int] | None) -> socket.socket:
    """A socket connected to the first of ``addresses`` to accept it within ``limit`` seconds in
    all, as Happy Eyeballs (RFC 8305) connects: the families in turn, from the resolver's first,
    and each address given :data:`NEXT_ADDRESS_DELAY`, or until it fails if sooner, before the
    next is tried beside it; the first to connect wins, and the others are closed.  A host whose
    IPv6 route drops what is sent (a worker node's, often, where IPv4 works) is so reached over
    IPv4 within a quarter of a second, where trying one address after the other spent the whole
    timeout on the first, at every retry.  Raises the last failure if every address failed, and
    TimeoutError if the time ran out first."""
    import selectors
    import socket

    ends = time.monotonic() + limit
    waiting = _families_in_turn(addresses)
    trying: set[socket.socket] = set()
    failure: OSError | None = None
    selector = selectors.PollSelector()  # (poll takes no descriptor of its own, as epoll does)
    try:
        next_at = time.monotonic()
        while (waiting or trying) and (now := time.monotonic()) < ends:
            if waiting and (not trying or now >= next_at):
                try:
                    sock, connected = _start_connecting(waiting.pop(0), port, options, source)
                except OSError as e:  # refused or unreachable at once: the next one now
                    raise_if_over_limit(e)  # (no socket to be had: no failure of the host's)
                    failure = e
                    continue
                if connected:
                    return _ready(sock, ends)
                trying.add(sock)
                selector.register(sock, selectors.EVENT_WRITE)
                next_at = now + NEXT_ADDRESS_DELAY
                continue
            for key, _ in selector.select(max(0.0, min(ends, next_at) - now) if waiting else ends - now):
                sock = key.fileobj  # type: ignore[assignment]  # (a socket: what was registered)
                selector.unregister(sock)
                trying.discard(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0:
                    return _ready(sock, ends)
                sock.close()
                failure = OSError(code, os.strerror(code))
                next_at = now
        every_one_failed = not (waiting or trying)
    finally:
        for sock in trying:
            sock.close()
        selector.close()
    if every_one_failed and failure is not None:
        raise failure
    raise TimeoutError(f"no address of the host connected within {limit:g} s")


def _families_in_turn(addresses: list[str]) -> list[str]:
    """``addresses`` in the resolver's order within each family, the families taken in turn from
    the first's."""
    import itertools

    first = [address for address in addresses if (":" in address) == (":" in addresses[0])]
    other = [address for address in addresses if (":" in address) != (":" in addresses[0])]
    return [address for pair in itertools.zip_longest(first, other) for address in pair if address is not None]


def _start_connecting(address: str, port: int, options: Sequence[tuple[int, int, int]] | None,
                      source: tuple[str, int] | None) -> tuple[socket.socket, bool]:
    """A socket connecting to ``address`` (an IPv6 one may name its interface: ``fe80::1%eth0``)
    without waiting, and whether it is already connected; OSError if it failed at once."""
    import errno
    import socket

    family, kind, protocol, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_NUMERICHOST)[0]
    sock = socket.socket(family, kind, protocol)
    try:
        for option in options or ():
            sock.setsockopt(*option)
        if source:
            sock.bind(source)
        sock.setblocking(False)
        code = sock.connect_ex(where)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
    except BaseException:
        sock.close()
        raise
    return sock, code == 0


def _ready(sock: socket.socket, ends: float) -> socket.socket:
    """``sock``, connected, back to blocking reads bounded as urllib3 bounds them (the timeout
    left; the pool sets the read timeout before each request)."""
    sock.settimeout(max(ends - time.monotonic(), 0.001))
    return sock


def _resolve(host: str, port: int, limit: float) -> list[str]:
    """The addresses of ``host``, from the system's resolver within ``limit`` seconds;
    :class:`socket.gaierror` if it finds none, or gives no answer in time."""
    import socket

    from urllib3.util.connection import allowed_gai_family

    found: list[list[str] | OSError] = []

    def resolve() -> None:
        try:
            infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
        except OSError as e:
            found.append(e)
            return
        # An IPv6 link-local address is reached through the interface it came with.
        found.append([f"{address[0]}%{address[3]}" if len(address) == 4 and address[3] else str(address[0])
                      for *_, address in infos])

    resolver = threading.Thread(target=resolve, daemon=True)
    if threads.start(resolver):
        resolver.join(limit)
    else:
        resolve()  # bounded by the resolver's own settings alone
    if not found:
        raise socket.gaierror(socket.EAI_AGAIN, f"the resolver gave no answer in {limit:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]


class Transport:
    """The connections of one download: the route of its URL, the member in use, and a pool
    manager per member (built when first used).  ``notice`` is told of every fail-over."""

    def __init__(self, url: str, fetch: FetchPolicy, *, maxsize: int,
                 notice: Callable[[str], None], tls: TlsOptions | None = None) -> None:
        if fetch.offline:  # the last guard: a population refuses earlier (repository.population)
            raise DownloadError(f"offline: not connecting to fetch {url}")
        self.url, self.fetch, self.maxsize, self.notice, self.tls = url, fetch, maxsize, notice, tls
        self.route = route(url, fetch)
        self._current = 0
        self._pools: dict[int, urllib3.PoolManager] = {}
        self._lock = threading.Lock()  # the parts of a download fail over together

    @property
    def member(self) -> str:
        return self.route[self._current]

    def pool(self) -> tuple[int, urllib3.PoolManager]:
        """The member in use (its index in the route) and its pool manager."""
        with self._lock:
            index = self._current
            if index in self._pools:
                return index, self._pools[index]
            last = index == len(self.route) - 1
            timeout = self.fetch.connect_timeout if last else min(self.fetch.connect_timeout,
                                                                  FAIL_OVER_CONNECT_TIMEOUT)
            pool = self._pools[index] = pool_manager(self.route[index], self.fetch, connect_timeout=timeout,
                                                     maxsize=self.maxsize, tls=self.tls)
            return index, pool

    def fail_over(self, failed: int, reason: str) -> bool:
        """After a connection error through member ``failed``, or its own error answers: move to the next member and say
        so, and return True; after the last member, go back to the first and return False (the
        failure then counts as an attempt).  If another part moved on meanwhile, just return True."""
        with self._lock:
            if failed != self._current:
                return True
            if failed + 1 < len(self.route):
                self._current += 1
                self.notice(f"{shown(self.route[failed])} failed for {self.url} ({reason}); "
                            f"failing over to {shown(self.member)}")
                return True
            self._current = 0
            return False

    def forwards(self) -> bool:
        """Whether the member in use is a proxy that sees the requests, and may cache the answers:
        an HTTP or HTTPS proxy of an ``http://`` URL (an ``https://`` one is tunnelled through it,
        and a SOCKS proxy relays bytes)."""
        from urllib.parse import urlsplit

        member = self.member
        return urlsplit(self.url).scheme == "http" and member != DIRECT \
            and urlsplit(member).scheme not in SOCKS_SCHEMES

    def via(self) -> str:
        """How the member in use is named in messages: empty for a direct connection."""
        return "" if self.member == DIRECT else f" via {shown(self.member)}"

    def clear(self) -> None:
        for pool in self._pools.values():
            pool.clear()
