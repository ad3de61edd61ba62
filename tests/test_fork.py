"""Programs that fork: a child of a single-threaded process loses no index commit, a child of one
with other threads never waits for them, and a child forked inside ``use()`` leaves the parent's
use alone."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest
from origin import Origin
from scutil import Sleeper, control, make_tarball, sc, stop_process, user_dir, wait_for

import sharedcache
from sharedcache import FsCache
from sharedcache.engine import locks
from sharedcache.repository.bases import KEPT_CACHES

HERE = os.path.dirname(__file__)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "..", "src"), os.environ.get("PYTHONPATH", "")])}


def _fork(child) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            status = child()
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 99
        os._exit(status)
    return pid


def test_a_child_forked_while_another_thread_is_inside_sqlite_does_not_wait_for_it(root: Path) -> None:
    # Closing what a child inherited waits for the mutexes a thread of the parent held inside
    # SQLite, which nobody releases in the child: a child of a process with other threads
    # closes nothing (it hung, even one that only exits).
    cache = FsCache(root, timeout=3)
    cache.size  # noqa: B018 - the forking thread's own connection
    inside = threading.Event()

    def long_statement() -> None:
        db = cache._db()
        inside.set()
        db.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 20000000) "
                   "SELECT count(*) FROM c").fetchone()

    thread = threading.Thread(target=long_statement, daemon=True)
    thread.start()
    assert inside.wait(30)
    time.sleep(0.2)  # inside the statement by now
    pid = _fork(lambda: 0)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the child waited for its parent's thread for good")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    thread.join(60)


def test_a_forked_child_outliving_its_parent_loses_no_commit_of_another_process(root: Path) -> None:
    script = f"""
import os, sys, time
import sharedcache
from sharedcache import FsCache
cache = FsCache({str(root)!r})
with cache.store("a") as p: (p / "f").write_text("a")   # the parent has used the index
if os.fork() == 0:
    time.sleep(0.5)                                     # the parent has exited
    c = FsCache({str(root)!r})
    for i in range(150):
        with c.store(f"c{{i}}") as p: (p / "f").write_text("c")
    open({str(root)!r} + "-child-done", "w").close()
    os._exit(0)
"""
    third = f"""
import sharedcache
from sharedcache import FsCache
c = FsCache({str(root)!r})
for i in range(150):
    with c.store(f"t{{i}}") as p: (p / "f").write_text("t")
