"""Recipes: the stack of loader words that says where data comes from and how to prepare it.

A recipe is read left to right.  The first word is a *source*, each later word transforms what is
below it, and an *unpacker* may come last::

    http:https://host/data.tar.gz sha256:HEX tar
    file:/data/big.bin.zst unzstd md5:HEX

A word is ``NAME`` or ``NAME:ARGUMENT``; ``NAME`` is looked up among the entry points of the group
``sharedcache.loaders`` (the built-in loaders are registered there too, see pyproject.toml).

This module owns the parsing of words into a :class:`Recipe`, the loader protocol below and the
registry.  What can be known of a recipe without loading loaders (its identity, its default
repository name) is :mod:`sharedcache.words`, re-exported here.  Running a recipe is
:mod:`sharedcache.pipeline`'s job.

Writing a loader
----------------
A loader is a class derived from :class:`Source`, :class:`Transform` or :class:`Unpacker`,
registered under an entry point whose name is the word users write::

    [project.entry-points."sharedcache.loaders"]
    rot13 = "mypackage.loaders:Rot13"

The registry constructs it as ``cls(name, arg)`` where ``arg`` is the text after the first colon,
or ``None``.  Set the class attribute ``argument`` to a short description of the argument ("URL",
"hex digest") if the word takes one; the base class then insists on it being present (or absent
when ``argument`` is ``None``).  Check the argument further in ``__init__`` (after calling the base)
and raise :class:`~sharedcache.errors.UsageError` with one line if it is malformed: parsing a recipe
must fail before any byte is fetched.

Data flows as :class:`Stream` objects, a pull model: each stream is a readable binary file object
whose ``read(size)`` returns at most ``size`` bytes (``size`` > 0), and ``b""`` only at the end.
Subclass :class:`Layer` for a stream computed from the one below it, :class:`FileStream` serves a
local file.  Keep memory bounded: never return more than asked for, and never read the whole stream
below into memory; :data:`CHUNK` is the read size used throughout.

``Source.open(ctx, start=0, validator=None) -> SourceStream``
    Deliver the raw bytes.  ``SourceStream.total`` is the full size if known (for progress);
    sources whose class sets ``resumable = True`` may be asked to continue a partial copy from byte
    ``start``; they must make sure it is the same data (``validator`` is the one they reported in
    ``SourceStream.validator`` earlier) and set ``SourceStream.start`` to where they really start
    (0 if they could not continue).  ``filename()`` names the single output file when no unpacker
    follows, ``describe()`` names the source in messages.  A stream that cannot go on where it
    stopped raises :class:`~sharedcache.errors.ResumeError`: the population then starts over.
``Transform.wrap(below, ctx) -> Stream``
    Return the transformed stream.  A transform that only inspects the bytes (a checksum) sets
    ``passthrough = True``: it then runs in the thread that reads the source, and a stack made only of
    a source and passthrough transforms can be resumed by another process.  ``rename(name)`` maps
    the output file name (``gunzip`` strips ``.gz``).
``Unpacker.unpack(stream, dest, ctx)``
    Read the stream and write a tree under ``dest``, calling ``ctx.charge(n)`` before writing ``n``
    bytes so that the size limit holds.  Only the last word may be an unpacker; the runner reads
    whatever the unpacker left unread, so that checksums still see every byte.

While running, loaders raise subclasses of :class:`~sharedcache.errors.LoaderError` with a one-line
message naming what failed and why; ``ctx.what`` names the source for such messages;
``ctx.connections`` is how many connections a source may use at once.  ``ctx.work``
is a private directory that survives the process, for spooling; remove what you put there.

A complete transform, ``upper``, that upper-cases ASCII text::

    from sharedcache.recipe import Layer, Transform

    class _Upper(Layer):
        def read(self, size=-1):
            return self.below.read(size).upper()

    class Upper(Transform):
        def wrap(self, below, ctx):
            return _Upper(below)

        def rename(self, name):
            return name + ".upper"
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar

from .errors import DownloadError, SizeLimitError, UsageError
from .sizes import format_size
from .words import default_name, normalize_words, recipe_identity

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = [
    "CHUNK", "Context", "FileStream", "Layer", "Loader", "Recipe", "Source", "SourceStream", "Stream",
    "Transform", "Unpacker", "default_name", "loader_class", "parse_recipe", "recipe_identity",
]

ENTRY_POINT_GROUP = "sharedcache.loaders"
CHUNK = 1 << 20  # the read size used throughout: large enough for speed, small enough for memory

Progress = Callable[[int, "int | None"], None]


class Stream(io.RawIOBase):
    """A readable binary stream; subclasses implement ``read(size)``."""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Layer(Stream):
    """A stream computed from the stream below it; closing it closes the one below."""

    def __init__(self, below: Stream | IO[bytes]) -> None:
        super().__init__()
        self.below = below

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.below.close()


class SourceStream(Stream):
    """What :meth:`Source.open` returns: the bytes of the source from ``start`` on."""

    start: int = 0
    total: int | None = None
    validator: str | None = None


class FileStream(SourceStream):
    """A local file as a stream, for sources that fetch into a file first; ``remove`` deletes the
    file when the stream is closed."""

    def __init__(self, path: str | os.PathLike[str], *, remove: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self._file = open(path, "rb", buffering=0)
        self.total = os.fstat(self._file.fileno()).st_size
        self._remove = remove

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.read(size if size > 0 else CHUNK)
        except OSError as exc:
            raise DownloadError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()
            if self._remove:
                self.path.unlink(missing_ok=True)


class Context:
    """What loaders may use while a recipe runs."""

    def __init__(self, *, work: Path, what: str, limit: int | None = None, connect_timeout: float = 30.0,
                 read_timeout: float = 60.0, retries: int = 5, connections: int = 1) -> None:
        self.work = work
        self.connections = connections
        self.what = what
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.written = 0

    def charge(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be written to the repository; raise if past the limit."""
        self.written += nbytes
        if self.limit is not None and self.written > self.limit:
            raise SizeLimitError(f"{self.what} holds more than the limit of {format_size(self.limit)}")


