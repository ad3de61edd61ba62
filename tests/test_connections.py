"""Parallel ranged downloads (``connections`` > 1): the http: source against the loopback origin
(tests/origin.py), and the in-order part reader of sharedcache.loaders.ranged with stand-in parts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import ClassVar
from pathlib import Path

import pytest
from origin import IF_RANGE_SERVERS, Origin
from scutil import tarball_bytes, wait_for

from sharedcache.loaders import pipeline
from sharedcache.errors import (
    ChecksumError,
    CorruptDataError,
    DownloadError,
    UsageError,
)
from sharedcache import FetchPolicy
from sharedcache.config.settings import MAX_CONNECTIONS
from sharedcache.loaders.streams import Progress
from sharedcache.loaders.ranged import RangedReader, part_size
from sharedcache.loaders.registry import parse_recipe

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


def populate(tmp_path: Path, *words: str, connections: int = 4, progress: Progress | None = None,
             retries: int = 3) -> Path:
    """Run the recipe into a fresh dest (the work directory is shared by the calls of a test)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    dest = tmp_path / f"dest{len(list(tmp_path.glob('dest*')))}"
    dest.mkdir()
    fetch = FetchPolicy(connect_timeout=10, read_timeout=10, retries=retries, connections=connections)
    pipeline.populate(parse_recipe(words), dest, work=work, limit=None, progress=progress, fetch=fetch)
    return dest


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def spans(ranges: list[str]) -> list[tuple[int, int | None]]:
    """The Range headers as (first, last) pairs; last is None for an open-ended range."""
    pairs = []
    for header in ranges:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header)
        assert match, header
        pairs.append((int(match[1]), int(match[2]) if match[2] else None))
    return pairs


def part_spans(start: int, total: int, connections: int) -> list[tuple[int, int]]:
    """The bounded ranges the workers ask for: every part after the first."""
    size = part_size(total - start, connections)
    assert size is not None
    return [(first, min(first + size, total) - 1) for first in range(start + size, total, size)]


def range_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("sharedcache-range")]


# --- the http: source in parts --------------------------------------------------------------------


def test_parts_are_stitched_in_order(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(4_000_000)
    url = origin.add("/data.bin", payload)
    calls: list[tuple[int, int | None]] = []
    dest = populate(tmp_path, f"http:{url}", sha256(payload), progress=lambda *call: calls.append(call))
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert stats.ranges[0] == "bytes=0-"  # the first answer shows ranges work and gives the first part
    assert sorted(spans(stats.ranges[1:])) == part_spans(0, len(payload), 4)
    assert len(stats.ranges) == 4 and set(stats.statuses) == {206}
    assert len(stats.if_ranges) == 3 and len(set(stats.if_ranges)) == 1  # every part checked
    assert calls[-1] == (len(payload), len(payload))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)  # received in order
    assert not range_threads()


