"""A loopback HTTP/1.1 origin for tests: ranges, validators, counters, throttling and faults.

Standard library only, so that it can be copied or run anywhere.

In the test process::

    origin = Origin().start()                       # or: with Origin() as origin:
    origin.add("/data.bin", payload)                # or Origin(directory=...) to serve files
    url = origin.url("/data.bin")
    origin.fault("/data.bin", drop_after=1000)      # the next GET of it breaks after 1000 body bytes
    origin.fault("/data.bin", ignore_range=True)    # faults queue up: this one is for the GET after
    origin.stats("/data.bin").ranges                # Range, Authorization and Via headers seen, bytes served...
    origin.redirect("/d", "/m1/d", "/m2/d")         # a redirector: each GET of /d to the next mirror
    origin.stop()

    with Origin(held=True) as origin:              # no answer begins before origin.release(), so
        ...                                         # that clients' requests are all in at once

As a process (prints the port on stdout, serves until terminated; ``--held`` holds every answer
but the stats until SIGUSR1)::

    python tests/origin.py --dir D --port 0 [--rate BYTES_PER_SECOND] [--held]

``GET /__origin__/stats`` answers the counters of every path as JSON.

Served: ``GET`` and ``HEAD``; single ranges ``bytes=N-``, ``bytes=N-M`` and ``bytes=-N`` (``206``
with ``Content-Range``, ``416`` when unsatisfiable); ``ETag`` and ``Last-Modified``; ``If-Range``
(a range whose validator does not match gets the whole file, ``200``); ``If-None-Match``, else
``If-Modified-Since`` (``304`` when the file is the one the cache holds).  Faults apply to the next
``times`` GETs of a path: answer a status (``500``, with headers such as ``Retry-After``), drop the connection after N body bytes, ignore
the Range header or just If-Range, announce a longer ``Content-Length`` than sent, show a new ETag,
answer a range with other bytes than asked for (saying so in ``Content-Range``, or not), or replace
the content once the answer is sent.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import io
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

_SEND_CHUNK = 64 * 1024
_STATS_PATH = "/__origin__/stats"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class Fault:
    """Misbehaviour for the next ``times`` GETs of a path."""

    times: int = 1
    status: int | None = None          # answer this status instead of the file
    headers: dict[str, str] | None = None  # ...with these headers (Retry-After)
    reason: str | None = None          # ...and this reason phrase in its status line (else the status's own)
    drop_after: int | None = None      # close the connection after this many body bytes
    ignore_range: bool = False         # answer 200 with the whole file to a range request
    extra_length: int = 0              # announce this many more bytes than are sent, then close
    new_etag: bool = False             # a fresh ETag on every answer, so If-Range never matches
    ignore_if_range: bool = False      # honour Range even when If-Range does not match
    replace_with: bytes | None = None  # after answering, serve this content instead (with a new ETag)
    range_offset: int = 0              # answer a range with the bytes this far after (or before) it
    range_lies: bool = False           # ...while Content-Range names the range asked for
    no_validators: bool = False        # send neither ETag nor Last-Modified (as a 206 may omit them)
    young_date: bool = False           # answer a range guarded by If-Range with a date with 200, as Apache
                                       # does for a Last-Modified under 60 s old (weak: RFC 9110 8.8.2.2)
    no_length: bool = False            # send no Content-Length: the body ends with the connection's close
    busy_status: int | None = None     # answer this status while another answer of the path is sent
                                       # (a limit of one connection per client: nginx's limit_conn)


#: How a server answers a range guarded by If-Range once the file has changed, as faults: as it
#: should (200), or with the range of the new file, naming its version or (as the 206 of a careless
#: server may) not naming any.
IF_RANGE_SERVERS: dict[str, dict[str, bool]] = {
    "honours If-Range": {},
    "ignores If-Range": {"ignore_if_range": True},
    "ignores If-Range and names no version": {"ignore_if_range": True, "no_validators": True},
}


@dataclass
class Stats:
    """What happened to one path."""

    gets: int = 0
    ranges: list[str] = field(default_factory=list)   # the Range header of each GET that had one
    if_ranges: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)  # the Authorization header of each GET that had one
    vias: list[str | None] = field(default_factory=list)  # the Via header of each GET (None: none, a direct one)
    statuses: list[int] = field(default_factory=list)
    bytes_served: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"gets": self.gets, "ranges": self.ranges, "if_ranges": self.if_ranges,
                "authorizations": self.authorizations, "vias": self.vias, "statuses": self.statuses,
                "bytes_served": self.bytes_served}


@dataclass
class _Resource:
    size: int
    open: Callable[[], BinaryIO]
    etag: str | None
    last_modified: str | None


class Origin:
    """The server, run in a thread of this process."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, rate: float | None = None, held: bool = False) -> None:
        """``held``: every answer waits (counted in the stats, not a byte of its head sent) until
        :meth:`release`, as a slow origin keeps its clients waiting for the head."""
        self.directory = Path(directory) if directory is not None else None
        #: Bytes per second per connection, or None for full speed; may be changed at any time.
        self.rate = rate
        self._files: dict[str, tuple[bytes, str | None, str | None]] = {}
        self._redirects: dict[str, tuple[int, list[str]]] = {}
        self._version = 0  # bumped by every add, so that a replaced file has new validators
        self._faults: dict[str, list[Fault]] = {}
        self._sending: dict[str, int] = {}  # answers whose body is being sent, by path
        self._stats: dict[str, Stats] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._released = threading.Event()
        if not held:
            self._released.set()
        self._server = _Server((host, port), _Handler)
        self._server.origin = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, content: bytes, *, etag: bool = True, last_modified: bool = True,
            modified_at: float | None = None) -> str:
        """Serve ``content`` at ``path`` (replacing what was there, with a new ETag); return its URL.
        Its Last-Modified is a minute old (a second more for each file added), or ``modified_at``."""
        with self._lock:
            self._version += 1
            version = self._version
            tag = f'"{hashlib.sha1(content).hexdigest()[:16]}-{version}"' if etag else None
            stamp = time.time() - 60 + version if modified_at is None else modified_at
            modified = email.utils.formatdate(stamp, usegmt=True) if last_modified else None
            self._files[path] = (content, tag, modified)
        return self.url(path)

    def swap(self, path: str, content: bytes) -> None:
        """Serve ``content`` at ``path`` under the validators of what was there: a server's
        mistake, which a client can tell only by the size."""
        with self._lock:
            _, tag, modified = self._files[path]
            self._files[path] = (content, tag, modified)

    def redirect(self, path: str, target: str, *others: str, status: int = 302) -> str:
        """Redirect ``path`` to ``target``; with ``others``, each GET to the next of them in turn (a
        redirector that spreads requests over mirrors)."""
        self._redirects[path] = (status, [target, *others])
        return self.url(path)

    def fault(self, path: str, **kwargs: Any) -> None:
        """Misbehave on the next GETs of ``path`` (after the faults already queued for it); see
        :class:`Fault` for the arguments."""
        with self._lock:
            self._faults.setdefault(path, []).append(Fault(**kwargs))

    def release(self) -> None:
        """Let the answers held (``held``) go on, and the ones to come answer at once."""
        self._released.set()

    def stats(self, path: str) -> Stats:
        with self._lock:
            return self._stats.setdefault(path, Stats())

    def all_stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {path: stats.as_dict() for path, stats in self._stats.items()}

    def start(self) -> Origin:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-origin", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()  # handlers still sending give up
        self._released.set()  # ...and so do the ones held, once they have sent their head
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Called by the handler.

    def _resource(self, path: str) -> _Resource | None:
        with self._lock:
            entry = self._files.get(path)
        if entry is not None:
            content, tag, modified = entry
            return _Resource(len(content), lambda: io.BytesIO(content), tag, modified)
        if self.directory is None:
            return None
        target = (self.directory / path.lstrip("/")).resolve()
        if self.directory.resolve() not in target.parents or not target.is_file():
            return None
        info = target.stat()
        tag = f'"{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}"'
        return _Resource(info.st_size, lambda: open(target, "rb"), tag,
                         email.utils.formatdate(info.st_mtime, usegmt=True))

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            queued = self._faults.get(path)
            if not queued:
                return None
            fault = queued[0]
            fault.times -= 1
            if fault.times <= 0:
                queued.pop(0)
            return fault


