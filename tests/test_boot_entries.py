"""Entries committed for this boot: on a local disk, an entry that nobody keeps is committed
without a flush, under a commit marker that names the boot of the machine; after a reboot it is
no entry, and the first use makes it again.  A kept entry is flushed: at its commit, or when a
use first keeps it.

Real parts: an ext4 file system in an image (a loop device: root), FIEMAP to see what is still
waiting to be written (delayed allocation), and a reboot as a process sees one: a mount
namespace whose ``/proc/sys/kernel/random/boot_id`` is another.  A power loss is shown as it
leaves data that was never written back: the entry's file read back as zeros.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scutil import (
    SC,
    Sleeper,
    check_tree,
    control,
    earlier_populator,
    finish,
    make_tarball,
    mounted_bindfs,
    mounted_tmpfs,
    on_host,
    pending,
    sc,
    sc_env,
    sc_start,
    stop_process,
    wait_for,
)
from sharedcache.engine.fscache import FsCache
from sharedcache.engine.leases import Owner, boot_id
from sharedcache.errors import MissError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")

OTHER_BOOT = "0badb007-0000-4000-8000-000000000000\n"


def markers(entry: Path) -> set[str]:
    return {path.name for path in entry.glob("entry.*json")}


def test_an_entry_nobody_keeps_is_committed_for_this_boot_without_a_flush(disk: Path) -> None:
    cache = FsCache(disk / "cache")
    with cache.store("job", meta="m", keep=False) as data:
        (data / "weights").write_bytes(os.urandom(4 * 2**20))
    with cache.store("kept", meta="m", keep=True) as data:
        (data / "weights").write_bytes(os.urandom(4 * 2**20))
    job, kept = disk / "cache" / "objects" / "job", disk / "cache" / "objects" / "kept"
    assert markers(job) == {f"entry.{boot_id()}.json"}
    assert pending(job / "data" / "weights"), "an entry nobody keeps was flushed"
    assert markers(kept) == {"entry.json"}
    assert not pending(kept / "data" / "weights")
    assert "job" in cache
    with cache.load("job") as path:
        assert (path / "weights").stat().st_size == 4 * 2**20


def test_a_use_that_keeps_an_entry_of_this_boot_flushes_it_first(disk: Path) -> None:
    cache = FsCache(disk / "cache")
    for name in ("held", "released"):
        with cache.store(name, meta="m", keep=False, holder=Owner.current()) as data:
            (data / "weights").write_bytes(os.urandom(2**20))
            (data / "more").mkdir()
            for i in range(20):  # past the entries flushed one by one: the file system's flush
                (data / "more" / str(i)).write_bytes(os.urandom(8192))
    cache.hold("held", Owner.current(), keep=True)
    cache.release("released", Owner.current(), keep=True)
    for name in ("held", "released"):
        entry = disk / "cache" / "objects" / name
        assert "entry.json" in markers(entry), name
        assert not pending(entry / "data" / "weights"), name
        assert not any(pending(path) for path in (entry / "data" / "more").iterdir()), name
        assert (entry / "keep").exists()


def test_on_a_file_system_that_is_no_local_disk_every_entry_is_one_of_every_boot(tmp_path: Path) -> None:
    # tmpfs stands in for the file systems another host may read (nfs, ceph...): it is not on
    # the list of local disks, so no entry there is trusted to a boot.  (There is nothing for a
    # flush to write on a tmpfs; elsewhere the entry is flushed before its commit.)
    with mounted_tmpfs(tmp_path / "mem", "64m") as mount:
        cache = FsCache(mount / "cache")
        with cache.store("job", meta="m", keep=False) as data:
            (data / "file").write_bytes(b"x")
        assert markers(mount / "cache" / "objects" / "job") == {"entry.json"}


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare, to give a mount namespace another boot id")
def test_after_a_reboot_an_entry_of_the_boot_before_is_made_again(origin, disk: Path, tmp_path: Path) -> None:
    files = {"data/part.bin": os.urandom(3 * 2**20)}
    make_tarball(tmp_path / "job.tgz", files)
    make_tarball(tmp_path / "kept.tgz", {"data/kept.bin": b"kept\n"})
    job_url = origin.add("/job.tgz", (tmp_path / "job.tgz").read_bytes())
    kept_url = origin.add("/kept.tgz", (tmp_path / "kept.tgz").read_bytes())
    base = disk / "base"
    base.mkdir()
    boot = tmp_path / "boot_id"
    boot.write_text(OTHER_BOOT)
    after_reboot = (boot, None, "")
    with Sleeper() as job, Sleeper() as later:
        first = sc("--use", "-d", str(base), "-n", "job", "--pid", str(job.pid), f"http:{job_url}", "tar")
        assert first.returncode == 0, first.stderr
        kept = sc("--use", "--keep", "-d", str(base), "-n", "kept", "--pid", str(job.pid), f"http:{kept_url}", "tar")
        assert kept.returncode == 0, kept.stderr
        part = Path(first.stdout.strip()) / "data" / "part.bin"
        assert pending(part)
        # What a power loss leaves of data that was never written back.
        with open(part, "r+b") as damaged:
            damaged.write(bytes(len(files["data/part.bin"])))

        def use(name: str, url: str) -> subprocess.CompletedProcess[str]:
            argv = [*SC, "--use", "-d", str(base), "-n", name, "--pid", str(later.pid), f"http:{url}", "tar"]
            return subprocess.run(on_host(after_reboot, argv), capture_output=True, text=True, timeout=60,
                                  env=sc_env())

        listed = subprocess.run(on_host(after_reboot, [*SC, "list", "-d", str(base)]), capture_output=True,
                                text=True, timeout=60, env=sc_env())
        assert listed.returncode == 0, listed.stderr
        assert "kept" in listed.stdout and "job" not in listed.stdout, listed.stdout
        again = use("job", job_url)
        assert again.returncode == 0, again.stderr
        assert (Path(again.stdout.strip()) / "data" / "part.bin").read_bytes() == files["data/part.bin"]
        assert origin.stats("/job.tgz").gets == 2, "the entry of the boot before was used"
        still = use("kept", kept_url)
        assert still.returncode == 0, still.stderr
        assert origin.stats("/kept.tgz").gets == 1, "a kept entry did not outlive the reboot"
        gc = subprocess.run(on_host(after_reboot, [*SC, "gc", "-d", str(base)]), capture_output=True,
                            text=True, timeout=60, env=sc_env())
        assert gc.returncode == 0, gc.stderr
        # The accounting as that boot sees it: every row an entry, and their sizes the total.
        check = ("import sys\nfrom sharedcache import FsCache\ncache = FsCache(sys.argv[1])\n"
                 "assert cache.names() == {e.name for e in cache.entries()} == {'job', 'kept'}\n"
                 "assert cache.size == sum(e.size for e in cache.entries()), cache.size\n")
        checked = subprocess.run(on_host(after_reboot, [sys.executable, "-c", check, str(control(base))]),
                                 capture_output=True, text=True, timeout=60, env=sc_env())
        assert checked.returncode == 0, checked.stderr
    assert markers(control(base) / "objects" / "job") == {f"entry.{OTHER_BOOT.strip()}.json"}
    assert not list((control(base) / "trash").iterdir())


def test_a_cache_of_format_2_stays_so_while_a_use_of_that_version_may_wait_in_it(origin, disk: Path,
                                                                                  tmp_path: Path) -> None:
    # A use of a version of format 2 that waits for a population checked the marker as it
    # opened the cache, and not since: had this version's open rewritten it and then committed
    # the repository for this boot, that use, taking over or waiting still, would take the
    # entry for a crash's leftover and move it into the trash under its users.
    make_tarball(tmp_path / "job.tgz", {"data/part.bin": os.urandom(2**20)})
    url = origin.add("/job.tgz", (tmp_path / "job.tgz").read_bytes())
    base = disk / "base"
    base.mkdir()
    made = sc("--use", "--keep", "-d", str(base), "-n", "before", f"http:{url}", "tar")  # (the cache)
    assert made.returncode == 0, made.stderr
    info = control(base) / "cache.info"
    info.write_bytes(b"shared-cache fscache 2\n")
    with Sleeper() as job, earlier_populator(base, "job") as earlier:
        use = sc_start("--use", "-d", str(base), "-n", "job", "--pid", str(job.pid), f"http:{url}", "tar")
        try:
            # Made as the use starts to wait, after its open of the cache.
            wait_for((control(base) / "populate" / "job.waiting").exists, what="the use to wait")
            assert info.read_bytes() == b"shared-cache fscache 2\n", "brought to format 3 under a waiting use"
            os.kill(earlier.pid, signal.SIGKILL)  # (the waiting use takes over)
            ((status, out, err),) = finish([use], timeout=60)
        finally:
            stop_process(use)
        assert status == 0, err
        assert markers(control(base) / "objects" / "job") == {"entry.json"}, "committed as format 2 cannot read"
        assert info.read_bytes() == b"shared-cache fscache 2\n"
        assert (Path(out.strip()) / "data" / "part.bin").stat().st_size == 2**20
    later = sc("list", "-d", str(base))  # nothing under way: the cache is of this format now
    assert later.returncode == 0, later.stderr
    assert info.read_bytes() == b"shared-cache fscache 3\n"


def test_a_cache_of_format_2_stays_so_while_a_dead_population_of_that_version_may_be_taken_over(
        tmp_path: Path) -> None:
    # A waiter of that version polls the population lock: from its populator's death to its
    # takeover no lock is held, and an open of this version then (a mere sc list) rewrote the
    # marker; this version's next commit of the name, for this boot, was that waiter's leftover.
    source = tmp_path / "source.txt"
    source.write_bytes(b"data\n")
    base = tmp_path / "base"
    base.mkdir()
    made = sc("--use", "--keep", "-d", str(base), "-n", "before", f"file:{source}")  # (the cache)
    assert made.returncode == 0, made.stderr
    info = control(base) / "cache.info"
    info.write_bytes(b"shared-cache fscache 2\n")
    with earlier_populator(base, "job") as earlier:
        os.kill(earlier.pid, signal.SIGKILL)
        earlier.wait(10)
    assert (control(base) / "populate" / "job.json").exists()
    listed = sc("list", "-d", str(base))
    assert listed.returncode == 0, listed.stderr
    assert info.read_bytes() == b"shared-cache fscache 2\n", "brought to format 3 before a takeover"
    # gc removes the dead population's record (a waiter that comes back takes over without it).
    collected = sc("gc", "-d", str(base))
    assert collected.returncode == 0, collected.stderr
    assert not (control(base) / "populate" / "job.json").exists()
    (control(base) / "populate" / ".x.json").write_text("{}")  # (no repository's: gc leaves it)
    later = sc("list", "-d", str(base))
    assert later.returncode == 0, later.stderr
    assert info.read_bytes() == b"shared-cache fscache 3\n"


def test_a_store_replaces_an_entry_of_another_boot_and_gc_removes_one(disk: Path) -> None:
    cache = FsCache(disk / "cache")
    for name in ("replaced", "collected"):
        with cache.store(name, meta="m", keep=False) as data:
            (data / "old").write_bytes(b"old")
        entry = disk / "cache" / "objects" / name
        # As the next boot finds it.
        os.rename(entry / f"entry.{boot_id()}.json", entry / f"entry.{OTHER_BOOT.strip()}.json")
        assert name not in cache
        with pytest.raises(MissError):
            cache.hold(name, Owner.current())
        with pytest.raises(MissError):
            cache.info(name)
        assert name not in {entry.name for entry in cache.entries()}
    with cache.store("replaced", meta="m", keep=False, holder=Owner.current()) as data:
        (data / "new").write_bytes(b"new")
    with cache.load("replaced") as path:
        assert sorted(p.name for p in path.iterdir()) == ["new"]
    report = cache.gc()
    assert report.entries_deleted == 1
    assert cache.names() == {"replaced"}
    assert cache.size == cache.info("replaced").size


def put(cache: FsCache, name: str, keep: bool) -> None:
    with cache.store(name, meta="m", keep=keep) as data:
        (data / "weights").write_bytes(os.urandom(2**20))


def kept_long_ago_in_room_for_two(cache: FsCache) -> int:
    """Give ``cache`` a budget of two entries of :func:`put`, and put in it a kept one, "kept long
    ago" (the least recently used of those that follow); return the size of one."""
    put(cache, "probe", True)
    one = cache.info("probe").size
    cache.remove("probe")
    cache.max_size = 2 * one + one // 2
    put(cache, "kept long ago", True)
    time.sleep(0.01)
    return one


