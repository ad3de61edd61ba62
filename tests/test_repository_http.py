"""Repository semantics against a real loopback HTTP origin: one download for all, shared
failures, takeover of a killed population, waiting messages and the progress bar."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import termios
import time
import urllib.request
from pathlib import Path

import pytest

from scutil import SC, Sleeper, check_tree, control, finish, kill_populator_and_take_over, make_tarball, on_host, sample_files, sc, sc_env, sc_start, user_dir, wait_for

FILES = sample_files(n=40, size=50_000)  # ~2 MB, incompressible-ish only per file: fine


@pytest.fixture
def tarball(tmp_path: Path) -> tuple[bytes, str]:
    path = tmp_path / "data.tar.gz"
    md5 = make_tarball(path, FILES)
    return path.read_bytes(), md5


def test_concurrent_users_cause_exactly_one_download(origin, tarball, base):
    payload, md5 = tarball
    url = origin.add("/data.tar.gz", payload)
    origin.rate = len(payload) / 1.5  # the download lasts long enough for all to pile up
    with Sleeper() as owner:
        args = ["--use", "-n", "shared", "-d", str(base), "--pid", str(owner.pid),
                f"http:{url}", f"md5:{md5}", "tar"]
        results = finish([sc_start(*args) for _ in range(6)], timeout=90)
        paths = {out for status, out, err in results}
        assert all(status == 0 for status, _, _ in results), results
        assert paths == {f"{user_dir(base) / 'shared'}\n"}
        assert origin.stats("/data.tar.gz").gets == 1
        check_tree(user_dir(base) / "shared", FILES)
        listing = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert listing[0]["users"] == [owner.pid] * 6


def test_waiters_get_the_populators_error_and_a_later_use_tries_again(origin, tarball, base):
    payload, _md5 = tarball
    url = origin.add("/data.tar.gz", payload)
    origin.rate = len(payload) / 1.5
    args = ["--use", "-n", "bad", "-d", str(base), f"http:{url}", "md5:" + "0" * 32, "tar"]
    results = finish([sc_start(*args) for _ in range(4)], timeout=90)
    assert [status for status, _, _ in results] == [1, 1, 1, 1], results
    messages = {err for _, _, err in results}
    assert len(messages) == 1, messages
    (message,) = messages
    assert "bad" in message and "md5" in message and len(message.strip().splitlines()) == 1
    assert origin.stats("/data.tar.gz").gets == 1, "the waiters did not download again"
    assert not (user_dir(base) / "bad").exists()
    again = sc(*args)
    assert again.returncode == 1
    assert origin.stats("/data.tar.gz").gets == 2, "a later use tries afresh"


def test_http_error_is_one_clear_line(origin, base):
    url = origin.url("/missing.tar.gz")
    result = sc("--use", "-n", "missing", "-d", str(base), f"http:{url}", "tar")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "404" in result.stderr and "missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_killed_populator_is_taken_over_and_the_download_resumes(origin, base):
    payload = os.urandom(3_000_000)
    digest = hashlib.sha256(payload).hexdigest()
    url = origin.add("/blob.bin", payload)
    origin.rate = 1_000_000  # 3 s for the whole file
    with Sleeper() as owner:
        args = ["--use", "-n", "blob", "-d", str(base), "--pid", str(owner.pid),
                f"http:{url}", f"sha256:{digest}"]
        status, out, err = kill_populator_and_take_over(args, lambda: origin.stats("/blob.bin").bytes_served > 1_000_000)
        assert status == 0, err
        assert (Path(out.strip()) / "blob.bin").read_bytes() == payload
        stats = origin.stats("/blob.bin")
        assert stats.gets == 2
        assert stats.ranges and stats.ranges[-1].startswith("bytes=") and stats.ranges[-1] != "bytes=0-"
        assert stats.bytes_served < 2 * len(payload), "the taker resumed instead of starting over"
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as answer:
            assert stats.if_ranges == [answer.headers["ETag"]], "the resume is guarded by the version it goes on"


def checkpointed(base: Path, name: str) -> int:
    """The bytes that the record of the partial download of ``name`` counts, 0 before its first
    checkpoint."""
    for record in control(base).glob(f"populate/{name}.work/*/partial.json"):
        try:
            return int(json.loads(record.read_text())["bytes"])
        except (OSError, ValueError):
            pass  # being replaced
    return 0


def written(base: Path, name: str) -> int:
    """The bytes that the partial download of ``name`` holds (0 if there is none)."""
    for data in control(base).glob(f"populate/{name}.work/*/partial.data"):
        try:
            return data.stat().st_size
        except OSError:
            pass  # moved into the repository
    return 0


@pytest.mark.parametrize("after_a_checkpoint", [False, True], ids=["in_its_first_second", "between_checkpoints"])
def test_a_takeover_after_a_sigkill_fetches_none_of_the_bytes_written(origin, base, after_a_checkpoint):
    """A SIGKILL leaves no record of what was written since the last checkpoint, a second old,
    or none when it came in the first second: the takeover fetched those bytes again, or the
    whole file.  What reached the partial file is the stream's first bytes, and is kept."""
    payload = os.urandom(6_000_000)
    url = origin.add("/blob.bin", payload)
    origin.rate = 2_000_000  # 3 s for the whole file, a checkpoint a second
    with Sleeper() as owner:
        args = ["--use", "-n", "blob", "-d", str(base), "--pid", str(owner.pid),
                f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}"]

        def between_checkpoints() -> bool:
            counted = checkpointed(base, "blob")
            return (counted > 0) == after_a_checkpoint and written(base, "blob") >= counted + 500_000

        first = sc_start(*args)
        try:
            wait_for(between_checkpoints, what="bytes written past the partial's record")
        finally:
            first.kill()
            first.communicate(timeout=10)
        kept, counted = written(base, "blob"), checkpointed(base, "blob")
        assert counted < kept, "the last checkpoint counted all that was written"
        served = origin.stats("/blob.bin").bytes_served
        origin.rate = None
        taken = sc(*args)
    assert taken.returncode == 0, taken.stderr
    assert (Path(taken.stdout.strip()) / "blob.bin").read_bytes() == payload
    stats = origin.stats("/blob.bin")
    assert stats.ranges == [f"bytes={kept}-"], "the takeover did not go on from the bytes written"
    # (The killed populator's answer may have had one more send counted as it went.)
    assert stats.bytes_served - served < len(payload) - kept + 500_000


