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
  bytes read (see :mod:`sharedcache.loaders.codecs`); for zip, the declared sizes of the members
  are checked against the archive's size, and each member stops at its own;
* the check of where the symlinks lead resolves each link once (:class:`_Links`): links into a
  long chain of links do not each walk it again;
* tar headers are bounded as :mod:`sharedcache.loaders.tarstream` says (extended headers, global pax
  records, sparse members), and a tar archive must end with its end-of-archive marker.

Tar archives are read in one pass from the stream (any compression is recognised by its magic
bytes) by :class:`~sharedcache.loaders.tarstream.TarReader`; past the first
:data:`~sharedcache.loaders.writer.SERIAL_MEMBERS` members, if their files were small, the
files are made by writer processes while this one parses (:mod:`sharedcache.loaders.writer`).
Zip archives need random access, so they are spooled to the work directory first, then read
member by member by :class:`~sharedcache.loaders.ziparchive.ZipReader`, as unzip reads them
(names, times, methods).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import stat
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self, TypeVar

from ..errors import (
    ChecksumError,
    CorruptDataError,
    LoaderError,
    SharedCacheError,
    UnsafeArchiveError,
    no_space_for,
    quoted,
)
from ..modes import mkdir, opener, umask
from ..sizes import format_size
from .codecs import check_expansion, decompressing, instead, sniff, what_data_is
from .protocol import Context
from .streams import CHUNK, Layer, Prefetch, Stream
from .tarstream import BLOCK, DIRECTORY, HARDLINK, REGULAR, SYMLINK, VOLUME_LABEL, TarMember, TarReader

if TYPE_CHECKING:
    from .writer import WriterProcess
    from .ziparchive import ZipMember, ZipReader

#: Entries an archive may create: members, plus the directories created for their paths.  A data
#: set of a million small files in their directories fits, with room to spare.
MAX_ENTRIES = 2_000_000

_FILE_MODE_MASK = 0o755  # no setuid/setgid/sticky, no write for group and others
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC  # a file, never through a link
_OPEN_DIRECTORIES = 16   # descriptors of the directories written to last, kept open
_READ_EVERY = 64         # files counted by their size for one whose blocks are read (see _file_allocation)
_T = TypeVar("_T")
_M = TypeVar("_M")  # an archive's member, as its reader gives it


