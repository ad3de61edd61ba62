"""The http:, file: and dirac: sources, against the loopback origin (tests/origin.py) and stand-ins."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from origin import IF_RANGE_SERVERS, Origin
from scutil import tarball_bytes

from sharedcache.errors import ChecksumError, CorruptDataError, DownloadError, ResumeError, SizeLimitError, UsageError, WaitTimeoutError
from sharedcache import FetchPolicy
from sharedcache.loaders.pipeline import populate as run_recipe
from sharedcache.loaders.streams import Progress
from sharedcache.loaders.registry import parse_recipe

pytestmark = pytest.mark.timeout(60)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def boxes(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh empty dest and the (shared) work directory."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    for number in range(100):
        dest = tmp_path / f"dest{number}"
        if not dest.exists():
            dest.mkdir()
            return dest, work
    raise AssertionError("too many boxes")


def populate(tmp_path: Path, *words: str, limit: int | None = None, progress: Progress | None = None,
             **fetch: int) -> Path:
    """Run the recipe ``words`` into a fresh box; ``fetch``: settings of the FetchPolicy."""
    dest, work = boxes(tmp_path)
    fetch.setdefault("retries", 3)
    run_recipe(parse_recipe(words), dest, work=work, limit=limit, progress=progress,
               fetch=FetchPolicy(**fetch))  # type: ignore[arg-type]
    return dest


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def tarball(size: int = 3_000_000) -> tuple[bytes, dict[str, bytes]]:
    files = {"a/random.bin": os.urandom(size // 2), "a/text.txt": b"line\n" * (size // 10)}
    return tarball_bytes(files), files


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- plain HTTP -----------------------------------------------------------------------------------


def test_http_file_with_progress(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(2_500_000)
    url = origin.add("/dir/data.bin", payload)
    calls: list[tuple[int, int | None]] = []
    dest = populate(tmp_path, f"http:{url}?token=1", sha256(payload),
                    progress=lambda *call: calls.append(call))
    assert (dest / "data.bin").read_bytes() == payload
    assert calls[-1] == (len(payload), len(payload))
    assert all(total == len(payload) for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert not any((tmp_path / "work").iterdir())


def test_http_tarball(origin: Origin, tmp_path: Path) -> None:
    archive, files = tarball()
    url = origin.add("/data.tar.gz", archive)
    dest = populate(tmp_path, f"http:{url}", sha256(archive), "tar")
    assert tree(dest) == files
    assert origin.stats("/data.tar.gz").bytes_served == len(archive)


def test_redirect(origin: Origin, tmp_path: Path) -> None:
    origin.add("/real/file.txt", b"content")
    url = origin.redirect("/moved/file.txt", "/real/file.txt")
    dest = populate(tmp_path, f"http:{url}")
    assert (dest / "file.txt").read_bytes() == b"content"


def test_a_failure_after_a_redirect_names_where_it_led(origin: Origin, tmp_path: Path) -> None:
    url = origin.redirect("/moved/data.tar.gz", "/gone/data.tar.gz")
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, f"http:{url}", "tar")
    assert str(caught.value) == f"HTTP 404 Not Found for {url}, redirected to {origin.url('/gone/data.tar.gz')}"


def test_a_redirect_loop_ends_after_ten_redirects(origin: Origin, tmp_path: Path) -> None:
    url = origin.redirect("/a", "/b")
    origin.redirect("/b", "/a")
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, f"http:{url}")
    assert str(caught.value) == f"cannot download {url}: more than 10 redirects"
    assert origin.stats("/a").gets + origin.stats("/b").gets == 11  # retrying would loop again


def test_404(origin: Origin, tmp_path: Path) -> None:
    url = origin.url("/missing.tar.gz")
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, f"http:{url}", "tar")
    assert str(caught.value) == f"HTTP 404 Not Found for {url}"
    assert origin.stats("/missing.tar.gz").gets == 1  # 4xx is not retried


def test_500_then_success(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/flaky.bin", b"payload")
    origin.fault("/flaky.bin", status=500, times=2)
    dest = populate(tmp_path, f"http:{url}")
    assert (dest / "flaky.bin").read_bytes() == b"payload"
    assert origin.stats("/flaky.bin").statuses == [500, 500, 200]


def test_a_download_that_failed_to_start_leaves_streams_that_close_quietly(
        origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A download whose first answer fails it (a 404) leaves its stream half made, which the
    # finalizer closes: Python 3.13 reports on stderr what that close() raises.
    from sharedcache.loaders import http

    made = []
    making = http._HttpStream.__init__

    def recorded(self: http._HttpStream, *args: object, **kwargs: object) -> None:
        made.append(self)
        making(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(http._HttpStream, "__init__", recorded)
    url = origin.add("/gone.bin", b"payload")
    origin.fault("/gone.bin", status=404, times=10)
    with pytest.raises(DownloadError):
        populate(tmp_path, f"http:{url}")
    assert made
    for stream in made:
        stream.close()  # what the finalizer does
        assert stream.closed


@pytest.mark.parametrize("retries", [1, 0])
def test_5xx_retries_run_out(origin: Origin, tmp_path: Path, retries: int) -> None:
    # One attempt is not counted: the line said "(after 1 attempts)".
    url = origin.add("/down.bin", b"payload")
    origin.fault("/down.bin", status=503, times=10)
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, f"http:{url}", retries=retries)
    assert str(caught.value) == f"HTTP 503 Service Unavailable for {url}" + (" (after 2 attempts)" if retries else "")


@pytest.mark.parametrize("status", [408, 429])
def test_a_4xx_that_another_try_may_not_get_is_retried(origin: Origin, tmp_path: Path, status: int) -> None:
    # Request Timeout and Too Many Requests (a rate limit) failed at once, as a 404 does.
    url = origin.add("/busy.bin", b"payload")
    origin.fault("/busy.bin", status=status)
    dest = populate(tmp_path, f"http:{url}")
    assert (dest / "busy.bin").read_bytes() == b"payload"
    assert origin.stats("/busy.bin").statuses == [status, 200]


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "date"])
def test_a_retry_waits_what_retry_after_asks_for(origin: Origin, tmp_path: Path, status: int, form: str) -> None:
    # Retrying in the back-off's 0.25 s, a rate-limited client asks again before the server allows
    # it, and runs out of tries.  (An HTTP date has whole seconds: 4 s from now is 3 s at least.)
    url = origin.add("/limited.bin", b"payload")
    asked = "2" if form == "seconds" else email.utils.formatdate(time.time() + 4, usegmt=True)
    origin.fault("/limited.bin", status=status, headers={"Retry-After": asked})
    started = time.monotonic()
    dest = populate(tmp_path, f"http:{url}")
    assert time.monotonic() - started >= 2.0
    assert (dest / "limited.bin").read_bytes() == b"payload"
    assert origin.stats("/limited.bin").statuses == [status, 200]


def test_a_retry_after_past_the_longest_wait_fails_at_once_saying_so(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/quota.bin", b"payload")
    origin.fault("/quota.bin", status=429, headers={"Retry-After": "86400"}, times=10)
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, f"http:{url}")
    assert str(caught.value) == (f"HTTP 429 Too Many Requests for {url}, which asks to be asked again in 86400 s "
                                 "(more than the 300 s waited for)")
    assert origin.stats("/quota.bin").gets == 1


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    with pytest.raises(DownloadError, match=f"^cannot download {url}: .*refused"):
        populate(tmp_path, f"http:{url}", retries=0)


def test_size_limit_known_before_download(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/big.bin", b"x" * 50_000_000)
    with pytest.raises(SizeLimitError, match="more than the limit"):
        populate(tmp_path, f"http:{url}", limit=1000)
    assert origin.stats("/big.bin").bytes_served < 50_000_000


# --- resuming within a process --------------------------------------------------------------------


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_dropped_connection_resumes_with_a_range(origin: Origin, tmp_path: Path, validator: str) -> None:
    payload = os.urandom(3_000_000)
    url = origin.add("/data.bin", payload, etag=validator == "etag")
    origin.fault("/data.bin", drop_after=1_000_000)
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert stats.ranges == ["bytes=1000000-"]
    assert stats.statuses == [200, 206]
    assert stats.bytes_served < 2 * len(payload)


def test_dropped_connection_resumes_under_tar(origin: Origin, tmp_path: Path) -> None:
    archive, files = tarball()
    url = origin.add("/data.tar.gz", archive)
    origin.fault("/data.tar.gz", drop_after=len(archive) // 3, times=2)
    dest = populate(tmp_path, f"http:{url}", sha256(archive), "tar")
    assert tree(dest) == files
    stats = origin.stats("/data.tar.gz")
    assert len(stats.ranges) == 2 and stats.bytes_served < 2 * len(archive)


def test_a_tar_broken_before_its_download_fails_is_reported_as_broken(origin: Origin, tmp_path: Path) -> None:
    """A header that is no header, then a download that fails: past a bad header in compressed
    data the unpacker reads on for the decompressor's own error (damaged data can decompress to
    garbage first), and there meets the download's failure.  The bad header, which came first in
    the stream, is what is reported, as where the download does not fail."""
    first = gzip.decompress(tarball_bytes({"a.txt": b"one\n"}))[:1024]  # a member, no end marker
    archive = gzip.compress(first + b"x" * 512 + os.urandom(1_000_000), compresslevel=1)
    url = origin.add("/data.tar.gz", archive)
    origin.fault("/data.tar.gz", drop_after=300_000)
    origin.fault("/data.tar.gz", status=404, times=10)  # the resumption fails at once
    with pytest.raises(CorruptDataError, match=r"^corrupt tar archive .*: invalid header at byte 1024$"):
        populate(tmp_path, f"http:{url}", "tar")
    assert origin.stats("/data.tar.gz").statuses == [200, 404]  # the read on met the failure


def test_range_answered_with_200_starts_over(origin: Origin, tmp_path: Path) -> None:
    archive, files = tarball()
    url = origin.add("/data.tar.gz", archive)
    origin.fault("/data.tar.gz", drop_after=1_000_000)
    origin.fault("/data.tar.gz", ignore_range=True)
    dest = populate(tmp_path, f"http:{url}", "tar")
    assert tree(dest) == files
    assert origin.stats("/data.tar.gz").statuses == [200, 200, 200]


@pytest.mark.parametrize("server", list(IF_RANGE_SERVERS))
def test_changed_file_is_never_stitched(origin: Origin, tmp_path: Path, server: str) -> None:
    old, new = b"old!" * 500_000, b"new!" * 500_000
    url = origin.add("/data.bin", old)
    origin.fault("/data.bin", drop_after=1_000_000, replace_with=new)
    origin.fault("/data.bin", **IF_RANGE_SERVERS[server])
    dest = populate(tmp_path, f"http:{url}")
    assert (dest / "data.bin").read_bytes() == new  # all new: no old prefix
    assert len(origin.stats("/data.bin").ranges) == 1

    # With the checksum of the old version, the new one is refused.
    url = origin.add("/other.bin", old)
    origin.fault("/other.bin", drop_after=1_000_000, replace_with=new)
    with pytest.raises(ChecksumError):
        populate(tmp_path, f"http:{url}", sha256(old))
    assert not any((tmp_path / "work").iterdir())  # no partial kept for data known to be wrong


def test_new_etag_on_every_answer_starts_over(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(2_000_000)
    url = origin.add("/data.bin", payload)
    origin.fault("/data.bin", drop_after=500_000)
    origin.fault("/data.bin", new_etag=True)
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "data.bin").read_bytes() == payload
    assert origin.stats("/data.bin").statuses == [200, 200, 200]


def test_content_length_lie(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(100_000)
    url = origin.add("/data.bin", payload)
    origin.fault("/data.bin", extra_length=1000)
    dest = populate(tmp_path, f"http:{url}")
    assert (dest / "data.bin").read_bytes() == payload
    assert origin.stats("/data.bin").statuses == [200, 416, 200]

    origin.fault("/data.bin", extra_length=1000, times=100)
    with pytest.raises(DownloadError, match=rf"^cannot resume {url} at byte 100000 \(it broke off: .+\): the server no longer has"):
        populate(tmp_path, f"http:{url}", retries=1)


def test_no_validator_starts_over(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(1_000_000)
    url = origin.add("/data.bin", payload, etag=False, last_modified=False)
    origin.fault("/data.bin", drop_after=300_000)
    dest = populate(tmp_path, f"http:{url}")
    assert (dest / "data.bin").read_bytes() == payload
    assert origin.stats("/data.bin").ranges == []
    origin.fault("/data.bin", drop_after=300_000, times=100)
    with pytest.raises(ResumeError, match="no ETag or Last-Modified"):
        populate(tmp_path, f"http:{url}", retries=1)


CLOSE_ENDED_SERVERS = {
    "gives no validator": ({"etag": False, "last_modified": False}, {}),
    "ignores ranges": ({}, {"ignore_range": True}),
}


@pytest.mark.parametrize("server", list(CLOSE_ENDED_SERVERS))
def test_a_body_ended_by_a_close_that_cannot_be_confirmed_is_left_to_the_checksum(
        origin: Origin, tmp_path: Path, server: str) -> None:
    """A body without a length, ended by the close, from a server that cannot be asked for what
    follows: the checksum after the source proves it whole; without one it is refused at once,
    not downloaded again and again to end the same way."""
    validators, faults = CLOSE_ENDED_SERVERS[server]
    payload = os.urandom(1_000_000)
    url = origin.add("/data.bin", payload, **validators)
    origin.fault("/data.bin", no_length=True, times=100, **faults)
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "data.bin").read_bytes() == payload
    asked = origin.stats("/data.bin").gets
    assert asked <= 2  # with a validator, what follows is asked for once

    with pytest.raises(DownloadError, match="refused: the server sent neither a length nor a chunked body"):
        populate(tmp_path, f"http:{url}")
    assert origin.stats("/data.bin").gets == 2 * asked

    with pytest.raises(ChecksumError, match=r"closing the connection, without a length, so it may have been cut"):
        populate(tmp_path, f"http:{url}", sha256(b"another file"))
    assert origin.stats("/data.bin").gets == 3 * asked


# --- resuming in another process ------------------------------------------------------------------


def start_and_kill(url: str, words: list[str], dest: Path, work: Path) -> int:
    """Populate in a child process, SIGKILL it once it has checkpointed some bytes; return them."""
    script = (f"from sharedcache.loaders.pipeline import populate\n"
              f"from sharedcache.loaders.registry import parse_recipe\n"
              f"populate(parse_recipe({words!r}), {str(dest)!r}, work={str(work)!r})\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    meta = work / "partial.json"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                done = json.loads(meta.read_text())["bytes"]
            except (OSError, ValueError):
                done = 0
            if done > 0:
                break
            assert child.poll() is None, "the child ended before it was killed"
            time.sleep(0.05)
        else:
            raise AssertionError("the child wrote no checkpoint")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert not any(dest.iterdir())
    return done


def test_takeover_resumes_the_partial_download(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(4_000_000)
    url = origin.add("/big.bin", payload)
    words = [f"http:{url}", sha256(payload)]
    origin.rate = 1_000_000
    dest, work = boxes(tmp_path)
    start_and_kill(url, words, dest, work)
    origin.rate = None
    partial = (work / "partial.data").stat().st_size

    dest = populate(tmp_path, *words)
    assert (dest / "big.bin").read_bytes() == payload
    stats = origin.stats("/big.bin")
    assert len(stats.ranges) == 1
    resumed_at = int(stats.ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= partial
    assert stats.bytes_served < 2 * len(payload)
    assert sorted(p.name for p in work.iterdir()) == []


@pytest.mark.parametrize("validators", ["new", "kept"])
def test_takeover_of_a_file_that_changed_starts_over(origin: Origin, tmp_path: Path, validators: str) -> None:
    # With its validators kept (a server's mistake) the file is known to have changed by its size,
    # which the partial recorded: within a process a continuation of another size is refused too.
    old, new = os.urandom(4_000_000), os.urandom(3_000_000)
    url = origin.add("/big.bin", old)
    origin.rate = 1_000_000
    dest, work = boxes(tmp_path)
    start_and_kill(url, [f"http:{url}"], dest, work)
    origin.rate = None
    if validators == "new":
        origin.add("/big.bin", new)
    else:
        origin.swap("/big.bin", new)
    dest = populate(tmp_path, f"http:{url}")
    assert (dest / "big.bin").read_bytes() == new
    if validators == "new":
        assert len(origin.stats("/big.bin").ranges) == 1  # asked, got 200 with the new file


def test_takeover_with_another_recipe_ignores_the_partial(origin: Origin, tmp_path: Path) -> None:
    payload = os.urandom(4_000_000)
    url = origin.add("/big.bin", payload)
    origin.rate = 1_000_000
    dest, work = boxes(tmp_path)
    start_and_kill(url, [f"http:{url}"], dest, work)
    origin.rate = None
    dest = populate(tmp_path, f"http:{url}", sha256(payload))
    assert (dest / "big.bin").read_bytes() == payload
    assert origin.stats("/big.bin").ranges == []


# --- file: ----------------------------------------------------------------------------------------


def test_file_source(tmp_path: Path) -> None:
    data = gzip.compress(b"data\n" * 1000)
    (tmp_path / "x.txt.gz").write_bytes(data)
    dest = populate(tmp_path, f"file:{tmp_path / 'x.txt.gz'}", "gunzip")
    assert (dest / "x.txt").read_bytes() == b"data\n" * 1000


@pytest.mark.parametrize("target,why", [("missing", "no such file"), ("", "it is a directory")])
def test_file_source_errors(tmp_path: Path, target: str, why: str) -> None:
    path = tmp_path / target
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, f"file:{path}")
    assert str(caught.value) == f"cannot read {path}: {why}"


# --- dirac: ---------------------------------------------------------------------------------------

STAND_IN = """#!{python}
import os, subprocess, sys, time
lfn = sys.argv[1]
if "slow" in lfn:  # hangs, and so does a process it started, each saying who it is first
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.path.join(os.environ["STAND_IN_PIDS"]), "w") as pids:
        pids.write(f"{{os.getpid()}} {{helper.pid}}")
    time.sleep(600)
