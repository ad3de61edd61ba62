"""W2 contention: ``--processes`` processes ask at once for the same ~``--contention-mb`` MB
tar.gz from an origin throttled to ``--rate-mb`` MB/s per connection: GETs, requests and bytes the
origin served for that file, and the time until all are done against one process alone (medians
of ``--repeat`` races)."""

from __future__ import annotations

from benchmarks.harness import MB, Archive

from ..bench import Bench, Race, absent
from ..contenders import Contender
from ..report import Row, Workload, fmt, log, median, ratio


def w2_contention(b: Bench) -> Workload:
    archive, processes = b.archive("w2"), b.args.processes
    w = Workload("W2", f"contention: {processes} processes at once, {archive.size / MB:.0f} MB "
                 f"tar.gz, origin at {b.args.rate_mb:g} MB/s per connection", "s",
                 "one process alone",
                 params={"archive_bytes": archive.size, "processes": processes,
                         "rate_bytes_per_s": b.args.rate_mb * MB, "repeat": b.args.repeat})
    cs = b.usable(("sc-cli", "sc-api", "pooch", "cached_path"))
    alone: dict[str, list[Race]] = {c.key: [] for c in cs}
    raced: dict[str, list[Race]] = {c.key: [] for c in cs}
    for i in range(b.args.repeat):
        for c in cs:
            if c.unavailable:
                continue
            alone[c.key].append(b.race(c, archive, 1, "w2-alone"))
            raced[c.key].append(b.race(c, archive, processes, "w2-race"))
            r = raced[c.key][-1]
            log(f"W2 {c.label} run {i + 1}: alone {alone[c.key][-1].seconds:.2f} s, "
                f"{processes} at once {r.seconds:.2f} s, {r.traffic.gets} GETs, "
                f"{r.traffic.bytes_served / archive.size:.2f}x the file served")
    for c in cs:
        w.rows.append(absent(c) if c.unavailable
                      else race_row(c, alone[c.key], raced[c.key], archive, processes))
    for c in cs:
        row = w.row(c.label)
        if c.kind != "project" or row is None or c.unavailable:
            continue
        served = max(row.data["bytes_served"], default=0) / archive.size
        w.check("W2-once", f"{c.label} (GETs {row.data['gets']})", served)
        w.check("W2-race", c.label, row.ratio)
    return w


def race_row(c: Contender, alone: list[Race], raced: list[Race], archive: Archive,
             processes: int) -> Row:
    ok_alone = [r.seconds for r in alone if not r.failures]
    ok_raced = [r.seconds for r in raced if not r.failures]
    value, single = median(ok_raced), median(ok_alone)
    gets = [r.traffic.gets for r in raced]
    served = [r.traffic.bytes_served for r in raced]
    notes = (f"alone {fmt(single, 's')} s; GETs {'/'.join(map(str, gets))}; "
             f"served {'/'.join(f'{s / archive.size:.2f}' for s in served)}x the file")
    heads = [r.traffic.requests - r.traffic.gets for r in raced]
    if any(heads):
        notes += f"; HEADs {'/'.join(map(str, heads))}"
    failures = sum(r.failures for r in raced) + sum(r.failures for r in alone)
    problems = sorted({p for r in [*alone, *raced] for p in r.problems})
    if failures or problems:
        notes += f"; FAILED {failures} of {len(raced) * processes + len(alone)} processes"
        notes += f": {problems[0]}" if problems else ""
    return Row(c.label, value, ratio(value, single), notes,
               {"alone_s": [r.seconds for r in alone], "race_s": [r.seconds for r in raced],
                "gets": gets, "bytes_served": served, "requests": [r.traffic.requests for r in raced],
                "failures": failures, "problems": problems})