def test_a_download_failed_by_an_outage_is_gone_on_from_by_the_next_use(origin, base, tmp_path):
    """An outage longer than the retries fails the population, and its waiters with it, but what
    it downloaded is kept, as after a --timeout: the next use asks for the rest alone (it was
    thrown away with the work directory, and the next use downloaded the whole file again)."""
    payload = os.urandom(2_000_000)
    url = origin.add("/cut.bin", payload)
    config = tmp_path / "config"
    config.write_text("retries = 1\n")
    origin.fault("/cut.bin", drop_after=1_500_000)
    origin.fault("/cut.bin", status=503, times=2)  # every attempt to resume
    args = ["--use", "-n", "cut", "-d", str(base), f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}"]
    failed = sc(*args, env=sc_env(SC_CONFIG=str(config)))
    assert failed.returncode == 1 and "HTTP 503" in failed.stderr, failed.stderr
    assert (control(base) / "populate" / "cut.error").exists(), "the waiters were not told"
    stats = origin.stats("/cut.bin")
    served, ranges = stats.bytes_served, len(stats.ranges)
    again = sc(*args, env=sc_env(SC_CONFIG=str(config)))
    assert again.returncode == 0, again.stderr
    assert (Path(again.stdout.strip()) / "cut.bin").read_bytes() == payload
    assert stats.bytes_served - served == len(payload) - 1_500_000, "the next use downloaded again what was had"
    assert stats.ranges[ranges:] == ["bytes=1500000-"], stats.ranges


def test_a_takeover_killed_in_its_first_second_then_failed_by_an_outage_is_gone_on_from(origin, base, tmp_path):
    """A populator SIGKILLed in its first second leaves a record that counts no bytes beside the
    bytes it wrote; the next use takes over, and fails by an outage before it writes any more: what
    is kept is the file, which the next use goes on from (it was thrown away with the work
    directory, the record counting nothing, and the next use downloaded the whole file again)."""
    payload = os.urandom(6_000_000)
    url = origin.add("/cut.bin", payload)
    origin.rate = 2_000_000
    config = tmp_path / "config"
    config.write_text("retries = 1\n")
    args = ["--use", "-n", "cut", "-d", str(base), f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}"]
    first = sc_start(*args, env=sc_env(SC_CONFIG=str(config)))
    try:
        wait_for(lambda: checkpointed(base, "cut") == 0 and written(base, "cut") >= 500_000,
                 what="bytes written before the first checkpoint")
    finally:
        first.kill()
        first.communicate(timeout=10)
    kept = written(base, "cut")
    origin.rate = None
    origin.fault("/cut.bin", status=503, times=2)  # the takeover's request and its retry
    failed = sc(*args, env=sc_env(SC_CONFIG=str(config)))
    assert failed.returncode == 1 and "HTTP 503" in failed.stderr, failed.stderr
    assert written(base, "cut") == kept, "the failed takeover did not keep what was written"
    again = sc(*args, env=sc_env(SC_CONFIG=str(config)))
    assert again.returncode == 0, again.stderr
    assert (Path(again.stdout.strip()) / "cut.bin").read_bytes() == payload
    assert origin.stats("/cut.bin").ranges[-1] == f"bytes={kept}-", "the next use did not go on from the bytes kept"


