"""Safe extraction of tar and zip archives into a repository directory.

Members are written one by one by :class:`SafeTree`, never by ``extractall``.  Refused (the whole
population fails with :class:`UnsafeArchiveError`): absolute names, ``..`` components, links whose
target lies outside the directory, members written through a symlink extracted earlier, device
files and FIFOs.  Set-user-ID, set-group-ID and sticky bits, and write permission for group and
others, are dropped; ownership is not restored.  Every byte written is charged to the size limit.

Work is proportional to the archive, memory is bounded:

* at most :data:`MAX_ENTRIES` entries: members, plus the directories created for their paths (so
  that a small archive cannot fill the file system with millions of empty files or directories);
* the decompressed bytes may not exceed :data:`~sharedcache.loaders.codecs.MAX_EXPANSION` times the
  bytes read (see :mod:`sharedcache.loaders.codecs`); for zip, whose members are decompressed by
  :mod:`zipfile` (or, for Deflate64, which it does not read, by ``inflate64``), the declared sizes
  of the members are checked against the archive's size, and each member stops at its own;
* tar headers are bounded as :mod:`sharedcache.loaders.tarstream` says (extended headers, global pax
  records, sparse members), and a tar archive must end with its end-of-archive marker.

Tar archives are read in one pass from the stream (any compression is recognised by its magic
bytes) by :class:`~sharedcache.loaders.tarstream.TarReader`; past the first
:data:`~sharedcache.loaders.writer.SERIAL_MEMBERS` members, their files are made by a writer
process while this one parses (:mod:`sharedcache.loaders.writer`).  Zip archives need random
access, so they are spooled to the work directory first.  Zip member names are those ``unzip``
shows: UTF-8 if flagged so, else the UTF-8 name of an Info-ZIP Unicode Path extra field (0x7075)
whose CRC matches the stored name, else code page 437; their times, as unzip reads them, are those
of the extended timestamps in their local headers, else the DOS times.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar

from ..errors import CorruptDataError, UnsafeArchiveError, quoted
from .codecs import check_expansion, decompressing, sniff, what_data_is
from .protocol import Context
from .streams import CHUNK, Layer, Prefetch, Stream
from .tarstream import DIRECTORY, HARDLINK, REGULAR, SYMLINK, VOLUME_LABEL, TarMember, TarReader

if TYPE_CHECKING:
    import zipfile
    from typing import IO

    from .writer import WriterProcess

#: Entries an archive may create: members, plus the directories created for their paths.  A data
#: set of a million small files in their directories fits, with room to spare.
MAX_ENTRIES = 2_000_000

_FILE_MODE_MASK = 0o755  # no setuid/setgid/sticky, no write for group and others
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC  # a file, never through a link
_OPEN_DIRECTORIES = 16   # descriptors of the directories written to last, kept open
_T = TypeVar("_T")


def _set_mtime(target: int | str, mtime_ns: int, *, dir_fd: int | None = None) -> None:
    try:
        os.utime(target, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd)
    except (OverflowError, ValueError):
        pass  # a time the system cannot represent (a pax header can say 1e30) is not worth failing for


def _safe_mode(mode: int) -> int:
    """A file's mode from the archive's: no special bits, no write permission for group and others."""
    return mode & _FILE_MODE_MASK | 0o600


def _umask() -> int | None:
    """The process's umask, read without changing it (os.umask would, for every thread), or None
    if the kernel does not say."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    return None


#: FS_IOC_GETFLAGS (linux/fs.h: ``_IOR('f', 1, long)``), and its flag of a file whose data is in
#: its inode.
_GET_FLAGS = 2 << 30 | struct.calcsize("l") << 16 | ord("f") << 8 | 1
_INLINE_DATA = 0x10000000


def _inline(descriptor: int) -> bool:
    """Whether the file open as ``descriptor`` keeps its data in its inode (ext4's inline_data)."""
    try:
        flags = fcntl.ioctl(descriptor, _GET_FLAGS, bytes(8))
    except OSError:  # a file system without such flags
        return False
    return bool(int.from_bytes(flags[:4], sys.byteorder) & _INLINE_DATA)


