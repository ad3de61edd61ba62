"""Benchmark of parallel ranged downloads: N connections from an origin throttled per connection.

Usage::

    .venv/bin/python benchmarks/bench_connections.py [--size-mb 64] [--rate-mb 4]
                                                     [--connections 1,2,4,8] [--repeat 1]

It writes a file of random bytes, serves it with ``tests/origin.py --rate`` run as a process (the
rate is per connection, as on a link where each connection is throttled), and populates
``http:URL sha256:HEX`` from it in this process with ``connections`` = each N, so that the bytes
are hashed as in real use.  For each N it prints the seconds (the median over ``--repeat`` runs),
the throughput, its ratio to N times the throughput of one connection (the goal is at least 0.8,
up to what the link and the machine carry: ``--rate-mb 0`` measures that), and what the origin
served: requests and bytes per byte of the file (the first answer is dropped after its part,
wasting what was in flight).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from harness import MB, OriginProcess, Traffic, table
from sharedcache import FetchPolicy
from sharedcache.loaders import pipeline
from sharedcache.loaders.registry import parse_recipe


def populate_once(words: list[str], tmp: Path, connections: int) -> float:
    """Seconds to populate ``words`` into a fresh directory with ``connections`` connections."""
    run = Path(tempfile.mkdtemp(dir=tmp))
    (run / "dest").mkdir()
    (run / "work").mkdir()
    started = time.perf_counter()
    pipeline.populate(parse_recipe(words), run / "dest", work=run / "work",
                      fetch=FetchPolicy(connections=connections))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=64, help="size of the file, MB (default 64)")
    parser.add_argument("--rate-mb", type=float, default=4,
                        help="origin's rate per connection, MB/s; 0: full speed (default 4)")
    parser.add_argument("--connections", default="1,2,4,8", help="values of N (default 1,2,4,8)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per N; the median is reported")
    args = parser.parse_args()
    counts = [int(n) for n in args.connections.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-connections-") as name:
        tmp = Path(name)
        served = tmp / "served"
        served.mkdir()
        payload = hashlib.shake_256(b"bench-connections").digest(int(args.size_mb * MB))
        (served / "data.bin").write_bytes(payload)
        words = ["http:", f"sha256:{hashlib.sha256(payload).hexdigest()}"]
        del payload
        with OriginProcess(served, rate=args.rate_mb * MB or None) as origin:
            words[0] += origin.url("/data.bin")
            results: dict[int, tuple[float, Traffic]] = {}
            for n in counts:
                before = origin.stats("/data.bin")
                seconds = statistics.median(populate_once(words, tmp, n) for _ in range(args.repeat))
                results[n] = seconds, Traffic.between(before, origin.stats("/data.bin"))

    size = args.size_mb * MB
    single = size / results[1][0] if 1 in results else None  # bytes/s of one connection
    rows = []
    for n, (seconds, traffic) in results.items():
        rate = size / seconds
        ratio = f"{rate / (n * single):.2f}" if single is not None else "-"
        rows.append([str(n), f"{seconds:.2f}", f"{rate / MB:.2f}", ratio,
                     f"{traffic.gets / args.repeat:g}", f"{traffic.bytes_served / args.repeat / size:.3f}"])
    speed = f"{args.rate_mb:g} MB/s per connection" if args.rate_mb else "full speed"
    print(f"{args.size_mb:g} MB file, origin at {speed}, median of {args.repeat} run(s)")
    print(table(["N", "seconds", "MB/s", "of N x one", "requests", "served/size"], rows))


if __name__ == "__main__":
    main()
