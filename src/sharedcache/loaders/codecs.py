"""Decompressing streams (gzip, bzip2, xz, zstd), recognising a compression (and what data is when
it is none of them) by its first bytes, and the guard against decompression bombs.

Every decompressor produces at most the number of bytes asked for, so memory stays bounded even for
a "bomb" that expands a few kilobytes into gigabytes; the history a stream may ask the decoder to
keep is bounded too (xz: :data:`XZ_MEMORY_LIMIT`, zstd: :data:`_ZSTD_WINDOW_LIMIT`), and a stream
that asks for more is refused as such, not as corrupt.  Concatenated streams (``pigz``,
``pbzip2``, multi-frame zstd) are read through.  A stream that ends early is an error, not a short
result.  After a stream, only another stream or padding may follow (:data:`_PADDING`): anything
else is an error that says where it starts.

Expansion cap
-------------
The size limit of a repository (``--size``) bounds what is written, but it is optional, and bytes
that are decompressed without being written (tar headers, data after the end of an archive) do
not count against it.  So every decompressor applies :func:`check_expansion` (and the zip unpacker
does, to the sizes its members declare): once the output passes :data:`EXPANSION_FLOOR` bytes, it
may not exceed :data:`MAX_EXPANSION` times the input read so far, else the population fails with
:class:`UnsafeArchiveError`.  Real data compresses 2 to 20 times, rarely more than 200, while a
bomb expands by millions (only long runs of one byte come near the limit with gzip, whose best is
about 1030); the floor keeps small, very compressible files from ever being refused.  Data that
is mostly one byte (a blank disk image, a sparse file's holes) does expand past the ratio, and
its user knows it: with ``--size``, output up to twice the size given (plus the floor, for the
headers of an archive of small files) is allowed at any ratio, and ``--size`` itself bounds what
is written.

Backends
--------
gzip streams are inflated by ISA-L (the ``isal`` package) where it is installed: about twice as fast
as the standard library's zlib on real data (see docs/performance.md), with the same interface and
checks (CRC and length trailer).  Without it, zlib.  xz streams are decoded by the liblzma that the
``lzma-mt`` package builds in (5.8), where it is installed: its LZMA decoder is about 1.6 times as
fast as that of liblzma 5.4, which the standard library's ``lzma`` and ``xz`` use on Debian 12;
the interface and checks are the standard library's, and one thread decodes, as there (a stream of
one block cannot be split, and several threads would each buffer a block).  Without it, the
standard library's ``lzma``.  zstd is the ``zstandard`` binding of libzstd, bzip2 the standard
library's.  :func:`backends` names them, for ``sc --version -v``.
"""

from __future__ import annotations

import functools
import importlib
import struct
from collections.abc import Callable
from typing import IO, Any

from ..errors import CorruptDataError, UnsafeArchiveError, quoted
from ..sizes import format_size
from .streams import CHUNK, Layer, Stream

#: Output may not exceed this many times the input read so far...
MAX_EXPANSION = 1000
#: ...once it is past this many bytes.
EXPANSION_FLOOR = 100 * 2**20
XZ_MEMORY_LIMIT = 256 * 2**20
#: zstandard's default limit on a frame's window, the one `zstd -d` applies unless told `--long`.
_ZSTD_WINDOW_LIMIT = 128 * 2**20
#: The first bytes of its input that a decompressor keeps, to say what the input is if not its own.
_HEAD = 512

_MAGIC = {
    "gzip": b"\x1f\x8b",
    "bzip2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
}


