"""Reading the members of a tar archive from a stream, in one pass, with the header checks.

:class:`TarReader` parses ustar, GNU (long names and links) and pax headers (local and global) and
hands out each member's data as views of the buffers read from the stream, so that a member costs
a few microseconds of parsing and no copy.  What it refuses (:class:`UnsafeArchiveError`):

* an extended header (pax, GNU long name) of more than :data:`MAX_EXTENDED_HEADER` bytes, more than
  :data:`_MAX_HEADER_CHAIN` of them before one member, more than :data:`_MAX_GLOBAL_RECORDS` global
  pax records in all;
* sparse members (old GNU type ``S``, or pax ``GNU.sparse.*`` records);
* pax records with long runs of digits (the squares of the lengths of the runs may add up to at
  most :data:`_DIGIT_WORK_PER_BYTE` times the header's size, at least 4 KiB): no archiver writes
  them, and they make the pax parsers of other readers quadratic (CVE-2024-6232), so an archive
  that holds them is not one to pass on.

What it calls corrupt (:class:`CorruptDataError`): a header whose checksum or numbers are wrong, pax
records that are not well framed, data cut short, and an archive that does not end with its
end-of-archive marker (a zero block): one cut at a member boundary is not a shorter archive.

The meaning of the fields follows Python's tarfile, which followed GNU tar: names and link targets
are UTF-8 (bytes that are not stay as surrogate escapes, so that they are written back unchanged),
a pax record replaces the header's field, a global pax record applies to every later member, the
ustar prefix applies to POSIX ustar headers, and a type ``\\0`` member whose name ends with ``/`` is
a directory.  What a member is allowed to be is the caller's business.
"""

from __future__ import annotations

import re
import zlib
from typing import IO

from ..errors import CorruptDataError, UnsafeArchiveError, quoted
from ..sizes import format_size
from .streams import CHUNK, Buffered, Stream

BLOCK = 512
#: Bytes of one extended tar header (pax or GNU long name), which is read into memory.
#: Extended attributes are the largest thing they hold in practice (at most 64 KiB each on Linux).
MAX_EXTENDED_HEADER = 256 * 2**10
_MAX_HEADER_CHAIN = 8     # extended headers before one member (real archives use up to 3)
_MAX_GLOBAL_RECORDS = 64  # records in all the global pax headers (real archives use 1 or 2)
_DIGIT_WORK_PER_BYTE = 16  # in a pax header: one run of 256 digits in 4 KiB (numbers have at most 30)

REGULAR, DIRECTORY, SYMLINK, HARDLINK = b"0", b"5", b"2", b"1"
#: GNU's volume label (``tar -V``): a header, not an entry of the tree.
VOLUME_LABEL = b"V"
_DUMPDIR = b"D"  # GNU's incremental dumps: a directory, with the list of its entries as data
_REGULAR_TYPES = {b"0", b"\0", b"7"}  # "7" is a contiguous file: a regular one everywhere
_PAX_LOCAL, _PAX_GLOBAL, _PAX_SOLARIS = b"x", b"g", b"X"
_LONG_NAME, _LONG_LINK, _SPARSE = b"L", b"K", b"S"
_EXTENDED = {_PAX_LOCAL, _PAX_GLOBAL, _PAX_SOLARIS, _LONG_NAME, _LONG_LINK}
_POSIX_MAGIC = b"ustar\x00"
_DIGIT_RUNS = re.compile(rb"[0-9]+")
_PAX_TIME = re.compile(r"(-?)([0-9]+)(?:\.([0-9]*))?")
_SPACES = 8 * ord(" ")  # the checksum field counts as spaces in its own sum
_ZERO_BLOCK = bytes(BLOCK)


class TarMember:
    """One member's header, with the pax and GNU extensions applied.

    ``kind`` is one of :data:`REGULAR`, :data:`DIRECTORY` (also for GNU's "dumpdir" members, as
    GNU tar unpacks them without ``-g``), :data:`SYMLINK`, :data:`HARDLINK`, or the type byte as
    found for anything else (:data:`VOLUME_LABEL`, devices, FIFOs, unknown types).
    """

    __slots__ = ("kind", "linkname", "mode", "mtime_ns", "name", "offset", "size")

    def __init__(self, name: str, kind: bytes, size: int, mode: int, mtime_ns: int, linkname: str,
                 offset: int) -> None:
        self.name, self.kind, self.size, self.mode = name, kind, size, mode
        self.mtime_ns, self.linkname, self.offset = mtime_ns, linkname, offset


