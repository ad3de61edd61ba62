"""What a workload measured: its rows, the goals it checked (against :mod:`.goals`), and their
rendering as a plain-text table; and the progress lines on stderr."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks import harness

from .goals import BY_KEY, GoalSpec


@dataclass
class Row:
    contender: str
    value: float | None          # the workload's headline number, in its unit
    ratio: float | None = None   # to the workload's reference
    notes: str = ""
    data: dict = field(default_factory=dict)  # the raw measurements


@dataclass
class Goal:
    """One goal of the table checked for one subject (a contender, a size, a file system)."""

    spec: GoalSpec
    subject: str
    value: float | None          # the measure compared with the threshold
    met: bool | None             # None: not measured

    @property
    def measured(self) -> str:
        shown = "-" if self.value is None else fmt(self.value, self.spec.unit)
        return shown + ("x" if self.spec.unit == "x" else f" {self.spec.unit}")


@dataclass
class Workload:
    key: str
    title: str
    unit: str
    reference: str               # what the ratio column divides by
    statistic: str = "median"    # what the value column holds
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    skipped: str = ""            # why nothing was measured
    stolen: float | None = None  # share of the CPU time the host took while it ran (harness.CpuClock)

    def row(self, contender: str) -> Row | None:
        return next((r for r in self.rows if r.contender == contender), None)

    def check(self, goal: str, subject: str, value: float | None) -> None:
        """Check ``value`` against the goal of the table named ``goal``."""
        spec = BY_KEY[goal]
        self.goals.append(Goal(spec, subject, value, spec.met(value)))

    def render(self) -> str:
        head = f"{self.key} {self.title}"
        if self.skipped:
            return f"{head}\n  not measured: {self.skipped}"
        cells = [[r.contender, fmt(r.value, self.unit), fmt(r.ratio, "x"), r.notes]
                 for r in self.rows]
        text = harness.table(["contender", f"{self.statistic} ({self.unit})",
                              f"ratio to {self.reference}", "notes"], cells)
        verdicts = []
        for spec in dict.fromkeys(g.spec for g in self.goals):
            verdicts.append(f"goal: {spec.text} {spec.bound}")
            verdicts += [f"  {g.subject}: {g.measured}: {verdict(g.met)}"
                         for g in self.goals if g.spec == spec]
        if self.stolen is not None:
            verdicts.append(f"CPU time taken by the host while this ran: {self.stolen:.1%}")
        return "\n".join([head, text, *verdicts])


def verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}"
    if unit == "s":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def value_of(row: Row | None) -> float | None:
    return None if row is None else row.value


def ratio_of(row: Row | None) -> float | None:
    return None if row is None else row.ratio


def seconds_list(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
