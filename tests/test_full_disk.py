"""Full disks heal: on a file system filled to the last byte (a tmpfs the test mounts, so root
is needed), the release of a last use, ``sc gc`` and ``--max-size`` work, and a population that
finds no room, whichever of its writes meets ENOSPC first, evicts unused kept repositories,
tries again, and otherwise fails with one clear line, leaving nothing.  A process out of file
descriptors (``ulimit -n``) or at its file size limit (``ulimit -f``) says that, and nothing of
damage, whatever it was opening or writing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_guards import small_fs  # noqa: F401 - the fixture: a 3 MiB tmpfs mounted for the test

from sharedcache import CacheError, FsCache
from sharedcache.engine.leases import Owner

from scutil import SC, Sleeper, control, finish, make_tarball, mounted_tmpfs, sc, sc_env, sc_start, user_dir, wait_for


def fill(mount: Path) -> Path:
    """Fill ``mount`` to its last byte with a file; return it."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def full(mount: Path) -> bool:
    st = os.statvfs(mount)
    return st.f_bavail == 0


def one_line(err: str) -> str:
    assert err.startswith("sc: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_release_gc_and_max_size_work_on_a_full_file_system(tmp_path, small_fs):  # noqa: F811
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000))
    with Sleeper() as owner:
        common = ["-d", str(small_fs), "--pid", str(owner.pid)]
        for name in ("kept1", "kept2"):
            assert sc("--use", "-n", name, "--keep", *common, f"file:{blob}").returncode == 0
            assert sc("--unuse", "-n", name, *common, f"file:{blob}").returncode == 0
        held = ["-n", "held", *common, f"file:{blob}"]
        assert sc("--use", *held).returncode == 0
        fill(small_fs)
        assert full(small_fs)

        released = sc("--unuse", *held)
        assert released.returncode == 0, released.stderr
        assert not (user_dir(small_fs) / "held").exists()
        # The release gave the index's reserve to its journal, freed room, and made it again.
        reserve = control(small_fs) / "index.reserve"
        assert reserve.exists() and reserve.stat().st_blocks > 0, "no reserve after the release"

        fill(small_fs)
        gc = sc("gc", "-d", str(small_fs))
        assert gc.returncode == 0, gc.stderr

        fill(small_fs)
        budget = sc("--use", "-n", "kept1", "--max-size", "350KB", *common, f"file:{blob}")
        assert budget.returncode == 0, budget.stderr
        assert not (user_dir(small_fs) / "kept2").exists(), "the budget was not applied"
        assert sc("--unuse", "-n", "kept1", *common, f"file:{blob}").returncode == 0

        fill(small_fs)
        assert sc("gc", "-d", str(small_fs)).returncode == 0
        assert sc("list", "-d", str(small_fs)).returncode == 0


#: Holds a use of ``file:PATH`` for the process ARGV[2] in the base ARGV[1], under the name of the
#: file's stem, for each PATH that follows: what as many ``sc --use --pid`` do, in one process.
HOLD_EACH = """
import sys
from pathlib import Path
from sharedcache.engine.leases import Owner
from sharedcache.repository.repositories import Repositories
repositories, owner = Repositories(sys.argv[1]), Owner.of(int(sys.argv[2]))
for path in sys.argv[3:]:
    repositories.acquire([f"file:{path}"], owner=owner, name=Path(path).stem)
"""


def test_concurrent_releases_and_gc_work_on_a_full_file_system(tmp_path):
    # Every process of an index shares its reserve, as it shares its journals: one gives the
    # reserve up to make its journal, and another, finding that room free, made the reserve again
    # in it (as it connected, or after its transaction), so that the first one's journal found
    # none ("no space left ... for the index"), and its release left the repository in use.
    blobs = [tmp_path / f"blob{n}.bin" for n in range(16)]
    for blob in blobs:
        blob.write_bytes(os.urandom(200_000))
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "full", "8m") as mount:
        for round in range(12):
            held = subprocess.run([sys.executable, "-c", HOLD_EACH, str(mount), str(owner.pid), *map(str, blobs)],
                                  capture_output=True, text=True, timeout=60)
            assert held.returncode == 0, held.stderr
            filler = fill(mount)
            done = finish([sc_start("gc", "-d", str(mount)) for _ in range(8)]
                          + [sc_start("--unuse", "-n", blob.stem, "-d", str(mount), "--pid", str(owner.pid),
                                      f"file:{blob}") for blob in blobs])
            assert [(status, err) for status, _, err in done] == [(0, "")] * len(done), \
                f"round {round}: {[err for _, _, err in done if err]}"
            assert not [blob.stem for blob in blobs if (user_dir(mount) / blob.stem).exists()], f"round {round}"
            filler.unlink()


def test_a_population_on_a_full_file_system_evicts_kept_data_and_retries(tmp_path, small_fs):  # noqa: F811
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000))
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(200_000))
    with Sleeper() as owner:
        common = ["-d", str(small_fs), "--pid", str(owner.pid)]
        assert sc("--use", "-n", "kept", "--keep", *common, f"file:{blob}").returncode == 0
        assert sc("--unuse", "-n", "kept", *common, f"file:{blob}").returncode == 0
        filler = fill(small_fs)
        # The first write (the status record) meets ENOSPC: the kept repository makes room.
        made = sc("--use", "-n", "new", *common, f"file:{other}")
        assert made.returncode == 0, made.stderr
        assert not (user_dir(small_fs) / "kept").exists()
        assert (user_dir(small_fs) / "new" / "other.bin").read_bytes() == other.read_bytes()

        # Nothing to evict: one clear line, nothing left behind.
        fill(small_fs)
        failed = sc("--use", "-n", "more", *common, f"file:{blob}")
        assert failed.returncode == 1
        assert "space" in one_line(failed.stderr)
        cache = control(small_fs)
        assert list((cache / "stage").iterdir()) == []
        assert not (user_dir(small_fs) / "more").exists()
        assert not any(p.name.startswith("more") for p in (cache / "populate").iterdir()
                       if p.name not in ("more.lock", "more.error"))
        filler.unlink()
        assert sc("gc", "-d", str(small_fs)).returncode == 0


