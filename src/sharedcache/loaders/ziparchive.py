"""Reading a zip archive from its file, member by member, as unzip reads it.

:class:`ZipReader` walks the central directory one record at a time, through a buffer of one
chunk, so that memory stays bounded whatever the number of members: the standard library's
zipfile loads the whole directory and keeps an object of about half a kilobyte per member (half a
GiB for a data set of a million files).  Each :class:`ZipMember` is what the directory says of one
member, read as unzip reads it:

* its name: UTF-8 if flagged so (bit 11; bytes that are not UTF-8 are kept as they are, as unzip
  keeps them); else the UTF-8 name of an Info-ZIP Unicode Path extra
  field (0x7075) whose CRC matches the stored name; else the stored bytes as they are if the
  archive was made on a Unix-like system (Info-ZIP writes a UTF-8 locale's names so, unflagged),
  read as Windows' ANSI code page (1252) if made on Windows NT, else as the OEM code page if made
  on MS-DOS, OS/2 or Windows NT (by WinZip 5.0), as unzip tells them apart.  PKZIP for Windows
  (versions 2.5, 2.6 and 4.0) says MS-DOS, and writes a name twice: in the ANSI code page in the
  local header, in the OEM code page in the central directory, whose name is the one made; where
  a version of those records a Unix mode (PKZIP for UNIX 2.51), both are in the ANSI code page.
  unzip writes ISO 8859-1 bytes where we write the same letters in UTF-8: the OEM code page is
  850, as unzip's table converts it, with its box drawing and the few letters that ISO 8859-1
  lacks drawn as that table draws them (:data:`_OEM_TO_ISO`).
  However it was decoded, its backslashes are separators if it was made on MS-DOS (FAT) and has
  no slash (PowerShell 5's ``Compress-Archive`` writes such names, flagged UTF-8).  A name ends at
  a NUL byte;
* its mode (type and permissions), where the system that made it records one as Unix does: Unix
  and the systems that unzip reads so (:data:`_UNIX_MODE_SYSTEMS`), whose symlinks are made where
  unzip makes them (:data:`_SYMLINK_SYSTEMS`);
* its sizes and the offset of its local header, from the Zip64 extra field (0x0001) where the
  record's own are saturated, moved by the bytes before the archive if there are any (the program
  of a self-extracting zip).

:meth:`ZipReader.open` checks the member's local header and gives its data, decompressed (stored,
deflate, Deflate64, bzip2, LZMA) a chunk at a time at most, stopped at the declared size and
checked against the declared CRC; :meth:`ZipReader.mtime_ns` gives its time, from the extended
timestamp ("UT", 0x5455) of its local header, where unzip and bsdtar look (yazl writes that field
in the central directory only), else, as unzip, from the fields that older zips wrote there
(Info-ZIP's "UX", 0x5855, and PKWARE's Unix field, 0x000d), else the DOS time (local time, to two
seconds).  Deflate64 (method 9, "enhanced deflate": Windows' Explorer writes it in zips past 2 GiB,
7-Zip when asked) is inflated by the inflate64 package, where it is installed.

Whatever is wrong is a :class:`~sharedcache.errors.CorruptDataError` of one line: "corrupt zip
archive WHAT: why" for the directory (no end record, a record that is not one), "cannot unzip NAME
from WHAT: why" for a member (a local header that is not one or names another member, the two
names compared as unzip compares them, each decoded as its header's are; data that ends short or
inflates wrong, a wrong CRC, encryption, a method no reader here knows).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import CorruptDataError, quoted
from ..sizes import format_size
from .codecs import XZ_MEMORY_LIMIT, inflate_module, refused_memory, too_large
from .streams import CHUNK, Buffered

_END_RECORD = struct.Struct("<4s4H2LH")          # end of central directory
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_RECORD = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_EXTRA_HEADER = struct.Struct("<HH")

_ZIP64 = 0x0001           # the sizes and the offset that the record's fields cannot hold
_UNICODE_PATH = 0x7075    # Info-ZIP: version 1, CRC-32 of the stored name, the name in UTF-8
_EXTENDED_TIME = 0x5455   # "UT": flags, then the modification time (seconds since 1970, UTC) if flag 1
# What zip wrote before "UT": Info-ZIP's old Unix field ("UX": access, then modification time) and
# PKWARE's Unix field (the same two times, then the owner), which unzip reads when no "UT" is there.
_OLD_UNIX_TIMES = (0x5855, 0x000D)
_DOS_2038 = (2038, 1, 18, 0, 0, 0)  # an MS-DOS time past which a negative "UT" time is past 2038
_ENCRYPTED, _UTF8_NAME, _STRONG_ENCRYPTION = 0x1, 0x800, 0x40
_UNIX, _MS_DOS, _OS2_HPFS, _NTFS = 3, 0, 6, 11
#: Where names are in the OEM code page (MS-DOS's FAT, OS/2's HPFS; Windows NT's NTFS as WinZip 5.0,
#: the version it names, wrote them); Windows NT's other names are in its ANSI code page, and so are
#: those of the local headers that PKZIP for Windows 2.5, 2.6 and 4.0 wrote, saying MS-DOS, and of
#: both headers where those versions recorded a Unix mode (unzip's exceptions).
_OEM_SYSTEMS, _WINZIP_5, _PKZIP_FOR_WINDOWS = {_MS_DOS, _OS2_HPFS}, 50, {25, 26, 40}
#: What unzip's table from the OEM code page (850) to ISO 8859-1 makes of the letters that ISO 8859-1
#: lacks: box drawing and blocks drawn as "¦", "+" and "-", and the nearest look of four others.
#: (Its ƒ is 0x83, the ANSI code page's, which is how its ISO 8859-1 bytes are read here.)
_OEM_TO_ISO = str.maketrans({**dict.fromkeys("░▒▓│┤╣║╠█■", "¦"), **dict.fromkeys("╗╝┐└├┼╚╔╬┘┌", "+"),
                             **dict.fromkeys("┴┬─╩╦═", "-"), "▄": "_", "▀": "¯", "‗": "=",
                             "\N{LATIN SMALL LETTER DOTLESS I}": "i"})
#: The systems whose zips record a Unix mode in the high half of the external attributes, as unzip
#: reads them (its ``mapattr``): Unix, VMS, Atari MiNT, QDOS, Acorn, Tandem, BeOS (Haiku's zip
#: says so) and AtheOS; and those of them whose symlinks unzip makes (elsewhere, a file holding
#: the target).
_UNIX_MODE_SYSTEMS = frozenset({_UNIX, 2, 5, 12, 13, 16, 17, 30})
_SYMLINK_SYSTEMS = frozenset({_UNIX, 2, 5, 16, 30})
_STORED, _DEFLATED, _DEFLATE64, _BZIP2, _LZMA = 0, 8, 9, 12, 14
#: The methods of APPNOTE.TXT (4.4.5) that no decoder here reads, by name for the messages.
_UNREAD_METHODS = {1: "Shrink", 2: "Reduce", 3: "Reduce", 4: "Reduce", 5: "Reduce", 6: "Implode",
                   10: "PKWARE DCL Implode", 16: "IBM z/OS CMPSC", 18: "IBM TERSE", 19: "IBM LZ77 z",
                   93: "Zstandard", 94: "MP3", 95: "XZ", 96: "JPEG", 97: "WavPack", 98: "PPMd"}
_DEFLATE64_INPUT = 16 << 10  # compressed bytes inflated at once: at most about 16 MiB come of them
_SATURATED = 0xFFFFFFFF


class ZipMember:
    """One record of the central directory: its name as unzip reads it, and the stored one; its
    sizes, CRC, method, flags and DOS time; where its local header is; who made it and the
    attributes they recorded."""

    __slots__ = ("compress_size", "crc", "create_system", "create_version", "date_time", "external_attr",
                 "file_size", "flags", "header_offset", "method", "name", "stored_name")

    def __init__(self, record: tuple[Any, ...], stored_name: bytes, extra: dict[int, bytes], concat: int) -> None:
        (_, self.create_version, self.create_system, _, _, self.flags, self.method, dos_time, dos_date, self.crc,
         compress_size, file_size, *_, self.external_attr, header_offset) = record
        self.date_time = ((dos_date >> 9) + 1980, (dos_date >> 5) & 0xF, dos_date & 0x1F, dos_time >> 11,
                          (dos_time >> 5) & 0x3F, (dos_time & 0x1F) * 2)
        self.stored_name = stored_name
        zip64 = extra.get(_ZIP64, b"")
        values = [file_size, compress_size, header_offset]
        for index, value in enumerate(values):
            if value == _SATURATED:
                if len(zip64) < 8:
                    raise ValueError("its Zip64 extra field is missing or short")
                values[index], zip64 = int.from_bytes(zip64[:8], "little"), zip64[8:]
        self.file_size, self.compress_size = values[0], values[1]
        self.header_offset = values[2] + concat
        self.name = _name(self, extra)

    @property
    def unix_mode(self) -> int:
        """The mode an archive made on a Unix-like system records, else 0."""
        if self.create_system not in _UNIX_MODE_SYSTEMS:
            return 0
        mode: int = self.external_attr >> 16
        if mode & 0o170000 == 0o120000 and self.create_system not in _SYMLINK_SYSTEMS:
            return 0o100000 | mode & 0o7777  # a symlink unzip makes a file of
        return mode


def _name(member: ZipMember, extra: dict[int, bytes]) -> str:
    """The member's name as unzip writes it here (see the module's docstring)."""
    name = _decoded_name(member, extra)
    # unzip's rule for the separators of MS-DOS, judged on the name however it was decoded:
    # PowerShell 5 flags its names UTF-8 and separates them with backslashes.
    return name.replace("\\", "/") if member.create_system == _MS_DOS and "/" not in name else name


def _decoded_name(member: ZipMember, extra: dict[int, bytes]) -> str:
    """The member's name, decoded as unzip decodes it (see the module's docstring)."""
    stored = member.stored_name.partition(b"\0")[0]
    unicode_path = extra.get(_UNICODE_PATH, b"")
    if (not member.flags & _UTF8_NAME and len(unicode_path) > 5 and unicode_path[0] == 1
            and int.from_bytes(unicode_path[1:5], "little") == zlib.crc32(member.stored_name)):
        return unicode_path[5:].decode("utf-8", "surrogateescape")
    return _header_name(stored, member, in_local_header=False)


def _header_name(stored: bytes, member: ZipMember, *, in_local_header: bool) -> str:
    """The name ``stored`` in the member's local header or in its record of the central directory,
    decoded as unzip decodes that header's (see the module's docstring)."""
    if member.flags & _UTF8_NAME:
        # A name flagged so that is not (bsdtar flags every name, whatever the locale's bytes)
        # is written as its bytes, as unzip writes it.
        return stored.decode("utf-8", "surrogateescape")
    system, version = member.create_system, member.create_version
    if (system == _NTFS and version != _WINZIP_5) or (
            system == _MS_DOS and version in _PKZIP_FOR_WINDOWS and (in_local_header or member.external_attr >> 16)):
        try:
            return stored.decode("cp1252")
        except UnicodeDecodeError:  # one of its five unassigned bytes: ISO 8859-1, as unzip reads it
            return stored.decode("latin-1")
    if system not in _OEM_SYSTEMS and system != _NTFS:
        return stored.decode("utf-8", "surrogateescape")
    return stored.decode("cp850").translate(_OEM_TO_ISO)


def extra_fields(extra: bytes) -> dict[int, bytes]:
    """The fields of a zip extra block, by id (the first of an id counts; a malformed tail is
    ignored, as unzip does)."""
    fields: dict[int, bytes] = {}
    at = 0
    while at + _EXTRA_HEADER.size <= len(extra):
        ident, size = _EXTRA_HEADER.unpack_from(extra, at)
        at += _EXTRA_HEADER.size
        fields.setdefault(ident, extra[at:at + size])
        at += size
    return fields


class ZipReader:
    """The members of the zip archive in the file open as ``fd`` (read with ``pread``: the caller's
    position is left alone); ``what`` names it in messages."""

    def __init__(self, fd: int, what: str) -> None:
        self.fd, self.what = fd, what
        self._file_size = os.fstat(fd).st_size
        self._start, self._size, self._concat = self._directory()

    def _corrupt(self, why: str) -> CorruptDataError:
        return CorruptDataError(f"corrupt zip archive {self.what}: {why}")

    def _split(self) -> CorruptDataError:
        return self._corrupt("it is the last part of a zip split over several files (zip -s), which is not "
                             "supported: join the parts first (zip -s 0 PART.zip --out WHOLE.zip)")

    def _directory(self) -> tuple[int, int, int]:
        """Where the central directory starts, its size, and how many bytes precede the archive,
        found as zipfile finds them: from the last end record in the file's last 64 KiB (the
        record, then a comment), and the Zip64 end record before it, if any."""
        size = self._file_size
        tail_start = max(0, size - _END_RECORD.size - 0xFFFF)
        tail = os.pread(self.fd, size - tail_start, tail_start)
        # The last signature with a whole record after it, as unzip looks for it: one in the last
        # bytes of a comment cannot be the record.  (In a file shorter than a record, none can: a
        # negative end would count from the end, and find a signature with no record after it.)
        at = tail.rfind(b"PK\x05\x06", 0, max(0, len(tail) - _END_RECORD.size + 4))
        if at < 0:
            raise self._corrupt("it has no end-of-central-directory record in its last 64 KiB")
        end = tail_start + at  # where the central directory ends, unless Zip64 records follow it
        _, disk, directory_disk, _, _, directory_size, directory_offset, _ = _END_RECORD.unpack_from(tail, at)
        if {disk, directory_disk} - {0, 0xFFFF}:  # (0xFFFF: in the Zip64 records, looked at below)
            raise self._split()
        if end >= _ZIP64_LOCATOR.size + _ZIP64_END_RECORD.size:
            records = os.pread(self.fd, _ZIP64_END_RECORD.size + _ZIP64_LOCATOR.size,
                               end - _ZIP64_LOCATOR.size - _ZIP64_END_RECORD.size)
            locator = _ZIP64_LOCATOR.unpack_from(records, _ZIP64_END_RECORD.size)
            if locator[0] == b"PK\x06\x07":
                if locator[1] != 0 or locator[3] > 1:
                    raise self._split()
                if records.startswith(b"PK\x06\x06"):
                    directory_size, directory_offset = _ZIP64_END_RECORD.unpack_from(records)[8:10]
                    end -= _ZIP64_LOCATOR.size + _ZIP64_END_RECORD.size
        start = end - directory_size
        if start < 0:
            raise self._corrupt("its end record places the central directory before the start of the file")
        return start, directory_size, start - directory_offset

    def _records(self) -> Iterator[tuple[tuple[Any, ...], bytes, bytes]]:
        """Each record of the central directory, with its name and its extra field."""
        at = self._start

        def read(most: int) -> bytes:
            nonlocal at
            data = os.pread(self.fd, min(most, self._start + self._size - at), at)
            at += len(data)
            return data

        directory = Buffered(read)
        done = 0
        while done < self._size:
            record = directory.read_exact(_CENTRAL_RECORD.size)
            if len(record) < _CENTRAL_RECORD.size:
                raise self._corrupt("its central directory is cut short")
            fields = _CENTRAL_RECORD.unpack(record)
            if fields[0] != b"PK\x01\x02":
                raise self._corrupt(f"no central directory record at byte {self._start + done}")
            name_size, extra_size, comment_size = fields[12:15]
            name = directory.read_exact(name_size)
            extra = directory.read_exact(extra_size)
            if (len(directory.read_exact(comment_size)) < comment_size or len(extra) < extra_size
                    or len(name) < name_size):
                raise self._corrupt("its central directory is cut short")
            done += _CENTRAL_RECORD.size + name_size + extra_size + comment_size
            yield fields, name, extra

    def count(self, limit: int) -> int:
        """How many records the directory holds, counted up to ``limit``."""
        count = 0
        for _ in self._records():
            count += 1
            if count >= limit:
                break
        return count

    def members(self) -> Iterator[ZipMember]:
        """Each record, in the directory's order; one that cannot be read (a Zip64 field
        missing) makes the directory corrupt."""
        for fields, name, extra in self._records():
            try:
                yield ZipMember(fields, name, extra_fields(extra), self._concat)
            except ValueError as exc:  # UnicodeDecodeError is one
                raise self._corrupt(f"the record of {quoted(name.decode('cp437'))}: {exc}") from None

    def local_header(self, member: ZipMember) -> tuple[dict[int, bytes], int]:
        """The extra fields of the member's local header, and where its data starts."""
        if member.header_offset < 0:
            raise self.refuse(member, "the central directory places it before the start of the archive")
        # (Past the file, a Zip64 field's offset may be one that pread cannot even take.)
        header = os.pread(self.fd, _LOCAL_HEADER.size, member.header_offset) \
            if member.header_offset < self._file_size else b""
        if len(header) < _LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
            raise self.refuse(member, f"no local header at byte {member.header_offset}, where the central "
                                      "directory places it")
        *_, name_size, extra_size = _LOCAL_HEADER.unpack(header)
        name_start = member.header_offset + _LOCAL_HEADER.size
        variable = os.pread(self.fd, name_size + extra_size, name_start)
        local_name = variable[:name_size]
        if local_name != member.stored_name:
            # The same name in two code pages (PKZIP for Windows') is the same name, as unzip
            # compares them: each decoded as its header's are.
            decoded = _header_name(local_name, member, in_local_header=True)
            if decoded != _header_name(member.stored_name, member, in_local_header=False):
                raise self.refuse(member, f"its local header names {quoted(decoded)}")
        return extra_fields(variable[name_size:]), name_start + name_size + extra_size

    def refuse(self, member: ZipMember, why: str) -> CorruptDataError:
        return CorruptDataError(f"cannot unzip {quoted(member.name)} from {self.what}: {why}")

    @staticmethod
    def mtime_ns(member: ZipMember, local_extra: dict[int, bytes]) -> int:
        """The member's modification time, given the extra fields of its local header (see the
        module's docstring)."""
        extended = local_extra.get(_EXTENDED_TIME, b"")
        seconds = None
        if len(extended) >= 5 and extended[0] & 1:
            seconds = int.from_bytes(extended[1:5], "little", signed=True)
        else:  # the last of the old fields, as unzip reads them in order
            old = [field for ident, field in local_extra.items() if ident in _OLD_UNIX_TIMES and len(field) >= 8]
            if old:
                seconds = int.from_bytes(old[-1][4:8], "little", signed=True)
        if seconds is not None:
            # 32 bits: a time past 2038-01-19 reads as one before 1970.  As unzip does, the MS-DOS
            # time beside it says which; before 1970, unzip takes the MS-DOS time (its earliest,
            # 1980, as zip writes it then), and so does this.
            if seconds >= 0:
                return seconds * 10**9
            if member.date_time > _DOS_2038:
                return (seconds + (1 << 32)) * 10**9
        import time

        return int(time.mktime((*member.date_time, 0, 0, -1))) * 10**9

    def open(self, member: ZipMember, data_start: int) -> Callable[[int], bytes]:
        """A function that returns up to ``most`` bytes of the member's data (which starts at
        ``data_start``), decompressed: fewer only at its declared size, where its CRC is checked.
        Data that ends before that size is refused."""
        if member.flags & (_ENCRYPTED | _STRONG_ENCRYPTION):
            raise self.refuse(member, "it is encrypted")
        decoder = _DECODERS.get(member.method)
        if decoder is None:
            method = f"{_UNREAD_METHODS[member.method]} (method {member.method})" \
                if member.method in _UNREAD_METHODS else f"method {member.method}"
            raise self.refuse(member, f"it is compressed with {method}, which no unpacker here reads")
        try:
            return _MemberData(self, member, data_start, decoder()).read
        except ImportError as exc:
            raise self.refuse(member, str(exc)) from None