"""
    subprocess.run([sys.executable, "-c", script], env=ENV, check=True, timeout=60)
    time.sleep(0.3)
    subprocess.run([sys.executable, "-c", third], env=ENV, check=True, timeout=60)
    deadline = time.monotonic() + 60
    while not os.path.exists(f"{root}-child-done"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cache = FsCache(root)
    on_disk = set(os.listdir(root / "objects"))
    assert len(on_disk) == 301
    assert cache.names() == on_disk  # every commit has its row: none was lost
    assert cache.gc().orphans_adopted == 0


def test_a_child_forked_inside_use_that_exits_leaves_the_parents_use_alone(base: Path, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(10_000))
    cache_root = base / f".shared-cache-{os.getuid()}" / ".cache"
    leases = cache_root / "objects" / "blob" / "leases"

    def program() -> None:
        with sharedcache.use(f"file:{blob}", name="blob", directories=str(base)) as path:
            before = os.listdir(leases)
            pid = os.fork()
            if pid == 0:
                raise SystemExit(0)  # the worker is done: sys.exit() unwinds the `with` in it too
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            assert os.listdir(leases) == before  # the child did not release the parent's use
            assert (path / "blob").read_bytes() == blob.read_bytes()

    parent = os.getpid()
    try:
        program()
    except SystemExit:
        if os.getpid() != parent:
            os._exit(0)  # the child, past the `with`
        raise
    # The parent's own release worked, and deleted the repository as the last one.
    assert "blob" not in FsCache(cache_root)
    assert not os.path.lexists(base / f".shared-cache-{os.getuid()}" / "blob")


def test_a_child_forked_by_another_thread_leaves_the_last_release_free_to_delete(base: Path, tmp_path: Path) -> None:
    # The child inherits the read lock that the thread's use holds; kept, it made the entry look
    # in use to the last release, which left it on disk, unused and unleased, until a gc.
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(10_000))
    inside, leave = threading.Event(), threading.Event()

    def job() -> None:
        with sharedcache.use(f"file:{blob}", name="blob", directories=str(base)):
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=job)
    thread.start()
    assert inside.wait(30)
    go_read, go_write = os.pipe()
    pid = _fork(lambda: 0 if os.read(go_read, 1) == b"x" else 1)  # a worker that never uses the cache
    try:
        leave.set()
        thread.join(30)
        assert not thread.is_alive()
        # The last release deleted it while the child lives.
        assert "blob" not in FsCache(base / f".shared-cache-{os.getuid()}" / ".cache")
        assert not os.path.lexists(base / f".shared-cache-{os.getuid()}" / "blob")
    finally:
        os.write(go_write, b"x")
        os.close(go_write)
        os.close(go_read)
        deadline = time.monotonic() + 10
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)


def test_a_child_forked_after_the_cache_s_work_keeps_every_file_of_its_parent(tmp_path: Path) -> None:
    # A lock taken to look at the trash was closed with os.close, its record kept: a child
    # forked later gave up "its copy", a /dev/null put over the parent's file that had the
    # number since (a multiprocessing pool's pipe: the pool never answered).
    cache = FsCache(tmp_path / "cache")
    with cache.store("entry") as path:
        (path / "f").write_text("x")
    cache.remove("entry")  # (which empties the trash)
    payload = tmp_path / "payload"
    payload.write_text("the parent's data")
    opened = [os.open(payload, os.O_RDONLY) for _ in range(8)]  # (the lowest free numbers)
    try:
        def child() -> int:
            return 0 if all(os.pread(fd, 100, 0) == b"the parent's data" for fd in opened) else 1

        pid = _fork(child)
        assert os.waitpid(pid, 0)[1] == 0, "a child lost a file of its parent's"
    finally:
        for fd in opened:
            os.close(fd)


def test_a_child_forked_inside_a_store_that_leaves_it_leaves_the_parent_s_stage_alone(tmp_path: Path) -> None:
    # The child unwound the block as its parent would: it removed the parent's stage, which the
    # parent then committed with some of its files, or none; a child that left the block
    # normally committed it itself.
    cache = FsCache(tmp_path / "cache")
    for how in ("sys.exit", "falls through"):
        name = how.replace(" ", "-").replace(".", "-")
        parent = os.getpid()
        child = 0
        try:
            with cache.store(name) as path:
                for i in range(200):
                    (path / f"f{i}").write_bytes(b"x")
                child = os.fork()
                if child == 0 and how == "sys.exit":
                    raise SystemExit(0)
                if child != 0:
                    assert os.waitpid(child, 0)[1] == 0  # the child is done with the block first
                    (path / "last").write_bytes(b"x")
        finally:
            if os.getpid() != parent:
                os._exit(0)
        assert len(os.listdir(cache.path(name))) == 201, how


def test_a_child_that_keeps_its_parent_s_read_keeps_it_though_another_thread_forks_too(tmp_path: Path) -> None:
    # The block's thread forks a reader, which keeps the use's read (the repository stays for
    # it); another thread forked a child too, which gives that read up: the parent's close then
    # unlocked the open file description, the reader's copy with it, and the last release
    # deleted the data under the reader.
    data = tmp_path / "data.txt"
    data.write_text("payload")
    (tmp_path / "base").mkdir()
    read_end, write_end = os.pipe()  # (the parent has left the block once a byte is written)
    with sharedcache.use(f"file:{data}", directories=str(tmp_path / "base"), verbosity=-1) as path:
        def reader() -> int:
            os.close(write_end)
            os.read(read_end, 1)  # until its parent has left the block
            return 0 if (path / "data.txt").read_text() == "payload" else 1

        reading = _fork(reader)
        other = threading.Thread(target=lambda: os.waitpid(_fork(lambda: 0), 0))
        other.start()
        other.join(10)
    os.write(write_end, b"x")
    os.close(write_end)
    os.close(read_end)
    assert os.waitpid(reading, 0)[1] == 0, "the data was deleted under the child that kept the read"


def _copies_in_children_forked_before_each_lock(lock_file: Path, action: Callable[[], object]) -> list[int]:
    """Run ``action`` in this thread while another thread forks a child just before each lock
    it takes (as a worker pool may, at any moment); return, for each child, how many
    descriptors of ``lock_file`` it holds once it has started."""
    wanted = os.stat(lock_file)
    counts: list[int] = []

    def fork_and_ask() -> None:
        read_end, write_end = os.pipe()

        def count_copies() -> int:
            held = 0
            for name in os.listdir("/proc/self/fd"):
                try:
                    status = os.fstat(int(name))
                except OSError:
                    continue  # (the listing's own descriptor, closed)
                held += (status.st_dev, status.st_ino) == (wanted.st_dev, wanted.st_ino)
            os.write(write_end, str(held).encode())
            return 0

        pid = _fork(count_copies)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as answer:
            counts.append(int(answer.read() or b"-1"))
        assert os.waitpid(pid, 0)[1] == 0

    def fork_before_locks(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code in (locks.try_lock.__code__, locks.lock.__code__):
            forking = threading.Thread(target=fork_and_ask)
            forking.start()
            forking.join(10)
            assert not forking.is_alive()

    sys.setprofile(fork_before_locks)
    try:
        action()
    finally:
        sys.setprofile(None)
    assert counts, "nothing was locked"
    return counts


def test_a_child_forked_as_an_entry_is_deleted_holds_no_copy_of_its_lock(tmp_path: Path) -> None:
    # The deletion opened the entry's lock with a plain open: a child forked between the open
    # and the lock kept an unrecorded copy, which then shared the deleter's lock for as long as
    # it lived.
    cache = FsCache(tmp_path / "cache")
    with cache.store("a") as data:
        (data / "f").write_text("x")
    copies = _copies_in_children_forked_before_each_lock(tmp_path / "cache" / "objects" / "a" / "lock",
                                                         lambda: cache.remove("a"))
    assert copies == [0] * len(copies)


@pytest.mark.parametrize("damage", ["removed", "a link"])
def test_a_child_forked_as_a_damaged_entry_is_deleted_holds_no_copy_of_its_directory_s_lock(
        tmp_path: Path, damage: str) -> None:
    # A damaged entry's deletion locks its directory instead of its lock, which it opened with
    # a plain open: a child forked before the lock kept an unrecorded copy, to share the lock.
    cache = FsCache(tmp_path / "cache")
    with cache.store("a") as data:
        (data / "f").write_text("x")
    entry = tmp_path / "cache" / "objects" / "a"
    os.unlink(entry / "lock")
    if damage == "a link":
        os.symlink("/etc/passwd", entry / "lock")
    copies = _copies_in_children_forked_before_each_lock(entry, lambda: cache.remove("a"))
    assert copies == [0] * len(copies)
    assert "a" not in cache


def test_a_child_forked_as_gc_looks_at_an_entry_in_the_trash_holds_no_copy_of_its_lock(tmp_path: Path) -> None:
    # A member of a group cache may rename an entry into the trash; gc's look at whether it is
    # in use opened its lock with a plain open, which a child forked before the lock copied.
    cache = FsCache(tmp_path / "cache", group=os.getgid())
    with cache.store("a") as data:
        (data / "f").write_text("x")
    lock_file = tmp_path / "cache" / "trash" / "renamed" / "lock"
    os.rename(tmp_path / "cache" / "objects" / "a", lock_file.parent)
    copies = _copies_in_children_forked_before_each_lock(lock_file, cache.gc)
    assert copies == [0] * len(copies)


#: A program that opens (or closes) the lock file argv[1] while another thread forks a child
#: right after the ``open`` system call (right before the ``close``), paused there for up to 2 s
#: by a profile hook; it locks it exclusively (before the close), prints the child's PID once
#: done, and waits to be killed.  The child waits for 60 s at most.
_FORK_AMID_A_STEP = """
import os, sys, threading, time
from sharedcache.engine import locks
from sharedcache.repository.bases import KEPT_CACHES

