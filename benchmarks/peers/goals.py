"""The speed and resource goals, in one table: each workload checks its numbers against the
entry it names, and ``python -m benchmarks.peers --goals-markdown`` prints the table that
``docs/performance.md`` shows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GoalSpec:
    """One promise: what is measured, and the bound it must stay within."""

    key: str               # how the workload's code names it
    workload: str
    text: str              # what is measured, for a reader
    threshold: float
    unit: str              # "x" for a ratio, else the unit of the measure
    at_least: bool = False  # the measure must be >= threshold (else <=)

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` keeps the promise; ``None`` when nothing was measured."""
        if value is None:
            return None
        return value >= self.threshold if self.at_least else value <= self.threshold

    @property
    def bound(self) -> str:
        number = f"{self.threshold:g}"
        if self.unit == "x" and "." not in number:
            number += ".0"  # a ratio reads as one
        amount = f"{number}x" if self.unit == "x" else f"{number} {self.unit}"
        return f"{'>=' if self.at_least else '<='} {amount}"


GOALS: tuple[GoalSpec, ...] = (
    GoalSpec("W1-pipeline", "W1", "cold `sc --use` and `use()`, time against the curl pipeline",
             1.15, "x"),
    GoalSpec("W1-peers", "W1", "cold `sc --use` and `use()`, time against pooch and against "
             "cached_path", 1.0, "x"),
    GoalSpec("W2-once", "W2", "bytes the origin serves per race, against the archive's size "
             "(`sc --use`, `use()`)", 1.0, "x"),
    GoalSpec("W2-race", "W2", "8 processes at once, time until all are done against one process "
             "alone (`sc --use`, `use()`)", 1.1, "x"),
    GoalSpec("W3", "W3", "warm `sc --use`, whole process, against `python -c pass`", 1.5, "x"),
    GoalSpec("W3-baseline", "W3", "warm `sc --use` and `use()`, whole process, against the same "
             "from the `--baseline` checkout", 1.1, "x"),
    GoalSpec("W4", "W4", "warm `use()` enter and exit, in process", 200, "µs"),
    GoalSpec("W4-baseline", "W4", "warm `use()` in process, against the same from the "
             "`--baseline` checkout", 1.1, "x"),
    GoalSpec("W5", "W5", "peak RSS of `sc --use`, at 198 MB and at `--big-mb`", 64, "MiB"),
    GoalSpec("W6", "W6", "peak disk of `sc --use` and `use()`, against the unpacked tree",
             1.05, "x"),
    GoalSpec("W7", "W7", "`sc list`, `sc gc` and evicting 1 %, each, with 10,000 repositories "
             "(and 100,000 with `--scale`)", 2.0, "s"),
    GoalSpec("W8", "W8", "throughput with N connections, against N times that of one", 0.8, "x",
             at_least=True),
    GoalSpec("W9", "W9", "`sc --use` on the standard library as .tar.gz, .tar.xz, .tar.zst, "
             "against the GNU pipeline, on tmpfs and on the disk", 1.0, "x"),
    GoalSpec("W10", "W10", "`sc --use` on many small files, against the GNU pipeline, on tmpfs "
             "and on the disk", 1.0, "x"),
    GoalSpec("W10-rss", "W10", "peak RSS of `sc --use` at every size (1,000,000 members with "
             "`--members`)", 64, "MiB"),
    GoalSpec("W10-linear", "W10", "`sc --use` time per member at the largest size against the "
             "smallest (needs two sizes in `--members`)", 1.2, "x"),
    GoalSpec("W11", "W11", "`sc --use` with md5:, sha256:, sha512:, against no checksum", 1.05,
             "x"),
    GoalSpec("W12", "W12", "`sc --use` on many small files as a zip, against curl then unzip, on "
             "tmpfs and on the disk", 1.0, "x"),
    GoalSpec("W12-rss", "W12", "peak RSS of `sc --use` at every size (1,000,000 members with "
             "`--members`)", 64, "MiB"),
    GoalSpec("W12-linear", "W12", "`sc --use` time per member at the largest size against the "
             "smallest (needs two sizes in `--members`)", 1.2, "x"),
)

BY_KEY = {spec.key: spec for spec in GOALS}


def goals_markdown() -> str:
    """The table of :data:`GOALS` as Markdown."""
    lines = ["| | goal | bound |", "| --- | --- | --- |"]
    lines += [f"| {spec.workload} | {spec.text} | {spec.bound} |" for spec in GOALS]
    return "\n".join(lines)
