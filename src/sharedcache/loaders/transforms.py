"""The built-in transform and unpacker words.

``md5:HEX``, ``sha1:HEX``, ``sha256:HEX``, ``sha512:HEX``
    Check the bytes below as they stream by; a mismatch fails the population at the end of the
    stream.  They do not change the bytes (``passthrough``).
``gunzip``, ``bunzip2``, ``unxz``, ``unzstd``
    Decompress a single file; the output name loses the compression suffix.
``tar``
    Unpack a tar archive, uncompressed or compressed with any of the above (recognised by its
    magic bytes).
``zip``
    Unpack a zip archive.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from ..errors import ChecksumError, UsageError, memory_refused
from .protocol import Context, Transform, Unpacker
from .streams import Layer, Stream


def _quietly_imported_hashlib() -> ModuleType:
    """:mod:`hashlib`, imported without the traceback it logs for each hash it cannot make (an
    interpreter without OpenSSL or some of its own hash modules; a cap on memory that their
    libraries do not fit in): a hash a recipe asks for and cannot have is refused in one line
    (:class:`Checksum`), and the others are not the user's concern.

    hashlib logs them on the root logger (``logging.exception``), which prints them on stderr when
    no handler is set.  Those records alone are dropped, by a filter of the root logger while
    hashlib is imported: ``sys.stderr`` replaced meanwhile lost what a library caller's other
    threads wrote there, and a handler the caller had set showed them all the same.

    ``logging.exception`` also configures a root logger without handlers (``basicConfig()``): the
    handler it left made the program's own ``basicConfig(level=..., format=...)`` later do nothing.
    So a root logger without handlers is given, while hashlib is imported, the handler that
    logging falls back on without one (``logging.lastResort``): the other threads' records are
    shown as they would have been, and the root logger is left as it was found."""
    if "hashlib" in sys.modules:
        return sys.modules["hashlib"]
    import logging

    def not_hashlibs(record: logging.LogRecord) -> bool:
        return record.module != "hashlib"

    root = logging.getLogger()
    # (A program that set lastResort to None wants such records dropped.)
    stand_in = None if root.handlers else (logging.lastResort or logging.NullHandler())
    root.addFilter(not_hashlibs)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        import hashlib
    finally:
        root.removeFilter(not_hashlibs)
        if stand_in is not None:
            root.removeHandler(stand_in)
    return hashlib


hashlib = _quietly_imported_hashlib()


def _new_hash(algorithm: str) -> Any:
    """hashlib's hash object for ``algorithm``.  hashlib says "unsupported hash type" of a hash
    whose library it could not load as it was imported, whatever the reason: under a cap on
    memory (``ulimit -v``) the reason is the cap, which OpenSSL's module, loaded again, then says."""
    try:
        return hashlib.new(algorithm, usedforsecurity=False)
    except ValueError as unsupported:
        if "_hashlib" in sys.modules:  # loaded, and without this hash: no cap to blame
            raise
        try:
            import _hashlib
        except ImportError as exc:
            if memory_refused(exc):
                raise exc from None
            raise unsupported from None
        # Loaded now, with the memory it lacked then (hashlib does not look for it again).
        return _hashlib.new(algorithm, usedforsecurity=False)

# Not string.hexdigits: importing string compiles a pattern, about 1.3 ms of every miss.
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


#: The first bytes a checksum keeps, to say what the data was if it does not match: enough for
#: :func:`~sharedcache.loaders.codecs.what_data_is`.
_HEAD_BYTES = 512


