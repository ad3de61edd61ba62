"""The permission bits a new file or directory gets, whatever the process's umask.

Every file and directory sc makes is given a mode.  The kernel takes the umask's bits from it,
and sc never changes the umask (``os.umask`` is the process's, for every thread at once, and
``sc run``'s command gets the caller's).  Two kinds of bits must survive it:

* the bits of a mode that others must have (a group cache's): given again with ``fchmod``, or
  the file made aside (the callers in :mod:`sharedcache.engine` say which);
* the owner's own: a umask such as 0177 (files 0600, thinks its user) takes the search bit from
  a directory, and 0277 or 0777 the write or read bits from everything; sc could then neither
  enter nor write what it had just made ("Permission denied"), and a directory so made stayed
  unusable for later runs too.  :func:`mkdir` and :func:`opener` give those back.

The umask is read from ``/proc/self/status`` (Linux 4.7): reading it with ``os.umask`` means
setting it, for a moment, under every other thread.  It is read when first needed after each
operation that makes files begins (a use, a release, a store, a gc: :func:`read_umask_again`), and
kept for the rest of it: an unpack asks for every file.  A program that changes its umask
between two uses of sc as a library (a daemon's ``os.umask(0o077)``) thus gets the modes sc
promises from the second on; a use that finds its repository ready reads it once, as before.
"""

from __future__ import annotations

import os
import stat

_umask: int | None = None


def umask() -> int:
    """The process's umask as the operation under way found it (:data:`_ALL` when the kernel
    does not say: every mode given again)."""
    global _umask  # noqa: PLW0603 - read once per operation (see the module's docstring)
    if _umask is None:
        _umask = _read_umask()
    return _umask


def read_umask_again() -> None:
    """Have :func:`umask` read the umask again when next asked: called as an operation that
    makes files begins, since the program may have changed its umask since the last one.  It
    costs nothing until a file is made."""
    global _umask  # noqa: PLW0603 - see umask()
    _umask = None


#: What :func:`umask` takes for the umask when the kernel does not say.
_ALL = 0o777


def _read_umask() -> int:
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = os.read(fd, 4096)  # "Umask:" is on the status's first lines
        finally:
            os.close(fd)
    except OSError:
        return _ALL
    for line in status.splitlines():
        if line.startswith(b"Umask:"):
            try:
                return int(line.split()[1], 8)
            except (IndexError, ValueError):
                break
    return _ALL


def taken(mode: int) -> int:
    """The bits of ``mode`` that the umask takes from a new file (a mode without bits asks for no
    look at the umask: a private cache's directories ask whether others' bits are taken)."""
    return mode & umask() if mode else 0


def chmod_nofollow(name: str, mode: int, *, dir_fd: int | None, kind: int, add: bool = False) -> bool:
    """Give ``name`` (in ``dir_fd`` if given) the mode ``mode`` (with ``add``: add those bits to
    its own) if it is of type ``kind`` (stat.S_IFREG, S_IFDIR); never through a symlink.
    Returns whether it changed the mode.

    Linux has no ``lchmod``: the file is opened as a mere path reference (``O_PATH``, which
    needs no permission on the file itself), its type checked on what was opened, and changed
    through ``/proc/self/fd``, which names exactly that inode.
    """
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        found = os.fstat(fd).st_mode
        if stat.S_IFMT(found) != kind:
            return False
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(found) | mode if add else mode)
        return True
    finally:
        os.close(fd)


def mkdir(path: str, mode: int, *, dir_fd: int | None = None) -> None:
    """``os.mkdir(path, mode)`` whose owner's bits the umask cannot take: the group's and
    others' follow the umask as mkdir gives them, and the set-group-ID bit a directory inherits
    (a group cache's) stays.  FileExistsError if something is there."""
    os.mkdir(path, mode, dir_fd=dir_fd)
    if taken(mode & stat.S_IRWXU):
        chmod_nofollow(path, mode & stat.S_IRWXU, dir_fd=dir_fd, kind=stat.S_IFDIR, add=True)


def opener(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open` whose new file keeps its owner's read and write bits."""
    fd = os.open(path, flags, 0o666)
    if flags & os.O_CREAT and taken(0o600):
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o600)
        except BaseException:
            os.close(fd)
            raise
    return fd
