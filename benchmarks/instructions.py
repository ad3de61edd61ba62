"""What a warm ``sc --use`` costs in CPU instructions, counted by valgrind (callgrind).

Times on a shared machine move with its load; instruction counts do not (they vary by well under
1% between runs), so they show the cost of a change to the warm path, a module added or made
heavier, where W3 of ``python -m benchmarks.peers`` cannot.  Instructions are not time (a cache
miss costs more than an add), so W3 stays the judge of the goal; this says where the time goes::

    .venv/bin/python -m benchmarks.instructions                      # this checkout
    .venv/bin/python -m benchmarks.instructions --baseline ../old    # and another, side by side
    .venv/bin/python -m benchmarks.instructions --modules            # and what each module costs

Counted, the median of ``--runs`` runs each: ``python -c pass``, and a warm ``sc --use`` of a
ready ``file:`` repository, by ``--name`` and by its default name, run as installed (the ``sc``
script of the checkout's ``.venv``).
With ``--modules``, each module's own cost: the modules of ours a warm use loads, imported by
``python -c`` one more at a time in the order their loading began (so a package whose
``__init__`` imports modules of its own, as ``cli`` does, counts them, and they count nothing;
the garbage collector is on, as in a library's caller, so the sum is more than what they cost
the ``sc`` script).  Every package is
byte-compiled first, as an installed one is.
Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import harness

#: The house rule for a warm use against starting Python (CONTRIBUTING.md, "The warm path").
GOAL = 1.5
#: The data of the warm repository: any small file serves.
SOURCE = Path(__file__)

# A warm use that then prints the modules of ours it loaded, in the order their loading began
# (sys.modules keeps it).  Run by the checkout's own python, so it works for any version.
_WARM_USE = """
import sys
sys.argv = ["sc", *sys.argv[1:]]
from sharedcache.cli import main
main()
print(" ".join(name for name in sys.modules if name.split(".")[0] == "sharedcache"), file=sys.stderr)
"""


class Checkout:
    """A checkout of the project with its ``.venv``: its python, its ``sc`` script, and the
    modules of ours its warm use loads."""

    def __init__(self, label: str, root: Path) -> None:
        self.label, self.root = label, root
        self.python = root / ".venv" / "bin" / "python"
        self.script = root / ".venv" / "bin" / "sc"
        self.warm_modules: list[str] = []

    def prepare(self, work: Path) -> None:
        """Byte-compile the package, make a ready repository in ``work``, and learn which modules
        a warm use of it loads."""
        subprocess.run([str(self.python), "-m", "compileall", "-q", "-j", "0", str(self.root / "src")],
                       check=True, stdout=subprocess.DEVNULL, timeout=300)
        self.base = work / f"base-{self.label}"
        self.base.mkdir()
        for named in (True, False):
            subprocess.run([str(self.python), str(self.script), *self.use_arguments(named=named)], check=True,
                           stdout=subprocess.DEVNULL, timeout=120)
        loaded = subprocess.run([str(self.python), "-c", _WARM_USE, *self.use_arguments()], check=True,
                                capture_output=True, text=True, timeout=120)
        self.warm_modules = loaded.stderr.split()

    def use_arguments(self, *, named: bool = True) -> list[str]:
        """A warm use by ``--name``, or (``named`` false) by the recipe's default name."""
        return ["--use", "--keep", *(["-n", "warm"] if named else []), "-d", str(self.base), f"file:{SOURCE}"]


def instructions(argv: Sequence[str], runs: int) -> int:
    """The median count of instructions of ``argv`` over ``runs`` runs."""
    counts = []
    for _ in range(runs):
        with tempfile.NamedTemporaryFile(prefix="callgrind.") as out:
            done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", *argv],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed under valgrind: {done.stderr.strip()[-500:]}")
            totals = [line for line in Path(out.name).read_text().splitlines() if line.startswith("totals:")]
        counts.append(int(totals[-1].split()[1]))
    return int(statistics.median(counts))


def millions(count: int) -> str:
    return f"{count / 1e6:,.2f}"


def measure(checkout: Checkout, runs: int) -> dict[str, int]:
    python = str(checkout.python)
    return {
        "python -c pass": instructions([python, "-c", "pass"], runs),
        "warm sc --use": instructions([python, str(checkout.script), *checkout.use_arguments()], runs),
        "warm sc --use, default name": instructions(
            [python, str(checkout.script), *checkout.use_arguments(named=False)], runs),
    }


def module_costs(checkout: Checkout, runs: int) -> list[tuple[str, int]]:
    """Each module's own import cost: the count with it and those before it, less the count
    without it (the modules of the standard library a warm use loads are imported first)."""
    python = str(checkout.python)
    imported = ["fcntl", "errno", "stat", "time", "_signal", "posixpath"]
    previous = instructions([python, "-c", "import " + ", ".join(imported)], runs)
    costs = []
    for module in checkout.warm_modules:
        imported.append(module)
        count = instructions([python, "-c", "import " + ", ".join(imported)], runs)
        costs.append((module, count - previous))
        previous = count
    return costs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions",
                                description=(__doc__ or "").split("::")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="another checkout of the project, with its .venv")
    p.add_argument("--runs", type=int, default=3, help="runs per count; the median is shown (default 3)")
    p.add_argument("--modules", action="store_true", help="also each module's own import cost")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    checkouts = [Checkout("this", harness.REPO)]
    if args.baseline is not None:
        if not (args.baseline / ".venv" / "bin" / "sc").exists():
            print(f"{args.baseline}: no .venv/bin/sc (run its tools/test.sh --co -q first)", file=sys.stderr)
            return 2
        checkouts.append(Checkout("baseline", args.baseline.resolve()))
    with tempfile.TemporaryDirectory(prefix="sc-instructions-") as work:
        results = {}
        for checkout in checkouts:
            checkout.prepare(Path(work))
            results[checkout.label] = measure(checkout, args.runs)
        rows = []
        for checkout in checkouts:
            counts = results[checkout.label]
            start = counts["python -c pass"]
            for what, count in counts.items():
                against = results["baseline"][what] if "baseline" in results else None
                rows.append([checkout.label, what, millions(count), f"{count / start:.3f}",
                             "" if against is None else f"{count / against:.3f}"])
        print(harness.table(["checkout", "what", "instructions (M)", "x python -c pass", "x baseline"], rows))
        for what in ("warm sc --use", "warm sc --use, default name"):
            warm = results["this"][what] / results["this"]["python -c pass"]
            print(f"goal: {what} against `python -c pass` <= {GOAL}x, in instructions: "
                  f"{warm:.3f}x: {'met' if warm <= GOAL else 'NOT met'}")
        for checkout in checkouts if args.modules else ():
            costs = module_costs(checkout, args.runs)
            print(f"\n{checkout.label}: each module's own import cost, in the order a warm use loads them")
            print(harness.table(["module", "instructions (M)"],
                                [[name, millions(count)] for name, count in costs]
                                + [["(all)", millions(sum(count for _, count in costs))]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
