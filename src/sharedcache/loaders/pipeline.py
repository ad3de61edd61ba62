"""Running a recipe: one pass from the source into the repository directory.

The loaders form a chain of streams that is pulled from the top.  A background thread reads the
source, and a second one runs the checksums directly above it, if the recipe has any (hashlib
releases the GIL on large buffers); chunks go through small bounded queues to the calling thread,
which decompresses, unpacks and writes.  Memory is a few 1 MiB buffers, whatever the size of the
data.

With ``connections`` > 1 an HTTP source fetches parts of the file over several connections at once
(:mod:`sharedcache.loaders.ranged`, at most 64 MiB buffered) but still hands the bytes on in order, so
everything above it (checksums, unpacking, the partial file and resuming) is the same as with one.

Resuming
--------
Within a process, an interrupted HTTP transfer continues with a range request (see
:mod:`sharedcache.loaders.http`).  If a source cannot continue where it stopped it raises
:class:`ResumeError`; the population then starts over from an empty ``dest`` (up to ``retries``
times), so two versions of the data are never mixed.

Across processes, a recipe that is a resumable source followed only by checksums produces a file
that *is* the downloaded bytes.  It is written to ``work/partial.data``, with
``work/partial.json`` (recipe identity, source, validator, bytes written so far) replaced
atomically about once a second (skipped while the file system has no room for the new file: the
one before stays) and when the writing ends early, counting all that reached the file (a
SIGTERM's takeover, or the population that evicts for room after the file system filled up, goes
on from there), and moved into ``dest`` at the end.  A download from the start removes the record
before it truncates the file, so that a record only ever names the version of the bytes the file
holds: one without a validator, or whose first record found no room, leaves none (a takeover
would go on from the file's end under the validator of the version it replaced, mixing the two).
The file is written without a buffer of the process's own, in order, by the one process that
holds the population: whatever reached it, however that process died, is the stream's first
bytes, as many as its size says, and the record only says which version of the data they are (a
record counting more than the file holds is no record of it).  A process that finds such a pair
in ``work`` (left by one that was killed, with a SIGKILL too, which leaves no checkpoint: before
the first one or between two) rehashes the whole file and asks the source for the rest; if the
source cannot continue (the data changed), the partial is discarded.  Other recipes start over
after a takeover: resuming a decompression or an unpacking midway would need a copy of the
compressed bytes, doubling the disk used, and state that no library exposes.

The partial survives the death of the process, and the failure of its download (the population
keeps it when its source failed, for the next one: see :mod:`sharedcache.repository`), but not a
crash of the machine: it is never flushed, so after a power loss its size and record may count
bytes that never reached the disk.  Whoever keeps ``work`` across a reboot must clear it (the
repositories do: their work directory names the boot it belongs to).  It records the source it
came from, and only that source continues it.

Caches on the way
-----------------
A source's bytes that came through a cache (``SourceStream.cached_by``: a forwarding proxy) and
fail the checksum may be its stale copy of a file the origin has replaced: the source starts over
once, from nothing, with ``Context.refresh`` set (the caches are asked to check their copy with
the origin, which sends the file anew only if it replaced it), and a second mismatch names the
cache.  Bytes whose size nothing declared (``SourceStream.total`` None: squid relays the body of an
origin that gave no length chunked, its end squid's word) may be the cache's copy of an answer a
cut connection ended: the caches are asked to fetch it anew instead, the origin's ``304`` to a
check saying nothing of the copy's end.

Mirrors
-------
A recipe with several sources (alternatives for the same bytes, which its checksum checks) tries
them in order.  A source that fails (a download error, a checksum mismatch, a corrupt or unsafe
archive, data past the size limit) leaves nothing behind in ``dest``, which is emptied, and the
next source starts afresh.  Its partial is discarded, unless the source failed to deliver the rest
(a download error): that one stays until another source writes a partial of its own.  A failure
that no other source can mend (no space, a write error, a bad setting) ends the population at
once.  When every source failed, the error names each one's failure; it is an
:class:`~sharedcache.errors.AuthorizationError` only if every one of them refused this process's
credentials (a source that failed otherwise fails any process alike), else of the kind of the
last failure that was no refusal.  A partial left by a killed process, or by a population whose
every source failed, is continued from the source it came from, which is therefore tried first.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import (
    AuthorizationError,
    ChecksumError,
    CorruptDataError,
    DownloadError,
    LoaderError,
    ResumeError,
    SizeLimitError,
    UnsafeArchiveError,
    cannot_write_here,
    no_space_for,
    over_limit,
    quoted,
    size_change,
)
from ..modes import opener
from ..sizes import format_size
from . import threads
from .local import safe_filename
from .protocol import Context, Sealing
from .streams import CHUNK, FileStream, Meter, Prefetch, Progress, SourceStream, Stream

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from ..config.settings import FetchPolicy
    from .protocol import Source
    from .registry import Recipe

_CHECKPOINT_INTERVAL = 1.0  # seconds between updates of partial.json
#: What a partial gives back for its record on a full file system: a block, of at most 64 KiB.
_RECORD_ROOM = 1 << 16


def populate(recipe: Recipe, dest: str | os.PathLike[str], *, work: str | os.PathLike[str],
             limit: int | None = None, progress: Progress | None = None,
             fetch: FetchPolicy | None = None, notice: Callable[[str], None] | None = None,
             deadline: float | None = None, seal: Sealing | None = None,
             warning: Callable[[str], None] | None = None) -> None:
    """Fill the empty directory ``dest`` with what ``recipe`` describes.

    ``work`` is a private directory that outlives the process (for the partial file and spools),
    ``limit`` caps the bytes written to ``dest``, ``progress(done, total)`` is called with the
    number of source bytes received in order (with several connections, later parts may have
    arrived too) at most every 0.1 s, ``fetch`` says how sources fetch (connections, timeouts,
    retries; the defaults of :class:`~sharedcache.config.settings.FetchPolicy` if None), and
    ``notice(message)`` hears of retries and fail-overs, of each move to the next source, and of
    threads the system refused (:mod:`sharedcache.loaders.threads`); ``warning(message)`` hears of
    what holds the population until someone acts (a writer process that is stopped).
    Past ``deadline`` (a ``time.monotonic()``), no source waits any longer: it raises
    :class:`~sharedcache.errors.WaitTimeoutError`.  ``seal`` asks an unpacker to seal (and maybe
    measure) the tree it makes for a cache (see :class:`~sharedcache.loaders.protocol.Sealing`);
    without it, files keep the archive's mode without its special bits and write permission for
    group and others.  Raises a :class:`LoaderError`.  The sources of the recipe are tried in
    order (see Mirrors).
    """
    dest, work = Path(dest), Path(work)
    failures: list[LoaderError] = []
    kept = _Partial.kept_source(work)
    sources = sorted(recipe.sources, key=lambda source: source.describe() != kept)
    for source, following in zip(sources, [*sources[1:], None], strict=True):
        try:
            ctx = Context(work=work, what=source.describe(), limit=limit, fetch=fetch, notice=notice,
                          deadline=deadline, seal=seal, progress=progress, warning=warning)
            _populate_from(source, recipe, dest, ctx, progress)
            return
        except _MIRROR_FAILURES as exc:
            failures.append(exc)
            _empty(dest)
            if following is not None and notice is not None:
                notice(f"{exc}; trying the next source, {following.describe()}")
        finally:
            if notice is not None:
                threads.tell(notice)
    if len(failures) == 1:
        raise failures[0]
    # Only where every source refused this process's credentials may another's change the
    # outcome: the failure of all is then this process's own.  A source that failed otherwise
    # would fail every waiter again, each after its own retries, one after another: the failure
    # of all is then of the kind of the last such one, wherever the refusals came in the order.
    kind = next((type(failure) for failure in reversed(failures) if not isinstance(failure, AuthorizationError)),
                AuthorizationError)
    raise kind("every source failed: " + "; ".join(str(failure) for failure in failures))


# Failures of one source that another source may not have (see Mirrors).
_MIRROR_FAILURES = (DownloadError, ChecksumError, CorruptDataError, UnsafeArchiveError, SizeLimitError)


def _populate_from(source: Source, recipe: Recipe, dest: Path, ctx: Context, progress: Progress | None) -> None:
    """Fill ``dest`` from ``source``, starting over when it cannot resume."""
    work = ctx.work
    resumable = _raw(recipe) and source.resumable
    partial = _Partial(work, recipe.identity, ctx.what) if resumable else None
    if partial is None:
        _Partial(work, recipe.identity, ctx.what).discard()  # a different recipe's leftovers
    for restart in itertools.count():
        try:
            _run(source, recipe, dest, ctx, progress, partial)
            return
        except OSError as exc:  # sources report their own; these come from writing dest or work
            full = no_space_for(ctx.what, exc, str(dest), ctx.written) or over_limit(exc)
            if full is not None:
                raise full from None
            why = exc.strerror or str(exc)
            if exc.filename is not None:  # a member's path may be 4 KiB (ENAMETOOLONG) or missing
                why += f" ({quoted(str(exc.filename))})"
            raise LoaderError(f"cannot write the data of {ctx.what}: {why}") from None
        except ResumeError as e:
            if partial is not None:
                partial.discard()  # the source cannot go on from it: neither could the next population
            if restart >= ctx.fetch.retries:
                e.args = (f"{e} ({restart + 1} attempts, each from the start)" if restart else str(e),)
                raise
            ctx.notice(f"starting {ctx.what} over ({e}; attempt {restart + 2} of {ctx.fetch.retries + 1})")
            _start_over(dest, ctx, partial)
        except _CachedCopyFailed as failed:
            asked, suspicion = _REFRESH_ASKED[failed.refresh]
            ctx.notice(f"{failed.failure}; asking {failed.cached_by}, which it came through, {asked} ({suspicion})")
            ctx.refresh = failed.refresh
            _start_over(dest, ctx, partial)
        except (ChecksumError, CorruptDataError, SizeLimitError):
            if partial is not None:
                partial.discard()  # bad data: nothing worth resuming
            raise


#: How messages say what the caches on the way are asked to do (``Context.refresh``), and why.
_REFRESH_ASKED = {
    "revalidate": ("to check its copy with the origin", "it may be stale"),
    "reload": ("to fetch the file anew from the origin", "its copy may be cut short"),
}


class _CachedCopyFailed(Exception):
    """The checksum ``failure`` of bytes that came through the cache ``cached_by`` (a forwarding
    proxy), whose copy may be stale or cut short: the source is fetched again, once, with the
    caches on the way told to do ``refresh`` (``Context.refresh``)."""

    def __init__(self, failure: ChecksumError, cached_by: str, refresh: Literal["revalidate", "reload"]) -> None:
        super().__init__(str(failure))
        self.failure, self.cached_by, self.refresh = failure, cached_by, refresh


def _start_over(dest: Path, ctx: Context, partial: _Partial | None) -> None:
    """Clear what an attempt of the source left, for the next to start from nothing."""
    _empty(dest)
    ctx.written = 0
    if partial is not None:
        partial.discard()


def keeps_partial(recipe: Recipe) -> bool:
    """Whether a population of ``recipe`` cut short leaves what it downloaded for the next one to
    go on from (a resumable source followed only by checksums); others start over."""
    return _raw(recipe) and any(source.resumable for source in recipe.sources)


def partial_room(work: str | os.PathLike[str]) -> int:
    """The bytes that the partial download kept in ``work`` takes on its file system: room that
    the next population either goes on from or frees (0 if there is none)."""
    return _Partial.room_taken(Path(work))


def partial_kept(work: str | os.PathLike[str]) -> bool:
    """Whether ``work`` holds a partial download that the next population goes on from: bytes
    in a file whose record names their source and validator (a download without one, or of bad
    data, keeps none), as many as the file holds, whatever the record counts."""
    kept = _Partial.kept(Path(work))
    return kept is not None and kept.size > 0


def _raw(recipe: Recipe) -> bool:
    """Whether the output is the source's bytes unchanged (only checksums above the source)."""
    return recipe.unpacker is None and all(transform.passthrough for transform in recipe.transforms)