class _MemberData:
    """A member's data: read from the archive a chunk at a time, decoded, stopped at the declared
    size, the CRC of all of it checked at the end."""

    def __init__(self, reader: ZipReader, member: ZipMember, start: int, decoder: _Decoder) -> None:
        self._reader, self._member, self._decoder = reader, member, decoder
        self._at, self._compressed_left, self._left = start, member.compress_size, member.file_size
        self._crc = 0

    def read(self, most: int) -> bytes:
        """Up to ``most`` bytes; fewer only at the declared end."""
        most = min(most, self._left)
        pieces = []
        while most:
            try:
                piece = self._decoder.decompress(b"", most)  # what the decoder holds first
                if not piece:
                    if self._decoder.eof or not self._compressed_left:
                        raise self._reader.refuse(self._member, "its data ends before its declared size "
                                                  f"({self._member.file_size - self._left:,} of "
                                                  f"{self._member.file_size:,} bytes)")
                    data = os.pread(self._reader.fd, min(CHUNK, self._compressed_left), self._at)
                    if not data:
                        raise self._reader.refuse(self._member, "the archive ends inside its data")
                    self._at, self._compressed_left = self._at + len(data), self._compressed_left - len(data)
                    piece = self._decoder.decompress(data, most)
            except _TooLarge as exc:
                raise too_large(f"{quoted(self._member.name)} from {self._reader.what}", "lzma", str(exc)) from None
            except ValueError as exc:
                raise self._reader.refuse(self._member, f"its data is corrupt ({exc})") from None
            pieces.append(piece)
            most -= len(piece)
            self._left -= len(piece)
            self._crc = zlib.crc32(piece, self._crc)
        if not self._left and self._crc != self._member.crc:
            raise self._reader.refuse(self._member, f"Bad CRC-32 for file {self._member.name!r}")
        return b"".join(pieces)


