"""W8 latency-bound link: ``sc --use --connections N`` for N = 1, 2, 4, 8 from an origin throttled
to ``--link-rate-mb`` MB/s per connection, for a ~``--contention-mb`` MB tar.gz without small
files; throughput against N times that of one connection (only if ``sc --help`` lists
``--connections``).  One run each, and one from the full-speed origin for comparison."""

from __future__ import annotations

from benchmarks import harness
from benchmarks.harness import MB

from ..bench import SC, Bench
from ..report import Row, Workload

CONNECTIONS = (1, 2, 4, 8)

def sc_supports(option: str) -> bool:
    done = harness.run([str(SC), "--help"], timeout=60)
    return done.ok and option in done.stdout


def w8_connections(b: Bench) -> Workload:
    rate = b.args.link_rate_mb * MB
    w = Workload("W8", f"latency-bound link: origin at {b.args.link_rate_mb:g} MB/s per connection",
                 "s", "N x one connection", "time of one run",
                 params={"connections": CONNECTIONS, "rate_bytes_per_s": rate})
    sc = b.usable(("sc-cli",))[0]
    if sc.unavailable or not sc_supports("--connections"):
        w.skipped = "not supported (sc --help lists no --connections option)"
        w.check("W8", "sc --use --connections", None)
        return w
    archive = b.archive("w8")
    w.params["archive_bytes"] = archive.size
    single = None
    for n in CONNECTIONS:
        attempt = b.cold(sc, archive, f"w8-{n}", rate=rate, extra=("--connections", str(n)))
        seconds = attempt.run.seconds if attempt.ok else None
        single = seconds if n == 1 else single
        scaling = None if not seconds or not single else single / seconds / n
        notes = (f"FAILED: {attempt.problem}" if attempt.problem
                 else f"{archive.size / MB / attempt.run.seconds:.1f} MB/s")
        w.rows.append(Row(f"sc --use --connections {n}", seconds, scaling, notes,
                          {"seconds": seconds}))
        w.check("W8", f"N={n}", scaling)
    fixed = b.cold(sc, archive, "w8-full-speed")
    w.rows.append(Row("sc --use, origin at full speed", fixed.run.seconds if fixed.ok else None,
                      None, f"FAILED: {fixed.problem}" if fixed.problem
                      else "the part of each run that is not the link",
                      {"seconds": fixed.run.seconds}))
    return w

