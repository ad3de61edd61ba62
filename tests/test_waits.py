"""Every wait is bounded or visibly stuck: a download slower than the speed limit fails and its
waiters get the error; a waiter says when the populator is stopped; ``--timeout`` bounds the
command's own population; ``sc gc`` reports stuck populations.

The slow origin is a raw socket server in this file: it sends its headers at once, then one body
byte at a time, each well within any read timeout (the origin users met).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from origin import Origin
from scutil import (
    DEFAULT_SIGNALS,
    SC,
    SRC,
    Sleeper,
    ThreadedServer,
    control,
    earlier_populator,
    finish,
    pause_at,
    pending,
    read_head,
    sc,
    sc_env,
    sc_start,
    stop_process,
    tarball_bytes,
    user_dir,
    wait_for,
)

import sharedcache
from sharedcache.engine.leases import boot_id


class Trickle(ThreadedServer):
    """An HTTP origin on 127.0.0.1 that sends ``length`` body bytes, ``burst`` every ``interval`` s
    in one segment, each written alone; ``headers``: whether it answers at all (else it reads the
    request and stays silent); ``slow_head``: whether it sends its head the same way, never ending
    it; ``tls``: HTTPS, in which each byte written is a record of its own."""

    def __init__(self, length: int = 100_000, interval: float = 0.2, headers: bool = True,
                 slow_head: bool = False, burst: int = 1, tls: ssl.SSLContext | None = None) -> None:
        self.length, self.interval, self.headers, self.slow_head = length, interval, headers, slow_head
        self.burst, self.tls = burst, tls
        super().__init__(self._trickle)

    def word(self) -> str:
        return f"http:{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/slow.bin"

    def _trickle(self, conn: socket.socket) -> None:
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        if read_head(conn) is None:
            return
        head = f'HTTP/1.1 200 OK\r\nContent-Length: {self.length}\r\nETag: "v1"\r\n\r\n'
        if not self.headers:
            self.stopping.wait(120)
            return
        if self.slow_head:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.stopping.wait(self.interval):
                conn.sendall(b"x")
            return
        conn.sendall(head.encode())
        for _ in range(self.length // self.burst):
            if self.stopping.wait(self.interval):
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            for _ in range(self.burst):
                conn.sendall(b"x")
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    server = Trickle()
    try:
        yield server
    finally:
        server.stop()


def wait_for_population(base: Path, name: str, proc) -> None:  # type: ignore[no-untyped-def]
    status = control(base) / "populate" / f"{name}.json"
    deadline = time.monotonic() + 30
    while not status.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the population never started"
        time.sleep(0.05)


def test_a_download_below_the_speed_limit_fails_and_its_waiters_get_the_error(tmp_path, trickle):
    base = tmp_path / "base"
    base.mkdir()
    args = ["-d", str(base), "-n", "slow", trickle.word()]
    started = time.monotonic()
    populator = sc_start("--use", "--speed-limit", "100", "--speed-time", "2", *args)
    wait_for_population(base, "slow", populator)
    waiter = sc_start("--use", *args)
    (status, _, err), (wstatus, _, werr) = finish([populator, waiter], timeout=60)
    assert time.monotonic() - started < 30
    assert status == 1 and err.startswith("sc: ") and "too slow" in err and len(err.splitlines()) == 1, err
    assert wstatus == 1 and "too slow" in werr, werr
    assert not (control(base) / "objects" / "slow").exists()
    assert (control(base) / "populate" / "slow.work").exists(), "what came was not kept for the next use"


def test_the_records_of_a_population_in_progress_are_not_flushed(disk):
    # The status record is written as a population starts and rewritten twice a second while
    # bytes come; the work directory's marker once.  After a power loss that population is dead
    # and a garbled record reads as none, so flushing them would only make it wait for the disk.
    # (An origin that sends no byte keeps the first status record: ext4 starts writing back a
    # file renamed over another at once, which FIEMAP could not tell from a flush.)
    base = disk / "base"
    base.mkdir()
    silent = Trickle(interval=60)
    populator = sc_start("--use", "-d", str(base), "-n", "slow", "--speed-limit", "0", silent.word())
    try:
        wait_for_population(base, "slow", populator)
        populate = control(base) / "populate"
        marker = populate / "slow.work" / str(os.geteuid()) / ".identity"
        wait_for(marker.exists, what="the work directory's marker")
        assert pending(populate / "slow.json"), "the status record was flushed"
        assert pending(marker), "the work directory's marker was flushed"
    finally:
        populator.kill()
        populator.wait(10)
        silent.stop()


def test_an_origin_below_the_speed_limit_fails_though_it_sends_in_bursts(tmp_path):
    # Bursts that a read takes whole leave nothing unread on the connection: the origin is slow.
    payload = os.urandom(3_000_000)
    base = tmp_path / "base"
    base.mkdir()
    with Origin(rate=100_000) as origin:
        origin.add("/f.bin", payload)
        result = sc("--use", "-d", str(base), "-n", "f", "--speed-limit", "300KB", "--speed-time", "2",
                    f"http:{origin.url('/f.bin')}", timeout=60)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "too slow" in result.stderr and "less than 300000 bytes/s for 2 s" in result.stderr, result.stderr


def test_an_https_origin_below_the_speed_limit_fails_though_part_of_a_record_waits_unread(tmp_path, server_tls):
    # Over TLS a read takes one record: an origin (or a slow link) that sends two at a time
    # leaves the start of the second unread on the connection whenever the window is judged.
    context, ca = server_tls
    base = tmp_path / "base"
    base.mkdir()
    origin = Trickle(length=1_000_000, interval=0.1, burst=2, tls=context)
    try:
        result = sc("--use", "-d", str(base), "-n", "slow", "--speed-limit", "1000", "--speed-time", "2",
                    "--timeout", "30", origin.word(), env=sc_env(SSL_CERT_FILE=str(ca)), timeout=60)
    finally:
        origin.stop()
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "too slow" in result.stderr and "less than 1000 bytes/s for 2 s" in result.stderr, result.stderr


@pytest.mark.parametrize("connections", ["1", "4"], ids=["one connection", "four connections"])
def test_a_download_gone_on_from_is_not_judged_by_the_time_its_kept_bytes_are_hashed_again(tmp_path, connections):
    # The next use after an outage hashes again the 256 MiB that were kept, with four checksums
    # (about a second, and more on a busy machine), before it reads the answer to its range
    # request: counted against the origin, that time failed it as too slow, and kept the partial
    # for every next use to fail the same way.  The rest, 4 MiB on the loopback, takes a moment.
    kept = 256 << 20
    payload = os.urandom(1 << 20) * ((kept >> 20) + 4)
    checksums = [f"{name}:{hashlib.new(name, payload).hexdigest()}" for name in ("md5", "sha1", "sha256", "sha512")]
    base = tmp_path / "base"
    base.mkdir()
    config = tmp_path / "config"
    config.write_text("retries = 1\n")
    with Origin() as origin:
        origin.add("/f.bin", payload)
        origin.fault("/f.bin", drop_after=kept)
        origin.fault("/f.bin", status=503, times=2)  # every attempt to go on
        args = ["--use", "-d", str(base), "-n", "f", f"http:{origin.url('/f.bin')}", *checksums]
        failed = sc(*args, env=sc_env(SC_CONFIG=str(config)), timeout=120)
        assert failed.returncode == 1 and "HTTP 503" in failed.stderr, failed.stderr
        again = sc(*args, "--connections", connections, "--speed-limit", "2MB", "--speed-time", "0.3",
                   env=sc_env(SC_CONFIG=str(config)), timeout=120)
        asked = origin.stats("/f.bin").ranges
    assert again.returncode == 0, again.stderr
    assert (Path(again.stdout.strip()) / "f.bin").read_bytes() == payload
    assert asked[2] == f"bytes={kept}-", asked  # (after the two answered 503)


def test_speed_limit_options_are_checked(tmp_path):
    bad = sc("--use", "-d", str(tmp_path), "--speed-limit", "fast", "file:/nonexistent")
    assert bad.returncode == 2 and bad.stderr.startswith("sc: ") and "--speed-limit" in bad.stderr
    bad = sc("--use", "-d", str(tmp_path), "--speed-time", "0", "file:/nonexistent")
    assert bad.returncode == 2 and "--speed-time" in bad.stderr


def wait_for_data(base: Path, name: str, proc) -> None:  # type: ignore[no-untyped-def]
    """Wait until the population of ``name`` has written data: past the index's first opening,
    which writes (a process stopped there would hold every other writer of the index, gc's
    included, for as long as it is stopped)."""
    wait_for_population(base, name, proc)
    work, deadline = control(base) / "populate" / f"{name}.work", time.monotonic() + 30
    while not any(part.stat().st_size for part in work.glob("*/partial.data")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no data came"
        time.sleep(0.02)


@contextmanager
def stopped(proc: subprocess.Popen[str]) -> Iterator[None]:
    """``proc`` stopped (SIGSTOP, as a batch system suspends a job) for the block, then continued."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] == "T",
                 what=f"process {proc.pid} to stop")
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