class _TooLarge(ValueError):
    """Data that needs more memory to decode than it may have; says what it needs."""


class _Decoder:
    """What every decoder of member data does: ``decompress(data, max_length)`` returns at most
    ``max_length`` bytes and keeps the rest of its input; ``eof`` tells the end of its stream, past
    which it takes nothing; corrupt data raises :class:`ValueError`."""

    eof = False

    def decompress(self, data: bytes, max_length: int) -> bytes:
        raise NotImplementedError


class _Stored(_Decoder):
    def __init__(self) -> None:
        self._pending = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        data = self._pending + data if self._pending else data
        self._pending = data[max_length:]
        return data[:max_length]


class _Inflate(_Decoder):
    """Deflate, inflated by ISA-L where it is installed (see :func:`~sharedcache.loaders.codecs.inflate_module`)."""

    def __init__(self) -> None:
        module = inflate_module()
        self._inflater, self._errors = module.decompressobj(-15), (module.error, zlib.error)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._inflater.eof:
            return b""
        tail = self._inflater.unconsumed_tail
        try:
            out: bytes = self._inflater.decompress(tail + data if tail else data, max_length)
        except self._errors as exc:
            if refused_memory(exc):  # (the data unjudged)
                raise MemoryError from None
            raise ValueError(str(exc)) from None
        self.eof = self._inflater.eof
        return out