class SafeTree:
    """Creates files, directories and links under ``dest`` without ever leaving it.

    Entries are made relative to descriptors of their parent directories (the last
    :data:`_OPEN_DIRECTORIES` used stay open), each file with its final mode and time set on its
    descriptor: a file costs ``open``, ``write``, ``futimens`` and ``close``.  Every path is
    followed from a descriptor of ``dest`` opened once, never from ``dest``'s name again: in a
    group cache another member may rename a directory on the way to it.  Use it as a context
    manager, which closes the descriptors.

    With ``ctx.seal`` (:class:`~sharedcache.loaders.protocol.Sealing`: the tree is for a cache), files
    get their sealed mode at creation and :meth:`finish` seals every directory; if the seal asks
    to measure, each file's blocks are read by an ``fstat`` before it is closed, each link's
    after it is made, each directory's at the end, and what a later member of the same name
    replaces is taken off again (unless another hard link keeps its inode).
    """

    def __init__(self, dest: Path, ctx: Context) -> None:
        self._root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Where the symlinks' check resolves their targets from: the directory itself, by its
        # descriptor, where /proc says where that is.
        self._anchor = f"/proc/self/fd/{self._root_fd}"
        if not os.path.isdir(self._anchor):
            self._anchor = os.path.realpath(dest)
        self._ctx = ctx
        # The real directories made so far (never symlinks), as a tree: (parent's id, name) -> id,
        # the root being 0.  Lookups cost the depth of a path, and memory one item per directory.
        self._dirs: dict[tuple[int, str], int] = {}
        self._symlinks: list[tuple[str, ...]] = []
        self._linked: set[tuple[str, ...]] = set()  # the names of hard links and of their targets
        self._dir_times: dict[tuple[str, ...], tuple[int, int]] = {}
        self._entries = 0
        self._open: dict[int, int] = {}  # directory id -> descriptor, oldest first
        self._last_parent: tuple[tuple[str, ...], int] = ((), 0)  # the parent of the last entry, its id
        self._seal = ctx.seal
        self._file_mode = ctx.seal.file_mode if ctx.seal is not None else _safe_mode
        self._measure = ctx.seal is not None and ctx.seal.measure
        self._allocated = 0  # bytes, counted only if measuring
        self._block = os.fstatvfs(self._root_fd).f_bsize if self._measure else 1
        self.vouch(None)  # a failed source's tree before this one counts for nothing
        # A file is created with its final mode, set again only if the umask took bits from it.
        self._umask = _umask()
        self._adopting = False  # see adopt()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for descriptor in self._open.values():
            os.close(descriptor)
        self._open.clear()
        os.close(self._root_fd)

    def descriptors(self) -> list[int]:
        """The descriptors the tree holds open (its root, and its latest directories)."""
        return [self._root_fd, *self._open.values()]

    def refuse(self, name: str, why: str) -> UnsafeArchiveError:
        """The error for member ``name``, refused because of ``why``."""
        return UnsafeArchiveError(f"unsafe archive {self._ctx.what}: member {quoted(name)} {why}")

    def parts(self, name: str) -> tuple[str, ...]:
        """The components of member ``name`` below the root; refuses names that leave it."""
        if name.startswith("/"):
            raise self.refuse(name, "has an absolute path")
        if "\x00" in name:
            raise self.refuse(name, "has a NUL byte in its name")
        parts = name.split("/")
        if "" in parts or "." in parts:
            parts = [part for part in parts if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "has a '..' component")
        return tuple(parts)

    @staticmethod
    def _below(parts: tuple[str, ...]) -> str:
        """``parts`` as a path relative to the root's descriptor."""
        return "/".join(parts) or "."

    def adopt(self) -> None:
        """From now on, take the directories on the path of each entry as made by another process
        (a writer process that makes only files, in directories that the tree's authority made:
        see :mod:`sharedcache.loaders.writer`).  They are recorded, neither made nor counted."""
        self._adopting = True

    def linked(self) -> set[tuple[str, ...]]:
        """The names (as parts) of the hard links made so far and of their targets (a copy)."""
        return set(self._linked)

    def directories(self) -> dict[tuple[int, str], int]:
        """The directories made so far, as the tree keeps them: (parent's id, name) -> id, the
        root being 0 and the ids counting up from 1 as they were made (a copy)."""
        return dict(self._dirs)

    def charge(self, size: int) -> None:
        """Charge ``size`` bytes about to be written to the size limit (a writer process's parent
        charges those that its writers will write)."""
        self._ctx.charge(size)

    def measured(self) -> int | None:
        """The bytes counted so far if measuring (see :class:`SafeTree`), else None."""
        return self._allocated if self._measure else None

    @property
    def entries(self) -> int:
        """The entries counted so far (see :meth:`count`)."""
        return self._entries

    def count(self) -> None:
        """Count an entry against the cap on entries: a member, or a directory made for a path (a
        writer process's parent counts those that its writers will make)."""
        self._entries += 1
        if self._entries > MAX_ENTRIES:
            raise UnsafeArchiveError(f"unsafe archive {self._ctx.what}: more than {MAX_ENTRIES} entries "
                                     "(members and the directories of their paths)")

    def _descriptor(self, ident: int, parts: tuple[str, ...]) -> int:
        """An open descriptor of directory ``parts``, whose id is ``ident``."""
        descriptor = self._open.get(ident)
        if descriptor is None:
            if len(self._open) >= _OPEN_DIRECTORIES:
                os.close(self._open.pop(next(iter(self._open))))
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            descriptor = self._open[ident] = os.open(self._below(parts), flags, dir_fd=self._root_fd)
        return descriptor

    def _dir(self, parts: tuple[str, ...], name: str, *, create: bool) -> int | None:
        """The id of directory ``parts``, made (with its parents) if ``create``, else None if it was
        not made."""
        ident = 0
        for depth, part in enumerate(parts):
            child = self._dirs.get((ident, part))
            if child is None:
                if not create:
                    return None
                self._mkdir(ident, parts[:depth], part, name)
                child = self._dirs[(ident, part)] = len(self._dirs) + 1
            ident = child
        return ident

    def _mkdir(self, parent: int, parent_parts: tuple[str, ...], part: str, name: str) -> None:
        if self._adopting:
            return
        self.count()
        descriptor = self._descriptor(parent, parent_parts)
        try:
            os.mkdir(part, 0o755, dir_fd=descriptor)
        except FileExistsError:
            # Every directory here was made by _dir: what is there is a file or a link.
            there = "/".join((*parent_parts, part))
            if stat.S_ISLNK(os.lstat(part, dir_fd=descriptor).st_mode):
                raise self.refuse(name, f"would be written through the symlink {quoted(there)}") from None
            raise self.refuse(name, f"would be written below the file {quoted(there)}") from None

    def _place(self, parts: tuple[str, ...], name: str, make: Callable[[str, int], _T]) -> _T:
        """``make(leaf, parent's descriptor)`` the entry for ``parts``, after its parents; an earlier
        file or link of the same name is replaced (the later member wins, as with tar), a directory
        is not."""
        parent = self._parent(parts, name)
        try:
            return make(parts[-1], parent)
        except FileExistsError:
            self._clear(parts[-1], parent)
            return make(parts[-1], parent)

    def _parent(self, parts: tuple[str, ...], name: str) -> int:
        """The descriptor of the directory that the entry for ``parts`` goes in, made (with its
        parents) if need be; refuses the top directory itself, and a name that a directory has."""
        if not parts:
            raise self.refuse(name, "names the top directory itself")
        parent_parts = parts[:-1]
        if parent_parts == self._last_parent[0]:  # members come directory by directory
            parent = self._last_parent[1]
        else:
            made = self._dir(parent_parts, name, create=True)
            assert made is not None
            parent = made
            self._last_parent = (parent_parts, parent)
        if (parent, parts[-1]) in self._dirs:
            raise self.refuse(name, "would replace a directory")
        return self._descriptor(parent, parent_parts)

    def _clear(self, leaf: str, parent: int) -> None:
        """Remove the file or link ``leaf`` in the directory open as ``parent``, for a later member
        of the same name, and take its blocks off the count."""
        if self._measure:
            replaced = os.lstat(leaf, dir_fd=parent)
            if replaced.st_nlink == 1 and stat.S_ISREG(replaced.st_mode):  # counted as it was made
                descriptor = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    self._allocated -= self._file_allocation(descriptor)
                finally:
                    os.close(descriptor)
            elif replaced.st_nlink == 1:  # else another hard link keeps its blocks
                self._allocated -= replaced.st_blocks * 512
        os.unlink(leaf, dir_fd=parent)

    def mkdir(self, name: str, mode: int, mtime_ns: int) -> None:
        parts = self.parts(name)
        self.count()
        self._dir(parts, name, create=True)
        if parts:  # the top directory belongs to the caller: its mode is not the archive's to set
            self._dir_times[parts] = (mode, mtime_ns)

    def write_file(self, name: str, size: int, mode: int, mtime_ns: int,
                   read: Callable[[int], bytes | memoryview]) -> None:
        """Write the file ``name`` from ``size`` bytes got by calls of ``read(most)``, each of which
        returns at least one byte."""
        parts = self.parts(name)
        self.count()
        self.charge(size)
        mode = self._file_mode(mode)
        # _place's steps, without a function made and called for each file: this is the loop
        # that an archive of many small files spends its time in.
        parent, leaf = self._parent(parts, name), parts[-1]
        try:
            descriptor = os.open(leaf, _CREATE, mode, dir_fd=parent)
        except FileExistsError:
            self._clear(leaf, parent)
            descriptor = os.open(leaf, _CREATE, mode, dir_fd=parent)
        try:
            left = size
            while left:
                piece = read(left if left < CHUNK else CHUNK)
                if not piece:
                    raise CorruptDataError(f"corrupt archive {self._ctx.what}: member {quoted(name)} "
                                           "is shorter than its header says")
                left -= len(piece)
                written = os.write(descriptor, piece)
                while written < len(piece):  # a short write (interrupted by a signal) goes on
                    piece = piece[written:]
                    written = os.write(descriptor, piece)
            umask = self._umask
            if umask is None or mode & umask:
                os.fchmod(descriptor, mode)
            _set_mtime(descriptor, mtime_ns)
            if self._measure:
                self._allocated += self._file_allocation(descriptor)
        finally:
            os.close(descriptor)

    def _file_allocation(self, descriptor: int) -> int:
        """The bytes allocated to the regular file open as ``descriptor``, every byte of which was
        written.  ext4 counts a file's blocks when the write reserves them; its write-back takes
        them off that reservation before it adds them to the allocation, so a count read
        meanwhile falls short.  A file written whole holds at least its size in whole blocks
        (archives' sparse members are refused), unless its inode holds its data (ext4's
        inline_data), where the count is right as it is."""
        status = os.fstat(descriptor)
        counted = status.st_blocks * 512
        whole = -(-status.st_size // self._block) * self._block
        return counted if counted >= whole or _inline(descriptor) else whole

    def symlink(self, name: str, target: str) -> None:
        parts = self.parts(name)
        self.count()
        if "\x00" in target:  # a pax linkpath can hold one (os.symlink would raise ValueError)
            raise self.refuse(name, "is a symlink whose target has a NUL byte")
        escapes = not target or os.path.isabs(target)
        if not escapes:
            resolved = os.path.normpath(os.path.join(*parts[:-1], target))
            escapes = resolved == ".." or resolved.startswith("../")
        if escapes:
            raise self.refuse(name, f"is a symlink to {quoted(target)}, outside the archive")
        self._place(parts, name, lambda leaf, parent: self._make_symlink(target, leaf, parent))
        self._symlinks.append(parts)

    def _make_symlink(self, target: str, leaf: str, parent: int) -> None:
        os.symlink(target, leaf, dir_fd=parent)
        if self._measure:  # a long target takes a block of its own
            self._allocated += os.lstat(leaf, dir_fd=parent).st_blocks * 512

    def hardlink(self, name: str, target: str) -> None:
        """A hard link to a file made before; to a symlink made before (as ``cp -al`` links
        them), a symlink with its target, judged where it now stands, as :meth:`symlink` judges
        any (GNU tar would link the symlink itself: the same, but for its inode)."""
        parts = self.parts(name)
        try:
            target_parts = self.parts(target)
        except UnsafeArchiveError:
            self.count()
            raise self.refuse(name, f"is a hard link to {quoted(target)}, outside the archive") from None
        below, root = self._below(target_parts), self._root_fd
        reachable = self._dir(target_parts[:-1], name, create=False) is not None
        try:
            mode = os.lstat(below, dir_fd=root).st_mode if reachable else 0
        except FileNotFoundError:
            mode = 0
        if stat.S_ISLNK(mode):
            self.symlink(name, os.readlink(below, dir_fd=root))
            return
        self.count()
        if not stat.S_ISREG(mode):
            raise self.refuse(name, f"is a hard link to {quoted(target)}, which is not a file extracted before it")
        self._place(parts, name, lambda leaf, parent: os.link(below, leaf, src_dir_fd=root, dst_dir_fd=parent,
                                                              follow_symlinks=False))
        self._linked.update((parts, target_parts))

    def finish(self) -> int | None:
        """Check where the symlinks lead now that the tree is complete; set the directories' modes
        and times.  Returns the bytes allocated to the tree below the root if the seal asked to
        measure them, else None."""
        # A target checked alone can still escape through symlinks extracted after it
        # (x -> . then a -> x/../escape), so resolve every link in the finished tree.
        root = os.path.realpath(self._anchor)
        for parts in self._symlinks:
            below = self._below(parts)
            try:
                if not stat.S_ISLNK(os.lstat(below, dir_fd=self._root_fd).st_mode):
                    continue  # replaced by a later member
            except FileNotFoundError:
                continue
            resolved = os.path.realpath(os.path.join(self._anchor, below))
            if resolved != root and not resolved.startswith(root + os.sep):
                target = os.readlink(below, dir_fd=self._root_fd)
                raise self.refuse("/".join(parts), f"is a symlink that leads outside the archive ({quoted(target)})")
        if self._seal is not None:
            allocated = self._seal_directories(self._seal.directory_mode)
            self.vouch(allocated)
            return allocated
        # Deepest first, so that a read-only directory does not stop us from setting its children.
        for parts, (mode, mtime_ns) in sorted(self._dir_times.items(), key=lambda item: -len(item[0])):
            below = self._below(parts)
            os.chmod(below, mode & _FILE_MODE_MASK | 0o700, dir_fd=self._root_fd)
            _set_mtime(below, mtime_ns, dir_fd=self._root_fd)
        return None

    def vouch(self, allocated: int | None) -> None:
        """Tell the seal that the tree is complete and sealed, and the bytes allocated to it
        (None: not measured)."""
        if self._seal is not None:
            self._seal.allocated = allocated

    def _seal_directories(self, mode: int) -> int | None:
        """Give every directory made its time (if the archive has one) and the sealed ``mode``,
        children before parents; the tree's blocks if measuring, else None."""
        made = {ident: key for key, ident in self._dirs.items()}  # id -> (parent's id, name)
        for ident in range(len(made), 0, -1):  # ids count up as directories are made, parents first
            parts: list[str] = []
            up = ident
            while up:
                up, part = made[up]
                parts.append(part)
            key = tuple(reversed(parts))
            below = self._below(key)
            times = self._dir_times.get(key)
            if times is not None:
                _set_mtime(below, times[1], dir_fd=self._root_fd)
            os.chmod(below, mode, dir_fd=self._root_fd)
            if self._measure:
                self._allocated += os.lstat(below, dir_fd=self._root_fd).st_blocks * 512
        return self._allocated if self._measure else None


# --- tar ------------------------------------------------------------------------------------------


class _Replay(Layer):
    """The stream below with the bytes already read from it put back in front."""

    def __init__(self, head: bytes, below: Stream) -> None:
        super().__init__(below)
        self._head = head

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            return data
        return self.below.read(size)


def extract_tar(stream: Stream, dest: Path, ctx: Context) -> None:
    """Unpack the tar archive (of any compression) read from ``stream`` into ``dest``."""
    head = b""
    while len(head) < 64 and (data := stream.read(CHUNK)):  # magic numbers, past pzstd's first frame
        head += data
    codec = sniff(head)
    archive: Stream = _Replay(head, stream)
    if codec is not None:
        # Decompression releases the GIL: in a thread of its own it runs beside the parsing and the
        # file creation here, on another core.  (Its thread is done with the stream at its end.)
        archive = Prefetch(decompressing(codec, archive, ctx.what))
    reader = TarReader(archive, ctx.what)
    made = None
    try:
        with SafeTree(dest, ctx) as made:
            _extract_tar_members(reader, made, ctx.what)
    except CorruptDataError:
        # Not a tar at all (a page a server sent in place of the file...): say what it is.
        other = what_data_is(head) if codec is None and made is not None and not made.entries else None
        if other is not None and other != "a tar archive":
            raise CorruptDataError(f"cannot unpack {ctx.what} as a tar archive: it is {other}") from None
        raise
    finally:
        archive.close()


def _extract_tar_members(reader: TarReader, tree: SafeTree, what: str) -> None:
    """Unpack the members read by ``reader`` into ``tree``; past the first ones, in a writer process
    (see :mod:`sharedcache.loaders.writer`) when the archive turns out to have many."""
    from . import writer

    target: SafeTree | writer.WriterProcess = tree
    members = 0
    try:
        while (member := reader.next()) is not None:
            if members == writer.SERIAL_MEMBERS and writer.available():
                with contextlib.suppress(OSError):  # no process to be had: one will do
                    target = writer.WriterProcess(tree, what)
            _extract_tar_member(reader, member, target)
            members += 1
        # Read the end of the compressed stream too, so that its trailer (CRC, length) is checked.
        reader.drain()
        target.finish()
    except BaseException as failure:
        if isinstance(target, writer.WriterProcess):
            raise target.abandon(failure) from None
        raise


def _extract_tar_member(reader: TarReader, member: TarMember, tree: SafeTree | WriterProcess) -> None:
    name, kind = member.name, member.kind
    if kind == REGULAR and member.size >= 0:  # base-256 and pax sizes can be negative
        tree.write_file(name, member.size, member.mode, member.mtime_ns, reader.take)
    elif kind == DIRECTORY:
        tree.mkdir(name, member.mode, member.mtime_ns)
    elif kind == SYMLINK:
        tree.symlink(name, member.linkname)
    elif kind == HARDLINK:
        tree.hardlink(name, member.linkname)
    elif kind == VOLUME_LABEL:
        pass  # GNU tar passes over it too; its name is the label, not a path
    else:
        tree.parts(name)  # a name that leaves the tree is refused for that first, as with any member
        if kind == REGULAR:
            raise tree.refuse(name, f"has a negative size ({member.size})")
        what = {b"3": "device file", b"4": "device file", b"6": "FIFO"}.get(kind, "special file")
        raise tree.refuse(name, f"is a {what}")


# --- zip ------------------------------------------------------------------------------------------

_END_RECORD = struct.Struct("<4s4H2LH")      # end of central directory
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_RECORD = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


def extract_zip(stream: Stream, dest: Path, ctx: Context) -> None:
    """Unpack the zip archive read from ``stream`` into ``dest``, spooling it in ``ctx.work``."""
    import lzma
    import zipfile
    import zlib

    # What reading a damaged member raises (bz2 says OSError, without an errno; a local header can
    # flag as UTF-8 a name that is not).
    damaged = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, UnicodeDecodeError, NotImplementedError,
               RuntimeError, EOFError)
    spool = ctx.work / "unzip.spool"
    try:
        with open(spool, "wb") as out:
            while data := stream.read(CHUNK):
                out.write(data)
        if _zip_entries(spool) > MAX_ENTRIES:
            raise UnsafeArchiveError(f"unsafe archive {ctx.what}: more than {MAX_ENTRIES} members")
        try:
            archive = zipfile.ZipFile(spool)
        except (zipfile.BadZipFile, UnicodeDecodeError) as exc:  # a name said to be UTF-8 that is not
            with open(spool, "rb") as file:
                other = what_data_is(file.read(512))
            if other is not None and other != "a zip archive":
                raise CorruptDataError(f"cannot unpack {ctx.what} as a zip archive: it is {other}") from None
            raise CorruptDataError(f"corrupt zip archive {ctx.what}: {exc}") from None
        with archive, SafeTree(dest, ctx) as tree:
            declared, size = 0, spool.stat().st_size
            for info in archive.infolist():
                # zipfile stops each member at its declared size: check those against the archive's.
                declared += info.file_size
                check_expansion(declared, size, ctx.what)
                name = _zip_name(info, _zip_extra(info.extra))
                try:
                    _extract_zip_member(archive, info, name, tree)
                except damaged as exc:
                    if isinstance(exc, OSError) and exc.errno is not None:
                        raise  # writing failed, not reading: the pipeline reports it
                    raise CorruptDataError(f"cannot unzip {quoted(name)} from {ctx.what}: {exc}") from None
            tree.finish()
    finally:
        spool.unlink(missing_ok=True)


