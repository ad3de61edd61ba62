"""Safe extraction of tar and zip archives into a repository directory.

Members are written one by one by :class:`SafeTree`, never by ``extractall``.  Refused (the whole
population fails with :class:`UnsafeArchiveError`): absolute names, ``..`` components, links whose
target lies outside the directory, members written through a symlink extracted earlier, device
files and FIFOs.  Set-user-ID, set-group-ID and sticky bits, and write permission for group and
others, are dropped; ownership is not restored.  Every byte written is charged to the size limit.

Tar archives are read in one pass from the stream (any compression is recognised by its magic
bytes); zip archives need random access, so they are spooled to the work directory first.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from .compression import decompressing, sniff
from .errors import CorruptDataError, UnsafeArchiveError
from .recipe import CHUNK, Context, Stream

if TYPE_CHECKING:
    import tarfile
    import zipfile

_FILE_MODE_MASK = 0o755  # no setuid/setgid/sticky, no write for group and others
_T = TypeVar("_T")


def _set_mtime(target: int | str, mtime: float) -> None:
    # A time the system cannot represent (a hostile pax header can say 1e30) is not worth failing for.
    with contextlib.suppress(OverflowError, ValueError):
        os.utime(target, (mtime, mtime))


class SafeTree:
    """Creates files, directories and links under ``dest`` without ever leaving it."""

    def __init__(self, dest: Path, ctx: Context) -> None:
        self._root = os.path.realpath(dest)
        self._ctx = ctx
        self._dirs: set[tuple[str, ...]] = {()}  # known to be real directories (not symlinks)
        self._symlinks: list[tuple[str, ...]] = []
        self._dir_times: dict[tuple[str, ...], tuple[int, float]] = {}

    def refuse(self, name: str, why: str) -> UnsafeArchiveError:
        """The error for member ``name``, refused because of ``why``."""
        return UnsafeArchiveError(f"unsafe archive {self._ctx.what}: member '{name}' {why}")

    def parts(self, name: str) -> tuple[str, ...]:
        """The components of member ``name`` below the root; refuses names that leave it."""
        if name.startswith("/"):
            raise self.refuse(name, "has an absolute path")
        if "\x00" in name:
            raise self.refuse(name, "has a NUL byte in its name")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            raise self.refuse(name, "has a '..' component")
        return parts

    def _path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self._root, *parts)

    def _make_dirs(self, parts: tuple[str, ...], name: str) -> None:
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            if prefix in self._dirs:
                continue
            try:
                os.mkdir(self._path(prefix), 0o755)
            except FileExistsError:
                mode = os.lstat(self._path(prefix)).st_mode
                there = "/".join(prefix)
                if stat.S_ISLNK(mode):
                    raise self.refuse(name, f"would be written through the symlink '{there}'") from None
                if not stat.S_ISDIR(mode):
                    raise self.refuse(name, f"would be written below the file '{there}'") from None
            self._dirs.add(prefix)

    def _place(self, parts: tuple[str, ...], name: str, make: Callable[[str], _T]) -> _T:
        """``make(path)`` the entry for ``parts``, after its parents; an earlier file or link of the
        same name is replaced (the later member wins, as with tar), a directory is not."""
        if not parts:
            raise self.refuse(name, "names the top directory itself")
        if parts in self._dirs:
            raise self.refuse(name, "would replace a directory")
        self._make_dirs(parts[:-1], name)
        path = self._path(parts)
        try:
            return make(path)
        except FileExistsError:
            os.unlink(path)
            return make(path)

    def mkdir(self, parts: tuple[str, ...], name: str, mode: int, mtime: float) -> None:
        self._make_dirs(parts, name)
        if parts:  # the top directory belongs to the caller: its mode is not the archive's to set
            self._dir_times[parts] = (mode, mtime)

    def write_file(self, parts: tuple[str, ...], name: str, content: IO[bytes], size: int, mode: int,
                   mtime: float) -> None:
        self._ctx.charge(size)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        descriptor = self._place(parts, name, lambda path: os.open(path, flags, 0o600))
        with open(descriptor, "wb", buffering=0) as out:
            while data := content.read(CHUNK):
                view = memoryview(data)
                while view:
                    view = view[out.write(view):]
            os.fchmod(descriptor, mode & _FILE_MODE_MASK | 0o600)
            _set_mtime(descriptor, mtime)

    def symlink(self, parts: tuple[str, ...], name: str, target: str) -> None:
        if not target or os.path.isabs(target):
            raise self.refuse(name, f"is a symlink to '{target}', outside the archive")
        resolved = os.path.normpath(os.path.join(*parts[:-1], target) if parts[:-1] else target)
        if resolved == ".." or resolved.startswith("../"):
            raise self.refuse(name, f"is a symlink to '{target}', outside the archive")
        self._place(parts, name, lambda path: os.symlink(target, path))
        self._symlinks.append(parts)

    def hardlink(self, parts: tuple[str, ...], name: str, target: str) -> None:
        try:
            target_parts = self.parts(target)
        except UnsafeArchiveError:
            raise self.refuse(name, f"is a hard link to '{target}', outside the archive") from None
        target_path = self._path(target_parts)
        reachable = all(target_parts[:depth] in self._dirs for depth in range(1, len(target_parts)))
        try:
            is_file = reachable and stat.S_ISREG(os.lstat(target_path).st_mode)
        except FileNotFoundError:
            is_file = False
        if not is_file:
            raise self.refuse(name, f"is a hard link to '{target}', which is not a file extracted before it")
        self._place(parts, name, lambda path: os.link(target_path, path, follow_symlinks=False))

    def finish(self) -> None:
        """Check where the symlinks lead now that the tree is complete; set directory modes."""
        # A target checked alone can still escape through symlinks extracted after it
        # (x -> . then a -> x/../escape), so resolve every link in the finished tree.
        for parts in self._symlinks:
            path = self._path(parts)
            if not os.path.islink(path):  # replaced by a later member
                continue
            resolved = os.path.realpath(path)
            if resolved != self._root and not resolved.startswith(self._root + os.sep):
                why = f"is a symlink that leads outside the archive ({os.readlink(path)})"
                raise self.refuse("/".join(parts), why)
        # Deepest first, so that a read-only directory does not stop us from setting its children.
        for parts, (mode, mtime) in sorted(self._dir_times.items(), key=lambda item: -len(item[0])):
            path = self._path(parts)
            os.chmod(path, mode & _FILE_MODE_MASK | 0o700)
            _set_mtime(path, mtime)


def extract_tar(stream: Stream, dest: Path, ctx: Context) -> None:
    """Unpack the tar archive (of any compression) read from ``stream`` into ``dest``."""
    import tarfile

    buffered = io.BufferedReader(stream, CHUNK)
    codec = sniff(buffered.peek(8))
    archive: IO[bytes] = buffered
    if codec is not None:
        archive = io.BufferedReader(decompressing(codec, buffered, ctx.what), CHUNK)
    tree = SafeTree(dest, ctx)
    try:
        # tarfile's stream mode copies what is left of its buffer on every read, so it keeps its small
        # default buffer (a large one is several times slower on small members); the BufferedReader
        # below serves its reads cheaply.
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            while (member := tar.next()) is not None:
                _extract_tar_member(tar, member, tree)
                tar.members.clear()  # type: ignore[attr-defined]  # else tarfile keeps every header
    except tarfile.TarError as exc:
        raise CorruptDataError(f"corrupt tar archive {ctx.what}: {exc}") from None
    # Read the end of the compressed stream too, so that its trailer (CRC, length) is checked.
    while archive.read(CHUNK):
        pass
    tree.finish()


def _extract_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tree: SafeTree) -> None:
    parts = tree.parts(member.name)
    if member.isdir():
        tree.mkdir(parts, member.name, member.mode, member.mtime)
    elif member.isreg():
        content = tar.extractfile(member)
        assert content is not None
        tree.write_file(parts, member.name, content, member.size, member.mode, member.mtime)
    elif member.issym():
        tree.symlink(parts, member.name, member.linkname)
    elif member.islnk():
        tree.hardlink(parts, member.name, member.linkname)
    else:
        kind = "FIFO" if member.isfifo() else "device file" if member.isdev() else "special file"
        raise tree.refuse(member.name, f"is a {kind}")


def extract_zip(stream: Stream, dest: Path, ctx: Context) -> None:
    """Unpack the zip archive read from ``stream`` into ``dest``, spooling it in ``ctx.work``."""
    import zipfile
    import zlib

    spool = ctx.work / "unzip.spool"
    try:
        with open(spool, "wb") as out:
            while data := stream.read(CHUNK):
                out.write(data)
        try:
            archive = zipfile.ZipFile(spool)
        except zipfile.BadZipFile as exc:
            raise CorruptDataError(f"corrupt zip archive {ctx.what}: {exc}") from None
        with archive:
            tree = SafeTree(dest, ctx)
            for info in archive.infolist():
                try:
                    _extract_zip_member(archive, info, tree)
                except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError) as exc:
                    raise CorruptDataError(f"cannot unzip '{info.filename}' from {ctx.what}: {exc}") \
                        from None
            tree.finish()
    finally:
        spool.unlink(missing_ok=True)


def _extract_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, tree: SafeTree) -> None:
    import time

    parts = tree.parts(info.filename)
    unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(unix_mode)
    mode = stat.S_IMODE(unix_mode) or (0o755 if info.is_dir() else 0o644)
    mtime = time.mktime(info.date_time + (0, 0, -1))
    if info.is_dir() and kind in (0, stat.S_IFDIR):
        tree.mkdir(parts, info.filename, mode, mtime)
    elif kind == stat.S_IFLNK:
        if info.file_size > 4096:
            raise tree.refuse(info.filename, "is a symlink with an implausibly long target")
        tree.symlink(parts, info.filename, archive.read(info).decode("utf-8", "surrogateescape"))
    elif kind in (0, stat.S_IFREG):
        with archive.open(info) as content:
            tree.write_file(parts, info.filename, content, info.file_size, mode, mtime)
    else:
        kinds = {stat.S_IFCHR: "device file", stat.S_IFBLK: "device file", stat.S_IFIFO: "FIFO"}
        raise tree.refuse(info.filename, f"is a {kinds.get(kind, 'special file')}")
