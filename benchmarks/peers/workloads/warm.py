"""W3 and W4: a warm hit, a tree that is ready.

W3 whole process: a fresh process asking for a ready tree, against ``python -c pass``; median by
hyperfine when installed (else an own loop), ``--warm-runs`` runs (a third of them, at least 5,
for the slower peers).  The package (and the baseline's) and the peers' environment are
byte-compiled first (``python -m compileall``): this environment sets PYTHONDONTWRITEBYTECODE=1,
and an ordinary install has its bytecode.  A measurement during which a source of the package
changed (stale bytecode) is made again.
W4 in process: one ``fetch()`` of a ready tree (``use()`` enter and exit, or ``pooch.retrieve``,
or ``cached_path``), median of up to ``--iterations`` calls in 5 s.

With ``--baseline DIR`` both also measure the baseline's contenders, each right after its
current counterpart in the same run, so that the two are compared under the same load.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

from benchmarks import harness
from benchmarks.harness import Archive

from ..bench import Bench, absent
from ..contenders import Contender, Target
from ..report import Row, Workload, fmt, log, median, ratio, ratio_of, value_of

#: the project's contenders and, with --baseline, their counterparts from the other checkout
BASELINE_OF = {"sc --use": "sc --use (baseline)",
               "sharedcache.use()": "sharedcache.use() (baseline)"}


def w3_warm_process(b: Bench) -> Workload:
    archive = b.archive("w1")
    w = Workload("W3", "warm hit, whole process: a fresh process asks for a ready tree", "ms",
                 "python -c pass", params={"warm_runs": b.args.warm_runs,
                                           "archive_bytes": archive.size})
    runs = b.args.warm_runs
    floor = [sys.executable, "-c", "pass"]
    commands = [("python -c pass", floor, runs)] + [
        (c.label, c.argv(target),
         runs if c.kind in ("project", "baseline") else max(5, runs // 3))
        for c, target in ready_contenders(b, w, archive, "w3", lambda c: c.warm)]
    times: dict[str, list[float]] = {label: [] for label, _, _ in commands}
    methods: dict[str, str] = {}
    for i in range(rounds(b)):
        for label, argv, count in commands:
            _, taken, methods[label] = b.time_warm(argv, max(1, count // rounds(b)))
            times[label] += taken
            log(f"W3 {label} round {i + 1}: {fmt(median(taken), 's')} s")
    reference = median([t * 1000 for t in times["python -c pass"]])
    for label, _, _ in commands:
        value = median([t * 1000 for t in times[label]])
        notes = methods[label] + (f" in each of {rounds(b)} rounds" if rounds(b) > 1 else "")
        w.rows.append(Row(label, value, ratio(value, reference), notes, {"seconds": times[label]}))
    w.check("W3", "sc --use", ratio_of(w.row("sc --use")))
    check_baseline(b, w, "W3-baseline")
    return w


def w4_warm_in_process(b: Bench) -> Workload:
    archive = b.archive("w1")
    iterations, budget = b.args.iterations, 5.0
    w = Workload("W4", "warm hit, in process: one fetch() of a ready tree", "us", "200 us goal",
                 params={"iterations": iterations, "budget_s": budget,
                         "archive_bytes": archive.size})
    ready = list(ready_contenders(b, w, archive, "w4", lambda c: c.in_process))
    micros: dict[str, list[float]] = {c.key: [] for c, _ in ready}
    failed: dict[str, str] = {}
    for _ in range(rounds(b)):
        for c, target in ready:
            done = harness.run(c.loop_argv(target, iterations // rounds(b), budget / rounds(b)),
                               timeout=budget * 4 + 120, env=b.env)
            if done.ok:
                micros[c.key] += [t / 1000 for t in json.loads(done.last_line())]
            else:
                failed[c.key] = done.failure()
    for c, _ in ready:
        value = median(micros[c.key])
        if c.key in failed or value is None:
            w.rows.append(Row(c.label, None, notes=f"FAILED: {failed.get(c.key)}"))
            continue
        p90 = sorted(micros[c.key])[int(0.9 * (len(micros[c.key]) - 1))]
        in_rounds = f" in {rounds(b)} rounds" if rounds(b) > 1 else ""
        w.rows.append(Row(c.label, value, ratio(value, 200.0),
                          f"{len(micros[c.key])} calls{in_rounds}; p90 {fmt(p90, 'us')} us",
                          {"microseconds": micros[c.key]}))
        log(f"W4 {c.label}: {fmt(value, 'us')} us")
    w.check("W4", "sharedcache.use()", value_of(w.row("sharedcache.use()")))
    check_baseline(b, w, "W4-baseline")
    return w


def rounds(b: Bench) -> int:
    """Into how many rounds the runs of each contender are split, the contenders taking turns:
    with a baseline, so that a change of load on the machine hits both sides alike."""
    return 1 if b.args.baseline is None else 5


def check_baseline(b: Bench, w: Workload, goal: str) -> None:
    """With ``--baseline``, each project contender measured in ``w`` against its baseline."""
    if b.args.baseline is None:
        return
    for current, old in BASELINE_OF.items():
        mine, theirs = w.row(current), w.row(old)
        if mine is not None and theirs is not None:
            w.check(goal, current, ratio(value_of(mine), value_of(theirs)))


def ready_contenders(
    b: Bench, w: Workload, archive: Archive, tag: str, where: Callable[[Contender], bool]
) -> Iterator[tuple[Contender, Target]]:
    """The contenders ``where`` selects, each with a directory where it has fetched ``archive``
    already (kept until the end of the run); one that is unavailable or fails to fetch gets its
    row in ``w`` instead."""
    for c in b.usable(where=where):
        if c.unavailable:
            w.rows.append(absent(c))
            continue
        dest = b.fresh_dir(f"{tag}-{c.key}")
        problem = b.fetch(c, archive, dest).problem
        if problem:
            w.rows.append(Row(c.label, None, notes=f"FAILED to populate: {problem}"))
            continue
        yield c, b.target(archive, dest)