def _zip_entries(path: Path) -> int:
    """How many records the central directory of the zip at ``path`` holds, counted up to
    ``MAX_ENTRIES + 1`` without loading it (zipfile keeps about 0.6 KB in memory per record).

    The directory is found as zipfile finds it; if it cannot be, 0 (zipfile then says why).
    """
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        tail_start = max(0, size - _END_RECORD.size - 0xFFFF)  # the record, then a comment
        file.seek(tail_start)
        tail = file.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _END_RECORD.size > len(tail):
            return 0
        end = tail_start + at  # where the central directory ends
        directory_size = _END_RECORD.unpack_from(tail, at)[5]
        if end >= _ZIP64_LOCATOR.size + _ZIP64_END_RECORD.size:
            file.seek(end - _ZIP64_LOCATOR.size - _ZIP64_END_RECORD.size)
            zip64 = file.read(_ZIP64_END_RECORD.size + _ZIP64_LOCATOR.size)
            if zip64[-_ZIP64_LOCATOR.size:].startswith(b"PK\x06\x07") and zip64.startswith(b"PK\x06\x06"):
                directory_size = _ZIP64_END_RECORD.unpack_from(zip64)[8]
                end -= _ZIP64_LOCATOR.size + _ZIP64_END_RECORD.size
        if directory_size > end:
            return 0
        file.seek(end - directory_size)
        count = done = 0
        while done < directory_size and count <= MAX_ENTRIES:
            record = file.read(_CENTRAL_RECORD.size)
            if len(record) < _CENTRAL_RECORD.size or not record.startswith(b"PK\x01\x02"):
                break
            variable = sum(_CENTRAL_RECORD.unpack(record)[12:15])  # name, extra field, comment
            file.seek(variable, os.SEEK_CUR)
            done += _CENTRAL_RECORD.size + variable
            count += 1
        return count