path, step = sys.argv[1], sys.argv[2]
go, forked = threading.Event(), threading.Event()
children = []

def fork_on_go():
    if go.wait(30):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
        forked.set()

threading.Thread(target=fork_on_go, daemon=True).start()
event, call = {"open": ("c_return", os.open), "close": ("c_call", os.close)}[step]

def fork_there(frame, what, arg):
    if what == event and arg is call and frame.f_code.co_filename == locks.__file__ and not go.is_set():
        go.set()
        forked.wait(2)  # (a fork that waits for the step to be over times out here)

if step == "open":
    sys.setprofile(fork_there)
    fd = locks.open_lock_file(path)
    sys.setprofile(None)
    locks.lock(fd, locks.EXCLUSIVE)
else:
    fd = locks.open_lock_file(path)
    locks.lock(fd, locks.EXCLUSIVE)
    sys.setprofile(fork_there)
    locks.close(fd)
    sys.setprofile(None)
assert forked.wait(30)
print(children[0], flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("step", ["open", "close"])
def test_a_child_forked_as_a_lock_file_is_opened_or_closed_holds_no_copy_of_it(tmp_path: Path, step: str) -> None:
    # Between the open system call and its record (and between the record's removal and the
    # close) a child forked by another thread copied a descriptor it did not give up: it shared
    # the lock taken on it next, and held it once its parent had died (or closed it).
    lock_file = tmp_path / "lock"
    program = subprocess.Popen([sys.executable, "-c", _FORK_AMID_A_STEP, str(lock_file), step], env=ENV,
                               stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert program.stdout is not None
        ready, _, _ = select.select([program.stdout], [], [], 30)
        assert ready, "the program said nothing in time"
        child = int(program.stdout.readline())
        program.kill()
        program.wait(10)
        with open(lock_file) as other:  # this test is the third process
            deadline = time.monotonic() + 2
            while not locks._flock_now(other.fileno(), locks.EXCLUSIVE):
                assert time.monotonic() < deadline, "the forked child holds the dead program's lock"
                time.sleep(0.05)
    finally:
        program.kill()
        program.wait(10)
        if program.stdout is not None:
            program.stdout.close()
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_fork_by_the_thread_opening_a_lock_file_does_not_wait_for_itself(tmp_path: Path) -> None:
    # A signal handler that forks runs in the thread it interrupts, which may be between the
    # opening of a lock file and its record, where forks of other threads wait.
    script = f"""
import os, signal, sys
from sharedcache.engine import locks
from sharedcache.repository.bases import KEPT_CACHES

def fork(signum, frame):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

signal.signal(signal.SIGUSR1, fork)

def signal_there(frame, what, arg):
    if what == "c_return" and arg is os.open and frame.f_code.co_filename == locks.__file__:
        os.kill(os.getpid(), signal.SIGUSR1)

sys.setprofile(signal_there)
locks.close(locks.open_lock_file({str(tmp_path / "lock")!r}))
sys.setprofile(None)
"""
    subprocess.run([sys.executable, "-c", script], env=ENV, check=True, timeout=30)


def test_a_signal_handler_whose_use_connects_as_its_thread_connects_does_not_wait_for_itself(tmp_path: Path) -> None:
    # Connections to an index are made one at a time, under a lock that a signal handler's use
    # took again in the thread it interrupted, which held it as it connected: the program hung.
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1_000))
    connected = tmp_path / "connected"
    script = f"""
import os, signal, time, sharedcache

handled, inside = 0, False

def handle(signum, frame):
    global handled, inside
    if not inside:  # (not within itself)
        inside = True
        base = os.path.join({str(tmp_path)!r}, f"handler's {{handled}}")  # a new index each time
        os.mkdir(base)
        with sharedcache.use({f"file:{blob}"!r}, name="blob", directories=base) as path:
            assert (path / "blob").stat().st_size == 1_000
        handled += 1
        inside = False

handle(0, None)  # (what a use imports is imported before the first signal)
signal.signal(signal.SIGALRM, handle)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
ends = time.monotonic() + 30  # (a loaded machine tries fewer)
while handled < 200 and time.monotonic() < ends:  # each connect of this loop is to a cache nobody has open
    cache = sharedcache.FsCache(os.path.join({str(connected)!r}, str(handled)))
    cache.entries()
    cache.close()
signal.setitimer(signal.ITIMER_REAL, 0)
print(handled)
"""
    connected.mkdir()
    try:
        done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=100)
    except subprocess.TimeoutExpired:  # (killed by run; within the test's own timeout, to say why)
        pytest.fail("a program whose signal handler connects to an index as it connects hung")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 1  # (the handler ran, as the loop connected)