def _set_mtime(target: int | str, mtime_ns: int, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
    try:
        os.utime(target, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    except (OverflowError, ValueError):
        pass  # a time the system cannot represent (a pax header can say 1e30) is not worth failing for


def _safe_mode(mode: int) -> int:
    """A file's mode from the archive's: no special bits, no write permission for group and others."""
    return mode & _FILE_MODE_MASK | 0o600


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
    to measure, each file's blocks are read by an ``fstat`` before it is closed (or, where the seal
    says that they follow from its size, those of a sample of the files), each link's after it is
    made, each directory's at the end, and what a later member of the same name replaces is
    taken off again (unless another hard link keeps its inode).

    A later member replaces a file or a link of its name, never a directory, and a directory
    replaces nothing, but for the file of a member that stands for no file of its own
    (:meth:`write_replaceable_file`), which the next member of its name replaces, whatever it is.

    :meth:`finish` resolves every symlink of the finished tree to the end of its chain, however
    long, and refuses the archive if one leads out of it.  A link that leads nowhere (dangling, in
    a loop) is kept, as GNU tar and unzip keep it, and so is one whose chain is longer than the 40
    links the kernel follows, if it ends in the tree.
    """

    def __init__(self, dest: Path, ctx: Context) -> None:
        self._root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._ctx = ctx
        # The real directories made so far (never symlinks), as a tree: (parent's id, name) -> id,
        # the root being 0.  Lookups cost the depth of a path, and memory one item per directory.
        self._dirs: dict[tuple[int, str], int] = {}
        self._symlinks: list[tuple[str, ...]] = []
        self._linked: set[tuple[str, ...]] = set()  # the names of hard links and of their targets
        self._replaceable: set[tuple[str, ...]] = set()  # see write_replaceable_file
        self._dir_times: dict[tuple[str, ...], tuple[int, int]] = {}
        self._entries = 0
        self._open: dict[int, int] = {}  # directory id -> descriptor, oldest first
        self._last_parent: tuple[tuple[str, ...], int] = ((), 0)  # the parent of the last entry, its id
        self._seal = ctx.seal
        self._file_mode = ctx.seal.file_mode if ctx.seal is not None else _safe_mode
        self._measure = ctx.seal is not None and ctx.seal.measure
        self._allocated = 0  # bytes, counted only if measuring
        self._block = os.fstatvfs(self._root_fd).f_bsize if self._measure else 1
        self._by_size = self._measure and ctx.seal is not None and ctx.seal.by_size
        self._unread = _READ_EVERY  # files counted by their size since one was read: the first is read
        self.vouch(None)  # a failed source's tree before this one counts for nothing
        # A file is created with its final mode, set again only if the umask took bits from it.
        self._umask = umask()
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

    def replaceable(self) -> set[tuple[str, ...]]:
        """The names (as parts) of the files that a directory may still replace (see
        :meth:`write_replaceable_file`; a copy)."""
        return set(self._replaceable)

    def directories(self) -> dict[tuple[int, str], int]:
        """The directories made so far, as the tree keeps them: (parent's id, name) -> id, the
        root being 0 and the ids counting up from 1 as they were made (a copy)."""
        return dict(self._dirs)

    def file_bytes(self) -> int:
        """The bytes of the files made so far (or about to be: those charged to the size limit)."""
        return self._ctx.written

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
            mkdir(part, 0o755, dir_fd=descriptor)
        except FileExistsError:
            # Every directory here was made by _dir: what is there is a file or a link.
            there_parts = (*parent_parts, part)
            if there_parts in self._replaceable and there_parts == self.parts(name):
                # The file of a member that stood for none (a directory's ACL, before it) is
                # replaced by the directory, as GNU tar replaces it.
                self._clear(there_parts, descriptor)
                mkdir(part, 0o755, dir_fd=descriptor)
                return
            there = "/".join(there_parts)
            if stat.S_ISLNK(os.lstat(part, dir_fd=descriptor).st_mode):
                raise self.refuse(name, f"would be written through the symlink {quoted(there)}") from None
            if there_parts == self.parts(name):  # the member is this directory
                # (GNU tar would replace the file; here only the file of a member that stood for
                # none, above, is replaced by a directory)
                raise self.refuse(name, f"is a directory in place of the file {quoted(there)} made before it") \
                    from None
            raise self.refuse(name, f"would be written below the file {quoted(there)}") from None

    def _place(self, parts: tuple[str, ...], name: str, make: Callable[[str, int], _T]) -> _T:
        """``make(leaf, parent's descriptor)`` the entry for ``parts``, after its parents; an earlier
        file or link of the same name is replaced (the later member wins, as with tar), a directory
        is not."""
        parent = self._parent(parts, name)
        try:
            return make(parts[-1], parent)
        except FileExistsError:
            self._clear(parts, parent)
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

    def _clear(self, parts: tuple[str, ...], parent: int) -> None:
        """Remove the file or link ``parts``, in the directory open as ``parent``, for a later
        member of the same name, and take its blocks off the count."""
        leaf = parts[-1]
        self._replaceable.discard(parts)  # replaced: what replaced it stands for itself
        if self._measure:
            replaced = os.lstat(leaf, dir_fd=parent)
            if replaced.st_nlink == 1 and stat.S_ISREG(replaced.st_mode):  # counted as it was made
                descriptor = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    self._allocated -= self._file_allocation(descriptor, replaced.st_size)
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
            self._clear(parts, parent)
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
            if mode & self._umask:
                os.fchmod(descriptor, mode)
            _set_mtime(descriptor, mtime_ns)
            if self._measure:
                self._allocated += self._file_allocation(descriptor, size)
        finally:
            os.close(descriptor)

    def write_replaceable_file(self, name: str, size: int, mode: int, mtime_ns: int,
                               read: Callable[[int], bytes | memoryview]) -> None:
        """:meth:`write_file`, for a member that stands for no file of its own: one of a type that
        GNU tar does not know, of which it makes a file, such as the ACL that Solaris tar writes
        before the file or the directory it is for.  The next member of its name replaces that
        file, as GNU tar replaces it, a directory too (which replaces no other file)."""
        self.write_file(name, size, mode, mtime_ns, read)
        self._replaceable.add(self.parts(name))

    def _file_allocation(self, descriptor: int, size: int) -> int:
        """The bytes allocated to the regular file of ``size`` bytes open as ``descriptor``, every
        byte of which was written.  ext4 counts a file's blocks when the write reserves them; its
        write-back takes them off that reservation before it adds them to the allocation, so a
        count read meanwhile falls short.  A file written whole holds at least its size in whole
        blocks (archives' sparse members are refused), unless its inode holds its data (ext4's
        inline_data), where the count is right as it is.

        Where the seal says that a file holds exactly that (a tmpfs without huge pages), its
        ``fstat`` is left out, a tenth of what making a small file costs: one file in
        :data:`_READ_EVERY` is read all the same, and if one holds anything else the tree counts
        nothing more (the commit then walks it)."""
        whole = -(-size // self._block) * self._block
        if self._by_size:
            if self._unread < _READ_EVERY:
                self._unread += 1
                return whole
            self._unread = 0
            if os.fstat(descriptor).st_blocks * 512 == whole:
                return whole
            self._by_size = self._measure = False
            return 0
        counted = os.fstat(descriptor).st_blocks * 512
        return counted if counted >= whole or _inline(descriptor) else whole

    def symlink(self, name: str, target: str, mtime_ns: int | None = None) -> None:
        """A symlink to ``target``, with the time ``mtime_ns`` (if given) as its own."""
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
        self._place(parts, name, lambda leaf, parent: self._make_symlink(target, leaf, parent, mtime_ns))
        self._symlinks.append(parts)

    def _make_symlink(self, target: str, leaf: str, parent: int, mtime_ns: int | None) -> None:
        os.symlink(target, leaf, dir_fd=parent)
        if mtime_ns is not None:
            _set_mtime(leaf, mtime_ns, dir_fd=parent, follow_symlinks=False)
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
        linked = self._existing(target_parts, name)
        if linked is not None and stat.S_ISLNK(linked.st_mode):
            self.symlink(name, os.readlink(below, dir_fd=root), linked.st_mtime_ns)
            return
        self.count()
        if linked is None or not stat.S_ISREG(linked.st_mode):
            raise self.refuse(name, f"is a hard link to {quoted(target)}, which is not a file extracted before it")
        there = self._existing(parts, name)
        # Already that file (GNU tar writes `f` as a link to itself when `f` is named twice, and
        # `h` linked to `f` twice): done, as for tar, where replacing it would remove the target.
        if there is None or (there.st_dev, there.st_ino) != (linked.st_dev, linked.st_ino):
            self._place(parts, name, lambda leaf, parent: os.link(below, leaf, src_dir_fd=root, dst_dir_fd=parent,
                                                                  follow_symlinks=False))
        self._linked.update((parts, target_parts))

    def _existing(self, parts: tuple[str, ...], name: str) -> os.stat_result | None:
        """What is at ``parts`` (not followed), if its directory was made here and it exists."""
        if self._dir(parts[:-1], name, create=False) is None:
            return None
        try:
            return os.lstat(self._below(parts), dir_fd=self._root_fd)
        except FileNotFoundError:
            return None

    def finish(self) -> int | None:
        """Check where the symlinks lead now that the tree is complete; set the directories' modes
        and times.  Returns the bytes allocated to the tree below the root if the seal asked to
        measure them, else None."""
        # A target checked alone can still escape through symlinks extracted after it
        # (x -> . then a -> x/../escape), so resolve every link in the finished tree.
        links = _Links(self._root_fd)
        for parts in self._symlinks:
            if links.resolved(parts):
                continue
            try:
                if not stat.S_ISLNK(os.lstat(self._below(parts), dir_fd=self._root_fd).st_mode):
                    continue  # replaced by a later member
            except FileNotFoundError:
                continue
            if not links.inside(parts):
                target = os.readlink(self._below(parts), dir_fd=self._root_fd)
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


#: Where a path leads in a tree: its components below the root, and how many of the last of them
#: name nothing there (missing, below a file, or a link in a loop), which are taken by their text.
_Place = tuple[tuple[str, ...], int]


class _Walk:
    """One symlink's resolution under way: where its target has led so far, and the target's
    components still to follow, the next one last."""

    __slots__ = ("link", "pending", "position", "unfound")

    def __init__(self, link: tuple[str, ...], target: str) -> None:
        self.link = link
        self.position = list(link[:-1])
        self.unfound = 0
        self.pending = target.split("/")[::-1]

    def enter(self, place: _Place) -> None:
        self.position, self.unfound = list(place[0]), place[1]


class _Links:
    """Where the symlinks of the tree open as ``root_fd`` lead (targets relative to the link, as
    :meth:`SafeTree.symlink` makes them all), each link resolved once: one that
    leads through links resolved before takes where they lead as found then, so that the work is
    the sum of the targets' lengths, however many links lead into a chain (resolving each path
    alone walked the chain again for each of them).  Resolved iteratively, with no recursion
    (Python's ``os.path.realpath`` recursed for each link, and failed on a chain of 1,000).

    A path is resolved as the kernel resolves it, component by component, but to the end of
    any chain: the kernel gives up past 40 links (ELOOP), a program that resolves links itself
    may not, and none may find a way out of the tree.  What names nothing (a missing name, a name
    below a file, a link met again while it is being resolved: a loop) is taken by its text, a
    ``..`` after it removing it, as ``os.path.realpath`` takes it: a path whose text leads out of
    the tree so leads out too."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._places: dict[tuple[str, ...], _Place] = {}
        self._walks: list[_Walk] = []
        self._under_way: set[tuple[str, ...]] = set()

    def resolved(self, link: tuple[str, ...]) -> bool:
        """Whether the symlink at ``link`` was resolved already (on the way to another)."""
        return link in self._places

    def inside(self, link: tuple[str, ...]) -> bool:
        """Whether the symlink at ``link``, whose directories are real ones, leads to a place in
        the tree (or nowhere); False if its path climbs above the root."""
        self._start(link)
        while self._walks:
            walk = self._walks[-1]
            if not walk.pending:
                self._settle((tuple(walk.position), walk.unfound))
                continue
            part = walk.pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not walk.position:
                    self._walks.clear()
                    self._under_way.clear()
                    return False
                walk.position.pop()
                walk.unfound = max(walk.unfound - 1, 0)
                continue
            walk.position.append(part)
            if walk.unfound:
                walk.unfound += 1
                continue
            here = tuple(walk.position)
            try:
                mode = os.lstat(SafeTree._below(here), dir_fd=self._root_fd).st_mode
            except OSError:  # (a name too long for the file system, one below a file: none there)
                mode = 0
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISLNK(mode) or here in self._under_way:  # (a link under way: a loop)
                walk.unfound = 1
                continue
            walk.position.pop()
            if here in self._places:
                walk.enter(self._places[here])
            else:
                self._start(here)
        return True

    def _start(self, link: tuple[str, ...]) -> None:
        self._walks.append(_Walk(link, os.readlink(SafeTree._below(link), dir_fd=self._root_fd)))
        self._under_way.add(link)

    def _settle(self, place: _Place) -> None:
        """End the walk under way, which led to ``place``, and go on with the one that needed it."""
        walk = self._walks.pop()
        self._under_way.discard(walk.link)
        self._places[walk.link] = place
        if self._walks:
            self._walks[-1].enter(place)


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


def _start_of(stream: Stream, size: int, *, ended_by: tuple[type[Exception], ...] = ()) -> bytes:
    """The first ``size`` bytes of ``stream`` or more (it is read by the chunk); fewer where it
    ends sooner, or where a read raises ``ended_by``."""
    head = b""
    with contextlib.suppress(*ended_by):
        while len(head) < size and (data := stream.read(CHUNK)):
            head += data
    return head


def extract_tar(stream: Stream, dest: Path, ctx: Context) -> None:
    """Unpack the tar archive (of any compression) read from ``stream`` into ``dest``."""
    head = _start_of(stream, 64)  # magic numbers, past pzstd's first frame
    codec = sniff(head)
    archive: Stream = _Replay(head, stream)
    if codec is not None:
        # Decompression releases the GIL: in a thread of its own it runs beside the parsing and the
        # file creation here, on another core.  (Its thread is done with the stream at its end.)
        archive = Prefetch(decompressing(codec, archive, ctx.what, ctx.limit))
    made = None
    try:
        if codec is not None:
            # What the compression holds, read here so that a decompressor's error comes as its
            # own: the parser's first header is then read from these bytes alone.
            head = _start_of(archive, BLOCK)
            archive = _Replay(head, archive)
        reader = TarReader(archive, ctx.what, compressed=codec)
        with SafeTree(dest, ctx) as made:
            _extract_members(_tar_members(reader), functools.partial(_extract_tar_member, reader), made, ctx)
    except CorruptDataError:
        # Damaged compressed data may decompress to garbage before its checksum says so (bzip2
        # checks a block's at its end): that damage is the failure to report.
        damaged = _damage_past(archive, codec) if codec is not None else None
        if damaged is not None:
            raise damaged from None
        # Not a tar at all (a page a server sent in place of the file, a compressed file that is
        # no archive...): say what it is.
        other = what_data_is(head) if made is not None and not made.entries else None
        if other is not None and other != "a tar archive":
            raise _something_else(ctx.what, "tar", other, compressed=codec) from None
        raise
    finally:
        archive.close()


#: Decompressed bytes read on past a tar header that is not one, for the decompressor to check
#: what it gave: a bzip2 block's checksum comes at its end, and a damaged block can decompress to
#: 46 MB of garbage first (900 kB before its runs are expanded, 51 times at most); the other codecs
#: find most damage where it is.
_CHECKED_ON = {"bzip2": 48 << 20}
_CHECKED_ON_ELSE = 1 << 20


def _damage_past(archive: Stream, codec: str) -> LoaderError | None:
    """The error of damaged data (the decompressor's, or the checksum's below it) if reading on in
    ``archive``, compressed with ``codec``, as far as :data:`_CHECKED_ON` says (or to its end)
    meets one."""
    left = _CHECKED_ON.get(codec, _CHECKED_ON_ELSE)
    try:
        while left > 0 and (data := archive.read(min(left, CHUNK))):
            left -= len(data)
    except (CorruptDataError, ChecksumError) as error:
        return error
    except (SharedCacheError, OSError):  # a limit, the network: the tar's own failure is the one to say
        pass
    return None


def _something_else(what: str, word: str, other: str, *, compressed: str | None = None) -> CorruptDataError:
    """The refusal of ``what``, given to ``word`` (``tar``, ``zip``), which is ``other`` ("a zip
    archive"), or holds it compressed with the codec ``compressed``: it names the words that
    read it, if known."""
    kind = other if compressed is None else f"{compressed} data of {other}"
    return CorruptDataError(f"cannot unpack {what} as a {word} archive: it is {kind}"
                            f"{instead(other, compressed=compressed)}")


def _extract_members(members: Iterable[_M], extract: Callable[[_M, SafeTree | WriterProcess], None],
                     tree: SafeTree, ctx: Context) -> None:
    """Unpack ``members`` with ``extract`` into ``tree``; past the first ones, in writer processes
    (see :mod:`sharedcache.loaders.writer`), which wait for no more than ``ctx.deadline``, when the
    archive turns out to have many."""
    from . import writer

    target: SafeTree | writer.WriterProcess = tree
    try:
        for count, member in enumerate(members):
            if count == writer.SERIAL_MEMBERS and writer.available() and writer.worth_forking(tree):
                try:
                    # Known here before it forks: if a signal cuts in, abandon() stops what it forked.
                    target = writer.WriterProcess(tree, ctx.what, ctx.deadline, ctx.warning)
                    target.start()
                except OSError:  # no process to be had: one will do
                    target = tree
            extract(member, target)
        target.finish()
    except BaseException as failure:
        if isinstance(target, writer.WriterProcess):
            raise target.abandon(failure) from None
        raise


def _tar_members(reader: TarReader) -> Iterator[TarMember]:
    """The members ``reader`` reads, then the end of the compressed stream too, so that its trailer
    (CRC, length) is checked."""
    while (member := reader.next()) is not None:
        yield member
    reader.drain()


#: The types of the members that are not files, which GNU tar does not make files of either, refused
#: with what they are.
_REFUSED_TYPES = {b"3": "a device file", b"4": "a device file", b"6": "a FIFO",
                  b"M": "the rest of a file begun in the volume before (a volume of a multi-volume archive, "
                        "tar -M, which is not supported)"}


def _extract_tar_member(reader: TarReader, member: TarMember, tree: SafeTree | WriterProcess) -> None:
    name, kind = member.name, member.kind
    if kind == REGULAR and member.size >= 0:  # base-256 and pax sizes can be negative
        tree.write_file(name, member.size, member.mode, member.mtime_ns, reader.take)
    elif kind == DIRECTORY:
        tree.mkdir(name, member.mode, member.mtime_ns)
    elif kind == SYMLINK:
        tree.symlink(name, member.linkname, member.mtime_ns)
    elif kind == HARDLINK:
        tree.hardlink(name, member.linkname)
    elif kind == VOLUME_LABEL:
        pass  # GNU tar passes over it too; its name is the label, not a path
    elif kind in _REFUSED_TYPES or member.size < 0:
        tree.parts(name)  # a name that leaves the tree is refused for that first, as with any member
        why = f"is {_REFUSED_TYPES[kind]}" if kind in _REFUSED_TYPES else f"has a negative size ({member.size})"
        raise tree.refuse(name, why)
    else:
        # A member of a type that GNU tar does not know (Solaris' ACLs "A" and extended
        # attributes "E", star's "I"...), of which GNU tar makes a file, warning, as tarfile does
        # (the reader passed its data on); the member that follows for the same name, the file
        # or the directory that an ACL was for, replaces it.
        tree.write_replaceable_file(name, member.size, member.mode, member.mtime_ns, reader.take)


# --- zip ------------------------------------------------------------------------------------------


def extract_zip(stream: Stream, dest: Path, ctx: Context) -> None:
    """Unpack the zip archive read from ``stream`` into ``dest``, spooling it in ``ctx.work``."""
    from .ziparchive import ZipReader

    spool = ctx.work / "unzip.spool"
    try:
        with open(spool, "wb", opener=opener) as out:
            while data := stream.read(CHUNK):
                out.write(data)
        if _zip_entries(spool) > MAX_ENTRIES:
            raise UnsafeArchiveError(f"unsafe archive {ctx.what}: more than {MAX_ENTRIES} members")
        with open(spool, "rb") as file:
            try:
                reader = ZipReader(file.fileno(), ctx.what)
            except CorruptDataError:
                head = file.read(BLOCK)
                codec = sniff(head)
                inner = what_data_is(_decompressed_head(codec, file, ctx.what)) if codec is not None else None
                if inner is not None:  # compressed, and what it holds is known
                    raise _something_else(ctx.what, "zip", inner, compressed=codec) from None
                other = what_data_is(head)
                if other is not None and other != "a zip archive":
                    raise _something_else(ctx.what, "zip", other) from None
                raise
            with SafeTree(dest, ctx) as tree:
                _extract_members(_checked(reader, os.fstat(file.fileno()).st_size, ctx.what, ctx.limit),
                                 functools.partial(_extract_zip_member, reader), tree, ctx)
    except OSError as e:  # said before the spool's removal gives an inode back
        full = no_space_for(ctx.what, e, str(dest), ctx.written)
        if full is not None:
            raise full from None
        raise
    finally:
        spool.unlink(missing_ok=True)


def _decompressed_head(codec: str, file: IO[bytes], what: str) -> bytes:
    """The first bytes that the ``codec`` data of ``file`` decompress to, enough to say what they
    are (:func:`what_data_is`); fewer, or none, where the data cannot be decompressed that far."""
    file.seek(0)
    return _start_of(decompressing(codec, file, what, None), BLOCK, ended_by=(LoaderError,))


def _zip_entries(path: Path) -> int:
    """How many records the central directory of the zip at ``path`` holds, counted up to
    ``MAX_ENTRIES + 1``; 0 if it cannot be found (unpacking then says why)."""
    from .ziparchive import ZipReader

    with open(path, "rb") as file:
        try:
            return ZipReader(file.fileno(), str(path)).count(MAX_ENTRIES + 1)
        except CorruptDataError:
            return 0


def _checked(reader: ZipReader, size: int, what: str, limit: int | None) -> Iterator[ZipMember]:
    """The members of the zip archive of ``size`` bytes that ``reader`` reads, with two sums
    checked against that size as they come: their declared sizes (at which each stops; ``limit``
    is the size allowed, see :func:`.codecs.check_expansion`), and their compressed data.
    Members that do not overlap fit in the archive; ones that share their data (the trick of the
    zip bombs that expand millions of times, with each member under the bomb limits) add up to
    more.  It takes no memory, where sorting the members' places would."""
    declared = compressed = 0
    for member in reader.members():
        declared += member.file_size
        compressed += member.compress_size
        if compressed > size:
            raise UnsafeArchiveError(
                f"unsafe archive {what}: its members overlap (their compressed data add up to "
                f"{format_size(compressed)} by {quoted(member.name)}, in an archive of {format_size(size)}), "
                "a likely decompression bomb")
        check_expansion(declared, size, what, limit)
        yield member


def _extract_zip_member(reader: ZipReader, member: ZipMember, tree: SafeTree | WriterProcess) -> None:
    name = member.name
    tree.parts(name)  # a name that leaves the tree is refused for that first, whatever the member
    kind = stat.S_IFMT(member.unix_mode)
    is_dir = name.endswith("/")
    mode = stat.S_IMODE(member.unix_mode) or (0o755 if is_dir else 0o644)
    local_extra, data_start = reader.local_header(member)
    mtime_ns = reader.mtime_ns(member, local_extra)
    if is_dir:  # whatever the mode's type, as unzip reads it (some tools write S_IFREG there)
        tree.mkdir(name, mode, mtime_ns)
    elif kind == stat.S_IFLNK:
        if member.file_size > 4096:
            raise tree.refuse(name, "is a symlink with an implausibly long target")
        target = reader.open(member, data_start)(member.file_size)
        tree.symlink(name, target.decode("utf-8", "surrogateescape"), mtime_ns)
    elif kind in (0, stat.S_IFREG, stat.S_IFDIR):  # a directory's type without the "/": unzip makes a file
        tree.write_file(name, member.file_size, mode, mtime_ns, reader.open(member, data_start))
    else:
        kinds = {stat.S_IFCHR: "device file", stat.S_IFBLK: "device file", stat.S_IFIFO: "FIFO"}
        raise tree.refuse(name, f"is a {kinds.get(kind, 'special file')}")