class TarReader(Buffered):
    """The members of the tar archive read from ``below`` (already decompressed), in order.

    Call :meth:`next` for each member, then :meth:`take` for the data of a regular one (what is not
    taken is skipped).  ``what`` names the archive in messages, and ``compressed`` the compression
    (a codec's name) that ``below`` was decompressed from, if it was.
    """

    def __init__(self, below: Stream | IO[bytes], what: str, *, compressed: str | None = None) -> None:
        super().__init__(below.read)
        self._below = below
        self._what = what
        self._compressed = compressed
        self._name = ""        # the current member's, for a message
        self._data_left = 0    # of the current member's data, not taken yet
        self._skip = 0         # padding after it
        self._global: dict[str, str] = {}
        self._global_records = 0

    def take(self, size: int) -> memoryview:
        """Up to ``size`` bytes (at least one) of the current member's data, as a view."""
        piece = self.view(min(size, self._data_left))
        if not piece:
            raise self._cut_short()
        self._data_left -= len(piece)
        return piece

    def drain(self) -> None:
        """Read the stream to its end (data after the end-of-archive marker still passes the checks
        of the layers below: checksums, a compressed stream's trailer, the expansion cap)."""
        while self._below.read(CHUNK):
            pass

    # --- headers ----------------------------------------------------------------------------------
    #
    # This is the loop every member goes through, so it is written for speed: the header is read
    # in place from the buffer, and the checksum of an ASCII header (all of them, in practice) is
    # derived from adler32, which sums the bytes in C.

    def next(self) -> TarMember | None:
        """The next member, or None at the end-of-archive marker."""
        skip = self._data_left + self._skip
        if self._at + skip <= len(self._buffer):  # the padding of a member, usually
            self._at += skip
            self._position += skip
        elif not self.skip(skip):
            raise self._cut_short()
        self._data_left = self._skip = 0
        local: dict[str, str] | None = None
        long_name = long_link = None
        chain = 0
        while True:
            offset = self._position
            at = self._at
            if at + BLOCK <= len(self._buffer):
                header = bytes(self._buffer[at:at + BLOCK])  # already bytes: no copy
                self._at = at + BLOCK
                self._position = offset + BLOCK
            else:
                header = self.read_exact(BLOCK)
                if len(header) < BLOCK:
                    if not header:
                        raise self._corrupt("it ends without an end-of-archive marker" if offset else
                                            self._nothing())
                    raise self._corrupt(f"truncated header at byte {offset}")
            if header == _ZERO_BLOCK:  # the end-of-archive marker
                if chain:
                    raise self._corrupt(f"extended headers at byte {offset} are not followed by a member")
                return None
            stored = self._number(header, 148, 156, offset)
            if not (header.isascii()  # then the sum is below 65521: adler32 gives it exactly
                    and stored == (zlib.adler32(header) & 0xFFFF) - 1 - sum(header[148:156]) + _SPACES):
                self._check_sum(header, stored, offset)
            size = self._number(header, 124, 136, offset)
            kind = header[156:157]
            if kind not in _EXTENDED:
                if kind == _SPARSE:
                    raise self._refuse("it holds a sparse file, which is not supported", offset)
                return self._member(header, kind, size, offset, local, long_name, long_link)
            chain += 1
            if chain > _MAX_HEADER_CHAIN:
                raise self._refuse(f"more than {_MAX_HEADER_CHAIN} extended headers in a row", offset)
            if not 0 <= size <= MAX_EXTENDED_HEADER:
                raise self._refuse(f"an extended header of {format_size(size)}, "
                                   f"more than {format_size(MAX_EXTENDED_HEADER)}", offset)
            data = self.read_exact(size)
            if len(data) < size or not self.skip(-size % BLOCK):
                raise self._corrupt("unexpected end of data")
            if kind == _LONG_NAME:
                long_name = _string(data)
            elif kind == _LONG_LINK:
                long_link = _string(data)
            else:
                records = self._pax_records(data, offset)
                if kind == _PAX_GLOBAL:
                    self._global_records += len(records)
                    if self._global_records > _MAX_GLOBAL_RECORDS:
                        raise self._refuse(f"more than {_MAX_GLOBAL_RECORDS} global pax records", offset)
                    self._global.update(records)
                else:
                    local = {**local, **records} if local else records

    def _member(self, header: bytes, kind: bytes, size: int, offset: int, local: dict[str, str] | None,
                long_name: str | None, long_link: str | None) -> TarMember:
        if long_name is not None:
            name = long_name
        else:
            name = header[:100].partition(b"\0")[0].decode("utf-8", "surrogateescape")
            if header[345] and header[257:263] == _POSIX_MAGIC:
                name = _string(header[345:500]) + "/" + name
        linkname = (_string(header[157:257]) if header[157] else "") if long_link is None else long_link
        mode = self._number(header, 100, 108, offset)
        mtime_ns = self._number(header, 136, 148, offset) * 1_000_000_000
        if local or self._global:
            pax = {**self._global, **local} if local else self._global
            if "path" in pax:
                name = pax["path"]
            if "linkpath" in pax:
                linkname = pax["linkpath"]
            if "size" in pax:
                size = _pax_int(pax["size"])
            if "mtime" in pax:
                mtime_ns = _pax_time_ns(pax["mtime"])
        if kind in _REGULAR_TYPES:
            kind = REGULAR
        # Data follows regular members and those of other types (a dump's directory among them),
        # not links, devices, FIFOs or directories.
        if kind == REGULAR or kind not in b"123456":
            self._data_left, self._skip = (size, -size % BLOCK) if size > 0 else (0, 0)
        # As GNU tar, after the data they declare: a regular member named with a final slash is a
        # directory (old tars wrote them so), and so is a dump's (whose data is a list of entries,
        # for an incremental restore).
        if (kind == REGULAR and name.endswith("/")) or kind == _DUMPDIR:
            kind = DIRECTORY
        self._name = name
        return TarMember(name, kind, size, mode, mtime_ns, linkname, offset)

    def _check_sum(self, header: bytes, stored: int, offset: int) -> None:
        """Check the checksum ``stored`` in ``header`` the slow way (a header with bytes above 127:
        some old tars summed them as signed)."""
        field = header[148:156]
        unsigned = sum(header) - sum(field) + _SPACES
        signed = unsigned - 256 * sum(1 for byte in header[:148] + header[156:] if byte > 127)
        if stored not in (unsigned, signed):
            raise self._corrupt(f"bad checksum at byte {offset}")

    def _number(self, header: bytes, start: int, end: int, offset: int) -> int:
        """A numeric field: octal digits, or GNU's base-256 (first byte 0x80, or 0xff if negative)."""
        field = header[start:end]
        try:  # the usual "0000644\0": digits, then NUL or space
            return int(field.rstrip(b"\0 "), 8)
        except ValueError:
            pass
        if field[0] in (0o200, 0o377):
            value = int.from_bytes(field[1:], "big")
            return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
        digits = field.partition(b"\0")[0].strip()
        try:
            return int(digits, 8) if digits else 0
        except ValueError:
            raise self._corrupt(f"invalid header at byte {offset}") from None

    def _pax_records(self, data: bytes, offset: int) -> dict[str, str]:
        """The records ``LENGTH KEYWORD=VALUE\\n`` of a pax header, checked to be well framed."""
        work = sum(len(run) ** 2 for run in _DIGIT_RUNS.findall(data))
        if work > _DIGIT_WORK_PER_BYTE * max(len(data), 4096):
            raise self._refuse("a pax header with long runs of digits", offset)
        records: dict[str, str] = {}
        position = 0
        while position < len(data) and data[position]:  # NUL padding may follow the records
            space = data.find(b" ", position, position + 21)  # a length has at most 20 digits
            digits = data[position:space] if space > position else b""
            length = int(digits) if digits.isdigit() else 0
            end = position + length
            equals = data.find(b"=", space + 1, end)
            if length < 5 or end > len(data) or data[end - 1] != ord("\n") or equals <= space + 1:
                raise self._corrupt(f"a malformed pax header at byte {offset}")
            keyword = data[space + 1:equals].decode("utf-8", "surrogateescape")
            if keyword.startswith("GNU.sparse."):
                raise self._refuse("it holds a sparse file, which is not supported", offset)
            records[keyword] = data[equals + 1:end - 1].decode("utf-8", "surrogateescape")
            position = end
        return records

    def _nothing(self) -> str:
        """What is wrong with an archive of no bytes: a compressed file that holds nothing is not empty."""
        if self._compressed is None:
            return "empty file"
        return f"it holds no tar data (its {self._compressed} data decompresses to nothing)"

    def _corrupt(self, why: str) -> CorruptDataError:
        return CorruptDataError(f"corrupt tar archive {self._what}: {why}")

    def _cut_short(self) -> CorruptDataError:
        """The error for an archive that ends within the current member's data or padding."""
        return self._corrupt(f"unexpected end of data in member {quoted(self._name)} at byte {self._position:,}: "
                             "the archive is cut short, or is the first volume of a multi-volume one (tar -M)")

    def _refuse(self, why: str, offset: int) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"unsafe archive {self._what}: {why} (at byte {offset})")


def _string(field: bytes) -> str:
    """A name field: up to its first NUL, UTF-8 with any other bytes kept as surrogate escapes."""
    return field.partition(b"\0")[0].decode("utf-8", "surrogateescape")


def _pax_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0  # as tarfile


def _pax_time_ns(value: str) -> int:
    """A pax time (decimal seconds, ``1700000000.123456789``) in nanoseconds, exactly; 0 if it is
    not a number, as tarfile reads it."""
    match = _PAX_TIME.fullmatch(value)
    if match is None:
        try:
            return int(float(value) * 10**9)  # "1e30" is a number too
        except (ValueError, OverflowError):
            return 0
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * 10**9 + int((fraction or "0")[:9].ljust(9, "0"))
    return -ns if sign else ns