@pytest.mark.parametrize("handler", ["forks", "uses a cache"])
def test_a_signal_handler_that_forks_or_uses_a_cache_as_use_runs_does_not_wait_for_itself(
        tmp_path: Path, handler: str) -> None:
    # A signal handler runs in the thread it interrupts, which may hold the lock of the table of
    # open caches, or a cache's own, where a fork (its hook) and a use() wait: a pre-fork
    # server's respawn, a reload hook.  Uses of more bases than the table keeps drop a cache at
    # every use, which closed its connections to the index under the lock: the program hung.
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(10_000))
    bases = [tmp_path / f"base{i}" for i in range(KEPT_CACHES + 2)]
    own = tmp_path / "handler's"
    for path in [*bases, own]:
        path.mkdir()
    action = "fork()" if handler == "forks" else f"use({str(own)!r})"
    script = f"""
import os, signal, sharedcache

def use(base):
    with sharedcache.use({f"file:{blob}"!r}, name="blob", directories=base) as path:
        assert (path / "blob").stat().st_size == 10_000

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

handled, inside = 0, False

def handle(signum, frame):
    global handled, inside
    if not inside:  # (not within itself)
        inside = True
        {action}
        handled += 1
        inside = False

use({str(own)!r})  # (what a use imports is imported before the first signal)
# Every 3 ms of the program's own CPU time, not of the clock: on a loaded machine a fork takes
# tens of ms, and a timer of the clock left the loop little but the handler.
signal.signal(signal.SIGPROF, handle)
signal.setitimer(signal.ITIMER_PROF, 0.003, 0.003)
for _ in range(4):
    for base in {[str(path) for path in bases]!r}:
        use(base)
signal.setitimer(signal.ITIMER_PROF, 0)
print(handled)
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:  # (killed by run; within the test's own timeout, to say why)
        pytest.fail(f"a program whose signal handler {handler} hung")
    assert done.returncode == 0, done.stderr  # (Python 3.12 on warns of a fork while a population's threads run)
    assert int(done.stdout) > 0  # (the handler ran)


def test_a_fork_as_the_collector_frees_a_dropped_cache_does_not_hang(tmp_path: Path) -> None:
    # A fork counts the threads of its process (sys._current_frames), making frame objects as
    # it holds the interpreter's lock of its threads: a collection that such an allocation
    # started, freeing a dropped cache's thread-local, waited for that lock for good (Python
    # 3.11).  A signal handler that forked every few ms met it now and then; here the collector
    # is held off until the fork, with a dropped cache left for its first collection (a few
    # times over: the fork's allocations before the count may start it first).
    script = f"""