class _Unsatisfiable(Exception):
    """The range asked for lies past the end: answer 416."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    origin: Origin
    #: Set to end ``serve_forever`` at its next poll (SIGTERM, when run as a process).
    stopping = False

    def service_actions(self) -> None:
        # Called by serve_forever between two polls, in its own thread: where an exception ends it.
        if self.stopping:
            raise SystemExit(0)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up in the middle of answers on purpose (after a 4xx, at a cut, when they
        # stop): that is no error of the origin's, and its traceback would only clutter the output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _simple(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                reason: str | None = None) -> None:
        self.send_response(status, reason)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self, body: bool) -> None:
        origin = self.server.origin
        path = self.path.split("?", 1)[0]
        if path == _STATS_PATH:
            self._simple(200, json.dumps(origin.all_stats()).encode(), {"Content-Type": "application/json"})
            return
        fault = origin._take_fault(path) if body else None
        stats = origin.stats(path)
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        authorization = self.headers.get("Authorization")
        with origin._lock:
            if body:
                stats.gets += 1
                if range_header:
                    stats.ranges.append(range_header)
                if if_range:
                    stats.if_ranges.append(if_range)
                if authorization:
                    stats.authorizations.append(authorization)
                stats.vias.append(self.headers.get("Via"))

        origin._released.wait()

        def answered(status: int) -> None:
            with origin._lock:
                stats.statuses.append(status)

        if path in origin._redirects:
            with origin._lock:
                status, targets = origin._redirects[path]
                target = targets[0]
                targets.append(targets.pop(0))
            answered(status)
            self._simple(status, headers={"Location": target})
            return
        if fault is not None and fault.status is not None:
            answered(fault.status)
            self._simple(fault.status, f"injected {fault.status}\n".encode(), headers=fault.headers,
                         reason=fault.reason)
            return
        with origin._lock:
            busy = fault is not None and fault.busy_status is not None and origin._sending.get(path, 0) > 0
        if busy:
            assert fault is not None and fault.busy_status is not None
            answered(fault.busy_status)
            self._simple(fault.busy_status, f"injected {fault.busy_status}\n".encode(), headers=fault.headers)
            return
        resource = origin._resource(path)
        if resource is None:
            answered(404)
            self._simple(404, b"not found\n")
            return
        etag = resource.etag
        if etag is not None and fault is not None and fault.new_etag:
            etag = f'"{etag.strip(chr(34))}-{time.monotonic_ns()}"'
        if self._not_modified(etag, resource.last_modified):
            answered(304)
            self.send_response(304)  # no Content-Length: a cache would take it for the file's
            if etag is not None:
                self.send_header("ETag", etag)
            self.end_headers()
            return
        start, end = 0, resource.size - 1
        status = 200
        if range_header and not (fault is not None and fault.ignore_range):
            validated = if_range is None or if_range in (etag, resource.last_modified)
            if fault is not None and fault.young_date and if_range == resource.last_modified:
                validated = False
            if validated or (fault is not None and fault.ignore_if_range):
                try:
                    wanted = self._range(range_header, resource.size)
                except _Unsatisfiable:
                    answered(416)
                    self._simple(416, headers={"Content-Range": f"bytes */{resource.size}"})
                    return
                if wanted is not None:
                    (start, end), status = wanted, 206
        shown = start, end  # what Content-Range says
        if status == 206 and fault is not None and fault.range_offset:
            start = min(max(0, start + fault.range_offset), resource.size - 1)
            end = min(max(start, end + fault.range_offset), resource.size - 1)
            shown = shown if fault.range_lies else (start, end)
        answered(status)
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        unvalidated = fault is not None and fault.no_validators
        if etag is not None and not unvalidated:
            self.send_header("ETag", etag)
        if resource.last_modified is not None and not unvalidated:
            self.send_header("Last-Modified", resource.last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {shown[0]}-{shown[1]}/{resource.size}")
        extra = fault.extra_length if fault is not None else 0
        if fault is not None and fault.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length + extra))
        self.end_headers()
        if not body:
            return
        limit = length
        if fault is not None and fault.drop_after is not None:
            limit = min(limit, fault.drop_after)
        with origin._lock:
            origin._sending[path] = origin._sending.get(path, 0) + 1
        try:
            sent = self._send(resource, start, limit, stats)
        finally:
            with origin._lock:
                origin._sending[path] -= 1
        if fault is not None and fault.replace_with is not None:
            origin.add(path, fault.replace_with)
        if sent < length + extra:  # dropped, or fewer bytes than announced: end the connection
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _not_modified(self, etag: str | None, last_modified: str | None) -> bool:
        """Whether the request is conditional on a version other than this one (RFC 9110 13.2.2:
        ``If-None-Match`` decides when given, weakly compared, and ``If-Modified-Since`` only without it)."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return etag is not None and ("*" in tags or etag.removeprefix("W/") in tags)
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since is None or last_modified is None:
            return False
        try:
            since = email.utils.parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        return email.utils.parsedate_to_datetime(last_modified) <= since

    @staticmethod
    def _range(header: str, size: int) -> tuple[int, int] | None:
        """The single range asked for, or None to ignore the header; raises _Unsatisfiable."""
        match = _RANGE.fullmatch(header.strip())
        if match is None or match[1] == match[2] == "":
            return None
        if match[1] == "":
            if not int(match[2]) or not size:
                raise _Unsatisfiable
            return max(0, size - int(match[2])), size - 1
        first = int(match[1])
        last = min(int(match[2]), size - 1) if match[2] else size - 1
        if first >= size:
            raise _Unsatisfiable
        return None if last < first else (first, last)

    def _send(self, resource: _Resource, start: int, length: int, stats: Stats) -> int:
        origin = self.server.origin
        source = resource.open()
        sent = 0
        began = time.monotonic()
        try:
            source.seek(start)
            while sent < length and not origin._stopping.is_set():
                rate = origin.rate
                step = _SEND_CHUNK if rate is None else max(1024, int(rate / 20))  # 20 sends a second
                chunk = source.read(min(step, length - sent))
                if not chunk:
                    break
                # Keep to the rate over the whole answer, in short sleeps: a test that changes
                # the rate (or lifts it) meanwhile is obeyed at once, not after a chunk's delay.
                while rate is not None and not origin._stopping.is_set():
                    delay = began + (sent + len(chunk)) / rate - time.monotonic()
                    if delay <= 0:
                        break
                    time.sleep(min(delay, 0.05))
                    rate = origin.rate
                try:
                    self.wfile.write(chunk)
                except OSError:  # the client went away
                    self.close_connection = True
                    break
                sent += len(chunk)
                with origin._lock:
                    stats.bytes_served += len(chunk)
        finally:
            source.close()
        return sent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="directory whose files are served")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rate", type=float, default=None, help="bytes per second per connection")
    parser.add_argument("--held", action="store_true", help="hold every answer until SIGUSR1")
    args = parser.parse_args(argv)
    origin = Origin(args.dir, host=args.host, port=args.port, rate=args.rate, held=args.held)
    signal.signal(signal.SIGUSR1, lambda *_: origin.release())  # before the port is printed: by
                                                                # default, SIGUSR1 ends a process
    # SIGTERM (the end of a test or a benchmark) is acted on by the serving loop: SystemExit
    # raised by the handler itself could land in a weakref callback or a finalizer, which Python
    # reports and ignores, and the origin served on.
    signal.signal(signal.SIGTERM, lambda *_: setattr(origin._server, "stopping", True))
    print(origin.port, flush=True)
    try:
        origin._server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        origin._server.server_close()


if __name__ == "__main__":
    main()
