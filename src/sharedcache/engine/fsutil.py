"""Crash-safe file-system primitives shared by the engine and the repositories.

* :func:`write_atomic`: a file is written under a temporary name, flushed with ``fsync`` and
  renamed into place, so after a crash its path holds either the old or the new content, never
  a mix or a truncated file.
* :func:`sync_tree`: makes a finished directory tree durable before it is committed, waiting
  for other writers' data only when the tree is large.
* :func:`disk_usage`: what a tree occupies (allocated blocks, each inode once), the unit of every
  size budget; a :class:`Seal` lets the filler of a tree measure it as it makes it instead.
* :func:`remove_tree`: deletes a tree, restoring write permission only on what it removes, and
  tolerating a concurrent remover of the same tree; it can spare the directories its caller
  says must stay, and what holds them.

Both walks change the modes of what they walk (the seal, the removal), so both enter a directory
of this user's that its modes close to its owner (000, 0300: as a filler may leave one) by
giving it the owner's bits first (:func:`open_own_directory`); another user's stays closed.

Trees are walked by :func:`walk`: iteratively (any depth), relative to directory descriptors
opened with ``O_NOFOLLOW|O_DIRECTORY``, never following a symlink, so that a link planted or
swapped in anywhere (by an archive, or by another member of a group cache) makes no walk act
outside the tree it was given.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from ..errors import LeasedError
from ..modes import chmod_nofollow, taken

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def unique_name(prefix: str = "") -> str:
    """A name no other process will pick (random, not derived from pid or time)."""
    return prefix + os.urandom(12).hex()


#: What names a file or directory being made under a temporary name: ``.<name>.tmp-<random>``.
_TEMP_INFIX = ".tmp-"
#: Age past which something under a temporary name is a leftover of a process that ended between
#: making it and renaming or linking it into place (an instant otherwise): gc removes it.
LEFTOVER_SECONDS = 3600.0


def temp_beside(path: str | os.PathLike[str]) -> str:
    """A fresh temporary name in the directory of ``path``, hidden, naming what it will become;
    one left behind is a leftover (:func:`remove_leftovers`)."""
    head, tail = os.path.split(os.fspath(path))
    return os.path.join(head, unique_name(f".{tail}{_TEMP_INFIX}"))


def shown_path(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> str:
    """``path`` (relative to the directory open as ``dir_fd``, if given) as a user knows it: one
    through a directory this process holds open (``/proc/self/fd/N/...``, as the engine names
    what may be swapped) from that directory's path.  For messages only: the path shown is no
    safer to follow than any other."""
    text = os.fspath(path)
    if dir_fd is not None and not os.path.isabs(text):
        text = f"/proc/self/fd/{dir_fd}/{text}"
    fd, slash, rest = text.removeprefix("/proc/self/fd/").partition("/")
    if text.startswith("/proc/self/fd/") and fd.isdigit():
        try:
            return os.readlink(f"/proc/self/fd/{fd}") + slash + rest
        except OSError:
            pass  # closed meanwhile: the path is all there is to show
    return text


def _is_leftover(name: str, status: os.stat_result, now: float) -> bool:
    """Whether ``name`` (a file or directory whose ``status`` this is) is a temporary name of
    :func:`temp_beside` that its maker left behind ``LEFTOVER_SECONDS`` ago or more."""
    return (name.startswith(".") and _TEMP_INFIX in name and stat.S_IFMT(status.st_mode) in (stat.S_IFREG, stat.S_IFDIR)
            and now - status.st_mtime > LEFTOVER_SECONDS)


def remove_leftovers(directory: str, prefix: str = ".") -> int:
    """Remove the leftovers (:func:`_is_leftover`) in ``directory`` whose names start with
    ``prefix``: files, and directories that are still empty; return how many.  Whatever else
    is there, or cannot be removed by this user (another member's, in a sticky directory), is
    left alone."""
    import time  # (loaded already: the engine's locks use it)

    now, removed = time.time(), 0
    with os.scandir(directory) as entries:
        found = [entry for entry in entries if entry.name.startswith(prefix)]
    for entry in found:
        try:
            status = entry.stat(follow_symlinks=False)
            if not _is_leftover(entry.name, status, now):
                continue
            if stat.S_ISDIR(status.st_mode):
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:  # gone meanwhile, not empty, or not this user's to remove
            continue
        removed += 1
    return removed


def rename_noreplace(source: str, target: str, *, dir_fd: int | None = None) -> None:
    """Rename ``source`` to ``target`` (both relative to ``dir_fd`` if given) unless something is
    at ``target``: FileExistsError then, where ``os.rename`` would replace an empty directory.
    OSError with EINVAL (or ENOSYS) where the file system (or the C library) cannot do it."""
    import ctypes  # only what makes a directory of a group cache needs it

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", target)
    at = -100 if dir_fd is None else dir_fd  # AT_FDCWD
    if renameat2(at, os.fsencode(source), at, os.fsencode(target), 1) != 0:  # 1: RENAME_NOREPLACE
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename); the file
    gets exactly ``mode``, whatever the umask.

    With ``durable`` false nothing is flushed: the replacement is still atomic for every
    process, but a power loss may leave the old content or an empty file.
    """
    tmp = temp_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)
    try:
        if taken(mode):
            os.fchmod(fd, mode)
        written = 0
        while written < len(data):  # a short write (at ``ulimit -f``, or a full disk) ends in the error
            written += os.write(fd, data[written:])
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # renamed: an interrupt (KeyboardInterrupt) came as the rename returned
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def create_exclusive(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` (with ``mode``) unless it exists; return whether this
    call created it.

    The content is complete before the name appears (written aside, then hard-linked), so a
    concurrent reader sees either no file or the whole file.
    """
    tmp = temp_beside(path)
    write_atomic(tmp, data, mode=mode)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def open_unleased(path: str | os.PathLike[str], flags: int, mode: int = 0o777, *, dir_fd: int | None = None,
                  until: float | None = None) -> int:
    """``os.open`` of ``path`` with ``flags``, ``O_NONBLOCK`` among them, where a file that its
    owner holds under a file lease (``fcntl F_SETLEASE``, which any file's owner may take: another
    member of a group cache) is tried again until ``until`` (a ``time.monotonic()``; None: not
    at all), then refused with :class:`LeasedError` naming it.  The refused open has the kernel
    break the lease, within ``/proc/sys/fs/lease-break-time`` seconds unless its holder gives it
    up sooner; a blocking open would wait that long, whatever its caller's timeout."""
    pause = 0.001
    while True:
        try:
            return os.open(path, flags, mode, dir_fd=dir_fd)
        except BlockingIOError:
            left = 0.0 if until is None else until - time.monotonic()
            if left <= 0:
                raise leased(path, dir_fd=dir_fd) from None
            time.sleep(min(pause, left))
            pause = min(2 * pause, 0.05)


def leased(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> LeasedError:
    """The error for ``path`` (relative to ``dir_fd``), whose open that must not wait was refused
    (``BlockingIOError``): its owner holds it under a file lease."""
    return LeasedError(f"{shown_path(path, dir_fd=dir_fd)} is held under a file lease by another process "
                       "(its owner's): cannot open it now; the kernel breaks a lease within "
                       "/proc/sys/fs/lease-break-time seconds, then a retry opens it")


def read_control(path: str | os.PathLike[str], limit: int = 4096, *, dir_fd: int | None = None,
                 until: float | None = None) -> bytes | None:
    """The first ``limit`` bytes of the control file ``path``, or None if it is not a regular
    file (a symlink, a FIFO, a directory: never followed, opened for good or waited on).
    FileNotFoundError if there is nothing; :class:`LeasedError` if it is held under a file
    lease until ``until`` (see :func:`open_unleased`)."""
    try:
        fd = open_unleased(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd,
                           until=until)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENOTDIR):
            return None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return None
        # A buffer of the file's size, not of the limit: a read of up to 1 MiB (an entry's
        # metadata) would map and fault in a whole 1 MiB buffer at every warm use.
        return os.read(fd, min(limit, max(status.st_size, 4096)))
    finally:
        os.close(fd)


#: A tree of at most this many files and directories below its root is flushed one inode at a
#: time; a larger one by a flush of its whole file system.  See :func:`sync_tree`.
SCOPED_FLUSH_ENTRIES = 16


def sync_tree(directory: int) -> None:
    """Flush the directory open as ``directory`` and everything below it to stable storage.

    A small tree (at most :data:`SCOPED_FLUSH_ENTRIES` files and directories: an entry of a
    file or a few, with its metadata) is flushed inode by inode with ``fsync``, which waits for
    its own data only.  A larger one, or one holding anything but files and directories (a
    symlink's inode cannot be opened to be flushed), gets one :func:`flush_file_system`: far
    cheaper than an ``fsync`` per file of a tree of thousands of files, at the price of also
    writing out, and waiting for, every other writer's dirty data on that file system.
    """
    inodes = _small_tree(directory)
    if inodes is None:
        flush_file_system(directory)
        return
    try:
        for fd in inodes:
            os.fsync(fd)
        os.fsync(directory)
    finally:
        for fd in inodes:
            os.close(fd)


def _small_tree(root: int) -> list[int] | None:
    """Descriptors of the files and directories below ``root``, for :func:`sync_tree`; None
    (nothing left open) if there are more than :data:`SCOPED_FLUSH_ENTRIES`, anything else, or
    anything that cannot be opened.  Listing stops at the first entry too many, so a large
    tree costs a few dozen system calls here."""
    opened: list[int] = []
    unlisted = [root]
    try:
        while unlisted:
            parent = unlisted.pop()
            with os.scandir(parent) as entries:
                for entry in entries:
                    if len(opened) == SCOPED_FLUSH_ENTRIES:
                        raise _NotSmall
                    if entry.is_dir(follow_symlinks=False):
                        fd = open_directory(entry.name, dir_fd=parent)
                        opened.append(fd)
                        unlisted.append(fd)
                    elif entry.is_file(follow_symlinks=False):
                        fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                     dir_fd=parent)
                        opened.append(fd)
                        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since it was listed
                            raise _NotSmall
                    else:
                        raise _NotSmall
        return opened
    except (_NotSmall, OSError):
        for fd in opened:
            os.close(fd)
        return None


class _NotSmall(Exception):
    """A tree that :func:`sync_tree` flushes as a whole file system."""


def flush_file_system(directory: int) -> None:
    """``syncfs(2)`` of the file system holding the directory open as ``directory``."""
    import ctypes  # only a store needs it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(directory) != 0:
        raise OSError(ctypes.get_errno(), "syncfs failed")


def sealed_mode(mode: int) -> int:
    """The mode that sealing gives a file of mode ``mode``: readable by everyone, writable by
    nobody, executable by everyone if by anyone."""
    return 0o555 if mode & 0o111 else 0o444


#: The mode that sealing gives a directory.
SEALED_DIRECTORY = 0o555

#: File systems whose count of a file's blocks, read when its last write returns, is what the
#: file holds once flushed.  tmpfs has no write-back (but its files may take huge pages, which
#: the kernel splits later: see _huge_pages).  ext4 counts the blocks that delayed
#: allocation reserves, and allocates that many (a file written whole in few pieces needs no
#: extent block), but its write-back lowers the reservation before it raises the allocation:
#: a count read in between falls short, so an unpacker counts a file as at least its size in
#: whole blocks, unless its inode holds its data (inline_data).  xfs counts the blocks it
#: preallocates past the end of a file being written, and btrfs what compression and inline
#: extents will change: those are walked.
_COUNTED_AT_WRITE = frozenset({"tmpfs", "ext4"})


class Seal:
    """A tree sealed and measured by the filler that makes it, so that the commit need not walk it.

    The commit's walk (:func:`disk_usage` with ``seal``) costs a ``stat`` of every inode once the
    data is complete: about 0.2 s for 50,000 files, after the unpack and before the commit can
    end.  An unpacker holds each file open when it has written it, and an ``fstat`` there costs
    less, beside the work of reading the archive.

    A filler given a seal seals what it makes: each regular file gets :meth:`file_mode` of its
    mode, each directory :data:`directory_mode` once it is complete.  If :attr:`measure` is set,
    it also counts the blocks (``st_blocks`` times 512) of every inode it makes, hard links
    once, read after it last changed each, a regular file written whole as at least its size in
    whole blocks of the file system unless its inode holds its data (a count read while ext4
    writes the file back falls short: see :data:`_COUNTED_AT_WRITE`), and when the tree is
    complete sets :attr:`allocated`.  Where :attr:`by_size` is set too (a tmpfs without huge
    pages, where a regular file written whole holds its size in whole blocks and no more), the
    filler may count such a file so without reading it, but reads a sample of them, and counts
    nothing (leaves :attr:`allocated` None) if one holds other than that.
    By setting it, the filler vouches that it made everything below the data directory, and
    sealed it.
    :meth:`apply` takes that count where the file system's counts can be read at write
    (:func:`counts_blocks_at_write`) and walks the tree otherwise, as it does without a seal.
    (The loaders know it as the ``Sealing`` of their protocol, and it is the repository that
    hands it from the one to the other.)
    """

    file_mode = staticmethod(sealed_mode)
    directory_mode = SEALED_DIRECTORY

    def __init__(self, *, measure: bool, by_size: bool = False) -> None:
        self.measure = measure
        self.by_size = measure and by_size
        self.allocated: int | None = None

    @classmethod
    def for_file_system(cls, fd: int) -> Seal:
        """The seal for a filler of a tree on the file system of the file open as ``fd``: measuring
        where that counts a file's blocks when its last write returns
        (:func:`counts_blocks_at_write`), and by their size where it is a tmpfs (then one
        without huge pages)."""
        mount = _mount_of(fd)
        if mount is None or not _counts_at_write(*mount):
            return cls(measure=False)
        return cls(measure=True, by_size=mount[0] == "tmpfs")

    def apply(self, path: str, *, dir_fd: int) -> int:
        """Seal the complete tree at ``path`` (relative to ``dir_fd``) and return the bytes allocated
        to it: the filler's count and the root's blocks, or what :func:`disk_usage` finds."""
        if self.allocated is None or not counts_blocks_at_write(dir_fd):
            return disk_usage(path, seal=SEALED_DIRECTORY, dir_fd=dir_fd)
        root = open_own_directory(path, dir_fd=dir_fd)
        try:
            os.fchmod(root, SEALED_DIRECTORY)
            return os.fstat(root).st_blocks * 512 + self.allocated
        finally:
            os.close(root)


#: File systems on a disk of this machine: what a process writes waits in this kernel's page
#: cache until it is written back, so every process of this boot reads it whole, flushed or not,
#: and a power loss or a crash of the kernel (which ends the boot) is all that can lose it; no
#: other host mounts them.  Network and cluster file systems (nfs, cifs, ceph, lustre, gpfs,
#: gfs2, ocfs2, fuse...) are not here: another host's kernel may read what this one has not
#: written back yet.
LOCAL_DISKS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs",
                         "zfs", "overlay"})

#: File systems without a disk: a flush has nothing to write back, and what they hold ends with
#: the boot of the machine.
IN_MEMORY = frozenset({"tmpfs", "ramfs"})


def file_system_type(fd: int) -> str | None:
    """The type of the file system of the file open as ``fd`` ("ext4", "tmpfs"...), as the mount
    table names it (found by device number); None if that cannot be told."""
    mount = _mount_of(fd)
    return None if mount is None else mount[0]


def _mount_of(fd: int) -> tuple[str, str] | None:
    """The type and the options of the file system of the file open as ``fd``, as the mount table
    gives them (found by device number); None if it is not there."""
    from ..mounts import mounts  # a store, an eviction or a refused use: never a warm use

    device = os.fstat(fd).st_dev
    number = f"{os.major(device)}:{os.minor(device)}"
    return next(((kind, options) for found, _, _, kind, options in mounts() if found == number), None)


def counts_blocks_at_write(fd: int) -> bool:
    """Whether the file system of the file open as ``fd`` counts a file's blocks, when its last
    write returns, as it will once flushed (one of :data:`_COUNTED_AT_WRITE`, but a tmpfs whose
    files take huge pages); False if that cannot be told."""
    mount = _mount_of(fd)
    return mount is not None and _counts_at_write(*mount)


def _counts_at_write(kind: str, options: str) -> bool:
    return kind in _COUNTED_AT_WRITE and not (kind == "tmpfs" and _huge_pages(options))


#: The kernel's policy of huge pages for tmpfs: "force" gives them to every mount, whatever its
#: ``huge=`` option.
_SHMEM_HUGE_PAGES = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


def _huge_pages(options: str) -> bool:
    """Whether the files of a tmpfs mounted with ``options`` may take huge pages: with a ``huge=``
    option but ``never``, or where the kernel forces them.  Such a file may hold 2 MiB from its
    first byte (on ``huge=always``, a file of 4.6 KB does), until the kernel splits the pages past
    its end (when the file system is full, or memory short): a count of its blocks holds only
    until then."""
    if any(option.startswith("huge=") and option != "huge=never" for option in options.split(",")):
        return True
    try:
        with open(_SHMEM_HUGE_PAGES) as policy:
            return "[force]" in policy.read()
    except OSError:  # no huge pages in this kernel, or no /sys here
        return False


def disk_usage(
    path: str | os.PathLike[str], *, seal: int | None = None, dir_fd: int | None = None
) -> int:
    """Bytes allocated to the tree at ``path``: the blocks of every inode in it, hard links once.

    With ``seal`` (a directory mode, 0o555), the same walk also gives the files their
    :func:`sealed_mode` and the directories that mode, entering those of this user's that are
    closed to their owner (:func:`open_own_directory`).
    Committed data is sealed so that no job can change what another reads; whoever deletes it
    restores write permission on what it removes (:func:`remove_tree`).  The walk never follows
    a symlink, the tree's own root included: a link swapped in anywhere is counted as a link
    and left alone.
    """
    opener = open_directory if seal is None else open_own_directory  # (a mere count changes no mode)
    root = opener(path, dir_fd=dir_fd)
    try:
        total = os.fstat(root).st_blocks * 512
        seen: set[tuple[int, int]] = set()

        def enter(directory: int, name: str) -> int | None:
            nonlocal total
            try:
                st = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    return None
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                return opener(name, dir_fd=directory)
            if seal is not None and stat.S_ISREG(st.st_mode):
                mode = sealed_mode(st.st_mode)
                if stat.S_IMODE(st.st_mode) != mode:  # an unpacker may have given it already
                    chmod_nofollow(name, mode, dir_fd=directory, kind=stat.S_IFREG)
            return None

        def leave(_parent: int, _name: str, directory: int) -> None:
            if seal is not None:
                os.fchmod(directory, seal)

        walk(root, enter, leave)
        if seal is not None:
            os.fchmod(root, seal)
        return total
    finally:
        os.close(root)


def remove_tree(
    path: str | os.PathLike[str], *, dir_fd: int | None = None, spare: Callable[[int], bool] | None = None
) -> bool:
    """Delete the tree at ``path`` (relative to ``dir_fd`` if given); missing parts (a
    concurrent remover) are not an error.

    The walk never follows a symlink (one found anywhere, ``path`` included, is removed as a
    link) and never recurses, so any depth can be removed.  Read-only directories inside the
    tree (committed data is read-only) are made writable first, but only those being removed,
    and so are this user's directories closed to their owner (:func:`open_own_directory`).
    Raises PermissionError for a tree that this user may not delete (another member's, in a
    group cache).

    ``spare(directory)``, asked of each directory of the tree (``path`` included) through the
    descriptor that the walk opened it by, before anything in it changes, says whether it
    stays: it is left whole, and so are the directories that hold it, the rest of the tree
    removed in the same walk.  Returns whether the tree is gone (False: something was spared).
    """
    try:
        os.unlink(path, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        pass
    try:
        root = open_own_directory(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    except NotADirectoryError:  # swapped for a link or a file meanwhile: remove that
        unlink_if_present(path, dir_fd=dir_fd)
        return True
    spared = False
    try:
        if spare is not None and spare(root):
            return False
        _make_writable(root)

        def enter(directory: int, name: str) -> int | None:
            try:
                os.unlink(name, dir_fd=directory)
                return None
            except FileNotFoundError:
                return None
            except IsADirectoryError:
                pass
            try:
                child = open_own_directory(name, dir_fd=directory)
            except FileNotFoundError:
                return None
            except NotADirectoryError:
                unlink_if_present(name, dir_fd=directory)
                return None
            nonlocal spared
            try:
                if spare is not None and spare(child):
                    spared = True
                    os.close(child)
                    return None
                _make_writable(child)
            except BaseException:
                os.close(child)
                raise
            return child

        def leave(parent: int, name: str, _directory: int) -> None:
            _remove_directory(name, parent, holds_spared=spared)

        walk(root, enter, leave)
    except FileNotFoundError:
        return True  # a concurrent remover took the tree from under this walk
    finally:
        os.close(root)
    _remove_directory(path, dir_fd, holds_spared=spared)
    return not spared


def _remove_directory(path: str | os.PathLike[str], dir_fd: int | None, *, holds_spared: bool) -> None:
    """Remove the directory ``path`` that a walk of :func:`remove_tree` emptied; gone already is
    fine, and so, once the walk has spared something (``holds_spared``), is one not empty: it
    may hold what was spared."""
    try:
        os.rmdir(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        if not (holds_spared and e.errno in (errno.ENOTEMPTY, errno.EEXIST)):
            raise


def _make_writable(fd: int) -> None:
    # Only an owner can chmod; in a group cache another member's tree stays as it is.
    st = os.fstat(fd)
    if st.st_mode & stat.S_IRWXU != stat.S_IRWXU and st.st_uid == os.geteuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


#: Flags that open a directory, never through a symlink.
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directory descriptors a walk keeps open; below that depth it climbs back with "..", checked.
_OPEN_LEVELS = 48


def open_directory(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open the directory ``path`` (relative to ``dir_fd`` if given) without following a symlink
    at its last component: NotADirectoryError if it is a link or anything but a directory."""
    try:
        return os.open(path, DIRECTORY, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotADirectoryError(errno.ENOTDIR, "a symlink, not a directory", os.fspath(path)) from None
        raise


def open_own_directory(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """:func:`open_directory`, for a walk that changes modes: a directory of this user's that its
    own modes keep its owner from reading (000, 0300) is given the owner's read, write and search
    bits, then opened.  Another user's stays as it is (PermissionError).

    The directory is reached once, as a mere path reference (``O_PATH``, which needs no
    permission on it) that is no symlink; its type and owner are checked on what was opened,
    its mode changed through ``/proc/self/fd`` (the inode itself), and it is opened again from
    that reference: nothing swapped in at ``path`` meanwhile is changed or opened."""
    try:
        return open_directory(path, dir_fd=dir_fd)
    except PermissionError as e:
        refused = e
    # (A link or a file swapped in meanwhile: NotADirectoryError, as open_directory says it.)
    reference = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        status = os.fstat(reference)
        if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.geteuid():
            raise refused
        os.chmod(f"/proc/self/fd/{reference}", stat.S_IMODE(status.st_mode) | stat.S_IRWXU)
        return os.open(".", DIRECTORY, dir_fd=reference)
    finally:
        os.close(reference)


def walk(root: int, enter: Callable[[int, str], int | None], leave: Callable[[int, str, int], None]) -> None:
    """Walk the tree below the directory open as ``root``, depth first, iteratively.

    ``enter(directory, name)`` is called for each entry of each directory (``directory`` is a
    descriptor): it returns the opened descriptor of a subdirectory to walk into (the walk then
    owns it), or None.  ``leave(parent, name, directory)`` is called when the subdirectory
    ``name`` of ``parent`` has been walked, before ``directory`` is closed.  Only the top
    levels keep their descriptors open; deeper ones are reached again through ``..``, checked
    to be the directory the walk came from (else OSError: the tree was moved under the walk).
    """
    st = os.fstat(root)
    # One level: [descriptor or None, (dev, ino), names not yet entered, its name in its parent]
    stack: list[list[Any]] = [[root, (st.st_dev, st.st_ino), os.listdir(root), ""]]
    try:
        while True:
            level = stack[-1]
            fd: int = level[0]
            if level[2]:
                name = level[2].pop()
                child = enter(fd, name)
                if child is None:
                    continue
                try:
                    cst = os.fstat(child)
                    names = os.listdir(child)
                except BaseException:
                    os.close(child)
                    raise
                if len(stack) > _OPEN_LEVELS:
                    # Forgotten before it is closed, here and below: an interrupt between the two
                    # then leaks a descriptor, where the other order would close it twice (the
                    # second time, whatever file has reused its number).
                    level[0] = None
                    os.close(fd)
                stack.append([child, (cst.st_dev, cst.st_ino), names, name])
                continue
            if len(stack) == 1:
                return
            parent = stack[-2]
            if parent[0] is None:
                up = os.open("..", DIRECTORY, dir_fd=fd)
                ust = os.fstat(up)
                parent[0] = up
                if (ust.st_dev, ust.st_ino) != parent[1]:
                    raise OSError(errno.ESTALE, "directory moved during a walk", level[3])
            leave(parent[0], level[3], fd)
            stack.pop()
            os.close(fd)
    finally:
        for level in stack[1:]:
            if level[0] is not None:
                os.close(level[0])


def create_empty(path: str, *, exclusive: bool = False, mode: int = 0o600, dir_fd: int | None = None) -> None:
    """Create the empty file ``path`` (a flag, or with ``exclusive`` a lease; relative to
    ``dir_fd`` if given), never through a symlink, and never opening a FIFO found there for good."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
    fd = os.open(path, flags, mode & 0o777, dir_fd=dir_fd)
    try:
        if taken(mode):
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def unlink_if_present(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> None:
    """Delete the file ``path``; that it is gone already (another process was first) is fine."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
