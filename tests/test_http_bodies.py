"""HTTP bodies are complete and are what the origin stored: a body without a length counts only
if it is chunked and ends with its final chunk, or, ended by a close, if a range request for what
follows completes it or says it ended there; a Content-Encoding nobody asked for is refused, and
so is a Transfer-Encoding other than chunked alone; absurd sizes and ranges give one clear line.
Each time nothing is committed and the error record is left for waiters.  What a server writes
shows in -v notices escaped, as in errors.

The origin is a raw socket server in this file, answering every request with bytes the test
writes out in full (the misbehaviours tests/origin.py, a correct server, cannot produce).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scutil import SC, ThreadedServer, close_listener, control, read_head, sc, sc_env

BODY = b"0123456789" * 1000


class Reset(bytes):
    """An answer's bytes after which the connection is reset (RST) instead of closed (FIN)."""


class ClosedThenReset(Reset):
    """An answer's bytes after which the connection is closed (FIN), then reset (RST), as a
    server that shuts its end down and then aborts."""


class RawOrigin:
    """Answers every request on 127.0.0.1 with ``answer(request)``, then closes the connection
    (resets it after a :class:`Reset`)."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def word(self) -> str:
        return f"http:http://127.0.0.1:{self.port}/data.bin"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                request = read_head(conn)
                try:
                    if request is not None:
                        answer = self.answer(request)
                        conn.sendall(answer)
                        if isinstance(answer, ClosedThenReset):
                            conn.shutdown(socket.SHUT_WR)
                        if isinstance(answer, Reset):
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass

    def stop(self) -> None:
        close_listener(self._listener)
        self._thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[bytes], bytes]], RawOrigin]]:
    started: list[RawOrigin] = []

    def start(answer: Callable[[bytes], bytes]) -> RawOrigin:
        started.append(RawOrigin(answer))
        return started[-1]

    try:
        yield start
    finally:
        for origin in started:
            origin.stop()


def fixed(head: str, body: bytes) -> Callable[[bytes], bytes]:
    return lambda _request: head.replace("\n", "\r\n").encode() + b"\r\n" + body


def chunked(body: bytes, *, final: bool) -> bytes:
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    out = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    return out + (b"0\r\n\r\n" if final else b"")


def use(base: Path, origin: RawOrigin, *extra: str):  # type: ignore[no-untyped-def]
    return sc("--use", "-d", str(base), "-n", "data", *extra, origin.word())


def assert_refused(result, base: Path, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("sc: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert not (control(base) / "objects" / "data").exists()
    populate = control(base) / "populate"
    assert not (populate / "data.work").exists(), "the work directory was left behind"
    assert (populate / "data.error").exists(), "no error record for the waiters"


def test_a_complete_chunked_body_is_stored(tmp_path, serve):
    origin = serve(fixed("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", chunked(BODY, final=True)))
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY


def test_a_chunked_body_without_its_final_chunk_is_an_error(tmp_path, serve):
    origin = serve(fixed("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", chunked(BODY, final=False)))
    assert_refused(use(tmp_path, origin), tmp_path)


def test_a_body_ended_by_close_without_a_length_is_an_error(tmp_path, serve):
    origin = serve(fixed("HTTP/1.1 200 OK\nConnection: close\n", BODY))
    assert_refused(use(tmp_path, origin), tmp_path, "length")


def ranges_after_a_close(cut: int, pad: str = "") -> Callable[[bytes], bytes]:
    """A server that ends its first answer by a close, with no length, after ``cut`` bytes of
    BODY, and answers a range request as a correct server does (a 416 past the end), with more
    whitespace, ``pad``, around the values of its Content-Range."""

    def answer(request: bytes) -> bytes:
        head = request.decode("latin-1").lower()
        if "range: bytes=" not in head:
            return b'HTTP/1.1 200 OK\r\nETag: "v1"\r\nConnection: close\r\n\r\n' + BODY[:cut]
        start = int(head.split("range: bytes=")[1].split("-")[0])
        if start >= len(BODY):
            return (f'HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: {pad}bytes */{len(BODY)}{pad}\r\n'
                    'Content-Length: 0\r\n\r\n').encode()
        rest = BODY[start:]
        return (f'HTTP/1.1 206 Partial Content\r\nETag: "v1"\r\nContent-Length: {len(rest)}\r\n'
                f'Content-Range: {pad}bytes {start}-{len(BODY) - 1}/{len(BODY)}{pad}\r\n\r\n').encode() + rest

    return answer


@pytest.mark.parametrize("pad", ["", " \t "], ids=["plain", "whitespace around the values"])
@pytest.mark.parametrize("cut", [len(BODY) // 3, len(BODY)], ids=["cut short", "whole"])
def test_a_body_ended_by_close_is_completed_or_confirmed_by_a_range_request(tmp_path, serve, cut, pad):
    # Cut short: the rest is asked for and comes with the size, checked at its end.  Whole: the
    # server's 416 for the bytes after it says the file ends there.  Whitespace around a field's
    # value is no part of it (RFC 9110 §5.5).
    origin = serve(ranges_after_a_close(cut, pad))
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY


@pytest.mark.parametrize("validator", ['ETag: "v1"', "Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT"],
                         ids=["etag", "last-modified"])
def test_a_validator_is_the_same_whatever_whitespace_trails_it(tmp_path, serve, validator):
    # A proxy or another mirror that sends the field without the whitespace after it sends the
    # same validator (RFC 9110 §5.5): the cut transfer goes on from where it stopped, and If-Range
    # carries the value alone.
    requests: list[str] = []
    cut = len(BODY) // 3

    def answer(request: bytes) -> bytes:
        head = request.decode("latin-1")
        requests.append(head)
        if "Range: bytes=" not in head:
            return (f"HTTP/1.1 200 OK\r\n{validator} \t \r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY[:cut]
        rest = BODY[cut:]
        return (f"HTTP/1.1 206 Partial Content\r\n{validator}\r\nContent-Length: {len(rest)}\r\n"
                f"Content-Range: bytes {cut}-{len(BODY) - 1}/{len(BODY)}\r\n\r\n").encode() + rest

    result = use(tmp_path, serve(answer))
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY
    assert len(requests) == 2, requests
    assert f"Range: bytes={cut}-\r\n" in requests[1], requests[1]
    assert f"If-Range: {validator.split(': ', 1)[1]}\r\n" in requests[1], requests[1]


SERVER_SAYS = {
    "an object store's XML (an expired signed URL)": (
        403, "application/xml", b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Request has expired</Message><RequestId>R1</RequestId></Error>",
        "the server says 'AccessDenied: Request has expired'"),
    "a JSON API's error object": (404, "application/json; charset=UTF-8",
                                  b'{"error": {"code": 404, "message": "No such object: b/o"}}',
                                  "the server says 'No such object: b/o'"),
    "a JSON message": (410, "application/problem+json", b'{"title": "Gone", "detail": "removed in 2025"}',
                       "the server says 'removed in 2025'"),
    "a line of text, control characters escaped": (451, "text/plain", b"\n\x1b[31mblocked here\nmore\n",
                                                   "the server says '\\x1b[31mblocked here'"),
    "an HTML page": (403, "text/html", b"<html><title>403 Forbidden</title></html>", None),
    "JSON nested past the parser's depth": (400, "application/json", b"[" * 4000 + b"]" * 4000, None),
    "a long message, by its two ends": (
        403, "text/plain", b"a" * 300 + b"z" * 300, "the server says '" + "a" * 80 + "…" + "z" * 80 + "' (600 characters)"),
    "a compressed body": (403, "application/json", gzip.compress(b'{"message": "x"}'), None),
}


@pytest.mark.parametrize("status, kind, body, said", SERVER_SAYS.values(), ids=SERVER_SAYS.keys())
def test_an_error_answer_shows_what_the_server_says_in_it(tmp_path, serve, status, kind, body, said):
    encoding = "Content-Encoding: gzip\n" if body.startswith(b"\x1f\x8b") else ""
    origin = serve(fixed(f"HTTP/1.1 {status} Nope\nContent-Type: {kind}\n{encoding}Content-Length: {len(body)}\n",
                         body))
    result = use(tmp_path, origin)
    assert_refused(result, tmp_path, f"HTTP {status} (the server says 'Nope') for ")
    if said is None:
        assert ": the server says" not in result.stderr, result.stderr
    else:
        assert result.stderr.rstrip("\n").endswith(f": {said}"), result.stderr


@pytest.mark.parametrize("length", ["chunked", "none"])
def test_a_body_that_closes_its_connection_is_read_whole_within_a_deadline(tmp_path, serve, length):
    # With a deadline, each read of the body is bounded through the socket the answer is read
    # from, which http.client closes with the answer's end: the read past the end must not take
    # that for a broken transfer.
    head = "HTTP/1.1 200 OK\nETag: \"v\"\nConnection: close\n"
    head += "Transfer-Encoding: chunked\n" if length == "chunked" else ""
    body = chunked(BODY, final=True) if length == "chunked" else BODY
    asked: list[bytes] = []

    def answer(request: bytes) -> bytes:
        asked.append(request.split(b"\r\n")[0])
        if b"Range:" in request:  # what follows a body ended by the close: nothing
            return f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len(BODY)}\r\n\r\n".encode()
        return fixed(head, body)(request)

    origin = serve(answer)
    result = use(tmp_path, origin, "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY
    assert len(asked) == (1 if length == "chunked" else 2), asked


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_what_the_server_says_is_read_from_an_answer_that_closes_its_connection(tmp_path, serve, version):
    # http.client lets go of the connection's socket when the answer ends it (Connection: close,
    # HTTP/1.0), and the body, whose read is bounded through that socket, was not read at all.
    body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    origin = serve(fixed(f"{version} 403 Forbidden\nContent-Type: application/xml\nConnection: close\n"
                         f"Content-Length: {len(body)}\n", body))
    result = use(tmp_path, origin)
    assert_refused(result, tmp_path, "HTTP 403 Forbidden for ")
    assert result.stderr.rstrip("\n").endswith(": the server says 'AccessDenied: Request has expired'"), result.stderr


@pytest.mark.parametrize("text, shown", [
    ("token 's3cr3t' has expired", "the server says \"token 's3cr3t' has expired\""),
    ("token s3cr3t " + "x" * 300 + " expired", "' (321 characters)"),  # shown by its ends, and its length
], ids=["quoted", "long"])
def test_what_the_server_says_is_kept_from_the_failure_others_read(tmp_path, serve, text, shown):
    # The failure recorded for the waiters (every member of a group cache reads it, and sc list
    # shows it) leaves out what the server wrote: an error answer may repeat a token it was sent.
    body = json.dumps({"message": text}).encode()
    origin = serve(fixed(f"HTTP/1.1 401 Nope\nContent-Type: application/json\nContent-Length: {len(body)}\n", body))
    result = use(tmp_path, origin)
    assert_refused(result, tmp_path, "s3cr3t", shown)
    record = json.loads((control(tmp_path) / "populate" / "data.error").read_text())
    assert record["message"].endswith("(no credentials were sent): the server says …"), record
    listed = sc("list", "-d", str(tmp_path))
    assert "the server says …" in listed.stdout and "s3cr3t" not in listed.stdout + listed.stderr, listed


def test_an_error_answer_whose_body_does_not_come_is_not_waited_for(tmp_path):
    # Its head, then nothing: the line is made within a few seconds, not the read timeout's 60.
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve_one() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                read_head(conn)
                conn.sendall(b"HTTP/1.1 403 Nope\r\nContent-Type: application/xml\r\nContent-Length: 500\r\n\r\n<Err")
                done.wait(30)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = sc("--use", "-d", str(tmp_path), "-n", "data",
                    f"http:http://127.0.0.1:{listener.getsockname()[1]}/data.bin")
        took = time.monotonic() - started
    finally:
        done.set()
        close_listener(listener)
        thread.join(10)
    assert_refused(result, tmp_path, "HTTP 403 (the server says 'Nope') for ")
    assert ": the server says" not in result.stderr, result.stderr
    assert took < 30, took


def test_a_content_encoding_that_was_not_asked_for_is_refused(tmp_path, serve):
    packed = gzip.compress(BODY)
    origin = serve(fixed(f"HTTP/1.1 200 OK\nContent-Length: {len(packed)}\nContent-Encoding: gzip\n", packed))
    assert_refused(use(tmp_path, origin), tmp_path, "gzip")


# Transfer-Encodings that urllib3 takes for chunked, or that code the bytes, each with a body as a
# server that sends it might: what http.client reads of each is not the file, or not known whole.
TRANSFER_CODED = {
    "gzip then chunked, plain body cut by a close": ('Transfer-Encoding: gzip, chunked\nETag: "v1"\n', BODY[:3000]),
    "chunked twice, plain body cut by a close": ('Transfer-Encoding: chunked, chunked\nETag: "v1"\n', BODY[:3000]),
    "gzip then chunked, chunked gzip body": ("Transfer-Encoding: gzip, chunked\n",
                                            chunked(gzip.compress(BODY), final=True)),
    "two chunked fields, body chunked twice": ("Transfer-Encoding: chunked\nTransfer-Encoding: chunked\n",
                                               chunked(chunked(BODY, final=True), final=True)),
    "gzip with a length": (f"Transfer-Encoding: gzip\nContent-Length: {len(gzip.compress(BODY))}\n",
                           gzip.compress(BODY)),
}


@pytest.mark.parametrize("head, body", TRANSFER_CODED.values(), ids=TRANSFER_CODED.keys())
def test_a_transfer_encoding_other_than_chunked_alone_is_refused(tmp_path, serve, head, body):
    origin = serve(fixed(f"HTTP/1.1 200 OK\n{head}", body))
    assert_refused(use(tmp_path, origin), tmp_path, "Transfer-Encoding '")


def framed(end: bytes, sizes: Callable[[int], bytes] = lambda n: b"%x" % n, piece: int = 4000) -> bytes:
    """BODY chunked in pieces of ``piece`` bytes, each ended by ``end``, with sizes written by ``sizes``."""
    pieces = [BODY[i : i + piece] for i in range(0, len(BODY), piece)]
    return b"".join(sizes(len(p)) + b"\r\n" + p + end for p in pieces) + b"0\r\n\r\n"


def test_chunks_ended_by_a_bare_lf_are_read_whole(tmp_path, serve):
    # http.client tossed the two bytes after a chunk whatever they were: here the LF and the first
    # digit of the next size, so "1000" was read as "000", the last chunk; the body ended after its
    # first 4,096 bytes, and was stored as the whole file.  curl reads these chunks whole, and so
    # does sc.
    origin = serve(fixed("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", framed(b"\n", piece=4096)))
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY


MISFRAMED = {
    "no end after a chunk": framed(b""),
    "other bytes after a chunk": framed(b"xy"),
    "a size with 0x": framed(b"\r\n", lambda n: b"0x%x" % n),
    "a size with an underscore": framed(b"\r\n", lambda n: b"f_a0" if n == 4000 else b"%x" % n),
    "a size with a plus": framed(b"\r\n", lambda n: b"+%x" % n),
    "a negative size": framed(b"\r\n", lambda n: b"-1"),
    "a space before the size": framed(b"\r\n", lambda n: b" %x" % n),
}


@pytest.mark.parametrize("body", MISFRAMED.values(), ids=MISFRAMED.keys())
def test_chunks_framed_otherwise_than_rfc_9112_says_are_refused(tmp_path, serve, body):
    # int(line, 16) takes "0x", "_", "+" and "-", and the two bytes after a chunk were tossed
    # whatever they were: some of these were stored as the file, with bytes lost or misread.
    # curl refuses them all.
    origin = serve(fixed("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", body))
    assert_refused(use(tmp_path, origin), tmp_path)


class TricklingOrigin(ThreadedServer):
    """Answers every request on 127.0.0.1 with ``start``, then with ``trickle`` a piece at a time
    (pieces separated by "|"), a piece every tenth of a second, over and over until stopped: the
    framing of a chunked body that never ends, though bytes keep coming."""

    def __init__(self, start: bytes, trickle: bytes) -> None:
        self._start, self._trickle = start, trickle
        super().__init__(self._answer_slowly)

    def _answer_slowly(self, conn: socket.socket) -> None:
        if read_head(conn) is None:
            return
        conn.sendall(self._start)
        for piece in itertools.cycle(self._trickle.split(b"|")):
            if self.stopping.wait(0.1):
                return
            conn.sendall(piece)


TRICKLES = {
    # the whole body, its last chunk, then trailer lines that never end
    "trailer lines": (b"HTTP/1.1 200 OK\r\nETag: \"v\"\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + chunked(BODY, final=False) + b"0\r\n", b"X-T: y\r\n"),
    # a chunk, then the next chunk's size line a byte at a time, with an extension that never ends
    "a size line": (b"HTTP/1.1 200 OK\r\nETag: \"v\"\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + chunked(BODY[:4096], final=False) + b"10;", b"a"),
}


@pytest.mark.parametrize("trickle", TRICKLES.values(), ids=TRICKLES.keys())
def test_chunked_framing_that_never_ends_is_cut_at_the_deadline(tmp_path, trickle):
    # http.client reads a size line and the trailer section inside one read of the body, each
    # recv bounded by the read timeout alone: bytes a tenth of a second apart held the download
    # for ever, past --timeout, and past the speed limit, which counts the body's bytes.
    origin = TricklingOrigin(*trickle)
    try:
        started = time.monotonic()
        result = sc("--use", "-d", str(tmp_path), "-n", "data", "--timeout", "3",
                    f"http:http://127.0.0.1:{origin.port}/data.bin", timeout=60)
        took = time.monotonic() - started
    finally:
        origin.stop()
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "in the time left" in result.stderr, result.stderr
    assert took < 15, took
    assert not (control(tmp_path) / "objects" / "data").exists()


def test_an_error_answer_whose_chunked_framing_never_ends_is_not_waited_for(tmp_path):
    # The error body is read for what the server says, for two seconds at most: a trailer that
    # never ends held the failure for ever.
    origin = TricklingOrigin(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n", b"X-T: y\r\n")
    try:
        started = time.monotonic()
        result = sc("--use", "-d", str(tmp_path), "-n", "data",
                    f"http:http://127.0.0.1:{origin.port}/data.bin", timeout=60)
        took = time.monotonic() - started
    finally:
        origin.stop()
    assert_refused(result, tmp_path, "HTTP 404")
    assert took < 15, took


@pytest.mark.parametrize("padded", ["chunked ", "Chunked\t", " \tCHUNKED  "])
def test_chunked_with_whitespace_around_it_is_chunked(tmp_path, serve, padded):
    # Whitespace around a field's value is no part of it (RFC 9110 5.5), and curl reads these
    # bodies as chunked.  http.client read them to the close, framing and all, which was refused
    # as a Transfer-Encoding other than chunked.  A body that is not chunked fails as a
    # malformed chunked body does.
    origin = serve(fixed(f"HTTP/1.1 200 OK\nTransfer-Encoding: {padded}\n", chunked(BODY, final=True)))
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY
    base = tmp_path / "plain"
    base.mkdir()
    assert_refused(use(base, serve(fixed(f"HTTP/1.1 200 OK\nTransfer-Encoding: {padded}\n", BODY[:3000]))), base)


@pytest.mark.parametrize("length", [len(BODY) // 2, len(BODY) * 2], ids=["shorter", "longer"])
def test_a_chunked_body_ends_with_its_final_chunk_whatever_its_content_length(tmp_path, serve, length):
    origin = serve(fixed(f"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Length: {length}\nETag: \"v1\"\n",
                         chunked(BODY, final=True)))
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY


def test_informational_answers_are_read_past_to_the_final_one(tmp_path, serve):
    # http.client reads past "100 Continue" alone: a "103 Early Hints" (which a server or a CDN may
    # send ahead of any answer) or a "102 Processing" was taken for the answer, and failed the
    # download ("HTTP 103").  One that sends nothing else is refused in one line.
    early = "HTTP/1.1 103 Early Hints\nLink: </style.css>; rel=preload\n\n"
    answer = (early + early + "HTTP/1.1 102 Processing\n\nHTTP/1.1 100 Continue\n\n"
              + f"HTTP/1.1 200 OK\nContent-Length: {len(BODY)}\nConnection: close\n")
    origin = serve(fixed(answer, BODY))
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY
    config, base = tmp_path / "config", tmp_path / "other"
    config.write_text("retries = 0\n")
    base.mkdir()
    endless = serve(fixed(early * 40, BODY))
    result = sc("--use", "-d", str(base), "-n", "data", endless.word(), env=sc_env(SC_CONFIG=str(config)))
    assert_refused(result, base, "the answer was refused: more than 32 informational answers")


NOT_HTTP = {
    "nothing": (b"", "the connection was closed without an answer"),
    "not a status line": (b"garbage\x1b[31m\r\n\r\n", "the answer is not HTTP: it begins with 'garbage\\x1b[31m'"),
    # (The TLS alert of a port that speaks HTTPS alone: no end of line, and yet no head cut short.)
    "another protocol without an end of line": (b"\x15\x03\x01\x00\x02\x02\x46",
                                                "the answer is not HTTP: it begins with '\\x15\\x03\\x01\\x00\\x02\\x02F'"),
    "a header line too long": (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "the answer's head is too long"),
    "too many header fields": (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 120 + b"\r\n",
                               "the answer was refused: got more than 100 headers"),
}


@pytest.mark.parametrize("answer, says", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_an_answer_that_cannot_be_read_is_named_for_what_is_wrong_with_it(tmp_path, serve, answer, says):
    # urllib3 words each of these "Connection aborted." followed by http.client's own words (a
    # repr, "Remote end closed connection without response"): the line says what came back.
    config = tmp_path / "config"
    config.write_text("retries = 0\n")
    origin = serve(lambda _request: answer)
    result = sc("--use", "-d", str(tmp_path), "-n", "data", origin.word(), env=sc_env(SC_CONFIG=str(config)))
    assert_refused(result, tmp_path, f"cannot download {origin.word()[5:]}: {says}")
    assert "aborted" not in result.stderr


@pytest.mark.parametrize("status, says", [
    ("203 Non-Authoritative Information", "HTTP 203 Non-Authoritative Information for {url} (a proxy on the way "
                                          "changed the file: its bytes are not the server's)"),
    ("204 No Content", "HTTP 204 No Content for {url} (only a 200 answer, or a 206 to a range request, brings the file)"),
], ids=["203", "204"])
def test_a_success_that_does_not_bring_the_file_says_why_it_is_refused(tmp_path, serve, status, says):
    # curl stores the body of any 2xx.  A 203 is a transforming proxy's copy of the file, not
    # the server's bytes (RFC 9110 15.3.4); a 204 has no body.
    origin = serve(fixed(f"HTTP/1.1 {status}\nContent-Length: {len(BODY)}\n", BODY))
    assert_refused(use(tmp_path, origin), tmp_path, says.format(url=origin.word()[5:]))


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_closes_without_an_answer_is_named_so(tmp_path, serve, scheme):
    # Plain HTTP asks the proxy for the file; HTTPS asks it for a tunnel (CONNECT) first.
    config = tmp_path / "config"
    config.write_text("retries = 0\n")
    proxy = serve(lambda _request: b"")
    result = sc("--use", "--proxy", f"http://127.0.0.1:{proxy.port}", "-d", str(tmp_path), "-n", "data",
                f"http:{scheme}://example.test/data.bin", env=sc_env(SC_CONFIG=str(config)))
    assert_refused(result, tmp_path, f"via proxy http://127.0.0.1:{proxy.port}: ",
                   "the connection was closed without an answer")
    assert "Remote end" not in result.stderr


@pytest.mark.parametrize("path", ["data.bin.gz", "data.tgz", "DATA.BIN.GZ"])
def test_a_compressed_file_labelled_with_its_own_encoding_is_stored_as_it_is(tmp_path, serve, path):
    """A .gz file that its server labels `Content-Encoding: gzip` (S3 objects whose uploader set
    the encoding from the name, as django-storages does; Apache's AddEncoding): its bytes are the
    file, which curl, wget and pip keep as they are, and so does the source."""
    packed = gzip.compress(BODY)
    origin = serve(fixed(f"HTTP/1.1 200 OK\nContent-Length: {len(packed)}\nContent-Encoding: gzip\n", packed))
    url = f"http:http://127.0.0.1:{origin.port}/{path}"
    kept = sc("--use", "-d", str(tmp_path), "-n", "kept", url)
    assert kept.returncode == 0, kept.stderr
    assert (Path(kept.stdout.strip()) / path).read_bytes() == packed
    unpacked = sc("--use", "-d", str(tmp_path), "-n", "unpacked", url, "gunzip")
    assert unpacked.returncode == 0, unpacked.stderr
    assert [p.read_bytes() for p in Path(unpacked.stdout.strip()).iterdir()] == [BODY]


def test_an_absurd_content_length_is_a_clean_error(tmp_path, serve):
    origin = serve(fixed(f"HTTP/1.1 200 OK\nContent-Length: {10**30}\n", BODY))
    assert_refused(use(tmp_path, origin), tmp_path)


def test_an_absurd_content_range_with_connections_is_a_clean_error(tmp_path, serve):
    head = f'HTTP/1.1 206 Partial Content\nContent-Range: bytes 0-{len(BODY) - 1}/{10**30}\nETag: "v"\nContent-Length: {len(BODY)}\n'
    origin = serve(fixed(head, BODY))
    assert_refused(use(tmp_path, origin, "--connections", "4"), tmp_path)


LENGTHS = {
    "whitespace around it": f"Content-Length:  \t{len(BODY)} \t\n",
    "the same number as a list": f"Content-Length: {len(BODY)}, {len(BODY)}\n",
    "the same field twice": f"Content-Length: {len(BODY)}\nContent-Length: {len(BODY)}\n",
    "leading zeros past 19 digits": f"Content-Length: {len(BODY):030d}\n",
}


@pytest.mark.parametrize("length", LENGTHS.values(), ids=LENGTHS.keys())
def test_a_content_length_in_any_form_rfc_9110_allows_is_the_length(tmp_path, serve, length):
    # With no validator, a body without a length cannot be continued or checked whole: read as
    # no length at all, these failed ("the server sent neither a length nor a chunked body").
    origin = serve(fixed(f"HTTP/1.1 200 OK\n{length}", BODY))
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY


def latin1(head: str, body: bytes) -> Callable[[bytes], bytes]:
    """An answer whose head is sent in Latin-1, the bytes HTTP headers are read as."""
    return lambda _request: head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


@pytest.mark.parametrize("length", ["9" * 5000, "²", "1²"], ids=["5000 digits", "superscript", "mixed"])
def test_a_content_length_that_is_no_size_is_a_clean_error_or_ignored(tmp_path, serve, length):
    # int() refuses 4,300 digits and "²" (which str.isdigit() takes): neither may escape as a crash.
    origin = serve(latin1(f"HTTP/1.1 200 OK\nContent-Length: {length}\nConnection: close\n", BODY))
    result = use(tmp_path, origin)
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    if length.isascii():
        assert_refused(result, tmp_path, "absurd size", "(5,000 characters)")
        assert len(result.stderr) < 500, result.stderr
    else:  # not a length at all: the body ends with the close, then a range request is refused
        assert_refused(result, tmp_path, "length")


@pytest.mark.parametrize("total", ["9" * 5000, "¹"], ids=["5000 digits", "superscript"])
def test_a_content_range_that_is_no_size_is_a_clean_error(tmp_path, serve, total):
    head = (f'HTTP/1.1 206 Partial Content\nContent-Range: bytes 0-{len(BODY) - 1}/{total}\nETag: "v"\n'
            f"Content-Length: {len(BODY)}\n")
    origin = serve(latin1(head, BODY))
    result = use(tmp_path, origin, "--connections", "4")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert_refused(result, tmp_path)


def test_a_long_reason_and_encoding_are_shown_by_their_two_ends(tmp_path, serve):
    origin = serve(latin1(f"HTTP/1.1 404 {'Gone ' * 4000}away\nContent-Length: 0\n", b""))
    result = use(tmp_path, origin)
    assert_refused(result, tmp_path, "HTTP 404 (the server says 'Gone Gone", "away' (20,004 characters)) for http://")
    assert len(result.stderr) < 500, result.stderr
    origin = serve(latin1(f"HTTP/1.1 200 OK\nContent-Length: 4\nContent-Encoding: {'x' * 9000}\n", b"abcd"))
    (tmp_path / "encoding").mkdir()
    result = use(tmp_path / "encoding", origin)
    assert_refused(result, tmp_path / "encoding", "Content-Encoding 'xxx", "(9,000 characters)")
    assert len(result.stderr) < 500, result.stderr


def test_a_retry_notice_cannot_steer_the_terminal(tmp_path, serve):
    # No status line, as an HTTP/0.9 server answers: http.client's error quotes the first line,
    # which the notice of the retry shows.
    origin = serve(lambda _request: b"\x1b]0;title\x07\x1b[2J\x1b[31mred\r\nmore\r\n\r\n")
    config = tmp_path / "config"
    config.write_text("retries = 1\n")
    base = tmp_path / "base"
    base.mkdir()
    # In bytes: text mode would turn a CR into a newline.
    result = subprocess.run([*SC, "--use", "-v", "-d", str(base), "-n", "data", origin.word()], capture_output=True,
                            timeout=60, env=sc_env(SC_CONFIG=str(config)))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.split(b"\n")
    assert lines.pop() == b"" and all(line.startswith(b"sc: ") for line in lines), result.stderr
    assert not any(char in result.stderr for char in b"\x1b\x07\r"), result.stderr
    assert any(line.startswith(b"sc: retrying ") and b"\\x1b]0;title\\x07" in line for line in lines), lines


def test_the_credentials_of_a_url_go_to_its_origin_alone_across_redirects(tmp_path, serve):
    requests: list[bytes] = []

    def answer(request: bytes) -> bytes:
        requests.append(request)
        path = request.split(b" ")[1]
        if path == b"/data.bin":
            return b"HTTP/1.1 302 Found\r\nLocation: /same.bin\r\nContent-Length: 0\r\n\r\n"
        if path == b"/same.bin":  # the same server by another name: another origin
            return (f"HTTP/1.1 302 Found\r\nLocation: http://localhost:{origin.port}/other.bin\r\n"
                    "Content-Length: 0\r\n\r\n").encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"

    origin = serve(answer)
    result = sc("--use", "-d", str(tmp_path), "-n", "data", f"http:http://alice:secret@127.0.0.1:{origin.port}/data.bin")
    assert result.returncode == 0, result.stderr
    sent = [b"authorization: basic" in request.lower() for request in requests]
    assert sent == [True, True, False], requests


def test_a_refusal_after_a_redirect_elsewhere_does_not_say_the_authorization_was_sent(tmp_path, serve):
    def answer(request: bytes) -> bytes:
        if request.split(b" ")[1] == b"/data.bin":
            return (f"HTTP/1.1 302 Found\r\nLocation: http://localhost:{origin.port}/other.bin\r\n"
                    "Content-Length: 0\r\n\r\n").encode()
        return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"

    origin = serve(answer)
    result = sc("--use", "-d", str(tmp_path), "-n", "data", f"http:http://alice:secret@127.0.0.1:{origin.port}/data.bin")
    assert_refused(result, tmp_path, f"HTTP 401 Unauthorized for http://127.0.0.1:{origin.port}/data.bin, redirected "
                   f"to http://localhost:{origin.port}/other.bin (redirected to another origin: the Authorization "
                   "of the URL was not sent there)")


def test_a_redirect_keeps_its_host_when_its_query_holds_an_at_sign(tmp_path, serve):
    asked: list[bytes] = []

    def answer(request: bytes) -> bytes:
        asked.append(request.split(b"\r\n")[0])
        if request.split(b" ")[1] == b"/data.bin":  # a URL without a path, as some signed URLs are
            return (f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{origin.port}?sig=a@localhost:1\r\n"
                    "Content-Length: 0\r\n\r\n").encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"

    origin = serve(answer)
    result = use(tmp_path, origin)
    assert result.returncode == 0, result.stderr
    assert asked == [b"GET /data.bin HTTP/1.1", b"GET /?sig=a@localhost:1 HTTP/1.1"]


def test_a_redirect_to_a_host_holding_a_backslash_is_refused(tmp_path, serve):
    # Python's parser reads "127.0.0.1\.example.internal" as one host, which chose the route (a
    # no_proxy entry could match it); urllib3 connected to 127.0.0.1, port 80, around the proxy,
    # and the lines named a host that was never asked.  A source's URL is refused so already.
    asked: list[bytes] = []

    def answer(request: bytes) -> bytes:
        asked.append(request.split(b"\r\n")[0])
        return (f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1\\.example.internal:{origin.port}/ok\r\n"
                "Content-Length: 0\r\n\r\n").encode()

    origin = serve(answer)
    result = use(tmp_path, origin)
    assert_refused(result, tmp_path, "whose host holds a '\\'")
    assert asked == [b"GET /data.bin HTTP/1.1"]


def test_a_long_redirect_location_is_shown_by_its_two_ends(tmp_path, serve):
    def answer(request: bytes) -> bytes:
        if request.split(b" ")[1] == b"/data.bin":
            return f"HTTP/1.1 302 Found\r\nLocation: /{'a' * 60_000}z\r\nContent-Length: 0\r\n\r\n".encode()
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    origin = serve(answer)
    result = use(tmp_path, origin)
    assert_refused(result, tmp_path, "HTTP 404 Not Found for http://", ", redirected to 'http://", "az' (")
    assert len(result.stderr) < 500, result.stderr


# Answers that no correct server gives, each of which must fail the download with one line.
MALFORMED_ANSWERS = {
    "redirect to a broken IPv6 host": "HTTP/1.1 302 Found\nLocation: http://[::1\nContent-Length: 0\n",
    "redirect to a file URL": "HTTP/1.1 302 Found\nLocation: file:///etc/passwd\nContent-Length: 0\n",
    "redirect to an FTP URL": "HTTP/1.1 302 Found\nLocation: ftp://127.0.0.1/data\nContent-Length: 0\n",
    "a header line of 100,000 bytes": f"HTTP/1.1 200 OK\nX-Long: {'a' * 100_000}\nContent-Length: 2\n",
    "150 header lines": "HTTP/1.1 200 OK\n" + "".join(f"X-H{i}: v\n" for i in range(150)) + "Content-Length: 2\n",
    "no status line": "garbage\n",
    "two different lengths": "HTTP/1.1 200 OK\nContent-Length: 2\nContent-Length: 3\n",
    "an unknown status": "HTTP/1.1 999 Weird\nContent-Length: 0\n",
}


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
def test_a_malformed_answer_fails_in_one_line(tmp_path, serve, answer):
    config = tmp_path / "config"
    config.write_text("retries = 0\n")
    base = tmp_path / "base"
    base.mkdir()
    origin = serve(latin1(answer, b"hi"))
    result = sc("--use", "-d", str(base), "-n", "data", origin.word(), env=sc_env(SC_CONFIG=str(config)))
    assert "internal error" not in result.stderr, result.stderr
    assert_refused(result, base, "sc: error: repository 'data': ")
    assert len(result.stderr) < 500, result.stderr


# Pieces of answers for the test below: statuses, headers and values that no correct server
# sends together, and bodies that fit them or not.
_STATUSES = ["200 OK", "206 Partial Content", "301 Moved", "302 Found", "304 Not Modified", "401 No", "404 No",
             "416 Range Not Satisfiable", "500 Error", "503 Busy", "204 No Content", "999 What", "20 X"]
_HEADERS = ["Content-Length", "Content-Range", "ETag", "Last-Modified", "Location", "Transfer-Encoding",
            "Content-Encoding", "Accept-Ranges", "Retry-After", "Connection"]
_HEADER_WEIGHTS = [4, 4, 2, 1, 2, 1, 1, 1, 1, 1]  # sizes and ranges most: those we parse ourselves
_VALUES = ["", "0", "-1", "10000", "9999", "10001", "9" * 30, "9" * 5000, "²", " 12 ", "1,2", "abc", "0x10",
           "bytes 0-9999/10000", "bytes 0-0/10000", "bytes 5-2/10000", "bytes */10000", "bytes */*",
           f"bytes 0-9999/{'9' * 5000}", "bytes 0-9999/*", "items 0-1/2", '"v1"', 'W/"v1"', '""',
           "Mon, 01 Jan 2024 00:00:00 GMT", "not a date", "http://[::1", "/relative", "//127.0.0.1:1/x",
           "file:///etc/passwd", "chunked", "gzip", "identity", "gzip, chunked", "close", "x" * 70_000]
_BODIES = [BODY, b"", BODY[:100], b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n"]


def test_random_malformed_answers_each_end_in_one_line(tmp_path, serve):
    # Seeded, so that a failure can be replayed; each case is one to three answers, served in turn.
    rng = random.Random(20261130)
    config = tmp_path / "config"
    config.write_text("retries = 1\nread_timeout = 1\nconnect_timeout = 1\nspeed_time = 1\n")
    for case in range(60):
        answers = []
        for _ in range(rng.randint(1, 3)):
            status = rng.choice(_STATUSES[:2]) if rng.random() < 0.6 else rng.choice(_STATUSES)
            names = dict.fromkeys(rng.choices(_HEADERS, weights=_HEADER_WEIGHTS, k=rng.randint(1, 4)))
            head = [f"HTTP/1.1 {status}", *(f"{name}: {rng.choice(_VALUES)}" for name in names)]
            answers.append(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + rng.choice(_BODIES))
        turns, asked = itertools.cycle(answers), []
        origin = serve(lambda request, turns=turns, asked=asked: asked.append(request) or next(turns))
        base = tmp_path / f"base{case}"
        base.mkdir()
        connections = ["--connections", "4"] if rng.random() < 0.3 else []
        result = sc("--use", "-d", str(base), "-n", "data", "--timeout", "20", *connections, origin.word(),
                    env=sc_env(SC_CONFIG=str(config)))
        replay = f"case {case}: {[answer[:300] for answer in answers]}"
        assert asked, (replay, result.stderr)  # the answers were given, and what follows is about them
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr, (replay, result.stderr)
        if result.returncode != 0:
            assert result.returncode in (1, 2) and result.stderr.startswith("sc: error: "), (replay, result.stderr)
            assert result.stderr.count("\n") == 1 and len(result.stderr) < 1000, (replay, result.stderr)


def resumed_with(answer: str, body: bytes) -> Callable[[bytes], bytes]:
    """A file whose first answer breaks off after 3000 bytes, each range request for the rest
    getting the 206 answer ``answer`` (its head less the status line) over ``body``."""

    def serve(request: bytes) -> bytes:
        if b"\r\nrange:" not in request.lower():
            return (f'HTTP/1.1 200 OK\r\nETag: "v1"\r\nContent-Length: {len(BODY)}\r\n\r\n').encode() + BODY[:3000]
        return f"HTTP/1.1 206 Partial Content\n{answer}\n".replace("\n", "\r\n").encode() + body

    return serve


ENDINGS = {"closed": bytes, "reset": Reset, "closed then reset": ClosedThenReset}
HEAD_OF_200 = f'HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\nETag: "v1"\r\n\r\n'.encode()
HEAD_CUTS = {"within the version": len(b"HTT"),
             "within the status line": len(b"HTTP/1.1 20"),
             "after the status line": len(b"HTTP/1.1 200 OK\r\n"),
             "within a field": len(b"HTTP/1.1 200 OK\r\nContent-Le"),
             "before the last end of line": len(HEAD_OF_200) - 1}


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
@pytest.mark.parametrize("cut", HEAD_CUTS.values(), ids=HEAD_CUTS.keys())
def test_an_answer_whose_head_the_connection_cut_is_asked_for_again(tmp_path, serve, cut, ending):
    # http.client ends a head at the end of the connection as at its empty line: cut after its
    # status line, the answer was a 200 without length or validator, whose empty body failed the
    # checksum, with no retry.
    asked: list[bytes] = []

    def answer(request: bytes) -> bytes:
        asked.append(request)
        return ending((HEAD_OF_200 + BODY)[:cut]) if len(asked) == 1 else HEAD_OF_200 + BODY

    origin = serve(answer)
    result = sc("--use", "-v", "-d", str(tmp_path), "-n", "data", origin.word(),
                f"sha256:{hashlib.sha256(BODY).hexdigest()}")
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY
    assert len(asked) == 2, result.stderr
    if ending is bytes:  # (a reset may be read before the bytes sent ahead of it: the retry says "reset")
        assert "(the connection was closed within the head of the answer; attempt 2 of" in result.stderr, result.stderr


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
def test_a_resumption_whose_head_the_connection_cut_goes_on_from_its_byte(tmp_path, serve, ending):
    # The head of a 206 cut before its Content-Range was read as an answer without one: the
    # download started over from byte 0.
    asked: list[bytes] = []
    resumed = resumed_with(f'ETag: "v1"\nContent-Length: {len(BODY) - 3000}\n'
                           f"Content-Range: bytes 3000-{len(BODY) - 1}/{len(BODY)}\n", BODY[3000:])

    def answer(request: bytes) -> bytes:
        asked.append(request)
        return ending(resumed(request)[:50]) if len(asked) == 2 else resumed(request)

    result = sc("--use", "-v", "-d", str(tmp_path), "-n", "data", serve(answer).word())
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == BODY
    assert len(asked) == 3, result.stderr
    assert all(b"\r\nRange: bytes=3000-\r\n" in request for request in asked[1:]), (asked, result.stderr)


SEVERAL_RANGES = (b"--SEP\r\nContent-Range: bytes 3000-9999/10000\r\n\r\n" + BODY[3000:] + b"\r\n--SEP--\r\n")
RESUMPTIONS_NOT_SAID_TO_END_THE_FILE = {
    "no Content-Range": (f'ETag: "v1"\nContent-Length: {len(BODY) - 3000}\n', BODY[3000:],
                         "asked for bytes 3000- but got an answer without Content-Range"),
    "multipart/byteranges": (f'ETag: "v1"\nContent-Type: multipart/byteranges; boundary=SEP\n'
                             f'Content-Length: {len(SEVERAL_RANGES)}\n', SEVERAL_RANGES,
                             "asked for bytes 3000- but got several ranges in one answer (multipart/byteranges)"),
    "a size of '*'": (f'ETag: "v1"\nContent-Range: bytes 3000-9999/*\nContent-Length: {len(BODY) - 3000}\n',
                      BODY[3000:], "its size of 10000 bytes is no longer given"),
}


@pytest.mark.parametrize("head, body, said", RESUMPTIONS_NOT_SAID_TO_END_THE_FILE.values(),
                         ids=RESUMPTIONS_NOT_SAID_TO_END_THE_FILE.keys())
def test_a_resumption_not_said_to_end_the_file_says_what_came(tmp_path, serve, head, body, said):
    # Before, the line said "but got 'None'" in the first two cases, "from 10000 to None bytes" in
    # the last.
    origin = serve(resumed_with(head, body))
    config = tmp_path / "sc.conf"
    config.write_text("retries = 1\n")
    base = tmp_path / "base"
    base.mkdir()
    result = sc("--use", "-d", str(base), "-n", "data", origin.word(), env=sc_env(SC_CONFIG=str(config)))
    assert_refused(result, base, f"cannot resume http://127.0.0.1:{origin.port}/data.bin at byte 3000 (it broke off: "
                                 f"Connection broken: IncompleteRead(3000 bytes read, 7000 more expected)): {said}")


THREE_HUNDREDS = {
    "300 with a Location": ("300 Multiple Choices\nLocation: /other.bin", "300 Multiple Choices",
                            " (not followed: only 301, 302, 303, 307 and 308 are redirects; its Location is '/other.bin')"),
    "305": ("305 Use Proxy\nLocation: http://proxy.test:3128/", "305 Use Proxy", " (not followed: only 301, 302, 303, "
            "307 and 308 are redirects; its Location is 'http://proxy.test:3128/')"),
    "399 without a Location": ("399 Odd", "399 (the server says 'Odd')",
                               " (not followed: only 301, 302, 303, 307 and 308 are redirects)"),
    "301 without a Location": ("301 Moved Permanently", "301 Moved Permanently", " (a redirect without a Location)"),
    "304": ("304 Not Modified", "304 Not Modified", " (the answer to a conditional request, and none was made)"),
}


@pytest.mark.parametrize("answer, status, said", THREE_HUNDREDS.values(), ids=THREE_HUNDREDS.keys())
def test_a_3xx_answer_that_is_not_followed_says_why(tmp_path, serve, answer, status, said):
    # The line said only "HTTP 300 Multiple Choices for URL" (curl -L follows a Location of any 3xx).
    origin = serve(fixed(f"HTTP/1.1 {answer}\nContent-Length: 0\n", b""))
    result = use(tmp_path, origin)
    assert_refused(result, tmp_path, f"HTTP {status} for http://127.0.0.1:{origin.port}/data.bin{said}\n")