_EXTRA_HEADER = struct.Struct("<HH")
_UNICODE_PATH = 0x7075    # Info-ZIP: version 1, CRC-32 of the stored name, the name in UTF-8
_EXTENDED_TIME = 0x5455   # "UT": flags, then the modification time (seconds since 1970, UTC) if flag 1
_UTF8_NAME_FLAG = 0x800
_ENCRYPTED = 0x1
_DEFLATE64 = 9
_DEFLATE64_INPUT = 16 << 10  # compressed bytes inflated at once: at most about 16 MiB come of them
_MS_DOS = 0
_CP437_SYSTEMS = {_MS_DOS, 6, 11}  # MS-DOS (FAT), OS/2 (HPFS), Windows NT (NTFS): names in code page 437


def _zip_extra(extra: bytes) -> dict[int, bytes]:
    """The fields of a zip extra block, by id (a malformed tail is ignored, as unzip does)."""
    fields: dict[int, bytes] = {}
    at = 0
    while at + _EXTRA_HEADER.size <= len(extra):
        ident, size = _EXTRA_HEADER.unpack_from(extra, at)
        at += _EXTRA_HEADER.size
        fields.setdefault(ident, extra[at:at + size])
        at += size
    return fields


def _zip_name(info: zipfile.ZipInfo, extra: dict[int, bytes]) -> str:
    """The member's name as unzip writes it here (:func:`_zip_stored_name`), with its backslashes
    taken for separators, as unzip takes them, if the archive was made on MS-DOS (FAT) and the name
    has no slash: the format asks for slashes, but some Windows tools (PowerShell 5's
    ``Compress-Archive``) write backslashes.  The unpacker's rules judge the name that results."""
    name = _zip_stored_name(info, extra)
    if info.create_system == _MS_DOS and "/" not in name:
        return name.replace("\\", "/")
    return name