def test_a_takeover_after_an_answer_without_a_validator_commits_one_version(origin, base):
    """A downloads version 1 (with an ETag) and is SIGKILLed; B takes over, gets version 2 with no
    validator (its Last-Modified, say, too close to its Date to be one), starts the file afresh,
    and is SIGKILLed; C, sent to version 1 again (another server of a pool), went on from the end
    of B's bytes under A's record, and committed version 2's first bytes followed by version 1's
    rest (a recipe without a checksum has nothing else to tell).  B's start removed the record."""
    one, two = os.urandom(4_000_000), os.urandom(4_000_000)
    # Each use's first request goes to the next version in turn.
    origin.redirect("/cut.bin", origin.add("/one.bin", one),
                    origin.add("/two.bin", two, etag=False, last_modified=False), origin.url("/one.bin"))
    origin.rate = 1_000_000
    args = ["--use", "-n", "cut", "-d", str(base), "--connections", "1", f"http:{origin.url('/cut.bin')}"]

    def killed_once(holds: bytes) -> None:
        def wrote_enough() -> bool:
            size = written(base, "cut")
            data = next(control(base).glob("populate/cut.work/*/partial.data"), None)
            return size >= 500_000 and data is not None and data.read_bytes()[:size] == holds[:size]

        populator = sc_start(*args)
        try:
            wait_for(wrote_enough, what="a partial download of the version")
        finally:
            populator.kill()
            populator.communicate(timeout=10)

    killed_once(one)
    killed_once(two)
    origin.rate = None
    taken = sc(*args)
    assert taken.returncode == 0, taken.stderr
    committed = hashlib.sha256((Path(taken.stdout.strip()) / "cut.bin").read_bytes()).digest()
    assert committed in {hashlib.sha256(one).digest(), hashlib.sha256(two).digest()}, "a mix of two versions was committed"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare, to give a mount namespace another boot id")
def test_a_partial_download_left_before_a_reboot_is_started_over(origin, base, tmp_path):
    """A partial download is not flushed: after a power loss its size and record can survive
    while the data they count does not, which reads as zeros.  Such a partial is made here the
    way a power loss leaves it (a killed download, then its kept bytes zeroed), and taken over
    on this machine after a reboot (a mount namespace with another boot id).  No checksum is
    there to notice: the taker must start over, not resume."""
    payload = os.urandom(3_000_000)
    url = origin.add("/raw.bin", payload)
    origin.rate = 1_000_000  # 3 s for the whole file
    with Sleeper() as owner:
        args = ["--use", "-n", "raw", "-d", str(base), "--pid", str(owner.pid), f"http:{url}"]
        first = sc_start(*args)
        try:
            wait_for(lambda: checkpointed(base, "raw") > 500_000, what="a checkpoint of the partial download")
        finally:
            first.kill()
            first.wait(10)
        kept = checkpointed(base, "raw")
        (record,) = control(base).glob("populate/raw.work/*/partial.json")
        with open(record.with_name("partial.data"), "r+b") as data:
            data.write(bytes(kept))
        boot = tmp_path / "boot_id"
        boot.write_text("0badb007-0000-4000-8000-000000000000\n")
        taken = subprocess.run(on_host((boot, None, ""), [*SC, *args]), capture_output=True, text=True,
                               timeout=60, env=sc_env())
        assert taken.returncode == 0, taken.stderr
        assert (Path(taken.stdout.strip()) / "raw.bin").read_bytes() == payload
        stats = origin.stats("/raw.bin")
        assert stats.gets == 2
        assert stats.ranges == [], "the taker resumed a partial left before the reboot"