class Loader:
    """Base of every loader word."""

    #: What the argument after the colon is, for messages; ``None`` if the word takes none.
    argument: ClassVar[str | None] = None

    def __init__(self, name: str, arg: str | None) -> None:
        self.name = name
        self.arg = arg
        if self.argument is None and arg is not None:
            raise UsageError(f"'{self.word}': {name} takes no argument")
        if self.argument is not None and not arg:
            example = self.argument.split()[0].upper()
            raise UsageError(f"'{self.word}': {name} needs a {self.argument}, as in {name}:{example}")

    @property
    def word(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.word}>"


class Source(Loader):
    """The first word: where the bytes come from."""

    #: True if :meth:`open` can continue a partial copy from a given byte.
    resumable: ClassVar[bool] = False

    def open(self, ctx: Context, start: int = 0, validator: str | None = None) -> SourceStream:
        raise NotImplementedError

    def filename(self) -> str:
        """The name of the output file when no unpacker follows."""
        raise NotImplementedError

    def describe(self) -> str:
        """The source as named in messages."""
        return self.word


class Transform(Loader):
    """A word that turns the stream below it into another stream."""

    #: True if the output is the input unchanged (the transform only checks it).
    passthrough: ClassVar[bool] = False

    def wrap(self, below: Stream, ctx: Context) -> Stream:
        raise NotImplementedError

    def rename(self, name: str) -> str:
        """The output file name given the name of the input."""
        return name


class Unpacker(Loader):
    """The last word: turns the stream into a tree of files."""

    def unpack(self, stream: Stream, dest: Path, ctx: Context) -> None:
        raise NotImplementedError


_registry: dict[str, EntryPoint] | None = None


def _entry_points() -> dict[str, EntryPoint]:
    global _registry
    if _registry is None:
        from importlib.metadata import entry_points

        found: dict[str, EntryPoint] = {}
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(entry_point.name, entry_point)
        _registry = found
    return _registry


def loader_class(name: str) -> type[Loader]:
    """The loader class registered for word ``name``; :class:`UsageError` if there is none."""
    entry_point = _entry_points().get(name)
    if entry_point is None:
        known = ", ".join(sorted(_entry_points()))
        raise UsageError(f"unknown loader '{name}' (known: {known})")
    try:
        cls = entry_point.load()
    except Exception as exc:
        raise UsageError(f"loader '{name}' ({entry_point.value}) cannot be loaded: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, (Source, Transform, Unpacker))):
        raise UsageError(f"loader '{name}' ({entry_point.value}) is not a Source, Transform or Unpacker")
    return cls


class Recipe:
    """A parsed, validated stack of loaders."""

    def __init__(self, words: tuple[str, ...], source: Source, transforms: tuple[Transform, ...],
                 unpacker: Unpacker | None) -> None:
        self.words = words
        self.source = source
        self.transforms = transforms
        self.unpacker = unpacker

    @property
    def identity(self) -> str:
        return recipe_identity(self.words)

    def __repr__(self) -> str:
        return f"<Recipe {' '.join(self.words)}>"

    def populate(self, dest: str | os.PathLike[str], *, work: str | os.PathLike[str],
                 limit: int | None = None, progress: Progress | None = None,
                 connect_timeout: float = 30.0, read_timeout: float = 60.0, retries: int = 5,
                 connections: int = 1) -> None:
        """Fill the empty directory ``dest`` with the data; see :func:`sharedcache.pipeline.populate`."""
        from .pipeline import populate

        populate(self, Path(dest), work=Path(work), limit=limit, progress=progress,
                 connect_timeout=connect_timeout, read_timeout=read_timeout, retries=retries,
                 connections=connections)


def parse_recipe(words: str | Iterable[str]) -> Recipe:
    """Parse and validate a stack of words; :class:`UsageError` if it is malformed."""
    normalized = normalize_words(words)
    if not normalized:
        raise UsageError("empty recipe: give a source such as http:URL, file:PATH or dirac:LFN")
    loaders: list[Loader] = []
    for word in normalized:
        name, colon, arg = word.partition(":")
        loaders.append(loader_class(name)(name, arg if colon else None))
    source, *rest = loaders
    if not isinstance(source, Source):
        raise UsageError(
            f"a recipe starts with a source (http:URL, file:PATH, dirac:LFN), not '{source.word}'")
    for position, loader in enumerate(rest, start=1):
        if isinstance(loader, Source):
            raise UsageError(f"'{loader.word}' is a source: only the first word of a recipe can be one")
        if isinstance(loader, Unpacker) and position != len(rest):
            after = rest[position].word
            raise UsageError(f"'{loader.word}' unpacks, so it must be the last word "
                             f"(found '{after}' after it)")
    last = rest[-1] if rest else None
    unpacker = last if isinstance(last, Unpacker) else None
    # loader_class admits only sources, transforms and unpackers: all the others are transforms.
    transforms = tuple(loader for loader in rest if isinstance(loader, Transform))
    return Recipe(normalized, source, transforms, unpacker)