def test_tarball_through_parts(origin: Origin, tmp_path: Path) -> None:
    files = {"a/random.bin": os.urandom(4_000_000), "a/text.txt": b"line\n" * 200_000}
    archive = tarball_bytes(files)
    url = origin.add("/data.tar.gz", archive)
    dest = populate(tmp_path, f"http:{url}", sha256(archive), "tar", connections=3)
    assert {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == files
    stats = origin.stats("/data.tar.gz")
    assert sorted(spans(stats.ranges[1:])) == part_spans(0, len(archive), 3)


@pytest.mark.parametrize("connections", [1, 4])
def test_small_file_and_one_connection_make_one_request(origin: Origin, tmp_path: Path,
                                                        connections: int) -> None:
    payload = os.urandom(1_500_000 if connections > 1 else 4_000_000)
    url = origin.add("/data.bin", payload)
    dest = populate(tmp_path, f"http:{url}", connections=connections)
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert stats.gets == 1
    assert stats.ranges == (["bytes=0-"] if connections > 1 else [])


@pytest.mark.parametrize("server", ["ignores ranges", "gives no validator"])
def test_one_connection_when_parts_cannot_be_checked(origin: Origin, tmp_path: Path, server: str) -> None:
    payload = os.urandom(4_000_000)
    if server == "ignores ranges":
        url = origin.add("/data.bin", payload)
        origin.fault("/data.bin", ignore_range=True)
    else:
        url = origin.add("/data.bin", payload, etag=False, last_modified=False)
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert stats.gets == 1 and stats.statuses == [200 if server == "ignores ranges" else 206]


@pytest.mark.parametrize("fault", [{"ignore_range": True}, {"new_etag": True},
                                   {"new_etag": True, "ignore_if_range": True}],
                         ids=["200", "new ETag", "new ETag, If-Range ignored"])
def test_a_part_that_does_not_match_is_never_stitched(origin: Origin, tmp_path: Path,
                                                      fault: dict[str, bool]) -> None:
    payload = os.urandom(4_000_000)
    url = origin.add("/data.bin", payload)
    origin.fault("/data.bin")  # the first answer is fine
    origin.fault("/data.bin", **fault)  # one of the parts is not
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    # The stream went on with one connection, with a range from where it had got to.
    open_ended = [first for first, last in spans(stats.ranges) if last is None]
    assert len(open_ended) == 2 and open_ended[1] > 0


@pytest.mark.parametrize("server", list(IF_RANGE_SERVERS))
def test_file_replaced_during_download(origin: Origin, tmp_path: Path, server: str) -> None:
    old, new = b"old!" * 1_000_000, b"new!" * 1_000_000
    for path in ("/data.bin", "/other.bin"):
        origin.add(path, old)
        origin.fault(path)
        origin.fault(path, drop_after=100_000, replace_with=new)  # a part breaks and the file changes
        origin.fault(path, **IF_RANGE_SERVERS[server], times=10)
    dest = populate(tmp_path, f"http:{origin.url('/data.bin')}")
    assert (dest / "data.bin").read_bytes() == new  # all new: the population started over
    stats = origin.stats("/data.bin")
    assert stats.ranges.count("bytes=0-") == 2

    # With the checksum of the old version, the new one is refused.
    with pytest.raises(ChecksumError):
        populate(tmp_path, f"http:{origin.url('/other.bin')}", sha256(old))


def test_dropped_part_is_continued(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(4_000_000)
    url = origin.add("/data.bin", payload)
    origin.fault("/data.bin")
    origin.fault("/data.bin", drop_after=300_000)
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert set(stats.statuses) == {206}
    parts = part_spans(0, len(payload), 4)
    asked = spans(stats.ranges[1:])
    assert len(asked) == len(parts) + 1
    [retry] = [span for span in asked if span not in parts]
    assert any(first + 300_000 == retry[0] and last == retry[1] for first, last in parts)


def mirrored(origin: Origin, payload: bytes) -> str:
    """A redirector at /data.bin that sends each request to the next of two mirrors, each with
    its own ETag (as mirrors that do not share validators have); the redirector's URL."""
    origin.add("/m1/data.bin", payload)
    origin.add("/m2/data.bin", payload)
    return origin.redirect("/data.bin", "/m1/data.bin", "/m2/data.bin")


def served(origin: Origin) -> int:
    return origin.stats("/m1/data.bin").bytes_served + origin.stats("/m2/data.bin").bytes_served


def test_parts_go_where_the_first_answer_came_from(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(4_000_000)
    url = mirrored(origin, payload)
    # Slow enough that the first answer is far from its end (1.5 s of sending) when its part is
    # done and it is dropped.
    origin.rate = 2_000_000
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "data.bin").read_bytes() == payload
    assert origin.stats("/data.bin").gets == 1  # the redirect is followed once, not by each part
    assert origin.stats("/m2/data.bin").gets == 0 and origin.stats("/m1/data.bin").statuses == [206] * 4
    parts = part_spans(0, len(payload), 4)
    assert sorted(spans(origin.stats("/m1/data.bin").ranges[1:])) == parts
    # The first answer was dropped once its part was read, not read on to its end.  (How much of it
    # the server sent past its part is what it sent while the client had not yet closed: under
    # load, 0.5 MB at 8 MB/s; a bound on it is a bound on the client's lag.)
    first_answer = served(origin) - sum(last + 1 - first for first, last in parts)
    assert first_answer < len(payload), first_answer


def test_a_dropped_transfer_resumes_where_the_redirect_led(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(4_000_000)
    url = mirrored(origin, payload)
    origin.fault("/m1/data.bin", drop_after=1_000_000)
    dest = populate(tmp_path, f"http:{url}", sha256(payload), connections=1)
    assert (dest / "data.bin").read_bytes() == payload
    assert origin.stats("/data.bin").gets == 1 and origin.stats("/m2/data.bin").gets == 0
    assert origin.stats("/m1/data.bin").ranges == ["bytes=1000000-"] and served(origin) == len(payload)


@pytest.mark.parametrize("status", [403, 404, 410])
def test_a_url_the_redirect_led_to_that_expired_is_asked_for_again(origin: Origin, tmp_path: Path,
                                                                     status: int) -> None:
    """A signed URL of a mirror may expire during a download: the URL asked for is followed again
    (once), and the mirror it leads to continues the download if it has the same file."""
    payload = os.urandom(4_000_000)
    origin.add("/m1/data.bin", payload)
    url = origin.redirect("/data.bin", "/m1/data.bin")
    origin.fault("/m1/data.bin", drop_after=1_000_000)
    origin.fault("/m1/data.bin", status=status)
    dest = populate(tmp_path, f"http:{url}", sha256(payload), connections=1)
    assert (dest / "data.bin").read_bytes() == payload
    assert origin.stats("/data.bin").gets == 2
    assert origin.stats("/m1/data.bin").statuses == [200, status, 206]
    assert origin.stats("/m1/data.bin").bytes_served == len(payload)


def test_a_url_the_redirect_led_to_that_fails_past_its_retries_is_asked_for_again(origin: Origin,
                                                                                 tmp_path: Path) -> None:
    """A mirror that goes down during a download: the redirector is asked again, and sends the
    rest of the download to another mirror (whose other ETag has the file fetched again)."""
    payload = os.urandom(4_000_000)
    url = mirrored(origin, payload)
    origin.fault("/m1/data.bin", drop_after=1_000_000)
    origin.fault("/m1/data.bin", status=503, times=2)
    dest = populate(tmp_path, f"http:{url}", sha256(payload), connections=1, retries=1)
    assert (dest / "data.bin").read_bytes() == payload
    assert origin.stats("/m1/data.bin").statuses[:3] == [200, 503, 503]
    assert origin.stats("/m2/data.bin").ranges[0] == "bytes=1000000-"


def test_part_retries_run_out(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(4_000_000)
    url = origin.add("/data.bin", payload)
    origin.fault("/data.bin")
    origin.fault("/data.bin", drop_after=0, times=100)
    with pytest.raises(DownloadError, match=rf"^download of {url} failed at byte \d+: .*\(after 2 attempts\)$"):
        populate(tmp_path, f"http:{url}", retries=1)
    assert not range_threads()


@pytest.mark.parametrize("status", [503, 429])
def test_a_server_that_allows_one_connection_serves_the_file_over_one(origin: Origin, tmp_path: Path,
                                                                      status: int) -> None:
    """A server that limits connections per client refuses the parts while the first answer is
    sent: the first part is fetched to its end, and the download goes on over one connection from
    there, rather than fail once the parts' retries run out, or ask again for what came."""
    payload = os.urandom(4_000_000)
    url = origin.add("/data.bin", payload)
    origin.fault("/data.bin", busy_status=status, times=1000)
    origin.rate = 1_000_000  # the first part is still being sent when the parts' retries run out
    dest = populate(tmp_path, f"http:{url}", sha256(payload), retries=2)
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    open_ended = [first for first, last in spans(stats.ranges) if last is None]
    assert open_ended[0] == 0 and len(open_ended) >= 2  # went on with one connection
    assert set(open_ended[1:]) == {part_size(len(payload), 4)}  # from the end of the first part
    assert stats.statuses.count(status) <= 6  # each part gave up at its first refusal
    assert not range_threads()


def test_one_connection_goes_on_from_what_the_parts_received(origin: Origin, tmp_path: Path) -> None:
    """A part refused once it has received some of its bytes (the server began to limit connections
    per client): the part before it is fetched to its end, and one connection asks for what follows
    the bytes the refused part received, so that the server serves each byte once."""
    payload = os.urandom(4_000_000)
    url = origin.add("/data.bin", payload)
    size = part_size(len(payload), 2)
    assert size == 2_000_000
    origin.fault("/data.bin")  # the first answer, which brings the first part
    origin.fault("/data.bin", drop_after=1_000_000)  # the second part, cut
    origin.fault("/data.bin", status=503)  # its continuation, refused
    origin.rate = 1_000_000  # the first part is still being sent when the second is refused
    dest = populate(tmp_path, f"http:{url}", sha256(payload), connections=2)
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert spans(stats.ranges) == [(0, None), (size, len(payload) - 1), (size + 1_000_000, len(payload) - 1),
                                   (size + 1_000_000, None)]
    assert stats.if_ranges[-1] == stats.if_ranges[0]  # the fall-back is guarded as the parts are
    # Only the first answer's bytes in flight past its part, when it was closed there, are extra.
    assert stats.bytes_served < len(payload) + 200_000
    assert not range_threads()


@pytest.mark.parametrize("connections", [4, 1])
def test_a_server_that_takes_a_young_date_for_no_validator_serves_the_file(origin: Origin, tmp_path: Path,
                                                                           connections: int) -> None:
    """Apache answers a range guarded by a Last-Modified under 60 s old with the whole file: the
    parts, or the resume of a dropped transfer, get the same file whole, of the same date and size,
    and one connection reads on from that answer past the bytes already handed on."""
    payload = os.urandom(4_000_000)
    url = origin.add("/data.bin", payload, etag=False)
    if connections == 1:
        origin.fault("/data.bin", drop_after=1_000_000)
    origin.fault("/data.bin", young_date=True, times=100)
    dest = populate(tmp_path, f"http:{url}", sha256(payload), connections=connections)
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert 200 in stats.statuses and stats.gets <= 6  # no population started over
    if connections == 1:
        assert stats.gets == 2  # the dropped transfer and its resume, read on: no third download
    assert not range_threads()


@contextlib.contextmanager
def rewritten_once_served(origin: Origin, path: str, content: bytes) -> Iterator[None]:
    """Within the block, ``path``'s content becomes ``content``, under the same validators, as soon
    as its first answer has been sent (within the second of its date); it must have been."""
    rewritten = threading.Event()

    def rewrite() -> None:
        deadline = time.monotonic() + 30
        while origin.stats(path).gets < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        origin.swap(path, content)
        rewritten.set()

    rewriter = threading.Thread(target=rewrite, daemon=True)
    rewriter.start()
    yield
    rewriter.join(30)
    assert rewritten.is_set()


def test_a_file_rewritten_within_its_date_s_second_is_not_read_on_without_a_checksum(origin: Origin,
                                                                                     tmp_path: Path) -> None:
    """The whole answer to a range guarded by a young date was read on from whatever followed the
    source: a file rewritten within the same second at the same size (the date the same, which is
    why the server answers so) came out as the first megabyte of one version and the rest of the
    other.  Without a checksum to tell, the population starts over."""
    first, second = b"A" * 4_000_000, b"B" * 4_000_000
    url = origin.add("/data.bin", first, etag=False)
    origin.fault("/data.bin", drop_after=1_000_000)
    origin.fault("/data.bin", young_date=True)  # (the resume's: the new version, whole)
    with rewritten_once_served(origin, "/data.bin", second):
        dest = populate(tmp_path, f"http:{url}", connections=1)
    assert (dest / "data.bin").read_bytes() in (first, second), "two versions stitched"


@pytest.mark.parametrize("etag", [False, True], ids=["date", "etag of the date"])
@pytest.mark.parametrize("connections", [1, 4])
def test_a_file_rewritten_within_the_second_of_its_date_is_never_stitched(origin: Origin, tmp_path: Path,
                                                                          connections: int, etag: bool) -> None:
    """A Last-Modified less than a second before the answer's Date is weak (RFC 9110 8.8.2.2): a
    file written again within that second, at the same size, has the same date, and a server that
    honours the date in If-Range (nginx compares it exactly) answered the resume, or the parts,
    with the new version, stitched to the old one without a checksum to tell.  So did one that
    honours an ETag made of the date and the size (nginx's), which the new version has too."""
    first, second = b"A" * 4_000_000, b"B" * 4_000_000
    url = origin.add("/data.bin", first, etag=etag, modified_at=time.time() + 1)  # (never a second before Date)
    origin.fault("/data.bin", drop_after=1_000_000)
    with rewritten_once_served(origin, "/data.bin", second):
        dest = populate(tmp_path, f"http:{url}", connections=connections)
    assert (dest / "data.bin").read_bytes() in (first, second), "two versions stitched"


def test_a_takeover_from_nginx_never_stitches_a_file_replaced_within_the_second_of_its_date(tmp_path: Path) -> None:
    """nginx's strong ETag is the modification time in seconds and the size: a file replaced
    within the second of its date by another of the same size keeps it, and the takeover of a
    download SIGKILLed after the replacement resumed under it, committing the start of one
    version and the end of the other."""
    import signal

    from nginx import Nginx, free_port
    from scutil import resumable, sc, sc_start, wait_for

    first, second = b"A" * 6 * MiB, b"B" * 6 * MiB
    www, home, base = tmp_path / "www", tmp_path / "nginx", tmp_path / "base"
    for directory in (www, home, base):
        directory.mkdir()
    served = www / "data.bin"
    # The date is after the answer's, as any within its second may be: whenever the first
    # request comes, the file is still "being written" (a date never a second before Date).  An
    # hour ahead, since sc may start late on a loaded machine: two seconds ahead, a first request
    # that came later found the date a second before its Date, and rightly trusted it.
    modified = int(time.time()) + 3600

    def publish(content: bytes) -> None:
        staged = www / ".data.bin"
        staged.write_bytes(content)
        os.utime(staged, (modified, modified))
        staged.rename(served)

    publish(first)
    port = free_port()
    server = Nginx(home, f"server {{ listen 127.0.0.1:{port}; root {www}; limit_rate 1m; }}", [port])
    try:
        args = ["--use", "-d", str(base), f"http:http://127.0.0.1:{port}/data.bin"]
        downloader = sc_start(*args)
        try:
            def received(size: int) -> bool:
                return any(data.stat().st_size >= size for data in base.rglob("partial.data"))

            wait_for(lambda: received(1), what="the first answer")
            publish(second)
            # Killed once resumable, or well into the file (where no checkpoint is made).
            wait_for(lambda: resumable(base) or received(2 * MiB), what="a partial download")
            downloader.send_signal(signal.SIGKILL)
            downloader.communicate(timeout=30)
        finally:
            if downloader.poll() is None:
                downloader.kill()
                downloader.communicate(timeout=30)
        taken_over = sc(*args)
    finally:
        server.stop()
    assert taken_over.returncode == 0, taken_over.stderr
    committed = (Path(taken_over.stdout.strip()) / "data.bin").read_bytes()
    one_version = committed in (first, second)
    assert one_version, f"two versions stitched: {committed.count(b'A')} bytes of the first, then the second"


def test_takeover_continues_in_parts(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(5_000_000)
    url = origin.add("/data.bin", payload)
    words = (f"http:{url}", sha256(payload))

    class Killed(Exception):
        pass

    def die_midway(done: int, total: int | None) -> None:
        if done >= 1_600_000:  # after the first checkpoint of partial.json (every second)
            raise Killed

    origin.rate = 1_000_000
    with pytest.raises(Killed):
        populate(tmp_path, *words, connections=1, progress=die_midway)
    origin.rate = None
    kept = (tmp_path / "work" / "partial.data").stat().st_size

    dest = populate(tmp_path, *words)
    assert (dest / "data.bin").read_bytes() == payload
    asked = spans(origin.stats("/data.bin").ranges)
    resumed_at = asked[0][0]
    assert asked[0][1] is None and 0 < resumed_at <= kept
    assert sorted(asked[1:]) == part_spans(resumed_at, len(payload), 4)
    assert not any((tmp_path / "work").iterdir())


def test_a_sigterm_keeps_all_that_reached_the_partial_for_the_takeover(origin: Origin, tmp_path: Path) -> None:
    # A SIGTERM kept what the last checkpoint of partial.json counted, up to a second old: with
    # several connections, the bytes of the parts ahead are only in memory, and the next use
    # fetched again everything after that checkpoint, the second of the download before it too.
    import json
    import signal
    import subprocess

    from scutil import SC, Sleeper, sc_env

    payload = os.urandom(24 * MiB)
    url = origin.add("/data.bin", payload)
    recipe = [f"http:{url}", sha256(payload)]
    base = tmp_path / "base"
    base.mkdir()
    origin.rate = 2 * MiB
    with Sleeper() as owner:
        command = [*SC, "--use", "-d", str(base), "--pid", str(owner.pid), "--connections", "4", *recipe]
        used = subprocess.Popen(command, env=sc_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not list(base.rglob("partial.json")) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # past the first checkpoint, between two
            used.send_signal(signal.SIGTERM)
            _, errors = used.communicate(timeout=30)
        finally:
            if used.poll() is None:
                used.kill()
                used.wait(10)
        assert used.returncode == -signal.SIGTERM, errors
        [record] = base.rglob("partial.json")
        kept = json.loads(record.read_text())["bytes"]
        assert kept == (record.parent / "partial.data").stat().st_size > 0
        origin.rate = None
        again = subprocess.run(command, env=sc_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert (Path(again.stdout.strip()) / "data.bin").read_bytes() == payload
    # (Ranges, not the bytes the origin wrote: it writes an open-ended range's rest into the
    # socket until it sees the reader gone.)
    asked = spans(origin.stats("/data.bin").ranges)[4:]
    assert asked[0] == (kept, None) and sorted(asked[1:]) == part_spans(kept, len(payload), 4)


def test_threads_stop_when_the_consumer_fails(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(8_000_000)  # not a tarball: the unpacker fails at once
    url = origin.add("/data.tar", payload)
    origin.rate = 1_000_000
    with pytest.raises(CorruptDataError):
        populate(tmp_path, f"http:{url}", "tar")
    assert not range_threads()
    assert origin.stats("/data.tar").bytes_served < len(payload) // 2


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """A server of an 8 MiB file that answers a range with a 206, sends 64 KiB of it and stalls,
    except for a range from byte 6 MiB, which gets a 404; the URL of the file."""
    size, stalled = 8 * MiB, threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)

    def answer(connection: socket.socket) -> None:
        with connection:
            request = b""
            while b"\r\n\r\n" not in request and (received := connection.recv(4096)):
                request += received
            match = re.search(rb"Range: bytes=(\d+)-(\d*)", request)
            assert match, request
            first, last = int(match[1]), int(match[2] or size - 1)
            if first == 6 * MiB:
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                connection.sendall(f"HTTP/1.1 206 Partial Content\r\nETag: \"1\"\r\n"
                                   f"Content-Range: bytes {first}-{last}/{size}\r\n"
                                   f"Content-Length: {last - first + 1}\r\n\r\n".encode() + bytes(64 << 10))
            stalled.wait(30)

    def serve() -> None:
        while not stalled.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/data.bin"
    finally:
        stalled.set()
        server.join(5)
        listener.close()


def test_a_failed_part_stops_the_stalled_ones_at_once(stalling_server: str, tmp_path: Path) -> None:
    assert part_size(8 * MiB, 4) == 2 * MiB  # the part from 6 MiB is the one that fails
    with pytest.raises(DownloadError, match=f"^HTTP 404 Not Found for {stalling_server}$"):
        populate(tmp_path, f"http:{stalling_server}")
    # The other parts wait for bytes that do not come (the read timeout is 10 s): they were woken.
    assert not range_threads()


def test_connections_out_of_range(tmp_path: Path) -> None:
    for connections in (0, MAX_CONNECTIONS + 1):
        with pytest.raises(UsageError, match="connections must be between 1 and"):
            populate(tmp_path, "file:/dev/null", connections=connections)


# --- the part reader ------------------------------------------------------------------------------


def test_part_sizes_bound_memory() -> None:
    assert part_size(100 * MiB, 1) is None
    assert part_size(2 * MiB - 1, 4) is None
    for connections in range(2, MAX_CONNECTIONS + 1):
        for length in (2 * MiB, 10 * MiB, 100 * MiB, 10_000 * MiB):
            size = part_size(length, connections)
            assert size is not None and MiB <= size <= 8 * MiB
            assert (connections + 1) * size <= 64 * MiB  # the window's bytes at most


class FakePart:
    """Bytes ``start`` to ``end`` of a made-up file (byte i is i % 251), in random-sized pieces after
    random short delays; fails at byte ``fail_at`` if it lies in the part."""

    opened: ClassVar[list[FakePart]] = []

    def __init__(self, start: int, end: int, fail_at: int | None = None) -> None:
        self.position, self.end, self.fail_at = start, end, fail_at
        self.closed = self.aborted = False
        FakePart.opened.append(self)

    def read(self, size: int) -> bytes:
        time.sleep(random.random() / 500)
        if self.fail_at is not None and self.position <= self.fail_at < self.end:
            raise DownloadError(f"part failed at byte {self.fail_at}")
        size = min(size, random.randint(1, 5000), self.end - self.position)
        data = bytes((i % 251) for i in range(self.position, self.position + size))
        self.position += size
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def made_up(start: int, end: int) -> bytes:
    return bytes(i % 251 for i in range(start, end))


@pytest.fixture
def fake_parts() -> list[FakePart]:
    FakePart.opened = []
    return FakePart.opened


def test_reader_is_in_order_and_bounded(fake_parts: list[FakePart]) -> None:
    start, end, size, connections = 1000, 51_000, 4000, 3
    reader = RangedReader(FakePart, start, end, part_size=size, connections=connections,
                          first=FakePart(start, start + size))
    got = [reader.read(7000)]
    # The consumer dawdles: the workers fill the window (however long a loaded machine takes
    # to run them), then wait, claiming nothing past it however long it dawdles on.
    wait_for(lambda: len(fake_parts) >= connections + 1, what="the window filled")
    time.sleep(0.3)
    assert len(fake_parts) == connections + 1
    consumed = len(got[0])
    while data := reader.read(random.randint(1, 9000)):
        assert len(data) <= 9000
        got.append(data)
        consumed += len(data)
        # Parts are claimed at most connections + 1 ahead of the one being read.
        assert len(fake_parts) <= consumed // size + connections + 1
    assert b"".join(got) == made_up(start, end)
    assert len(fake_parts) == 13 and all(part.closed for part in fake_parts)
    reader.close()
    assert not range_threads()


def test_reader_raises_after_the_bytes_before_the_failure(fake_parts: list[FakePart]) -> None:
    reader = RangedReader(lambda start, end: FakePart(start, end, fail_at=25_000), 0, 50_000,
                          part_size=4000, connections=4, first=FakePart(0, 4000))
    got = bytearray()
    with pytest.raises(DownloadError, match="part failed at byte 25000"):
        while data := reader.read(3000):
            got += data
    assert got == made_up(0, len(got)) and len(got) <= 25_000
    reader.close()
    assert not range_threads()
    assert all(part.closed for part in fake_parts)


def test_reader_whose_workers_end_unheard_fails_rather_than_waits(fake_parts: list[FakePart],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker hands on what stops it; if the handing on fails too (no memory for it, under a cap
    # on memory), the worker ends without a word, and the consumer waited for the part for ever.
    def no_memory_to_hand_on(self: RangedReader, index: int, failure: BaseException) -> None:
        raise MemoryError

    monkeypatch.setattr(RangedReader, "_fail", no_memory_to_hand_on)
    reader = RangedReader(lambda start, end: FakePart(start, end, fail_at=start), 0, 50_000,
                          part_size=4000, connections=4, first=FakePart(0, 4000, fail_at=0))
    with pytest.raises(MemoryError, match="ended without handing on its work"):
        while reader.read(3000):
            pass
    reader.close()
    assert not range_threads()


def test_reader_closed_before_or_while_reading(fake_parts: list[FakePart]) -> None:
    first = FakePart(0, 4000)
    RangedReader(FakePart, 0, 40_000, part_size=4000, connections=4, first=first).close()
    assert first.closed and len(fake_parts) == 1  # nothing was fetched

    reader = RangedReader(FakePart, 0, 400_000, part_size=4000, connections=4, first=FakePart(0, 4000))
    assert reader.read(10) == made_up(0, 10)
    reader.close()
    assert not range_threads()
    with pytest.raises(ValueError):
        reader.read(10)