def test_a_file_system_out_of_inodes_is_named_as_such(tmp_path):
    # ENOSPC also means that no inode is left, while df shows free space: a tree of many small
    # files meets that first on a tmpfs or a disk made with few inodes.  The line says which.
    files = {f"d/{i}.txt": b"x" * 100 for i in range(400)}
    archive, zipped = tmp_path / "many.tar.gz", tmp_path / "many.zip"
    make_tarball(archive, files)
    with zipfile.ZipFile(zipped, "w") as out:
        for name, data in files.items():
            out.writestr(name, data)
    # (A zip is spooled first: the spool's removal gave an inode back before the line was made.)
    for source, unpacker in ((archive, "tar"), (zipped, "zip")):
        with Sleeper() as owner, mounted_tmpfs(tmp_path / f"few-{unpacker}", "64m", inodes=150) as few:
            common = ["-d", str(few), "--pid", str(owner.pid), "-n", "many"]
            failed = sc("--use", *common, f"file:{source}", unpacker)
            assert failed.returncode == 1
            line = one_line(failed.stderr)
            assert "no space left on the device" in line and line.endswith(": no free inodes (see df -i)\n"), line
            assert list((control(few) / "stage").iterdir()) == []
            assert not (user_dir(few) / "many").exists()
            assert os.statvfs(few).f_ffree > 100  # the failed tree gave its inodes back
    # Out of blocks, with inodes to spare: no word of inodes.
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "small", "1m") as small:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(2_000_000))
        failed = sc("--use", "-d", str(small), "--pid", str(owner.pid), f"file:{big}")
        line = one_line(failed.stderr)
        assert failed.returncode == 1 and "no space left on the device" in line and "inode" not in line, line
        # The full file system is named, not only the source (it read as the source's device),
        # and how much of the data was written by then: the least room it needs.
        assert f"no space left on the device of {small} for {big} after " in line, line
        assert re.search(r" after \d+(\.\d)? (KiB|MiB) of its data$", line.rstrip("\n")), line


def test_the_first_population_of_a_new_cache_that_finds_no_room_names_its_data(tmp_path, small_fs, origin):  # noqa: F811
    # Its download, kept for a takeover, still takes the room when the population evicts: the
    # eviction opened the new cache's index for the first time, with no room for its journal,
    # and its own error replaced the population's ("... for the index of cache ...").
    payload = os.urandom(4_000_000)
    url = origin.add("/big.bin", payload)
    with Sleeper() as owner:
        failed = sc("--use", "-d", str(small_fs), "--pid", str(owner.pid), "-n", "big",
                    f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}")
    assert failed.returncode == 1
    line = one_line(failed.stderr)
    assert f"no space left on the device of {small_fs} for {url} after " in line, line
    assert "index" not in line, line


def test_a_population_in_progress_reserves_only_what_it_has_yet_to_write(tmp_path, origin):
    # A population of --size 6MiB two thirds done on an 8 MiB file system: 4 MiB written (off
    # the free space already), 2 MiB to come.  Its whole size was reserved on top of what it had
    # written, and a use of --size 1MiB, which fits, was refused with "0 B free".
    payload = os.urandom(6 << 20)
    url = origin.add("/big.bin", payload)
    origin.rate = 2_000_000
    small = tmp_path / "small.txt"
    small.write_text("hello\n")
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "m", "8m") as mount:
        common = ["-d", str(mount), "--pid", str(owner.pid)]
        big = sc_start("--use", *common, "-n", "big", "--size", "6MiB", f"http:{url}",
                       f"sha256:{hashlib.sha256(payload).hexdigest()}")
        try:
            status = control(mount) / "populate" / "big.json"

            def written() -> int:
                try:
                    return int(json.loads(status.read_bytes()).get("done", 0))
                except (OSError, ValueError):
                    return 0

            wait_for(lambda: written() >= 4 << 20, timeout=30, what="4 MiB of the download")
            fits = sc("--use", *common, "-n", "small", "--size", "1MiB", f"file:{small}")
            assert fits.returncode == 0, fits.stderr
        finally:
            origin.rate = None
            (done, _out, err), = finish([big])
        assert done == 0, err


#: ``sc`` (``python -c PAUSED_AS_IT_CHOOSES FLAGS ARGS...``, given candidate directories) that stops
#: once it has read what the populations under way in the first one reserve, before it chooses,
#: until FLAGS/go exists (FLAGS/paused says it waits).
PAUSED_AS_IT_CHOOSES = """
import os, runpy, sys, time
flags = sys.argv.pop(1)
listed = []
def pause(event, args):
    if event == "os.listdir" and str(args[0]).startswith("/proc/self/fd/"):  # (a cache's populate/)
        listed.append(args[0])
        if len(listed) == 2:
            open(flags + "/paused", "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(flags + "/go") and time.monotonic() < deadline:
                time.sleep(0.01)
sys.addaudithook(pause)
sys.argv[0] = "sc"
runpy.run_module("sharedcache", run_name="__main__")
"""


def test_two_uses_that_choose_a_base_at_once_do_not_both_take_its_room(tmp_path, origin):
    # Two uses of --size 6MiB, with two empty 8 MiB file systems to choose from, that chose at the
    # same moment both saw the first one empty, both downloaded there, and both failed for space,
    # the other left empty.  The later reservation now gives up the base, and the other
    # candidates of its file system (two here, as /tmp and /var/tmp on one disk), and chooses again.
    payload = os.urandom(6 << 20)
    url = origin.add("/big.bin", payload)
    recipe = [f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}"]
    flags = tmp_path / "flags"
    flags.mkdir()
    with (Sleeper() as owner, mounted_tmpfs(tmp_path / "first", "8m") as first,
          mounted_tmpfs(tmp_path / "second", "8m") as second):
        bases = [first / "one", first / "two", second]
        common = ["--use", "-d", ":".join(map(str, bases)), "--pid", str(owner.pid), "--size", "6MiB"]
        small = tmp_path / "small.txt"
        small.write_text("hello\n")
        for base in bases:  # (their caches made, as on a node in use)
            base.mkdir(exist_ok=True)
            assert sc("--use", "-d", str(base), "--pid", str(owner.pid), "-n", "warm", f"file:{small}").returncode == 0
        later = subprocess.Popen([sys.executable, "-c", PAUSED_AS_IT_CHOOSES, str(flags), *common, "-n", "later",
                                  *recipe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sc_env())
        earlier = None
        try:
            wait_for((flags / "paused").exists, timeout=30, what="the later use's choice")
            earlier = sc_start(*common, "-n", "earlier", *recipe)
            wait_for((control(bases[0]) / "populate" / "earlier.json").exists, timeout=30,
                     what="the earlier use's reservation")
        finally:
            (flags / "go").touch()
            results = finish([later] if earlier is None else [later, earlier])
        assert [status for status, _, _ in results] == [0, 0], results
        assert results[0][1].strip() == str(user_dir(second) / "later")
        assert results[1][1].strip() == str(user_dir(bases[0]) / "earlier")


def take_every_inode(mount: Path, taken: list[Path]) -> None:
    """Create empty files in ``mount`` (added to ``taken``) until no inode is left, as another
    user of a shared tmpfs may."""
    (mount / "inodes").mkdir(exist_ok=True)
    while True:
        path = mount / "inodes" / str(len(taken))
        try:
            path.touch()
        except OSError as e:
            assert e.errno == errno.ENOSPC
            break
        taken.append(path)
    assert os.statvfs(mount).f_favail == 0


def test_a_download_goes_on_while_another_job_holds_the_last_inode(tmp_path, origin):
    # Its data needs blocks only, but its progress records (the status its waiters read, twice
    # a second, and the partial's checkpoint) are each written as a new file: the first written
    # while another job held the last inode failed the download, its partial thrown away.
    payload = os.urandom(3_000_000)
    origin.rate = 1_000_000  # three seconds: several records are due while the inodes are taken
    url = origin.add("/big.bin", payload)
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "few", "40m", inodes=500) as few:
        use = sc_start("--use", "-n", "big", "-d", str(few), "--pid", str(owner.pid), f"http:{url}")
        taken: list[Path] = []
        try:
            wait_for(lambda: origin.stats("/big.bin").bytes_served > 300_000, what="the download to start")
            take_every_inode(few, taken)
            # (A third of it: the records due meanwhile meet no inode, the commit's finds them.)
            wait_for(lambda: use.poll() is not None or origin.stats("/big.bin").bytes_served > 1_500_000,
                     what="records written meanwhile")
        finally:
            for path in taken:
                path.unlink()
        [(status, out, err)] = finish([use])
        assert status == 0, err
        assert (Path(out.strip()) / "big.bin").read_bytes() == payload
        assert origin.stats("/big.bin").gets == 1, "the download started over"


