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
  :mod:`zipfile`, the declared sizes of the members are checked against the archive's size;
* a tar header is checked before :mod:`tarfile` parses it: an extended header (pax, GNU long name)
  may hold at most :data:`MAX_EXTENDED_HEADER` bytes, at most :data:`_MAX_HEADER_CHAIN` of them may
  precede a member, global pax headers may hold at most :data:`_MAX_GLOBAL_RECORDS` records in all
  (tarfile copies them for every member), and sparse files are refused (tarfile parses their maps
  in quadratic time).  tarfile before Python 3.11.10 also parses pax headers in quadratic time
  (CVE-2024-6232): their records must be well framed, and the squares of the lengths of the runs
  of digits in them, the work tarfile spends on them, may add up to at most
  :data:`_DIGIT_WORK_PER_BYTE` times their size (at least 4 KiB), which keeps that work linear, at
  worst a few times what tarfile spends on any header;
* a tar archive must end with its end-of-archive marker: one cut at a member boundary or with a
  damaged header is corrupt, not a shorter archive.

Tar archives are read in one pass from the stream (any compression is recognised by its magic
bytes); zip archives need random access, so they are spooled to the work directory first.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from ..errors import CorruptDataError, UnsafeArchiveError
from ..sizes import format_size
from .codecs import check_expansion, decompressing, sniff
from .protocol import Context
from .streams import CHUNK, Stream

if TYPE_CHECKING:
    import zipfile

#: Entries an archive may create: members, plus the directories created for their paths.
MAX_ENTRIES = 1_000_000
#: Bytes of one extended tar header (pax or GNU long name), which tarfile reads into memory.
#: Extended attributes are the largest thing they hold in practice (at most 64 KiB each on Linux).
MAX_EXTENDED_HEADER = 256 * 2**10
_MAX_HEADER_CHAIN = 8     # extended headers before one member (real archives use up to 3)
_MAX_GLOBAL_RECORDS = 64  # records in all the global pax headers (real archives use 1 or 2)
_DIGIT_WORK_PER_BYTE = 16  # in a pax header: one run of 256 digits in 4 KiB (numbers have at most 30)

_FILE_MODE_MASK = 0o755  # no setuid/setgid/sticky, no write for group and others
_EXTENDED = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK}
_PAX = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
_CHECKED = _EXTENDED | {tarfile.GNUTYPE_SPARSE}
_DIGIT_RUNS = re.compile(rb"[0-9]+")
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
        # The real directories made so far (never symlinks), as a tree: (parent's id, name) -> id,
        # the root being 0.  Lookups cost the depth of a path, and memory one item per directory.
        self._dirs: dict[tuple[int, str], int] = {}
        self._symlinks: list[tuple[str, ...]] = []
        self._dir_times: dict[tuple[str, ...], tuple[int, float]] = {}
        self._entries = 0

    def refuse(self, name: str, why: str) -> UnsafeArchiveError:
        """The error for member ``name``, refused because of ``why``."""
        return UnsafeArchiveError(f"unsafe archive {self._ctx.what}: member {name!r} {why}")

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

    def _count(self) -> None:
        self._entries += 1
        if self._entries > MAX_ENTRIES:
            raise UnsafeArchiveError(f"unsafe archive {self._ctx.what}: more than {MAX_ENTRIES} entries "
                                     "(members and the directories of their paths)")

    def _dir(self, parts: tuple[str, ...], name: str, *, create: bool) -> int | None:
        """The id of directory ``parts``, made (with its parents) if ``create``, else None if it was
        not made."""
        ident = 0
        for depth, part in enumerate(parts):
            child = self._dirs.get((ident, part))
            if child is None:
                if not create:
                    return None
                self._mkdir(parts[: depth + 1], name)
                child = self._dirs[(ident, part)] = len(self._dirs) + 1
            ident = child
        return ident

    def _mkdir(self, parts: tuple[str, ...], name: str) -> None:
        self._count()
        try:
            os.mkdir(self._path(parts), 0o755)
        except FileExistsError:
            # Every directory here was made by _dir: what is there is a file or a link.
            there = "/".join(parts)
            if os.path.islink(self._path(parts)):
                raise self.refuse(name, f"would be written through the symlink {there!r}") from None
            raise self.refuse(name, f"would be written below the file {there!r}") from None

    def _place(self, parts: tuple[str, ...], name: str, make: Callable[[str], _T]) -> _T:
        """``make(path)`` the entry for ``parts``, after its parents; an earlier file or link of the
        same name is replaced (the later member wins, as with tar), a directory is not."""
        if not parts:
            raise self.refuse(name, "names the top directory itself")
        parent = self._dir(parts[:-1], name, create=True)
        if (parent, parts[-1]) in self._dirs:
            raise self.refuse(name, "would replace a directory")
        path = self._path(parts)
        try:
            return make(path)
        except FileExistsError:
            os.unlink(path)
            return make(path)

    def mkdir(self, parts: tuple[str, ...], name: str, mode: int, mtime: float) -> None:
        self._count()
        self._dir(parts, name, create=True)
        if parts:  # the top directory belongs to the caller: its mode is not the archive's to set
            self._dir_times[parts] = (mode, mtime)

    def write_file(self, parts: tuple[str, ...], name: str, content: IO[bytes], size: int, mode: int,
                   mtime: float) -> None:
        self._count()
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
        self._count()
        if "\x00" in target:  # tarfile cuts names at a NUL, but not a pax linkpath
            raise self.refuse(name, "is a symlink whose target has a NUL byte")
        escapes = not target or os.path.isabs(target)
        if not escapes:
            resolved = os.path.normpath(os.path.join(*parts[:-1], target))
            escapes = resolved == ".." or resolved.startswith("../")
        if escapes:
            raise self.refuse(name, f"is a symlink to {target!r}, outside the archive")
        self._place(parts, name, lambda path: os.symlink(target, path))
        self._symlinks.append(parts)

    def hardlink(self, parts: tuple[str, ...], name: str, target: str) -> None:
        self._count()
        try:
            target_parts = self.parts(target)
        except UnsafeArchiveError:
            raise self.refuse(name, f"is a hard link to {target!r}, outside the archive") from None
        target_path = self._path(target_parts)
        reachable = self._dir(target_parts[:-1], name, create=False) is not None
        try:
            is_file = reachable and stat.S_ISREG(os.lstat(target_path).st_mode)
        except FileNotFoundError:
            is_file = False
        if not is_file:
            raise self.refuse(name, f"is a hard link to {target!r}, which is not a file extracted before it")
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
                why = f"is a symlink that leads outside the archive ({os.readlink(path)!r})"
                raise self.refuse("/".join(parts), why)
        # Deepest first, so that a read-only directory does not stop us from setting its children.
        for parts, (mode, mtime) in sorted(self._dir_times.items(), key=lambda item: -len(item[0])):
            path = self._path(parts)
            os.chmod(path, mode & _FILE_MODE_MASK | 0o700)
            _set_mtime(path, mtime)