class _Hashing(Layer):
    def __init__(self, below: Stream, algorithm: str, expected: str, what: str) -> None:
        super().__init__(below)
        self._hash = _new_hash(algorithm)
        self._algorithm = algorithm
        self._expected = expected
        self._what = what
        self._checked = False
        self._head = b""

    def read(self, size: int = -1) -> bytes:
        data = self.below.read(size)
        if data:
            self._hash.update(data)
            if len(self._head) < _HEAD_BYTES:
                self._head += data[: _HEAD_BYTES - len(self._head)]
        elif not self._checked:
            self._checked = True
            actual = self._hash.hexdigest()
            if actual != self._expected:
                raise ChecksumError(f"{self._algorithm} mismatch for {self._what}: expected {self._expected}, "
                                    f"got {actual}{self._text_instead()}")
        return data

    def _text_instead(self) -> str:
        """What the data was, if it was text: a page that a server, a proxy or a captive portal
        sent in place of the file (a login page, an error page) is the usual cause, and the
        digests alone do not tell it from another version of the file."""
        from .codecs import what_data_is

        described = what_data_is(self._head)
        return f" (the data is {described}: a page sent in place of the file?)" \
            if described is not None and described.startswith("text ") else ""


class Checksum(Transform):
    """Base of the checksum words; subclasses name the hashlib algorithm."""

    algorithm: ClassVar[str]
    argument = "hex digest"
    passthrough = True

    def __init__(self, name: str, arg: str | None) -> None:
        super().__init__(name, arg)
        assert arg is not None
        digits = _new_hash(self.algorithm).digest_size * 2
        if len(arg) != digits or not set(arg) <= _HEX_DIGITS:
            raise UsageError(f"'{self.word}': {name} digests are {digits} hexadecimal digits")
        self.digest = arg.lower()

    def wrap(self, below: Stream, ctx: Context) -> Stream:
        return _Hashing(below, self.algorithm, self.digest, ctx.what)


class Md5Check(Checksum):
    algorithm = "md5"


class Sha1Check(Checksum):
    algorithm = "sha1"


class Sha256Check(Checksum):
    algorithm = "sha256"


class Sha512Check(Checksum):
    algorithm = "sha512"


class Decompress(Transform):
    """Base of the decompression words; subclasses name the codec and the suffixes it removes."""

    codec: ClassVar[str]
    #: Output suffix for each input suffix, as the codec's own tool replaces it (``gzip -d``,
    #: ``bzip2 -d``, ``xz -d``, ``zstd -d``), in any case of letters (as gzip compares them).
    suffixes: ClassVar[dict[str, str]]

    def wrap(self, below: Stream, ctx: Context) -> Stream:
        from .codecs import decompressing

        return decompressing(self.codec, below, ctx.what, ctx.limit)

    def rename(self, name: str) -> str:
        for suffix, replacement in self.suffixes.items():
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)] + replacement
        return name


class Gunzip(Decompress):
    codec = "gzip"
    suffixes: ClassVar[dict[str, str]] = {".gz": "", ".tgz": ".tar", ".taz": ".tar", "-gz": "", "-z": "", "_z": "",
                                          ".z": ""}


class Bunzip2(Decompress):
    codec = "bzip2"
    suffixes: ClassVar[dict[str, str]] = {".bz2": "", ".bz": "", ".tbz2": ".tar", ".tbz": ".tar"}


class Unxz(Decompress):
    codec = "xz"
    suffixes: ClassVar[dict[str, str]] = {".xz": "", ".txz": ".tar", ".lzma": "", ".tlz": ".tar"}


class Unzstd(Decompress):
    codec = "zstd"
    suffixes: ClassVar[dict[str, str]] = {".zst": "", ".zstd": "", ".tzst": ".tar"}


class Untar(Unpacker):
    """``tar``: unpack a tar archive, compressed or not."""

    def unpack(self, stream: Stream, dest: Path, ctx: Context) -> None:
        from .archives import extract_tar

        extract_tar(stream, dest, ctx)


class Unzip(Unpacker):
    """``zip``: unpack a zip archive."""

    def unpack(self, stream: Stream, dest: Path, ctx: Context) -> None:
        from .archives import extract_zip

        extract_zip(stream, dest, ctx)
