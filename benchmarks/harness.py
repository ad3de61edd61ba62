"""Pieces shared by the benchmarks: a loopback origin process, timed child processes, disk
sampling, deterministic test archives, machine facts and plain-text tables.

Standard library only.  Every wait has a timeout; every process started here runs in its own
session and is stopped by its own pid (at the latest by :func:`stop_all`, registered with
:mod:`atexit`).
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import hashlib
import json
import os
import platform
import random
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
ORIGIN_SCRIPT = REPO / "tests" / "origin.py"
MB = 1_000_000

_live: dict[int, subprocess.Popen] = {}  # pid -> process, for the atexit cleanup


def stop_all() -> None:
    """Kill what is still running of the processes started here (each by its pid's group)."""
    for pid, proc in list(_live.items()):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _live.pop(pid, None)


atexit.register(stop_all)


# -- child processes ---------------------------------------------------------------------------


@dataclass
class Run:
    """One finished child process."""

    argv: list[str]
    seconds: float        # from just before the fork to the moment it was reaped
    returncode: int       # negative: killed by that signal
    maxrss_kb: int        # peak resident set (KiB), see Child
    stdout: str
    stderr: str
    started: float        # time.perf_counter() values
    ended: float
    timed_out: bool = False
    cpu_seconds: float = 0.0  # user and system, of it and the descendants it waited for

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def failure(self) -> str:
        """One line saying why the run failed."""
        if self.timed_out:
            return "timed out"
        last = (self.stderr.strip() or self.stdout.strip()).splitlines()[-1:] or [""]
        return f"exit {self.returncode}: {last[0][:160]}"

    def last_line(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""


TIME = "/usr/bin/time"


class Child:
    """A child process reaped by a thread with ``wait4``, for an exact end time.

    (``Popen.wait(timeout)`` polls with sleeps of up to 50 ms, too coarse to time a command.)

    ``rss=True`` measures the peak RSS of the command and its descendants with ``/usr/bin/time
    -f %M``, when it is installed.  Else it is the ``wait4`` rusage, whose floor is the RSS of
    this (larger) process: the kernel carries the high-water mark of the memory a child was
    forked with across ``exec``.
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, rss: bool = False) -> None:
        self.argv = [str(a) for a in argv]
        # The files live as long as the child: wait() reads and closes them.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self._rss_file = None
        launch = self.argv
        if rss and os.access(TIME, os.X_OK):
            self._rss_file = tempfile.NamedTemporaryFile(prefix="rss-", delete=False)  # noqa: SIM115
            launch = [TIME, "-f", "%M", "-o", self._rss_file.name, *self.argv]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(launch, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, env=env, cwd=cwd, start_new_session=True)
        _live[self.proc.pid] = self.proc
        self.ended = 0.0
        self._status = 0
        self._maxrss = 0
        self._cpu = 0.0
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.ended = time.perf_counter()
        self._status = os.waitstatus_to_exitcode(status)
        self._maxrss = usage.ru_maxrss
        self._cpu = usage.ru_utime + usage.ru_stime
        self.proc.returncode = self._status  # reaped here: Popen must not wait for it again

    def wait(self, timeout: float) -> Run:
        """Wait at most ``timeout`` seconds; a child still running then is killed."""
        self._reaper.join(timeout)
        timed_out = self._reaper.is_alive()
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._reaper.join(10)
        _live.pop(self.proc.pid, None)
        return Run(self.argv, self.ended - self.started, self._status, self._peak_rss(),
                   _read(self._out), _read(self._err), self.started, self.ended, timed_out, self._cpu)

    def _peak_rss(self) -> int:
        if self._rss_file is None:
            return self._maxrss
        self._rss_file.close()
        path = Path(self._rss_file.name)
        lines = path.read_text().split() if path.exists() else []
        path.unlink(missing_ok=True)
        return int(lines[-1]) if lines and lines[-1].isdigit() else self._maxrss


def _read(f) -> str:  # type: ignore[no-untyped-def]
    f.seek(0)
    text = f.read().decode(errors="replace")
    f.close()
    return text


def run(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None, rss: bool = False) -> Run:
    """Run ``argv`` to completion (killed after ``timeout`` seconds)."""
    return Child(argv, env=env, cwd=cwd, rss=rss).wait(timeout)


def run_all(argvs: Sequence[Sequence[str]], *, timeout: float,
            env: dict[str, str] | None = None) -> list[Run]:
    """Start every command at once and wait for all of them (``timeout`` for the whole set)."""
    children = [Child(argv, env=env) for argv in argvs]
    deadline = time.monotonic() + timeout
    return [child.wait(max(0.0, deadline - time.monotonic())) for child in children]


# -- the origin --------------------------------------------------------------------------------


class OriginProcess:
    """``tests/origin.py`` serving a directory on 127.0.0.1, as a child process."""

    def __init__(self, directory: Path, *, rate: float | None = None,
                 python: str = sys.executable, start_timeout: float = 15.0) -> None:
        argv = [python, str(ORIGIN_SCRIPT), "--dir", str(directory), "--port", "0"]
        if rate is not None:
            argv += ["--rate", str(rate)]
        self.rate = rate
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _live[self.proc.pid] = self.proc
        try:
            self.port = int(self._first_line(start_timeout))
        except BaseException:
            self.stop()
            raise

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"the origin did not print its port within {timeout} s")
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"the origin printed {line!r} instead of its port")
        return line

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def stats(self, path: str) -> dict:
        """The origin's counters of ``path`` (gets, bytes_served, statuses...)."""
        with urllib.request.urlopen(self.url("/__origin__/stats"), timeout=10) as answer:
            every = json.loads(answer.read())
        return every.get("/" + path.lstrip("/"), {"gets": 0, "bytes_served": 0, "statuses": []})

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        _live.pop(self.proc.pid, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Traffic:
    """What an origin served for one path between two looks at its counters."""

    gets: int
    requests: int      # GET and HEAD
    bytes_served: int

    @staticmethod
    def between(before: dict, after: dict) -> Traffic:
        return Traffic(after["gets"] - before["gets"],
                       len(after["statuses"]) - len(before["statuses"]),
                       after["bytes_served"] - before["bytes_served"])


# -- disk usage --------------------------------------------------------------------------------


def tree_bytes(root: str | os.PathLike[str]) -> int:
    """Bytes allocated (st_blocks) to everything under ``root``, not following symlinks.

    Tolerant of a tree that changes while it is walked: each inode counts once, so a file
    renamed from a part already walked into one not walked yet (a commit, a move to a trash) is
    not counted twice, nor is a hard link."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [os.fspath(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            total += st.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


class DiskSampler:
    """Samples :func:`tree_bytes` of a directory every ``interval`` seconds in a thread."""

    def __init__(self, root: Path, interval: float = 0.05) -> None:
        self.root, self.interval = root, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        self.peak = max(self.peak, tree_bytes(self.root))
        self.samples += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._sample()  # the final state counts too


# -- deterministic archives --------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """A generated tar.gz and what unpacking it must give."""

    path: Path
    size: int            # bytes of the .tar.gz
    md5: str
    files: int           # regular files in it
    content_bytes: int   # their total length
    unpacked_disk: int   # st_blocks bytes of the tree it was made from

    @property
    def name(self) -> str:
        return self.path.name


def make_archive(directory: Path, stem: str, total_bytes: int, *, small_files: int = 2000,
                 big_files: int = 4, seed: int = 0) -> Archive:
    """Write ``<directory>/<stem>.tar.gz``: ``big_files`` files of random bytes plus
    ``small_files`` files of 1-4 KB of hex text, ``total_bytes`` in all, under ``<stem>/``.

    The same arguments give the same bytes (fixed seed, times, owners and gzip header)."""
    rng = random.Random(f"{stem}-{seed}")
    tree = directory / f"{stem}.tree"
    top = tree / stem
    sizes = [rng.randrange(1000, 4096) for _ in range(small_files)]
    big_total = max(0, total_bytes - sum(sizes))
    for i in range(small_files):
        path = top / "small" / f"{i // 100:02d}" / f"file-{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes((sizes[i] + 1) // 2).hex().encode()[: sizes[i]])
    (top / "big").mkdir(parents=True, exist_ok=True)
    for i in range(big_files):
        share = big_total // big_files + (big_total % big_files if i == big_files - 1 else 0)
        with open(top / "big" / f"part-{i}.bin", "wb") as f:
            f.writelines(rng.randbytes(min(4 * 2**20, share - start))
                         for start in range(0, share, 4 * 2**20))
    unpacked = tree_bytes(top)
    files = small_files + big_files
    content = sum(sizes) + big_total
    target = directory / f"{stem}.tar.gz"
    with open(target, "wb") as raw, \
         gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
         tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _sorted_tree(top):
            tar.add(path, arcname=str(path.relative_to(tree)), recursive=False, filter=_normalise)
    shutil.rmtree(tree)
    return Archive(target, target.stat().st_size, file_md5(target), files, content, unpacked)


def _sorted_tree(top: Path) -> Iterable[Path]:
    yield top
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames):
            yield Path(dirpath) / name
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 1_700_000_000
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_contents(root: str | os.PathLike[str]) -> tuple[int, int]:
    """(regular files, their total length) under ``root`` (the top may be a symlink)."""
    files = size = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
    return files, size


# -- the machine -------------------------------------------------------------------------------


def _output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (done.stdout or done.stderr).strip()


def file_system(path: Path) -> str:
    """The type of the file system holding ``path``, and for ext4 whether it lacks a journal
    (then an inode freed in the last minutes slows every allocation down: see "Freed inodes on
    the disk" in docs/performance.md)."""
    fstype = _output(["df", "--output=fstype", str(path)]).split()[-1]
    if fstype == "ext4":
        device = os.path.basename(_output(["df", "--output=source", str(path)]).split()[-1])
        with contextlib.suppress(OSError):
            if Path(f"/sys/fs/ext4/{device}/journal_task").read_text().strip() == "<none>":
                fstype += " without a journal"
    return fstype


def machine_info(tmp: Path) -> dict[str, str]:
    """The facts a reader needs to compare numbers between machines."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    free = _output(["free", "-h"])
    memory = next((line.split()[1] for line in free.splitlines() if line.startswith("Mem:")), "?")
    return {
        "nproc": _output(["nproc"]),
        "cpu": cpu,
        "memory": memory,
        "free -h": free,
        "python --version": platform.python_version(),
        "uname -r": platform.release(),
        "file system of " + str(tmp): file_system(tmp),
        "curl": " ".join(_output(["curl", "--version"]).split()[:2]) if shutil.which("curl")
                else "absent",
        "hyperfine": _output(["hyperfine", "--version"]) if shutil.which("hyperfine") else "absent",
        "git": _output(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine shows here."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


class CpuClock:
    """The share of the machine's CPU time that its host gave to others while this clock ran
    (``steal`` in ``/proc/stat``): a virtual machine on a busy host loses it in spells, and a
    run in one of them is slower in everything, its CPU times included.  None where the kernel
    does not count it."""

    def __init__(self) -> None:
        self._start = self._ticks()

    @staticmethod
    def _ticks() -> tuple[int, int] | None:
        """The ticks stolen and in all, over every CPU, since boot."""
        try:
            fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 8:
            return None
        # user nice system idle iowait irq softirq steal: guest time is counted in user already
        return fields[7], sum(fields[:8])

    def stolen(self) -> float | None:
        end = self._ticks()
        if self._start is None or end is None or end[1] == self._start[1]:
            return None
        return (end[0] - self._start[0]) / (end[1] - self._start[1])


# -- tables ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, left-aligned, columns as wide as their widest cell."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
