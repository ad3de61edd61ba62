"""FsCache: the guarantees of the engine, on a real file system with real processes.

Crash tests (SIGKILL at chosen and at random moments) and the concurrency stress tests are in
test_fscache_crash.py; the child processes both use are in fscache_worker.py.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import gc
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fscache_worker import Children, fill, loads, scan_usage, verify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from scutil import (
    SOUND_LOOKING_DAMAGE,
    Sleeper,
    damage_in_values,
    interpreter_for,
    mounted_image,
    needs_delayed_allocation,
    pending,
    wait_for,
)

from sharedcache import BusyError, CacheError, FsCache, MissError, NoSpaceError, UsageError
from sharedcache.errors import EntryTooLargeError
from sharedcache.engine import fscache
from sharedcache.engine.fscache import GcReport
from sharedcache.engine import fsutil, leases
from sharedcache.engine.fsutil import disk_usage
from sharedcache.engine.layout import FORMAT_LINE
from sharedcache.engine.leases import Owner, boot_id, start_time

BLOCK = os.statvfs(tempfile.gettempdir()).f_bsize


# -- helpers ---------------------------------------------------------------------------------------


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return int(out.split()[0])


def fresh_scan(root: Path) -> int:
    """The sum of the disk usage of every committed entry's data tree."""
    return sum(scan_usage(d / "data") for d in (root / "objects").iterdir())


def put(cache: FsCache, name: str, sizes: list[int] | None = None, nonce: str = "n", *, keep: bool = True) -> int:
    """Store entry ``name`` holding a verifiable pattern (``keep``: as :meth:`FsCache.store`
    takes it); return its accounted size."""
    with cache.store(name, keep=keep) as path:
        fill(path, name, nonce, sizes if sizes is not None else [3000])
    return cache.info(name).size


def only_entries(cache: FsCache) -> set[str]:
    return {e.name for e in cache.entries()}


def assert_clean(root: Path) -> None:
    """Nothing but committed entries is left on disk, and they match the index exactly."""
    assert list((root / "stage").iterdir()) == []
    assert list((root / "trash").iterdir()) == []
    cache = FsCache(root)
    assert {p.name for p in (root / "objects").iterdir()} == only_entries(cache)
    assert cache.size == sum(e.size for e in cache.entries()) == fresh_scan(root)


# -- store, load, stage ----------------------------------------------------------------------------


def test_store_then_load_gives_the_content(root: Path) -> None:
    cache = FsCache(root)
    assert not loads(cache, "a")
    put(cache, "a", [10, 5000, 70000])
    assert loads(cache, "a")
    assert "a" in cache and "b" not in cache
    (entry,) = cache.entries()
    assert (entry.name, entry.keep, entry.in_use, entry.users) == ("a", True, False, ())
    assert (root / "cache.info").read_bytes() == FORMAT_LINE
    assert (root / "objects" / "a" / "entry.json").is_file()
    assert_clean(root)


def test_failing_store_commits_nothing_and_reraises_the_same_exception(root: Path) -> None:
    cache = FsCache(root, max_size="1MB")
    put(cache, "old")
    before = cache.size
    error = RuntimeError("inside the block")
    with pytest.raises(RuntimeError) as raised:
        with cache.store("new") as path:
            fill(path, "new", "n", [4000, 4000])
            raise error
    assert raised.value is error
    assert "new" not in cache and not loads(cache, "new")
    assert cache.size == before
    assert_clean(root)
    # a later store of the name works
    put(cache, "new")
    assert loads(cache, "new")


@pytest.mark.parametrize("replace", ["removed", "a file", "a link to a directory"])
def test_a_store_whose_block_removes_or_replaces_its_data_directory_is_a_usage_error(
        root: Path, tmp_path: Path, replace: str) -> None:
    cache = FsCache(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(UsageError, match=r"^entry 'x': the block removed or replaced its data directory$"):
        with cache.store("x") as path:
            (path / "f").write_text("x")
            shutil.rmtree(path)
            if replace == "a file":
                path.write_text("not a directory")
            elif replace == "a link to a directory":
                path.symlink_to(elsewhere)
    assert "x" not in cache
    assert_clean(root)
    put(cache, "x")
    assert loads(cache, "x")


def test_stage_is_removed_on_exit(root: Path) -> None:
    cache = FsCache(root)
    with cache.stage() as scratch:
        (scratch / "sub").mkdir()
        (scratch / "sub" / "f").write_bytes(b"x" * 10000)
        os.chmod(scratch / "sub", 0o500)  # read-only directories do not stop the removal
        kept = scratch
    assert not kept.exists()
    with pytest.raises(KeyError):
        with cache.stage() as scratch:
            (scratch / "f").write_text("x")
            kept = scratch
            raise KeyError("boom")
    assert not kept.exists()
    assert list((root / "stage").iterdir()) == []
    assert cache.size == 0 and cache.entries() == []


def test_a_second_store_of_a_name_is_discarded(root: Path) -> None:
    cache = FsCache(root)
    put(cache, "a", [1000], nonce="first")
    with cache.store("a") as path:
        fill(path, "a", "second", [50000])
    with cache.load("a") as path:
        assert verify(path, "a") is None
        assert '"first"' in (path / "MANIFEST").read_text()
    assert_clean(root)


@pytest.mark.parametrize("holder", [False, True])
def test_a_second_store_that_keeps_keeps_the_first(root: Path, holder: bool) -> None:
    # A store asked to keep its entry that lost the name to another (here one committed in
    # between, by another process) discarded its copy and its keep: the entry stayed unkept,
    # and the next gc deleted it once unused.
    cache = FsCache(root, durable=True)
    code = (f"from sharedcache import FsCache\nfrom fscache_worker import fill\n"
            f"with FsCache({str(root)!r}).store('a', keep=False) as path:\n    fill(path, 'a', 'first', [1000])\n")
    owner = Owner.current() if holder else None
    with cache.store("a", keep=True, holder=owner) as path:
        fill(path, "a", "second", [50000])
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])})
    [entry] = cache.entries()
    assert entry.keep
    assert (root / "objects" / "a" / "entry.json").exists(), "kept, but only for this boot"
    if owner is not None:
        cache.release("a", owner)
    cache.gc()
    with cache.load("a") as path:
        assert '"first"' in (path / "MANIFEST").read_text()


def test_directories_without_marker_are_misses_and_without_row_are_adopted(root: Path) -> None:
    cache = FsCache(root)
    put(cache, "full")
    # a directory in objects/ without a marker nor a row
    (root / "objects" / "bare" / "data").mkdir(parents=True)
    (root / "objects" / "bare" / "lock").touch()
    # a directory with a valid marker but without a row (what a crashed commit leaves)
    shutil.copytree(root / "objects" / "full", root / "objects" / "norow")
    marker = (root / "objects" / "norow" / "entry.json").read_text().replace('"full"', '"norow"')
    (root / "objects" / "norow" / "entry.json").write_text(marker)
    # a row whose directory lost its marker
    put(cache, "nomarker")
    (root / "objects" / "nomarker" / "entry.json").unlink()
    for name in ("bare", "nomarker", "absent"):
        with pytest.raises(MissError):
            with cache.load(name):
                pass
    assert loads(cache, "full")
    # committed and complete: readable at once, though not accounted until it is adopted
    with cache.load("norow") as path:
        assert verify(path, "full") is None
    assert "norow" in cache and "norow" not in {e.name for e in cache.entries()}
    put(cache, "nomarker", nonce="again")  # a row without a complete entry does not block a store
    assert loads(cache, "nomarker")
    report = cache.gc()
    assert report.orphans_adopted == 1 and report.orphans_removed == 1
    assert cache.info("norow").size == cache.info("full").size  # adopted from its marker
    assert cache.size == sum(e.size for e in cache.entries())
    assert not (root / "objects" / "bare").exists()


# -- names -----------------------------------------------------------------------------------------

BAD_NAMES = ["", ".", "..", ".hidden", "a/b", "/abs", "a\0b", "x" * 201, "é" * 101, 5, None,
             b"bytes", "\ud800", "bad\udc80"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_are_usage_errors(root: Path, name: object) -> None:
    cache = FsCache(root)
    owner = Owner.current()
    calls = [
        lambda: cache.store(name).__enter__(),  # type: ignore[arg-type]
        lambda: cache.load(name).__enter__(),  # type: ignore[arg-type]
        lambda: cache.remove(name),  # type: ignore[arg-type]
        lambda: cache.info(name),  # type: ignore[arg-type]
        lambda: cache.hold(name, owner),  # type: ignore[arg-type]
        lambda: cache.release(name, owner),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(UsageError, match="invalid entry name"):
            call()
    assert list((root / "stage").iterdir()) == [] and list((root / "objects").iterdir()) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(exclude_categories=()), max_size=70))
def test_any_name_is_refused_cleanly_or_round_trips(tmp_path: Path, name: str) -> None:
    cache = FsCache(tmp_path / "names", durable=False)
    try:
        with cache.store(name) as path:
            (path / "f").write_bytes(name.encode("utf-8", "surrogatepass"))
    except UsageError:
        return
    with cache.load(name) as path:
        assert (path / "f").read_bytes() == name.encode("utf-8")
    assert name in only_entries(cache)
    cache.remove(name)
    assert name not in cache


# -- sizes and budget ------------------------------------------------------------------------------


def test_size_is_allocated_blocks_with_hard_links_once(root: Path) -> None:
    cache = FsCache(root)
    with cache.store("a") as path:
        (path / "small").write_bytes(b"x")  # 1 byte, one block
        (path / "sub").mkdir()
        (path / "sub" / "big").write_bytes(os.urandom(3 * BLOCK + 1))
        os.link(path / "sub" / "big", path / "again")  # the same inode twice
        with open(path / "sparse", "wb") as f:  # 10 MB apparent, one block allocated
            f.seek(10_000_000)
            f.write(b"y")
        os.symlink("small", path / "link")
    data = root / "objects" / "a" / "data"
    size = cache.info("a").size
    assert size == du(data) == scan_usage(data) == disk_usage(data)
    apparent = int(subprocess.run(["du", "-s", "-B1", "--apparent-size", str(data)],
                                  capture_output=True, text=True, check=True, timeout=30).stdout.split()[0])
    assert apparent > 10_000_000 > size  # the sparse file counts by its blocks
    assert size < 2 * (3 * BLOCK + 1) + 8 * BLOCK  # the hard-linked file counts once
    assert cache.size == size


