"""The loader protocol: what a loader word is, and what it may use while a recipe runs.

A recipe is read left to right.  The first word is a *source*, each later word transforms what is
below it, and an *unpacker* may come last::

    http:https://host/data.tar.gz sha256:HEX tar
    file:/data/big.bin.zst unzstd md5:HEX

Several sources may come first: alternatives for the same bytes (mirrors), tried in order until one
delivers data that passes the recipe's checks (see :mod:`sharedcache.loaders.pipeline`)::

    http:http://mirror.site/data.tar.gz http:https://host/data.tar.gz sha256:HEX tar

A word is ``NAME`` or ``NAME:ARGUMENT``; ``NAME`` is looked up among the entry points of the group
``sharedcache.loaders`` (:mod:`sharedcache.loaders.registry`; the built-in loaders are registered
there too, see pyproject.toml).

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

Data flows as streams (:mod:`sharedcache.loaders.streams`), a pull model.

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
    ``passthrough = True``: it then runs in a thread beside the source's, and a stack made only of
    a source and passthrough transforms can be resumed by another process.  ``rename(name)`` maps
    the output file name (``gunzip`` strips ``.gz``).
``Unpacker.unpack(stream, dest, ctx)``
    Read the stream and write a tree under ``dest``, calling ``ctx.charge(n)`` before writing ``n``
    bytes so that the size limit holds.  ``ctx.seal``, when set, asks for the modes of committed
    data; an unpacker that ignores it leaves the sealing and measuring to the commit.  Only the
    last word may be an unpacker; the runner reads whatever the unpacker left unread, so that
    checksums still see every byte.

While running, loaders raise subclasses of :class:`~sharedcache.errors.LoaderError` with a one-line
message naming what failed and why; ``ctx.what`` names the source for such messages;
``ctx.fetch`` is the fetch policy (:class:`~sharedcache.config.settings.FetchPolicy`: connections,
timeouts, retries, back-off, proxies, offline); ``ctx.notice(message)`` tells the user (with
``-v``) what is worth knowing, such as a retry and its reason; ``ctx.warning(message)`` (shown
unless ``-q``) what holds the population until the user acts, such as a writer process that is
stopped.  ``ctx.work`` is a private
directory that survives the process, for spooling; remove what you put there.  ``ctx.deadline``
(a ``time.monotonic()``, or None) is when the caller stops waiting (``--timeout``): a source that
waits on the network bounds each wait by what is left, and past it raises
:class:`~sharedcache.errors.WaitTimeoutError`.  ``ctx.progress(done, total)`` is for a source
that fetches the whole file before its stream is read (``dirac:``): it says how far it has got,
so that the waiters do not take it for stuck (the bytes of the stream are counted as they pass).

A complete transform, ``upper``, that upper-cases ASCII text::

    from sharedcache.loaders.protocol import Transform
    from sharedcache.loaders.streams import Layer

    class _Upper(Layer):
        def read(self, size=-1):
            return self.below.read(size).upper()

    class Upper(Transform):
        '''upper-case ASCII text'''

        def wrap(self, below, ctx):
            return _Upper(below)

        def rename(self, name):
            return name + ".upper"
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from ..config.settings import FetchPolicy
from ..errors import SizeLimitError, UsageError, without_user_info
from ..sizes import format_size
from .streams import Progress, SourceStream, Stream


class Sealing(Protocol):
    """What an unpacker is asked when its tree is for a cache (the engine's ``Seal`` answers it):
    the modes of what it makes, whether to count the blocks of what it makes (and whether a file
    written whole may be counted by its size, a sample of them read), and, set when the tree is
    complete, that count (None: not counted)."""

    directory_mode: int
    measure: bool
    by_size: bool
    allocated: int | None

    def file_mode(self, mode: int) -> int:
        """The mode of a file that the archive gives ``mode``."""


class Context:
    """What loaders may use while a recipe runs."""

    def __init__(self, *, work: Path, what: str, limit: int | None = None,
                 fetch: FetchPolicy | None = None, notice: Callable[[str], None] | None = None,
                 deadline: float | None = None, seal: Sealing | None = None,
                 progress: Progress | None = None, warning: Callable[[str], None] | None = None) -> None:
        self.work = work
        self.what = what
        #: How an unpacker seals (and may measure) what it makes, when its tree is for a cache (see
        #: :class:`Sealing`); None: files keep the archive's mode, without its special bits and
        #: write permission for group and others, and directories theirs.
        self.seal = seal
        #: The ``time.monotonic()`` by which the population must be done (the caller's --timeout),
        #: or None: a source bounds each wait of its own (a connection, an answer) by what is left.
        self.deadline = deadline
        self.limit = limit
        self.fetch = fetch if fetch is not None else FetchPolicy()
        self.notice: Callable[[str], None] = notice if notice is not None else _ignore
        #: What the population cannot go on without the user: said unless the user asked for quiet.
        self.warning: Callable[[str], None] = warning if warning is not None else _ignore
        self.progress: Progress = progress if progress is not None else _unwatched
        #: Whether a checksum reads the source's bytes as they come: a source whose end nothing
        #: else confirms (a body ended by a close) may hand it on, and the checksum proves it whole.
        self.checksummed = False
        #: What caches on the way must do with their copy of the source before serving it (a copy
        #: that failed the checksum once: see ``SourceStream.cached_by``): ``"revalidate"``, check
        #: it with the origin, which sends the file anew only if it replaced it; ``"reload"``, fetch
        #: it anew, a copy that may be cut short (which the origin's ``304`` would not tell); None,
        #: serve it.
        self.refresh: Literal["revalidate", "reload"] | None = None
        self.written = 0

    def charge(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be written to the repository; raise if past the limit."""
        self.written += nbytes
        if self.limit is not None and self.written > self.limit:
            raise SizeLimitError(f"{self.what} holds more than the limit of {format_size(self.limit)}")


def _ignore(message: str) -> None:
    """Where notices go when nobody listens."""


def _unwatched(done: int, total: int | None) -> None:
    """Where progress goes when nobody watches."""


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
        """The word as messages show it (user info in a URL removed: it is a credential)."""
        return self.name if self.arg is None else without_user_info(f"{self.name}:{self.arg}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.word}>"


class Source(Loader):
    """The first word: where the bytes come from."""

    #: True if :meth:`open` can continue a partial copy from a given byte.
    resumable: ClassVar[bool] = False
    #: True if the source needs the network: offline, a recipe starting with it is not populated.
    network: ClassVar[bool] = False

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