def test_release_gc_list_and_a_warm_use_work_on_a_file_system_out_of_inodes(tmp_path):
    # Bytes to spare, but another user took every inode: SQLite could not make the index's
    # journals (-wal, -shm), so a release and sc list failed and advised a gc; gc failed on its
    # lock probe's new file; uses failed naming a descriptor's path, not the file system.
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(100_000))
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "few", "8m", inodes=400) as few:
        common = ["-d", str(few), "--pid", str(owner.pid)]
        kept, held = ["-n", "kept", *common, f"file:{blob}"], ["-n", "held", *common, f"file:{blob}"]
        assert sc("--use", "--keep", *kept).returncode == 0
        assert sc("--unuse", *kept).returncode == 0
        assert sc("--use", *held).returncode == 0
        taken: list[Path] = []
        take_every_inode(few, taken)

        listed = sc("list", "-d", str(few))
        assert listed.returncode == 0, listed.stderr
        assert {"kept", "held"} <= set(listed.stdout.split()), listed.stdout
        take_every_inode(few, taken)
        collected = sc("gc", "-d", str(few))
        assert collected.returncode == 0, collected.stderr

        # A warm use is a lease, an empty file: one inode, which it fails in one line without.
        take_every_inode(few, taken)
        failed = sc("--use", *kept)
        assert failed.returncode == 1
        line = one_line(failed.stderr)
        assert f"no space left on the device of {few} " in line and line.endswith(": no free inodes (see df -i)\n"), line
        taken.pop().unlink()
        warm = sc("--use", *kept)
        assert warm.returncode == 0, warm.stderr
        take_every_inode(few, taken)
        assert sc("--unuse", *kept).returncode == 0

        take_every_inode(few, taken)
        released = sc("--unuse", *held)
        assert released.returncode == 0, released.stderr
        assert not (user_dir(few) / "held").exists()
        reserve = control(few)
        assert (reserve / "index.reserve").exists() and (reserve / "index.reserve-inode").exists(), \
            "no reserve after the release"

        # A cold use: the unused kept repository gives its inodes back (too few for the new
        # one here), and the use fails in one line naming the file system, leaving nothing.
        take_every_inode(few, taken)
        failed = sc("--use", "-n", "cold", *common, f"file:{blob}")
        assert failed.returncode == 1
        line = one_line(failed.stderr)
        assert f"no space left on the device of {few}" in line and "/proc/" not in line, line
        assert not (user_dir(few) / "kept").exists() and not (user_dir(few) / "cold").exists()
        for path in taken:
            path.unlink()
        assert sc("gc", "-d", str(few)).returncode == 0
        assert list((control(few) / "stage").iterdir()) == []


def test_a_base_on_a_read_only_file_system_is_skipped_with_one_line_saying_so(tmp_path):
    # Its cache was made before the file system became read-only: a miss failed on a lock file
    # named by a /proc path, a use of ready data on a lease's path, both without naming the
    # base; the next candidate was not tried; and sc list advised a gc that could not help.
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n" * 100)
    other = tmp_path / "other"
    other.mkdir()
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "ro", "8m") as ro:
        common = ["--pid", str(owner.pid), f"file:{source}"]
        assert sc("--use", "--keep", "-d", str(ro), "-n", "ready", *common).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, capture_output=True, timeout=30)
        for name in ("ready", "missing"):
            failed = sc("--use", "-d", str(ro), "-n", name, *common)
            assert failed.returncode == 1, failed.stderr
            line = one_line(failed.stderr)
            assert str(ro) in line and "read-only file system" in line and "/proc/" not in line, line
            moved = sc("--use", "-d", f"{ro}:{other}", "-n", name, *common)
            assert moved.returncode == 0, moved.stderr
            assert moved.stdout.strip() == str(user_dir(other) / name)
        listed = sc("list", "-d", str(ro))
        assert listed.returncode == 1 and "read-only file system" in one_line(listed.stderr)
        assert "gc" not in listed.stderr, listed.stderr
        for order in (f"{ro}:{other}", f"{other}:{ro}"):  # it failed whole, listing nothing
            listed = sc("list", "-d", order)  # (the other listed, and a base -d names skipped: exit 1)
            assert listed.returncode == 1, listed.stderr
            assert {"ready", "missing"} <= set(listed.stdout.split()), listed.stdout
            assert one_line(listed.stderr) == f"sc: skipping {ro}: a read-only file system\n"
        collected = sc("gc", "-d", str(ro))  # (asked to collect there, and unable to)
        assert collected.returncode == 1 and one_line(collected.stderr) == f"sc: skipping {ro}: a read-only file system\n"
        # The release of a use there cannot remove its lease: said of the repository and the
        # base (it named the lease's file alone, as an error of the system), and held still.
        released = sc("--unuse", "-d", str(ro), "-n", "ready", *common)
        assert released.returncode == 1, released.stderr
        assert one_line(released.stderr) == (f"sc: error: cannot release the use of repository 'ready' in {ro}: "
                                             "a read-only file system\n")


def test_the_end_of_sc_run_and_of_use_on_a_file_system_gone_read_only_says_so_as_unuse_does(tmp_path):
    # Remounted read-only while the command ran (an admin, or the kernel after an I/O error):
    # sc run printed the system's bare error naming a lease's file, and use() raised a plain
    # OSError, where --unuse says which repository could not be released, and where.
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n" * 100)
    with mounted_tmpfs(tmp_path / "ro", "8m") as ro:
        common = ["-d", str(ro), "-n", "ready", f"file:{source}"]
        assert sc("--keep", "run", *common, "--", "true").returncode == 0
        expected = f"cannot release the use of repository 'ready' in {ro}: a read-only file system"
        try:
            ran = sc("run", *common, "--", "mount", "-o", "remount,ro", str(ro))
            assert ran.returncode == 1, ran.stderr
            assert one_line(ran.stderr) == f"sc: error: {expected}\n"
            subprocess.run(["mount", "-o", "remount,rw", str(ro)], check=True, capture_output=True, timeout=30)
            code = ("import subprocess, sys, sharedcache\n"
                    "try:\n"
                    "    with sharedcache.use(sys.argv[2], name='ready', directories=[sys.argv[1]]):\n"
                    "        subprocess.run(['mount', '-o', 'remount,ro', sys.argv[1]], check=True)\n"
                    "except sharedcache.CacheError as e:\n"
                    "    print(e)\n")
            used = subprocess.run([sys.executable, "-c", code, str(ro), f"file:{source}"], capture_output=True,
                                  text=True, timeout=60, env=sc_env())
            assert (used.returncode, used.stdout, used.stderr) == (0, f"{expected}\n", "")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(ro)], capture_output=True, timeout=30)


