"""W1 cold fetch, W5 memory and W6 disk: every contender on one generated ~200 MB tar.gz.

W1: fetch, verify and unpack a ~``--size-mb`` MB tar.gz (a few big files of random bytes and
2,000 small files); each run starts with fresh directories; median of ``--repeat`` runs,
contenders interleaved; ratio to the curl pipeline.  Every run's tree is checked (file count and
bytes).
W5: peak RSS of the command and its descendants (``/usr/bin/time -f %M``; without it the
``wait4`` rusage, see :class:`harness.Child`) in one extra cold W1 run per contender; with
``--big-mb``, ``sc --use`` again on an archive of that size.
W6: peak bytes allocated (sum of st_blocks, sampled every 50 ms and at the end) under each
contender's directory during that same extra run, against the unpacked tree.
"""

from __future__ import annotations

from benchmarks.harness import MB

from ..bench import Attempt, Bench, absent
from ..report import Row, Workload, log, median, ratio, ratio_of, seconds_list, value_of


def w1_cold(b: Bench) -> Workload:
    archive = b.archive("w1")
    w = Workload("W1", f"cold: fetch, verify, unpack a {archive.size / MB:.0f} MB tar.gz "
                 f"({archive.files} files), fresh directories each run", "s", "curl pipeline",
                 params={"archive_bytes": archive.size, "files": archive.files,
                         "repeat": b.args.repeat})
    cs = b.usable()
    attempts: dict[str, list[Attempt]] = {c.key: [] for c in cs}
    for i in range(b.args.repeat):  # contenders interleaved, so that drift hits all alike
        for c in cs:
            if not c.unavailable:
                attempt = b.cold(c, archive, "w1")
                attempts[c.key].append(attempt)
                log(f"W1 {c.label} run {i + 1}: {attempt.run.seconds:.2f} s {attempt.problem}")
    times = {key: [a.run.seconds for a in runs if a.ok] for key, runs in attempts.items()}
    reference = median(times.get("curl", []))
    for c in cs:
        if c.unavailable:
            w.rows.append(absent(c))
            continue
        value = median(times[c.key])
        problems = sorted({a.problem for a in attempts[c.key] if a.problem})
        notes = [f"runs {seconds_list(times[c.key])} s"]
        if value:
            notes.append(f"{archive.size / MB / value:.0f} MB/s")
        if not c.verifies:
            notes.append("no checksum")
        if problems:
            notes.append(f"FAILED {len(problems)}: {problems[0]}")
        w.rows.append(Row(c.label, value, ratio(value, reference), "; ".join(notes),
                          {"seconds": times[c.key], "problems": problems}))
    for label in ("sc --use", "sharedcache.use()"):
        row = w.row(label)
        w.check("W1-pipeline", label, ratio_of(row))
        for peer in ("pooch", "cached_path"):
            w.check("W1-peers", f"{label} against {peer}",
                    ratio(value_of(row), value_of(w.row(peer))))
    return w


def w5_memory(b: Bench) -> Workload:
    archive = b.archive("w1")
    w = Workload("W5", f"memory: peak RSS during a cold W1 fetch ({archive.size / MB:.0f} MB)",
                 "MiB", "curl pipeline", "peak of one run", params={"archive_bytes": archive.size})
    cs = b.usable()
    attempts = {c.key: b.instrumented(c) for c in cs if not c.unavailable}
    rss = {key: a.run.maxrss_kb / 1024 if a.ok else None for key, a in attempts.items()}
    for c in cs:
        if c.unavailable:
            w.rows.append(absent(c))
            continue
        a = attempts[c.key]
        notes = "the largest of its processes" if c.key == "curl" else ""
        w.rows.append(Row(c.label, rss[c.key], ratio(rss[c.key], rss.get("curl")),
                          f"FAILED: {a.problem}" if a.problem else notes,
                          {"maxrss_kb": a.run.maxrss_kb, "seconds": a.run.seconds}))
    sc = b.usable(("sc-cli",))[0]
    if b.args.big_mb and not sc.unavailable:
        big = b.archive("big")
        attempt = b.cold(sc, big, "w5-big", rss=True)
        value = attempt.run.maxrss_kb / 1024 if attempt.ok else None
        w.rows.append(Row(f"sc --use ({big.size / MB:.0f} MB)", value, ratio(value, rss.get("curl")),
                          f"FAILED: {attempt.problem}" if attempt.problem
                          else f"{attempt.run.seconds:.1f} s",
                          {"maxrss_kb": attempt.run.maxrss_kb, "archive_bytes": big.size}))
    for row in w.rows:
        if row.contender.startswith("sc --use"):
            w.check("W5", row.contender, row.value)
    if not b.args.big_mb:
        w.check("W5", "sc --use at --big-mb (not given)", None)
    return w


def w6_disk(b: Bench) -> Workload:
    archive = b.archive("w1")
    w = Workload("W6", "disk: peak bytes allocated under the contender's directory during a cold "
                 "W1 fetch", "MB", f"unpacked tree ({archive.unpacked_disk / MB:.1f} MB)",
                 "peak of one run",
                 params={"unpacked_disk_bytes": archive.unpacked_disk,
                         "archive_bytes": archive.size, "sample_interval_s": 0.05})
    for c in b.usable():
        if c.unavailable:
            w.rows.append(absent(c))
            continue
        a = b.instrumented(c)
        peak = a.peak_disk / MB if a.ok and a.peak_disk is not None else None
        notes = f"FAILED: {a.problem}" if a.problem else ""
        w.rows.append(Row(c.label, peak, ratio(peak, archive.unpacked_disk / MB), notes,
                          {"peak_bytes": a.peak_disk}))
    for label in ("sc --use", "sharedcache.use()"):
        w.check("W6", label, ratio_of(w.row(label)))
    return w
