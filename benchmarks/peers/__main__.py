"""The command line of the benchmark (see the package's docstring): options, the run of the
chosen workloads, the JSON report written after each, and the summary."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks import harness

from . import __doc__ as overview
from .bench import PEERS_VENV, RESULTS, Bench, remove, stamp_removal
from .environments import PeerEnv, prepare_baseline, prepare_peers
from .goals import goals_markdown
from .report import Workload, log
from .workloads import RUNNERS

DESCRIPTION = """\
Workloads (--only picks some; the workloads' modules say more):
  W1  cold fetch, verify, unpack of a ~200 MB tar.gz, every contender
  W2  8 processes at once for the same archive from a throttled origin
  W3  warm hit, whole process (with --baseline: the baseline's too)
  W4  warm hit, in process (with --baseline: the baseline's too)
  W5  peak RSS during a cold W1 fetch (--big-mb: at that size too)
  W6  peak disk during that fetch
  W7  sc list, sc gc, eviction with --scale repositories
  W8  --connections N from an origin throttled per connection
  W9  the standard library as .tar.gz/.xz/.zst against the GNU pipeline, tmpfs and disk
  W10 --members small files against the GNU pipeline, tmpfs and disk
  W11 md5:, sha256:, sha512: against no checksum on W1's archive
  W12 the --members small files of W10 as a .zip against curl then unzip, tmpfs and disk
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers",
                                description=(overview or "").split("::")[0].strip(),
                                epilog=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(RUNNERS), help="workloads, e.g. W1,W3")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per median in W1, W2, W7, W9-W12 (default 3)")
    p.add_argument("--json", type=Path, help="results file (default benchmarks/results/peers-<time>.json)")
    p.add_argument("--baseline", type=Path,
                   help="another checkout of the project: W3 and W4 measure its sc and use() too "
                        "(and W9-W12 its sc), from DIR/.venv (made when missing)")
    p.add_argument("--goals-markdown", action="store_true",
                   help="print the goals as a Markdown table and exit")
    p.add_argument("--size-mb", type=float, default=200, help="W1 archive size (default 200)")
    p.add_argument("--small-files", type=int, default=2000,
                   help="small files per generated archive of W1, W2, W5 (default 2000)")
    p.add_argument("--contention-mb", type=float, default=50, help="W2/W8 archive size (default 50)")
    p.add_argument("--rate-mb", type=float, default=25,
                   help="W2 origin, MB/s per connection (default 25)")
    p.add_argument("--processes", type=int, default=8, help="W2 processes (default 8)")
    p.add_argument("--warm-runs", type=int, default=30, help="W3 runs per median (default 30)")
    p.add_argument("--iterations", type=int, default=2000, help="W4 calls at most (default 2000)")
    p.add_argument("--big-mb", type=float, default=0, help="W5: also measure sc at this size")
    p.add_argument("--scale", type=int, default=10_000, help="W7 repositories (default 10000)")
    p.add_argument("--link-rate-mb", type=float, default=5,
                   help="W8 origin, MB/s per connection (default 5)")
    p.add_argument("--members", default="50000",
                   help="W10 and W12 archive sizes in members, e.g. 50000,1000000 (default 50000)")
    p.add_argument("--every-contender", action="store_true",
                   help="W9, W10: sc --use md5: and the peers too (a longer run)")
    p.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                   help="the working directory's parent, on the disk (default: the temp directory)")
    p.add_argument("--tmpfs", type=Path, default=Path("/dev/shm"),
                   help="the tmpfs where W9-W12 measure (default /dev/shm)")
    p.add_argument("--on", default="tmpfs,disk",
                   help="where W9-W12 measure: tmpfs, disk or both (default tmpfs,disk)")
    p.add_argument("--keep-work", action="store_true", help="keep the working directory")
    args = p.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in args.only if w not in RUNNERS]
    if unknown:
        p.error(f"unknown workload {', '.join(unknown)} (choose from {', '.join(RUNNERS)})")
    try:
        args.members = [int(n) for n in args.members.split(",")]
    except ValueError:
        p.error(f"--members takes numbers separated by commas, not {args.members!r}")
    if min(args.repeat, args.warm_runs, args.iterations, args.processes, args.scale,
           *args.members) < 1:
        p.error("counts must be positive")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
    args.on = [name.strip() for name in args.on.split(",") if name.strip()]
    if not args.on or set(args.on) - {"tmpfs", "disk"}:
        p.error(f"--on takes tmpfs, disk or both, not {','.join(args.on)!r}")
    if "tmpfs" in args.on and not args.tmpfs.is_dir():
        p.error(f"--tmpfs {args.tmpfs}: no such directory (--on disk measures on the disk only)")
    return args


@contextlib.contextmanager
def working_directory(args: argparse.Namespace) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="sc-bench-peers-", dir=args.tmp))
    try:
        yield work
    finally:
        if args.keep_work:
            log(f"kept {work}")
        else:
            remove(work)
            stamp_removal(args.tmp)  # for the next run's wait (Bench.wait_out_last_removal)


def write_report(output: Path, args: argparse.Namespace, argv: Sequence[str], started: float,
                 machine: dict[str, str], peers: PeerEnv, results: Sequence[Workload]) -> None:
    """Write what was measured so far (after each workload, so an interrupted run keeps it)."""
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": ["python", "-m", "benchmarks.peers", *argv],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {**machine, "load average now": harness.load_average()},
        "peers": peers.versions,
        "unavailable": peers.problems,
        "workloads": [asdict(w) for w in results],
    }
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.goals_markdown:
        print(goals_markdown())
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cleanups run
    started = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = args.json or RESULTS / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    peers = prepare_peers(PEERS_VENV)
    if args.baseline is not None and (problem := prepare_baseline(args.baseline)):
        log(f"baseline unavailable: {problem}")
    machine = {**harness.machine_info(args.tmp), "load average at start": harness.load_average()}
    if "tmpfs" in args.on:
        machine.update(harness.machine_info(args.tmpfs))
    results: list[Workload] = []
    with working_directory(args) as work:
        bench = Bench(args, work, peers)
        try:
            log("byte-compiling the package and the peers' environment (python -m compileall)")
            bench.byte_compile()
            for key in args.only:
                log(f"{key} ...")
                clock = harness.CpuClock()
                results.append(RUNNERS[key](bench))
                results[-1].stolen = clock.stolen()
                print("\n" + results[-1].render(), flush=True)
                write_report(output, args, argv, started, machine, peers, results)
        finally:
            bench.stop()
            harness.stop_all()
    write_report(output, args, argv, started, machine, peers, results)
    goals = [g for w in results for g in w.goals]
    print(f"\ngoals: {sum(g.met is True for g in goals)} met, "
          f"{sum(g.met is False for g in goals)} not met, "
          f"{sum(g.met is None for g in goals)} not measured")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items() if k != "free -h"))
    print(f"results: {output}  ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