class _Deflate64(_Decoder):
    """inflate64's inflater, fed :data:`_DEFLATE64_INPUT` bytes at a time (it takes no bound on its
    output), its output handed out ``max_length`` bytes at a time."""

    def __init__(self) -> None:
        try:
            import inflate64
        except ImportError:
            raise ImportError("it is compressed with Deflate64, which needs the inflate64 package "
                              "(not installed)") from None
        self._inflater = inflate64.Inflater()
        self._input = memoryview(b"")  # taken from the front: a view, so that nothing is copied
        self._output = memoryview(b"")

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if data:  # given only once the input before it is used up (see _MemberData.read)
            self._input = memoryview(bytes(self._input) + data if self._input else data)
        while not self._output and self._input and not self._inflater.eof:
            piece, self._input = self._input[:_DEFLATE64_INPUT], self._input[_DEFLATE64_INPUT:]
            self._output = memoryview(self._inflater.inflate(piece))  # ValueError for corrupt data
        out, self._output = self._output[:max_length], self._output[max_length:]
        self.eof = bool(self._inflater.eof) and not self._output
        return bytes(out)


class _Standard(_Decoder):
    """A decompressor of the standard library's bz2 or lzma, whose ``decompress`` keeps what it
    does not return."""

    def __init__(self, decompressor: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._decompressor, self._errors = decompressor, errors

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._decompressor.eof or not (data or not self._decompressor.needs_input):
            return b""
        try:
            out: bytes = self._decompressor.decompress(data, max_length)
        except self._errors as exc:
            raise ValueError(str(exc) or type(exc).__name__) from None
        self.eof = self._decompressor.eof
        return out


def _bzip2() -> _Decoder:
    import bz2

    return _Standard(bz2.BZ2Decompressor(), (OSError, EOFError))  # bz2 says OSError, without an errno


class _ZipLzma(_Decoder):
    """LZMA as zip stores it: a version (2 bytes), the size of the properties (2 bytes), the
    properties (a byte for lc, lp and pb, then the dictionary's size), then raw LZMA1 data."""

    def __init__(self) -> None:
        self._header = b""
        self._decoder: _Decoder | None = None

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._decoder is None:
            self._header += data
            size = int.from_bytes(self._header[2:4], "little")
            if len(self._header) < 4 or len(self._header) < 4 + size:
                return b""
            if size != 5:
                raise ValueError(f"LZMA properties of {size} bytes, not 5")
            properties, data = self._header[4:9], self._header[9:]
            if properties[0] >= 9 * 5 * 5:
                raise ValueError("invalid LZMA properties")
            dictionary = int.from_bytes(properties[1:5], "little")
            if dictionary > XZ_MEMORY_LIMIT:  # liblzma would allocate it whole, whatever the data
                raise _TooLarge(f"a dictionary of {format_size(dictionary)}")
            import lzma

            lc, lp, pb = properties[0] % 9, properties[0] // 9 % 5, properties[0] // 45
            try:
                decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
                    "id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb,
                    "dict_size": dictionary}])
            except lzma.LZMAError as exc:  # liblzma refuses the properties
                raise ValueError(f"invalid LZMA properties ({exc})") from None
            self._decoder = _Standard(decompressor, (lzma.LZMAError, EOFError))
        out = self._decoder.decompress(data, max_length)
        self.eof = self._decoder.eof
        return out


_DECODERS: dict[int, Callable[[], _Decoder]] = {
    _STORED: _Stored, _DEFLATED: _Inflate, _DEFLATE64: _Deflate64, _BZIP2: _bzip2, _LZMA: _ZipLzma}