@contextmanager
def stopped_populator(tmp_path: Path, trickle: Trickle) -> Iterator[tuple[Path, list[str], subprocess.Popen[str]]]:
    """A population of a trickling source, stopped (SIGSTOP) once under way: its base, the
    arguments that use it, its process; killed on exit."""
    base = tmp_path / "base"
    base.mkdir()
    args = ["-d", str(base), "-n", "slow", "--speed-limit", "0", trickle.word()]
    populator = sc_start("--use", *args)
    try:
        wait_for_data(base, "slow", populator)
        with stopped(populator):
            yield base, args, populator
    finally:
        populator.kill()
        populator.wait(10)


def test_a_populator_stopped_for_longer_than_the_speed_time_goes_on_once_continued(tmp_path):
    # The origin sends at twice the limit, and the file lasts past the stop, which is more than
    # twice the speed time: counted, it would fail the window whatever its age at the stop.
    payload = os.urandom(8_000_000)
    base = tmp_path / "base"
    base.mkdir()
    with Origin(rate=2_000_000) as origin:
        origin.add("/f.bin", payload)
        args = ["-d", str(base), "-n", "f", "--speed-limit", "1MB", "--speed-time", "2", f"http:{origin.url('/f.bin')}"]
        processes = [sc_start("--use", *args)]
        try:
            wait_for_data(base, "f", processes[0])
            with stopped(processes[0]):
                processes.append(sc_start("--use", *args))
                time.sleep(5)
            (status, out, err), (wstatus, wout, werr) = finish(processes, timeout=60)
        finally:
            for proc in processes:
                stop_process(proc)
    assert status == 0 and not err, err
    assert wstatus == 0 and wout == out, werr
    assert (Path(out.strip()) / "f.bin").read_bytes() == payload


def test_a_populator_stopped_while_it_waits_to_retry_goes_on_once_continued(tmp_path):
    # The body breaks off after 4 MB, and the request for the rest is answered 503 with a
    # Retry-After of 2 s, in which the populator is stopped for 6 s: counted, the stop would judge
    # at most 5 MB over more than 6 s, under 1 MB/s.  The wait itself counts, as any back-off does.
    payload = os.urandom(8_000_000)
    base = tmp_path / "base"
    base.mkdir()
    with Origin() as origin:
        origin.add("/f.bin", payload)
        origin.fault("/f.bin", drop_after=4_000_000)
        origin.fault("/f.bin", status=503, headers={"Retry-After": "2"})
        populator = sc_start("--use", "-d", str(base), "-n", "f", "--speed-limit", "1MB", "--speed-time", "2",
                             f"http:{origin.url('/f.bin')}")
        try:
            wait_for(lambda: 503 in origin.stats("/f.bin").statuses, what="the answer that asks to retry")
            with stopped(populator):
                assert origin.stats("/f.bin").gets == 2, "the retry was made before the stop"
                time.sleep(6)
            [(status, out, err)] = finish([populator], timeout=60)
        finally:
            stop_process(populator)
    assert status == 0 and not err, err
    assert (Path(out.strip()) / "f.bin").read_bytes() == payload


def test_a_waiter_says_the_populator_is_stopped_and_gc_reports_it(tmp_path, trickle):
    with stopped_populator(tmp_path, trickle) as (base, args, populator):
        waiter = sc("--use", "-v", "--timeout", "2", *args)
        assert waiter.returncode == 1 and "timed out" in waiter.stderr
        assert f"process {populator.pid} is stopped (state T)" in waiter.stderr, waiter.stderr
        gc = sc("gc", "-d", str(base))
        assert gc.returncode == 0 and "stuck populations" in gc.stdout and "'slow'" in gc.stdout, gc.stdout
        assert "stopped" in gc.stdout


def test_a_waiter_that_times_out_says_in_its_one_line_whom_it_waited_for_and_that_it_is_stopped(tmp_path, trickle):
    # Off a terminal and without -v, the error line is all a job's log keeps: it must say whom
    # the use waited for, why that did not end (a suspended job: SIGSTOP), and what to do.
    with stopped_populator(tmp_path, trickle) as (base, args, populator):
        waiter = sc("--use", "--timeout", "1", *args)
        assert waiter.returncode == 1 and len(waiter.stderr.splitlines()) == 1, waiter.stderr
        line = waiter.stderr
        assert line.startswith("sc: error: repository 'slow': timed out after 1 s waiting for "
                               f"process {populator.pid} to populate it in {base}"), line
        assert f"process {populator.pid} is stopped (state T)" in line, line
        assert f"kill -CONT {populator.pid}" in line and "takes over" in line, line
        # One that is at work is not called stuck: the line says that a longer wait would do.
        os.kill(populator.pid, signal.SIGCONT)
        waiter = sc("--use", "--timeout", "1", *args)
        assert waiter.returncode == 1 and "stopped" not in waiter.stderr, waiter.stderr
        assert "so far; a longer timeout (or none) waits for it" in waiter.stderr, waiter.stderr


def test_a_library_use_that_times_out_names_no_option_of_the_command_line(tmp_path, trickle):
    # sharedcache.use() takes timeout=, not --timeout: the line says what to do in words that
    # fit both callers.
    with stopped_populator(tmp_path, trickle) as (base, _args, populator):
        os.kill(populator.pid, signal.SIGCONT)
        with pytest.raises(sharedcache.WaitTimeoutError) as timed_out:
            with sharedcache.use(trickle.word(), name="slow", directories=str(base), timeout=1):
                pytest.fail("the use was taken while the population went on")
        line = str(timed_out.value)
        assert line.startswith(f"repository 'slow': timed out after 1 s waiting for process {populator.pid} "), line
        assert line.endswith("so far; a longer timeout (or none) waits for it to finish"), line
        assert "--" not in line, line


def test_a_live_population_of_an_earlier_release_is_not_said_to_have_ended(tmp_path):
    # Its status record names its pid alone, not its start time: the waiter said "process N has
    # ended, but a process it started holds a copy of the population lock" of a live one.
    base, source = tmp_path / "base", tmp_path / "source.txt"
    base.mkdir()
    source.write_bytes(b"data\n")
    made = sc("--use", "--keep", "-d", str(base), "-n", "before", f"file:{source}")  # (the cache)
    assert made.returncode == 0, made.stderr
    with earlier_populator(base, "slow") as populator:
        waiter = sc("--use", "-v", "--timeout", "1", "-d", str(base), "-n", "slow", f"file:{source}")
        assert populator.poll() is None
    assert waiter.returncode == 1, waiter.stderr
    assert f"waiting 0 s for process {populator.pid} to populate 'slow'" in waiter.stderr, waiter.stderr
    assert "has ended" not in waiter.stderr, waiter.stderr
    assert "so far; a longer timeout (or none) waits for it" in waiter.stderr, waiter.stderr


#: ``sc gc`` paused where a scheduler may pause it: it has opened the population lock file of
#: ``slow`` and not yet locked it.  It says "opened" on stdout, then waits for a line on stdin.
PAUSED_GC = """
import os, sys
from sharedcache.engine import locks
from sharedcache.cli import main
real_try_lock, paused = locks.try_lock, []
def try_lock(fd, mode):
    if not paused and os.readlink(f"/proc/self/fd/{fd}").endswith("/populate/slow.lock"):
        paused.append(fd)
        print("opened", flush=True)
        sys.stdin.readline()
    return real_try_lock(fd, mode)
locks.try_lock = try_lock
sys.exit(main(["gc", "-d", sys.argv[1]]))
"""