def _zip_stored_name(info: zipfile.ZipInfo, extra: dict[int, bytes]) -> str:
    """The member's name: zipfile's if flagged UTF-8; else the UTF-8 name of a Unicode Path field
    that belongs to the stored name (its CRC matches); else the stored bytes as they are if the
    archive was made on a Unix-like system (Info-ZIP writes a UTF-8 locale's names so,
    unflagged), or read as code page 437 if made on DOS or Windows."""
    if info.flag_bits & _UTF8_NAME_FLAG:
        return info.filename
    import zlib

    unicode_path = extra.get(_UNICODE_PATH, b"")
    stored = info.orig_filename.encode("cp437")  # zipfile decoded the stored bytes as cp437
    if (len(unicode_path) > 5 and unicode_path[0] == 1
            and int.from_bytes(unicode_path[1:5], "little") == zlib.crc32(stored)):
        return unicode_path[5:].decode("utf-8", "surrogateescape")
    if info.create_system in _CP437_SYSTEMS:
        return info.filename
    return info.filename.encode("cp437").decode("utf-8", "surrogateescape")


def _zip_local_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[dict[int, bytes], int | None]:
    """The fields of the extra block of the member's local header, which may differ from the
    central directory's, and where the member's data starts after that header (({}, None) if there
    is no such header there: zipfile says so as it opens the member)."""
    import zipfile

    assert archive.fp is not None
    if info.header_offset < 0:  # zipfile would seek there, and its EINVAL would pass for a write's
        raise zipfile.BadZipFile("the central directory places it before the start of the archive")
    fd = archive.fp.fileno()  # pread leaves the position that zipfile's reads use alone
    header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
    if len(header) < _LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
        return {}, None
    *_, name_size, extra_size = _LOCAL_HEADER.unpack(header)
    extra_start = info.header_offset + _LOCAL_HEADER.size + name_size
    return _zip_extra(os.pread(fd, extra_size, extra_start)), extra_start + extra_size


