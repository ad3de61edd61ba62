"""shared-cache against its peers, side by side, in one run.

    .venv/bin/python benchmarks/bench_peers.py [--size-mb 200] [--repeat 3] [--only W1,W3]
                                               [--json out.json] [--big-mb 1000] [--scale 100000]

Everything talks to 127.0.0.1 only: the script starts ``tests/origin.py`` as child processes (one
at full speed, others throttled per connection) serving archives it generates deterministically
in a temporary directory, and stops them by pid when it ends.  Before each timed cold run it
calls ``sync`` (untimed), so that no run pays for the dirty pages of the one before.

Contenders (one table, :func:`contenders`; each is a command that fetches, verifies and unpacks
one tar.gz and prints the path of the unpacked tree):

* ``sc --use``: the CLI, ``.venv/bin/sc --use -d BASE -n NAME http:URL md5:HEX tar``;
* ``sharedcache.use()``: the Python API in a fresh process (``keep=True``, so that leaving the
  ``with`` block does not delete what was just made);
* ``pooch``: ``pooch.retrieve(url, known_hash="md5:...", processor=pooch.Untar())``;
* ``cached_path``: ``cached_path(url, cache_dir=..., extract_archive=True)`` (it has no checksum);
* ``curl pipeline``: ``curl -sf URL | tee >(md5sum) | tar xz -C DIR`` in bash, then a comparison
  of the sum: one stream through standard tools, the practical limit for one stream.

The peers are installed with pip into their own virtual environment,
``benchmarks/results/peers-venv`` (created when missing); a peer that cannot be installed is
reported as unavailable and the rest goes on.

Workloads (``--only`` picks some):

W1 cold: fetch, verify and unpack a ~``--size-mb`` MB tar.gz (a few big files of random bytes and
   2,000 small files); each run starts with fresh directories; median of ``--repeat`` runs,
   contenders interleaved; ratio to the curl pipeline.  Every run's tree is checked (file count
   and bytes).
W2 contention: ``--processes`` processes ask at once for the same ~``--contention-mb`` MB tar.gz
   from an origin throttled to ``--rate-mb`` MB/s per connection: GETs, requests and bytes the
   origin served for that file, and the time until all are done against one process alone
   (medians of ``--repeat`` races).
W3 warm hit, whole process: a fresh process asking for a ready tree, against
   ``python -c pass``; median by hyperfine when installed (else an own loop), ``--warm-runs``
   runs (a third of them, at least 5, for the slower peers).  The package and the peers'
   environment are byte-compiled first (``python -m compileall``): this environment sets
   PYTHONDONTWRITEBYTECODE=1, and an ordinary install has its bytecode.  A measurement during
   which a source of the package changed (stale bytecode) is made again.
W4 warm hit, in process: one ``fetch()`` of a ready tree (``use()`` enter and exit, or
   ``pooch.retrieve``, or ``cached_path``), median of up to ``--iterations`` calls in 5 s.
W5 memory: peak RSS of the command and its descendants (``/usr/bin/time -f %M``; without it the
   ``wait4`` rusage, see :class:`harness.Child`) in one extra cold W1 run per contender; with
   ``--big-mb``, ``sc --use`` again on an archive of that size.
W6 disk: peak bytes allocated (sum of st_blocks, sampled every 50 ms and at the end) under each
   contender's directory during that same extra run, against the unpacked tree.
W7 scale: a base directory with ``--scale`` repositories (made with ``FsCache.store``): the
   whole-process time of ``sc list``, ``sc gc``, and of a process lowering ``FsCache.max_size``
   so that 1 % of them is evicted (median of ``--repeat``).
W8 latency-bound link: ``sc --use --connections N`` for N = 1, 2, 4, 8 from an origin throttled
   to ``--link-rate-mb`` MB/s per connection, for a ~``--contention-mb`` MB tar.gz without small
   files; throughput against N times that of one connection (only if ``sc --help`` lists
   ``--connections``).  One run each, and one from the full-speed origin for comparison.

Each workload prints a table (contender, median, ratio to the reference, notes) and its goals;
all results go to ``--json`` (default ``benchmarks/results/peers-<timestamp>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import harness
from harness import MB, Archive, OriginProcess, Run, Traffic

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PEERS_VENV = RESULTS / "peers-venv"
PYTHON = Path(sys.executable)
SC = PYTHON.parent / "sc"
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")
CONNECTIONS = (1, 2, 4, 8)

# -- contenders -----------------------------------------------------------------------------------

#: A Python contender is a script made of this template and a recipe defining ``fetch()``, which
#: returns the path of the ready tree.  Called with URL MD5 NAME DEST it prints that path; with
#: ITERATIONS BUDGET after them it calls fetch() once, then times up to ITERATIONS more calls
#: within BUDGET seconds and prints the times in ns as JSON (W4).
PYTHON_TEMPLATE = """\
import sys
URL, MD5, NAME, DEST = sys.argv[1:5]
{recipe}
if len(sys.argv) > 5:
    import json, time
    iterations, budget = int(sys.argv[5]), float(sys.argv[6])
    fetch()
    times, end = [], time.perf_counter() + budget
    while len(times) < iterations and time.perf_counter() < end:
        start = time.perf_counter_ns()
        fetch()
        times.append(time.perf_counter_ns() - start)
    print(json.dumps(times))