def test_store_then_remove_accounts_the_same_bytes(root: Path) -> None:
    cache = FsCache(root, max_size="100MB")
    put(cache, "base", [123, 4567])
    for sizes in ([0], [1], [BLOCK], [BLOCK + 1, 7 * BLOCK], [100_000] * 5):
        before = cache.size
        size = put(cache, "x", sizes)
        assert size == scan_usage(root / "objects" / "x" / "data")
        assert cache.size == before + size
        cache.remove("x")
        assert cache.size == before
        with pytest.raises(MissError):
            cache.remove("x")
    assert_clean(root)


def test_sizes_are_exact_when_the_data_is_written_back_while_it_is_measured(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process's commit flushes the whole file system (syncfs), maybe while this one
    # measures its tree; on ext4 a file being written back can show fewer blocks than it has.
    # Here a real flush starts with every walk that measures.  With the tree measured before
    # the commit's own flush, 4 runs of 5 failed (an entry 4-20 KB short); after it, none.

    def measured_while_flushed(*args: object, **kwargs: object) -> int:
        flush = threading.Thread(target=fsutil.flush_file_system, args=(directory,))
        flush.start()
        try:
            return disk_usage(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            flush.join()

    monkeypatch.setattr(fsutil, "disk_usage", measured_while_flushed)
    cache = FsCache(root)
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(60):
            size = put(cache, f"e{i}", [3000, 9000, 20000, 3 * BLOCK + 1] * 25)
            assert size == scan_usage(root / "objects" / f"e{i}" / "data"), i
    finally:
        os.close(directory)


def test_a_small_entry_is_flushed_without_waiting_for_other_writers(root: Path, tmp_path: Path) -> None:
    # syncfs writes out every writer's dirty data on the file system and waits for it (1.4 s with
    # 2.3 GB of another process's data pending, in docs/performance.md).  An entry of a few
    # files is flushed inode by inode; a large one still by syncfs, which this test also sees.
    needs_delayed_allocation(tmp_path)
    cache = FsCache(root)
    foreign = tmp_path / "another writer's file"
    # Any other flush of this file system (a test in another worker commits there too) may write
    # the foreign data out at any moment; a commit that flushed it would do so every time.
    for attempt in range(5):
        foreign.write_bytes(os.urandom(8 * 2**20))
        with cache.store(f"model{attempt}", meta="m", keep=True) as data:
            (data / "weights").write_bytes(os.urandom(4 * 2**20))
            (data / "config").mkdir()
            (data / "config" / "settings").write_bytes(b"x" * 5000)
        entry = root / "objects" / f"model{attempt}"
        assert not pending(entry / "data" / "weights")
        assert not pending(entry / "data" / "config" / "settings")
        if pending(foreign):
            break
    else:
        raise AssertionError("the commit of a small entry flushed another writer's data, five times out of five")
    put(cache, "many", [4096] * (fsutil.SCOPED_FLUSH_ENTRIES + 1))
    assert not pending(foreign), "the commit of a large entry did not flush its file system"


def test_arguments_that_cannot_be_kept_as_given_are_refused_before_anything_is_made(root: Path) -> None:
    # (A NUL, which no system call takes, came out of os.mkdir as a ValueError.)
    for bad_root in (5, b"/tmp/cache", str(root) + "\0x", root / "a\0b"):
        with pytest.raises(UsageError, match="a cache's root must be a path"):
            FsCache(bad_root)  # type: ignore[arg-type]
    cache = FsCache(root)
    too_long = "é" * (fscache.META_BYTES // 2 + 1)  # fewer characters than bytes
    for meta, keep in ((5, True), (too_long, True), ("\udcff", True), ("m", "yes"), ("m", 1)):
        with pytest.raises(UsageError):
            with cache.store("entry", meta=meta, keep=keep) as data:  # type: ignore[arg-type]
                raise AssertionError(f"filled with meta={meta!r:.20} keep={keep!r}: {data}")
    assert list((root / "stage").iterdir()) == [] and "entry" not in cache
    put(cache, "entry")
    with pytest.raises(UsageError, match="keep must be True or False"):
        cache.hold("entry", Owner.current(), keep="yes")  # type: ignore[arg-type]
    with cache.store("largest", meta="x" * fscache.META_BYTES):
        pass
    with cache.load("largest"):
        assert cache.hold("largest", Owner.current(), meta="x" * fscache.META_BYTES)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timeout": float("nan")}, "timeout must be a number of seconds, not nan"),
    ({"timeout": "5"}, "timeout must be a number of seconds, not '5'"),
    ({"timeout": None}, "timeout must be a number of seconds, not None"),
    ({"timeout": -1}, "timeout must be a number of seconds, not -1"),
    ({"durable": "no"}, "durable must be True or False, not 'no'"),
    ({"repair": None}, "repair must be True or False, not None"),
    ({"group": "users"}, "a cache's group must be a gid, not 'users'"),
    ({"group": True}, "a cache's group must be a gid, not True"),
    ({"group": -1}, "a cache's group must be a gid, not -1"),
])
def test_a_wrong_argument_of_a_cache_is_refused_naming_it(root: Path, kwargs: dict[str, object],
                                                          message: str) -> None:
    # A NaN or text timeout failed with Python's own error at the first wait of a store, "no"
    # was taken as true, and a group's name was said to be a group this user is not in.
    with pytest.raises(UsageError) as raised:
        FsCache(root / "cache", **kwargs)  # type: ignore[arg-type]
    assert str(raised.value) == message
    assert not (root / "cache").exists()


def test_a_wrong_argument_of_a_store_hold_or_release_is_refused_naming_it(root: Path) -> None:
    # Each failed deep inside (AttributeError, a bare AssertionError), a store after its block ran.
    cache = FsCache(root)
    for kwargs, message in (({"strict_budget": "no"}, "strict_budget must be True or False, not 'no'"),
                            ({"holder": 5}, "holder must be an Owner (such as Owner.current()), not 5"),
                            ({"seal": 5}, "seal must be a Seal (from FsCache.seal()), not 5")):
        with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
            with cache.store("entry", **kwargs) as data:  # type: ignore[arg-type]
                raise AssertionError(f"filled with {kwargs}: {data}")
    put(cache, "entry")
    with pytest.raises(UsageError, match=r"^owner must be an Owner \(such as Owner.current\(\)\), not None$"):
        cache.hold("entry", None)  # type: ignore[arg-type]
    lease = cache.hold("entry", Owner.current())
    for kwargs, message in (({}, "owner (or a lease) must be an Owner (such as Owner.current()), not None"),
                            ({"lease": 5}, "a lease is the str that hold() returned, not 5"),
                            ({"lease": lease, "keep": "yes"}, "keep must be True or False, not 'yes'")):
        with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
            cache.release("entry", **kwargs)  # type: ignore[arg-type]
    assert cache.lease_of("entry", Owner.current()) == lease
    put(cache, "unused")
    with pytest.raises(UsageError, match="^unless_awaited must be True or False, not 'x'$"):
        cache.remove("unused", unless_awaited="x")  # type: ignore[arg-type]
    assert "unused" in cache
    # evict("x") was a bare TypeError, evict(nan) freed nothing and said nothing; a deadline of
    # text failed at the next wait.
    for nbytes in ("x", float("nan"), -1, True):
        with pytest.raises(UsageError, match="^evict's nbytes must be a whole number of bytes or None, not "):
            cache.evict(nbytes)  # type: ignore[arg-type]
    for deadline in ("x", float("nan")):
        with pytest.raises(UsageError, match=r"^a deadline must be a time.monotonic\(\) or None, not "):
            cache.deadline = deadline  # type: ignore[assignment]
    assert cache.deadline is None and cache.evict(0) == 0


def test_an_empty_root_is_refused_not_taken_for_the_current_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="^a cache's root must be a path, not ''$"):
        FsCache("")
    assert not any(tmp_path.iterdir())
    FsCache(Path(""))  # "." written as a Path: the current directory, as asked
    assert (tmp_path / "cache.info").exists()


def test_max_size_forms_and_persistence(root: Path) -> None:
    assert FsCache(root).max_size is None  # a new cache is unlimited
    assert FsCache(root, max_size="10GB").max_size == 10 * 1000**3
    assert FsCache(root).max_size == 10 * 1000**3  # omitted: the stored budget is kept
    assert FsCache(root, max_size="512MiB").max_size == 512 * 1024**2
    assert FsCache(root, max_size=12345).max_size == 12345
    assert FsCache(root, max_size=None).max_size is None
    for bad in ("-1", "10XB", "lots", -5, True):
        with pytest.raises(UsageError):
            FsCache(root, max_size=bad)
    assert FsCache(root).max_size is None


def test_budget_is_never_exceeded_and_eviction_is_least_recently_loaded(root: Path) -> None:
    cache = FsCache(root)
    one = put(cache, "probe")
    cache.remove("probe")
    cache.max_size = 3 * one + one // 2  # room for three entries
    for name in "abc":
        put(cache, name)
        time.sleep(0.01)
    data = root / "objects" / "a" / "data"
    assert loads(cache, "a")  # "a" is now the most recently used...
    old = time.time() - 10 * 86400
    for p in [data, *data.rglob("*")]:  # ...although its files say they were read long ago
        os.utime(p, (old, old), follow_symlinks=False)
    put(cache, "d")
    assert only_entries(cache) == {"a", "c", "d"}  # "b" was the least recently used
    put(cache, "e")
    assert only_entries(cache) == {"a", "d", "e"}
    assert cache.size <= cache.max_size
    assert_clean(root)


def _long_and_short(root: Path) -> FsCache:
    """A cache holding "long" and "short", whose budget has room for no third entry of their size."""
    cache = FsCache(root)
    one = put(cache, "probe")
    cache.remove("probe")
    put(cache, "long")
    put(cache, "short")
    cache.max_size = 2 * one + one // 2
    return cache


