"""What the flush at a commit costs, on a quiet file system and beside another writer's pending data.

Usage::

    .venv/bin/python benchmarks/bench_flush.py [--dir /var/tmp] [--files 1,10,100] [--pending-mb 2000]
                                               [--runs 5] [--baseline OTHER_CHECKOUT] [--keep no]

An entry of ``--files`` files is stored in a cache in ``--dir`` by ``FsCache.store`` (one file:
4 MiB of random bytes; more: 4 KiB each), kept (``--keep yes``, the default: flushed at its commit)
or not (``--keep no``: on a local disk, committed for this boot without a flush), and the store
is timed from its start to its return, commit included:

* *quiet*: after a ``sync``, with nothing else pending on the file system;
* *pending*: just after this script wrote ``--pending-mb`` MB to a file beside the cache without
  flushing it, as a job writing its output would.

Each store runs in a process of its own, with ``PYTHONPATH`` set to this checkout's ``src`` (and,
with ``--baseline``, taking turns with the other checkout's).  The pending file is removed and
the file system flushed between runs, untimed.  Medians over ``--runs``; the directories it makes
are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_STORE = """
import os, sys, time
from sharedcache import FsCache
root, files, keep = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "yes"
cache = FsCache(root)
start = time.perf_counter()
with cache.store(f"e{time.time_ns()}", keep=keep) as data:
    if files == 1:
        (data / "file").write_bytes(os.urandom(4 * 2**20))
    for i in range(files if files > 1 else 0):
        (data / f"f{i}").write_bytes(os.urandom(4096))
print(time.perf_counter() - start)
"""


def timed_store(checkout: Path, root: Path, files: int, keep: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    out = subprocess.run([sys.executable, "-c", _STORE, str(root), str(files), keep], env=env, check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return float(out)


def write_pending(path: Path, megabytes: int) -> None:
    block = os.urandom(2**20)
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the caches go (default /var/tmp)")
    parser.add_argument("--files", default="1,10,100", help="entry sizes in files (default 1,10,100)")
    parser.add_argument("--pending-mb", type=int, default=2000, help="another writer's pending data (default 2000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout, run in turn with this one")
    parser.add_argument("--keep", choices=("yes", "no"), default="yes", help="store kept entries (default yes)")
    args = parser.parse_args()

    checkouts = {"this checkout": HERE.parent}
    if args.baseline:
        checkouts["baseline"] = args.baseline.resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-flush-", dir=args.dir))
    times: dict[tuple[int, str, str], list[float]] = {}
    try:
        for files in map(int, args.files.split(",")):
            for run in range(args.runs):
                for index, (label, checkout) in enumerate(checkouts.items()):
                    root = work / f"cache-{index}"
                    os.sync()
                    quiet = timed_store(checkout, root, files, args.keep)
                    pending = work / "pending"
                    write_pending(pending, args.pending_mb)
                    busy = timed_store(checkout, root, files, args.keep)
                    pending.unlink()
                    times.setdefault((files, label, "quiet"), []).append(quiet)
                    times.setdefault((files, label, "pending"), []).append(busy)
                    print(f"files {files} run {run + 1} {label}: quiet {quiet * 1000:.1f} ms, "
                          f"beside {args.pending_mb} MB pending {busy * 1000:.1f} ms", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()
    print(f"\nstore and commit in {args.dir}, kept: {args.keep}, medians of {args.runs} (ms); pending: "
          f"{args.pending_mb} MB of another writer's data not yet flushed")
    print(f"{'files':>5}  {'checkout':<14}  {'quiet':>8}  {'pending':>8}")
    for (files, label, how), values in sorted(times.items()):
        if how == "quiet":
            busy = statistics.median(times[(files, label, "pending")]) * 1000
            print(f"{files:>5}  {label:<14}  {statistics.median(values) * 1000:>8.1f}  {busy:>8.1f}")


if __name__ == "__main__":
    main()