else:
    print(fetch())
"""

SC_API_RECIPE = """\
import sharedcache
def fetch():
    with sharedcache.use("http:" + URL, "md5:" + MD5, "tar", name=NAME, directories=[DEST],
                         keep=True) as path:
        return path
"""

POOCH_RECIPE = """\
import logging, pooch
pooch.get_logger().setLevel(logging.WARNING)
def fetch():
    pooch.retrieve(URL, known_hash="md5:" + MD5, fname=NAME + ".tar.gz", path=DEST,
                   processor=pooch.Untar(), progressbar=False)
    return DEST + "/" + NAME + ".tar.gz.untar"
"""

CACHED_PATH_RECIPE = """\
from cached_path import cached_path
def fetch():
    return cached_path(URL, cache_dir=DEST, extract_archive=True, quiet=True)
"""

#: The reference: one stream through curl, tee, md5sum and tar.  md5sum reads fd 3 rather than
#: a process substitution inside the pipeline, so that bash can close its input and wait for it.
CURL_PIPELINE = """\
set -o pipefail
mkdir -p "$3/tree"
exec 3> >(md5sum >"$3/md5")
curl -sf "$1" | tee /dev/fd/3 | tar xz -C "$3/tree"
status=$?
exec 3>&-
wait $!
[ $status -eq 0 ] && read -r sum _ <"$3/md5" && [ "$sum" = "$2" ] && echo "$3/tree"
"""


@dataclass(frozen=True)
class Target:
    """One request: the archive's URL and sum, a name for it, and the contender's directory."""

    url: str
    md5: str
    name: str
    dest: Path
    extra: tuple[str, ...] = ()  # more options (sc --use only)


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    kind: str                                  # "project", "peer" or "reference"
    argv: Callable[[Target], list[str]]        # fetch, verify, unpack; print the tree's path
    warm: bool = True                          # answers again from its cache (W3)
    in_process: bool = True                    # has fetch() for an in-process loop (W4)
    verifies: bool = True                      # checks the checksum
    unavailable: str = ""                      # why it cannot run here; "" when it can

    def loop_argv(self, target: Target, iterations: int, budget: float) -> list[str]:
        return self.argv(target) + [str(iterations), str(budget)]


def python_contender(key: str, label: str, kind: str, python: Path, recipe: str, scripts: Path,
                     *, verifies: bool = True, unavailable: str = "") -> Contender:
    script = scripts / f"fetch_{key}.py"  # not "<module>.py": that would shadow the module
    script.write_text(PYTHON_TEMPLATE.format(recipe=recipe))
    return Contender(key, label, kind,
                     lambda t: [str(python), str(script), t.url, t.md5, t.name, str(t.dest)],
                     verifies=verifies, unavailable=unavailable)


def sc_argv(t: Target) -> list[str]:
    return [str(SC), "--use", "-d", str(t.dest), "-n", t.name, f"http:{t.url}", f"md5:{t.md5}",
            "tar", *t.extra]


def curl_argv(t: Target) -> list[str]:
    return ["bash", "-c", CURL_PIPELINE, "curl-pipeline", t.url, t.md5, str(t.dest)]


def contenders(scripts: Path, peers: PeerEnv) -> list[Contender]:
    """The table of contenders; the peers' availability comes from ``peers``."""
    scripts.mkdir(parents=True, exist_ok=True)
    missing_tools = [tool for tool in ("bash", "curl", "tee", "md5sum", "tar")
                     if shutil.which(tool) is None]
    return [
        Contender("sc-cli", "sc --use", "project", sc_argv, in_process=False,
                  unavailable="" if SC.exists() else f"{SC} not found"),
        python_contender("sc-api", "sharedcache.use()", "project", PYTHON, SC_API_RECIPE, scripts),
        python_contender("pooch", "pooch", "peer", peers.python, POOCH_RECIPE, scripts,
                         unavailable=peers.problems.get("pooch", "")),
        python_contender("cached_path", "cached_path", "peer", peers.python, CACHED_PATH_RECIPE,
                         scripts, verifies=False, unavailable=peers.problems.get("cached_path", "")),
        Contender("curl", "curl pipeline", "reference", curl_argv, warm=False, in_process=False,
                  unavailable=f"missing {', '.join(missing_tools)}" if missing_tools else ""),
    ]