def _run(origin: Source, recipe: Recipe, dest: Path, ctx: Context, progress: Progress | None,
         partial: _Partial | None) -> None:
    start, validator, total = partial.load() if partial is not None else (0, None, None)
    from .transforms import Checksum  # (a passthrough transform is no checksum unless it is one)

    ctx.checksummed = bool(recipe.transforms) and isinstance(recipe.transforms[0], Checksum)
    source = origin.open(ctx, start=start, validator=validator)
    stream: Stream = source
    try:
        if start and source.start != start:
            start = 0  # the source could not continue: start the partial over
        elif start and total is not None and source.total != total:
            # The source checks its continuation against the size it has seen, which after a
            # takeover is none: the size the partial recorded is checked here, as within a process.
            raise ResumeError(f"cannot resume {ctx.what} at byte {start}: {size_change(total, source.total)}")
        if _raw(recipe) and source.total is not None and ctx.limit is not None and source.total > ctx.limit:
            raise SizeLimitError(f"{ctx.what} is {format_size(source.total)}, "
                                 f"more than the limit of {format_size(ctx.limit)}")
        if start:
            assert partial is not None
            stream = _Concat(partial.prefix(), source)
        # The source is read in a thread, the checksums directly above it run in the next, and
        # the rest runs here.  Apart, a hash slower than the transfer (md5 and sha512 hash at about
        # 450 MB/s) overlaps the reads instead of adding its time to theirs.  One chunk read ahead
        # of the hash is enough for that; the hashing thread's queue holds the rest.
        transforms = list(recipe.transforms)
        if transforms and transforms[0].passthrough:
            stream = Prefetch(stream, depth=1)
        while transforms and transforms[0].passthrough:
            stream = transforms.pop(0).wrap(stream, ctx)
        stream = Prefetch(stream, Meter(progress, source.total))
        for transform in transforms:
            stream = transform.wrap(stream, ctx)
        if recipe.unpacker is not None:
            recipe.unpacker.unpack(_Lent(stream), dest, ctx)
            # What the unpacker left unread (tar padding) still goes through the checksums.
            while stream.read(CHUNK):
                pass
            return
        name = recipe.source.filename()
        for transform in recipe.transforms:
            name = transform.rename(name)
        # A rename may make a name no file can have: "..gz" gunzipped is ".".
        name = safe_filename(name)
        if partial is None:
            _write(stream, dest / name, ctx)
        else:
            partial.write(stream, start, source, ctx)
            partial.finish(dest / name)
    except ChecksumError as exc:
        if source.unconfirmed_end is not None:
            exc.args = (f"{exc} ({source.unconfirmed_end})",)
        if source.cached_by is not None:
            if ctx.refresh is None:
                # Without a declared size, the cache too may have taken a cut connection for the end.
                raise _CachedCopyFailed(exc, source.cached_by,
                                        "reload" if source.total is None else "revalidate") from None
            exc.args = (f"{exc} (it came through {source.cached_by}, asked {_REFRESH_ASKED[ctx.refresh][0]})",)
        raise
    finally:
        stream.close()