def test_a_cache_made_without_population_files_is_looked_at_on_a_read_only_file_system(tmp_path):
    # A cache made by FsCache alone has no populate/: on a file system mounted read-only, sc list
    # and --location failed on making it ("Read-only file system: populate"), where they had
    # answered from what is ready.
    code = ("import os, sys; from sharedcache import FsCache\n"
            "os.makedirs(sys.argv[1], mode=0o700); cache = FsCache(sys.argv[1] + '/.cache')\n"
            "with cache.store('entry') as data: (data / 'f').write_text('x')\n")
    with mounted_tmpfs(tmp_path / "ro", "8m") as ro:
        made = subprocess.run([sys.executable, "-c", code, str(user_dir(ro))], capture_output=True, text=True,
                              timeout=60, env=sc_env())
        assert made.returncode == 0, made.stderr
        assert not (control(ro) / "populate").exists()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, capture_output=True, timeout=30)
        listed = sc("list", "-d", str(ro))
        assert "populate" not in listed.stderr, listed.stderr
        located = sc("--location", "-d", str(ro), "-n", "missing", f"file:{tmp_path}/none")
        assert (located.returncode, located.stderr) == (1, ""), located.stderr


def test_every_write_of_an_fscache_on_a_read_only_file_system_says_so_of_the_cache(tmp_path):
    # store() and remove() said so of the index, where stage(), hold() (its lease, or a dead
    # use's it removes) and gc() (its probe of file locks) raised the system's bare error,
    # naming a file of no meaning to the caller.
    with mounted_tmpfs(tmp_path / "ro", "8m") as ro:
        cache = FsCache(ro / "cache")
        for name in ("entry", "used by the dead"):
            with cache.store(name) as data:
                (data / "f").write_text("x")
        with Sleeper() as ended:
            cache.hold("used by the dead", Owner.of(ended.pid))
        cache.close()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, capture_output=True, timeout=30)

        def stage() -> None:
            with cache.stage():
                pass

        for call in (stage, lambda: cache.hold("entry", Owner.current()),
                     lambda: cache.hold("used by the dead", Owner.current()), cache.gc):
            with pytest.raises(CacheError) as raised:
                call()
            assert str(raised.value) == f"cache {ro}/cache cannot be written: it is on a read-only file system"
        cache.close()


def test_a_base_with_no_room_for_a_cache_is_skipped_with_one_line_saying_so(tmp_path):
    # A full first candidate where this user had no cache yet failed every command with the
    # system's bare "No space left on device" (or naming "populate", "index.sqlite"), never
    # trying the next candidate; use() raised a bare OSError.
    source = tmp_path / "small.txt"
    source.write_text("hello\n")
    api = """
import sys, sharedcache
try:
    with sharedcache.use(sys.argv[1], name="api", directories=sys.argv[2:]) as path:
        print(path)
except sharedcache.SharedCacheError as e:
    print("error:", e)
"""
    with (Sleeper() as owner, mounted_tmpfs(tmp_path / "full", "1m") as full_fs,
          mounted_tmpfs(tmp_path / "inodes", "8m", inodes=100) as inodes, mounted_tmpfs(tmp_path / "few", "8m", inodes=7) as few,
          mounted_tmpfs(tmp_path / "room", "8m") as room):
        fill(full_fs)
        take_every_inode(inodes, [])
        for base, why in ((full_fs, ""), (inodes, ": no free inodes (see df -i)"),
                          (few, ": no free inodes (see df -i)")):  # (few: room for all but populate/)
            skipped = f"sc: skipping {base}: no space left on the device of {base} for "
            name = base.name
            used = sc("--use", "-d", f"{base}:{room}", "--pid", str(owner.pid), "-n", name, f"file:{source}")
            assert used.returncode == 0, used.stderr
            assert used.stdout.strip() == str(user_dir(room) / name)
            line = one_line(used.stderr)
            assert line.startswith(skipped) and line.endswith(f"{why}\n"), line
            listed = sc("list", "-d", f"{base}:{room}")  # (a base it names and skips fails it)
            assert name in listed.stdout.split(), listed.stdout
            if listed.returncode == 1:
                assert one_line(listed.stderr).startswith(skipped), listed.stderr
            else:  # (nothing to skip where no cache could be made, and said so)
                assert listed.stderr in ("", f"sc: {base}: no cache of yours here\n"), listed.stderr
            collected = sc("gc", "-d", str(base))  # (a base it names and skips fails it)
            assert collected.returncode == (1 if collected.stderr else 0), collected.stderr
            assert collected.stderr == "" or one_line(collected.stderr).startswith(skipped), collected.stderr
            alone = subprocess.run([sys.executable, "-c", api, f"file:{source}", str(base)],
                                   capture_output=True, text=True, timeout=60)
            assert alone.stdout.startswith("error: ") and "no space left on the device of" in alone.stdout, \
                (alone.stdout, alone.stderr)


