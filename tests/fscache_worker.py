"""Child processes for the FsCache tests.

Run as ``python fscache_worker.py COMMAND JSON`` where JSON holds the command's arguments.  A
command that has reached the state the parent waits for prints one line (``ready``, ``held``,
``paused``) and flushes; a command that finishes prints one JSON line with what it saw.

The content helpers (:func:`fill`, :func:`verify`) are shared with the tests: an entry holds a
``MANIFEST`` naming its files and a nonce, and every file's bytes are a pattern derived from
(entry name, nonce, file index), so a reader can tell a complete copy from a partial or mixed one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from sharedcache import BusyError, FsCache, MissError, NoSpaceError, WaitTimeoutError
from sharedcache.engine.leases import Owner

MANIFEST = "MANIFEST"


def pattern(name: str, nonce: str, index: int, length: int) -> bytes:
    """``length`` bytes determined by (name, nonce, index)."""
    seed = hashlib.sha256(f"{name}\0{nonce}\0{index}".encode()).digest()
    reps = length // len(seed) + 1
    return (seed * reps)[:length]


def fill(path: Path, name: str, nonce: str, sizes: list[int], *, pause: float = 0.0) -> None:
    """Write an entry's content: the manifest first, then the files in a random order."""
    files = [[f"f{i:03d}", size] for i, size in enumerate(sizes)]
    (path / MANIFEST).write_text(json.dumps({"name": name, "nonce": nonce, "files": files}))
    order = list(range(len(files)))
    random.shuffle(order)
    for i in order:
        sub = path / ("sub" if i % 2 else ".")
        sub.mkdir(exist_ok=True)
        (sub / files[i][0]).write_bytes(pattern(name, nonce, i, files[i][1]))
        if pause:
            time.sleep(pause)