#: Formats known by their first bytes only to say what data is when it is not what a word expects.
_OTHER_FORMATS = (
    (b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "a zip archive"), (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a RAR archive"), (b"LZIP", "lzip data"), (b"\x04\x22\x4d\x18", "lz4 data"),
    (b"\x1f\x9d", "compress (.Z) data"), (b"\x89LZO\x00\r\n\x1a\n", "lzop data"),
    (b"\x5d\x00\x00", "LZMA-alone (.lzma) data"),  # the usual settings' first bytes: no magic of its own
)


#: The loader words that read what :func:`what_data_is` names, where there are some: those that
#: decompress it, and those that unpack it (:data:`_UNPACKING`).
_READ_BY = {"gzip data": "gunzip", "bzip2 data": "bunzip2", "xz data": "unxz", "zstd data": "unzstd",
            "a tar archive": "tar", "a zip archive": "zip", "LZMA-alone (.lzma) data": "unxz tar"}
_UNPACKING = frozenset({"a tar archive", "a zip archive", "LZMA-alone (.lzma) data"})


def instead(other: str, *, compressed: str | None = None) -> str:
    """What a message that data is ``other`` (as :func:`what_data_is` says it), not what a word
    expected, adds: the words that read it ("; 'unxz' decompresses it"), if there are some.  With
    ``compressed`` (a codec: "gzip"), ``other`` is what that compression holds, and the words
    start with the one that decompresses it ("; 'gunzip zip' unpacks it"), unless ``tar`` reads
    that compression itself (every one that :func:`sniff` knows)."""
    if compressed is not None and other == "a tar archive":
        return "; 'tar' unpacks it"
    words = [_READ_BY[f"{compressed} data"]] if compressed is not None else []
    if other in _READ_BY and (other in _UNPACKING or not words):
        words.append(_READ_BY[other])
    if not words:
        return ""
    return f"; '{' '.join(words)}' {'unpacks' if other in _UNPACKING else 'decompresses'} it"


def sniff(head: bytes) -> str | None:
    """The compression whose magic bytes start ``head``, or ``None``.  Skippable frames at the
    start (pzstd writes one before each frame) are passed over to the magic after them."""
    head = _past_skippable_frames(head)
    return next((codec for codec, magic in _MAGIC.items() if head.startswith(magic)), None)


def _skippable(magic: bytes) -> bool:
    """Whether the four bytes ``magic`` begin a skippable frame: zstd's (and lz4's, which has the
    same), 0x184D2A5? little-endian, followed by the size of what it skips."""
    return magic[1:4] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50


def _past_skippable_frames(head: bytes) -> bytes:
    """``head`` after the skippable frames it starts with."""
    while len(head) >= 8 and _skippable(head[:4]):
        head = head[8 + int.from_bytes(head[4:8], "little"):]
    return head


def _kept_head(head: bytes, consumed: int, data: bytes) -> bytes:
    """``head``, the first of ``consumed`` bytes read, with what ``data``, read after them, adds
    to the first :data:`_HEAD`: what :func:`what_data_is` looks at if decoding fails."""
    return head + data[:_HEAD - consumed] if consumed < _HEAD else head


#: The characters of text that are not printable: its spaces and line ends.
_TEXT_SPACES = frozenset("\t\n\v\f\r")


def what_data_is(head: bytes) -> str | None:
    """What data starting with ``head`` is, as a message says it ("xz data", "a zip archive",
    "text starting '<!DOCTYPE html>'"), if its first bytes tell: a page that a server sent in
    place of the file is the usual surprise."""
    codec = sniff(head)
    if codec is not None:
        return f"{codec} data"
    rest = _past_skippable_frames(head)
    known = next((name for magic, name in _OTHER_FORMATS if rest.startswith(magic)), None)
    if known is not None:
        return known
    if head[257:262] == b"ustar":
        return "a tar archive"
    # Text through and through: binary data often has a short, printable first line.
    try:
        text = head.decode()
    except UnicodeDecodeError as error:  # a character cut at the end is still text
        text = head[:error.start].decode() if error.start >= len(head) - 3 else ""
    text = text.removeprefix("\ufeff")
    if not all(character.isprintable() or character in _TEXT_SPACES for character in text):
        return None
    line = text.strip().partition("\n")[0].strip()
    return f"text starting {quoted(line[:60])}" if line else None


def check_expansion(produced: int, consumed: int, what: str, limit: int | None) -> None:
    """Refuse ``produced`` bytes made from ``consumed`` bytes of ``what`` if they look like a bomb,
    ``limit`` being the size the user allowed (``--size``), if any."""
    if produced <= EXPANSION_FLOOR or produced <= MAX_EXPANSION * consumed:
        return
    if limit is None:
        beyond = "without a --size that allows it"
    elif produced <= 2 * limit + EXPANSION_FLOOR:
        return
    else:
        beyond = f"and past twice its --size of {format_size(limit)}"
    raise UnsafeArchiveError(
        f"refused {what}: it expands more than {MAX_EXPANSION} times ({format_size(produced)} from "
        f"{format_size(consumed)}) {beyond}, a likely decompression bomb")


def decompressing(codec: str, below: Stream | IO[bytes], what: str, limit: int | None) -> Stream:
    """The decompressed content of ``below``, compressed with ``codec`` (a key of the magic table),
    within the expansion cap for the size ``limit`` (``--size``; see :func:`check_expansion`)."""
    if codec == "zstd":
        return _Zstd(below, what, limit)
    return _Decompressing(below, codec, _DECODERS[codec], what, limit)


@functools.cache
def _accelerated(module: str, standard: str) -> Any:
    """``module`` (a faster library with the interface of the standard library's ``standard``) if
    it is installed, else ``standard``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return importlib.import_module(standard)


def inflate_module() -> Any:
    """The zlib-compatible module that inflates deflate data (gzip streams, zip members): ISA-L's if
    installed, else zlib."""
    return _accelerated("isal.isal_zlib", "zlib")


def _lzma_module() -> Any:
    """The lzma-compatible module that decodes xz streams: lzma-mt's if installed, else lzma."""
    return _accelerated("lzma_mt", "lzma")


def backends() -> dict[str, str]:
    """The library behind each codec, with its version, as ``sc --version -v`` shows them."""
    import zlib

    import zstandard

    if inflate_module() is zlib:
        gzip = f"zlib {zlib.ZLIB_RUNTIME_VERSION} (isal not available)"
    else:
        import isal

        gzip = f"ISA-L {isal.ISAL_VERSION} (isal {isal.__version__})"
    lzma = _lzma_module()
    if lzma.__name__ == "lzma":
        xz = "liblzma (Python's lzma; lzma-mt not available)"
    else:
        xz = f"liblzma {lzma.get_xz_version()} (lzma-mt {lzma.__version__})"
    zstd = ".".join(map(str, zstandard.ZSTD_VERSION))
    try:
        import inflate64
    except ImportError:
        deflate64 = "not available (inflate64 not installed: such zip members are refused)"
    else:
        deflate64 = f"inflate64 {inflate64.__version__}"
    return {"gzip": gzip, "bzip2": "libbz2 (Python's bz2)", "xz": xz,
            "zstd": f"libzstd {zstd} (zstandard {zstandard.__version__})", "deflate64": deflate64}


#: The fewest compressed bytes given to zlib at once (see :meth:`_GzipDecoder.decompress`).
_INFLATE_PIECE = 64 << 10


class _GzipDecoder:
    """A gzip-mode zlib decompressor (which checks the CRC and length trailer) behind the bz2/lzma
    interface."""

    def __init__(self) -> None:
        inflate = inflate_module()
        self._zlib = inflate.decompressobj(16 + inflate.MAX_WBITS)
        self._input = memoryview(b"")  # what zlib has not been given yet
        self._given = self._made = 0  # bytes given to zlib and bytes it made: the ratio so far
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return bool(self._zlib.eof)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._zlib.unused_data) + bytes(self._input)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if data:  # given when it needs input: all it was given before is used up
            self._input = memoryview(data)
        piece = self._zlib.unconsumed_tail
        if not piece:
            # What makes about max_length bytes at the ratio so far, not the whole chunk: zlib
            # copies what a call leaves unconsumed (its output full) into unconsumed_tail, so a
            # chunk of W10's archive, which inflates twenty times, was copied at each of twenty
            # calls.  Nor much less: each output goes down the layers as one chunk, and fixed
            # pieces of 64 KiB cut incompressible data into outputs of that size (its unpack took
            # 47% more instructions).
            size = max(max_length * self._given // self._made, _INFLATE_PIECE) if self._made else len(self._input)
            piece, self._input = self._input[:size], self._input[size:]
            self._given += len(piece)
        out: bytes = self._zlib.decompress(piece, max_length)
        self._made += len(out)
        # A full output buffer may leave output pending inside zlib even with all input consumed.
        self.needs_input = not self._zlib.unconsumed_tail and not self._input and len(out) < max_length
        return out


def _gzip_decoder(start: bytes) -> _GzipDecoder:
    return _GzipDecoder()


def _bz2_decoder(start: bytes) -> Any:
    import bz2

    return bz2.BZ2Decompressor()


def _xz_decoder(start: bytes) -> Any:
    """The decoder of an xz stream, or of an .lzma file (the older LZMA-alone format) if ``start``
    looks like one as `xz -d` judges it.  liblzma's automatic choice takes anything but xz for
    LZMA-alone data, which has no check: eighteen zero bytes are an empty file of it."""
    # The dictionary an xz file asks for is allocated as it fills: up to 1.5 GiB.  xz -9 needs 65 MiB;
    # like zstd's default window limit (128 MiB), this refuses only what no preset makes.
    lzma = _lzma_module()
    kind = lzma.FORMAT_ALONE if _lzma_alone(start) else lzma.FORMAT_XZ
    return lzma.LZMADecompressor(format=kind, memlimit=XZ_MEMORY_LIMIT)


def _lzma_alone(start: bytes) -> bool:
    """Whether ``start`` begins an .lzma file, by the header checks of `xz -d` (which has no magic
    to go by): its properties byte at most 224, its dictionary 2^n or 2^n + 2^(n-1) bytes (or
    unset), its size below 256 GiB (or unknown)."""
    if len(start) < 13 or start[0] > 224:
        return False
    dictionary = int.from_bytes(start[1:5], "little")
    if dictionary != 0xFFFFFFFF:
        rounded = dictionary - 1
        for shift in (2, 3, 4, 8, 16):
            rounded |= rounded >> shift
        if dictionary == 0 or rounded + 1 != dictionary:
            return False
    size = int.from_bytes(start[5:13], "little")
    return size == 2**64 - 1 or size < 2**38


def refused_memory(error: BaseException) -> bool:
    """Whether a decoder's ``error`` is memory refused (its window or tables, allocated as a stream
    needs them), in which the data has no part: zlib's Z_MEM_ERROR (-4), said without a message of
    its own (ISA-L's -4 is a bad header, and its errors are not zlib's), or libzstd's allocation
    error.  liblzma's and libbz2's are MemoryError already."""
    import zlib

    if type(error) is zlib.error:
        return str(error).startswith("Error -4 while")
    return "Allocation error" in str(error)


_DECODERS: dict[str, Callable[[bytes], Any]] = {"gzip": _gzip_decoder, "bzip2": _bz2_decoder, "xz": _xz_decoder}
#: How many of a stream's first bytes its decoder is chosen by (an .lzma header's).
_START = 13

#: The zero bytes that may follow a stream, as the reference tools read them: xz's stream padding,
#: part of its format, after a stream or between two, in runs of a multiple of 4 bytes; and zeros
#: after gzip's last member, to the end of the input only (a blocked tape's padding, which gzip -d
#: passes over silently).  0: zeros at the end only.  bzip2 has none.
_PADDING = {"xz": 4, "gzip": 0}


def _decoder_errors(codec: str) -> tuple[type[BaseException], ...]:
    """What the decoder of ``codec`` raises for corrupt data (bz2: OSError)."""
    if codec == "gzip":
        import zlib

        return (zlib.error, inflate_module().error, OSError, EOFError)
    if codec == "xz":
        return (_lzma_module().LZMAError, OSError, EOFError)
    return (OSError, EOFError)


def too_large(what: str, codec: str, needs: str) -> UnsafeArchiveError:
    """The refusal of a stream that needs more memory than it may have (LZMA data in a zip: as
    much as xz data)."""
    limit = _ZSTD_WINDOW_LIMIT if codec == "zstd" else XZ_MEMORY_LIMIT
    return UnsafeArchiveError(f"refused {what}: its {codec} data needs {needs} to decompress, more than "
                              f"the {format_size(limit)} allowed")


def _failure(codec: str, what: str, head: bytes, produced: int, why: str, *, alone: bool = False) -> CorruptDataError:
    """The error that ``why`` says, unless nothing came out of the input yet and its first bytes,
    ``head``, are something else than ``codec``'s (``alone``: an .lzma file's, read as one): then
    the error names that."""
    if not produced:
        other = what_data_is(head)
        own = {f"{codec} data", "LZMA-alone (.lzma) data"} if alone else {f"{codec} data"}
        if other is not None and other not in own:
            return CorruptDataError(f"corrupt {codec} data from {what}: it is {other}{instead(other)}")
    return CorruptDataError(why)


class _Decompressing(Layer):
    """Decompression with a stdlib-style decompressor (``decompress(data, max_length)``, ``eof``...)."""

    def __init__(self, below: Stream | IO[bytes], codec: str, new_decoder: Callable[[bytes], Any],
                 what: str, limit: int | None) -> None:
        super().__init__(below)
        self._limit = limit
        self._codec = codec
        self._new_decoder = new_decoder  # given the first bytes of the stream it decodes
        self._decoder: Any = None
        self._what = what
        self._pending = b""
        self._errors = _decoder_errors(codec)
        self._consumed = 0
        self._produced = 0
        self._head = b""  # the input's first bytes, to say what it is if it is not this codec's
        self._alone = False

    def _input(self) -> bytes:
        data = self.below.read(CHUNK)
        self._head = _kept_head(self._head, self._consumed, data)
        self._consumed += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else CHUNK
        while True:
            decoder = self._decoder
            if decoder is None:
                start = self._input()
                while 0 < len(start) < _START and (more := self._input()):
                    start += more
                decoder = self._decoder = self._new_decoder(start)
                self._pending = start
                self._alone = self._codec == "xz" and _lzma_alone(start)  # an .lzma file: one stream
            elif decoder.eof:
                # Another stream may follow (pigz, pbzip2, xz --block-list...): read it too.
                rest = self._next_stream(decoder.unused_data)
                if rest is None:
                    return b""
                decoder = self._decoder = self._new_decoder(rest)
                self._pending = rest
            data = b""
            if decoder.needs_input:
                data, self._pending = self._pending or self._input(), b""
                if not data:
                    raise _failure(self._codec, self._what, self._head, self._produced,
                                   f"truncated {self._codec} data from {self._what}", alone=self._alone)
            try:
                out: bytes = decoder.decompress(data, size)
            except self._errors as exc:
                if self._codec == "xz" and "Memory usage limit" in str(exc):  # liblzma's LZMA_MEMLIMIT_ERROR
                    raise too_large(self._what, "xz", "more memory") from None
                if refused_memory(exc):  # (the data unjudged)
                    raise MemoryError from None
                raise _failure(self._codec, self._what, self._head, self._produced,
                               f"corrupt {self._codec} data from {self._what}: {exc}", alone=self._alone) from None
            if out:
                self._produced += len(out)
                check_expansion(self._produced, self._consumed, self._what, self._limit)
                return out

    def _next_stream(self, rest: bytes) -> bytes | None:
        """The start of the stream that follows the one that has just ended (``rest``, then the
        input after it), past the padding the format allows; None at the end of the input."""
        end = self._consumed - len(rest)  # where the stream ended, in the input
        padding = None if self._alone else _PADDING.get(self._codec)
        zeros = 0
        while not rest or (padding is not None and rest[:1] == b"\0"):
            if rest:
                stripped = rest.lstrip(b"\0")
                zeros, rest = zeros + len(rest) - len(stripped), stripped
            elif not (rest := self._input()):
                break
        if padding and zeros % padding:
            raise CorruptDataError(f"corrupt {self._codec} data from {self._what}: {zeros} bytes of padding "
                                   f"at byte {end}, not a multiple of {padding}")
        if not rest:
            return None
        something_else = CorruptDataError(f"corrupt {self._codec} data from {self._what}: what follows its end "
                                          f"at byte {end} is not {self._codec} data")
        if self._alone or (zeros and not padding):  # an .lzma file is one stream; gzip's zeros end it
            raise something_else
        magic = _MAGIC[self._codec]
        while len(rest) < len(magic) and (more := self._input()):
            rest += more
        if rest.startswith(magic):
            return rest
        if magic.startswith(rest):
            raise CorruptDataError(f"truncated {self._codec} data from {self._what}")
        raise something_else


class _ZstdFrames(Layer):
    """Follows the frame structure of the zstd bytes passing through, to tell a whole stream from a
    truncated one (zstandard's stream reader silently returns a short result for the latter), and
    data that needs a dictionary from corrupt data (libzstd says "Dictionary mismatch")."""

    def __init__(self, below: Stream | IO[bytes]) -> None:
        super().__init__(below)
        self._field = b""       # the bytes of the header being collected
        self._need = 4          # how many bytes that header has
        self._state = "magic"
        self._skip = 0          # payload bytes to pass over before the next header
        self._checksum = 0      # whether the current frame ends with a 4-byte checksum
        self._content = 0       # the size of the current frame's content size field
        self._window_bytes = 0  # the size of its window descriptor: 0 or 1
        self.frames = 0
        self.consumed = 0       # bytes passed through
        self.head = b""         # the first of them
        self.dictionary = 0     # the first dictionary ID a frame header names (zstd -D), if any

    def read(self, size: int = -1) -> bytes:
        data = self.below.read(size if size > 0 else CHUNK)
        self.head = _kept_head(self.head, self.consumed, data)
        self.consumed += len(data)
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            step = min(self._need - len(self._field), len(view))
            self._field += view[:step]
            view = view[step:]
            if len(self._field) == self._need:
                self._header(self._field)
        return data

    def _header(self, field: bytes) -> None:
        self._field = b""
        if self._state == "magic":
            if field == _MAGIC["zstd"]:
                self._state, self._need = "descriptor", 1
            elif _skippable(field):
                self._state, self._need = "skippable", 4
            else:
                self._state, self._skip = "unknown", 1 << 62  # the decompressor reports the error
        elif self._state == "skippable":
            self._skip = struct.unpack("<I", field)[0]
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            descriptor = field[0]
            single_segment = descriptor >> 5 & 1
            self._checksum = descriptor >> 2 & 1
            self._content = (single_segment, 2, 4, 8)[descriptor >> 6]
            self._window_bytes = 1 - single_segment
            identifiers = self._window_bytes + (0, 1, 2, 4)[descriptor & 3]
            if identifiers:
                self._state, self._need = "identifiers", identifiers
            else:
                self._skip, self._state, self._need = self._content, "block", 3
        elif self._state == "identifiers":  # the window descriptor, then the dictionary ID
            self.dictionary = self.dictionary or int.from_bytes(field[self._window_bytes:], "little")
            self._skip, self._state, self._need = self._content, "block", 3
        elif self._state == "block":
            header = int.from_bytes(field, "little")
            block_type, block_size = header >> 1 & 3, header >> 3
            self._skip = 1 if block_type == 1 else block_size
            if header & 1:
                self._skip += 4 * self._checksum
                self.frames += 1
                self._state, self._need = "magic", 4

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._field and not self._skip and self.frames > 0


class _Zstd(Layer):
    def __init__(self, below: Stream | IO[bytes], what: str, limit: int | None) -> None:
        import zstandard

        self._frames = _ZstdFrames(below)
        super().__init__(self._frames)
        self._what = what
        self._limit = limit
        self._produced = 0
        self._error = zstandard.ZstdError
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._frames,  # type: ignore[arg-type]  # any object with read() will do
            read_size=CHUNK, read_across_frames=True, closefd=False)

    def read(self, size: int = -1) -> bytes:
        try:
            out = self._reader.read(size if size > 0 else CHUNK)
        except self._error as exc:
            if refused_memory(exc):  # (the data unjudged)
                raise MemoryError from None
            window = self._window()
            if window > _ZSTD_WINDOW_LIMIT:  # compressed with --long
                raise too_large(self._what, "zstd", f"a window of {format_size(window)}") from None
            if self._frames.dictionary:  # not corrupt, but unreadable without it
                raise CorruptDataError(
                    f"cannot decompress the zstd data from {self._what}: it needs the dictionary it was compressed "
                    f"with (zstd -D, dictionary ID {self._frames.dictionary}), which sc does not support") from None
            raise _failure("zstd", self._what, self._frames.head, self._produced,
                           f"corrupt zstd data from {self._what}: {exc}") from None
        if not out and not self._frames.complete:
            raise _failure("zstd", self._what, self._frames.head, self._produced,
                           f"truncated zstd data from {self._what}")
        self._produced += len(out)
        check_expansion(self._produced, self._frames.consumed, self._what, self._limit)
        return out

    def _window(self) -> int:
        """The window that the first frame asks for (0 if its header cannot be read)."""
        import zstandard

        try:
            return int(zstandard.get_frame_parameters(self._frames.head).window_size)
        except self._error:
            return 0