@pytest.mark.parametrize("use", ["hold", "load"])
def test_eviction_ranks_an_entry_by_when_its_last_use_ended(root: Path, use: str) -> None:
    # "long" is used first and for longest, "short" begun later and ended first: "long" is the
    # more recently used, and a store that needs room for one more evicts "short".
    cache = _long_and_short(root)

    @contextlib.contextmanager
    def used(name: str) -> Iterator[None]:
        if use == "load":
            with cache.load(name):
                yield
            return
        lease = cache.hold(name, Owner.current())
        try:
            yield
        finally:
            cache.release(name, lease=lease)

    with used("long"):
        time.sleep(0.01)  # (the file system's clock may tick coarsely)
        with used("short"):
            time.sleep(0.01)
        time.sleep(0.01)
    put(cache, "new")
    assert only_entries(cache) == {"long", "new"}


def test_entry_larger_than_the_budget_is_refused_without_eviction(root: Path) -> None:
    cache = FsCache(root)
    one = put(cache, "a")
    put(cache, "b")
    cache.max_size = 3 * one
    before = (only_entries(cache), cache.size)
    with pytest.raises(EntryTooLargeError) as raised:
        with cache.store("huge") as path:
            fill(path, "huge", "n", [4 * one])
    assert isinstance(raised.value, NoSpaceError)
    assert "huge" in str(raised.value) and "larger than the budget" in str(raised.value)
    assert (only_entries(cache), cache.size) == before
    assert_clean(root)