if "gradual" in lfn:  # writes its file over three seconds, as a download does
    with open(os.path.basename(lfn), "wb") as out:
        for _ in range(4):
            out.write(b"x" * 100_000)
            out.flush()
            time.sleep(0.8)
    sys.exit(0)
if "leaves" in lfn:  # writes its file and ends, leaving a process that holds its output and,
    # a second later, goes on writing the file
    with open(os.path.basename(lfn), "wb") as out:
        out.write(b"complete")
    helper = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(1); "
                               "[(open(sys.argv[1], 'ab').write(b'x'), time.sleep(0.05)) for _ in iter(int, 1)]",
                               os.path.basename(lfn)])
    with open(os.path.join(os.environ["STAND_IN_PIDS"]), "w") as pids:
        pids.write(f"{{helper.pid}}")
    sys.exit(0)
if "missing" in lfn:
    print("Getting file " + lfn, flush=True)
    sys.stderr.write("some noise\\nERROR: " + lfn + ": No such file or directory\\n")
    sys.exit(1)
with open(os.path.basename(lfn), "wb") as out:
    out.write(b"grid data for " + lfn.encode())
"""


@pytest.fixture
def dirac_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "dirac-dms-get-file"
    tool.write_text(STAND_IN.format(python=sys.executable))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_dirac(dirac_path: Path, tmp_path: Path) -> None:
    lfn = "/vo/user/data/run1.dat"
    expected = b"grid data for " + lfn.encode()
    dest = populate(tmp_path, f"dirac:{lfn}", f"md5:{hashlib.md5(expected).hexdigest()}")
    assert (dest / "run1.dat").read_bytes() == expected
    assert not any((tmp_path / "work").iterdir())  # the fetched copy is deleted


def test_dirac_with_sigchld_ignored(dirac_path: Path, tmp_path: Path) -> None:
    # An ignored SIGCHLD (inherited by sc --use, or a program's own) has the kernel reap the
    # client: it is then no child of ours, and that is its end, not an error.
    import signal

    lfn = "/vo/user/data/run1.dat"
    expected = b"grid data for " + lfn.encode()
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        dest = populate(tmp_path, f"dirac:{lfn}", f"md5:{hashlib.md5(expected).hexdigest()}")
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert (dest / "run1.dat").read_bytes() == expected


def test_dirac_failure(dirac_path: Path, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, "dirac:/vo/missing.dat")
    assert str(caught.value) == ("dirac-dms-get-file failed for /vo/missing.dat: "
                                 "ERROR: /vo/missing.dat: No such file or directory")


def test_dirac_is_stopped_with_what_it_started_at_the_deadline(dirac_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setenv("STAND_IN_PIDS", str(pids))
    dest, work = boxes(tmp_path)
    began = time.monotonic()
    with pytest.raises(WaitTimeoutError) as caught:
        run_recipe(parse_recipe(["dirac:/vo/slow.dat"]), dest, work=work, deadline=began + 2)
    assert time.monotonic() - began < 30
    assert str(caught.value) == "dirac-dms-get-file gave no file for /vo/slow.dat in the time left"
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 10
        while _running(pid):
            assert time.monotonic() < deadline, f"process {pid} of the tool outlived it"
            time.sleep(0.05)
    assert not any(work.iterdir())


def test_what_the_dirac_client_leaves_behind_neither_holds_us_nor_writes_its_file(
        dirac_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The client has ended: its file is complete.  A process it left holding its output made us
    # wait for it (to the deadline, or for good), and one that kept writing the file had a copy
    # of whatever it held then committed, and went on writing after us.
    pids = tmp_path / "pids"
    monkeypatch.setenv("STAND_IN_PIDS", str(pids))
    dest, work = boxes(tmp_path)
    began = time.monotonic()
    run_recipe(parse_recipe(["dirac:/vo/leaves.dat"]), dest, work=work, deadline=began + 8)
    assert time.monotonic() - began < 5
    assert (dest / "leaves.dat").read_bytes() == b"complete"
    helper = int(pids.read_text())
    deadline = time.monotonic() + 10
    while _running(helper):
        assert time.monotonic() < deadline, f"process {helper} outlived the client"
        time.sleep(0.05)
    assert not any(work.iterdir())


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1] != "Z"
    except FileNotFoundError:
        return False


def test_dirac_tells_how_far_its_client_has_got(dirac_path: Path, tmp_path: Path) -> None:
    # Else the waiters of a long DIRAC download would see no progress and call it stuck.
    heard: list[tuple[int, int | None]] = []
    dest, work = boxes(tmp_path)
    run_recipe(parse_recipe(["dirac:/vo/gradual.dat"]), dest, work=work, progress=lambda *told: heard.append(told))
    while_fetching = [done for done, total in heard if total is None]
    assert len(while_fetching) >= 2 and while_fetching == sorted(while_fetching), heard
    assert 0 < while_fetching[-1] <= 400_000 and (dest / "gradual.dat").stat().st_size == 400_000


def test_an_lfn_that_would_be_an_option_is_refused() -> None:
    with pytest.raises(UsageError, match="an LFN names a file"):
        parse_recipe(["dirac:--help"])


def test_dirac_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, "dirac:/vo/file.dat")
    assert str(caught.value) == "dirac-dms-get-file not found on PATH (install the DIRAC client)"


# --- the origin as a separate process -------------------------------------------------------------


@pytest.mark.parametrize("change", ["truncated", "appended to"])
def test_a_file_source_changed_while_it_is_read_is_refused(tmp_path: Path, change: str) -> None:
    # A copy made while the file is written is neither its old content nor its new one: without a
    # checksum it was committed as the file, and served to every later use.
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(32 << 20))

    def meddle(done: int, total: int | None) -> None:  # told of the first chunk, long before the end
        if not meddle.done:  # type: ignore[attr-defined]
            meddle.done = True  # type: ignore[attr-defined]
            with open(path, "r+b") as f:
                if change == "truncated":
                    f.truncate(1 << 20)
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"more")
    meddle.done = False  # type: ignore[attr-defined]
    with pytest.raises(DownloadError) as caught:
        populate(tmp_path, f"file:{path}", progress=meddle)
    assert str(caught.value).startswith(f"{path} changed while it was read ({32 << 20} bytes when opened, ")
    assert not any(tmp_path.glob("dest*/*"))


def test_a_file_source_in_proc_is_read(tmp_path: Path) -> None:
    # Its size says 0, and it is read to its end: the same size and time at the end.
    dest = populate(tmp_path, "file:/proc/self/status")
    assert b"Pid:" in (dest / "status").read_bytes()


def test_origin_runs_as_a_process(tmp_path: Path) -> None:
    served = tmp_path / "served"
    (served / "sub").mkdir(parents=True)
    (served / "sub" / "file.bin").write_bytes(b"from a process")
    script = Path(__file__).with_name("origin.py")
    process = subprocess.Popen([sys.executable, str(script), "--dir", str(served), "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        url = f"http://127.0.0.1:{port}/sub/file.bin"
        dest = populate(tmp_path, f"http:{url}")
        assert (dest / "file.bin").read_bytes() == b"from a process"
        with pytest.raises(DownloadError, match="HTTP 404"):
            populate(tmp_path, f"http:http://127.0.0.1:{port}/missing.bin")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/__origin__/stats", timeout=10) as answer:
            stats = json.load(answer)
        assert stats["/sub/file.bin"]["gets"] == 1 and stats["/sub/file.bin"]["statuses"] == [200]
    finally:
        process.terminate()
        try:
            process.wait(10)  # it ends on SIGTERM, as the benchmarks end it
        finally:
            if process.poll() is None:  # killed by its PID, not left serving
                process.kill()
                process.wait(10)


def test_a_file_source_that_is_a_fifo_or_a_directory_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "data.fifo"
    os.mkfifo(fifo)  # nobody writes to it: opening it to block would hang for ever
    for path, why in ((fifo, "not a regular file"), (tmp_path, "it is a directory")):
        with pytest.raises(DownloadError) as caught:
            populate(tmp_path, f"file:{path}")
        assert str(caught.value) == f"cannot read {path}: {why}"
