"""Benchmark of the FsCache engine: load, store, eviction, gc and entries() at scale.

Usage::

    .venv/bin/python benchmarks/bench_fscache.py [--entries 10000,100000] [--in-use 1000,4000]
                                                 [--repeat 5] [--json out.json] [--dir DIR]

For each cache size it builds a cache of that many small entries (stored with durable=False,
through the public API), then measures, each ``--repeat`` times:

* ``load`` of a hit, in-process (per-operation median of a batch; goal <= 100 us), next to a
  plain ``os.stat`` of a file of the entry and a dict lookup, for scale;
* ``store`` of a small entry, durable=True and durable=False;
* eviction of 1% of the entries (by lowering the budget; goal < 1 s for 100,000 entries),
  after which the evicted entries are stored again so every repeat starts from the same size;
* ``gc()`` and ``entries()`` over the whole cache.

For each number of ``--in-use`` entries, it builds a cache of that many entries nobody keeps, in
use by a live job (a sleeping process's leases), used after ``--repeat`` kept ones, and measures
the eviction of one kept entry: an eviction first walks the entries nobody keeps for garbage
(those of killed jobs), so each of them is looked at, however many there are.

The numbers reported are medians over the repeats (with the fastest and slowest repeat).  A
table is printed and the same results are written as JSON (by default to
benchmarks/results/fscache.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sharedcache import FsCache
from sharedcache.engine.leases import Owner

HERE = Path(__file__).resolve().parent


def name_of(i: int) -> str:
    return f"entry-{i:07d}"


def build(root: Path, n: int) -> tuple[FsCache, float]:
    """A cache of ``n`` one-file entries; returns it and the seconds per store it took."""
    cache = FsCache(root, durable=False)
    start = time.perf_counter()
    for i in range(n):
        with cache.store(name_of(i)) as path:
            (path / "f").write_bytes(b"%d\n" % i)
    return cache, (time.perf_counter() - start) / n


def per_op(batch: int, op: Callable[[int], object]) -> float:
    """Median seconds of one call of ``op(i)`` over ``batch`` calls."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(batch):
        t = clock()
        op(i)
        samples.append(clock() - t)
    return statistics.median(samples) / 1e9


def timed(op: Callable[[], object]) -> float:
    start = time.perf_counter()
    op()
    return time.perf_counter() - start


class Results:
    def __init__(self) -> None:
        self.rows: list[dict] = []  # type: ignore[type-arg]

    def add(self, op: str, entries: int | None, runs: list[float], goal: float | None = None,
            note: str = "") -> None:
        median = statistics.median(runs)
        self.rows.append({
            "operation": op, "entries": entries, "median_s": median, "min_s": min(runs),
            "max_s": max(runs), "repeats": len(runs), "goal_s": goal,
            "meets_goal": None if goal is None else median <= goal, "note": note,
        })
        print(f"  {op:<38} {entries or '':>8} {fmt(median):>10}  {fmt(min(runs)):>10} "
              f"{fmt(max(runs)):>10}  {goal_text(goal)}", flush=True)


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def print_header() -> None:
    print(f"  {'operation':<38} {'entries':>8} {'median':>10}  {'fastest':>10} {'slowest':>10}  goal")


def goal_text(goal: float | None) -> str:
    return "" if goal is None else f"<= {fmt(goal)}"


