"""How far more than one writer could take the unpack of many small files: an upper bound.

Usage::

    .venv/bin/python benchmarks/bench_writers.py ARCHIVE.tar.gz [--dirs /dev/shm,/var/tmp]
                                                 [--writers 1,2] [--runs 5]

``sc`` makes the files of a large tar archive in one writer process
(:mod:`sharedcache.loaders.writer`), whose time on a disk is mostly the file system's own work in
the kernel, serial in that process. This measures what splitting that work could give, with none of
the rules that make the real unpacker safe: the parent decompresses and parses the archive with the
project's reader (:class:`~sharedcache.loaders.tarstream.TarReader`), makes every directory itself,
and sends each regular file, framed, to one of ``--writers`` child processes (by a hash of its
name), which ``open``, ``write``, ``futimens``, ``fstat`` and ``close`` it; with ``0`` writers the
parent makes the directories and the frames and drops the frames: its own pace, which more writers
cannot beat. Links and other members are skipped. Each run unpacks into a fresh directory of each
of ``--dirs``, the writer counts interleaved; the median wall time and the CPU time (user + system,
all processes) are printed. Trees are removed at the end, not between runs (a removal on ext4 slows
the next allocations for minutes).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from sharedcache.loaders.codecs import decompressing, sniff
from sharedcache.loaders.streams import Prefetch
from sharedcache.loaders.tarstream import DIRECTORY, REGULAR, TarReader

_FRAME = struct.Struct("<IIqI")  # name bytes, mode, mtime in ns, data bytes
_BATCH = 256 << 10


def _child(commands: int, root: int) -> None:
    pending = bytearray()
    at = 0

    def have(size: int) -> bool:
        nonlocal pending, at
        if len(pending) - at >= size:
            return True
        del pending[:at]
        at = 0
        while len(pending) < size:
            data = os.read(commands, 1 << 20)
            if not data:
                return False
            pending += data
        return True

    while have(_FRAME.size):
        name_size, mode, mtime_ns, size = _FRAME.unpack_from(pending, at)
        have(_FRAME.size + name_size + size)
        start = at + _FRAME.size
        name = pending[start:start + name_size].decode("utf-8", "surrogateescape")
        data = memoryview(pending)[start + name_size:start + name_size + size]
        descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o755,
                             dir_fd=root)
        os.write(descriptor, data)
        data.release()
        os.utime(descriptor, ns=(mtime_ns, mtime_ns))
        os.fstat(descriptor)
        os.close(descriptor)
        at = start + name_size + size


def unpack(archive: Path, dest: Path, writers: int) -> None:
    """Unpack ``archive`` into the empty directory ``dest`` with ``writers`` child processes."""
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    pipes, children = [], []
    for _ in range(writers):
        commands, sending = os.pipe()
        fcntl.fcntl(sending, fcntl.F_SETPIPE_SZ, 1 << 20)  # as the writer process's pipe
        child = os.fork()
        if child == 0:
            os.close(sending)
            _child(commands, root)
            os._exit(0)
        os.close(commands)
        pipes.append(sending)
        children.append(child)
    batches: list[list[bytes]] = [[] for _ in range(writers)]
    sizes = [0] * writers

    def send(writer: int) -> None:
        data = b"".join(batches[writer])
        batches[writer].clear()
        sizes[writer] = 0
        while data:
            data = data[os.write(pipes[writer], data):]

    with open(archive, "rb") as raw:
        codec = sniff(raw.read(8))
        raw.seek(0)
        stream = raw if codec is None else Prefetch(decompressing(codec, raw, str(archive), None))
        reader = TarReader(stream, str(archive))
        made: set[str] = set()
        while (member := reader.next()) is not None:
            name = member.name.strip("/")
            directory = name if member.kind == DIRECTORY else name.rpartition("/")[0]
            if directory and directory not in made:
                os.makedirs(dest / directory, exist_ok=True)
                made.add(directory)
            if member.kind != REGULAR:
                continue
            pieces, left = [], member.size
            while left:
                piece = reader.take(left)
                pieces.append(bytes(piece))
                left -= len(piece)
            if not writers:  # the parent's own pace: the frames are made and dropped
                _FRAME.pack(len(name), member.mode, member.mtime_ns, member.size)
                continue
            writer = hash(name) % writers
            encoded = name.encode("utf-8", "surrogateescape")
            batches[writer].append(_FRAME.pack(len(encoded), member.mode, member.mtime_ns, member.size)
                                   + encoded + b"".join(pieces))
            sizes[writer] += _FRAME.size + len(encoded) + member.size
            if sizes[writer] >= _BATCH:
                send(writer)
    for writer, sending in enumerate(pipes):
        send(writer)
        os.close(sending)
    for child in children:
        _pid, status = os.waitpid(child, 0)
        if status:
            raise SystemExit(f"a writer failed (status {status})")
    os.close(root)


def _cpu() -> float:
    """The CPU time of the unpacks so far: each runs in a child, which waits for its writers."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--dirs", default="/dev/shm,/var/tmp")
    parser.add_argument("--writers", default="1,2")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    counts = [int(count) for count in args.writers.split(",")]
    for directory in args.dirs.split(","):
        scratch = Path(tempfile.mkdtemp(prefix="bench-writers-", dir=directory))
        try:
            walls: dict[int, list[float]] = {count: [] for count in counts}
            cpus: dict[int, list[float]] = {count: [] for count in counts}
            for run in range(args.runs):
                for count in counts[run % len(counts):] + counts[:run % len(counts)]:
                    dest = scratch / f"{count}-{run}"
                    dest.mkdir()
                    os.sync()
                    cpu, start = _cpu(), time.perf_counter()
                    child = os.fork()
                    if child == 0:  # in a process of its own, so that its CPU is counted alone
                        try:
                            unpack(args.archive, dest, count)
                        except BaseException as exc:
                            print(f"bench_writers: {exc}", file=sys.stderr)
                            os._exit(1)
                        os._exit(0)
                    if os.waitpid(child, 0)[1]:
                        raise SystemExit(f"the unpack into {dest} failed")
                    walls[count].append(time.perf_counter() - start)
                    cpus[count].append(_cpu() - cpu)
            for count in counts:
                print(f"{directory}: {count} writer{'s' if count > 1 else ''}: "
                      f"{statistics.median(walls[count]):.3f} s median "
                      f"({' '.join(f'{wall:.2f}' for wall in walls[count])}), "
                      f"CPU {statistics.median(cpus[count]):.2f} s")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