def test_the_lock_probe_of_a_file_system_out_of_inodes_waits_for_nobody(tmp_path, monkeypatch):
    # With no inode for a probe file, gc probes its locks on cache.info, which every member of a
    # group cache can open: one holding a lock on it (for as long as it likes) made every gc
    # wait for good.  That lock is itself the exclusion asked about.
    import fcntl
    import threading

    from sharedcache.engine import locks

    (tmp_path / "cache.info").write_text("shared-cache fscache 3\n")
    held = os.open(tmp_path / "cache.info", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)
    real = locks.open_lock_file

    def no_inode(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).startswith(".lockprobe"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(locks, "open_lock_file", no_inode)
    answer: list[bool] = []
    probe = threading.Thread(target=lambda: answer.append(locks.locks_work(tmp_path, "cache.info")), daemon=True)
    probe.start()
    probe.join(10)
    try:
        assert answer == [True], "the probe waited for another's lock on cache.info"
    finally:
        os.close(held)
        probe.join(10)
    # Unlocked, it is probed as before.
    assert locks.locks_work(tmp_path, "cache.info")


def test_a_lock_or_a_lease_without_an_inode_evicts_one_unused_repository_at_a_time(tmp_path):
    # A lease or a population's lock file is one empty file: one inode.  Without it a warm use
    # failed, though unused kept repositories could give theirs back; and a cold use's lock file
    # evicted every unused repository where the least recently used one made room.
    tarball = tmp_path / "many.tar.gz"
    make_tarball(tarball, {f"d/{i}.txt": b"x" * 100 for i in range(30)})
    small = tmp_path / "small.bin"
    small.write_bytes(b"small\n")
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "few", "16m", inodes=600) as few:
        common = ["-d", str(few), "--pid", str(owner.pid)]
        for name in ("oldest", "older", "old", "wanted"):  # in this order of last use
            recipe = ["-n", name, *common, f"file:{tarball}", "tar"]
            assert sc("--use", "--keep", *recipe).returncode == 0
            assert sc("--unuse", *recipe).returncode == 0
        taken: list[Path] = []
        take_every_inode(few, taken)
        warm = sc("--use", "-v", "-n", "wanted", *common, f"file:{tarball}", "tar")
        assert warm.returncode == 0, warm.stderr
        said = [line for line in warm.stderr.splitlines() if "evicted" in line]
        assert len(said) == 1 and f"no space left on the device of {few} " in said[0], warm.stderr
        assert ": no free inodes (see df -i); evicted " in said[0], said
        assert not (user_dir(few) / "oldest").exists() and (user_dir(few) / "older").exists()

        take_every_inode(few, taken)
        cold = sc("--use", "-v", "-n", "fresh", *common, f"file:{small}")
        assert cold.returncode == 0, cold.stderr
        assert sum("evicted" in line for line in cold.stderr.splitlines()) == 1, cold.stderr
        assert not (user_dir(few) / "older").exists() and (user_dir(few) / "old").exists()
        listed = sc("list", "-d", str(few))
        assert {"old", "wanted", "fresh"} <= set(listed.stdout.split()), listed.stdout
        for path in taken:
            path.unlink()


def test_every_retry_and_failure_on_a_file_system_out_of_inodes_says_so(tmp_path):
    # A population that met ENOSPC while it made its staging directory or committed said so
    # only once that directory was removed, which gave its inodes back: the line, its retry's
    # or its failure's, then said nothing of inodes.  Each number of inodes left, in turn.
    blob, small = tmp_path / "blob.bin", tmp_path / "small.bin"
    blob.write_bytes(os.urandom(10_000))
    small.write_bytes(b"small\n")
    with Sleeper() as owner, mounted_tmpfs(tmp_path / "few", "16m", inodes=800) as few:
        common = ["-d", str(few), "--pid", str(owner.pid)]
        taken: list[Path] = []
        met = 0
        for left in range(1, 11):
            kept = ["-n", f"kept{left}", *common, f"file:{blob}"]
            assert sc("--use", "--keep", *kept).returncode == 0
            assert sc("--unuse", *kept).returncode == 0
            take_every_inode(few, taken)
            for _ in range(left):
                taken.pop().unlink()
            used = sc("--use", "-v", "-n", f"cold{left}", *common, f"file:{small}")
            full = [line for line in used.stderr.splitlines() if "no space left" in line]
            assert all(": no free inodes (see df -i)" in line for line in full), (left, used.stderr)
            met += bool(full)
            for path in taken:
                path.unlink()
            taken.clear()
        assert met >= 5, "too few uses met a full file system to tell anything"


def limited_to(descriptors: int):  # type: ignore[no-untyped-def]
    """A ``preexec_fn`` that lets the child open ``descriptors`` files (its soft RLIMIT_NOFILE)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, hard))


def out_of_files(err: str, descriptors: int) -> None:
    line = one_line(err)
    assert f"too many open files: this process may open {descriptors} (ulimit -n); raise the limit" in line, line
    assert not any(word in line for word in ("gc", "not a directory", "no longer")), line


API_USE = """
import sys, sharedcache
try:
    with sharedcache.use(*sys.argv[2:], name="api", directories=sys.argv[1]):
        pass
except sharedcache.SharedCacheError as e:
    sys.exit(f"{type(e).__name__}: {e}")