def test_a_gc_whose_lock_file_was_removed_meanwhile_leaves_the_new_population_alone(tmp_path, trickle):
    # One gc removes an abandoned population's lock file while another gc has it open; a new
    # population then makes and locks a new one.  The second gc's lock on the removed file locks
    # nothing: it must leave the new population's lock, status record and work directory alone
    # (else its waiters find no lock and download again, or the population loses its files).
    base = tmp_path / "base"
    base.mkdir()
    args = ["-d", str(base), "-n", "slow", "--speed-limit", "0", trickle.word()]
    populate = control(base) / "populate"
    abandoned = sc_start("--use", *args)
    try:
        wait_for_population(base, "slow", abandoned)
    finally:
        abandoned.kill()
        abandoned.wait(10)
    paused = subprocess.Popen([sys.executable, "-c", PAUSED_GC, str(base)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sc_env())
    populator = None
    try:
        assert select.select([paused.stdout], [], [], 30)[0], "the paused gc never opened the lock file"
        assert paused.stdout.readline() == "opened\n", paused.communicate(timeout=30)
        first = sc("gc", "-d", str(base))
        assert first.returncode == 0, first.stderr
        assert not (populate / "slow.lock").exists(), "the abandoned population was not cleaned"
        populator = sc_start("--use", *args)
        wait_for_population(base, "slow", populator)
        held = (populate / "slow.lock").stat().st_ino
        files = sorted(os.listdir(populate))
        _, err = paused.communicate("go\n", timeout=60)
        assert paused.returncode == 0, err
        assert sorted(os.listdir(populate)) == files
        assert (populate / "slow.lock").stat().st_ino == held
        assert populator.poll() is None, populator.communicate()
    finally:
        for proc in (paused, populator):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_timeout_bounds_the_command_s_own_population(tmp_path, trickle):
    base = tmp_path / "base"
    base.mkdir()
    args = ["-d", str(base), "-n", "slow", "--speed-limit", "0", trickle.word()]
    started = time.monotonic()
    result = sc("--use", "--timeout", "2", *args)
    assert time.monotonic() - started < 20
    assert result.returncode == 1 and result.stderr.startswith("sc: ") and "timed out" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.count("timed out after") == 1, result.stderr
    assert not (control(base) / "objects" / "slow").exists()
    # Not the recipe's failure: no error record answers the next user.
    assert not (control(base) / "populate" / "slow.error").exists()
    assert "so far; the next use takes over from there)" in result.stderr, result.stderr
    # What an unpacking has done is not kept: the line said the next use would take over from
    # there, and it started over.
    unpacked = sc("--use", "--timeout", "2", "-d", str(base), "-n", "unpacked", "--speed-limit", "0",
                  trickle.word(), "tar")
    assert unpacked.returncode == 1 and "so far; the next use starts over)" in unpacked.stderr, unpacked.stderr


@pytest.mark.parametrize("silent", ["answer", "body"])
def test_timeout_bounds_a_population_whose_origin_falls_silent(tmp_path, silent):
    # Headers, then nothing (or not even headers): no progress to check the deadline against,
    # and each wait within the 60 s read timeout; --timeout still ends the command on time.
    server = Trickle(interval=120, headers=silent == "body")
    try:
        base = tmp_path / "base"
        base.mkdir()
        started = time.monotonic()
        result = sc("--use", "--timeout", "2", "--speed-limit", "0", "-d", str(base), "-n", "silent", server.word())
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("sc: error: repository 'silent': timed out after 2 s populating it")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert elapsed < 2 + 5, elapsed
    assert not (control(base) / "objects" / "silent").exists()


def test_a_timeout_that_ends_the_retries_says_why_they_were_made(tmp_path):
    # An origin that refuses every connection: the retries' back-off runs into --timeout, and the
    # one line says what the attempts met, not only that time ran out.
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    base = tmp_path / "base"
    base.mkdir()
    started = time.monotonic()
    result = sc("--use", "--timeout", "2", "-d", str(base), "-n", "refused", f"http:http://127.0.0.1:{port}/x.bin")
    assert time.monotonic() - started < 2 + 5
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("sc: error: repository 'refused': timed out after 2 s populating it"), result.stderr
    assert "(the last attempt: " in result.stderr and "Connection refused" in result.stderr, result.stderr
    assert "host=" not in result.stderr  # urllib3's name for the connection is taken off
    assert len(result.stderr.splitlines()) == 1, result.stderr


def undone(base: Path, name: str) -> None:
    """Assert that the population of ``name`` in ``base`` left nothing but what a takeover uses."""
    cache = control(base)
    assert list((cache / "stage").iterdir()) == [], "the staging tree is left for a sweep"
    assert not (cache / "populate" / f"{name}.json").exists(), "the status record is left"
    assert not (cache / "populate" / f"{name}.error").exists(), "an error is recorded for the waiters"
    assert not (cache / "objects" / name).exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_populator_ended_by_its_job_undoes_itself_then_ends_by_the_signal(tmp_path, trickle, signum):
    # A batch system ends a job with SIGTERM (a closed terminal sends SIGHUP): the staging tree
    # stayed until some later store swept it, and a killed download of gigabytes took its space.
    base = tmp_path / "base"
    base.mkdir()
    populator = sc_start("--use", "--speed-limit", "0", "-d", str(base), "-n", "slow", trickle.word(),
                         default_signals=True)
    try:
        wait_for_population(base, "slow", populator)
        wait_for(lambda: list((control(base) / "stage").iterdir()), what="the staging tree")
        populator.send_signal(signum)
        populator.communicate(timeout=30)
    finally:
        stop_process(populator)
    assert populator.returncode == -signum  # ended by the signal, as without the clean-up
    undone(base, "slow")
    # What it downloaded is kept for whoever takes over.
    assert list((control(base) / "populate").glob("slow.work/*/*")), "the partial download is gone"


def test_an_interrupt_as_the_repository_is_committed_leaves_one_outcome(tmp_path):
    # Ctrl-C (SIGINT) sent as soon as the entry is in place, while the commit and what follows
    # it run: the command either succeeds (its path printed, the use held) or fails as
    # interrupted, in one line, having released the use.  It left the job a use while it said
    # "interrupted", or "Bad file descriptor" (a walk interrupted between closing a directory
    # and forgetting it closed it again), or a traceback.
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(tarball_bytes({f"d{i % 20}/f{i}": b"x" * 100 for i in range(3000)}))
    with Sleeper() as owner:
        for attempt in range(8):
            base = tmp_path / f"base{attempt}"
            base.mkdir()
            entry = control(base) / "objects" / "many"
            proc = sc_start("--use", "--pid", str(owner.pid), "-d", str(base), "-n", "many", f"file:{archive}",
                            "tar", default_signals=True)
            try:
                deadline = time.monotonic() + 60
                while not entry.exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.0005)
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
            finally:
                stop_process(proc)
            listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
            users = [pid for row in listed for pid in row["users"]]
            if proc.returncode == 0:
                assert err == "" and out.strip() == str(user_dir(base) / "many")
                assert users == [owner.pid]
            else:
                # Ended by SIGINT, which a shell shows as 130 (and then stops its script too).
                assert (proc.returncode, err, out) == (-signal.SIGINT, "sc: interrupted\n", "")
                assert users == [], f"the interrupted use is still held: {listed}"
        # From the end of the fill on, an interrupt no longer undoes the use: one that comes as
        # the entry is renamed into place is ignored.  (Above, it may come at any moment after.)
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(pause_at('event == "os.rename" and args[1] == "many"'))
        base, paused, go = tmp_path / "paused-base", tmp_path / "paused", tmp_path / "go"
        base.mkdir()
        proc = sc_start("--use", "--pid", str(owner.pid), "-d", str(base), "-n", "many", f"file:{archive}", "tar",
                        default_signals=True, env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]),
                                                         SC_TEST_PAUSED=str(paused), SC_TEST_GO=str(go)))
        try:
            wait_for(paused.exists, what="the commit")
            proc.send_signal(signal.SIGINT)
            go.touch()
            out, err = proc.communicate(timeout=60)
        finally:
            stop_process(proc)
        assert (proc.returncode, err, out.strip()) == (0, "", str(user_dir(base) / "many"))
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert [pid for row in listed for pid in row["users"]] == [owner.pid]