# -- the peers' environment -----------------------------------------------------------------------

PEER_PACKAGES = {"pooch": "pooch", "cached_path": "cached_path"}  # contender key -> pip name


@dataclass
class PeerEnv:
    python: Path
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def prepare_peers(venv: Path) -> PeerEnv:
    """Create ``venv`` if missing and install each peer into it unless it is importable already."""
    peers = PeerEnv(venv / "bin" / "python")
    if not peers.python.exists():
        made = harness.run([sys.executable, "-m", "venv", str(venv)], timeout=120)
        if not made.ok:
            peers.problems = {key: f"cannot create {venv}: {made.failure()}" for key in PEER_PACKAGES}
            return peers
    for key, package in PEER_PACKAGES.items():
        version = _peer_version(peers.python, key, package)
        if version is None:
            log(f"installing {package} into {venv}")
            installed = harness.run([str(peers.python), "-m", "pip", "install", "-q", package],
                                    timeout=600)
            version = _peer_version(peers.python, key, package)
            if version is None:
                peers.problems[key] = f"pip install {package} failed: {installed.failure()}"
                continue
        peers.versions[package] = version
    return peers


def _peer_version(python: Path, module: str, package: str) -> str | None:
    code = f"import importlib.metadata, {module}; print(importlib.metadata.version({package!r}))"
    found = harness.run([str(python), "-c", code], timeout=60)
    return found.last_line() if found.ok else None


# -- results --------------------------------------------------------------------------------------


@dataclass
class Row:
    contender: str
    value: float | None          # the workload's headline number, in its unit
    ratio: float | None = None   # to the workload's reference
    notes: str = ""
    data: dict = field(default_factory=dict)  # the raw measurements


@dataclass
class Goal:
    text: str
    met: bool | None             # None: not measured


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

    def row(self, contender: str) -> Row | None:
        return next((r for r in self.rows if r.contender == contender), None)

    def render(self) -> str:
        head = f"{self.key} {self.title}"
        if self.skipped:
            return f"{head}\n  not measured: {self.skipped}"
        cells = [[r.contender, fmt(r.value, self.unit), fmt(r.ratio, "x"), r.notes]
                 for r in self.rows]
        text = harness.table(["contender", f"{self.statistic} ({self.unit})",
                              f"ratio to {self.reference}", "notes"], cells)
        verdicts = [f"goal: {g.text}: {verdict(g.met)}" for g in self.goals]
        return "\n".join([head, text, *verdicts])


def verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}"
    if unit in ("s",):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


# -- the run --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Attempt:
    """One contender asked once for an archive (cold unless its directory was ready)."""

    contender: str
    run: Run
    problem: str = ""            # "" when the tree is there and complete
    peak_disk: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problem


