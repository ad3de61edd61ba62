"""W7 scale: a base directory with ``--scale`` repositories (made with ``FsCache.store``): the
whole-process time of ``sc list``, ``sc gc``, and of a process lowering ``FsCache.max_size`` so
that 1 % of them is evicted (median of ``--repeat``)."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from benchmarks import harness

from ..bench import SC, Bench
from ..report import Row, Workload, log, median, ratio, seconds_list

#: Lowers the budget of the cache at argv[1] to argv[2] bytes; prints the seconds the setter took.
EVICT = """\
import sys, time
from sharedcache import FsCache
cache = FsCache(sys.argv[1])
start = time.perf_counter()
cache.max_size = int(sys.argv[2])
print(time.perf_counter() - start)
"""


#: Commits kept repositories repo-<i> for i in range(argv[2], argv[4], argv[3]) into the cache at
#: argv[1], each a one-file tree with its recipe's identity as metadata.
STORE = """\
import sys
import time
from sharedcache import FsCache
from sharedcache.loaders.words import recipe_identity
root, first, step, count = sys.argv[1], *map(int, sys.argv[2:5])
cache = FsCache(root, durable=False)
for i in range(first, count, step):
    name = f"repo-{i:06d}"
    words = [f"http:http://127.0.0.1/{name}.tar.gz", "tar"]
    with cache.store(name, meta=recipe_identity(words), keep=True) as data:
        (data / "README").write_text(name)
"""


def user_directory(base: Path) -> Path:
    """This user's directory in the base directory ``base`` (see sharedcache.repository.bases)."""
    return base / f".shared-cache-{os.geteuid()}"


def make_repositories(base: Path, count: int, env: dict[str, str]) -> tuple[float, str]:
    """``count`` kept repositories with their links in this user's directory of ``base``, made by
    one process per core: (seconds, "" or why it failed)."""
    start = time.perf_counter()
    links = user_directory(base)
    links.mkdir(mode=0o700)
    root = links / ".cache"
    workers = os.cpu_count() or 1
    runs = harness.run_all([[sys.executable, "-c", STORE, str(root), str(i), str(workers), str(count)]
                            for i in range(workers)], timeout=120 + count / 50, env=env)
    failed = [r.failure() for r in runs if not r.ok]
    if failed:
        return time.perf_counter() - start, failed[0]
    (root / "populate").mkdir(exist_ok=True)
    for i in range(count):
        os.symlink(f".cache/objects/repo-{i:06d}/data", links / f"repo-{i:06d}")
    return time.perf_counter() - start, ""


def w7_scale(b: Bench) -> Workload:
    count = b.args.scale
    w = Workload("W7", f"scale: a base directory with {count:,} repositories", "s", "2 s goal",
                 params={"repositories": count, "repeat": b.args.repeat})
    base = b.fresh_dir("w7")
    log(f"W7: creating {count:,} repositories")
    made, problem = make_repositories(base, count, b.env)
    w.rows.append(Row(f"create {count:,} (FsCache.store, setup)", made, None,
                      f"FAILED: {problem}" if problem
                      else f"{os.cpu_count()} processes, durable=False; not a goal"))
    if problem:
        w.check("W7", f"{count:,} repositories", None)
        return w
    root = user_directory(base) / ".cache"
    commands = {"sc list": [str(SC), "list", "-d", str(base)],
                "sc gc": [str(SC), "gc", "-d", str(base)]}
    times: dict[str, list[float]] = {name: [] for name in [*commands, "evict 1%"]}
    notes: dict[str, str] = {}
    total = _accounted_size(root)
    budget = total
    for _ in range(b.args.repeat):
        for name, argv in commands.items():
            done = harness.run(argv, timeout=600, env=b.env)
            if not done.ok:
                notes[name] = f"FAILED: {done.failure()}"
                continue
            times[name].append(done.seconds)
            if name == "sc list":
                notes[name] = f"{len(done.stdout.splitlines()) - 1:,} rows"
    evicted, inside = [], []
    for _ in range(b.args.repeat):  # each run evicts 1 % more
        budget -= math.ceil(total / 100)
        before = len(os.listdir(root / "objects"))
        done = harness.run([sys.executable, "-c", EVICT, str(root), str(budget)], timeout=600,
                           env=b.env)
        if not done.ok:
            notes["evict 1%"] = f"FAILED: {done.failure()}"
            continue
        times["evict 1%"].append(done.seconds)
        evicted.append(str(before - len(os.listdir(root / "objects"))))
        inside.append(float(done.last_line()))
    if evicted:
        notes["evict 1%"] = (f"FsCache.max_size in a fresh process; {'/'.join(evicted)} evicted; "
                             f"setter alone {seconds_list(inside)} s")
    for name, values in times.items():
        value = median(values)
        described = "; ".join(filter(None, [f"runs {seconds_list(values)} s", notes.get(name)]))
        w.rows.append(Row(name, value, ratio(value, 2.0), described, {"seconds": values}))
        w.check("W7", f"{name}, {count:,} repositories", value)
    return w


def _accounted_size(root: Path) -> int:
    code = "import sys; from sharedcache import FsCache; print(FsCache(sys.argv[1]).size)"
    done = harness.run([sys.executable, "-c", code, str(root)], timeout=120)
    return int(done.last_line())