def _write(stream: Stream, path: Path, ctx: Context) -> None:
    with open(path, "xb", opener=opener) as out:
        while data := stream.read(CHUNK):
            ctx.charge(len(data))
            out.write(data)


def _empty(directory: Path) -> None:
    """Remove what a failed attempt left in ``directory``, sealed or not."""
    # An unpacker that honours the seal may have made directories read-only before the runner's
    # last read failed the source (a checksum).  Give their owner, this user, write access back.
    for _, _, _, descriptor in os.fwalk(directory):
        mode = os.fstat(descriptor).st_mode
        if mode & stat.S_IRWXU != stat.S_IRWXU:
            os.fchmod(descriptor, stat.S_IMODE(mode) | stat.S_IRWXU)
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


class _Kept:
    """A partial download's record, as far as it is one to go on from, and the size of its file."""

    __slots__ = ("identity", "size", "source", "total", "validator")

    def __init__(self, identity: object, source: object, validator: str, total: int | None, size: int) -> None:
        self.identity, self.source, self.validator, self.total, self.size = identity, source, validator, total, size


class _Partial:
    """The raw download kept in ``work`` so that another process can finish it."""

    META = "partial.json"

    def __init__(self, work: Path, identity: str, what: str) -> None:
        self.data = work / "partial.data"
        self.meta = work / self.META
        self._identity = identity
        self._what = what

    @staticmethod
    def room_taken(work: Path) -> int:
        """The bytes the partial kept in ``work`` takes on its file system (0 if none)."""
        try:
            return (work / "partial.data").stat().st_blocks * 512
        except OSError:
            return 0

    @staticmethod
    def kept(work: Path) -> _Kept | None:
        """The partial kept in ``work``, if its record is one to go on from: a validator, and no
        more bytes counted than the file holds (None if not)."""
        try:
            meta = json.loads((work / _Partial.META).read_text())
            size = (work / "partial.data").stat().st_size
        except (OSError, ValueError):
            return None
        if not (isinstance(meta, dict) and isinstance(meta.get("validator"), str)
                and isinstance(meta.get("bytes"), int) and isinstance(meta.get("total"), (int, type(None)))
                and meta["bytes"] <= size):
            return None
        # What was written after the last checkpoint follows the bytes it counts, and is kept: a
        # killed process leaves no torn file (a power loss may, but whoever keeps ``work`` across
        # a reboot clears it: see Resuming).
        return _Kept(meta.get("identity"), meta.get("source"), meta["validator"], meta["total"], size)

    @staticmethod
    def kept_source(work: Path) -> str | None:
        """The source of the partial kept in ``work``, if there is one."""
        kept = _Partial.kept(work)
        return kept.source if kept is not None and isinstance(kept.source, str) else None

    def load(self) -> tuple[int, str | None, int | None]:
        """Where a previous process stopped, its validator and the size of the whole (if known);
        (0, None, None) if there is nothing usable.  Another source's partial is left as it is:
        it goes only when this source writes its own (see :meth:`write`), and this source may
        fail before it does, as one that is down does, which leaves that partial for the next
        population to continue from its source."""
        kept = self.kept(self.data.parent)
        if kept is None or kept.identity != self._identity:
            self.discard()
            return 0, None, None
        if kept.source != self._what:
            return 0, None, None
        return kept.size, kept.validator, kept.total

    def prefix(self) -> Stream:
        """The kept bytes, to be hashed again: the whole file, to which nothing is appended before
        they have all been read (the rest comes after them)."""
        return FileStream(self.data)

    def write(self, stream: Stream, start: int, source: SourceStream, ctx: Context) -> None:
        """Append what ``stream`` yields after its first ``start`` bytes (those are in the file)."""
        validator, total = source.validator, source.total
        ctx.charge(start)
        if not start:
            # The record names the version of the bytes about to be truncated: gone first, it is
            # never left beside another version's (see Resuming), should this one have no
            # validator, no room for its first record, or be killed before it.
            self.meta.unlink(missing_ok=True)
        # Unbuffered: what the file holds is then all that was written, so that its size tells a
        # takeover where to go on, and nothing is written after _checkpoint_at_end has counted it.
        with open(self.data, "r+b" if start else "wb", buffering=0, opener=opener) as out:
            out.seek(start)
            self._checkpoint(start, validator, total)
            skip, done, last = start, start, time.monotonic()
            try:
                while data := stream.read(CHUNK):
                    if skip:  # the kept prefix, coming back through the checksums
                        data, skip = data[skip:], max(0, skip - len(data))
                    if not data:
                        continue
                    ctx.charge(len(data))
                    unwritten = memoryview(data)
                    while unwritten:  # a short write (a signal) goes on; a failing one raises
                        unwritten = unwritten[out.write(unwritten):]
                    done += len(data)
                    if time.monotonic() - last >= _CHECKPOINT_INTERVAL:
                        self._checkpoint(done, validator, total)
                        last = time.monotonic()
            except BaseException:
                self._checkpoint_at_end(out, validator, total)
                raise

    def _checkpoint_at_end(self, out: BinaryIO, validator: str | None, total: int | None) -> None:
        """Record what reached the file when the writing ends early, for the process that takes
        the population over (after a SIGTERM, a ``--timeout``), the one that evicts for room (after
        the file system filled up) or the next one.  They go on from the file's end whatever the
        record counts, but only with a record: one that found no room before (a new file each
        time) is written now, and needs a block of its own: where there is none, the file gives
        back its last bytes for it.  (What the file holds is the stream's first bytes, as many as
        its size says: written in order, with no buffer of this process's own.)"""
        kept = os.fstat(out.fileno()).st_size
        for _attempt in range(2):
            try:
                if self._checkpoint(kept, validator, total):
                    return
            except OSError:
                return  # the last checkpoint stands
            kept = max(kept - _RECORD_ROOM, 0) // _RECORD_ROOM * _RECORD_ROOM
            os.truncate(out.fileno(), kept)

    def _checkpoint(self, done: int, validator: str | None, total: int | None) -> bool:
        """Record ``done`` bytes written; whether the record says so now (False: no room for it,
        the record before standing)."""
        if validator is None:
            return True  # without a validator nobody could check that the rest matches
        temporary = self.meta.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps({"identity": self._identity, "source": self._what,
                                             "validator": validator, "total": total, "bytes": done}))
        except OSError as e:
            # A new file each time (an inode, which another job may have taken while bytes
            # remain): without it the checkpoint before stays, from which a takeover still goes on
            # to the file's end, rather than the download failing for it.
            temporary.unlink(missing_ok=True)
            if not cannot_write_here(e):
                raise
            return False
        os.replace(temporary, self.meta)
        return True

    def finish(self, target: Path) -> None:
        shutil.move(self.data, target)
        self.meta.unlink(missing_ok=True)

    def discard(self) -> None:
        for path in (self.data, self.meta, self.meta.with_suffix(".tmp")):
            path.unlink(missing_ok=True)


class _Concat(Stream):
    """The kept prefix, then the source."""

    def __init__(self, first: Stream, second: Stream) -> None:
        super().__init__()
        self._streams = [first, second]

    def read(self, size: int = -1) -> bytes:
        while self._streams:
            if data := self._streams[0].read(size):
                return data
            if len(self._streams) == 1:
                break
            self._streams.pop(0).close()
        return b""

    def close(self) -> None:
        if not self.closed:
            super().close()
            for stream in self._streams:
                stream.close()


class _Lent(Stream):
    """The stream as handed to an unpacker: closing it, or dropping a buffer around it (which
    closes it), leaves the chain open for the runner to read to the end and close."""

    def __init__(self, below: Stream) -> None:
        super().__init__()
        self._below = below

    def read(self, size: int = -1) -> bytes:
        return self._below.read(size)