import gc, os, sharedcache

root = {str(tmp_path / "cache")!r}
sharedcache.FsCache(root).entries()  # (the index's module loaded, with its hook of fork)
for _ in range(20):
    gc.disable()
    cache = sharedcache.FsCache(root)
    cache.entries()
    cycle = [cache]  # (a program's object in a reference cycle: only the collector frees it)
    cycle.append(cycle)
    del cache, cycle
    gc.enable()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print("forked")
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:  # (killed by run; within the test's own timeout, to say why)
        pytest.fail("a fork as the collector freed a dropped cache hung")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "forked\n"


_USE_AS_ITS_OWN_POPULATION_RUNS = """
import os, signal, sys, threading, time, sharedcache

url, base, status = sys.argv[1:]

def use(timeout=None):
    with sharedcache.use(url, name="data", directories=base, timeout=timeout) as path:
        return (path / "data.bin").stat().st_size

def wait_in_another_thread():
    deadline = time.monotonic() + 60
    while not os.path.exists(status) and time.monotonic() < deadline:  # (the main thread populates)
        time.sleep(0.01)
    print("thread:", use(), flush=True)

def handle(signum, frame):
    try:
        use(timeout=10)  # (what it waits for, if it does, is stopped until it returns)
        print("handler: used it", flush=True)
    except sharedcache.SharedCacheError as e:
        print(f"handler: {type(e).__name__}: {e}", flush=True)

signal.signal(signal.SIGALRM, handle)
waiter = threading.Thread(target=wait_in_another_thread)
waiter.start()
print("main:", use(), flush=True)
waiter.join(60)
"""