def verify(path: Path, name: str) -> str | None:
    """None if ``path`` holds one complete copy of entry ``name``, else what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"{name}: bad manifest: {e!r}"
    if manifest.get("name") != name:
        return f"{name}: manifest names {manifest.get('name')!r}"
    expected = {MANIFEST}
    for i, (fname, size) in enumerate(manifest["files"]):
        rel = f"sub/{fname}" if i % 2 else fname
        expected.add(rel)
        try:
            data = (path / rel).read_bytes()
        except OSError as e:
            return f"{name}: {rel}: {e!r}"
        if data != pattern(name, manifest["nonce"], i, size):
            return f"{name}: {rel}: {len(data)} bytes, not the expected {size}-byte pattern"
    found = {str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir()}
    if found != expected:
        return f"{name}: files {sorted(found ^ expected)} differ from the manifest"
    return None


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def wait_until(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


# -- commands --------------------------------------------------------------------------------------


def cmd_chaos(a: dict) -> None:
    """Store, load, remove, evict, gc, hold and release at random until killed (or ``ops``
    operations done)."""
    rng = random.Random(a.get("seed"))
    cache = FsCache(a["root"], durable=a.get("durable", False), timeout=a.get("timeout", 30))
    names = a["names"]
    counts = {"stored": 0, "hits": 0, "misses": 0, "busy": 0, "nospace": 0, "removed": 0,
              "held": 0, "released": 0}
    errors: list[str] = []
    held: list[tuple[str, str]] = []
    me = Owner.current()
    say("ready")
    ops = ["store", "load", "remove", "gc", "hold", "release"]
    for _ in range(a.get("ops", 10**9)):
        op = rng.choices(ops, a.get("weights", [6, 3, 2, 0.3, 1, 1]))[0]
        name = rng.choice(names)
        try:
            if op == "store":
                sizes = [rng.randrange(0, a.get("max_file", 20000)) for _ in range(rng.randint(1, 6))]
                with cache.store(name) as path:
                    fill(path, name, f"{os.getpid()}-{time.monotonic_ns()}", sizes)
                counts["stored"] += 1
                budget = cache.max_size
                if budget is not None and cache.size > budget:
                    errors.append(f"size {cache.size} > budget {budget} after a store")
            elif op == "load":
                with cache.load(name) as path:
                    problem = verify(path, name)
                    if problem:
                        errors.append(problem)
                counts["hits"] += 1
            elif op == "remove":
                cache.remove(name)
                counts["removed"] += 1
            elif op == "hold":
                held.append((name, cache.hold(name, me, keep=rng.random() < 0.5)))
                counts["held"] += 1
            elif op == "release" and held:
                name, lease = held.pop(rng.randrange(len(held)))
                cache.release(name, lease=lease)
                counts["released"] += 1
            elif op == "gc":
                cache.gc()
        except MissError:
            counts["misses"] += 1
        except BusyError:
            counts["busy"] += 1
        except NoSpaceError:
            counts["nospace"] += 1
    say(json.dumps({"counts": counts, "errors": errors}))


def cmd_reader(a: dict) -> None:
    """Load random entries for ``seconds``, or until the file ``stop`` (if given) exists, and
    check each is one complete copy."""
    rng = random.Random(a.get("seed"))
    cache = FsCache(a["root"], timeout=a.get("timeout", 30))
    hits = misses = 0
    errors: list[str] = []
    say("ready")
    end = time.monotonic() + a["seconds"]
    stop = a.get("stop")
    while time.monotonic() < end and not (stop and os.path.exists(stop)):
        name = rng.choice(a["names"])
        try:
            with cache.load(name) as path:
                problem = verify(path, name)
        except MissError:
            misses += 1
            continue
        except WaitTimeoutError as e:
            errors.append(f"{name}: {e}")
            continue
        hits += 1
        if problem:
            errors.append(problem)
    say(json.dumps({"hits": hits, "misses": misses, "errors": errors[:20], "n_errors": len(errors)}))


def cmd_hold(a: dict) -> None:
    """Hold a use of an entry (``load`` lock or ``lease``) until killed or stdin closes; with
    ``connect``, also keep a connection to the index open (holding and loading need none)."""
    cache = FsCache(a["root"])
    if a.get("connect"):
        assert cache.size >= 0
    if a.get("how", "load") == "lease":
        cache.hold(a["name"], Owner.current(), keep=a.get("keep", False))
        say("held")
        sys.stdin.read()
        return
    with cache.load(a["name"]):
        say("held")
        sys.stdin.read()


def cmd_store_same(a: dict) -> None:
    """At ``start_at``, store entry ``name`` with content unique to this process."""
    wait_until(a["start_at"])
    cache = FsCache(a["root"], durable=a.get("durable", True))
    pid = str(os.getpid())
    with cache.store(a["name"], meta=pid) as path:
        fill(path, a["name"], pid, a["sizes"], pause=a.get("pause", 0.0))
    say(json.dumps({"pid": pid, "winner": cache.info(a["name"]).meta}))


def cmd_create(a: dict) -> None:
    """At ``start_at``, open (creating) the cache and store one entry of our own."""
    wait_until(a["start_at"])
    cache = FsCache(a["root"], max_size=a.get("max_size"))
    name = f"p{os.getpid()}"
    with cache.store(name) as path:
        fill(path, name, "x", [100])
    with cache.load(name) as path:
        assert verify(path, name) is None
    say(json.dumps({"name": name}))


def cmd_budget_store(a: dict) -> None:
    """Store ``count`` random entries; report the largest accounted size seen after each."""
    rng = random.Random(a.get("seed"))
    cache = FsCache(a["root"], durable=False)
    wait_until(a["start_at"])
    seen = 0
    nospace = 0
    for i in range(a["count"]):
        name = f"{a['prefix']}{i}"
        try:
            with cache.store(name) as path:
                fill(path, name, "n", [rng.randrange(1, 30000) for _ in range(rng.randint(1, 3))])
        except NoSpaceError:
            nospace += 1
        seen = max(seen, cache.size)
    say(json.dumps({"max_seen": seen, "nospace": nospace}))


def cmd_lister(a: dict) -> None:
    """List the entries (which probes whether each is in use) over and over for ``seconds``."""
    cache = FsCache(a["root"])
    say("ready")
    end = time.monotonic() + a["seconds"]
    rounds = 0
    while time.monotonic() < end:
        for entry in cache.entries():
            try:
                cache.info(entry.name)
            except MissError:
                pass
        rounds += 1
    say(json.dumps({"rounds": rounds}))


def cmd_set_budget(a: dict) -> None:
    FsCache(a["root"]).max_size = a["max_size"]
    say(json.dumps({"max_size": FsCache(a["root"]).max_size}))


def cmd_gc(a: dict) -> None:
    report = FsCache(a["root"]).gc()
    say(json.dumps(vars(report)))


def cmd_crash_at(a: dict) -> None:
    """Run one operation and stop (printing ``paused``) at a given step, to be SIGKILLed there;
    or, with ``points`` (a list of steps) in place of ``point``, stop at each in turn and go on
    from it when the parent writes a line to stdin.

    The step is found with a profile hook that only watches calls: nothing is replaced, every
    file-system call is the real one.  ``point`` is (caller function, called function, event):
    e.g. ("_retire", "rename", "c_return") stops right after the rename into the trash.
    """
    cache = FsCache(a["root"], durable=a.get("durable", True))
    op = a["op"]
    name = a.get("name", "e")
    if op == "store_fill":
        with cache.store(name) as path:
            fill(path, name, "crash", [5000, 7000])
            say("paused")
            time.sleep(120)
    points = [tuple(point) for point in a.get("points", [a.get("point")])]
    resumed = "points" in a

    def hook(frame, ev, arg):  # type: ignore[no-untyped-def]
        caller, callee, event = points[0]
        if ev != event:
            return
        name = getattr(arg, "__name__", None) if ev.startswith("c_") else frame.f_code.co_name
        where = frame.f_code.co_name if ev.startswith("c_") else frame.f_back.f_code.co_name
        if name == callee and where == caller:
            points.pop(0)
            if not points:
                sys.setprofile(None)
            say("paused")
            if resumed:
                sys.stdin.readline()
                return
            time.sleep(120)
            os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(hook)
    if op == "store":
        holder = Owner.of(a["holder"]) if "holder" in a else None  # (a live process's lease, given at the commit)
        with cache.store(name, holder=holder) as path:
            fill(path, name, "crash", [5000, 7000])
    elif op == "remove":
        cache.remove(name)
    elif op == "gc":
        cache.gc()
    elif op == "set_budget":
        cache.max_size = a["max_size"]
    elif op == "load":
        with cache.load(name):
            pass
    elif op == "hold":
        cache.hold(name, Owner.current())
    elif op == "release":
        cache.release(name, lease=cache.hold(name, Owner.current()))
    sys.setprofile(None)
    say("finished" if resumed and not points else "finished without reaching the point")


def cmd_evict_audit(a: dict) -> None:
    """Evict ``free`` bytes by lowering the budget; report the paths below objects/ touched, and
    the files of /proc opened (``proc``: what judging owners read)."""
    cache = FsCache(a["root"])
    objects = os.path.join(os.path.abspath(a["root"]), "objects")
    touched: list[str] = []
    proc: list[str] = []
    recording = False

    def audit(event: str, args: tuple) -> None:  # type: ignore[type-arg]
        if recording and event in ("open", "os.scandir", "os.listdir", "os.rename", "os.remove",
                                   "os.rmdir", "os.chmod", "os.lstat", "os.stat"):
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    path = os.fsdecode(arg)
                    if path.startswith(objects):
                        touched.append(f"{event} {path}")
                    elif path.startswith("/proc/") and event == "open":
                        proc.append(path)

    sys.addaudithook(audit)
    before = cache.size
    target = before - a["free"]
    recording = True
    cache.max_size = target
    recording = False
    say(json.dumps({"touched": touched, "proc": proc, "before": before, "after": cache.size}))


# -- the parent's side ---------------------------------------------------------------------------


class Child:
    """A worker process; every wait on it has a timeout."""

    def __init__(self, command: str, args: dict) -> None:  # type: ignore[type-arg]
        self.command = command
        self.proc = subprocess.Popen(
            [sys.executable, __file__, command, json.dumps(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def readline(self, timeout: float = 30) -> str:
        """The next line the child prints; AssertionError if none comes in time."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"{self.command} (pid {self.pid}) printed nothing in {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"{self.command} (pid {self.pid}) exited: {self.finish(10)}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def expect(self, word: str, timeout: float = 30) -> None:
        line = self.readline(timeout)
        assert line == word, f"{self.command} printed {line!r}, expected {word!r}"

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the child to exit; return (status, rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self._buffer + out).decode(), err.decode()

    def result(self, timeout: float = 60) -> dict:  # type: ignore[type-arg]
        """The JSON line a finished child printed; AssertionError if it failed."""
        status, out, err = self.finish(timeout)
        assert status == 0, f"{self.command} failed with status {status}:\n{err}"
        return json.loads(out.strip().splitlines()[-1])

    def go_on(self) -> None:
        """Let a ``crash_at`` child paused at one of its ``points`` go on."""
        self.proc.stdin.write(b"\n")  # type: ignore[union-attr]

    def release(self) -> None:
        """Close the child's stdin (a ``hold`` child then exits)."""
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.stdin = None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


class Children:
    """The worker processes of one test; :meth:`close` kills the ones still running."""

    def __init__(self) -> None:
        self.all: list[Child] = []

    def start(self, command: str, **args) -> Child:  # type: ignore[no-untyped-def]
        child = Child(command, args)
        self.all.append(child)
        return child

    def close(self) -> None:
        for child in self.all:
            try:
                child.kill()
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            for stream in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
                if stream is not None:
                    stream.close()


COMMANDS = {name[4:]: f for name, f in globals().items() if name.startswith("cmd_")}


def main() -> None:
    command, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        COMMANDS[command](args)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()


def scan_usage(path: Path) -> int:
    """Allocated bytes of the tree at ``path`` (every inode once), computed independently."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        total += os.lstat(dirpath).st_blocks * 512
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def loads(cache: FsCache, name: str) -> bool:
    """Whether ``name`` is a hit; a hit must be one complete copy."""
    try:
        with cache.load(name) as path:
            assert verify(path, name) is None
            return True
    except MissError:
        return False