"""


def test_a_process_out_of_file_descriptors_says_so_and_leaves_nothing_to_repair(tmp_path):
    # Each descriptor short of what a command needs met EMFILE at another open, which was said
    # as damage ("... is not a directory of this cache (Too many open files); run gc to repair
    # it"), recorded as the repository's failure, or as a bare "Too many open files: NAME".
    # Every limit, in turn: a cold use, list, gc, a warm use, a release and the API each
    # succeed or say which limit ran out; and with the limit back the same base works, no gc.
    archive = tmp_path / "data.tar.gz"
    md5 = make_tarball(archive, {"d/a.txt": b"a\n", "d/e/b.txt": b"b\n", "d/e/f/c.txt": b"c\n"})
    recipe = [f"file:{archive}", f"md5:{md5}", "tar"]
    ready = tmp_path / "ready"
    ready.mkdir()
    said = 0
    with Sleeper() as owner:
        kept = ["-n", "kept", "-d", str(ready), "--pid", str(owner.pid), *recipe]
        assert sc("--use", "--keep", *kept).returncode == 0
        assert sc("--unuse", *kept).returncode == 0
        index = (control(ready) / "index.sqlite").stat().st_ino
        held = 0  # the uses of "kept" the job holds
        for descriptors in range(4, 21):
            limit = limited_to(descriptors)
            if subprocess.run([sys.executable, "-c", "pass"], preexec_fn=limit).returncode:
                continue  # the interpreter itself cannot start with so few
            base = tmp_path / f"base{descriptors}"
            base.mkdir()
            cold = ["-n", "r", "-d", str(base), "--pid", str(owner.pid), *recipe]
            for command in (["--use", *cold], ["list", "-d", str(base)], ["gc", "-d", str(base)], ["--use", *cold],
                            ["--use", *kept], ["--unuse", *kept], ["gc", "-d", str(ready)], ["list", "-d", str(ready)]):
                run = sc(*command, preexec_fn=limit)
                if command[-len(kept):] == kept:
                    held += {"--use": 1, "--unuse": -1}[command[0]] if run.returncode == 0 else 0
                    if command[0] == "--unuse" and held == 0 and run.returncode == 1 and "holds no use" in run.stderr:
                        continue  # the use before it ran out of descriptors: there is none to release
                # (A base where the cold use ran out of descriptors before it made the cache is one
                # that holds none: list says so, and that is no failure.)
                if run.returncode != 0 or run.stderr not in ("", f"sc: {base}: no cache of yours here\n"):
                    assert run.returncode == 1, (descriptors, command, run.stderr)
                    out_of_files(run.stderr, descriptors)
                    said += 1
            api = subprocess.run([sys.executable, "-c", API_USE, str(ready), *recipe], preexec_fn=limit,
                                 capture_output=True, text=True, timeout=60)
            assert api.returncode == 0 or api.stderr.startswith("OutOfFilesError: "), (descriptors, api.stderr)
            if api.returncode:
                out_of_files("sc: " + api.stderr.removeprefix("OutOfFilesError: "), descriptors)

            # Nothing recorded as the repository's failure, nothing to repair: the same base works.
            listed = sc("list", "-d", str(base))
            assert listed.returncode == 0 and "fail" not in listed.stdout + listed.stderr, listed.stdout
            again = sc("--use", *cold)
            assert again.returncode == 0 and not again.stderr, (descriptors, again.stderr)
            assert (Path(again.stdout.strip()) / "d" / "e" / "f" / "c.txt").read_bytes() == b"c\n"
            assert sc("--unuse", *cold).returncode == 0
        assert sc("--use", *kept).returncode == 0, "the kept repository was lost"
        listed = json.loads(sc("list", "--json", "-d", str(ready)).stdout)
        assert [row["users"] for row in listed] == [[owner.pid] * (held + 1)], "a failed command took or left a use"
        assert (control(ready) / "index.sqlite").stat().st_ino == index, "gc set the index aside"
    assert said >= 10, "too few commands ran out of descriptors to tell anything"


def test_a_process_out_of_file_descriptors_takes_no_live_job_for_gone(tmp_path):
    # A lease's job is looked up in /proc: with no descriptor for the lookup, it must not read as
    # gone (a gc or a use would reclaim the use of a job that lives, and delete its data).
    archive = tmp_path / "data.tar.gz"
    md5 = make_tarball(archive, {"d/a.txt": b"a\n"})
    with Sleeper() as owner:
        held = ["-n", "held", "-d", str(tmp_path), "--pid", str(owner.pid), f"file:{archive}", f"md5:{md5}", "tar"]
        path = Path(sc("--use", *held).stdout.strip())
        for descriptors in range(5, 21):
            for command in (["gc", "-d", str(tmp_path)], ["list", "-d", str(tmp_path)], ["--use", *held[:-4]]):
                sc(*command, preexec_fn=limited_to(descriptors))
            assert (path / "d" / "a.txt").read_bytes() == b"a\n", f"a live job's repository went at {descriptors}"
            users = json.loads(sc("list", "--json", "-d", str(tmp_path)).stdout)
            assert [row["owners"] for row in users if row["name"] == "held"] == [[str(owner.pid)]], descriptors


def test_gc_out_of_file_descriptors_takes_no_repository_for_a_leftover(tmp_path):
    # With its index lost, gc adopts the committed repositories it finds; one whose marker it
    # could not open for want of a descriptor was taken for a leftover and put in the trash.
    archive = tmp_path / "data.tar.gz"
    md5 = make_tarball(archive, {"d/a.txt": b"a\n"})
    kept = ["-n", "kept", "-d", str(tmp_path), "--keep", f"file:{archive}", f"md5:{md5}", "tar"]
    with Sleeper() as owner:
        assert sc("--use", *kept, "--pid", str(owner.pid)).returncode == 0
        assert sc("--unuse", *kept, "--pid", str(owner.pid)).returncode == 0
    data = user_dir(tmp_path) / "kept" / "d" / "a.txt"
    for descriptors in range(5, 21):
        for index in control(tmp_path).glob("index.sqlite*"):
            index.unlink()
        gc = sc("gc", "-d", str(tmp_path), preexec_fn=limited_to(descriptors))
        assert data.read_bytes() == b"a\n", f"gc with {descriptors} descriptors removed a kept repository"
        if gc.returncode:
            out_of_files(gc.stderr, descriptors)


def limited_in_size(size: int):  # type: ignore[no-untyped-def]
    """A ``preexec_fn`` that lets the child write files of ``size`` bytes at most (``ulimit -f``)."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))


def file_too_large(err: str, size: int) -> None:
    line = one_line(err)
    assert f"file too large: this process may write files of at most {size} bytes (ulimit -f); raise the limit" \
        in line, line
    assert not any(word in line for word in ("gc", "unusable", "no space", "evicted")), line


def test_a_process_at_its_file_size_limit_says_so_and_judges_nothing_from_it(tmp_path):
    # Under `ulimit -f`, a write past the limit fails with EFBIG (Python ignores SIGXFSZ), a
    # write across it is short.  The data's file said "File too large", recorded as the
    # repository's failure for every waiter; the index's files said "the index ... is unusable
    # (disk I/O error); run gc to rebuild it", and gc under the limit set the index aside; a
    # short write to SQLite's journal reads as a full disk, which evicts others' kept data.
    archive = tmp_path / "data.tar.gz"
    md5 = make_tarball(archive, {"d/big.bin": os.urandom(150_000), "d/a.txt": b"a\n"})
    recipe = [f"file:{archive}", f"md5:{md5}", "tar"]
    small = tmp_path / "small.txt"
    small.write_bytes(b"s\n")
    ready = tmp_path / "ready"
    ready.mkdir()
    said = 0
    with Sleeper() as owner:
        kept = ["-n", "kept", "-d", str(ready), "--pid", str(owner.pid), f"file:{small}"]
        assert sc("--use", "--keep", *kept).returncode == 0
        assert sc("--unuse", *kept).returncode == 0
        index = (control(ready) / "index.sqlite").stat().st_ino
        for size in (200, 1000, 5000, 20_000, 40_000, 100_000):
            limit = limited_in_size(size)
            cold = ["-n", f"r{size}", "-d", str(ready), "--pid", str(owner.pid), *recipe]
            other = ["-n", f"s{size}", "-d", str(ready), "--pid", str(owner.pid), f"file:{small}"]
            used = False
            for command in (["--use", *cold], ["--use", *other], ["--unuse", *other], ["--use", *kept],
                            ["--unuse", *kept], ["gc", "-d", str(ready)], ["list", "-d", str(ready)]):
                if command == ["--unuse", *other] and not used:
                    continue  # (no repository to release)
                run = sc(*command, preexec_fn=limit)
                used = used or (command == ["--use", *other] and run.returncode == 0)
                if run.returncode != 0 or run.stderr:
                    assert run.returncode == 1, (size, command, run.stderr)
                    file_too_large(run.stderr, size)
                    said += 1
            listed = sc("list", "-d", str(ready))
            assert listed.returncode == 0 and "fail" not in listed.stdout + listed.stderr, listed.stdout
            again = sc("--use", *cold)
            assert again.returncode == 0 and not again.stderr, (size, again.stderr)
            assert (Path(again.stdout.strip()) / "d" / "a.txt").read_bytes() == b"a\n"
        assert sc("--use", *kept).returncode == 0 and "kept" in sc("list", "-d", str(ready)).stdout, \
            "the kept repository was lost"
        assert (control(ready) / "index.sqlite").stat().st_ino == index, "gc set the index aside"
    assert said >= 8, "too few commands met the file size limit to tell anything"


WRITE_ATOMIC = """
import os, resource, sys
from sharedcache.engine.fsutil import write_atomic
resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_atomic(sys.argv[1], b"x" * 1000)
except OSError as e:
    sys.exit(e.errno)
"""