class Bench:
    """The state of one benchmark run: options, working directory, archives, origins."""

    def __init__(self, args: argparse.Namespace, work: Path, peers: PeerEnv) -> None:
        self.args, self.work, self.peers = args, work, peers
        self.data = work / "data"
        self.data.mkdir()
        self.env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        self.env.pop("SC_DIRECTORIES", None)
        self.contenders = contenders(work / "scripts", peers)
        self._archives: dict[str, Archive] = {}
        self._origins: dict[float | None, OriginProcess] = {}
        self._instrumented: dict[str, Attempt] = {}
        self._dirs = 0

    # resources, made on first use

    def archive(self, key: str) -> Archive:
        if key not in self._archives:
            megabytes, small_files = {
                "w1": (self.args.size_mb, self.args.small_files),
                "w2": (self.args.contention_mb, self.args.small_files),
                "w8": (self.args.contention_mb, 0),  # no small files: the link is measured
                "big": (self.args.big_mb, self.args.small_files),
            }[key]
            log(f"generating a {megabytes:g} MB tar.gz with {small_files} small files ({key})")
            self._archives[key] = harness.make_archive(
                self.data, f"{key}-{megabytes:g}mb", int(megabytes * MB), small_files=small_files)
        return self._archives[key]

    def origin(self, rate: float | None = None) -> OriginProcess:
        """The origin serving every archive, at full speed or at ``rate`` bytes/s per connection."""
        if rate not in self._origins:
            self._origins[rate] = OriginProcess(self.data, rate=rate)
        return self._origins[rate]

    def byte_compile(self, peers: bool = True) -> list[str]:
        """``python -m compileall`` the package (and the peers' environment): this environment
        sets PYTHONDONTWRITEBYTECODE=1, and an ordinary install has its bytecode.  Returns the
        files that needed compiling (sources changed since the last call, in a tree being edited)."""
        import sharedcache

        compiled = []
        directories = [Path(sharedcache.__file__).parent]
        if peers:
            directories += PEERS_VENV.glob("lib/python*/site-packages")
        for directory in directories:
            done = harness.run([sys.executable, "-m", "compileall", "-j", "0", str(directory)],
                               timeout=600)
            compiled += [line for line in done.stdout.splitlines() if line.startswith("Compiling")]
            if not done.ok:
                log(f"compileall {directory}: {done.failure()}")
        return compiled

    def time_warm(self, argv: list[str], runs: int) -> tuple[float | None, list[float], str]:
        """:meth:`time_command` with fresh bytecode; measured again (once) if a source changed
        meanwhile, since every start would then have compiled it again."""
        self.byte_compile(peers=False)
        seconds, times, how = self.time_command(argv, runs)
        if self.byte_compile(peers=False):
            log("sources changed during the measurement: measuring again")
            seconds, times, how = self.time_command(argv, runs)
            how += "; measured twice (sources changed during the first)"
        return seconds, times, how

    def stop(self) -> None:
        for origin in self._origins.values():
            origin.stop()

    def fresh_dir(self, tag: str) -> Path:
        self._dirs += 1
        path = self.work / "runs" / f"{self._dirs:04d}-{tag}"
        path.mkdir(parents=True)
        return path

    def usable(self, keys: Sequence[str] | None = None,
               where: Callable[[Contender], bool] = lambda c: True) -> list[Contender]:
        return [c for c in self.contenders if (keys is None or c.key in keys) and where(c)]

    def target(self, archive: Archive, dest: Path, *, rate: float | None = None,
               extra: tuple[str, ...] = ()) -> Target:
        url = self.origin(rate).url(archive.name)
        return Target(url, archive.md5, archive.name.removesuffix(".tar.gz"), dest, extra)

    # measurements

    def fetch(self, c: Contender, archive: Archive, dest: Path, *, rate: float | None = None,
              extra: tuple[str, ...] = (), rss: bool = False) -> Attempt:
        """Run ``c`` once for ``archive`` into ``dest`` and check the tree it reports."""
        os.sync()  # start without the previous run's dirty pages (untimed)
        run = harness.run(c.argv(self.target(archive, dest, rate=rate, extra=extra)),
                          timeout=self.fetch_timeout(archive, rate), env=self.env, rss=rss)
        return Attempt(c.key, run, check_tree(run, archive))

    def cold(self, c: Contender, archive: Archive, tag: str, *, rate: float | None = None,
             extra: tuple[str, ...] = (), rss: bool = False) -> Attempt:
        """A cold fetch into a fresh directory, removed afterwards."""
        dest = self.fresh_dir(f"{tag}-{c.key}")
        try:
            return self.fetch(c, archive, dest, rate=rate, extra=extra, rss=rss)
        finally:
            remove(dest)

    def instrumented(self, c: Contender) -> Attempt:
        """One cold W1 fetch with peak RSS and disk measured (shared by W5 and W6)."""
        if c.key not in self._instrumented:
            archive = self.archive("w1")
            dest = self.fresh_dir(f"w56-{c.key}")
            try:
                with harness.DiskSampler(dest) as disk:
                    attempt = self.fetch(c, archive, dest, rss=True)
                attempt.peak_disk = disk.peak
            finally:
                remove(dest)
            self._instrumented[c.key] = attempt
        return self._instrumented[c.key]

    def race(self, c: Contender, archive: Archive, processes: int, tag: str) -> Race:
        """``processes`` copies of ``c`` at once, sharing one directory, from the origin
        throttled to ``--rate-mb``."""
        rate = self.args.rate_mb * MB
        origin = self.origin(rate)
        dest = self.fresh_dir(f"{tag}-{c.key}")
        try:
            before = origin.stats(archive.name)
            argv = c.argv(self.target(archive, dest, rate=rate))
            os.sync()
            runs = harness.run_all([argv] * processes, env=self.env,
                                   timeout=self.fetch_timeout(archive, rate) * processes)
            traffic = Traffic.between(before, origin.stats(archive.name))
            problems = sorted({p for p in (check_tree(r, archive) for r in runs) if p})
            return Race(max(r.ended for r in runs) - min(r.started for r in runs), traffic,
                        sum(not r.ok for r in runs), problems)
        finally:
            remove(dest)

    @staticmethod
    def fetch_timeout(archive: Archive, rate: float | None) -> float:
        return 60 + 3 * archive.size / (rate or 20 * MB)

    def time_command(self, argv: list[str], runs: int) -> tuple[float | None, list[float], str]:
        """Median wall time of ``argv`` over ``runs`` runs (after 3 warm-ups): (median, times, how)."""
        if shutil.which("hyperfine"):
            return self._hyperfine(argv, runs)
        times = []
        for i in range(runs + 3):
            done = harness.run(argv, timeout=120, env=self.env)
            if not done.ok:
                return None, [], f"failed: {done.failure()}"
            if i >= 3:
                times.append(done.seconds)
        return median(times), times, f"own loop, {runs} runs"

    def _hyperfine(self, argv: list[str], runs: int) -> tuple[float | None, list[float], str]:
        export = self.work / "hyperfine.json"
        done = harness.run(["hyperfine", "-N", "--style", "none", "--warmup", "3", "--runs",
                            str(runs), "--export-json", str(export), shlex.join(argv)],
                           timeout=60 + 30 * runs, env=self.env)
        if not done.ok:
            return None, [], f"failed: {done.failure()}"
        result = json.loads(export.read_text())["results"][0]
        return result["median"], result["times"], f"hyperfine, {runs} runs"


