"""Contenders side by side on one archive and one file system, for W9-W11: each entry is a
contender with the checksum algorithm it is given; the entries run interleaved, ``--repeat``
times, each run cold in a fresh directory (kept to the end where there is room); a row gives
the median, the time per member and, when measured, the peak RSS."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness import MB, Archive

from ..bench import Attempt, Bench, absent
from ..contenders import Contender
from ..report import Row, fmt, log, median, ratio, seconds_list


@dataclass(frozen=True)
class Entry:
    contender: Contender
    algorithm: str                  # of the checksum word; "" for none

    @property
    def label(self) -> str:
        if self.algorithm:
            return f"{self.contender.label} {self.algorithm}"
        return self.contender.label + (", no checksum" if self.contender.verifies else "")


def entries(b: Bench, wanted: list[tuple[str, str]]) -> list[Entry]:
    """``wanted`` as entries: (contender key, algorithm) pairs, in that order."""
    by_key = {c.key: c for c in b.contenders}
    return [Entry(by_key[key], algorithm) for key, algorithm in wanted if key in by_key]


def interleaved(b: Bench, archive: Archive, chosen: list[Entry], filesystem: str, tag: str,
                *, rss: bool = False) -> dict[str, list[Attempt]]:
    """Every entry that can run ``--repeat`` times, interleaved so that drift hits all alike, each
    round starting one entry later than the one before, so that no entry always runs first (after
    the previous round's last) or always follows the same one."""
    runnable = [e for e in chosen if not e.contender.unavailable
                and e.contender.unpacks(archive.name)]
    attempts: dict[str, list[Attempt]] = {e.label: [] for e in runnable}
    # On the disk, trees stay until the benchmark ends, where there is room: no run follows a
    # removal (see ``RECENTLY_DELETED_SECONDS``).  On tmpfs each goes after its run: kept, they
    # hold gigabytes of the machine's memory, and on this virtual machine a process's new pages
    # then cost more, the later runs' most ("Kept trees on tmpfs" in docs/performance.md).
    keep = filesystem == "disk" and b.room_for(archive, len(runnable) * b.args.repeat, filesystem)
    b.wait_out_last_removal(filesystem)
    for i in range(b.args.repeat):
        turn = i % len(runnable) if runnable else 0
        for e in runnable[turn:] + runnable[:turn]:
            attempt = b.cold(e.contender, archive, tag, rss=rss, algorithm=e.algorithm,
                             filesystem=filesystem, keep=keep)
            if not keep:
                b.settle(filesystem)
            attempts[e.label].append(attempt)
            log(f"{tag} {filesystem} {e.label} run {i + 1}: {attempt.run.seconds:.2f} s "
                f"{attempt.problem}")
    return attempts


def rows(archive: Archive, chosen: list[Entry], attempts: dict[str, list[Attempt]],
         reference: str, prefix: str, *, rss: bool = False, per_member: bool = True,
         also: str | None = None) -> list[Row]:
    """One row per entry, its median against that of the entry labelled ``reference``; each
    row's contender is ``prefix`` and the entry's label.  ``rss``: the attempts measured their
    peak RSS; ``per_member``: show the time per member (where members, not bytes, decide);
    ``also``: the label of a second reference, whose ratio the project's rows note too."""
    def median_of(label: str | None) -> float | None:
        return median([a.run.seconds for a in attempts.get(label or "", []) if a.ok])

    base, second = median_of(reference), median_of(also)
    made = []
    for e in chosen:
        label = f"{prefix}{e.label}"
        if e.contender.unavailable:
            made.append(absent(e.contender))
            made[-1].contender = label
            continue
        if e.label not in attempts:
            made.append(Row(label, None, notes=f"unavailable: cannot unpack {archive.name} "
                                                "(Python's tarfile reads no zstd)"))
            continue
        times = [a.run.seconds for a in attempts[e.label] if a.ok]
        value = median(times)
        cpu = [a.run.cpu_seconds for a in attempts[e.label] if a.ok]
        problems = sorted({a.problem for a in attempts[e.label] if a.problem})
        peak = max((a.run.maxrss_kb for a in attempts[e.label] if a.ok and rss), default=0) / 1024
        notes = [f"runs {seconds_list(times)} s"]
        to_second = ratio(value, second) if e.contender.kind in ("project", "baseline") else None
        if to_second is not None:
            notes.append(f"{fmt(to_second, 'x')}x the {also}")
        if value and per_member:
            notes.append(f"{value / archive.files * 1e6:.1f} us/member")
        if value:
            notes.append(f"{archive.size / MB / value:.0f} MB/s in")
            # On two cores wall time mixes what a contender spends with how evenly it spreads it.
            notes.append(f"CPU {median(cpu):.2f} s")
        if peak:
            notes.append(f"peak RSS {fmt(peak, 'MiB')} MiB")
        if not e.contender.verifies:
            notes.append("no checksum")
        if problems:
            notes.append(f"FAILED {len(problems)}: {problems[0]}")
        made.append(Row(label, value, ratio(value, base), "; ".join(notes),
                        {"seconds": times, "problems": problems, "members": archive.files,
                         "us_per_member": None if value is None else value / archive.files * 1e6,
                         "peak_rss_mib": peak or None, "cpu_seconds": cpu}))
    return made