class _Deflate64Member:
    """The data of a member compressed with Deflate64 (method 9, "enhanced deflate": Windows'
    Explorer writes it in zips past 2 GiB, 7-Zip when asked, and unzip reads it), which zipfile does
    not read.  The inflate64 package inflates it, from where the local header ends; as zipfile
    does for the other methods, it stops at the declared size and checks the declared CRC.  Each
    call inflates at most :data:`_DEFLATE64_INPUT` bytes of input, so that what a bomb makes of
    them stays in memory's bounds."""

    def __init__(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, start: int | None) -> None:
        import zipfile

        try:
            import inflate64
        except ImportError:
            raise NotImplementedError("it is compressed with Deflate64, which needs the inflate64 package "
                                      "(not installed)") from None
        if start is None:
            raise zipfile.BadZipFile("Bad magic number for file header")  # as zipfile says it
        assert archive.fp is not None
        self._inflater = inflate64.Inflater()
        self._fd, self._at, self._compressed_left = archive.fp.fileno(), start, info.compress_size
        self._left, self._crc, self._info = info.file_size, 0, info
        self._pending = memoryview(b"")

    def read(self, most: int) -> bytes:
        """Up to ``most`` bytes, fewer only at the end of the data."""
        import zipfile
        import zlib

        pieces = []
        most = min(most, self._left)
        while most:
            if not self._pending:
                if not self._compressed_left or self._inflater.eof:
                    break  # short of the declared size: the caller says so
                data = os.pread(self._fd, min(_DEFLATE64_INPUT, self._compressed_left), self._at)
                if not data:
                    raise EOFError("the archive ends inside the member's data")
                self._at, self._compressed_left = self._at + len(data), self._compressed_left - len(data)
                try:
                    self._pending = memoryview(self._inflater.inflate(data))
                except ValueError as exc:  # inflate64's word for corrupt data
                    raise zipfile.BadZipFile(f"corrupt Deflate64 data ({exc})") from None
            piece = self._pending[:most]
            self._pending = self._pending[len(piece):]
            pieces.append(piece)
            most -= len(piece)
            self._left -= len(piece)
            self._crc = zlib.crc32(piece, self._crc)
        if not self._left and self._crc != self._info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {self._info.filename!r}")  # as zipfile says it
        return b"".join(pieces)

    def __enter__(self) -> _Deflate64Member:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def _zip_member_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                     data_start: int | None) -> IO[bytes] | _Deflate64Member:
    """A reader of the member's data, decompressed: zipfile's, or ours for Deflate64 (an encrypted
    member is left to zipfile, which refuses it for that)."""
    if info.compress_type == _DEFLATE64 and not info.flag_bits & _ENCRYPTED:
        return _Deflate64Member(archive, info, data_start)
    return archive.open(info)


