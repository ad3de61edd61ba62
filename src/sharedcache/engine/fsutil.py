"""Crash-safe file-system primitives shared by the engine and the repositories.

* :func:`write_atomic`: a file is written under a temporary name, flushed with ``fsync`` and
  renamed into place, so after a crash its path holds either the old or the new content, never
  a mix or a truncated file.
* :func:`sync_tree`: makes a finished directory tree durable before it is committed.
* :func:`disk_usage`: what a tree occupies (allocated blocks, each inode once), the unit of every
  size budget.
* :func:`remove_tree`: deletes a tree, restoring write permission only on what it removes, and
  tolerating a concurrent remover of the same tree.
"""

from __future__ import annotations

import os
import stat


def unique_name(prefix: str = "") -> str:
    """A name no other process will pick (random, not derived from pid or time)."""
    return prefix + os.urandom(12).hex()


def _temp_beside(path: str | os.PathLike[str]) -> str:
    """A fresh temporary name in the directory of ``path``, hidden, naming what it will become."""
    head, tail = os.path.split(os.fspath(path))
    return os.path.join(head, unique_name(f".{tail}.tmp-"))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o666, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename).

    With ``durable`` false nothing is flushed: the replacement is still atomic for every
    process, but a power loss may leave the old content or an empty file.
    """
    tmp = _temp_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
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
        os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def create_exclusive(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; return whether this call created it.

    The content is complete before the name appears (written aside, then hard-linked), so a
    concurrent reader sees either no file or the whole file.
    """
    tmp = _temp_beside(path)
    write_atomic(tmp, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def sync_tree(path: str | os.PathLike[str]) -> None:
    """Flush everything written below ``path`` to stable storage.

    One ``syncfs(2)`` of the file system holding ``path`` costs far less than an ``fsync`` per
    file of a tree of thousands of files; the price is that it also flushes other writers' dirty
    data on that file system.
    """
    import ctypes  # only a store needs it

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed", str(path))
    finally:
        os.close(fd)


def disk_usage(path: str | os.PathLike[str], *, seal: int | None = None) -> int:
    """Bytes allocated to the tree at ``path``: the blocks of every inode in it, hard links once.

    With ``seal`` (a directory mode, 0o555 in a private cache), the same walk also makes the
    files read-only and readable for everyone (0444, or 0555 if executable) and gives the
    directories that mode.  Committed data is sealed so that no job can change what another
    reads; whoever deletes it restores write permission on what it removes
    (:func:`remove_tree`).
    """
    root = os.lstat(path)
    total = root.st_blocks * 512
    seen: set[tuple[int, int]] = set()
    pending = [os.fspath(path)]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
                elif seal is not None and stat.S_ISREG(st.st_mode):
                    os.chmod(entry.path, 0o555 if st.st_mode & 0o111 else 0o444)
        if seal is not None:
            os.chmod(directory, seal)
    return total


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete the tree at ``path``; missing parts (a concurrent remover) are not an error.

    Read-only directories inside it (committed data is read-only) are made writable first, but only
    those being removed.
    """
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        unlink_if_present(path)
        return
    _make_writable(path, st)
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            unlink_if_present(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _make_writable(path: str, st: os.stat_result) -> None:
    # Only an owner can chmod; in a group cache the group may write already.
    if st.st_mode & stat.S_IWUSR == 0 and st.st_uid == os.geteuid():
        try:
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        except FileNotFoundError:
            pass


def create_empty(path: str, *, exclusive: bool = False) -> None:
    """Create the empty file ``path`` (a flag, or with ``exclusive`` a lease), never through a
    symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
    os.close(os.open(path, flags, 0o666))


def unlink_if_present(path: str | os.PathLike[str]) -> None:
    """Delete the file ``path``; that it is gone already (another process was first) is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