def test_a_store_that_cannot_fit_for_entries_in_use_evicts_nothing(root: Path) -> None:
    # Room for three entries, one of them in use: a store of nearly three more is refused, and the
    # unused entry, which could not have made room alone, stays (evicted, it was lost for nothing).
    cache = FsCache(root)
    one = put(cache, "probe")
    cache.remove("probe")
    cache.max_size = 3 * one + one // 2
    put(cache, "unused")
    put(cache, "held")
    with cache.load("held"):
        with pytest.raises(NoSpaceError, match="the rest is in use"):
            with cache.store("large") as path:
                fill(path, "large", "n", [2 * one + one // 2])
        assert only_entries(cache) == {"unused", "held"}
        # One that fits once the unused entry goes still evicts it.
        put(cache, "medium", [one + one // 2])
        assert only_entries(cache) == {"held", "medium"}
    assert_clean(root)


def test_budget_set_by_one_process_is_seen_and_enforced_by_another(root: Path, children: Children) -> None:
    cache = FsCache(root)
    one = put(cache, "a")
    put(cache, "b")
    assert cache.max_size is None
    result = children.start("set_budget", root=str(root), max_size=one + 10).result()
    assert result["max_size"] == one + 10
    assert cache.max_size == one + 10  # this object sees the other process's budget
    assert only_entries(cache) == {"b"}  # lowering the budget evicted the older entry
    with pytest.raises(NoSpaceError):  # and this process's stores obey it
        put(cache, "big", [2 * one])


def test_lowering_the_budget_evicts_least_recently_used_first(root: Path) -> None:
    cache = FsCache(root)
    for name in "abcdef":
        one = put(cache, name)
        time.sleep(0.005)
    loads(cache, "b")
    cache.max_size = 2 * one
    assert only_entries(cache) == {"f", "b"}
    assert cache.size == 2 * one


@pytest.mark.parametrize("plant", ["directory", "fifo", "garbage"])
def test_a_damaged_budget_is_a_clear_error_until_it_is_set_again(root: Path, plant: str) -> None:
    cache = FsCache(root)
    one = put(cache, "a")
    budget = root / "budget"
    if plant == "directory":
        budget.mkdir()
        (budget / "inside").write_text("x")
    elif plant == "fifo":
        os.mkfifo(budget)
    else:
        budget.write_bytes(b"12 KiB")
    with pytest.raises(CacheError, match="set it again"):
        cache.max_size  # noqa: B018 - the read is what is tested
    for value in (10 * one, None):
        cache.max_size = value
        assert cache.max_size == value
        cache.gc()
    assert os.listdir(root / "trash") == []


@pytest.mark.parametrize("plant", ["directory", "garbage"])
def test_a_damaged_budget_fails_no_store_that_may_exceed_it_and_gc_removes_it(root: Path, plant: str) -> None:
    """A damaged budget failed a store that may exceed the budget (a repository's, for data a
    job needs now) after the whole of its filling, and gc, for good."""
    cache = FsCache(root)
    put(cache, "a")
    budget = root / "budget"
    if plant == "directory":
        budget.mkdir()
        (budget / "inside").write_text("x")
    else:
        budget.write_bytes(b"1O00000")
    with pytest.raises(CacheError, match="set it again"):
        put(cache, "strict")  # (one that must keep the budget cannot know it)
    with cache.store("loose", strict_budget=False) as path:
        fill(path, "loose", "n", [3000])
    assert loads(cache, "loose")
    report = cache.gc()
    assert report.damaged_budget_removed, report
    assert not os.path.lexists(budget) and cache.max_size is None
    assert cache.gc() == GcReport()
    put(cache, "strict")
    assert_clean(root)


def test_an_entry_whose_lock_was_replaced_is_kept_while_used_even_without_its_row(root: Path) -> None:
    """gc adopts, from its directory, an entry whose index row was lost; one whose lock is a link
    is damaged, yet its data is whole and a live job may hold a use of it: gc keeps it until that
    use ends, then deletes it."""
    cache = FsCache(root)
    put(cache, "held")
    with Sleeper() as job:
        lease = cache.hold("held", Owner.of(job.pid))
        lock = root / "objects" / "held" / "lock"
        os.rename(lock, lock.with_name("aside"))
        lock.symlink_to("aside")
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            (root / name).unlink(missing_ok=True)
        cache.close()
        cache = FsCache(root, repair=True)
        cache.gc()
        assert (root / "objects" / "held" / "data").is_dir(), "deleted under a live use"
        assert lease in os.listdir(root / "objects" / "held" / "leases")
    cache.gc()
    assert not (root / "objects" / "held").exists()


# -- entries in use --------------------------------------------------------------------------------


def test_loaded_entry_is_neither_removed_nor_evicted(root: Path, children: Children) -> None:
    cache = FsCache(root)
    one = put(cache, "a")
    for name in "bc":
        time.sleep(0.01)
        put(cache, name)
    cache.max_size = 3 * one + one // 2
    holder = children.start("hold", root=str(root), name="a")
    holder.expect("held")
    with pytest.raises(BusyError):
        cache.remove("a")
    assert {e.name: e.in_use for e in cache.entries()} == {"a": True, "b": False, "c": False}
    put(cache, "d")  # "a" is the least recently used, but in use: "b" goes instead
    assert only_entries(cache) == {"a", "c", "d"}
    put(cache, "e")
    assert only_entries(cache) == {"a", "d", "e"}
    assert loads(cache, "a")
    holder.release()
    assert holder.finish(30)[0] == 0
    cache.remove("a")
    assert "a" not in cache
    assert_clean(root)


def test_store_is_refused_when_everything_is_in_use(root: Path, children: Children) -> None:
    cache = FsCache(root)
    one = put(cache, "a")
    put(cache, "b")
    cache.max_size = 2 * one + one // 2
    holders = [children.start("hold", root=str(root), name=n) for n in "ab"]
    for h in holders:
        h.expect("held")
    with pytest.raises(NoSpaceError, match="in use"):
        put(cache, "c")
    assert only_entries(cache) == {"a", "b"} and cache.size == 2 * one
    assert list((root / "stage").iterdir()) == []
    holders[0].kill()  # the kernel drops the dead reader's lock
    put(cache, "c")
    assert only_entries(cache) == {"b", "c"}


def test_leased_entry_is_busy_and_protected_from_eviction(root: Path, children: Children) -> None:
    # Only the live lease protects "a": its holder neither keeps it nor holds its lock, and "b",
    # stored after the hold, makes "a" the least recently used when "c" needs the room.
    cache = FsCache(root)
    one = put(cache, "a")
    holder = children.start("hold", root=str(root), name="a", how="lease", keep=False)
    holder.expect("held")
    time.sleep(0.01)
    put(cache, "b")
    with pytest.raises(BusyError, match=str(holder.pid)):
        cache.remove("a")
    assert cache.info("a").users == (holder.pid,)
    cache.max_size = 2 * one + one // 2
    put(cache, "c")
    assert only_entries(cache) == {"a", "c"}


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has the file ``path`` open."""
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)) == str(path):
                return True
        except FileNotFoundError:
            pass  # closed meanwhile
    return False


def test_a_reader_that_waited_while_its_entry_was_replaced_reads_the_new_one_under_its_lock(
        root: Path, children: Children) -> None:
    # A reader opens the entry's lock and waits for it while a deleter holds it; the deleter
    # renames the entry into the trash and commits, then, before it lets its lock go, the name
    # is stored again.  The reader's lock is then the old entry's, which nothing links to
    # objects/<name> any more: it must look again and take the new entry's lock, or the new
    # entry, read through the same path, would be in use under a lock that protects nothing.
    cache = FsCache(root)
    put(cache, "e", nonce="old")
    deleter = children.start("crash_at", root=str(root), op="remove", name="e",
                             points=[("_unused", "scan_leases", "call"), ("<lambda>", "close", "call")])
    deleter.expect("paused")  # the entry's lock taken exclusively, in the transaction
    reader = children.start("hold", root=str(root), name="e")
    # (A lock is waited for by attempts, in no table: the reader is waiting once it has it open.)
    wait_for(lambda: _has_open(reader.pid, root / "objects" / "e" / "lock"), what="the reader to open the entry's lock")
    deleter.go_on()
    deleter.expect("paused")  # the entry in the trash and the transaction committed; its lock still held
    put(cache, "e", nonce="new")
    deleter.go_on()
    deleter.expect("finished")
    reader.expect("held")
    with pytest.raises(BusyError):
        cache.remove("e")
    with cache.load("e") as path:
        assert json.loads((path / "MANIFEST").read_text())["nonce"] == "new"
    reader.release()
    assert reader.finish(30)[0] == 0
    cache.remove("e")
    assert_clean(root)


# -- leases ----------------------------------------------------------------------------------------


#: Makes files in the directory ``argv[1]`` without pause, until killed.
KEEPS_FILLING = """
import os, sys
i = 0
while True:
    i += 1
    try:
        os.close(os.open(os.path.join(sys.argv[1], str(i)), os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        pass
"""


def test_a_tree_in_the_trash_that_cannot_be_removed_fails_no_commit_or_release(root: Path) -> None:
    # A member of a group cache may put a directory in the trash and keep making files in it:
    # its removal then fails with "Directory not empty".  The commit and the release that emptied
    # the trash after their work raised that: sc --use said it failed, though the commit had
    # given the job a use.
    cache = FsCache(root)
    me = Owner.current()
    planted = root / "trash" / "planted"
    planted.mkdir()
    filler = subprocess.Popen([sys.executable, "-c", KEEPS_FILLING, str(planted)])
    try:
        deadline = time.monotonic() + 30
        while len(os.listdir(planted)) < 100:
            assert time.monotonic() < deadline and filler.poll() is None
            time.sleep(0.01)
        for number in range(3):
            name = f"e{number}"
            with cache.store(name, keep=False, holder=me) as path:
                fill(path, name, "n", [1000])
            assert cache.release(name, me) is True
    finally:
        filler.kill()
        filler.wait(10)
    assert only_entries(cache) == set()
    cache.gc()
    assert os.listdir(root / "trash") == []


#: Run as an ordinary user (root reads any directory whatever its mode): stores, a failed store
#: and a stage of trees holding a directory of the user's own that its modes close to its owner;
#: then a gc of such a tree found in the trash, and of one there that the user cannot remove.
#: Each tree also links to a closed directory of the user's outside it, which stays as it is.
CLOSED_DIRECTORIES = """
import json, os, stat, sys
from sharedcache import FsCache, SharedCacheError
root, outside = sys.argv[1:]
cache, results = FsCache(root), {}
def closed(path, mode):
    (path / "z").mkdir()
    (path / "z" / "g").write_bytes(b"x" * 100_000)
    (path / "z" / "outside").symlink_to(outside)
    os.chmod(path / "z", mode)
for mode in (0o000, 0o300):
    try:
        with cache.store(f"m{mode:o}") as path:
            closed(path, mode)
        with cache.load(f"m{mode:o}") as path:
            results[f"m{mode:o}"] = [oct(stat.S_IMODE(os.stat(path / "z").st_mode)), (path / "z" / "g").stat().st_size]
    except (SharedCacheError, OSError) as e:
        results[f"m{mode:o}"] = f"{type(e).__name__}: {e}"
try:
    with cache.store("raises") as path:
        closed(path, 0o000)
        raise ValueError("the block fails")
except ValueError:
    pass
with cache.stage() as path:
    closed(path, 0o300)
results["left"] = os.listdir(root + "/stage") + os.listdir(root + "/trash")
os.mkdir(root + "/trash/left-by-a-crash")
closed(__import__("pathlib").Path(root + "/trash/left-by-a-crash"), 0o000)
report = cache.gc()
results["gc"] = [report.trash_removed, report.trash_left]
results["after gc"] = os.listdir(root + "/trash")
print(json.dumps(results))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="running as an ordinary user needs root")
def test_trees_holding_a_directory_closed_to_its_owner_are_committed_or_removed_and_gc_reports_what_stays(
        reachable_tmp: Path) -> None:
    user = 41021
    interpreter, env = interpreter_for(user, user)
    root = reachable_tmp / "cache"
    FsCache(root)  # (made by root, then given to the user)
    subprocess.run(["chown", "-R", f"{user}:{user}", str(root)], check=True, timeout=30)
    # What the user cannot remove: a tree of root's, in the user's trash.
    (root / "trash" / "root-s").mkdir()
    (root / "trash" / "root-s" / "f").write_text("root's")
    outside = reachable_tmp / "outside"
    outside.mkdir(mode=0o700)
    os.chown(outside, user, user)
    outside.chmod(0o000)
    ran = subprocess.run([interpreter, "-c", CLOSED_DIRECTORIES, str(root), str(outside)], capture_output=True,
                         text=True, timeout=120, env=env, user=user, group=user)
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)
    assert results["m0"] == results["m300"] == ["0o555", 100_000], results
    assert results["left"] == ["root-s"], results  # the failed store's and the stage's trees were removed
    assert results["gc"] == [1, 1], results  # the crash's tree removed; root's said to stay
    assert results["after gc"] == ["root-s"], results
    assert stat.S_IMODE(outside.stat().st_mode) == 0, "no walk followed a link"


def test_last_release_deletes_an_entry_not_kept(root: Path) -> None:
    cache = FsCache(root)
    me = Owner.current()
    with cache.store("tmp", keep=False, holder=me) as path:
        fill(path, "tmp", "n", [1000])
    size = cache.info("tmp").size
    second = cache.hold("tmp", me)
    assert cache.info("tmp").users == (os.getpid(), os.getpid())
    assert cache.release("tmp", lease=second) is False
    assert loads(cache, "tmp")
    assert cache.release("tmp", me) is True
    assert "tmp" not in cache and cache.size == 0 and size > 0
    with pytest.raises(MissError):
        cache.release("tmp", me)
    # release(keep=True) turns it into a cache entry
    put(cache, "kept")
    cache.hold("kept", me)
    with pytest.raises(UsageError):
        cache.release("kept", Owner(boot_id(), 1, 0))
    assert cache.release("kept", me, keep=True) is False
    assert loads(cache, "kept")
    assert_clean(root)


#: Holds a use of entry "shared" of the cache ``argv[1]``, says so by making the file ``argv[3]``,
#: then releases it as soon as the file ``argv[2]`` exists, and prints whether that deleted it.
RELEASES_AT_ONCE = """
import os, sys, time
from sharedcache import FsCache
from sharedcache.engine.leases import Owner
cache, go = FsCache(sys.argv[1]), sys.argv[2]
cache.hold("shared", Owner.current())
open(sys.argv[3], "w").close()
end = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < end:
    pass  # (no sleep: the releases start together)
print(cache.release("shared", Owner.current()))
"""


@pytest.mark.parametrize("parent", ["keeps its use", "released first"])
def test_uses_released_at_once_leave_the_entry_to_the_last_release_only(root: Path, tmp_path: Path,
                                                                       parent: str) -> None:
    # A release that leaves another owner's live use takes no index transaction.  Jobs releasing
    # at once must still neither all leave the deletion to another (an entry nobody uses, kept
    # until gc) nor delete it under a use that stays.
    cache = FsCache(root)
    me = Owner.current()
    for attempt in range(8):
        with cache.store("shared", keep=False, holder=me) as path:
            fill(path, "shared", "n", [1000])
        go = tmp_path / f"go{attempt}"
        ready = [tmp_path / f"ready{attempt}-{n}" for n in range(4)]
        releasers = [subprocess.Popen([sys.executable, "-c", RELEASES_AT_ONCE, str(root), str(go), str(r)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
        try:
            deadline = time.monotonic() + 30
            while not all(r.exists() for r in ready):
                assert time.monotonic() < deadline and all(p.poll() is None for p in releasers)
                time.sleep(0.01)
            if parent == "released first":
                assert cache.release("shared", me) is False
            go.touch()
            results = [p.communicate(timeout=60) for p in releasers]
        finally:
            for p in releasers:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        assert all(p.returncode == 0 for p in releasers), results
        said = [out.strip() for out, _err in results]
        if parent == "keeps its use":
            assert said == ["False"] * 4 and cache.info("shared").users == (os.getpid(),), said
            assert cache.release("shared", me) is True
        else:
            assert "True" in said, said
        assert "shared" not in cache, f"attempt {attempt}: {said}"
    assert cache.gc() == GcReport()
    assert_clean(root)


def test_a_use_taken_while_the_last_release_goes_to_the_index_keeps_the_entry(root: Path,
                                                                             children: Children) -> None:
    # The release found its lease the last live one without the index, and is on its way to the
    # transaction that deletes the entry: a use taken meanwhile holds no lock once taken, only
    # its lease, which the transaction must see.
    cache = FsCache(root)
    with cache.store("e", keep=False) as path:
        fill(path, "e", "n", [1000])
    releaser = children.start("crash_at", root=str(root), op="release", name="e",
                              points=[("release", "_release_in_transaction", "call")])
    releaser.expect("paused")
    lease = cache.hold("e", Owner.current())
    releaser.go_on()
    releaser.expect("finished")
    assert cache.info("e").users == (os.getpid(),)
    assert loads(cache, "e")
    assert cache.release("e", lease=lease) is True
    assert "e" not in cache
    assert_clean(root)


#: Releases the lease ``argv[2]`` of entry "e" of the cache ``argv[1]``, the look at the other
#: leases that follows its removal failing (out of descriptors); prints the error.
LOOK_FAILS = """
import errno, sys
from sharedcache import FsCache
removed = []
def _hook(event, args):
    if event == "os.remove" and str(args[0]) == sys.argv[2]:
        removed.append(True)
    elif event == "os.listdir" and removed:
        removed.clear()
        raise OSError(errno.EMFILE, "Too many open files")
cache = FsCache(sys.argv[1])
sys.addaudithook(_hook)
try:
    cache.release("e", lease=sys.argv[2])
except OSError as e:
    print(type(e).__name__, e.errno)
"""


def test_a_release_that_fails_after_removing_its_lease_gives_it_back(root: Path) -> None:
    # Without the index, a release removes its lease, then looks at the others: a failure there
    # would leave the job without the use it still holds, as far as it is told.
    cache = FsCache(root)
    me = Owner.current()
    with cache.store("e", keep=False, holder=me) as path:
        fill(path, "e", "n", [1000])
    lease = cache.lease_of("e", me)
    assert lease is not None
    failed = subprocess.run([sys.executable, "-c", LOOK_FAILS, str(root), lease], capture_output=True, text=True,
                            timeout=60)
    assert failed.stdout.split()[-1:] == [str(errno.EMFILE)], failed.stdout + failed.stderr
    assert cache.users("e") == [os.getpid()] and cache.lease_of("e", me) == lease
    assert cache.release("e", lease=lease) is True
    assert_clean(root)


#: Stores entry "e" in the cache ``argv[1]``, the block failing, and every opening failing from then
#: on (out of descriptors); prints the error that comes out.
STORE_FAILS_OUT_OF_FILES = """
import errno, os, sys
from sharedcache import FsCache
cache = FsCache(sys.argv[1])
os.mkdir(os.path.join(sys.argv[1], "trash", "left"))  # a tree left to delete: the trash is opened
out = []
def _hook(event, args):
    if out and event == "open":
        raise OSError(errno.EMFILE, "Too many open files")
sys.addaudithook(_hook)
try:
    with cache.store("e") as path:
        out.append(True)
        raise ValueError("the block's own error")
except Exception as e:
    print(type(e).__name__, e)
"""


def test_a_store_whose_cleanup_has_no_descriptor_left_raises_the_blocks_own_error(root: Path) -> None:
    # The staging tree of a failed store is removed through a descriptor of stage/, and the trash
    # emptied through one of trash/ (opened when it holds a tree, and on btrfs always); with none
    # left, the cleanup's OutOfFilesError came out in place of what made the block fail.
    failed = subprocess.run([sys.executable, "-c", STORE_FAILS_OUT_OF_FILES, str(root)], capture_output=True,
                            text=True, timeout=60)
    assert failed.stdout == "ValueError the block's own error\n", failed.stdout + failed.stderr
    FsCache(root).gc()  # the staging tree left is gc's
    assert_clean(root)


#: Holds entry "e" of the cache ``argv[1]`` for the process ``argv[2]``, from a process of its own.
HOLDS_FOR = """
import sys
from sharedcache import FsCache
from sharedcache.engine.leases import Owner
FsCache(sys.argv[1]).hold("e", Owner.of(int(sys.argv[2])))
"""


def test_a_hold_judges_a_few_leases_and_the_dead_still_do_not_pile_up(root: Path) -> None:
    # A hold judged every lease, reading /proc for each owner: a use of an entry with 500 live
    # leases took 1.6x the time of one with one.  It judges sixteen: the dead among them go,
    # never a live one, and holds by other processes judge others, until none is left.
    cache = FsCache(root)
    me = Owner.current()
    put(cache, "e")
    entry = str(root / "objects" / "e")
    live = {cache.hold("e", me) for _ in range(20)}
    ended = subprocess.Popen(["sleep", "60"])
    gone = Owner.of(ended.pid)
    ended.kill()
    ended.wait(10)
    assert gone is not None and not gone.alive()
    for _ in range(200):
        leases.add_lease(entry, gone)

    def dead() -> int:
        return sum(not lease.startswith(me.key + ".") for lease in os.listdir(Path(entry) / "leases"))

    live.add(cache.hold("e", me))
    assert 200 - leases.HOLD_JUDGES <= dead() < 200
    holds = 0
    while dead() and holds < 60:
        subprocess.run([sys.executable, "-c", HOLDS_FOR, str(root), str(os.getpid())], check=True, timeout=60)
        holds += 1
    assert dead() == 0, f"{dead()} dead leases left after {holds} holds"
    assert live <= set(os.listdir(Path(entry) / "leases"))
    assert len(cache.users("e")) == len(live) + holds


def test_lease_of_a_killed_owner_is_reclaimed_by_gc(root: Path, children: Children) -> None:
    cache = FsCache(root)
    put(cache, "a")
    with cache.store("tmp", keep=False) as path:
        fill(path, "tmp", "n", [1000])
    holder = children.start("hold", root=str(root), name="tmp", how="lease")
    holder.expect("held")
    assert cache.info("tmp").users == (holder.pid,)
    assert cache.gc().leases_reclaimed == 0 and "tmp" in cache  # a live lease is kept
    holder.kill()
    assert cache.info("tmp").users == () and not cache.info("tmp").in_use
    report = cache.gc()
    assert report.leases_reclaimed == 1 and report.entries_deleted == 1
    assert only_entries(cache) == {"a"}
    assert_clean(root)


@pytest.mark.parametrize("found_by", ["gc", "eviction"])
def test_a_use_whose_owner_was_killed_ends_for_eviction_when_found_dead(
    root: Path, children: Children, found_by: str
) -> None:
    # "long" is held by a process killed once "short", used later, was released: the end of its
    # use is when gc, or else the eviction, found it dead, so a store that needs room evicts
    # "short".  It ranked "long" by when its use began, unless gc had reclaimed it first.
    cache = _long_and_short(root)
    holder = children.start("hold", root=str(root), name="long", how="lease")
    holder.expect("held")
    time.sleep(0.01)  # (the file system's clock may tick coarsely)
    cache.release("short", lease=cache.hold("short", Owner.current()))
    time.sleep(0.01)
    holder.kill()
    if found_by == "gc":
        assert cache.gc().leases_reclaimed == 1
    put(cache, "new")
    assert only_entries(cache) == {"long", "new"}
    assert _lease_pids(root, "long") == []


@pytest.mark.parametrize("clock", ["the disk's", "whole seconds"])
@pytest.mark.parametrize("kept_by", ["its store", "the killed job's use"])
def test_a_use_whose_owner_was_killed_ends_for_eviction_before_the_release_that_asks_for_it(
    root: Path, tmp_path: Path, children: Children, kept_by: str, clock: str
) -> None:
    # A process holding "used-by-a-killed-job" is killed before "released" is released with a
    # budget that leaves room for one: the eviction that the release asks for finds the killed
    # job's use dead, and ends it just before the release's own end, evicting its entry.  Ended
    # as it was found, after the release, it outranked "released", which went instead: the end
    # of sc run that gives its budget back evicted its own repository.  So too where only the
    # killed job's use kept it, which its row does not say: the eviction finds it kept among
    # those nobody keeps.  And where the job's hold and the release fell in one tick of the file
    # system's clock (of 4 ms on most disks, one run in five here; of whole seconds on ext4 with
    # 128-byte inodes), their times were the same, the name came second, and "released" went.
    with contextlib.ExitStack() as stack:
        if clock == "whole seconds":
            root = stack.enter_context(mounted_image(tmp_path / "seconds", "ext4", 16, "-I", "128")) / "cache"
        cache = FsCache(root)
        stack.callback(cache.close)  # (before the file system is unmounted)
        one = put(cache, "released")
        put(cache, "used-by-a-killed-job", keep=kept_by == "its store")
        holder = children.start("hold", root=str(root), name="used-by-a-killed-job", how="lease",
                                keep=kept_by != "its store")
        holder.expect("held")
        lease = cache.hold("released", Owner.current())
        holder.kill()
        assert cache.release("released", lease=lease, max_size=one) is False
        assert only_entries(cache) == {"released"}


@pytest.mark.parametrize("kept_until", ["its release", "its job was killed"])
@pytest.mark.parametrize("asked_by", ["store", "release", "full disk"])
def test_an_entry_nobody_keeps_whose_users_were_killed_goes_before_every_kept_one(
    root: Path, children: Children, asked_by: str, kept_until: str
) -> None:
    # "kept" was last used (released, or held by a job killed since) before a job, killed since,
    # began its use of "not-kept", which nobody keeps: garbage once its users are dead, as the
    # release of that use would have left it, it goes before every kept entry, whichever eviction
    # comes: a store's or a release's for their budget, or one for a full file system.  Ranked by
    # when that use began, or by when it was found dead, it came after "kept", which went in its
    # place, and stayed, nobody's, until a gc.
    jobs = []

    def hold_in_a_job(name: str) -> None:
        jobs.append(children.start("hold", root=str(root), name=name, how="lease"))
        jobs[-1].expect("held")

    cache = FsCache(root)
    one = put(cache, "kept")
    if kept_until == "its release":
        cache.release("kept", lease=cache.hold("kept", Owner.current()))
    else:
        hold_in_a_job("kept")
    put(cache, "not-kept", keep=False)
    hold_in_a_job("not-kept")
    for job in jobs:
        job.kill()
    budget = 2 * one + one // 2
    if asked_by == "store":
        cache.max_size = budget
        put(cache, "new")
    elif asked_by == "release":
        put(cache, "new")
        assert cache.release("new", lease=cache.hold("new", Owner.current()), max_size=budget) is False
    else:
        put(cache, "new")
        assert cache.evict(one) == one
    assert only_entries(cache) == {"kept", "new"}


def test_an_eviction_passes_the_entries_jobs_use_with_a_look_at_their_leases(
    root: Path, children: Children
) -> None:
    # Two jobs use entries nobody keeps, as jobs use most: the eviction that must delete "kept",
    # used before them all, first walks them for garbage (above).  Each is looked at as the first
    # step of a release looks: its leases listed, its lock left alone, and each job judged once.
    # It took each one's lock twice and judged its job at each look, all under the index's write
    # lock (the time it took is benchmarks/bench_fscache.py's to measure).
    cache = FsCache(root)
    one = put(cache, "kept")
    used = [f"used-{i}" for i in range(12)]
    with Sleeper() as first, Sleeper() as second:
        jobs = [first.pid, second.pid]
        for i, name in enumerate(used):
            put(cache, name, keep=False)
            owner = Owner.of(jobs[i % 2])
            assert owner is not None
            cache.hold(name, owner)
        audit = children.start("evict_audit", root=str(root), free=one).result(120)
        assert only_entries(cache) == set(used)
    objects = str(root.absolute() / "objects")
    looks = sorted(line for line in audit["touched"]
                   if os.path.relpath(line.split(" ", 1)[1], objects).split(os.sep)[0] in used)
    assert looks == [f"open {os.path.join(objects, name, 'leases')}" for name in sorted(used)], (
        f"the eviction did more than list the leases of the entries in use: {looks[:4]}")
    judged = [path for path in audit["proc"] if path.split("/")[2] in {str(pid) for pid in jobs}]
    assert sorted(judged) == sorted(f"/proc/{pid}/stat" for pid in jobs)


def test_lease_of_a_killed_owner_is_reclaimed_by_the_next_hold_and_release(
    root: Path, children: Children
) -> None:
    cache = FsCache(root)
    me = Owner.current()
    for name in ("via-hold", "via-release"):
        with cache.store(name, keep=False) as path:
            fill(path, name, "n", [1000])
        holder = children.start("hold", root=str(root), name=name, how="lease")
        holder.expect("held")
        if name == "via-release":
            cache.hold(name, me)
        holder.kill()
        assert _lease_pids(root, name) == sorted({holder.pid, os.getpid()} if name == "via-release"
                                                 else {holder.pid})
        if name == "via-hold":
            cache.hold(name, me)
            assert _lease_pids(root, name) == [os.getpid()]  # the dead owner's lease is gone
        # the last live use is released: the dead lease does not keep the entry
        assert cache.release(name, me) is True
        assert name not in cache
    assert cache.size == 0
    assert_clean(root)


def _lease_pids(root: Path, name: str) -> list[int]:
    """The pids of every lease file of ``name``, live or dead."""
    leases = (root / "objects" / name / "leases").iterdir()
    return sorted(Owner.parse(lease.name.rpartition(".")[0]).pid for lease in leases)


def test_a_reused_pid_is_not_the_owner(root: Path) -> None:
    cache = FsCache(root)
    put(cache, "a")
    me = Owner.current()
    assert me.alive() and me.pid == os.getpid()
    impostors = [
        Owner(me.boot_id, me.pid, me.start_time + 1),  # same pid, other start: a reused pid
        Owner("another-boot", me.pid, me.start_time),  # same pid and start, before a reboot
    ]
    for impostor in impostors:
        assert not impostor.alive()
        cache.hold("a", impostor)
        assert cache.info("a").users == ()
        cache.remove("a")  # the impostor's lease does not make it busy
        put(cache, "a")
    assert Owner.parse(me.key) == me
    assert start_time(os.getpid()) == me.start_time


# -- metadata corruption ---------------------------------------------------------------------------


def _replace_cache_info(root: Path, content: object) -> Path:
    put(FsCache(root), "a")
    info = root / "cache.info"
    info.unlink()
    if content == "dir":
        info.mkdir()
    else:
        info.write_bytes(content)  # type: ignore[arg-type]
    return info


def _one_clear_line(error: CacheError, root: Path) -> str:
    message = str(error)
    assert "\n" not in message and str(root) in message
    assert error.__cause__ is None and error.__suppress_context__ | (error.__context__ is None)
    return message


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"shared-cache fscache 4\n", "made by a newer version of shared-cache (format 4); this version cannot use it"),
     (b"some other tool 1\n", "not a shared-cache cache")],
    ids=["future", "foreign"],
)
def test_foreign_cache_info_is_a_clear_cache_error_and_never_overwritten(root: Path, content: bytes, said: str) -> None:
    info = _replace_cache_info(root, content)
    for repair in (False, True):
        with pytest.raises(CacheError) as raised:
            FsCache(root, repair=repair)
        assert said in _one_clear_line(raised.value, root)
    assert info.read_bytes() == content
    assert (root / "objects" / "a").is_dir()  # nothing was touched


def test_cache_of_an_older_layout_is_refused_clearly_and_left_alone(root: Path) -> None:
    info = _replace_cache_info(root, b"shared-cache fscache 1\n")
    for repair in (False, True):
        with pytest.raises(CacheError) as raised:
            FsCache(root, repair=repair)
        assert "made by shared-cache 0.1, whose layout this version does not use; remove it" in _one_clear_line(raised.value, root)
    assert info.read_bytes() == b"shared-cache fscache 1\n"


def test_cache_of_the_format_before_is_used_and_brought_to_this_one(root: Path) -> None:
    # Format 3 adds entries of one boot, which a version of format 2 would delete as leftovers:
    # the marker changes so that such a version refuses the cache rather than use it.
    info = _replace_cache_info(root, b"shared-cache fscache 2\n")
    assert loads(FsCache(root), "a")
    assert info.read_bytes() == FORMAT_LINE == b"shared-cache fscache 3\n"


def test_a_read_only_cache_of_the_format_before_is_still_read(tmp_path: Path) -> None:
    # Its marker cannot be rewritten, and nothing of format 3 can be put in it either.  (A
    # read-only bind mount of the cache's directory; mounting needs root.)
    root, view = tmp_path / "cache", tmp_path / "view"
    info = _replace_cache_info(root, b"shared-cache fscache 2\n")
    view.mkdir()
    done = subprocess.run(["mount", "--bind", str(root), str(view)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount the cache: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        assert loads(FsCache(view), "a")
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    assert info.read_bytes() == b"shared-cache fscache 2\n"


@pytest.mark.parametrize("content", [b"", b"shared-cache fs", b"garbage\x00\xff" * 10, "dir"],
                         ids=["empty", "truncated", "garbage", "directory"])
def test_damaged_cache_info_is_a_clear_cache_error_and_gc_repairs_it(root: Path, content: object) -> None:
    info = _replace_cache_info(root, content)
    with pytest.raises(CacheError) as raised:
        FsCache(root)
    assert "damaged; run gc" in _one_clear_line(raised.value, root)
    FsCache(root, repair=True).gc()
    assert info.read_bytes() == FORMAT_LINE
    assert loads(FsCache(root), "a")


@pytest.mark.parametrize("damaged", ["objects", "stage.lock"])
def test_damage_a_gc_without_repair_leaves_says_how_to_repair_it_and_heals(root: Path, damaged: str) -> None:
    # Such a gc said "run gc to repair it" (or "gc removes it") of what it had just left.
    put(FsCache(root), "a")
    if damaged == "objects":  # a subdirectory replaced by a file
        fsutil.remove_tree(root / damaged)  # (shutil.rmtree fails on sealed data for all but root)
        (root / damaged).write_text("x")
    else:  # a lock file replaced by a directory
        (root / damaged).unlink()
        (root / damaged).mkdir()
    with pytest.raises(CacheError) as raised:
        FsCache(root).gc()
    message = _one_clear_line(raised.value, root)
    assert message.startswith(f"{root}/{damaged} is not a "), message
    assert message.endswith("; only a repairing gc repairs it: FsCache(root, repair=True).gc(), as sc gc does"), message
    FsCache(root, repair=True).gc()
    FsCache(root).gc()  # healed


def test_cache_root_that_is_a_file_is_a_cache_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="not a directory"):
        FsCache(tmp_path / "file")


def _checkpointed_cache(root: Path, n: int = 40) -> dict[str, int]:
    """A cache of ``n`` entries whose index is all in index.sqlite (no -wal), built by another
    process (this one keeps no connection to it); returns the entries' sizes."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[2]);"
        "from fscache_worker import fill; from sharedcache import FsCache;"
        "c = FsCache(sys.argv[1], durable=False)\n"
        f"for i in range({n}):\n"
        "    with c.store(f'e{i}') as p: fill(p, f'e{i}', 'n', [i * 1000])\n"
        "print(json.dumps({e.name: e.size for e in c.entries()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root), str(Path(__file__).parent)],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    assert not (root / "index.sqlite-wal").exists() or (root / "index.sqlite-wal").stat().st_size == 0
    return json.loads(out)


def _corrupt(index: Path, how: str) -> None:
    size = index.stat().st_size
    if how == "garbage":
        index.write_bytes(os.urandom(size))
    elif how == "header":
        with open(index, "r+b") as f:
            f.write(os.urandom(100))
    elif how == "pages":
        with open(index, "r+b") as f:
            f.seek(4096)
            f.write(os.urandom(size - 4096))
    elif how.startswith("truncated"):
        os.truncate(index, size // 2 if how == "truncated-half" else 4096)
    elif how == "directory":
        index.unlink()
        index.mkdir()
        (index / "x").write_text("x")
    else:
        raise AssertionError(how)


INDEX_DAMAGE = ["garbage", "header", "pages", "truncated-half", "truncated-page", "directory"]


@pytest.mark.parametrize("how", INDEX_DAMAGE)
def test_corrupt_index_is_a_cache_error_and_gc_rebuilds_it(root: Path, how: str) -> None:
    sizes = _checkpointed_cache(root)
    budget = 10 * sum(sizes.values())
    FsCache(root).max_size = budget
    _corrupt(root / "index.sqlite", how)
    cache = FsCache(root)
    me = Owner.current()
    # Reading and holding do not need the index: the data stays usable until gc repairs it.
    assert "e3" in cache and loads(cache, "e3") and cache.max_size == budget
    cache.hold("e5", me)
    assert cache.users("e5") == [os.getpid()]
    # Nor does the release of a use that leaves another: only a last use's needs the index.
    two = [cache.hold("e3", me), cache.hold("e3", me)]
    assert cache.release("e3", lease=two[0]) is False and cache.users("e3") == [os.getpid()]
    operations = {
        "size": lambda: cache.size,
        "set max_size": lambda: setattr(cache, "max_size", "1GB"),
        "entries": cache.entries,
        "info": lambda: cache.info("e3"),
        "store": lambda: put(cache, "new"),
        "remove": lambda: cache.remove("e4"),
        "release": lambda: cache.release("e5", me),
    }
    for what, call in operations.items():
        with pytest.raises(CacheError, match="index of cache .* is unusable") as raised:
            call()
        assert "\n" not in str(raised.value), what
        assert raised.value.__cause__ is None and raised.value.__suppress_context__, what
    report = cache.gc()
    assert report.index_rebuilt
    assert {e.name: e.size for e in cache.entries()} == sizes
    assert cache.info("e5").users == (os.getpid(),)  # leases live with their entries: kept
    assert cache.max_size == budget  # and so does the budget
    for name in sizes:
        assert loads(cache, name)
    assert cache.size == sum(sizes.values()) == fresh_scan(root)
    put(cache, "after")
    assert cache.gc() == GcReport()  # a second gc finds nothing to do
    assert_clean(root)


@pytest.mark.parametrize("how", SOUND_LOOKING_DAMAGE)
def test_an_index_that_sqlite_s_quick_check_finds_sound_yet_is_damaged_is_rebuilt_by_gc(root: Path, how: str) -> None:
    """Damage that PRAGMA quick_check does not see (a table and its index that disagree, values
    of the wrong kind) failed every transaction, gc's too ("run gc to rebuild it"), or ended in a
    ValueError, or failed listings while gc found nothing to do."""
    sizes = _checkpointed_cache(root, 10)
    damage_in_values(root / "index.sqlite", how)
    cache = FsCache(root)
    failures = []
    for call in (lambda: cache.size, cache.entries):
        try:
            call()
        except CacheError as e:
            failures.append(str(e))
    assert failures and all(re.fullmatch(r"the index of cache .* is unusable \(.*\); run gc to rebuild it", failure)
                            for failure in failures), failures
    cache.close()
    report = FsCache(root).gc()
    assert report.index_rebuilt, report
    cache = FsCache(root)
    assert {e.name: e.size for e in cache.entries()} == sizes
    assert cache.size == fresh_scan(root)
    put(cache, "after")
    assert cache.gc() == GcReport()
    assert_clean(root)


def test_a_last_release_that_a_damaged_index_fails_leaves_the_entry_and_its_use(root: Path) -> None:
    """The release moved the entry into the trash, then failed on the index and reported its
    failure: the entry was gone, and so was its use."""
    _checkpointed_cache(root, 3)
    with Sleeper() as job:
        owner = Owner.of(job.pid)
        cache = FsCache(root)
        with cache.store("used", keep=False, holder=owner) as path:
            fill(path, "used", "n", [5000])
        cache.close()
        damage_in_values(root / "index.sqlite", "misplaced-total")
        cache = FsCache(root)
        with pytest.raises(CacheError, match="unusable"):
            cache.release("used", owner)
        assert "used" in cache and cache.users("used") == [job.pid]
        assert os.listdir(root / "trash") == []
        assert cache.gc().index_rebuilt
        assert cache.release("used", owner) is True
        assert "used" not in cache


def test_process_recovers_once_another_process_rebuilt_the_index(root: Path, children: Children) -> None:
    sizes = _checkpointed_cache(root, 10)
    cache = FsCache(root)
    assert cache.size == sum(sizes.values())  # this thread's connection is open now
    _corrupt(root / "index.sqlite", "garbage")
    with pytest.raises(CacheError):
        cache.entries()
    assert children.start("gc", root=str(root)).result()["index_rebuilt"]
    assert {e.name for e in cache.entries()} == set(sizes)
    assert loads(cache, "e1")
    put(cache, "new")
    assert "new" in FsCache(root)  # the same index as everybody else


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_lost_index_is_rebuilt_by_gc(root: Path, how: str) -> None:
    """An index that is gone (or truncated to nothing) is a new, empty index to SQLite: the
    committed entries stay readable, and are accounted again once gc adopts them."""
    sizes = _checkpointed_cache(root, 10)
    if how == "deleted":
        (root / "index.sqlite").unlink()
    else:
        os.truncate(root / "index.sqlite", 0)
    cache = FsCache(root)
    assert loads(cache, "e1") and cache.size == 0
    assert cache.gc().orphans_adopted == len(sizes)
    assert {e.name: e.size for e in cache.entries()} == sizes
    assert cache.size == fresh_scan(root)
    assert all(loads(cache, name) for name in sizes)


def test_the_release_of_an_entry_whose_row_is_lost_does_not_say_it_deleted_it(root: Path) -> None:
    # Until gc adopts it, an entry without a row is none an eviction removes; the release of one
    # of its two uses said it was deleted ("repository deleted") while the other still used it.
    cache = FsCache(root)
    put(cache, "entry")
    users = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        owners = [Owner.of(user.pid) for user in users]
        for owner in owners:
            cache.hold("entry", owner)
        cache.close()
        (root / "index.sqlite").unlink()
        cache = FsCache(root)
        assert cache.release("entry", owners[0]) is False
        assert "entry" in cache and cache.users("entry") == [users[1].pid]
        assert cache.release("entry", owners[1]) is False and "entry" in cache  # (stored kept)
    finally:
        for user in users:
            user.kill()
            user.wait(10)


def test_numbers_of_int_and_float_subclasses_are_taken(root: Path) -> None:
    # type() is not isinstance(): an IntEnum gid or size, or a float subclass's deadline (numpy's
    # float64, from time.monotonic() + a numpy number), was refused as no number.
    class Gid(enum.IntEnum):
        OURS = os.getgid()

    class Seconds(float):
        pass

    assert FsCache(root / "group", group=Gid.OURS).shared
    cache = FsCache(root / "private")
    cache.deadline = Seconds(time.monotonic() + 60)
    assert cache.evict(Gid.OURS) == 0


def test_index_emptied_under_other_processes_is_a_cache_error_and_gc_rebuilds_it(
    root: Path, children: Children
) -> None:
    sizes = _checkpointed_cache(root, 10)
    holder = children.start("hold", root=str(root), name="e3", connect=True)
    holder.expect("held")
    os.truncate(root / "index.sqlite", 0)
    cache = FsCache(root, timeout=1)
    start = time.monotonic()
    with pytest.raises(CacheError, match="unusable.*run gc"):
        cache.entries()
    assert time.monotonic() - start < 10
    assert cache.gc().index_rebuilt
    assert {e.name: e.size for e in cache.entries()} == sizes
    assert cache.size == fresh_scan(root)
    assert all(loads(cache, name) for name in sizes)


OPENS_AND_CLOSES = """
import sys, time
from sharedcache import CacheError, FsCache
cache, end, failed = FsCache(sys.argv[1]), time.monotonic() + float(sys.argv[2]), []
while time.monotonic() < end:
    try:
        cache.entries()
    except CacheError as e:
        failed.append(str(e))
    cache.close()  # the last connection to close removes the index's -wal and -shm
print(len(failed), failed[:1])
"""


def test_connections_opening_and_closing_in_other_processes_never_make_the_index_unusable(root: Path) -> None:
    """Every connection's last close removes the files beside the index, and the next one makes
    them anew: a process that looks at them just then must not take the file that went (or
    its mode before its maker set it) for one it may not write."""
    made = FsCache(root)
    made.entries()
    made.close()  # the children's connections are then the only ones
    processes = [subprocess.Popen([sys.executable, "-c", OPENS_AND_CLOSES, str(root), "4"],
                                  stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert outputs == ["0 []\n"] * len(processes)


def test_a_cache_made_again_under_a_live_object_is_accounted_in_its_new_index(root: Path) -> None:
    old = FsCache(root, max_size=10_000_000)
    with old.store("x") as path:
        (path / "f").write_bytes(b"x" * 100_000)
    assert old.size > 0
    fsutil.remove_tree(root)  # an admin clears the cache; another program makes it again
    new = FsCache(root, max_size=10_000_000)
    with old.store("y") as path:
        (path / "f").write_bytes(b"y" * 100_000)
    assert set(os.listdir(root / "objects")) == {"y"}
    assert [e.name for e in new.entries()] == ["y"]  # its row is in the index at the path
    assert [e.name for e in old.entries()] == ["y"]  # not in the deleted file
    assert old.size == new.size == new.info("y").size
    assert new.gc().orphans_adopted == 0
    old.close()
    assert not any(target.startswith(f"{root}/index.sqlite") and target.endswith("(deleted)") for target in _open_files())


def test_gc_of_a_cache_removed_under_a_live_object_says_so_as_every_method_does(root: Path) -> None:
    # gc() raised the bare FileNotFoundError of its probe of file locks.
    cache = FsCache(root)
    with cache.store("x") as path:
        (path / "f").write_text("x")
    fsutil.remove_tree(root)
    for call in (cache.entries, cache.gc):
        with pytest.raises(CacheError) as raised:
            call()
        assert str(raised.value).startswith(f"cache {root} is no longer a directory ("), call
    cache.close()


def test_a_store_whose_cache_is_removed_under_its_block_says_so_as_every_method_does(root: Path) -> None:
    # The store blamed its block: "the block removed or replaced its data directory".
    cache = FsCache(root)
    with pytest.raises(CacheError) as raised:
        with cache.store("x") as path:
            (path / "f").write_text("x")
            shutil.rmtree(root)
    assert str(raised.value).startswith(f"cache {root} is no longer a directory ("), raised.value
    cache.close()


def test_a_cache_too_deep_for_sqlite_says_so_and_gc_sets_nothing_aside(tmp_path: Path) -> None:
    # SQLite opens a file by a path of at most 504 bytes: a store said that the index was
    # "unusable (unable to open database file); run gc to rebuild it", and gc set it aside, to
    # fail again the same way.
    parent = tmp_path
    while len(os.fsencode(parent)) < 400:
        parent /= "d" * 50
    deepest = parent / ("d" * (504 - len("/index.sqlite") - len(os.fsencode(parent)) - 1))
    too_deep = parent / ("d" * (len(deepest.name) + 1))
    with FsCache(deepest).store("x") as path:
        (path / "f").write_text("x")
    cache = FsCache(too_deep)

    def store() -> None:
        with cache.store("x"):
            pass

    for call in (store, cache.gc):
        with pytest.raises(CacheError) as raised:
            call()
        assert str(raised.value) == (
            f"cache {too_deep} is too deep for its index: SQLite opens a file by a path of at most 504 bytes, "
            "and the index's takes 505; use a cache at a shorter path")
    assert (too_deep / "index.sqlite").is_file() and os.listdir(too_deep / "trash") == []


def test_a_cache_closed_or_let_go_keeps_nothing_of_it_open(root: Path) -> None:
    # close() closed this thread's connection alone, never the directories of own_directory,
    # which a cache let go kept open for the life of the process.
    def held() -> list[str]:
        return [target for target in _open_files() if target.startswith(str(root))]

    cache = FsCache(root)
    with cache.store("x") as path:
        (path / "f").write_text("x")
    cache.own_directory("populate")
    assert held()
    cache.close()
    assert held() == []
    assert [e.name for e in cache.entries()] == ["x"]  # (what it needs, it opens again)
    assert os.listdir(cache.own_directory("populate")) == []
    del cache
    gc.collect()  # (an exception's traceback may hold the object in a cycle)
    assert held() == []


def _open_files() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor
    return found


# -- a model of the whole API ----------------------------------------------------------------------


class CacheModel(RuleBasedStateMachine):
    """Random sequences of stores, loads, removals, budgets and gc against a model.

    Checks after every step: the accounted size is the sum of the entries' sizes and a fresh scan,
    never above the budget; every entry holds its last committed content; eviction only ever
    removes entries older (by last load) than every surviving one.
    """

    NAMES = st.sampled_from([f"n{i}" for i in range(8)])

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="fscache-model-")
        self.root = Path(self.dir) / "cache"
        self.cache = FsCache(self.root, durable=False)
        self.model: dict[str, str] = {}  # name -> nonce
        self.order: list[str] = []  # least recently used first
        # name -> the time of its last use, as its lock says: the file system's clock is coarse
        # (a tick of a few milliseconds), so two uses in one tick tie, and either may go first.
        self.used: dict[str, float] = {}
        self.counter = 0

    def teardown(self) -> None:
        fsutil.remove_tree(self.dir)

    def _evicted(self, before: list[str], keep: set[str]) -> None:
        gone = [n for n in before if n not in keep]
        survivors = [n for n in before if n in keep]
        older = [(g, s) for g in gone for s in survivors
                 if before.index(s) < before.index(g) and self.used[s] != self.used[g]]
        assert not older, f"evicted {gone} although {survivors} were used less recently"
        for n in gone:
            del self.model[n]
            del self.used[n]
            self.order.remove(n)

    def _used(self, name: str) -> None:
        """``name`` was just stored or loaded: it is now the most recently used."""
        if name in self.order:
            self.order.remove(name)
        self.order.append(name)
        self.used[name] = os.stat(self.root / "objects" / name / "lock").st_mtime

    @rule(name=NAMES, sizes=st.lists(st.integers(0, 40000), min_size=1, max_size=4))
    def store(self, name: str, sizes: list[int]) -> None:
        self.counter += 1
        nonce = str(self.counter)
        before = list(self.order)
        budget = self.cache.max_size
        try:
            with self.cache.store(name) as path:
                fill(path, name, nonce, sizes)
        except EntryTooLargeError:
            # refused only if the entry (its files, MANIFEST, data/ and sub/) may exceed the budget
            blocks = sum(-(-size // BLOCK) for size in sizes) + 3
            assert budget is not None and budget < blocks * BLOCK
            return
        present = only_entries(self.cache)
        if name in self.model:
            assert name in present  # the existing entry stays, ours is discarded
        else:
            self.model[name] = nonce
            self._used(name)
        self._evicted(before, present)

    @rule(name=NAMES)
    def load(self, name: str) -> None:
        assert loads(self.cache, name) == (name in self.model)
        if name in self.model:
            self._used(name)

    @rule(name=NAMES)
    def remove(self, name: str) -> None:
        before = self.cache.size
        size = self.cache.info(name).size if name in self.model else 0
        try:
            self.cache.remove(name)
        except MissError:
            assert name not in self.model
            return
        del self.model[name]
        del self.used[name]
        self.order.remove(name)
        assert self.cache.size == before - size

    @rule(budget=st.one_of(st.none(), st.integers(0, 300_000)))
    def set_budget(self, budget: int | None) -> None:
        before = list(self.order)
        self.cache.max_size = budget
        self._evicted(before, only_entries(self.cache))

    @rule()
    def gc(self) -> None:
        assert self.cache.gc() == GcReport()  # nothing crashed: nothing to repair

    @invariant()
    def consistent(self) -> None:
        entries = self.cache.entries()
        assert {e.name for e in entries} == set(self.model)
        size = self.cache.size
        assert size == sum(e.size for e in entries) == fresh_scan(self.root)
        budget = self.cache.max_size
        assert budget is None or size <= budget
        for name, nonce in self.model.items():
            manifest = (self.root / "objects" / name / "data" / "MANIFEST").read_text()
            assert f'"nonce": "{nonce}"' in manifest
        assert list((self.root / "stage").iterdir()) == []
        assert list((self.root / "trash").iterdir()) == []


CacheModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_model = CacheModel.TestCase


# -- scale -----------------------------------------------------------------------------------------


def _many(root: Path, n: int) -> FsCache:
    cache = FsCache(root, durable=False)
    for i in range(n):
        with cache.store(f"entry-{i:06d}") as path:
            (path / "f").write_bytes(b"%d" % i)
    return cache


def _check_scale(root: Path, cache: FsCache, n: int, children: Children) -> None:
    """What eviction, gc and entries() do in a cache of ``n`` entries: eviction touches its victims
    only (so its cost does not grow with the cache).  How long they take is measured by
    benchmarks/bench_fscache.py, not here: a shared machine's timings would make a flaky test."""
    entries = cache.entries()
    assert len(entries) == n
    one = entries[0].size
    assert cache.size == n * one
    assert cache.gc() == GcReport()
    # loads of old entries make them recent: eviction must skip them
    recent = [f"entry-{i:06d}" for i in range(0, n // 100, 2)]
    for name in recent:
        with cache.load(name):
            pass
    # evict 1% in another process, recording every path below objects/ it touches
    audit = children.start("evict_audit", root=str(root), free=(n // 100) * one).result(120)
    assert audit["before"] - audit["after"] == (n // 100) * one
    remaining = only_entries(cache)
    evicted = {f"entry-{i:06d}" for i in range(n)} - remaining
    assert len(evicted) == n // 100 and not evicted & set(recent)
    assert evicted == {f"entry-{i:06d}" for i in range(n // 100 + len(recent))} - set(recent)
    objects = str(root.absolute() / "objects")
    touched = {p.split(" ", 1)[1] for p in audit["touched"]}
    # (The recently used candidates are only looked at with stat, which raises no audit event.)
    strangers = {p for p in touched if os.path.relpath(p, objects).split(os.sep)[0] not in evicted}
    assert strangers == set(), f"eviction touched other entries: {sorted(strangers)[:5]}"
    # (and the audit did see the victims' paths: it would have seen the others')
    assert {os.path.relpath(p, objects).split(os.sep)[0] for p in touched} == evicted
    # (leases/ is listed through a descriptor, opened without following a link: its open is the
    # listing's path.)
    listed = {line.split(" ", 1)[1] for line in audit["touched"]
              if line.startswith(("os.scandir", "os.listdir"))
              or (line.startswith("open ") and line.endswith(os.sep + "leases"))}
    assert listed == {os.path.join(objects, name, "leases") for name in evicted}, (
        "eviction listed more than its victims' leases")
    assert cache.size == (n - n // 100) * one <= cache.max_size


@pytest.fixture
def big_root(tmp_path: Path) -> Iterator[Path]:
    """A cache directory removed at the end (not left for pytest to delete in later runs)."""
    try:
        yield tmp_path / "cache"
    finally:
        fsutil.remove_tree(tmp_path / "cache")


# Making the entries takes about 1.5 s of CPU per thousand, and a loaded machine gives the test a
# fraction of a core: beside two busy processes it took over 120 s, the suite's timeout.
@pytest.mark.timeout(600)
def test_ten_thousand_entries(big_root: Path, children: Children) -> None:
    n = 10_000
    _check_scale(big_root, _many(big_root, n), n, children)


@pytest.mark.skipif(not os.environ.get("SC_SLOW_TESTS"), reason="slow: set SC_SLOW_TESTS=1")
@pytest.mark.timeout(600)
def test_hundred_thousand_entries(big_root: Path, children: Children) -> None:
    n = 100_000
    _check_scale(big_root, _many(big_root, n), n, children)


def test_a_deadline_bounds_the_waits_of_the_thread_that_set_it_only(tmp_path: Path) -> None:
    # use() from several threads shares one FsCache: one caller's --timeout must not cut short
    # the waits of another, which keeps the cache's own bound (here 4 s: the thread whose time
    # is up may take a while to give up on a loaded machine, and must still be told apart).
    import threading

    from sharedcache import WaitTimeoutError

    cache = FsCache(tmp_path / "c", timeout=4.0)
    with cache.stage():  # (makes stage.lock)
        pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(30)\n"), str(tmp_path / "c" / "stage.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        def waited() -> float:
            start = time.monotonic()
            with pytest.raises(WaitTimeoutError), cache.stage():
                pass
            return time.monotonic() - start

        cache.deadline = time.monotonic()  # this thread's time is up
        other: list[float] = []
        thread = threading.Thread(target=lambda: other.append(waited()))
        thread.start()
        mine = waited()
        thread.join(10)
        assert mine < 2 and len(other) == 1 and other[0] >= 3.9, (mine, other)
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_a_failed_transaction_undoes_until_an_undo_fails_then_ends_everything(tmp_path: Path) -> None:
    # A release whose COMMIT failed gave its lease back into a tree left in the trash when the
    # rename back failed (a store of the name had made the entry again, SQLite having let the
    # index go), and closed the entry's lock before the lease was back.
    cache = FsCache(tmp_path / "cache")  # (kept: its connections close as it is freed)
    db = cache._db()
    happened: list[str] = []

    def failing() -> None:
        happened.append("rename back")
        raise OSError(errno.ENOTEMPTY, "made again meanwhile")

    with pytest.raises(RuntimeError), db.transaction():
        db.at_end(lambda: happened.append("lease given back"), lambda: happened.append("directory closed"))
        db.at_end(failing, lambda: happened.append("lock closed"))
        raise RuntimeError("the COMMIT failed")
    assert happened == ["rename back", "lock closed", "directory closed"]
    happened.clear()
    with pytest.raises(RuntimeError), db.transaction():
        db.at_end(lambda: happened.append("lease given back"), lambda: happened.append("directory closed"))
        db.at_end(lambda: happened.append("rename back"), lambda: happened.append("lock closed"))
        raise RuntimeError("the COMMIT failed")
    assert happened == ["rename back", "lease given back", "lock closed", "directory closed"]
    happened.clear()
    with db.transaction():
        db.at_end(lambda: happened.append("undone"), lambda: happened.append("done"))
    assert happened == ["done"]


def test_a_committed_entry_without_its_lock_is_damaged_for_a_load_and_listed_so(root: Path) -> None:
    # The look that tells such an entry from one deleted meanwhile goes through one descriptor
    # of its directory: the concurrent test of readers (test_fscache_crash) checks that an entry
    # deleted and stored again between two looks by its path is not taken for it.
    cache = FsCache(root)
    put(cache, "lockless")
    (root / "objects" / "lockless" / "lock").unlink()
    # (gc: FsCache.gc() here, where no sc command knows the cache)
    with pytest.raises(CacheError, match="'lockless' .* is damaged: its data or lock was replaced or removed; "
                                         "gc deletes it once unused$"), \
            cache.load("lockless"):
        pass
    # Listed so, with the same reason (it was listed as any entry a load takes).
    (entry,) = cache.entries()
    assert entry.damage == fscache.DAMAGE