def _zip_mtime_ns(info: zipfile.ZipInfo, local_extra: dict[int, bytes]) -> int:
    """The modification time: the "UT" field's if the local header has one (UTC, to the second),
    else the DOS time (local time, to two seconds).  unzip and bsdtar look there only: a field in
    the central directory alone (yazl writes it so) is not read, and one in the local header
    alone is."""
    extended = local_extra.get(_EXTENDED_TIME, b"")
    if len(extended) >= 5 and extended[0] & 1:
        return int.from_bytes(extended[1:5], "little", signed=True) * 10**9
    import time

    return int(time.mktime((*info.date_time, 0, 0, -1))) * 10**9


def _extract_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, tree: SafeTree) -> None:
    tree.parts(name)  # a name that leaves the tree is refused for that first, whatever the member
    unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(unix_mode)
    is_dir = name.endswith("/")  # not info.is_dir(), which fails on an empty name
    mode = stat.S_IMODE(unix_mode) or (0o755 if is_dir else 0o644)
    local_extra, data_start = _zip_local_header(archive, info)
    mtime_ns = _zip_mtime_ns(info, local_extra)
    if is_dir and kind in (0, stat.S_IFDIR):
        tree.mkdir(name, mode, mtime_ns)
    elif kind == stat.S_IFLNK:
        if info.file_size > 4096:
            raise tree.refuse(name, "is a symlink with an implausibly long target")
        with _zip_member_data(archive, info, data_start) as content:
            tree.symlink(name, content.read(info.file_size).decode("utf-8", "surrogateescape"))
    elif kind in (0, stat.S_IFREG):
        with _zip_member_data(archive, info, data_start) as content:
            tree.write_file(name, info.file_size, mode, mtime_ns, content.read)
    else:
        kinds = {stat.S_IFCHR: "device file", stat.S_IFBLK: "device file", stat.S_IFIFO: "FIFO"}
        raise tree.refuse(name, f"is a {kinds.get(kind, 'special file')}")