# --- tar ------------------------------------------------------------------------------------------


class _TarInput:
    """The archive as tarfile reads it (mode ``r:``): sequential reads, ``tell``, forward ``seek``,
    and a look at each header before tarfile parses it (:meth:`check_header`).

    Not tarfile's stream mode (``r|``), because there the bytes pass through a buffer of tarfile's
    own, out of reach of the checks.
    """

    def __init__(self, below: Stream | IO[bytes], what: str) -> None:
        self._below = below
        self._what = what
        self._buffer = bytearray()  # read from below, not yet consumed
        self._position = 0          # of the first byte of the buffer in the archive
        self._chain = 0             # extended headers since the last member header
        self._global_records = 0
        self._header = b""          # the last header tarfile read, and where
        self._header_at = 0

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), left to be read."""
        while len(self._buffer) < size:
            data = self._below.read(max(CHUNK, size - len(self._buffer)))
            if not data:
                break
            self._buffer += data
        return bytes(self._buffer[:size])

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, fewer only at the end (tarfile counts on it)."""
        if size < CHUNK or size <= len(self._buffer):  # headers: through the buffer
            data = self.peek(size)
            del self._buffer[:size]
        else:  # member data: past the buffer, with one copy
            pieces = [bytes(self._buffer)]
            self._buffer.clear()
            missing = size - len(pieces[0])
            while missing > 0 and (piece := self._below.read(missing)):
                pieces.append(piece)
                missing -= len(piece)
            data = b"".join(pieces)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int) -> int:
        if offset < self._position:
            # tarfile only skips forward, unless a header lied about a size (a negative one).
            raise CorruptDataError(f"corrupt tar archive {self._what}: a member points back into the archive")
        while self._position < offset and self.read(min(CHUNK, offset - self._position)):
            pass
        return self._position

    def check_header(self) -> None:
        """Check the header that tarfile is about to read; see the module's docstring."""
        block = self._header = self.peek(tarfile.BLOCKSIZE)
        self._header_at = self._position
        if block[156:157] not in _CHECKED:  # the type: most headers need no more than this look
            self._chain = 0
            return
        try:
            header = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return  # tarfile finds it bad too: see check_end
        if header.type == tarfile.GNUTYPE_SPARSE:
            raise self._refuse("it holds a sparse file, which is not supported")
        self._chain += 1
        if self._chain > _MAX_HEADER_CHAIN:
            raise self._refuse(f"more than {_MAX_HEADER_CHAIN} extended headers in a row")
        if header.size > MAX_EXTENDED_HEADER:
            raise self._refuse(f"an extended header of {format_size(header.size)}, "
                               f"more than {format_size(MAX_EXTENDED_HEADER)}")
        if header.type in _PAX:
            data = self.peek(tarfile.BLOCKSIZE + header.size)[tarfile.BLOCKSIZE:]
            # tarfile's search for "hdrcharset" tries every start in a run of digits, each to its end.
            work = sum(len(run) ** 2 for run in _DIGIT_RUNS.findall(data))
            if work > _DIGIT_WORK_PER_BYTE * max(len(data), 4096):
                raise self._refuse("a pax header with long runs of digits")
            keywords = list(self._pax_keywords(data))
            if any(keyword.startswith(b"GNU.sparse.") for keyword in keywords):
                raise self._refuse("it holds a sparse file, which is not supported")
            if header.type == tarfile.XGLTYPE:
                self._global_records += len(keywords)
                if self._global_records > _MAX_GLOBAL_RECORDS:
                    raise self._refuse(f"more than {_MAX_GLOBAL_RECORDS} global pax records")

    def check_end(self) -> None:
        """Check that the archive ended with its end-of-archive marker: past the first header,
        tarfile takes a missing, cut or damaged header for the end of the archive."""
        try:
            tarfile.TarInfo.frombuf(self._header, "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:  # the marker
            pass
        except tarfile.EmptyHeaderError:
            raise CorruptDataError(f"corrupt tar archive {self._what}: "
                                   "it ends without an end-of-archive marker") from None
        except tarfile.HeaderError as exc:
            raise CorruptDataError(f"corrupt tar archive {self._what}: {exc} at byte {self._header_at}") \
                from None

    def _pax_keywords(self, data: bytes) -> Iterator[bytes]:
        """The keywords of pax records ``LENGTH KEYWORD=VALUE\\n``, checked to be well framed."""
        position = 0
        while position < len(data) and data[position]:  # NUL padding may follow the records
            space = data.find(b" ", position, position + 21)  # a length has at most 20 digits
            digits = data[position:space] if space > position else b""
            length = int(digits) if digits.isdigit() else 0
            end = position + length
            equals = data.find(b"=", space + 1, end)
            if length < 5 or end > len(data) or data[end - 1] != ord("\n") or equals <= space + 1:
                raise CorruptDataError(f"corrupt tar archive {self._what}: "
                                       f"a malformed pax header at byte {self._position}")
            yield data[space + 1:equals]
            position = end

    def _refuse(self, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"unsafe archive {self._what}: {why} (at byte {self._position})")


class _CheckedHeader(tarfile.TarInfo):
    """tarfile's member header, checked by :meth:`_TarInput.check_header` before it is parsed."""

    @classmethod
    def fromtarfile(cls, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        archive = tarfile.fileobj
        assert isinstance(archive, _TarInput)
        archive.check_header()
        return super().fromtarfile(tarfile)


def extract_tar(stream: Stream, dest: Path, ctx: Context) -> None:
    """Unpack the tar archive (of any compression) read from ``stream`` into ``dest``."""
    archive = _TarInput(stream, ctx.what)
    codec = sniff(archive.peek(8))
    if codec is not None:
        archive = _TarInput(decompressing(codec, archive, ctx.what), ctx.what)
    tree = SafeTree(dest, ctx)
    try:
        with tarfile.open(fileobj=archive, mode="r:", tarinfo=_CheckedHeader) as tar:  # type: ignore[call-overload]
            while (member := tar.next()) is not None:
                _extract_tar_member(tar, member, tree)
                tar.members.clear()  # else tarfile keeps every header
    except tarfile.TarError as exc:
        raise CorruptDataError(f"corrupt tar archive {ctx.what}: {exc}") from None
    archive.check_end()
    # Read the end of the compressed stream too, so that its trailer (CRC, length) is checked.
    while archive.read(CHUNK):
        pass
    tree.finish()


def _extract_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tree: SafeTree) -> None:
    parts = tree.parts(member.name)
    if member.isdir():
        tree.mkdir(parts, member.name, member.mode, member.mtime)
    elif member.isreg():
        if member.size < 0:  # base-256 and pax sizes can be negative
            raise tree.refuse(member.name, f"has a negative size ({member.size})")
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


# --- zip ------------------------------------------------------------------------------------------

_END_RECORD = struct.Struct("<4s4H2LH")      # end of central directory
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_RECORD = struct.Struct("<4s4B4HL2L5H2L")


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
            raise CorruptDataError(f"corrupt zip archive {ctx.what}: {exc}") from None
        with archive:
            tree = SafeTree(dest, ctx)
            declared = 0
            for info in archive.infolist():
                # zipfile stops each member at its declared size: check those against the archive's.
                declared += info.file_size
                check_expansion(declared, spool.stat().st_size, ctx.what)
                try:
                    _extract_zip_member(archive, info, tree)
                except damaged as exc:
                    if isinstance(exc, OSError) and exc.errno is not None:
                        raise  # writing failed, not reading: the pipeline reports it
                    raise CorruptDataError(f"cannot unzip {info.filename!r} from {ctx.what}: {exc}") \
                        from None
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


def _extract_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, tree: SafeTree) -> None:
    import time

    parts = tree.parts(info.filename)
    unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(unix_mode)
    is_dir = info.filename.endswith("/")  # not info.is_dir(), which fails on an empty name
    mode = stat.S_IMODE(unix_mode) or (0o755 if is_dir else 0o644)
    mtime = time.mktime(info.date_time + (0, 0, -1))
    if is_dir and kind in (0, stat.S_IFDIR):
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
