"""The state of one run of the benchmark and the measurements the workloads share: archives and
origins made on first use, fresh directories on each file system measured, one cold fetch, one
instrumented fetch (peak RSS and disk), a race of processes, and the timing of a warm command."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import MB, Archive, OriginProcess, Run, Traffic

from . import archives
from .contenders import Contender, Target, contenders
from .environments import PeerEnv
from .report import Row, log, median

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
PEERS_VENV = RESULTS / "peers-venv"
KEPT_ARCHIVES = RESULTS / "archives"
PYTHON = Path(sys.executable)
SC = PYTHON.parent / "sc"

# ext4 without a journal (this benchmark's usual disk) will not reuse an inode freed less than
# 60 s ago, or 360 s while its inode table block is dirty (as new files beside it make it), and
# skips such inodes one by one at every allocation: GNU tar unpacked W10 in 1.27 s into a fresh
# directory, and in 11.9 s (of which 11.9 s system time) just after the previous run's tree was
# removed.  A run must not pay for its predecessor's removal.
RECENTLY_DELETED_SECONDS = 361
#: Touched in ``--tmp`` when a run removes its working directory there, so that the next run,
#: started within ``RECENTLY_DELETED_SECONDS``, waits before it measures on the disk.
REMOVAL_STAMP = ".sc-bench-peers-removed"


def stamp_removal(tmp: Path) -> None:
    """Record in ``tmp`` (a shared directory: ``/tmp``) that a run removed its trees there now.
    Never through a link or into a FIFO another user put in the stamp's place; a stamp that
    cannot be made is no run's loss but the next one's wait."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with contextlib.suppress(OSError):
        descriptor = os.open(tmp / REMOVAL_STAMP, flags, 0o644)
        try:
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                os.utime(descriptor)
        finally:
            os.close(descriptor)


def _last_removal(tmp: Path) -> float | None:
    """When a run of this user last removed its trees in ``tmp`` (:func:`stamp_removal`); None if
    unknown.  A stamp another user made is not taken: it could only hold this run back."""
    try:
        status = os.stat(tmp / REMOVAL_STAMP, follow_symlinks=False)
    except OSError:
        return None
    return status.st_mtime if stat.S_ISREG(status.st_mode) and status.st_uid == os.geteuid() else None


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


@dataclass
class Race:
    seconds: float        # first start to last end
    traffic: Traffic
    failures: int         # processes that did not exit 0
    problems: list[str]


