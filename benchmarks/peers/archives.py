"""The archives of W9, W10 and W12, made deterministically and kept between runs.

* The software tree (W9): the standard library of the interpreter running the benchmark
  (``sysconfig``'s ``stdlib`` directory: its modules, data and tests, without ``site-packages``,
  ``__pycache__`` and the ``config-*`` directory, whose static libpython is no source), regular
  files and directories only, as .tar.gz (gzip -6), .tar.xz (xz -6, one block) and .tar.zst
  (zstd -3, the zstd command's default level).
* Many small files (W10): ``members`` files of 1,000 to 8,192 bytes, 1,000 to a directory, made of
  lines drawn from a pool of 64 random lines (text that compresses as source code does), as
  .tar.gz (gzip -6); and the same files as a zip (W12: deflate at level 6, as Info-ZIP's default,
  with an entry for each directory).

Making them takes a while (the .tar.xz about a minute), so each is kept in
``benchmarks/results/archives`` with a JSON file of its facts, and made again only when missing.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import platform
import random
import sysconfig
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Archive

#: the compressions of W9, as the archives' name suffixes after ".tar."
COMPRESSIONS = ("gz", "xz", "zst")
MTIME = 1_700_000_000
BLOCK = 4096  # the file system block: what a file of n bytes allocates, for the disk estimate


@contextmanager
def _compressed(path: Path, compression: str) -> Iterator[io.BufferedIOBase]:
    with open(path, "wb") as raw:
        if compression == "gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                yield gz
        elif compression == "xz":
            with lzma.LZMAFile(raw, "wb", preset=6) as xz:
                yield xz
        elif compression == "zst":
            import zstandard  # a dependency of the project, so in its environment

            # a writable stream of bytes, though not declared as a subclass of one
            with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as zst:
                yield zst  # type: ignore[misc]
        else:
            raise ValueError(f"unknown compression {compression!r}")


def _kept(directory: Path, filename: str, make: Callable[[Path], tuple[int, int, int]]) -> Archive:
    """The archive ``directory/filename``, made by ``make(path)`` -> (files, content bytes,
    unpacked disk bytes) unless it and its facts are there from an earlier run."""
    path = directory / filename
    facts = directory / (filename + ".json")
    if path.exists() and facts.exists():
        known = json.loads(facts.read_text())
        if known.get("size") == path.stat().st_size:
            return Archive(path, known["size"], known["md5"], known["files"],
                           known["content_bytes"], known["unpacked_disk"])
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (filename + ".partial")
    files, content, disk = make(partial)
    partial.rename(path)
    archive = Archive(path, path.stat().st_size, harness.file_md5(path), files, content, disk)
    facts.write_text(json.dumps({k: v for k, v in asdict(archive).items() if k != "path"}) + "\n")
    return archive


def _allocated(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def stdlib_directory() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def software_tree(directory: Path, compression: str) -> Archive:
    """The standard library of this interpreter as ``stdlib-<version>.tar.<compression>``."""
    source = stdlib_directory()
    top = f"python{platform.python_version()}"

    def make(path: Path) -> tuple[int, int, int]:
        files = content = disk = 0
        with _compressed(path, compression) as out, \
             tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(source):
                dirnames[:] = sorted(d for d in dirnames if not _left_out(d)
                                     and not os.path.islink(os.path.join(dirpath, d)))
                relative = os.path.relpath(dirpath, source)
                arcdir = top if relative == "." else f"{top}/{relative}"
                tar.add(dirpath, arcname=arcdir, recursive=False, filter=_normalise)
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    if not os.path.isfile(full) or os.path.islink(full):
                        continue
                    info = tar.gettarinfo(full, arcname=f"{arcdir}/{name}")
                    with open(full, "rb") as f:
                        tar.addfile(_normalise(info), f)
                    files += 1
                    content += info.size
                    disk += _allocated(info.size)
        return files, content, disk

    return _kept(directory, f"stdlib-{platform.python_version()}.tar.{compression}", make)


def _left_out(directory: str) -> bool:
    return directory in ("site-packages", "__pycache__") or directory.startswith("config-")


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else info.mode & 0o755
    return info


def _small_files(members: int) -> Iterator[tuple[str, bytes | None]]:
    """The entries of the small-files tree, in order: (name, content), content None for a
    directory."""
    rng = random.Random(f"small-files-{members}")
    pool = [rng.randbytes(32).hex().encode() + b"\n" for _ in range(64)]
    for i in range(members):
        if i % 1000 == 0:
            yield f"small/{i // 1000:04d}", None
        size = rng.randrange(1000, 8193)
        yield f"small/{i // 1000:04d}/file-{i:07d}.txt", b"".join(rng.choices(pool, k=size // 65 + 1))[:size]


def small_files(directory: Path, members: int) -> Archive:
    """``members`` files of 1,000-8,192 bytes as ``small-<members>.tar.gz``."""

    def make(path: Path) -> tuple[int, int, int]:
        content = disk = 0
        with _compressed(path, "gz") as out, \
             tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in _small_files(members):
                if data is None:
                    tar.addfile(_entry(name, tarfile.DIRTYPE, 0o755, 0))
                    continue
                tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
                content += len(data)
                disk += _allocated(len(data))
        return members, content, disk

    return _kept(directory, f"small-{members}.tar.gz", make)


def small_files_zip(directory: Path, members: int) -> Archive:
    """The files of :func:`small_files` as ``small-<members>.zip``."""

    def make(path: Path) -> tuple[int, int, int]:
        content = disk = 0
        when = time.gmtime(MTIME)[:6]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            for name, data in _small_files(members):
                info = zipfile.ZipInfo(name + "/" if data is None else name, when)
                info.create_system, info.compress_type = 3, zipfile.ZIP_DEFLATED
                info.external_attr = (0o40755 if data is None else 0o100644) << 16
                archive.writestr(info, data or b"")
                if data is not None:
                    content += len(data)
                    disk += _allocated(len(data))
        return members, content, disk

    return _kept(directory, f"small-{members}.zip", make)


def _entry(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    return info