def test_the_first_eviction_after_a_reboot_drops_the_entries_of_the_boot_before(disk: Path) -> None:
    # An entry in use when the machine went down is no entry after the reboot, but its row still
    # counts against the budget.  Eviction must drop it before any real entry, however long that
    # one has gone unused: else a kept entry is deleted (and downloaded again) for a dead one.
    cache = FsCache(disk / "cache")
    one = kept_long_ago_in_room_for_two(cache)
    put(cache, "of the boot before", False)
    entry = disk / "cache" / "objects" / "of the boot before"
    os.rename(entry / f"entry.{boot_id()}.json", entry / f"entry.{OTHER_BOOT.strip()}.json")
    assert cache.size == 2 * one  # the dead entry still counts
    put(cache, "new", True)
    assert cache.names() == {"kept long ago", "new"}
    assert cache.size == 2 * one
    assert cache.gc().entries_deleted == 0
    with cache.load("kept long ago") as path:
        assert (path / "weights").stat().st_size == 2**20


@pytest.fixture
def served(disk: Path, tmp_path: Path) -> Iterator[Path]:
    """``disk`` as another machine reaches it: through a file system that a kernel serves to it,
    as nfs is.  bindfs, a FUSE file system, stands in for it (a process reading through it, in a
    mount namespace with another boot id and machine id, is that other machine)."""
    with mounted_bindfs(disk, tmp_path / "view") as view:
        yield view