class Bench:
    """The state of one benchmark run: options, working directories, archives, origins."""

    def __init__(self, args: argparse.Namespace, work: Path, peers: PeerEnv) -> None:
        self.args, self.work, self.peers = args, work, peers
        self.data = work / "data"
        self.data.mkdir()
        self.env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        self.env.pop("SC_DIRECTORIES", None)
        self.contenders = contenders(work / "scripts", PYTHON, peers, args.baseline)
        #: where fresh directories go: the disk (under ``--tmp``) and, for W9-W11, the tmpfs
        self.roots = {"disk": work}
        if "tmpfs" in args.on:
            self.roots["tmpfs"] = Path(tempfile.mkdtemp(prefix="sc-bench-peers-", dir=args.tmpfs))
        #: the file systems W9-W11 measure on (``--on``)
        self.filesystems: list[str] = args.on
        self._archives: dict[str, Archive] = {}
        self._digests: dict[tuple[Path, str], str] = {}
        self._origins: dict[tuple[Path, float | None], OriginProcess] = {}
        self._instrumented: dict[str, Attempt] = {}
        self._slowed: bool | None = None  # see _slowed_by_removals
        self._dirs = 0
        self._packages = [(PYTHON, _package_directory(PYTHON))]
        if args.baseline is not None and (args.baseline / ".venv/bin/python").exists():
            old = args.baseline / ".venv/bin/python"
            self._packages.append((old, _package_directory(old)))

    # resources, made on first use

    def archive(self, key: str) -> Archive:
        """The archive of a workload: "w1", "w2", "w8", "big" (generated for this run),
        "w9-gz", "w9-xz", "w9-zst", "w10-<members>", "w12-<members>" (kept between runs, see
        :mod:`.archives`)."""
        if key not in self._archives:
            if key.startswith("w9-"):
                log(f"the standard library as .tar.{key[3:]} (made once, then kept)")
                self._archives[key] = archives.software_tree(KEPT_ARCHIVES, key[3:])
            elif key.startswith("w10-"):
                log(f"{int(key[4:]):,} small files as .tar.gz (made once, then kept)")
                self._archives[key] = archives.small_files(KEPT_ARCHIVES, int(key[4:]))
            elif key.startswith("w12-"):
                log(f"{int(key[4:]):,} small files as .zip (made once, then kept)")
                self._archives[key] = archives.small_files_zip(KEPT_ARCHIVES, int(key[4:]))
            else:
                megabytes, small_files = {
                    "w1": (self.args.size_mb, self.args.small_files),
                    "w2": (self.args.contention_mb, self.args.small_files),
                    "w8": (self.args.contention_mb, 0),  # no small files: the link is measured
                    "big": (self.args.big_mb, self.args.small_files),
                }[key]
                log(f"generating a {megabytes:g} MB tar.gz with {small_files} small files ({key})")
                self._archives[key] = harness.make_archive(
                    self.data, f"{key}-{megabytes:g}mb", int(megabytes * MB),
                    small_files=small_files)
        return self._archives[key]

    def digest(self, archive: Archive, algorithm: str) -> str:
        """The hex digest of ``archive`` with ``algorithm`` (a hashlib name)."""
        if algorithm == "md5":
            return archive.md5
        if (archive.path, algorithm) not in self._digests:
            with open(archive.path, "rb") as f:
                self._digests[archive.path, algorithm] = hashlib.file_digest(f, algorithm).hexdigest()
        return self._digests[archive.path, algorithm]

    def origin(self, rate: float | None = None, directory: Path | None = None) -> OriginProcess:
        """The origin serving ``directory`` (default: the archives generated for this run), at
        full speed or at ``rate`` bytes/s per connection."""
        directory = directory or self.data
        if (directory, rate) not in self._origins:
            self._origins[directory, rate] = OriginProcess(directory, rate=rate)
        return self._origins[directory, rate]

    def byte_compile(self, peers: bool = True) -> list[str]:
        """``python -m compileall`` the package, the baseline's and the peers' environment: this
        environment sets PYTHONDONTWRITEBYTECODE=1, and an ordinary install has its bytecode.
        Returns the files that needed compiling (sources changed since the last call, in a tree
        being edited)."""
        compiled = []
        jobs = list(self._packages)
        if peers:
            jobs += [(PYTHON, d) for d in PEERS_VENV.glob("lib/python*/site-packages")]
        for python, directory in jobs:
            done = harness.run([str(python), "-m", "compileall", "-j", "0", str(directory)],
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
        for name, root in self.roots.items():
            if name != "disk":  # the working directory, removed by its owner
                remove(root)

    def fresh_dir(self, tag: str, filesystem: str = "disk") -> Path:
        self._dirs += 1
        path = self.roots[filesystem] / "runs" / f"{self._dirs:04d}-{tag}"
        path.mkdir(parents=True)
        return path

    def usable(self, keys: Sequence[str] | None = None,
               where: Callable[[Contender], bool] = lambda c: c.kind not in ("baseline", "flushed", "local")
               ) -> list[Contender]:
        """The contenders named by ``keys`` (default: all) that ``where`` selects (default: all
        but the baseline's, the flushed pipeline and those reading the archive's file, which only
        some workloads measure)."""
        return [c for c in self.contenders if (keys is None or c.key in keys) and where(c)]

    def target(self, archive: Archive, dest: Path, *, rate: float | None = None,
               extra: tuple[str, ...] = (), algorithm: str = "md5") -> Target:
        """The request for ``archive`` into ``dest``; ``algorithm`` "" asks for no checksum."""
        url = self.origin(rate, archive.path.parent).url(archive.name)
        digest = f"{algorithm}:{self.digest(archive, algorithm)}" if algorithm else ""
        return Target(url, digest, archive.name.split(".tar")[0], archive.name, dest, extra, archive.path)

    # measurements

    def fetch(self, c: Contender, archive: Archive, dest: Path, *, rate: float | None = None,
              extra: tuple[str, ...] = (), rss: bool = False, algorithm: str = "md5") -> Attempt:
        """Run ``c`` once for ``archive`` into ``dest`` and check the tree it reports."""
        target = self.target(archive, dest, rate=rate, extra=extra, algorithm=algorithm)
        os.sync()  # start without the previous run's dirty pages (untimed)
        run = harness.run(c.argv(target), timeout=self.fetch_timeout(archive, rate), env=self.env,
                          rss=rss)
        return Attempt(c.key, run, check_tree(run, archive))

    def cold(self, c: Contender, archive: Archive, tag: str, *, rate: float | None = None,
             extra: tuple[str, ...] = (), rss: bool = False, algorithm: str = "md5",
             filesystem: str = "disk", keep: bool = False) -> Attempt:
        """A cold fetch into a fresh directory on ``filesystem``, removed afterwards unless
        ``keep`` (then it goes with the benchmark's directories, at the end)."""
        dest = self.fresh_dir(f"{tag}-{c.key}", filesystem)
        try:
            return self.fetch(c, archive, dest, rate=rate, extra=extra, rss=rss,
                              algorithm=algorithm)
        finally:
            if not keep:
                remove(dest)

    def room_for(self, archive: Archive, copies: int, filesystem: str) -> bool:
        """Whether ``copies`` unpacked copies of ``archive`` fit in half of what is free."""
        free = os.statvfs(self.roots[filesystem])
        return (archive.content_bytes * copies < free.f_bavail * free.f_frsize // 2
                and (free.f_files == 0 or archive.files * copies < free.f_favail // 2))

    def wait_out_last_removal(self, filesystem: str) -> None:
        """Before the first measurement on the disk: if it is ext4 without a journal and an earlier
        run removed its trees there less than ``RECENTLY_DELETED_SECONDS`` ago, wait for the rest
        of that time (else this run's first rounds would measure the scan of the freed inodes)."""
        removed = _last_removal(self.args.tmp) if filesystem == "disk" else None
        if removed is None:
            return
        # Once waited out, or found past, it stays so: a run stamps its removal only as it ends.
        waited = time.time() - removed
        if waited < RECENTLY_DELETED_SECONDS and self._slowed_by_removals():
            log(f"waiting {RECENTLY_DELETED_SECONDS - waited:.0f} s: the last run removed its trees from "
                f"this disk {waited:.0f} s ago, and ext4 without a journal slows every allocation "
                "down for minutes after (\"Freed inodes on the disk\" in docs/performance.md)")
            time.sleep(RECENTLY_DELETED_SECONDS - waited)

    def settle(self, filesystem: str) -> None:
        """After a removal on the disk, wait until the inodes it freed slow no allocation down
        (``RECENTLY_DELETED_SECONDS``), where they would."""
        if filesystem == "disk" and self._slowed_by_removals():
            os.sync()
            time.sleep(RECENTLY_DELETED_SECONDS)

    def _slowed_by_removals(self) -> bool:
        """Whether the disk is ext4 without a journal: the one file system whose allocations
        skip, one by one, the inodes freed in the last minutes (``RECENTLY_DELETED_SECONDS``)."""
        if self._slowed is None:
            self._slowed = harness.file_system(self.work).endswith("without a journal")
        return self._slowed

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
        return 60 + 3 * archive.size / (rate or 20 * MB) + archive.files / 1000

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


def _package_directory(python: Path) -> Path:
    """Where ``python`` imports the package from."""
    code = "import os, sharedcache; print(os.path.dirname(sharedcache.__file__))"
    return Path(harness.run([str(python), "-c", code], timeout=60).last_line())


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