def test_a_signal_handler_that_interrupts_its_own_population_to_use_it_is_refused_at_once(
        origin: Origin, tmp_path: Path) -> None:
    # The handler runs in the thread that populates, which holds the population lock and makes
    # no progress until the handler returns: its use waited for its own process, for good or
    # until its timeout.  Another thread's use waits for the population as any waiter does.
    payload = os.urandom(2_000_000)
    origin.add("/data.bin", payload)
    origin.rate = 100_000  # (for 20 s: lifted once the handler has answered)
    status = control(tmp_path) / "populate" / "data.json"
    program = subprocess.Popen([sys.executable, "-c", _USE_AS_ITS_OWN_POPULATION_RUNS, f"http:{origin.url('/data.bin')}",
                                str(tmp_path), str(status)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert program.stdout is not None

        def downloading() -> bool:
            try:
                return json.loads(status.read_text()).get("done", 0) > 0
            except (OSError, ValueError):
                return False

        wait_for(downloading, what="the population's first bytes")
        os.kill(program.pid, signal.SIGALRM)
        ready, _, _ = select.select([program.stdout], [], [], 30)
        assert ready, "the signal handler's use said nothing in time"
        handled = program.stdout.readline()
        origin.rate = None
        out, err = program.communicate(timeout=60)
    finally:
        stop_process(program)
    assert handled.startswith("handler: UsageError: use of repository 'data' in "), handled
    assert "from a signal handler that interrupted its own population of it" in handled
    assert program.returncode == 0, err
    assert sorted(out.splitlines()) == [f"main: {len(payload)}", f"thread: {len(payload)}"]


#: A program that has used a cache in argv[4], then forks a launcher that puts the job it forks
#: into a new namespace (argv[3]: "pid", PID 1 of a PID namespace with a /proc of its own, as
#: ``unshare --fork --mount-proc`` makes it; "time", a time namespace whose boot was a day
#: earlier, as ``unshare --fork --time --boottime``).  The job populates a repository of its own
#: in argv[2], then takes a use of argv[1] there, prints its path, waits for a line on stdin (60 s
#: at most) and checks that its data is still there.
_JOB_FORKED_INTO_A_NAMESPACE = """
import ctypes, os, select, sys, traceback
import sharedcache

url, base, namespace, own_base = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME, MS_REC, MS_PRIVATE = 0x20000, 0x20000000, 0x80, 0x4000, 0x40000

def forked(step):
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            status = step()
        except BaseException:
            traceback.print_exc()
        os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def job():
    if namespace == "pid":  # (private first: the host's /proc stays as it is)
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) or libc.mount(b"proc", b"/proc", b"proc", 0, None):
            raise OSError(ctypes.get_errno(), "mount")
    with sharedcache.use(url, "tar", name="job", directories=base):  # (a population: it writes the index)
        pass
    with sharedcache.use(url, "tar", name="shared", directories=base) as path:
        print(path, flush=True)
        if not select.select([sys.stdin], [], [], 60)[0]:
            return 4
        return 0 if (path / "data.txt").exists() else 5

def launcher():
    if libc.unshare(CLONE_NEWPID | CLONE_NEWNS if namespace == "pid" else CLONE_NEWTIME):
        raise OSError(ctypes.get_errno(), "unshare")
    if namespace == "time":
        with open("/proc/self/timens_offsets", "w") as offsets:  # (its children's)
            offsets.write("boottime 86400 0")
    return forked(job)

with sharedcache.use(url, "tar", name="own", directories=own_base):  # (what this process read of itself, it keeps)
    pass
sys.exit(forked(launcher))
"""


def _deepest_descendant(pid: int) -> int:
    """The last process of the line of children that ``pid`` starts (each has one at most)."""
    while children := Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        pid = int(children[0])
    return pid


@pytest.mark.skipif(os.geteuid() != 0, reason="making namespaces needs root")
@pytest.mark.parametrize(("namespace", "program_is_pid_1", "own_base"), [
    ("pid", False, "same"), ("time", False, "same"), ("pid", True, "same"), ("pid", True, "other"),
], ids=["pid", "time", "pid-by-a-pid-1-in-the-same-base", "pid-by-a-pid-1-in-another-base"])
def test_a_child_forked_into_a_namespace_judges_uses_as_a_process_of_that_namespace(
        base: Path, tmp_path: Path, namespace: str, program_is_pid_1: bool, own_base: str) -> None:
    # The job took the PID namespace and the boot time offset its parent had read: its leases
    # named processes that were not it, and it judged the host's job's use by its own /proc,
    # where that job is not (or started at another time): it took it for dead, and its release
    # deleted the data under the host's job.  A program that is PID 1 of its own namespace (a
    # container's entrypoint) forks a job that is PID 1 too, which took itself for its parent:
    # it used the index connection its fork had closed (a traceback), and its lease named its
    # parent's start time, the host's gc then reclaiming its use.
    origin = tmp_path / "data.tgz"
    make_tarball(origin, {"data.txt": b"data\n"})
    leases = control(base) / "objects" / "shared" / "leases"
    own = base if own_base == "same" else tmp_path / "own"
    own.mkdir(exist_ok=True)
    as_pid_1 = ["unshare", "--pid", "--fork", "--mount-proc"] if program_is_pid_1 else []
    with Sleeper() as host_job:
        taken = sc("--use", "--pid", str(host_job.pid), "-d", str(base), "-n", "shared", f"file:{origin}", "tar")
        assert taken.returncode == 0, taken.stderr
        program = subprocess.Popen([*as_pid_1, sys.executable, "-c", _JOB_FORKED_INTO_A_NAMESPACE, f"file:{origin}",
                                    str(base), namespace, str(own)], env=ENV, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert program.stdin is not None and program.stdout is not None
            ready, _, _ = select.select([program.stdout], [], [], 60)
            assert ready, "the job took no use in time"
            assert program.stdout.readline(), program.communicate(timeout=60)[1]
            job = Path(f"/proc/{_deepest_descendant(program.pid)}/stat").read_text()
            job_start = job[job.rindex(")") + 2:].split()[19]  # (field 22, as this host counts it)
            judged = sc("gc", "-d", str(base))  # (the host's judgement of the job's use)
            assert judged.returncode == 0, judged.stderr
            held = sorted(os.listdir(leases)) if leases.exists() else []
            _, err = program.communicate("\n", timeout=60)  # (the job checks its data, and releases)
        finally:
            if program.poll() is None:
                os.killpg(program.pid, signal.SIGKILL)  # (the job and its launcher are of its group)
                program.wait(10)
        assert len(held) == 2, f"a live job's use was judged dead: {held}"
        job_lease = [lease for lease in held if f":{host_job.pid}:" not in lease]
        assert [lease.split(":")[2] for lease in job_lease] == [job_start], f"not the job's start time: {held}"
        assert program.returncode == 0, err
        assert [lease for lease in os.listdir(leases) if f":{host_job.pid}:" in lease], "the host job's use was ended"
        assert (user_dir(base) / "shared" / "data.txt").read_text() == "data\n"


_HANDLER_USES_AMID_ITS_THREAD_S_STEP = """
import collections, json, os, signal, sys, sharedcache

base, step, *blobs = sys.argv[1:]
outcomes = collections.Counter()
armed = False

def use(who, blob):
    try:
        with sharedcache.use(f"file:{blob}", directories=base, timeout=3) as path:
            assert (path / os.path.basename(blob)).stat().st_size == 20_000
        outcomes[who + ": used"] += 1
    except sharedcache.UsageError:
        outcomes[who + ": refused"] += 1
    except Exception as e:
        outcomes[f"{who}: {type(e).__name__}: {e}"] += 1

def amid_the_step(frame):
    while frame is not None:
        if frame.f_code.co_name == step and frame.f_code.co_filename.endswith("repositories.py"):
            return True
        frame = frame.f_back
    return False

def interrupt_a_transaction(frame, event, arg):
    # Once armed: at the first call of the index's code within one of its transactions, in the step.
    global armed
    if armed and event == "call" and frame.f_code.co_filename.endswith("index.py"):
        if getattr(frame.f_locals.get("self"), "in_transaction", False) and amid_the_step(frame):
            armed = False
            os.kill(os.getpid(), signal.SIGALRM)

def handle(signum, frame):
    outcomes["interrupted"] += 1
    use("handler", blobs[0])  # the recipe of the use it interrupted
    use("handler", blobs[1 + outcomes["interrupted"] % 3])  # another

signal.signal(signal.SIGALRM, handle)
use("main", blobs[1])  # (what a use imports is imported before the first signal)
sys.setprofile(interrupt_a_transaction)
for _ in range(20):
    armed = True
    use("main", blobs[0])
sys.setprofile(None)
print(json.dumps(outcomes))
"""


@pytest.mark.parametrize("step", ["acquire", "release_held"])
def test_a_signal_handler_s_use_amid_its_thread_s_acquire_or_release_works_or_is_refused_leaving_no_lease(
        tmp_path: Path, step: str) -> None:
    # A signal handler's use() runs in the thread whose use() it interrupts, here as that use
    # acquires (populates) or releases (deletes) its repository, in an index transaction.  It
    # shared that use's connection to the index, and rolled back its transaction ("cannot commit
    # - no transaction is active"), and its deadline, which it cleared (a TypeError); it waited
    # for what its thread held (the index, the entry's lock) until its timeout; and a use that
    # failed so kept its lease, so that the next ones found the repository in use.  Each of the
    # handler's uses now works, or is refused at once (a UsageError), and leaves no lease.
    blobs = [tmp_path / f"blob{i}" for i in range(4)]
    for blob in blobs:
        blob.write_bytes(os.urandom(20_000))
    base = tmp_path / "base"
    base.mkdir()
    try:
        done = subprocess.run([sys.executable, "-c", _HANDLER_USES_AMID_ITS_THREAD_S_STEP, str(base), step,
                               *map(str, blobs)], env=ENV, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:  # (killed by run; within the test's own timeout, to say why)
        pytest.fail(f"a program whose signal handler uses repositories amid its thread's {step} hung")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    outcomes = json.loads(done.stdout)
    failures = {outcome: count for outcome, count in outcomes.items()
                if outcome != "interrupted" and not outcome.endswith((": used", ": refused"))}
    assert not failures, failures
    assert outcomes["interrupted"] == 20 and outcomes["main: used"] == 21, outcomes  # (each use of the loop, once)
    assert list((control(base) / "objects").glob("*/leases/*")) == []


#: A program whose signal handler raises as a write transaction of its index begins, just as
#: the transaction has marked the thread as its writer (``Index.transaction``), then stores again.
_A_HANDLER_S_EXCEPTION_AS_A_TRANSACTION_BEGINS = """
import os, signal, sys
from sharedcache import FsCache
from sharedcache.engine import index

class Interrupted(Exception):
    pass

def handle(signum, frame):
    raise Interrupted

armed = True

def signal_as_the_mark_is_made(frame, event, arg):
    global armed
    if armed and event == "c_return" and getattr(arg, "__self__", None) is index._writing:
        armed = False
        os.kill(os.getpid(), signal.SIGALRM)  # (its handler runs as that call returns)

signal.signal(signal.SIGALRM, handle)
cache = FsCache(sys.argv[1])
sys.setprofile(signal_as_the_mark_is_made)
try:
    with cache.store("interrupted") as path:
        (path / "f").write_bytes(b"x")
except Interrupted:
    pass
sys.setprofile(None)
assert not armed, "no transaction began"
with cache.store("next") as path:
    (path / "f").write_bytes(b"x")
"""


def test_an_exception_of_a_signal_handler_as_a_transaction_begins_leaves_the_index_writable(tmp_path: Path) -> None:
    # The handler's exception left the thread marked as the index's writer: every later write
    # transaction of that thread on that index (a store, a miss, a last release) was refused,
    # "the index ... is being written by this very thread", for the life of the process.
    done = subprocess.run([sys.executable, "-c", _A_HANDLER_S_EXCEPTION_AS_A_TRANSACTION_BEGINS, str(tmp_path / "cache")],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


#: A program that forks a worker inside the block of argv[2] ("use": ``sharedcache.use()`` of
#: argv[3] in argv[4]; "store": ``FsCache(argv[5]).store()``), the worker leaving the block
#: (``sys.exit()``), then checks that its block is still its own.  As argv[1] says, the worker is
#: forked by Python, as PID 1 of a new PID namespace by a program that is PID 1 of its own (a
#: container's entrypoint), both PID 1; or in C, as uWSGI forks its workers (no hook of Python's
#: runs, and the worker keeps its parent's count of forks).
_WORKER_FORKED_INSIDE_A_BLOCK = """
import ctypes, os, sys
import sharedcache
from sharedcache import FsCache

how, block, url, base, cache_root = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWPID = 0x20000000

def fork_a_worker_that_leaves_the_block():
    if how == "in C":
        worker = libc.fork()
        if worker == 0:
            raise SystemExit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(worker, 0)[1]) == 0, "the worker failed"
        return
    launcher = os.fork()
    if launcher == 0:
        if libc.unshare(CLONE_NEWPID):
            os._exit(98)
        worker = os.fork()
        if worker == 0:
            raise SystemExit(0)  # (the worker is done: sys.exit() unwinds the block in it too)
        os._exit(os.waitstatus_to_exitcode(os.waitpid(worker, 0)[1]))
    assert os.waitstatus_to_exitcode(os.waitpid(launcher, 0)[1]) == 0, "the worker failed"

assert how == "in C" or os.getpid() == 1
if block == "use":
    leases = os.path.join(cache_root, "objects", "blob", "leases")
    with sharedcache.use(url, name="blob", directories=base) as path:
        before = os.listdir(leases)
        fork_a_worker_that_leaves_the_block()
        assert os.listdir(leases) == before, "the worker released the program's use"
        assert (path / "blob").stat().st_size == 10_000
    assert "blob" not in FsCache(cache_root), "the program's own release left the repository"
else:
    cache = FsCache(cache_root)
    with cache.store("entry") as path:
        for i in range(200):
            (path / f"f{i}").write_bytes(b"x")
        fork_a_worker_that_leaves_the_block()
        (path / "last").write_bytes(b"x")
    assert len(os.listdir(cache.path("entry"))) == 201, "the worker took the program's stage"
"""


@pytest.mark.parametrize("how", ["by PID 1 into a PID namespace", "in C"])
@pytest.mark.parametrize("block", ["use", "store"])
def test_a_worker_forked_inside_a_block_leaves_it_to_the_program(
        base: Path, tmp_path: Path, block: str, how: str) -> None:
    # The worker took the program's use and stage for its own: it released the use (or failed
    # to, on the index connection its fork had closed), and removed the stage under the
    # program's block, or committed it half filled.  By PID 1, the worker is PID 1 as the
    # program is; forked in C, it runs none of Python's hooks, and counts no fork.
    if how != "in C" and os.geteuid() != 0:
        pytest.skip("making namespaces needs root")
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(10_000))
    cache_root = base / f".shared-cache-{os.getuid()}" / ".cache" if block == "use" else tmp_path / "cache"
    launched = ["unshare", "--pid", "--fork", "--mount-proc"] if how != "in C" else []
    program = subprocess.Popen([*launched, sys.executable, "-c", _WORKER_FORKED_INSIDE_A_BLOCK, how, block,
                                f"file:{blob}", str(base), str(cache_root)], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = program.communicate(timeout=60)
    finally:
        if program.poll() is None:
            os.killpg(program.pid, signal.SIGKILL)  # (the program and its workers are of its group)
            program.wait(10)
    assert program.returncode == 0, err