def bench_size(results: Results, base: Path, n: int, repeat: int, rng: random.Random) -> None:
    root = base / f"cache-{n}"
    shutil.rmtree(root, ignore_errors=True)
    print(f"\n{n} entries: building ...", flush=True)
    cache, build_rate = build(root, n)
    print(f"  built in {build_rate * n:.1f} s ({fmt(build_rate)} per store, durable=False)")
    print_header()
    results.add("store while building (durable=False)", n, [build_rate], note="mean over the build")
    one = cache.info(name_of(0)).size

    # load of a hit, next to os.stat and a dict lookup
    batch = 2000
    names = [name_of(rng.randrange(n)) for _ in range(batch)]
    files = [root / "objects" / name / "data" / "f" for name in names]
    table = {name_of(i): i for i in range(n)}

    def load(i: int) -> None:
        with cache.load(names[i]):
            pass

    results.add("load (hit)", n, [per_op(batch, load) for _ in range(repeat)], goal=100e-6)
    results.add("  for scale: os.stat", n, [per_op(batch, lambda i: os.stat(files[i]))
                                            for _ in range(repeat)])
    results.add("  for scale: dict lookup", n, [per_op(batch, lambda i: table[names[i]])
                                                for _ in range(repeat)])

    # store of a small entry
    for durable, count in ((False, 500), (True, 100)):
        writer = FsCache(root, durable=durable)
        runs = []
        for r in range(repeat):
            def store(i: int, r: int = r, writer: FsCache = writer, durable: bool = durable) -> None:
                with writer.store(f"small-{durable}-{r}-{i}") as path:
                    (path / "f").write_bytes(b"small")
            runs.append(per_op(count, store))
            for i in range(count):
                writer.remove(f"small-{durable}-{r}-{i}")
        results.add(f"store small entry (durable={durable})", n, runs)

    # eviction of 1%, restored after each repeat
    victims = n // 100
    runs = []
    for r in range(repeat):
        size = cache.size
        runs.append(timed(lambda size=size: setattr(cache, "max_size", size - victims * one)))
        assert cache.size == size - victims * one, (cache.size, size)
        cache.max_size = None
        for i in range(victims):
            with cache.store(f"refill-{r}-{i}") as path:
                (path / "f").write_bytes(b"refill")
    results.add(f"evict 1% ({victims} entries)", n, runs, goal=1.0 if n >= 100_000 else None)

    results.add("gc()", n, [timed(cache.gc) for _ in range(repeat)])
    results.add("entries()", n, [timed(cache.entries) for _ in range(repeat)])
    assert len(cache.entries()) == n
    shutil.rmtree(root, ignore_errors=True)


def bench_in_use(results: Results, base: Path, n: int, repeat: int) -> None:
    root = base / f"in-use-{n}"
    print(f"\n{n} entries in use: building ...", flush=True)
    cache = FsCache(root, durable=False)
    job = subprocess.Popen(["sleep", "3600"])
    try:
        owner = Owner.of(job.pid)
        assert owner is not None
        for r in range(repeat):  # the victims, one a repeat
            with cache.store(f"kept-{r}") as path:
                (path / "f").write_bytes(b"kept")
        one = cache.info("kept-0").size
        for i in range(n):
            with cache.store(f"in-use-{i:07d}", keep=False, holder=owner) as path:
                (path / "f").write_bytes(b"%d\n" % i)
        print_header()
        runs = [timed(lambda: cache.evict(one)) for _ in range(repeat)]
        assert len(cache.entries()) == n
        results.add("evict 1 kept entry past those in use", n, runs)
    finally:
        job.kill()
        job.wait()
        shutil.rmtree(root, ignore_errors=True)


def environment(base: Path) -> dict[str, object]:
    try:
        fs = subprocess.run(["df", "-T", str(base)], capture_output=True, text=True,
                            timeout=10).stdout.splitlines()[-1].split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        fs = "unknown"
    return {
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(), "cpus": os.cpu_count(), "filesystem": fs,
        "directory": str(base), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default="10000,100000",
                        help="comma-separated cache sizes (default: 10000,100000)")
    parser.add_argument("--in-use", default="1000,4000",
                        help="comma-separated numbers of entries in use (default: 1000,4000)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats per measurement (default: 5)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "fscache.json",
                        help="where to write the results (default: benchmarks/results/fscache.json)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the caches (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.entries.split(",") if s.strip()]
    in_use = [int(s.replace("_", "")) for s in args.in_use.split(",") if s.strip()]
    if args.repeat < 1 or any(n < 100 for n in sizes) or any(n < 0 for n in in_use):
        parser.error("--repeat must be >= 1, every --entries value >= 100 and every --in-use value >= 0")
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="bench-fscache-", dir=args.dir))
    results = Results()
    env = environment(base)
    print(f"FsCache benchmark: Python {env['python']}, SQLite {env['sqlite']}, "
          f"{env['cpus']} CPUs, {env['filesystem']} at {base}; {args.repeat} repeats")
    started = time.perf_counter()
    try:
        for n in sizes:
            bench_size(results, base, n, args.repeat, rng)
        for n in in_use:
            bench_in_use(results, base, n, args.repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    total = time.perf_counter() - started
    missed = [r for r in results.rows if r["meets_goal"] is False]
    print(f"\ntotal {total:.0f} s; goals: "
          + ("all met" if not missed else "MISSED: " + ", ".join(
              f"{r['operation']} ({r['entries']})" for r in missed)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "repeat": args.repeat,
                                     "seconds": total, "results": results.rows}, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