def test_an_atomic_write_cut_short_by_the_file_size_limit_leaves_nothing(tmp_path):
    # os.write returns what it wrote: the first write across the limit was short, taken for whole,
    # and the record or marker renamed into place with its first 100 bytes.
    target = tmp_path / "record.json"
    run = subprocess.run([sys.executable, "-c", WRITE_ATOMIC, str(target)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == errno.EFBIG, run.stderr
    assert list(tmp_path.iterdir()) == []


def test_gc_clears_what_is_planted_at_the_reservations_lock(tmp_path):
    # A directory (or FIFO) at the lock's name fails every use that reserves, saying that gc
    # removes it; gc passed over every name starting with a dot, this one among them.
    source = tmp_path / "small.txt"
    source.write_text("hello\n")
    base = tmp_path / "base"
    base.mkdir()
    with Sleeper() as owner:
        use = ["--use", "-d", str(base), "--pid", str(owner.pid), "--size", "1KB", f"file:{source}"]
        assert sc(*use, "-n", "first").returncode == 0
        planted = control(base) / "populate" / ".reservations.lock"
        planted.unlink()
        planted.mkdir()
        refused = sc(*use, "-n", "second")
        assert refused.returncode == 1 and "(gc removes it)" in refused.stderr, refused.stderr
        collected = sc("gc", "-d", str(base))
        assert collected.returncode == 0, collected.stderr
        assert sc(*use, "-n", "second").returncode == 0


def _with_write_failing(nth: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``sc ARGS`` with its ``nth`` pwrite64 (SQLite's writes of the index's journal and pages)
    failing with ENOSPC: the file system filling between a transaction's look for room and
    its COMMIT."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: it injects the failed write")
    return subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64", "-e",
                           f"inject=pwrite64:error=ENOSPC:when={nth}", *SC, *args],
                          capture_output=True, text=True, timeout=60, env=sc_env())


def test_an_index_write_that_fails_at_commit_or_last_release_leaves_the_repository_as_it_was(tmp_path):
    # The rename into objects/ (at commit) and into the trash (at a last release) were inside
    # the index's transaction, and stayed when its COMMIT failed: a use that failed (its waiters
    # told so) left a committed entry without its row, served to the next use while sc list
    # said failed; a release that failed left the repository in the trash, its row and link
    # behind, and its retry said there was no repository.
    source = tmp_path / "d.tar"
    make_tarball(source, {f"d/f{i}": b"data" for i in range(5)})
    runs = {"commit": [0, 0], "release": [0, 0]}  # (failed, succeeded) of each
    with Sleeper() as owner:
        for nth in range(1, 80):
            base = tmp_path / f"commit-{nth}"
            base.mkdir()
            common = ["-d", str(base), "-n", "d", "--pid", str(owner.pid), f"file:{source}", "tar"]
            ran = _with_write_failing(nth, "--keep", "--use", *common)
            objects = control(base) / "objects"
            runs["commit"][ran.returncode == 0] += 1
            if ran.returncode != 0:
                assert "no space left" in ran.stderr, ran.stderr
                assert not objects.exists() or list(objects.iterdir()) == [], f"#{nth}: committed though it failed"
            elif runs["commit"][0]:
                break  # past the writes of the commit
        for nth in range(1, 80):
            base = tmp_path / f"release-{nth}"
            base.mkdir()
            common = ["-d", str(base), "-n", "d", "--pid", str(owner.pid), f"file:{source}", "tar"]
            assert sc("--use", *common).returncode == 0
            released = _with_write_failing(nth, "--unuse", *common)
            runs["release"][released.returncode == 0] += 1
            if released.returncode != 0:
                assert "no space left" in released.stderr, released.stderr
                entry = control(base) / "objects" / "d"
                assert len(list((entry / "leases").iterdir())) == 1, f"#{nth}: the use is not held still"
                assert (user_dir(base) / "d" / "d" / "f0").read_bytes() == b"data"
                again = sc("--unuse", *common)
                assert again.returncode == 0, again.stderr
                assert not entry.exists() and not (user_dir(base) / "d").exists()
            elif runs["release"][0]:
                break
    assert runs["commit"][0] and runs["commit"][1] and runs["release"][0] and runs["release"][1], runs