#: What a non-interactive shell starts a background job under: SIGINT ignored.
BACKGROUND = ("env", "--ignore-signal=INT")

#: sc's entry points, as :data:`scutil.SC` and ``bin/sc`` start it.
ENTRIES = {"python -m sharedcache": SC, "bin/sc": [sys.executable, str(Path(SRC).parent / "bin" / "sc")]}


# Loaded by sc as its sitecustomize: Ctrl-C (SIGINT) comes as the function $SC_TEST_AT of the
# module $SC_TEST_IN returns, or is called if $SC_TEST_EVENT says "call" (a profile function sees
# them; Python's handler runs at the next instruction that checks for one).
INTERRUPT_AS_IT_RETURNS = """
import os, signal, sys
def _profile(frame, event, _arg):
    code = frame.f_code
    if (event == os.environ.get("SC_TEST_EVENT", "return") and code.co_name == os.environ["SC_TEST_AT"]
            and code.co_filename.endswith(os.environ["SC_TEST_IN"])):
        sys.setprofile(None)
        os.kill(os.getpid(), int(os.environ.get("SC_TEST_SIGNAL", signal.SIGINT)))
sys.setprofile(_profile)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_an_end_as_a_last_use_is_released_deletes_its_repository_first(tmp_path, signum):
    # SIGTERM (or SIGHUP) to `sc --unuse` as it removed the last use's lease ended it there, by
    # its default action: the repository, nobody's, stayed until a gc.
    base, words = _small_repository(tmp_path)
    with Sleeper() as owner:
        sc("--use", "--pid", str(owner.pid), *words)
        status, out, err = _interrupted_at(tmp_path, "remove_lease:engine/leases.py", "--unuse", "--pid",
                                           str(owner.pid), *words, signum=signum)
        assert (status, out, err) == (-signum, "", "")
    assert json.loads(sc("list", "--json", "-d", str(base)).stdout) == []


@pytest.mark.parametrize("at", [
    "run:repository/population.py",  # the population's lease returned: ignoring it stops there
    "add_lease:engine/leases.py",  # a lease taken of a repository there already
    "output:cli/commands.py",  # the path written
    "use:cli/commands.py",  # the command's outcome returned
    "main:cli/__init__.py",  # ... and sc's
])
def test_an_interrupt_once_the_use_is_taken_leaves_it_taken_and_says_so(tmp_path, at):
    # From the making of the lease on, the outcome is the use: Ctrl-C between the moment the
    # population stopped ignoring it and sc's exit left the job the use while sc said
    # "interrupted" (130), or showed a traceback and died of SIGINT after printing the path.
    base, words = _small_repository(tmp_path)
    with Sleeper() as first, Sleeper() as owner:
        if at.startswith("add_lease:"):
            sc("--use", "--pid", str(first.pid), *words)
        status, out, err = _interrupted_at(tmp_path, at, "--use", "--pid", str(owner.pid), *words)
        assert (status, err, out.strip()) == (0, "", str(user_dir(base) / "small"))
        assert owner.pid in _users(base)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("at", [
    "run:repository/population.py",  # the population's lease returned
    "add_lease:engine/leases.py",  # a lease taken of a repository there already
])
def test_an_end_once_the_use_is_taken_leaves_it_taken_and_says_so(tmp_path, at, signum, background):
    # SIGTERM (a job's end, `timeout`) or SIGHUP to `sc --use` once its lease was made ended it by
    # their default action: no path printed, and the use left to the job until it ended.  As for
    # Ctrl-C, the data are complete: the use is the outcome.  (A script's background job, which
    # ignores Ctrl-C, had nothing deferred, and the end held back neither.)
    base, words = _small_repository(tmp_path)
    with Sleeper() as first, Sleeper() as owner:
        if at.startswith("add_lease:"):
            sc("--use", "--pid", str(first.pid), *words)
        status, out, err = _interrupted_at(tmp_path, at, "--use", "--pid", str(owner.pid), *words, signum=signum,
                                           background=background)
        assert (status, err, out.strip()) == (0, "", str(user_dir(base) / "small"))
        assert owner.pid in _users(base)


@pytest.mark.parametrize(("at", "released"), [
    ("lease_of:engine/fscache.py", False),  # the lease found, not yet removed: nothing done
    ("_release_in_transaction:engine/fscache.py", True),  # the index's transaction committed
    ("_empty_trash:engine/fscache.py", True),  # the deleted repository's data gone
    ("drop_link_if_unused:repository/bases.py", True),  # its link gone
])
def test_an_interrupt_as_a_use_is_released_says_what_became_of_it(tmp_path, at, released):
    # Ctrl-C to `sc --unuse` once the index had committed the release said "interrupted" (130)
    # of a use released; from the lease's removal on, the release is the outcome.
    base, words = _small_repository(tmp_path)
    with Sleeper() as owner:
        sc("--use", "--pid", str(owner.pid), *words)
        status, out, err = _interrupted_at(tmp_path, at, "--unuse", "--pid", str(owner.pid), *words)
        assert (status, out, err) == ((0, "", "") if released else (-signal.SIGINT, "", "sc: interrupted\n"))
        assert (owner.pid in _users(base)) is not released


@pytest.mark.parametrize("at", [
    "run:repository/population.py",  # the population's lease returned
    "add_lease:engine/leases.py",  # a lease taken of a repository there already
])
def test_an_interrupt_as_sc_run_takes_its_use_releases_it(tmp_path, at):
    # Ctrl-C to `sc run` after its lease was made, before the command's wait held it, said
    # "interrupted" and left the lease (and the repository it made) for gc; it is released.
    base, words = _small_repository(tmp_path)
    with Sleeper() as first:
        if at.startswith("add_lease:"):
            sc("--use", "--pid", str(first.pid), *words)
        status, out, err = _interrupted_at(tmp_path, at, "run", *words, "--", "echo", "ran")
        assert (status, out, err) == (-signal.SIGINT, "", "sc: interrupted\n")
        assert _lease_owners(base) == ([first.pid] if at.startswith("add_lease:") else [])


@pytest.mark.parametrize("started", [(), BACKGROUND], ids=["job", "background"])
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("at", [
    "run:repository/population.py",  # the population's lease returned
    "add_lease:engine/leases.py",  # a lease taken of a repository there already
])
def test_an_end_as_sc_run_takes_its_use_releases_it(tmp_path, at, signum, keep, started):
    # SIGTERM (a job's end) or SIGHUP to `sc run` just after its lease was made, held back until
    # the command's wait held the use, was let go there with its default action in force: sc
    # died with its own lease, and the use, and a repository it had made, stayed until a gc.  (A
    # script's background job, which ignores Ctrl-C, had the end held back not even that far.)
    _ended_as_sc_run(tmp_path, at, signum, keep=keep, started=started, status=-signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("at", [
    "run:repository/population.py",  # the population's lease returned
    "add_lease:engine/leases.py",  # a lease taken of a repository there already
])
def test_an_end_as_sc_run_as_pid_1_takes_its_use_releases_it(tmp_path, at, signum):
    # `sc run` as a container's entrypoint (PID 1 of its namespace, whose SIGTERM raises) that
    # is stopped just after its lease was made, before the command's wait held it: the use, and
    # a repository it had made, stayed until a gc.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make PID namespaces")
    _ended_as_sc_run(tmp_path, at, signum, keep=False, started=("unshare", "--pid", "--fork", "--mount-proc"),
                     status=128 + signum)


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("at", [
    "_prepare_for_a_cap:sharedcache/__init__.py",  # the entry point's first steps done
    "<module>:cli/commands.py",  # sc's modules loaded
    "parse:cli/parser.py",  # the command line read
    "_passed_on:cli/commands.py",  # sc run begun, its handlers not yet in place
])
def test_an_end_as_sc_run_as_pid_1_starts_up_ends_it_before_its_command(tmp_path, at, entry):
    # `sc run` as a container's entrypoint, stopped (`docker stop`) as it started, before its
    # handler of SIGTERM was in place: the kernel dropped the signal, left to its default action
    # at PID 1, and the command ran all the same.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make PID namespaces")
    _ended_as_sc_run(tmp_path, at, signal.SIGTERM, keep=False, started=("unshare", "--pid", "--fork", "--mount-proc"),
                     status=128 + signal.SIGTERM, entry=ENTRIES[entry])


def _ended_as_sc_run(tmp_path: Path, at: str, signum: int, *, keep: bool, started: Sequence[str],
                     status: int, entry: Sequence[str] = SC) -> None:
    """Check that ``sc run`` (as a job starts it, then through ``started``, by its ``entry``
    point) that gets ``signum`` as the function ``at`` returns (see :func:`_signalled_at`) ends
    with ``status``, the command never run, and leaves no use of its own, nor a repository it
    made unless it was to ``keep`` it."""
    base, words = _small_repository(tmp_path)
    ran = tmp_path / "ran"
    with Sleeper() as first:
        if at.startswith("add_lease:"):
            sc("--use", "--pid", str(first.pid), *words)
        proc = subprocess.Popen(
            [*DEFAULT_SIGNALS, *started, *entry, "run", *words, *(["--keep"] if keep else []), "--", "touch",
             str(ran)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_signalled_at(tmp_path, at, signum=signum))
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            stop_process(proc)
        assert (proc.returncode, out, err) == (status, "", "")
        assert not ran.exists(), "the command ran"
        assert _lease_owners(base) == ([first.pid] if at.startswith("add_lease:") else [])
        made = (control(base) / "objects" / "small").exists()
        assert made is (keep or at.startswith("add_lease:")), "a repository it made"


@pytest.mark.parametrize("at", [
    "check_repository_name:repository/repositories.py",  # before the error: it is the interrupt's
    "clipped:errors.py",  # the error decided, as it is said
])
def test_an_interrupt_as_sc_fails_says_one_thing(tmp_path, at):
    # Ctrl-C to sc as it said an error (a release of no use) showed a traceback after, or in
    # place of, the error's line; sc says either the error or "interrupted", never both.
    base, words = _small_repository(tmp_path)
    status, out, err = _interrupted_at(tmp_path, at, "--unuse", "--pid", str(os.getpid()), *words)
    if at.startswith("clipped:"):
        assert (status, out, err) == (1, "", f"sc: error: no repository 'small' in {base}\n")
    else:
        assert (status, out, err) == (-signal.SIGINT, "", "sc: interrupted\n")


@pytest.mark.parametrize("command", ["--location", "list", "gc", "--version"])
def test_an_interrupt_once_the_output_is_written_leaves_it_the_outcome(tmp_path, command):
    # Ctrl-C to sc once it had written what it was asked for (a path, the listing, gc's
    # report) made it say "interrupted" (130) after the output, whole.
    base, words = _small_repository(tmp_path)
    with Sleeper() as owner:
        sc("--use", "--pid", str(owner.pid), *words)
        args = {"--location": words, "--version": ()}.get(command, ("-d", str(base)))
        status, out, err = _interrupted_at(tmp_path, "output:cli/commands.py", command, *args)
        assert (status, err) == (0, "")
        assert out == sc(command, *args).stdout


def test_an_interrupt_as_sc_s_main_is_entered_says_interrupted(tmp_path):
    # Between the try around sc's imports and main()'s own, Ctrl-C was a traceback.
    base = tmp_path / "base"
    base.mkdir()
    assert _interrupted_at(tmp_path, "main:cli/__init__.py", "list", "-d", str(base), event="call") == (
        130, "", "sc: interrupted\n")


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("at", ["_start_command:sharedcache/__init__.py", "main:cli/__init__.py"])
@pytest.mark.parametrize("stderr", ["/dev/full", "a pipe whose reader is gone"])
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_an_interrupt_as_sc_starts_keeps_its_status_when_the_line_cannot_be_written(
        tmp_path, entry, at, stderr, unbuffered):
    # A standard error that cannot take "interrupted" (a full disk under 2>>job.log, a reader
    # gone): the write's error escaped the entry point's handler, exit status 1 and a traceback.
    # Then, with stderr buffered as Python buffers it unless PYTHONUNBUFFERED is set, what the
    # failed write left in the buffer failed the flush at exit once more: exit status 120.
    base = tmp_path / "base"
    base.mkdir()
    command = ENTRIES[entry]
    if stderr == "/dev/full":
        target = os.open("/dev/full", os.O_WRONLY)
    else:
        read_end, target = os.pipe()
        os.close(read_end)
    try:
        proc = subprocess.Popen([*DEFAULT_SIGNALS, *command, "list", "-d", str(base)], stdout=subprocess.PIPE,
                                stderr=target, text=True,
                                env={**_signalled_at(tmp_path, at, event="call"), "PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(target)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert (proc.returncode, out) == (130, "")


def _small_repository(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """A base directory under ``tmp_path``, and the words of sc that use a small tarball there
    as ``small``."""
    base = tmp_path / "base"
    base.mkdir()
    archive = tmp_path / "small.tar.gz"
    archive.write_bytes(tarball_bytes({"a": b"data\n"}))
    return base, ("-d", str(base), "-n", "small", f"file:{archive}", "tar")


def _interrupted_at(tmp_path: Path, at: str, *args: str, event: str = "return",
                    signum: int = signal.SIGINT, background: bool = False) -> tuple[int, str, str]:
    """The status, output and errors of ``sc ARGS`` (as a job starts it; ``background``: as a
    script's background job does, SIGINT ignored) that gets Ctrl-C (or ``signum``) as the
    function ``at`` (``NAME:MODULE``, see :data:`INTERRUPT_AS_IT_RETURNS`) returns (or is
    called: ``event``)."""
    proc = subprocess.Popen([*DEFAULT_SIGNALS, *(BACKGROUND if background else ()), *SC, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_signalled_at(tmp_path, at, event=event, signum=signum))
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    return proc.returncode, out, err


def _signalled_at(tmp_path: Path, at: str, event: str = "return", signum: int = signal.SIGINT) -> dict[str, str]:
    """The environment of an sc that gets Ctrl-C (or ``signum``) as the function ``at``
    (``NAME:MODULE``, see :data:`INTERRUPT_AS_IT_RETURNS`) returns (or is called: ``event``)."""
    function, module = at.split(":")
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(INTERRUPT_AS_IT_RETURNS)
    return sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_AT=function, SC_TEST_IN=module,
                  SC_TEST_EVENT=event, SC_TEST_SIGNAL=str(int(signum)))


def _lease_owners(base: Path) -> list[int]:
    """The pids of the owners of the leases of ``small`` in ``base`` (see :func:`_small_repository`)."""
    leases = control(base) / "objects" / "small" / "leases"
    # (A lease's name is BOOT:PID:..., its owner's.)
    return [int(lease.name.split(":")[1]) for lease in leases.iterdir()] if leases.exists() else []


def _users(base: Path) -> set[int]:
    """The pids of the owners of the uses of the repositories in ``base``."""
    listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
    return {pid for row in listed for pid in row["users"]}


def test_an_interrupt_as_a_lease_fails_to_be_made_ends_the_use_before_the_next_candidate(tmp_path):
    # A repository ready in the first candidate whose lease cannot be made there (its leases/ no
    # directory: the base is skipped; or a read-only mount) is made in the next one: Ctrl-C that
    # came as the lease was being made was held back through that whole download, and the use
    # succeeded.
    first, second, site = tmp_path / "first", tmp_path / "second", tmp_path / "site"
    for directory in (first, second, site):
        directory.mkdir()
    (site / "sitecustomize.py").write_text(INTERRUPT_AS_IT_RETURNS)
    archive = tmp_path / "small.tar.gz"
    archive.write_bytes(tarball_bytes({"a": b"data\n"}))
    words = ("-n", "small", f"file:{archive}", "tar")
    sc("--use", "--pid", "1", "--keep", "-d", str(first), *words)
    sc("--unuse", "--pid", "1", "--keep", "-d", str(first), *words)
    leases = control(first) / "objects" / "small" / "leases"
    leases.rmdir()
    leases.touch()
    with Sleeper() as owner:
        proc = sc_start("--use", "--pid", str(owner.pid), "-d", f"{first}:{second}", *words, default_signals=True,
                        env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_AT="put_lease",
                                   SC_TEST_IN="engine/leases.py", SC_TEST_EVENT="call"))
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            stop_process(proc)
        assert (proc.returncode, err.splitlines()[-1], out) == (-signal.SIGINT, "sc: interrupted", ""), err
        assert not list(second.glob(".shared-cache-*/.cache/objects/small")), "made in the next candidate"


@pytest.mark.parametrize("command", ["--use", "list", "--location"])
def test_an_interrupt_as_sc_waits_for_its_output_to_take_it_ends_the_command(tmp_path, command):
    # A pipe whose reader does not read (full), or a stopped terminal, holds the output's write:
    # Ctrl-C was held back there for as long (sc hung, and --use kept the use taken), as it is
    # once the output, the command's outcome, is written.
    base, words = _small_repository(tmp_path)
    with Sleeper() as owner:
        if command != "--use":
            sc("--use", "--pid", str(owner.pid), *words)
        args = (command, "--pid", str(owner.pid), *words) if command == "--use" else (
            (command, "-d", str(base)) if command == "list" else (command, *words))
        assert _interrupted_writing(args, room=0) == (-signal.SIGINT, "sc: interrupted\n")
        assert _users(base) == (set() if command == "--use" else {owner.pid})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_an_end_as_sc_waits_for_its_output_to_take_the_path_releases_the_use(tmp_path, signum):
    # SIGTERM (a job's end) or SIGHUP to `sc --use` held by a pipe nobody reads ended it by their
    # default action, and its use stayed with the job until it ended.
    base, words = _small_repository(tmp_path)
    with Sleeper() as owner:
        assert _interrupted_writing(("--use", "--pid", str(owner.pid), *words), room=0, signum=signum) == (-signum, "")
        assert _users(base) == set()
        # One that came as the population returned the use, held back, ends the wait it finds.
        assert _interrupted_writing(("--use", "--pid", str(owner.pid), *words), room=0,
                                    env=_signalled_at(tmp_path, "run:repository/population.py", signum=signum)) == (
            -signum, "")
        assert _users(base) == set()


@pytest.mark.parametrize("at", [
    "run:repository/population.py",  # the population's lease returned
    "add_lease:engine/leases.py",  # a lease taken of a repository there already: the owner's second use
])
def test_an_interrupt_held_back_until_sc_waits_for_its_output_ends_the_command(tmp_path, at):
    # Ctrl-C that came once the lease was made, before sc waited for a pipe nobody reads, was
    # dropped as moot: sc hung there, the use taken, until a second one (SIGTERM held back so
    # ended the wait).  Only the use this sc took is released.
    base, words = _small_repository(tmp_path)
    with Sleeper() as owner:
        if at.startswith("add_lease:"):
            sc("--use", "--pid", str(owner.pid), *words)
        assert _interrupted_writing(("--use", "--pid", str(owner.pid), *words), room=0,
                                    env=_signalled_at(tmp_path, at)) == (-signal.SIGINT, "sc: interrupted\n")
        assert _lease_owners(base) == ([owner.pid] if at.startswith("add_lease:") else [])


def test_an_interrupt_as_an_output_larger_than_the_pipe_s_room_waits_ends_the_command(tmp_path):
    # A pipe with a page of room reports room, and took the first 4 KiB of a longer listing:
    # sc, which ignored Ctrl-C from then on, hung on the rest until the reader read.
    base = tmp_path / "base"
    base.mkdir()
    source = tmp_path / "data.bin"
    source.write_bytes(b"x")
    for number in range(20):
        with sharedcache.use(f"file:{source}", name=f"repository-{number}", directories=str(base), keep=True):
            pass
    assert _interrupted_writing(("list", "--json", "-d", str(base)), room=4096) == (
        -signal.SIGINT, "sc: interrupted\n")


def _interrupted_writing(args: Sequence[str], room: int, signum: int = signal.SIGINT,
                         env: dict[str, str] | None = None) -> tuple[int, str]:
    """The status and errors of ``sc ARGS`` (as a job starts it) whose output is a pipe nobody
    reads with ``room`` bytes free, interrupted (or sent ``signum``) once it waits there; or, with
    ``env`` (see :func:`_signalled_at`), that signals itself, and is sent nothing."""
    reading, writing = os.pipe()
    try:
        os.set_blocking(writing, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(writing, b"x" * 4096)
        os.set_blocking(writing, True)
        if room:
            os.read(reading, room)
        proc = subprocess.Popen([*DEFAULT_SIGNALS, *SC, *args], stdout=writing, stderr=subprocess.PIPE, text=True,
                                env=sc_env() if env is None else env)
        try:
            if env is None:
                wait_for(lambda: proc_waits_in(proc.pid, "poll") or proc_waits_in(proc.pid, "pipe_write"),
                         what="sc waiting for its output")
                proc.send_signal(signum)
            _, err = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
        return proc.returncode, err
    finally:
        os.close(reading)
        os.close(writing)


def proc_waits_in(pid: int, kernel_function: str) -> bool:
    """Whether process ``pid`` sleeps in a kernel function whose name holds ``kernel_function``."""
    try:
        return kernel_function in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


# Holds the write lock of the index named by its argument (as a process stopped in a
# transaction, or a long gc, does) until its standard input closes.
HOLD_INDEX = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()
"""

# use() of a program that reports the interrupt it gets (argv: archive, base).
USE_AND_REPORT_INTERRUPT = f"""
import sys
sys.path.insert(0, {SRC!r})
import sharedcache
try:
    with sharedcache.use("file:" + sys.argv[1], "tar", name="small", directories=sys.argv[2], max_size="1MB",
                         timeout=60):
        pass
except KeyboardInterrupt:
    sys.exit("KeyboardInterrupt")
"""


@pytest.mark.parametrize(("caller", "signum"), [("sc --use", signal.SIGINT), ("sc --use", signal.SIGTERM),
                                                ("sc gc", signal.SIGINT), ("use()", signal.SIGINT)])
def test_an_interrupt_while_the_index_is_busy_acts_at_once(tmp_path, caller, signum):
    # A miss with a budget sets it first, in an index transaction, one without commits its
    # population in one (where SIGTERM, a batch system's end of the job, is held back from the
    # end of the fill, Ctrl-C being moot there), and gc cleans in some: each waits for the
    # index's write lock for up to --timeout.  SQLite waits in C, where Python runs no signal
    # handler: the signal acted only once the wait was over, a minute later (SIGTERM, held, too:
    # past the grace a batch system gives before it kills).
    base, words = _small_repository(tmp_path)
    with Sleeper() as owner:
        assert sc("--use", "--pid", str(owner.pid), *words).returncode == 0  # (the index made)
        assert sc("--unuse", "--pid", str(owner.pid), *words).returncode == 0  # (and the repository gone)
        index = control(base) / "index.sqlite"
        holder = subprocess.Popen([sys.executable, "-c", HOLD_INDEX, str(index)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            if caller == "sc --use":
                budget = ["--max-size", "1MB"] if signum == signal.SIGINT else []
                proc = sc_start("--use", "--pid", str(owner.pid), *budget, "--timeout", "60", *words,
                                default_signals=True)
            elif caller == "sc gc":
                proc = sc_start("gc", "-d", str(base), default_signals=True)
            else:
                archive = words[-2].removeprefix("file:")
                proc = subprocess.Popen([*DEFAULT_SIGNALS, sys.executable, "-c", USE_AND_REPORT_INTERRUPT, archive,
                                         str(base)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=sc_env())
            try:
                wait_for(lambda: _has_open(proc.pid, index) and proc_waits_in(proc.pid, "nanosleep"),
                         what="a wait for the index's write lock")
                proc.send_signal(signum)
                try:
                    out, err = proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    pytest.fail("the signal waited for the index's write lock")
            finally:
                stop_process(proc)
        finally:
            stop_process(holder)
            for pipe in (holder.stdin, holder.stdout):
                assert pipe is not None
                pipe.close()
    if caller.startswith("sc"):
        said = "sc: interrupted\n" if signum == signal.SIGINT else ""  # (SIGTERM ends it silently, by itself)
        assert (proc.returncode, err, out) == (-signum, said, ""), err
    else:
        assert (proc.returncode, err.splitlines()[-1]) == (1, "KeyboardInterrupt"), err
    undone(base, "small")


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has the file at ``path`` open."""
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in descriptors:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path.resolve()):
                return True
    return False


# Loaded by the populating process as its sitecustomize: the job's SIGTERM comes as soon as the
# staging directory is made: at $SC_TEST_AT "mkdir", as the mkdir that makes it returns (a profile
# function sees the return; the handler's exception comes out of the call), at "lock", while its
# lock file is being opened.
TERM_ONCE_STAGED = """
import os, signal, sys
_staged = []
def _term():
    _staged.append(True)
    os.kill(os.getpid(), signal.SIGTERM)
def _hook(event, args):
    name = str(args[0]) if args else ""
    if event == "os.mkdir" and args[1] == 0o700 and len(name) == 24 and not _staged:  # a staging id
        _staged.append(name)
    elif event == "open" and len(_staged) == 1 and str(args[0]) == _staged[0] + "/lock":
        _term()
def _profile(_frame, event, function):
    if event == "c_return" and function is os.mkdir and len(_staged) == 1:
        sys.setprofile(None)
        _term()
sys.addaudithook(_hook)
if os.environ["SC_TEST_AT"] == "mkdir":
    sys.setprofile(_profile)
"""


@pytest.mark.parametrize("at", ["mkdir", "lock"])
def test_a_populator_ended_as_its_staging_directory_is_made_leaves_none(tmp_path, at):
    # The staging directory was made, and its removal set up only once its lock was taken: a
    # SIGTERM in between left an empty staging directory for a later store to sweep.  Then only
    # once the call that made it had returned: a SIGTERM as the mkdir returned did the same.
    base, site = tmp_path / "base", tmp_path / "site"
    base.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(TERM_ONCE_STAGED)
    source = tmp_path / "small.bin"
    source.write_bytes(b"data\n" * 1000)
    populator = sc_start("--use", "-d", str(base), "-n", "slow", f"file:{source}",
                         env=sc_env(PYTHONPATH=str(site), SC_TEST_AT=at), default_signals=True)
    try:
        populator.communicate(timeout=30)
    finally:
        stop_process(populator)
    assert populator.returncode == -signal.SIGTERM
    undone(base, "slow")


# Loaded by the populating process as its sitecustomize: once armed, the next file it renames to
# a name ending in one of $SC_TEST_AT (separated by ":") runs a weakref callback that sleeps, so that the test's signal comes
# while Python runs it, where whatever the signal's handler raises is printed and ignored.
LOSING_THE_SIGNAL = """
import os, sys, time, weakref
_armed, _asleep, _at = os.environ["SC_TEST_ARMED"], os.environ["SC_TEST_ASLEEP"], os.environ["SC_TEST_AT"]
_inside = []
class _Thing:
    pass
def _sleep(_ref):
    open(_asleep, "w").close()
    try:
        time.sleep(20)
    except BaseException as e:  # the handler's, raised here: Python drops it as the callback ends
        with open(_asleep, "w") as said:
            said.write(type(e).__name__)
        raise
def _hook(event, args):
    if _inside or event != "os.rename" or not str(args[1]).endswith(tuple(_at.split(":"))) \
            or not os.path.exists(_armed):
        return
    _inside.append(True)
    os.unlink(_armed)
    thing = _Thing()
    ref = weakref.ref(thing, _sleep)
    del thing
    _inside.pop()
sys.addaudithook(_hook)
"""


#: The commit markers of an entry: flushed, or of this boot only (on a local disk, without --keep).
MARKERS = ("entry.json", f"entry.{boot_id()}.json")


@pytest.mark.parametrize("lost_in", ["the download", "the commit"])
def test_a_populator_ends_by_its_job_s_signal_even_when_the_handler_s_exception_is_lost(tmp_path, trickle,
                                                                                          lost_in):
    # The handler's exception, raised where Python ignores exceptions (a weakref callback, here
    # one of the import system's), was printed as "Exception ignored in" and the population went
    # on: the job's SIGHUP was lost, and the download held the job until it was killed.  Lost
    # during the download, it is raised again at the next progress and the population undoes
    # itself; lost during the commit, at the population's end: the repository is made, and the
    # process still ends by the signal.  What Python printed of it, a traceback, is not shown.
    # (sc's own process holds the signal back over the commit, as Ctrl-C: the commit's case is
    # that of a program that calls main(), whose signals are its own, as a library's caller's.)
    base, site = tmp_path / "base", tmp_path / "site"
    base.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(LOSING_THE_SIGNAL)
    armed, asleep = tmp_path / "armed", tmp_path / "asleep"
    during_download = lost_in == "the download"
    source = tmp_path / "small.bin"
    source.write_bytes(b"data\n" * 1000)
    env = sc_env(PYTHONPATH=str(site), SC_TEST_ARMED=str(armed), SC_TEST_ASLEEP=str(asleep),
                 SC_TEST_AT="/slow.json" if during_download else ":".join(f"/{m}" for m in MARKERS))
    if not during_download:
        armed.touch()
    args = ("--use", "--speed-limit", "0", "-d", str(base), "-n", "slow",
            trickle.word() if during_download else f"file:{source}")
    populator = sc_start(*args, env=env, default_signals=True) if during_download else subprocess.Popen(
        [*DEFAULT_SIGNALS, sys.executable, "-c", "import sys; from sharedcache.cli import main; main(sys.argv[1:])",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if during_download:
            wait_for_population(base, "slow", populator)
            wait_for(lambda: list((control(base) / "stage").iterdir()), what="the staging tree")
            armed.touch()
        wait_for(asleep.exists, what="the weakref callback")
        populator.send_signal(signal.SIGHUP)
        _out, err = populator.communicate(timeout=30)
    finally:
        stop_process(populator)
    assert asleep.read_text() == "Ended", err  # the handler's exception was indeed lost
    assert err == "", err
    assert populator.returncode == -signal.SIGHUP
    if during_download:
        undone(base, "slow")
    else:
        assert any((control(base) / "objects" / "slow" / marker).is_file() for marker in MARKERS)
        assert not (control(base) / "populate" / "slow.json").exists(), "the status record is left"


def test_a_job_s_process_group_ended_mid_unpack_leaves_no_tree_and_no_error(tmp_path):
    # SIGTERM to the job's process group reaches the unpacker's writer process too: the unpack
    # ends by the signal, not by a failure on the writer's pipe recorded for the waiters.
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(40_000):
            member = tarfile.TarInfo(f"f{i}")
            member.size = 10
            tar.addfile(member, io.BytesIO(b"0123456789"))
    base = tmp_path / "base"
    base.mkdir()
    populator = sc_start("--use", "-d", str(base), "-n", "many", f"file:{archive}", "tar",
                         start_new_session=True, default_signals=True)
    try:
        def unpacking() -> bool:
            assert populator.poll() is None, "the unpack ended before the signal"
            return any(len(os.listdir(data)) > 100 for data in (control(base) / "stage").glob("*/data"))

        wait_for(unpacking, what="the unpack under way")
        os.killpg(populator.pid, signal.SIGTERM)
        populator.communicate(timeout=30)
    finally:
        stop_process(populator)
    assert populator.returncode == -signal.SIGTERM
    undone(base, "many")
    again = sc("--use", "-d", str(base), "-n", "many", "--pid", str(os.getpid()), f"file:{archive}", "tar")
    assert again.returncode == 0, again.stderr
    assert len(os.listdir(again.stdout.strip())) == 40_000


def test_a_deadline_met_while_data_flows_is_said_once(tmp_path):
    # Past the deadline the progress callback gave up with the population's own error, which the
    # population then wrapped in itself: the line said "timed out after 0 s ..." twice.
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(100_000))
    base = tmp_path / "base"
    base.mkdir()
    result = sc("--use", "--timeout", "0", "-d", str(base), "-n", "late", "--pid", str(os.getpid()), f"file:{source}")
    assert result.returncode == 1
    assert result.stderr.startswith("sc: error: repository 'late': timed out after 0 s populating it")
    assert result.stderr.count("timed out after") == 1 and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.fixture
def slow_head() -> Iterator[Trickle]:
    """A server (or proxy) that sends the head of its answer a byte at a time, never ending it."""
    server = Trickle(interval=0.2, slow_head=True)
    try:
        yield server
    finally:
        server.stop()


def failed_on_time(limit: float, *args: str, env: dict[str, str] | None = None,
                   wrapper: list[str] | None = None) -> str:
    """The one line of ``sc ARGS`` (run under ``wrapper``, a command that runs the rest), which
    must fail within ``limit`` seconds (and a margin)."""
    started = time.monotonic()
    if wrapper is None:
        result = sc(*args, env=env)
    else:
        result = subprocess.run([*wrapper, *SC, *args], capture_output=True, text=True, timeout=60,
                                env=env if env is not None else sc_env())
    assert time.monotonic() - started < limit + 5
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


def test_an_answer_whose_head_never_ends_is_bounded(tmp_path, slow_head):
    # Each byte of the head came within the read timeout, which bounds each wait for bytes; the
    # speed limit counts a body's bytes only: the request waited for ever, past --timeout too.
    base = tmp_path / "base"
    base.mkdir()
    line = failed_on_time(2, "--use", "--timeout", "2", "-d", str(base), "-n", "head", slow_head.word())
    assert line.startswith("sc: error: repository 'head': timed out after 2 s populating it")
    assert "(the last attempt: Read timed out." in line, line
    # Without a deadline, the read timeout bounds the head as a whole, and the retries apply.
    config = tmp_path / "config"
    config.write_text("read_timeout = 1\nretries = 1\n")
    line = failed_on_time(2 * 1, "--use", "-d", str(base), "-n", "head", slow_head.word(),
                          env=sc_env(SC_CONFIG=str(config)))
    assert "cannot download" in line and "Read timed out." in line and "(after 2 attempts)" in line, line


def test_a_proxy_whose_answer_to_connect_never_ends_is_bounded(tmp_path, slow_head):
    # The tunnel to an https:// origin begins with the proxy's answer to CONNECT, read while
    # connecting: sent a byte at a time, it held the connection for ever, past --timeout too.
    base = tmp_path / "base"
    base.mkdir()
    line = failed_on_time(2, "--use", "--timeout", "2", "--proxy", f"http://127.0.0.1:{slow_head.port}",
                          "-d", str(base), "-n", "tunnel", "http:https://origin.invalid/data.bin")
    assert line.startswith("sc: error: repository 'tunnel': timed out after 2 s populating it"), line


def test_a_resolver_that_never_answers_is_bounded(tmp_path):
    # getaddrinfo waits as long as resolv.conf says (here 20 s, three times) and cannot be told to
    # stop: a name server that swallowed queries held a download past --timeout.  The resolver
    # here is a UDP socket that reads and never answers, made the name server of a mount namespace.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare: a name server on port 53 and a resolv.conf of a mount namespace")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for last in range(2, 40):  # a name server of the host may hold port 53 on some of them
        try:
            server.bind((f"127.0.0.{last}", 53))
            break
        except OSError:
            continue
    else:
        server.close()
        pytest.fail("no address of 127.0.0.0/8 left with port 53 free")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {server.getsockname()[0]}\noptions timeout:20 attempts:3\n")
    base = tmp_path / "base"
    base.mkdir()
    try:
        line = failed_on_time(2, "--use", "--timeout", "2", "-d", str(base), "-n", "dns",
                              "http:http://hang.example/data.bin",
                              wrapper=["unshare", "--mount", "sh", "-c",
                                       f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh"])
    finally:
        server.close()
    assert line.startswith("sc: error: repository 'dns': timed out after 2 s populating it"), line
    assert "Failed to resolve 'hang.example'" in line and "the resolver gave no answer in" in line, line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sc_run_as_pid_1_of_a_container_ended_while_it_populates_ends_cleanly(tmp_path, trickle, signum):
    # `sc run` as a container's entrypoint (PID 1 of its namespace), stopped (`docker stop`)
    # while it populates: it undid the population, but its own signal, which the kernel does not
    # deliver to such a process, did not end it: a traceback (_Ended: 15) and status 1.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make PID namespaces")
    base = tmp_path / "base"
    base.mkdir()
    container = subprocess.Popen(
        [*DEFAULT_SIGNALS, "unshare", "--pid", "--fork", "--mount-proc", *SC, "run", "--speed-limit", "0", "-d", str(base),
         "-n", "slow", trickle.word(), "--", "true"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sc_env())
    try:
        wait_for_population(base, "slow", container)
        wait_for(lambda: list((control(base) / "stage").iterdir()), what="the staging tree")
        status = json.loads((control(base) / "populate" / "slow.json").read_text())
        assert status["pid"] == 1
        entrypoint = int(Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text().split()[0])
        os.kill(entrypoint, signum)
        _, err = container.communicate(timeout=30)
    finally:
        stop_process(container)
    assert "Traceback" not in err and "Ended" not in err, err
    assert container.returncode == 128 + signum, err
    undone(base, "slow")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sc_run_as_pid_1_of_a_container_ended_while_it_waits_ends_without_running_its_command(
        tmp_path, trickle, signum):
    # `sc run` as a container's entrypoint, waiting for another job's population: the kernel
    # dropped the signal (PID 1 of a namespace, default action), so sc went on waiting, then ran
    # its command, which never heard of it; the orchestrator waited out its grace period.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make PID namespaces")
    base = tmp_path / "base"
    base.mkdir()
    args = ["--speed-limit", "0", "-d", str(base), "-n", "slow", trickle.word()]
    ran = tmp_path / "ran"
    with Sleeper() as owner:
        populator = sc_start("--use", "--pid", str(owner.pid), *args)
        container = None
        try:
            wait_for_population(base, "slow", populator)
            [before] = json.loads(sc("list", "--json", "-d", str(base)).stdout)
            container = subprocess.Popen(
                [*DEFAULT_SIGNALS, "unshare", "--pid", "--fork", "--mount-proc", *SC, "run", "-v", *args, "--",
                 "touch", str(ran)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=sc_env())
            assert container.stderr is not None
            said = b""
            deadline = time.monotonic() + 30
            while b"waiting" not in said:  # its first line as a waiter
                assert time.monotonic() < deadline and container.poll() is None, said
                if select.select([container.stderr], [], [], 0.5)[0]:
                    said += os.read(container.stderr.fileno(), 4096)
            entrypoint = int(Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text().split()[0])
            os.kill(entrypoint, signum)
            _, err = container.communicate(timeout=15)
            assert container.returncode == 128 + signum, said + err
            assert "Traceback" not in (said + err).decode(), said + err
            assert not ran.exists(), "the command ran"
            assert populator.poll() is None, "the other job's population goes on"
            [row] = json.loads(sc("list", "--json", "-d", str(base)).stdout)
            assert row["state"] == "populating" and row["users"] == before["users"], row  # none of the container's
        finally:
            if container is not None:
                stop_process(container)
            stop_process(populator)


def test_a_populator_whose_standard_error_breaks_goes_on_for_its_waiters(tmp_path, origin):
    # The populating job's stderr went to a reader that left (`sc --use -v ... 2>&1 | head -1`):
    # its next progress line failed, the failure was taken for one to write the data, and the
    # population failed, for its waiter too ("cannot write the data of ...: Broken pipe").
    payload = os.urandom(3 << 20)
    url = origin.add("/raw.bin", payload)
    origin.rate = 400_000  # (7.5 s: a progress line is due every 5 s)
    words = ["-d", str(tmp_path), "-n", "raw", f"http:{url}"]
    try:
        with Sleeper() as owner:
            reader_gone = subprocess.Popen([*SC, "--use", "-v", "--pid", str(owner.pid), *words],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=sc_env())
            assert reader_gone.stderr is not None
            reader_gone.stderr.readline()  # "populating ..."
            reader_gone.stderr.close()
            wait_for_population(tmp_path, "raw", reader_gone)
            waiter = sc("--use", "--pid", str(owner.pid), *words)
            assert reader_gone.wait(60) == 0
            assert waiter.returncode == 0, waiter.stderr
            assert (Path(waiter.stdout.strip()) / "raw.bin").read_bytes() == payload
    finally:
        origin.rate = None