def test_killed_unpacking_populator_is_taken_over(origin, tarball, base):
    payload, md5 = tarball
    url = origin.add("/data.tar.gz", payload)
    origin.rate = len(payload) / 2
    with Sleeper() as owner:
        args = ["--use", "-n", "tree", "-d", str(base), "--pid", str(owner.pid),
                f"http:{url}", f"md5:{md5}", "tar"]
        status, out, err = kill_populator_and_take_over(
            args, lambda: origin.stats("/data.tar.gz").bytes_served > len(payload) // 4)
        assert status == 0, err
        check_tree(Path(out.strip()), FILES)
        listing = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert [(r["name"], r["state"], r["users"]) for r in listing] == [("tree", "ready", [owner.pid])]
        assert list((control(base) / "stage").iterdir()) == [], "the dead stage was swept"


def start_slow_population(origin, tarball, base):  # type: ignore[no-untyped-def]
    """Start an ``sc --use`` whose download crawls (it would last 30 s) until the test sets
    ``origin.rate = None``; return its arguments and process once the download has begun.  (A
    download of a fixed length could end before a loaded machine has started the next use.)"""
    payload, md5 = tarball
    url = origin.add("/data.tar.gz", payload)
    origin.rate = len(payload) / 30
    args = ["--use", "-n", "slow", "-d", str(base), f"http:{url}", f"md5:{md5}", "tar"]
    first = sc_start(*args)
    try:
        wait_for(lambda: origin.stats("/data.tar.gz").gets == 1, what="the download to start")
    except BaseException:
        first.kill()
        first.wait(10)
        raise
    return args, first


def test_waiting_process_says_whom_it_waits_for(origin, tarball, base):
    args, first = start_slow_population(origin, tarball, base)
    said = base.parent / "waiter.err"
    try:
        with open(said, "w") as stderr:
            waiter = subprocess.Popen([*SC, "-v", *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                      env=sc_env())
        try:
            wait_for(lambda: "waiting" in said.read_text() or waiter.poll() is not None, 60, "the waiter")
        finally:
            origin.rate = None
            ((status, _out, _),) = finish([waiter], timeout=60)
        ((status0, _, err0),) = finish([first], timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    err = said.read_text()
    assert status == status0 == 0, err + err0
    assert err0 == "", "off a terminal and without -v: silent"
    assert "waiting" in err and f"process {first.pid}" in err and "slow" in err


def test_progress_bar_on_a_terminal(origin, base):
    payload = os.urandom(2_000_000)
    url = origin.add("/blob.bin", payload)
    origin.rate = 2_000_000
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [*SC, "--use", "-n", "tty", "-d", str(base), f"http:{url}"],
        stdout=subprocess.PIPE, stderr=follower, env=sc_env(), text=False,
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None or select.select([leader], [], [], 0)[0]:
            assert time.monotonic() < deadline
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    seen += os.read(leader, 4096)
                except OSError:
                    break
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert proc.returncode == 0
    assert proc.stdout is not None and proc.stdout.read().strip() == str(user_dir(base) / "tty").encode()
    assert b"tty" in seen and b"%" in seen, seen[-300:]


def test_dirac_source_through_a_stand_in_client(tmp_path, base):
    payload = b"dirac data\n" * 1000
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "grid.dat").write_bytes(payload)
    client = bindir / "dirac-dms-get-file"
    client.write_text(f'#!/bin/sh\ncp {tmp_path / "grid.dat"} "$(basename "$1")"\n')
    client.chmod(0o755)
    env = sc_env(PATH=f"{bindir}:{os.environ['PATH']}")
    with Sleeper() as owner:
        result = sc("--use", "-n", "grid", "-d", str(base), "--pid", str(owner.pid),
                    "dirac:/vo/user/grid.dat", f"md5:{hashlib.md5(payload).hexdigest()}", env=env)
        assert result.returncode == 0, result.stderr
        assert (Path(result.stdout.strip()) / "grid.dat").read_bytes() == payload
    missing = sc("--use", "-n", "grid2", "-d", str(base), "dirac:/vo/user/other.dat",
                 env=sc_env(PATH="/usr/bin:/bin"))
    assert missing.returncode == 1 and "dirac-dms-get-file" in missing.stderr


def test_connections_option_downloads_in_ranged_parts(origin, base):
    payload = os.urandom(6_000_000)
    digest = hashlib.sha256(payload).hexdigest()
    url = origin.add("/big.bin", payload)
    with Sleeper() as owner:
        result = sc("--use", "-n", "big", "-d", str(base), "--pid", str(owner.pid), "--connections", "4",
                    f"http:{url}", f"sha256:{digest}")
        assert result.returncode == 0, result.stderr
        assert (Path(result.stdout.strip()) / "big.bin").read_bytes() == payload
        assert len(origin.stats("/big.bin").ranges) > 2, "several ranged requests were made"
    bad = sc("--use", "-n", "big", "-d", str(base), "--connections", "0", f"http:{url}")
    assert bad.returncode == 2 and "--connections" in bad.stderr


def test_waiting_past_timeout_is_a_clear_error_and_the_population_goes_on(origin, tarball, base):
    args, first = start_slow_population(origin, tarball, base)
    try:
        started = time.monotonic()
        impatient = sc(*args, "--timeout", "0.5")
        assert time.monotonic() - started < 10
        origin.rate = None  # (the population may end now)
        assert impatient.returncode == 1
        assert "timed out after 0.5 s" in impatient.stderr and "'slow'" in impatient.stderr
        assert f"process {first.pid}" in impatient.stderr
        assert len(impatient.stderr.strip().splitlines()) == 1
        ((status, out, err),) = finish([first], timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert status == 0, err
    check_tree(Path(out.strip()), FILES)