def test_from_another_machine_an_entry_of_the_serving_machine_s_boot_is_neither_used_nor_removed(
        origin, disk: Path, served: Path, tmp_path: Path) -> None:
    # The machine whose disk it is committed the entry for its boot; another machine cannot tell
    # that boot from one before a reboot, so it may neither trust the entry nor delete it (which
    # would delete data in use over there).  Once kept there, it is durable and a hit from here.
    files = {"data/part.bin": os.urandom(2**20)}
    make_tarball(tmp_path / "job.tgz", files)
    url = origin.add("/job.tgz", (tmp_path / "job.tgz").read_bytes())
    (disk / "base").mkdir()
    boot, machine = tmp_path / "boot_id", tmp_path / "machine-id"
    boot.write_text(OTHER_BOOT)
    machine.write_text("0badc0de" * 4 + "\n")
    elsewhere = (boot, machine, "0badc0de" * 4)
    with Sleeper() as job, Sleeper() as there:
        here = ["-d", str(disk / "base"), "-n", "job", "--pid", str(job.pid), f"http:{url}", "tar"]
        first = sc("--use", *here)
        assert first.returncode == 0, first.stderr
        path = Path(first.stdout.strip())
        entry = path.resolve().parent
        assert markers(entry) == {f"entry.{boot_id()}.json"}

        def from_there(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(on_host(elsewhere, [*SC, *args]), capture_output=True, text=True,
                                  timeout=60, env=sc_env())

        view = ["-d", str(served / "base"), "-n", "job", "--pid", str(there.pid), f"http:{url}", "tar"]
        refused = from_there("--use", *view)
        assert refused.returncode == 1, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "for its own boot" in lines[0] and "--keep" in lines[0], lines
        assert not list((control(disk / "base") / "stage").iterdir()), "the refused store left its tree"
        assert from_there("gc", "-d", str(served / "base")).returncode == 0
        check_tree(path, files)
        assert markers(entry) == {f"entry.{boot_id()}.json"}, "another machine touched the entry"

        assert sc("--use", "--keep", *here).returncode == 0
        used = from_there("--use", *view)
        assert used.returncode == 0, used.stderr
        check_tree(Path(used.stdout.strip()), files)
        assert origin.stats("/job.tgz").gets == 1  # the refused use downloaded nothing


def test_eviction_seen_from_another_machine_leaves_an_entry_of_one_boot_alone(disk: Path, served: Path) -> None:
    # Through the served view, a marker of a boot not ours may be the serving machine's running
    # boot: that eviction goes by last use alone, and never retires such an entry first.
    view = FsCache(served / "cache")
    kept_long_ago_in_room_for_two(view)
    # As the serving machine commits it for its boot.  (Its row is written through the view: the
    # index's shared memory is one file's pages, which the view and the disk do not share.)
    put(view, "of one boot", False)
    entry = disk / "cache" / "objects" / "of one boot"
    os.rename(entry / "entry.json", entry / f"entry.{OTHER_BOOT.strip()}.json")
    put(view, "new", True)
    assert view.names() == {"of one boot", "new"}
    assert markers(entry) == {f"entry.{OTHER_BOOT.strip()}.json"}


def test_a_store_that_fails_on_a_served_file_system_raises_its_own_error_and_leaves_nothing(served: Path) -> None:
    # nfs and FUSE keep a file removed while open under another name (.nfs*, .fuse_hidden*): the
    # staging tree's lock, still open while the tree was removed, kept the tree, and the error
    # of its removal ("Directory not empty") replaced the store's own.
    cache = FsCache(served / "cache")
    with pytest.raises(ValueError, match="the filler's own error"):
        with cache.store("job", meta="m", keep=True) as data:
            (data / "file").write_bytes(b"x")
            raise ValueError("the filler's own error")
    assert not list((served / "cache" / "stage").iterdir())
