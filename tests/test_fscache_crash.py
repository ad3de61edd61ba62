"""FsCache under SIGKILL and concurrency: real processes, real kills, real file system.

Deterministic crash points stop a child at one exact step of the protocol (a profile hook that
only watches calls: the file-system calls are the real ones) and SIGKILL it there; the random
tests kill children doing everything at random moments.  After each crash, another process must
be able to use the cache at once, and gc (or a later store) must leave it exactly consistent.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fscache_worker import Children, fill, loads, scan_usage, verify

from sharedcache import BusyError, FsCache
from sharedcache.engine.leases import key_alive

# -- helpers ---------------------------------------------------------------------------------------


def put(cache: FsCache, name: str, sizes: list[int] | None = None, nonce: str = "n") -> int:
    with cache.store(name) as path:
        fill(path, name, nonce, sizes if sizes is not None else [3000, 9000])
    return cache.info(name).size


def assert_no_lock_held(root: Path) -> None:
    """Every lock of the cache is free right now: flock locks and the index's write lock."""
    files = [root / "stage.lock", *root.glob("objects/*/lock"), *root.glob("stage/*/lock")]
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if held
        finally:
            os.close(fd)
    db = sqlite3.connect(root / "index.sqlite", timeout=0.5, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    finally:
        db.close()


def dead_leases(root: Path) -> list[Path]:
    return [lease for lease in root.glob("objects/*/leases/*")
            if not key_alive(lease.name.rpartition(".")[0])]


def leftovers(root: Path) -> dict[str, int]:
    cache = FsCache(root)
    rows = cache.names()  # the index's rows (entries() lists only what is an entry now)
    return {
        "stage": len(list((root / "stage").iterdir())),
        "trash": len(list((root / "trash").iterdir())),
        "orphans": len({p.name for p in (root / "objects").iterdir()} - rows),
        "rows without entry": len({n for n in rows if not (root / "objects" / n / "entry.json").exists()}),
        "dead leases": len(dead_leases(root)),
    }


def assert_consistent(root: Path) -> None:
    """After gc: nothing but committed entries on disk, each complete; accounting exact."""
    assert list((root / "stage").iterdir()) == []
    assert list((root / "trash").iterdir()) == []
    assert dead_leases(root) == []
    cache = FsCache(root)
    entries = cache.entries()
    assert {p.name for p in (root / "objects").iterdir()} == {e.name for e in entries}
    for e in entries:
        assert loads(cache, e.name), e.name
        assert e.size == scan_usage(root / "objects" / e.name / "data")
    assert cache.size == sum(e.size for e in entries)
    budget = cache.max_size
    assert budget is None or cache.size <= budget


# -- crashes at chosen steps -----------------------------------------------------------------------

# (operation, (caller, callee, profile event), what must be left, budget in entries or None)
CRASH_POINTS = {
    "store: filling": ("store_fill", None, "stage", None),
    "store: holding stage.lock": ("store", ("_staging", "mkdir", "return"), "stage", None),
    "store: marker written": ("store", ("_commit", "write_atomic", "return"), "stage", None),
    "store: making room": ("store", ("_commit", "_make_room", "return"), "stage", 3),
    "store: renamed into objects": ("store", ("_rename_into_objects", "rename", "c_return"), "orphans", None),
    "store: evicted a victim": ("store", ("_move_to_trash", "rename", "c_return"), "rows without entry", 3),
    "store: committed": ("store", ("store", "_empty_trash", "call"), "", None),
    "store: sweeping": ("store", ("store", "_sweep", "call"), "", None),
    "remove: renamed to trash": ("remove", ("_move_to_trash", "rename", "c_return"), "rows without entry", None),
    "remove: committed": ("remove", ("remove", "_empty_trash", "call"), "trash", None),
    "budget: evicted a victim": ("set_budget", ("_move_to_trash", "rename", "c_return"), "rows without entry", None),
    "gc: reconciling": ("gc", ("_collect", "_adopt", "return"), "", None),
    "gc: emptying trash": ("gc", ("_collect", "_empty_trash", "call"), "", None),
    "load: locked": ("load", ("_shared", "_touch", "call"), "", None),
    "hold: lease created": ("hold", ("put_lease", "create_empty", "return"), "dead leases", None),
    "release: lease removed": ("release", ("reclaim_leases", "unlink", "c_return"), "", None),
    "release: last lease given back": ("release", ("_give_back", "put_lease", "return"), "dead leases", None),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
@pytest.mark.parametrize("cleaner", ["gc", "store"])
def test_sigkill_at_a_step_leaves_no_lock_and_gc_or_a_store_cleans_up(
    root: Path, children: Children, point: str, cleaner: str
) -> None:
    op, where, expect, budget_entries = CRASH_POINTS[point]
    cache = FsCache(root)
    one = put(cache, "victim")  # the least recently used entry: evicted first
    put(cache, "old")
    put(cache, "e")
    if op == "gc":  # give gc something to do: an orphan to adopt and a stray stage
        (root / "stage" / "stray" / "data").mkdir(parents=True)
        put(cache, "orphan")
        db = sqlite3.connect(root / "index.sqlite", isolation_level=None)
        db.execute("DELETE FROM entries WHERE name='orphan'")
        db.close()
    if budget_entries:
        cache.max_size = budget_entries * one + one // 2
    name = "e" if op in ("remove", "load", "hold", "release") else "new"
    args = {"root": str(root), "op": op, "point": where, "name": name, "max_size": one}
    child = children.start("crash_at", **args)
    child.expect("paused")
    child.kill()

    assert_no_lock_held(root)
    found = leftovers(root)
    if expect:
        assert found[expect] >= 1, found
    # another process can use the cache at once, with a short timeout
    quick = FsCache(root, timeout=2)
    assert loads(quick, "old")
    if op == "load":
        quick.remove("e")  # the dead reader's lock is gone
    if cleaner == "store":
        put(quick, "later")  # sweeps stage/ and empties trash/ on its way
        after = leftovers(root)
        assert after["stage"] == 0 and after["trash"] == 0, after
        # what the crash interrupted can be stored and loaded again at once
        for again in (name, "victim"):
            if not loads(quick, again):
                put(quick, again, nonce="retry")
            assert loads(quick, again)
        quick.gc()
    else:
        report = quick.gc()
        if expect == "stage":
            assert report.stages_removed >= 1
        if expect == "orphans":
            assert report.orphans_adopted == 1 and loads(quick, "new")
        if expect == "rows without entry":
            assert report.rows_dropped >= 1
        if expect == "dead leases":
            assert report.leases_reclaimed >= 1
    assert_consistent(root)


def test_a_store_killed_after_its_holder_s_lease_leaves_nothing_after_gc(root: Path, children: Children) -> None:
    """A store killed between its holder's lease and its marker leaves a stage with a lease of
    a live process in it (a job whose sc was killed by a time limit): gc moved it into the trash
    and kept it there for as long as the job lived, taking it for an entry in use."""
    cache = FsCache(root)
    child = children.start("crash_at", root=str(root), op="store", point=("_commit", "write_atomic", "call"),
                           name="new", holder=os.getpid())
    child.expect("paused")
    child.kill()
    assert leftovers(root)["stage"] == 1
    cache.gc()
    assert leftovers(root)["stage"] == 0 and leftovers(root)["trash"] == 0, leftovers(root)
    assert_consistent(root)


def test_a_store_that_adopts_a_killed_stores_entry_keeps_the_budget(root: Path, children: Children) -> None:
    """A store killed between its rename into objects/ and its commit leaves an entry without a
    row; a later store of that name adopts it, as gc would.  It added its size with nothing
    evicted: with the budget filled meanwhile by other entries (the orphan counted nowhere), the
    accounted size went past the budget until a later gc or release."""
    cache = FsCache(root)
    one = put(cache, "first")
    cache.remove("first")
    cache.max_size = 4 * one
    child = children.start("crash_at", root=str(root), op="store",
                           point=("_rename_into_objects", "rename", "c_return"), name="new", max_size=4 * one)
    child.expect("paused")
    child.kill()
    assert leftovers(root)["orphans"] == 1
    for name in ("a", "b", "c", "d"):
        put(cache, name)
    assert cache.size == 4 * one
    put(cache, "new")  # adopts the orphan
    assert cache.size <= cache.max_size, (cache.size, cache.max_size)
    assert loads(cache, "new")
    cache.gc()
    assert_consistent(root)


# -- crashes at random moments ---------------------------------------------------------------------


def test_random_sigkills_while_storing_removing_and_evicting(root: Path, children: Children) -> None:
    rng = random.Random(1234)
    names = [f"k{i}" for i in range(8)]
    FsCache(root, max_size="120kB")  # the budget that every child sees
    seen = {"stage": 0, "trash": 0, "orphans": 0, "rows without entry": 0, "dead leases": 0}
    rounds = 36
    for round_ in range(rounds):
        kids = [
            children.start("chaos", root=str(root), names=names, seed=rng.random(),
                           weights=[6, 2, 2, 0.5 if round_ % 4 == 0 else 0, 2, 1])
            for _ in range(2)
        ]
        for kid in kids:
            kid.expect("ready")
        for kid in kids:
            time.sleep(rng.uniform(0.0, 0.12))
            kid.kill()
        assert_no_lock_held(root)
        found = leftovers(root)
        for key, value in found.items():
            seen[key] += value > 0
        quick = FsCache(root, timeout=2)
        if round_ % 3 == 0:
            quick.gc()
            assert_consistent(root)
        elif round_ % 3 == 1:
            put(quick, f"probe{round_}", [100])  # a later store cleans stage/ and trash/
            after = leftovers(root)
            assert after["stage"] == after["trash"] == 0, after
            quick.remove(f"probe{round_}")
        for name in names:  # whatever is there now is complete; a miss can be stored at once
            if not loads(quick, name) and round_ % 3 == 2:
                put(quick, name, [100], nonce="parent")
                assert loads(quick, name)
        assert quick.size <= 120_000
    assert seen["stage"] > 0, seen  # the kills did interrupt stores
    assert seen["dead leases"] > 0, seen  # and killed holders
    FsCache(root).gc()
    assert_consistent(root)


def test_readers_never_see_a_partial_entry(root: Path, children: Children) -> None:
    rng = random.Random(99)
    names = [f"r{i}" for i in range(5)]
    cache = FsCache(root, max_size="150kB")
    for name in names[:3]:
        put(cache, name, [20000, 3000, 11000])
    # The readers read while writers are killed: for 6 s and 10 kills at least (a loaded host
    # starts the writers slowly), then until told to stop.
    stop = root.parent / "stop-reading"
    readers = [children.start("reader", root=str(root), names=names, seconds=90, stop=str(stop), seed=i)
               for i in range(2)]
    for reader in readers:
        reader.expect("ready")
    steady = children.start("chaos", root=str(root), names=names, seed=5, weights=[5, 2, 1, 0.2, 1, 1])
    steady.expect("ready")
    start = time.monotonic()
    kills = 0
    while (time.monotonic() < start + 6 or kills < 10) and time.monotonic() < start + 60:
        victim = children.start("chaos", root=str(root), names=names, seed=rng.random())
        victim.expect("ready")
        time.sleep(rng.uniform(0.0, 0.2))
        victim.kill()
        kills += 1
    steady.kill()
    stop.touch()
    results = [reader.result(timeout=30) for reader in readers]
    for result in results:
        assert result["n_errors"] == 0, result["errors"]
    assert sum(r["hits"] for r in results) > 100, results  # the readers did read entries
    assert kills >= 10
    FsCache(root).gc()
    assert_consistent(root)


# -- concurrency -----------------------------------------------------------------------------------


def test_many_processes_storing_one_name_commit_exactly_one_copy(root: Path, children: Children) -> None:
    FsCache(root)
    start_at = time.time() + 1.5
    sizes = [7000, 100, 33000, 5000]
    kids = [children.start("store_same", root=str(root), name="same", start_at=start_at,
                           sizes=sizes, pause=0.01) for _ in range(8)]
    results = [kid.result(timeout=60) for kid in kids]
    winners = {r["winner"] for r in results}
    assert len(winners) == 1  # every process sees the same committed copy
    (winner,) = winners
    assert winner in {r["pid"] for r in results}
    cache = FsCache(root)
    with cache.load("same") as path:
        assert verify(path, "same") is None
        assert f'"nonce": "{winner}"' in (path / "MANIFEST").read_text()
    assert [e.name for e in cache.entries()] == ["same"]
    assert_consistent(root)
    assert cache.gc().orphans_removed == 0


def test_many_processes_creating_one_cache_all_succeed(tmp_path: Path, children: Children) -> None:
    for attempt in range(4):
        root = tmp_path / f"try{attempt}" / "deep" / "cache"
        start_at = time.time() + 0.8
        kids = [children.start("create", root=str(root), start_at=start_at, max_size="10MB")
                for _ in range(8)]
        names = {kid.result(timeout=60)["name"] for kid in kids}
        cache = FsCache(root)
        assert {e.name for e in cache.entries()} == names and len(names) == 8
        assert cache.max_size == 10_000_000
        assert_consistent(root)


def test_listing_entries_does_not_make_unused_entries_busy(root: Path, children: Children) -> None:
    """entries() and info() probe each entry's lock; a remove or an eviction at that instant must
    not take the entry for one in use."""
    cache = FsCache(root, durable=False)
    one = put(cache, "probe", [100])
    cache.remove("probe")
    listers = [children.start("lister", root=str(root), seconds=30) for _ in range(2)]
    for lister in listers:
        lister.expect("ready")
    busy = 0
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        put(cache, "x", [100])
        try:
            cache.remove("x")
        except BusyError:
            busy += 1
            cache.remove("x")
    assert busy == 0, f"{busy} removals of an unused entry failed as busy"
    # eviction: always the least recently used entry, never a refusal
    cache.max_size = 2 * one + one // 2
    put(cache, "a0", [100])
    for i in range(1, 400):
        put(cache, f"a{i}", [100])
        assert {e.name for e in cache.entries()} == {f"a{i - 1}", f"a{i}"}


def test_concurrent_stores_never_exceed_the_budget(root: Path, children: Children) -> None:
    budget = 200_000
    cache = FsCache(root, max_size=budget)
    start_at = time.time() + 1.0
    kids = [children.start("budget_store", root=str(root), start_at=start_at, count=40,
                           prefix=f"p{i}-", seed=i) for i in range(4)]
    peak = 0
    while any(kid.proc.poll() is None for kid in kids) and time.time() < start_at + 60:
        peak = max(peak, cache.size)
        time.sleep(0.002)
    results = [kid.result(timeout=60) for kid in kids]
    assert peak <= budget
    assert all(r["max_seen"] <= budget for r in results), results
    assert len(cache.entries()) < 160  # eviction happened
    assert cache.gc().accounting_fixed == 0
    assert_consistent(root)


def test_a_sweep_keeps_no_one_from_staging_while_it_deletes_a_killed_store_s_tree(root: Path) -> None:
    # A store killed mid-fill leaves its tree in stage/; the next store sweeps it.  The sweep holds
    # stage.lock exclusively, which every store needs to create its staging directory: it deleted
    # the tree under that lock, so a tree of many files held every other store back that long.
    files = 30_000
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from sharedcache import FsCache\n"
        "with FsCache(sys.argv[1]).store('killed') as data:\n"
        "    for i in range(int(sys.argv[2])):\n"
        "        open(os.path.join(data, str(i)), 'w').close()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(root), str(files)], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    (abandoned,) = (root / "stage").iterdir()

    def left() -> int:  # the killed store's files not deleted yet, wherever they are
        trees = [abandoned / "data", *(tree / "data" for tree in (root / "trash").iterdir())]
        return sum(len(os.listdir(tree)) for tree in trees if tree.is_dir())

    sweeper = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom sharedcache import FsCache\n"
        "with FsCache(sys.argv[1]).store('next') as data:\n    (data / 'f').write_text('x')\n"), str(root)])
    try:
        # The sweep has begun once the tree has moved or lost files.
        deadline = time.monotonic() + 60
        while abandoned.exists() and left() == files:
            assert sweeper.poll() is None and time.monotonic() < deadline, "the sweep never began"
            time.sleep(0.001)
        with FsCache(root).stage():
            during = left()
        assert sweeper.wait(60) == 0
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
            sweeper.wait(10)
    assert during > 0, "staging waited for the whole deletion"
    assert left() == 0 and list((root / "stage").iterdir()) == []
    assert "next" in FsCache(root)


def test_a_lock_probe_left_by_a_killed_process_is_removed_by_gc(tmp_path: Path) -> None:
    # A process killed while it probed whether locks work (on the first use of a cache, and by
    # gc) left its probe file in the cache's directory for good: gc knew it by no name.
    root = tmp_path / "cache"
    FsCache(root)
    # Killed as it opens its probe file the second time: the first open made it.
    probing = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from sharedcache.engine import locks\n"
        "opened = []\n"
        "def audit(event, args):\n"
        "    if event == 'open' and str(args[0]).startswith('.lockprobe'):\n"
        "        opened.append(args[0])\n"
        "        if len(opened) == 2:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "sys.addaudithook(audit)\n"
        "locks.locks_work(sys.argv[1])\n"), str(root)], capture_output=True, text=True, timeout=60)
    assert probing.returncode == -signal.SIGKILL, probing.stderr
    (probe,) = (path for path in root.iterdir() if path.name.startswith(".lockprobe"))
    FsCache(root).gc()
    assert probe.exists(), "gc removed a probe that may be under way"
    hours_ago = time.time() - 2 * 3600
    os.utime(probe, (hours_ago, hours_ago))
    assert FsCache(root).gc().leftovers_removed == 1
    assert not probe.exists()
