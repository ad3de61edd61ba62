"""Profile of unpacking: the speed of each gzip and xz library, and the cost per tar member.

Usage::

    .venv/bin/python benchmarks/bench_unpack.py [--files 50000] [--runs 5] [--dirs /dev/shm,/var/tmp]
                                                [--stdlib-only] [--codecs gzip,xz] [--members-only]
    .venv/bin/python benchmarks/bench_unpack.py --phases /dev/shm [--files 50000 | --archive X.tar.gz] [--runs 5]

* **Decompression.** The Python standard library of this interpreter, packed by GNU tar and gzip -6,
  is inflated from memory by zlib, zlib-ng (``zlib_ng``) and ISA-L (``isal``), whichever are
  installed, the way :mod:`sharedcache.loaders.codecs` calls them (1 MiB in, at most 1 MiB out);
  then through ``decompressing()`` itself, and by ``gzip -dc``.  The same for xz -6 (one block, as
  ``xz`` makes it on one thread): Python's ``lzma`` and ``lzma-mt``, ``decompressing()``, ``xz -dc``.
  Median MB/s of the output.
* **Members.** ``--files`` files of 1-8 KB of text (a 300-line vocabulary: compressible) in
  directories of 500, packed by GNU tar and gzip, are unpacked cold, the previous tree removed
  (untimed) before each run, in every directory of ``--dirs``: by ``sc --use -d DIR file:X
  md5:HEX tar`` (the whole process: start, verify, unpack, seal, sync, commit), by the same with
  its writer process turned off (``sc --use, 1 process``), and by ``cat X | tee >(md5sum) | tar
  xzf -``.  Median wall time over ``--runs`` (contenders interleaved), its share per member, and
  the median CPU time (user + system, all processes).
* **Phases** (``--phases DIR``, instead of the above).  The same archive's unpack (or that of
  ``--archive``, a .tar.gz such as W10's in ``benchmarks/results/archives``) taken apart in
  this process: parsing the headers from memory, unpacking into DIR in one process and with the
  writer process (interleaved), and the commit's seal (its walk, or the unpacker's count where
  it takes that).  It uses only the interfaces that earlier versions had too
  (``PYTHONPATH=OTHER/src`` measures another checkout).

It writes its inputs in a temporary directory and removes them at the end.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.util
import io
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def gzip_modules() -> dict[str, Any]:
    import zlib

    found: dict[str, Any] = {"zlib": zlib}
    try:
        from zlib_ng import zlib_ng
        found["zlib-ng"] = zlib_ng
    except ImportError:
        print("zlib-ng: not installed (pip install zlib-ng)")
    try:
        from isal import isal_zlib
        found["ISA-L"] = isal_zlib
    except ImportError:
        print("ISA-L: not installed (pip install isal)")
    return found


def xz_modules() -> dict[str, Any]:
    import lzma

    found: dict[str, Any] = {"lzma (standard library)": lzma}
    try:
        import lzma_mt
        found[f"lzma-mt (liblzma {lzma_mt.get_xz_version()})"] = lzma_mt
    except ImportError:
        print("lzma-mt: not installed (pip install lzma-mt)")
    return found


def inflate_once(module: Any, data: bytes) -> int:
    decoder = module.decompressobj(16 + module.MAX_WBITS)
    produced = position = 0
    pending = b""
    while position < len(data) or pending:
        if not pending:
            pending = data[position:position + CHUNK]
            position += CHUNK
        produced += len(decoder.decompress(pending, CHUNK))
        pending = decoder.unconsumed_tail
    return produced


def unxz_once(module: Any, data: bytes) -> int:
    decoder = module.LZMADecompressor()
    produced = position = 0
    while not decoder.eof:
        pending = b""
        if decoder.needs_input:
            pending = data[position:position + CHUNK]
            position += CHUNK
        produced += len(decoder.decompress(pending, CHUNK))
    return produced


#: codec: (the compressor's command line, the libraries, one decompression from memory by a library,
#: the decompressor's command line)
CODECS: dict[str, tuple[str, Callable[[], dict[str, Any]], Callable[[Any, bytes], int], list[str]]] = {
    "gzip": ("gzip -6", gzip_modules, inflate_once, ["gzip", "-dc"]),
    "xz": ("xz -6", xz_modules, unxz_once, ["xz", "-dc"]),
}


def median_rate(run: Callable[[], int], runs: int) -> tuple[float, float]:
    times, produced = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        produced = run()
        times.append(time.perf_counter() - start)
    return produced / statistics.median(times) / 1e6, statistics.median(times)


def bench_inflate(scratch: Path, runs: int, codecs: list[str]) -> None:
    from sharedcache.loaders.codecs import decompressing

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for codec in codecs:
        compressor, modules, once, tool = CODECS[codec]
        archive = scratch / f"stdlib.tar.{codec.replace('gzip', 'gz')}"
        subprocess.run(f"tar -C {stdlib.parent} -cf - --exclude=__pycache__ --exclude=site-packages "
                       f"{stdlib.name} | {compressor} > {archive}", shell=True, check=True)
        data = archive.read_bytes()
        print(f"\n{codec}: {archive.name} of {stdlib} ({len(data) / 1e6:.1f} MB), median of {runs}")
        for name, module in modules().items():
            rate, seconds = median_rate(functools.partial(once, module, data), runs)
            print(f"  {name:34s} {rate:6.0f} MB/s  ({seconds:.3f} s)")

        def through_sharedcache(codec: str = codec, data: bytes = data) -> int:
            stream, produced = decompressing(codec, io.BytesIO(data), "bench", None), 0
            while piece := stream.read(CHUNK):
                produced += len(piece)
            return produced

        rate, seconds = median_rate(through_sharedcache, runs)
        print(f"  {'decompressing() (sc)':34s} {rate:6.0f} MB/s  ({seconds:.3f} s)")

        def by_tool(tool: list[str] = tool, archive: Path = archive) -> int:
            result = subprocess.run([*tool, str(archive)], capture_output=True, check=True)
            return len(result.stdout)

        rate, seconds = median_rate(by_tool, runs)
        print(f"  {' '.join(tool) + ' (process)':34s} {rate:6.0f} MB/s  ({seconds:.3f} s)")


def make_small_files(scratch: Path, count: int) -> Path:
    rng = random.Random(13)
    words = [f"{rng.getrandbits(24):x}" for _ in range(2000)]
    lines = [" ".join(rng.choice(words) for _ in range(8)) + "\n" for _ in range(300)]
    root = scratch / f"small{count}"
    for i in range(count):
        directory = root / f"d{i // 500:04d}"
        if i % 500 == 0:
            directory.mkdir(parents=True)
        size, text = rng.randint(1024, 8192), []
        while sum(map(len, text)) < size:
            text.append(rng.choice(lines))
        path = directory / f"f{i:07d}.txt"
        path.write_text("".join(text)[:size])
        if i % 7 == 0:
            path.chmod(0o755)
    archive = scratch / f"small{count}.tar.gz"
    subprocess.run(["tar", "-C", str(scratch), "-czf", str(archive), root.name], check=True)
    shutil.rmtree(root)
    return archive


def remove(path: Path) -> None:
    subprocess.run(["chmod", "-R", "u+w", str(path)], stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(path, ignore_errors=True)


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{command[:3]} failed: {result.stderr.strip()}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


# sc with its writer process turned off: every member unpacked by the process that parses.
ONE_PROCESS = ("import sys; from sharedcache.loaders import writer; writer.SERIAL_MEMBERS = 1 << 62; "
               "from sharedcache.cli import main; sys.argv[0] = 'sc'; main()")


def bench_phases(scratch: Path, count: int, runs: int, directory: str, given: Path | None) -> None:
    """The parts of an unpack, in this process: parsing the headers, unpacking (in one process and
    with the writer process, where this version has one), and the commit's seal walk."""
    import gzip

    from sharedcache.engine import fsutil
    from sharedcache.loaders import archives
    from sharedcache.loaders.protocol import Context
    from sharedcache.loaders.streams import FileStream, Prefetch
    from sharedcache.loaders.tarstream import TarReader

    archive = given or make_small_files(scratch, count)
    tar = gzip.decompress(archive.read_bytes())
    members = 0
    reader = TarReader(io.BytesIO(tar), "bench")
    while reader.next() is not None:
        members += 1

    def context(base: Path) -> Context:
        """What a population asks of the unpacker, in whatever form this version knows."""
        if hasattr(fsutil, "Seal"):  # the sealed modes, and the count where the commit takes it
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
            try:
                return Context(work=base, what="bench", seal=fsutil.Seal(measure=fsutil.counts_blocks_at_write(fd)))
            finally:
                os.close(fd)
        sealed = getattr(fsutil, "sealed_mode", None)  # the sealed modes of files
        options: dict[str, Any] = {"file_mode": sealed} if sealed else {}
        return Context(work=base, what="bench", **options)

    def commit_seal(base: Path, ctx: Context) -> None:
        """Seal and measure the tree as the commit does."""
        seal = getattr(ctx, "seal", None)
        if seal is None:
            fsutil.disk_usage(base / "data", seal=0o555)
            return
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        try:
            seal.apply("data", dir_fd=fd)
        finally:
            os.close(fd)

    def parse() -> None:
        reader = TarReader(io.BytesIO(tar), "bench")
        while (member := reader.next()) is not None:
            left = member.size if member.kind == b"0" else 0
            while left:
                left -= len(reader.take(left))

    def unpack(serial_members: int) -> tuple[float, float]:
        """Seconds to unpack, and to seal and measure the tree as a commit does."""
        base = Path(directory) / f"sc-bench-phases-{os.getpid()}"
        remove(base)
        (base / "data").mkdir(parents=True)
        writer = sys.modules.get("sharedcache.loaders.writer")
        if writer is not None:
            writer.SERIAL_MEMBERS = serial_members
        ctx = context(base)
        start = time.perf_counter()
        archives.extract_tar(Prefetch(FileStream(archive)), base / "data", ctx)
        unpacked = time.perf_counter()
        commit_seal(base, ctx)
        sealed_at = time.perf_counter()
        remove(base)
        return unpacked - start, sealed_at - unpacked

    print(f"\nphases: {archive.name}, {members} members, in {directory}; median of {runs}")
    parsed = []
    for _ in range(runs):
        start = time.perf_counter()
        parse()
        parsed.append(time.perf_counter() - start)
    print(f"  parse headers (from memory)    {statistics.median(parsed):6.3f} s  "
          f"{statistics.median(parsed) / members * 1e6:5.1f} us/member")
    kinds = {"unpack, 1 process": 1 << 62}
    if importlib.util.find_spec("sharedcache.loaders.writer") is not None:
        importlib.import_module("sharedcache.loaders.writer")
        kinds["unpack, writer process"] = 0
    measured: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for _ in range(runs):  # interleaved
        for kind, serial_members in kinds.items():
            measured[kind].append(unpack(serial_members))
    for kind, results in measured.items():
        times = [unpacked for unpacked, _ in results]
        print(f"  {kind:30s} {statistics.median(times):6.3f} s  {statistics.median(times) / members * 1e6:5.1f} "
              f"us/member  (runs {' '.join(f'{t:.2f}' for t in times)})")
    seals = [seal for results in measured.values() for _, seal in results]
    print(f"  seal at commit (walk or count) {statistics.median(seals):6.3f} s  "
          f"{statistics.median(seals) / members * 1e6:5.1f} us/member")