def kept_unused(common: list[str], origin, names: tuple[str, ...], size: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Make one kept repository of ``size`` random bytes for each of ``names`` (least recently
    used first), each released at once; return the recipe of each, by name."""
    recipes = {}
    for name in names:
        recipes[name] = f"http:{origin.add(f'/{name}.bin', os.urandom(size))}"
        made = sc("run", *common, "-n", name, "--keep", recipes[name], "--", "true")
        assert made.returncode == 0, made.stderr
    return recipes


def test_a_use_with_a_size_takes_the_room_of_unused_kept_repositories(tmp_path, origin):
    # Three unused kept repositories of 5 MB fill most of a 20 MiB file system: a use of --size
    # 6MB was refused ("no usable candidate directory has 5.7 MiB free") until a gc, though
    # evicting one of them made room.  The least recently used one goes, the others stay.
    with mounted_tmpfs(tmp_path / "m", "20m", 5000) as mount:
        common = ["-d", str(mount)]
        kept_unused(common, origin, ("a", "b", "c"), 5_000_000)
        url = origin.add("/d.bin", os.urandom(5_000_000))
        made = sc("run", *common, "--size", "6MB", "-n", "d", f"http:{url}", "--", "true")
        assert made.returncode == 0, made.stderr
        assert sorted(os.listdir(control(mount) / "objects")) == ["b", "c"]
        # What the unused ones cannot make up is none of theirs to give: nothing is evicted.
        refused = sc("run", *common, "--size", "30MB", "-n", "e", f"http:{url}", "--", "true")
        assert refused.returncode == 1 and "no usable candidate directory has 28.6 MiB free" in refused.stderr
        assert sorted(os.listdir(control(mount) / "objects")) == ["b", "c"]


def test_a_population_on_a_full_file_system_evicts_only_what_it_needs(tmp_path, origin):
    # Three unused kept repositories of 5.5 MB on a 20 MiB file system, and a fourth that meets
    # the full file system: every kept repository was evicted (all of them, where one would do),
    # and for a file whose size (Content-Length) could never fit, all of them for nothing.
    with mounted_tmpfs(tmp_path / "m", "20m", 5000) as mount:
        common = ["-d", str(mount)]
        kept_unused(common, origin, ("a", "b", "c"), 5_500_000)
        url = origin.add("/d.bin", os.urandom(5_500_000))
        made = sc("run", "-v", *common, "--keep", "-n", "d", f"http:{url}", "--", "true")
        assert made.returncode == 0, made.stderr
        assert "evicted 5.2 MiB of kept data, trying again" in made.stderr, made.stderr
        assert sorted(os.listdir(control(mount) / "objects")) == ["b", "c", "d"]

        huge = origin.add("/huge.bin", os.urandom(30_000_000))
        failed = sc("run", *common, "-n", "huge", f"http:{huge}", "--", "true")
        assert failed.returncode == 1
        assert f"no space left on the device of {mount} for {huge} after " in one_line(failed.stderr)
        assert sorted(os.listdir(control(mount) / "objects")) == ["b", "c", "d"]


def test_a_population_that_evicts_for_room_goes_on_from_what_it_downloaded(tmp_path, origin):
    # A 12 MB download on a 20 MiB file system that a kept repository of 9 MB fills: the retry
    # after the eviction fetched the whole file again from byte 0 (24 MB served), though the
    # partial download was there to go on from, as a takeover does (its checksum checks the whole).
    payload = os.urandom(12_000_000)
    with mounted_tmpfs(tmp_path / "m", "20m", 500) as mount:
        common = ["-d", str(mount)]
        kept_unused(common, origin, ("kept",), 9_000_000)
        url = origin.add("/new.bin", payload)
        made = sc("run", "-v", *common, "-n", "new", f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}",
                  "--", "true")
        assert made.returncode == 0, made.stderr
        assert "of kept data, trying again" in made.stderr, made.stderr
        stats = origin.stats("/new.bin")
        # (Beyond the file, what was in flight when the write failed: the sockets' buffers.)
        assert stats.statuses == [200, 206] and stats.bytes_served < len(payload) + (1 << 20), stats


@contextmanager
def _two_candidates(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two small tmpfs candidate directories, this user's cache made in the first."""
    small = tmp_path / "small.txt"
    small.write_text("hello\n")
    with (mounted_tmpfs(tmp_path / "a", "8m", 500) as first, mounted_tmpfs(tmp_path / "b", "8m", 500) as second):
        assert sc("run", "-d", str(first), f"file:{small}", "--", "true").returncode == 0  # (its cache made)
        yield first, second


def test_a_full_first_candidate_with_a_cache_gives_way_to_the_next(tmp_path, origin):
    # The first candidate, where this user's cache is, full (no block left, or no inode with
    # --size), the second empty: the use failed for space on the first, never trying the second.
    with _two_candidates(tmp_path) as (first, second):
        both = ["-d", f"{first}:{second}"]
        filler = fill(first)
        url = origin.add("/f.bin", os.urandom(3_000_000))
        used = sc("--use", *both, "-n", "f", f"http:{url}")
        assert used.returncode == 0, used.stderr
        assert used.stdout.strip() == str(user_dir(second) / "f")
        assert sc("--unuse", *both, "-n", "f", f"http:{url}").returncode == 0
        assert used.stderr.startswith(f"sc: skipping {first}: no space left on the device of {first} "), used.stderr
        filler.unlink()
        taken: list[Path] = []
        take_every_inode(first, taken)
        assert os.statvfs(first).f_bavail > 1000
        sized = sc("--use", *both, "--size", "4MB", "-n", "g", f"http:{url}")
        assert sized.returncode == 0, sized.stderr
        assert sized.stdout.strip() == str(user_dir(second) / "g")
        assert sc("--unuse", *both, "-n", "g", f"http:{url}").returncode == 0
        for path in taken:
            path.unlink()
        # Room for a third of the data, none to evict: the population fails there, and the use
        # is made in the next candidate, saying why.
        st = os.statvfs(first)
        (first / "other-job").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 1_000_000))
        moved = sc("--use", "-v", *both, "-n", "h", f"http:{url}")
        assert moved.returncode == 0, moved.stderr
        assert moved.stdout.strip() == str(user_dir(second) / "h")
        assert f"no space left on the device of {first} for {url} after " in moved.stderr
        assert "; trying the next candidate directory" in moved.stderr, moved.stderr


def test_a_repository_that_failed_in_one_candidate_and_was_made_in_the_next_is_listed_ready_alone(tmp_path, origin):
    # sc list showed it "failed" in the first candidate beside "ready" in the next, while every
    # use was served.
    with _two_candidates(tmp_path) as (first, second):
        both = ["-d", f"{first}:{second}"]
        st = os.statvfs(first)
        (first / "other-job").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 1_000_000))
        url = origin.add("/f.bin", os.urandom(3_000_000))
        with Sleeper() as job:
            args = [*both, "--pid", str(job.pid), "-n", "f", f"http:{url}"]
            moved = sc("--use", *args)
            assert moved.returncode == 0 and moved.stdout.strip() == str(user_dir(second) / "f"), moved.stderr
            assert list((control(first) / "populate").glob("f.error")), "no failure recorded in the first"
            listed = json.loads(sc("list", "--json", *both).stdout)
            assert [(row["name"], row["state"], row["base"]) for row in listed] == [("f", "ready", str(second))]
            assert sc("--unuse", *args).returncode == 0


def test_the_stage_of_a_store_killed_before_its_commit_leaves_the_trash_while_its_job_lives(tmp_path):
    # The trash of a private cache passed over a tree that held a commit marker and a live lease:
    # a store killed at its commit's rename, whose job lives on, left its whole download there,
    # which gc moved into the trash and never deleted until the job ended.
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: it kills the store at its commit's rename")
    (tmp_path / "base").mkdir()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(2_000_000))
    with Sleeper() as owner:
        common = ["-d", str(tmp_path / "base"), "-n", "r", "--pid", str(owner.pid)]
        killed = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=renameat",
                                 "-e", "inject=renameat:error=EIO:signal=KILL:when=1",
                                 *SC, "--use", *common, f"file:{blob}"],
                                capture_output=True, text=True, timeout=60, env=sc_env())
        assert killed.returncode != 0, killed.stderr
        stage = control(tmp_path / "base") / "stage"
        assert [path for path in stage.iterdir() if path.is_dir()], "no stage was left to look at"
        assert sc("gc", "-d", str(tmp_path / "base")).returncode == 0
        trash = control(tmp_path / "base") / "trash"
        assert not list(trash.iterdir()) and not [path for path in stage.iterdir() if path.is_dir()]


def test_a_use_that_waited_on_a_full_first_candidate_follows_its_populator_to_the_next(tmp_path, origin):
    # The populator fell over to the next candidate and succeeded there; its waiter read the
    # failure it recorded on the first and failed with "no space left", the data ready beside.
    origin.rate = 1_000_000
    url = origin.add("/f.bin", os.urandom(3_000_000))
    with mounted_tmpfs(tmp_path / "a", "1m", 500) as first, mounted_tmpfs(tmp_path / "b", "20m", 500) as second, \
            Sleeper() as owner:
        use = ["--use", "-d", f"{first}:{second}", "-n", "big", "--pid", str(owner.pid), f"http:{url}"]
        populator = sc_start(*use)
        wait_for(lambda: origin.stats("/f.bin").gets == 1, what="the population on the first")
        waiter = sc_start(*use)
        (populated, out, err), (waited, waiter_out, waiter_err) = finish([populator, waiter], timeout=60)
        assert (populated, waited) == (0, 0), (err, waiter_err)
        assert out.strip() == waiter_out.strip() == str(user_dir(second) / "big")
        assert origin.stats("/f.bin").gets <= 2  # the first try on the first candidate, then one