@dataclass
class Race:
    seconds: float        # first start to last end
    traffic: Traffic
    failures: int         # processes that did not exit 0
    problems: list[str]


def check_tree(run: Run, archive: Archive) -> str:
    """"" if ``run`` succeeded and the tree it printed holds the archive's files, else why not."""
    if not run.ok:
        return run.failure()
    path = run.last_line()
    if not path or not os.path.isdir(path):
        return f"printed {path!r}, not a directory"
    files, size = harness.tree_contents(path)
    if (files, size) != (archive.files, archive.content_bytes):
        return f"tree has {files} files, {size} bytes; expected {archive.files}, {archive.content_bytes}"
    return ""


def remove(path: Path) -> None:
    """Remove a tree, read-only parts included."""
    def writable(function, target, _exc):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
        with contextlib.suppress(FileNotFoundError):
            function(target)
    shutil.rmtree(path, onerror=writable)


def absent(c: Contender) -> Row:
    return Row(c.label, None, notes=f"unavailable: {c.unavailable}")


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def value_of(row: Row | None) -> float | None:
    return None if row is None else row.value


def ratio_of(row: Row | None) -> float | None:
    return None if row is None else row.ratio


def seconds_list(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


# -- W1 cold --------------------------------------------------------------------------------------


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
        w.goals.append(Goal(f"{label} within 1.15x of the curl pipeline "
                            f"({fmt(ratio_of(row), 'x')}x)", at_most(ratio_of(row), 1.15)))
        for peer in ("pooch", "cached_path"):
            mine, theirs = value_of(row), value_of(w.row(peer))
            w.goals.append(Goal(f"{label} faster than {peer} ({fmt(mine, 's')} s vs "
                                f"{fmt(theirs, 's')} s)",
                                None if mine is None or theirs is None else mine < theirs))
    return w


# -- W2 contention --------------------------------------------------------------------------------


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
        once = all(g == 1 and n == archive.size
                   for g, n in zip(row.data["gets"], row.data["bytes_served"]))
        w.goals.append(Goal(f"{c.label}: the origin serves the file once per race "
                            f"(GETs {row.data['gets']}, bytes {row.data['bytes_served']} "
                            f"of a {archive.size}-byte file)", once))
        w.goals.append(Goal(f"{c.label}: {processes} done within 1.1x of one alone "
                            f"({fmt(row.ratio, 'x')}x)", at_most(row.ratio, 1.1)))
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


# -- W3 warm hit, whole process -------------------------------------------------------------------


def w3_warm_process(b: Bench) -> Workload:
    archive = b.archive("w1")
    w = Workload("W3", "warm hit, whole process: a fresh process asks for a ready tree", "ms",
                 "python -c pass", params={"warm_runs": b.args.warm_runs,
                                           "archive_bytes": archive.size})
    runs = b.args.warm_runs
    base_median, base_times, how = b.time_warm([sys.executable, "-c", "pass"], runs)
    reference = None if base_median is None else base_median * 1000
    w.rows.append(Row("python -c pass", reference, 1.0 if reference else None, how,
                      {"seconds": base_times}))
    for c, target in ready_contenders(b, w, archive, "w3", lambda c: c.warm):
        count = runs if c.kind == "project" else max(5, runs // 3)
        seconds, times, how = b.time_warm(c.argv(target), count)
        value = None if seconds is None else seconds * 1000
        w.rows.append(Row(c.label, value, ratio(value, reference), how, {"seconds": times}))
        log(f"W3 {c.label}: {fmt(value, 'ms')} ms")
    row = w.row("sc --use")
    w.goals.append(Goal(f"sc --use within 1.5x of python -c pass ({fmt(ratio_of(row), 'x')}x)",
                        at_most(ratio_of(row), 1.5)))
    return w


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


# -- W4 warm hit, in process ----------------------------------------------------------------------


def w4_warm_in_process(b: Bench) -> Workload:
    archive = b.archive("w1")
    iterations, budget = b.args.iterations, 5.0
    w = Workload("W4", "warm hit, in process: one fetch() of a ready tree", "us", "200 us goal",
                 params={"iterations": iterations, "budget_s": budget,
                         "archive_bytes": archive.size})
    for c, target in ready_contenders(b, w, archive, "w4", lambda c: c.in_process):
        done = harness.run(c.loop_argv(target, iterations, budget), timeout=budget * 4 + 120,
                           env=b.env)
        if not done.ok:
            w.rows.append(Row(c.label, None, notes=f"FAILED: {done.failure()}"))
            continue
        micros = [t / 1000 for t in json.loads(done.last_line())]
        value = median(micros)
        p90 = sorted(micros)[int(0.9 * (len(micros) - 1))]
        w.rows.append(Row(c.label, value, ratio(value, 200.0),
                          f"{len(micros)} calls; p90 {fmt(p90, 'us')} us",
                          {"microseconds": micros}))
        log(f"W4 {c.label}: {fmt(value, 'us')} us")
    value = value_of(w.row("sharedcache.use()"))
    w.goals.append(Goal(f"use() enter+exit <= 200 us ({fmt(value, 'us')} us)",
                        at_most(value, 200)))
    return w


# -- W5 memory, W6 disk ---------------------------------------------------------------------------


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
            w.goals.append(Goal(f"{row.contender}: peak RSS <= 64 MiB ({fmt(row.value, 'MiB')} MiB)",
                                at_most(row.value, 64)))
    if not b.args.big_mb:
        w.goals.append(Goal("peak RSS independent of the size (needs --big-mb)", None))
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
        row = w.row(label)
        w.goals.append(Goal(f"{label}: peak <= 1.05x the unpacked tree "
                            f"({fmt(ratio_of(row), 'x')}x)", at_most(ratio_of(row), 1.05)))
    return w


# -- W7 scale -------------------------------------------------------------------------------------

#: Lowers the budget of the cache at argv[1] to argv[2] bytes; prints the seconds the setter took.
EVICT = """\
import sys, time
from sharedcache import FsCache
cache = FsCache(sys.argv[1])
start = time.perf_counter()
cache.max_size = int(sys.argv[2])
print(time.perf_counter() - start)
"""


#: Commits kept repositories repo-<i> for i in range(argv[2], argv[4], argv[3]) into the cache at
#: argv[1], each a one-file tree with its recipe's identity as metadata.
STORE = """\
import sys
from sharedcache import FsCache
from sharedcache.loaders.words import recipe_identity
root, first, step, count = sys.argv[1], *map(int, sys.argv[2:5])
cache = FsCache(root, durable=False)
for i in range(first, count, step):
    name = f"repo-{i:06d}"
    words = [f"http:http://127.0.0.1/{name}.tar.gz", "tar"]
    with cache.store(name, meta=recipe_identity(words), keep=True) as data:
        (data / "README").write_text(name)
"""


def user_directory(base: Path) -> Path:
    """This user's directory in the base directory ``base`` (see sharedcache.repository.bases)."""
    return base / f".shared-cache-{os.geteuid()}"


def make_repositories(base: Path, count: int, env: dict[str, str]) -> tuple[float, str]:
    """``count`` kept repositories with their links in ``base``, made by one process per core:
    (seconds, "" or why it failed)."""
    start = time.perf_counter()
    links = user_directory(base)
    links.mkdir(mode=0o700)
    root = links / ".cache"
    workers = os.cpu_count() or 1
    runs = harness.run_all([[sys.executable, "-c", STORE, str(root), str(i), str(workers), str(count)]
                            for i in range(workers)], timeout=120 + count / 50, env=env)
    failed = [r.failure() for r in runs if not r.ok]
    if failed:
        return time.perf_counter() - start, failed[0]
    (root / "populate").mkdir(exist_ok=True)
    for i in range(count):
        os.symlink(f".cache/objects/repo-{i:06d}/data", links / f"repo-{i:06d}")
    return time.perf_counter() - start, ""


def w7_scale(b: Bench) -> Workload:
    count = b.args.scale
    w = Workload("W7", f"scale: a base directory with {count:,} repositories", "s", "2 s goal",
                 params={"repositories": count, "repeat": b.args.repeat})
    base = b.fresh_dir("w7")
    log(f"W7: creating {count:,} repositories")
    made, problem = make_repositories(base, count, b.env)
    w.rows.append(Row(f"create {count:,} (FsCache.store, setup)", made, None,
                      f"FAILED: {problem}" if problem
                      else f"{os.cpu_count()} processes, durable=False; not a goal"))
    if problem:
        w.goals.append(Goal(f"sc list, sc gc, evicting 1 % < 2 s with {count:,} repositories", None))
        return w
    root = user_directory(base) / ".cache"
    commands = {"sc list": [str(SC), "list", "-d", str(base)],
                "sc gc": [str(SC), "gc", "-d", str(base)]}
    times: dict[str, list[float]] = {name: [] for name in [*commands, "evict 1%"]}
    notes: dict[str, str] = {}
    total = _accounted_size(root)
    budget = total
    for _ in range(b.args.repeat):
        for name, argv in commands.items():
            done = harness.run(argv, timeout=600, env=b.env)
            if not done.ok:
                notes[name] = f"FAILED: {done.failure()}"
                continue
            times[name].append(done.seconds)
            if name == "sc list":
                notes[name] = f"{len(done.stdout.splitlines()) - 1:,} rows"
    evicted, inside = [], []
    for _ in range(b.args.repeat):  # each run evicts 1 % more
        budget -= math.ceil(total / 100)
        before = len(os.listdir(root / "objects"))
        done = harness.run([sys.executable, "-c", EVICT, str(root), str(budget)], timeout=600,
                           env=b.env)
        if not done.ok:
            notes["evict 1%"] = f"FAILED: {done.failure()}"
            continue
        times["evict 1%"].append(done.seconds)
        evicted.append(str(before - len(os.listdir(root / "objects"))))
        inside.append(float(done.last_line()))
    if evicted:
        notes["evict 1%"] = (f"FsCache.max_size in a fresh process; {'/'.join(evicted)} evicted; "
                             f"setter alone {seconds_list(inside)} s")
    for name, values in times.items():
        value = median(values)
        described = "; ".join(filter(None, [f"runs {seconds_list(values)} s", notes.get(name)]))
        w.rows.append(Row(name, value, ratio(value, 2.0), described, {"seconds": values}))
        w.goals.append(Goal(f"{name} < 2 s with {count:,} repositories ({fmt(value, 's')} s)",
                            None if value is None else value < 2.0))
    return w


def _accounted_size(root: Path) -> int:
    code = "import sys; from sharedcache import FsCache; print(FsCache(sys.argv[1]).size)"
    done = harness.run([sys.executable, "-c", code, str(root)], timeout=120)
    return int(done.last_line())


# -- W8 latency-bound link ------------------------------------------------------------------------


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
        w.goals.append(Goal("N connections give >= 0.8 x N the throughput of one", None))
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
        w.goals.append(Goal(f"N={n}: >= 0.8 x N ({fmt(scaling, 'x')})",
                            None if scaling is None else scaling >= 0.8))
    fixed = b.cold(sc, archive, "w8-full-speed")
    w.rows.append(Row("sc --use, origin at full speed", fixed.run.seconds if fixed.ok else None,
                      None, f"FAILED: {fixed.problem}" if fixed.problem
                      else "the part of each run that is not the link",
                      {"seconds": fixed.run.seconds}))
    return w


# -- main -----------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Bench], Workload]] = {
    "W1": w1_cold, "W2": w2_contention, "W3": w3_warm_process, "W4": w4_warm_in_process,
    "W5": w5_memory, "W6": w6_disk, "W7": w7_scale, "W8": w8_connections,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, default=200, help="W1 archive size (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="runs per median in W1, W2, W7 (default 3)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="workloads, e.g. W1,W3")
    p.add_argument("--json", type=Path, help="results file (default benchmarks/results/peers-<time>.json)")
    p.add_argument("--contention-mb", type=float, default=50, help="W2/W8 archive size (default 50)")
    p.add_argument("--rate-mb", type=float, default=25,
                   help="W2 origin, MB/s per connection (default 25)")
    p.add_argument("--processes", type=int, default=8, help="W2 processes (default 8)")
    p.add_argument("--link-rate-mb", type=float, default=5,
                   help="W8 origin, MB/s per connection (default 5)")
    p.add_argument("--warm-runs", type=int, default=30, help="W3 runs per median (default 30)")
    p.add_argument("--iterations", type=int, default=2000, help="W4 calls at most (default 2000)")
    p.add_argument("--big-mb", type=float, default=0, help="W5: also measure sc at this size")
    p.add_argument("--scale", type=int, default=10_000, help="W7 repositories (default 10000)")
    p.add_argument("--small-files", type=int, default=2000, help="small files per archive")
    p.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the working directory goes (default: the temp directory)")
    p.add_argument("--keep-work", action="store_true", help="keep the working directory")
    args = p.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in args.only if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload {', '.join(unknown)} (choose from {', '.join(WORKLOADS)})")
    if min(args.repeat, args.warm_runs, args.iterations, args.processes, args.scale) < 1:
        p.error("counts must be positive")
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


def write_report(output: Path, args: argparse.Namespace, argv: Sequence[str], started: float,
                 machine: dict[str, str], peers: PeerEnv, results: Sequence[Workload]) -> None:
    """Write what was measured so far (after each workload, so an interrupted run keeps it)."""
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": ["bench_peers.py", *argv],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {**machine, "load average now": harness.load_average()},
        "peers": peers.versions,
        "unavailable": peers.problems,
        "workloads": [asdict(w) for w in results],
    }
    output.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cleanups run
    started = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = args.json or RESULTS / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    peers = prepare_peers(PEERS_VENV)
    machine = {**harness.machine_info(args.tmp), "load average at start": harness.load_average()}
    results: list[Workload] = []
    with working_directory(args) as work:
        bench = Bench(args, work, peers)
        try:
            log("byte-compiling the package and the peers' environment (python -m compileall)")
            bench.byte_compile()
            for key in args.only:
                log(f"{key} ...")
                results.append(RUNNERS[key](bench))
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