def bench_members(scratch: Path, count: int, runs: int, directories: list[str]) -> None:
    archive = make_small_files(scratch, count)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    listed = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, check=True).stdout
    members = listed.count(b"\n")
    print(f"\nmembers: {archive.name}, {members} members, {archive.stat().st_size / 1e6:.1f} MB; "
          f"median of {runs}, load average {os.getloadavg()[0]:.2f} at the start")
    use = ["--use", "-q", "-n", "w", "--pid", str(os.getpid()), f"file:{archive}", f"md5:{md5}", "tar", "-d"]
    contenders = {
        "sc --use": lambda base: [sys.executable, "-m", "sharedcache", *use, str(base)],
        "sc --use, 1 process": lambda base: [sys.executable, "-c", ONE_PROCESS, *use, str(base)],
        "GNU tar pipeline": lambda base: ["bash", "-c", (f"cat {archive} | tee >(md5sum >/dev/null) | "
                                                         f"tar xzf - -C {base}")],
    }
    for directory in directories:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for _ in range(runs):
            for name, command in contenders.items():
                base = Path(directory) / f"sc-bench-unpack-{os.getpid()}"
                remove(base)
                base.mkdir()
                subprocess.run(["sync"], check=True)
                results[name].append(timed(command(base)))
                remove(base)
        fstype = subprocess.run(["df", "--output=fstype", directory], capture_output=True, text=True,
                                check=True).stdout.split()[-1]
        for name, measured in results.items():
            wall = statistics.median(w for w, _ in measured)
            cpu = statistics.median(c for _, c in measured)
            print(f"  {directory} ({fstype}) {name:17s} {wall:6.3f} s  {wall / members * 1e6:6.1f} us/member  "
                  f"cpu {cpu:6.3f} s  runs {' '.join(f'{w:.2f}' for w, _ in measured)}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dirs", default="/dev/shm,/var/tmp")
    parser.add_argument("--stdlib-only", action="store_true", help="only the decompression part")
    parser.add_argument("--codecs", default="gzip,xz", help="the codecs of the decompression part")
    parser.add_argument("--members-only", action="store_true", help="only the members part")
    parser.add_argument("--phases", metavar="DIR",
                        help="instead: the parts of an unpack in process (parse, unpack, seal), in DIR")
    parser.add_argument("--archive", type=Path, help="with --phases: this .tar.gz instead of --files small files")
    args = parser.parse_args()
    from sharedcache.loaders.codecs import backends

    print("sharedcache codecs:", "; ".join(f"{codec}: {library}" for codec, library in backends().items()))
    with tempfile.TemporaryDirectory(prefix="sc-bench-unpack-") as scratch:
        if args.phases:
            bench_phases(Path(scratch), args.files, args.runs, args.phases, args.archive)
            return
        if not args.members_only:
            bench_inflate(Path(scratch), args.runs, args.codecs.split(","))
        if not args.stdlib_only:
            bench_members(Path(scratch), args.files, args.runs, args.dirs.split(","))


if __name__ == "__main__":
    main()
