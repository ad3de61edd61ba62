"""Repositories: shared data directories, populated once from a recipe and held by leases.

A repository is an :class:`~sharedcache.fscache.FsCache` entry of the cache that lives in a base
directory (``/tmp``, ``/var/tmp``, or what the user names), made visible at ``<base>/<name>``.
The entry's metadata is the recipe's identity, so a name cannot be reused for another recipe.
Each user holds a lease (:mod:`sharedcache.leases`); the last release deletes the repository
unless it is kept, and then it stays under the base directory's LRU budget.

Layout in a base directory
==========================
::

    <base>/<name>                          symlink to .shared-cache/objects/<name>/data
    <base>/.shared-cache/                  the base directory's FsCache (see fscache)
    <base>/.shared-cache/populate/<name>.lock    held exclusively by the process populating <name>
    <base>/.shared-cache/populate/<name>.json    its status: pid, reserved size, bytes so far
    <base>/.shared-cache/populate/<name>.error   the last failed population: time and message
    <base>/.shared-cache/populate/<name>.work/   kept across a takeover (partial download)

Acquire (``sc --use``, :func:`use`)
===================================
1. In each candidate base that has a cache, try to hold ``<name>`` (with the recipe's identity:
   another recipe under that name is refused).  Held: go to 5.  A base where ``<name>`` is being
   populated is chosen.  Otherwise the first base whose free space, less the space reserved by
   the populations in progress there, is at least the requested size is chosen.
2. In the chosen base, loop: try to hold (held: go to 5); take the population lock of ``<name>``
   without waiting; if another process has it, wait for it (saying whom we wait for and how far
   it has got), then loop.  After taking it, check that the lock file is still the one named
   by its path (gc may remove lock files it holds), else loop.
3. Holding the population lock, try to hold once more (the previous holder may have
   finished).  If instead it failed after we started waiting for it, its error record is newer
   than our wait: raise that error, so one failure is not repeated by every waiter.  If it died,
   there is no record: we take over.
4. Populate: write the status file (this reserves the space), fill a store of ``<name>`` with
   the recipe (``work`` survives us for a takeover), commit it with a lease for the owner in the
   same transaction, then remove the work directory and the status.  On failure write the error
   record, discard the work directory and raise.  Release the population lock.  A process
   killed here releases the lock with its death; a waiter takes over at step 3.
5. Make sure ``<base>/<name>`` links to the entry, and return the path.

Release (``sc --unuse``) drops one lease of the owner; the engine deletes the entry in the same
transaction if no live use remains and it is not kept.  The link is then removed under the
population lock, so it never disappears under a population that is recreating it.
"""

from __future__ import annotations

import os
import time

from . import errors, locks
from .errors import (
    CacheError,
    ConflictError,
    LoaderError,
    MissError,
    NoSpaceError,
    SharedCacheError,
    SizeLimitError,
    UsageError,
    WaitTimeoutError,
)
from .fscache import FsCache, check_name
from .fsutil import remove_tree, unlink_if_present, write_atomic
from .leases import Owner
from .progress import Reporter
from .scoped import scoped
from .words import default_name, recipe_identity
from .sizes import format_size, parse_size

TYPE_CHECKING = False  # typing itself is not imported: it is costly on the warm path
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from pathlib import Path

DEFAULT_DIRECTORIES = "/tmp:/var/tmp"
# The caches this process has opened, kept so that a program calling use() in a loop opens each
# cache and its index once (a new FsCache costs checks, and its connection to the index).
_open_caches: dict[tuple[str, int | None], FsCache] = {}
CONTROL = ".shared-cache"
# An error record answers the waiters of the population that failed; later users try afresh.
_ERROR_RECORD_TTL = 600.0


def candidate_directories(directories: str | Sequence[str | os.PathLike[str]] | None) -> list[str]:
    """The candidate base directories: as given, else ``$SC_DIRECTORIES``, else /tmp:/var/tmp."""
    if directories is None:
        directories = os.environ.get("SC_DIRECTORIES") or DEFAULT_DIRECTORIES
    if isinstance(directories, str):
        directories = [d for d in directories.split(":") if d]
    result = [os.path.abspath(d) for d in directories]
    if not result:
        raise UsageError("no candidate directory given")
    return result


def split_words(words: Iterable[str]) -> list[str]:
    """Loader words; a string holding several words separated by spaces counts as those."""
    return [w for word in words for w in word.split()]


class Request:
    """One call of :meth:`Repositories.acquire`: what is asked for, by whom, on what terms."""

    __slots__ = ("words", "identity", "name", "owner", "keep", "limit", "timeout", "deadline",
                 "connections")

    def __init__(self, words: list[str], *, name: str, owner: Owner, keep: bool, limit: int | None,
                 timeout: float | None, connections: int) -> None:
        self.words, self.identity, self.name = words, recipe_identity(words), name
        self.owner, self.keep, self.limit = owner, keep, limit
        self.timeout, self.connections = timeout, connections
        self.deadline = None if timeout is None else time.monotonic() + timeout


class Held:
    """A use held on a repository: its name, base directory, path, cache and lease id."""

    __slots__ = ("name", "base", "path", "cache", "lease")

    def __init__(self, name: str, base: str, path: str, cache: FsCache, lease: str) -> None:
        self.name, self.base, self.path, self.cache, self.lease = name, base, path, cache, lease


class Base:
    """One candidate base directory and the repositories in it."""

    def __init__(self, path: str, group: int | None = None) -> None:
        self.path = path
        self.group = group
        self.control = os.path.join(path, CONTROL)
        self.populate_dir = os.path.join(self.control, "populate")
        self._cache: FsCache | None = None

    def has_cache(self) -> bool:
        return os.path.exists(os.path.join(self.control, "cache.info"))

    def cache(self) -> FsCache:
        if self._cache is None:
            key = (self.control, self.group)
            self._cache = _open_caches.get(key)
            if self._cache is None or not os.path.isdir(self.populate_dir):
                self._cache = _open_caches[key] = FsCache(self.control, group=self.group)
                try:
                    os.mkdir(self.populate_dir)
                except FileExistsError:
                    pass
        return self._cache

    def link(self, name: str) -> str:
        return os.path.join(self.path, name)

    def link_target(self, name: str) -> str:
        return f"{CONTROL}/objects/{name}/data"

    def population_file(self, name: str, suffix: str) -> str:
        return os.path.join(self.populate_dir, name + suffix)

    def free_space(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def reserved(self) -> int:
        """Space reserved by the populations in progress here."""
        total = 0
        for name, status in self.populations():
            total += int(status.get("size") or 0)
        return total

    def populations(self) -> list[tuple[str, dict]]:
        """(name, status) of every population in progress (its lock is held)."""
        found: list[tuple[str, dict]] = []
        try:
            status_files = [f for f in os.listdir(self.populate_dir) if f.endswith(".json")]
        except OSError:
            return found
        for file in status_files:
            name = file[: -len(".json")]
            if self.populating(name):
                status = read_status(os.path.join(self.populate_dir, file))
                if status is not None:
                    found.append((name, status))
        return found

    def populating(self, name: str) -> bool:
        """Whether some process holds the population lock of ``name`` now."""
        try:
            fd = locks.open_lock_file(self.population_file(name, ".lock"), create=False)
        except FileNotFoundError:
            return False
        try:
            return not locks.try_lock(fd, locks.EXCLUSIVE)
        finally:
            os.close(fd)

    # -- links -----------------------------------------------------------------------------------

    def ensure_link(self, name: str) -> str:
        """Make ``<base>/<name>`` a link to the entry's data; refuse anything else found there."""
        link, target = self.link(name), self.link_target(name)
        while True:
            try:
                current = os.readlink(link)
            except FileNotFoundError:
                try:
                    os.symlink(target, link)  # fails, rather than replaces, if anything is there
                except FileExistsError:
                    continue
                return link
            except OSError:
                raise SharedCacheError(
                    f"{link} exists and is not a shared-cache link; refusing to use it"
                ) from None
            if current != target:
                raise SharedCacheError(
                    f"{link} is a symlink to {current!r}, not to repository {name!r}; "
                    "refusing to follow it"
                )
            return link

    def drop_link_if_unused(self, name: str) -> None:
        """Remove the link of a deleted repository, unless it is being populated again."""
        fd = locks.open_lock_file(self.population_file(name, ".lock"))
        try:
            if not locks.try_lock(fd, locks.EXCLUSIVE) or name in self.cache():
                return
            try:
                if os.readlink(self.link(name)) == self.link_target(name):
                    os.unlink(self.link(name))
            except OSError:
                pass  # no link, or not ours: nothing to remove
        finally:
            os.close(fd)


def write_record(path: str, record: dict) -> None:
    """Write a status or error record atomically."""
    import json  # records are written on a miss only

    write_atomic(path, json.dumps(record).encode())


def read_status(path: str) -> dict | None:
    """A status or error record, or None if it is missing or unreadable."""
    import json

    try:
        with open(path, "rb") as f:
            value = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class Repositories:
    """The repositories of a list of candidate base directories."""

    def __init__(
        self,
        directories: str | Sequence[str | os.PathLike[str]] | None = None,
        *,
        reporter: Reporter | None = None,
        group: int | None = None,
    ) -> None:
        """``group``: create new caches in the bases as group caches of that gid."""
        self.bases = [Base(p, group) for p in candidate_directories(directories)]
        self.reporter = reporter or Reporter(verbosity=-1)
        #: base directories found unusable (path -> why), skipped from then on
        self.unusable: dict[str, str] = {}

    # -- acquire ---------------------------------------------------------------------------------

    def acquire(
        self,
        words: Sequence[str],
        *,
        owner: Owner,
        name: str | None = None,
        size: int | str | None = None,
        keep: bool = False,
        max_size: int | str | None = None,
        timeout: float | None = None,
        connections: int = 1,
    ) -> Held:
        """Hold a use of the repository made by ``words`` for ``owner``, populating it if needed.

        ``connections`` is how many connections a download may use (it does not change the
        data, so it is not part of the recipe's identity)."""
        words = split_words(words)
        if not words:
            raise UsageError("no loader given (expected a source such as http:URL, then transforms)")
        request = Request(
            words,
            name=check_repository_name(name) if name is not None else default_name(words),
            owner=owner,
            keep=keep,
            limit=None if size is None else parse_size(size, "--size"),
            timeout=timeout,
            connections=connections,
        )
        budget = None if max_size is None else parse_size(max_size, "--max-size")
        base = self._existing(request)
        if isinstance(base, Held):
            if budget is not None:
                self._set_budget(base.cache, budget)  # after the hold: evictions spare ours
            return base
        if base is None:
            base = self._choose(request)
        cache = base.cache()
        if budget is not None:
            self._set_budget(cache, budget)
        lease = self._hold_or_populate(base, request)
        return Held(request.name, base.path, base.ensure_link(request.name), cache, lease)

    @staticmethod
    def _set_budget(cache: FsCache, budget: int) -> None:
        """Give the cache this budget; a budget already in place costs no write (nor the index)."""
        if cache.max_size != budget:
            cache.max_size = budget

    def _existing(self, request: Request) -> Held | Base | None:
        """Step 1: a held use where the repository exists, or the base populating it, or None."""
        name = request.name
        populating = None
        for base in self.bases:
            if not base.has_cache() or base.path in self.unusable:
                continue
            try:
                lease = self._hold(base, request)
            except CacheError as e:
                self.unusable[base.path] = str(e)
                continue
            except MissError:
                if populating is None and base.populating(name):
                    populating = base
                continue
            return Held(name, base.path, base.ensure_link(name), base.cache(), lease)
        return populating

    def _try_hold(self, base: Base, request: Request) -> str | None:
        """A lease on the repository if it is ready in ``base``, else None."""
        try:
            return self._hold(base, request)
        except MissError:
            return None

    def _hold(self, base: Base, request: Request) -> str:
        try:
            return base.cache().hold(
                request.name, request.owner, keep=request.keep, meta=request.identity
            )
        except ConflictError as e:
            raise conflict(request.name, base.path, e.existing, request.identity) from None

    def _choose(self, request: Request) -> Base:
        """Step 1, continued: the first base with room for ``limit`` bytes.

        Populations in progress reserve their size on their file system, so the reservations
        of every candidate on the same device count against each of them.
        """
        name, limit = request.name, request.limit
        seen = [f"{path} ({problem})" for path, problem in self.unusable.items()]
        present = [b for b in self.bases if os.path.isdir(b.path) and b.path not in self.unusable]
        reserved: dict[int, int] = {}
        if limit is not None:
            for base in present:
                device = os.stat(base.path).st_dev
                reserved[device] = reserved.get(device, 0) + (base.reserved() if base.has_cache() else 0)
        for base in present:
            if limit is not None:
                free = base.free_space() - reserved[os.stat(base.path).st_dev]
                if free < limit:
                    seen.append(f"{base.path} ({format_size(max(free, 0))} free)")
                    continue
            try:
                base.cache()
            except CacheError as e:
                seen.append(f"{base.path} ({e})")
                continue
            return base
        seen += [f"{b.path} (missing)" for b in self.bases if not os.path.isdir(b.path)]
        if limit is None or not any(s.endswith(" free)") for s in seen):
            raise CacheError(f"repository {name!r}: no usable candidate directory: " + ", ".join(seen))
        raise NoSpaceError(
            f"repository {name!r}: no usable candidate directory has {format_size(limit)} free: "
            + ", ".join(seen)
        )

    def _hold_or_populate(self, base: Base, request: Request) -> str:
        """Steps 2-4 of the protocol in the module docstring."""
        lock_path = base.population_file(request.name, ".lock")
        waited_since: float | None = None
        while True:
            lease = self._try_hold(base, request)
            if lease is not None:
                return lease
            fd = locks.open_lock_file(lock_path)
            try:
                if not locks.try_lock(fd, locks.EXCLUSIVE):
                    if waited_since is None:
                        waited_since = time.time()
                    self._wait(base, request, fd)
                if not locks.still_linked(fd, lock_path):
                    continue
                lease = self._try_hold(base, request)
                if lease is not None:
                    return lease
                if waited_since is not None:
                    self._raise_recorded_failure(base, request.name, waited_since)
                return self._populate(base, request)
            finally:
                os.close(fd)

    def _wait(self, base: Base, request: Request, fd: int) -> None:
        name, identity, deadline = request.name, request.identity, request.deadline
        status_path = base.population_file(name, ".json")

        def report(elapsed: float) -> None:
            status = read_status(status_path) or {}
            if status.get("identity") not in (None, identity):
                raise conflict(name, base.path, status.get("identity"), identity)
            done, total = status.get("done", 0), status.get("total")
            of = f" of {format_size(total)}" if total else ""
            self.reporter.waiting(
                f"waiting {elapsed:.0f} s for process {status.get('pid', '?')} to populate "
                f"{name!r} in {base.path}: {format_size(done)}{of} so far"
            )

        report(0.0)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            locks.lock(fd, locks.EXCLUSIVE, timeout=remaining, waiting=report)
        except WaitTimeoutError:
            pid = (read_status(base.population_file(name, ".json")) or {}).get("pid", "?")
            raise WaitTimeoutError(
                f"repository {name!r}: timed out after {request.timeout:g} s waiting for process "
                f"{pid} to populate it in {base.path}"
            ) from None

    @staticmethod
    def _raise_recorded_failure(base: Base, name: str, waited_since: float) -> None:
        record = read_status(base.population_file(name, ".error"))
        if record and float(record.get("time", 0)) >= waited_since:
            kind = getattr(errors, str(record.get("error")), None)
            if not (isinstance(kind, type) and issubclass(kind, SharedCacheError)):
                kind = LoaderError
            raise kind(str(record.get("message", f"repository {name!r}: population failed")))

    def _populate(self, base: Base, request: Request) -> str:
        from .recipe import parse_recipe  # loaders are needed on a miss only

        name, words, identity, owner = request.name, request.words, request.identity, request.owner
        keep, limit, connections = request.keep, request.limit, request.connections
        recipe = parse_recipe(words)
        cache = base.cache()
        status_path = base.population_file(name, ".json")
        error_path = base.population_file(name, ".error")
        work = base.population_file(name, ".work")
        status = {"pid": os.getpid(), "identity": identity, "size": limit, "done": 0,
                  "total": None, "started": time.time()}
        write_record(status_path, status)
        self._prepare_work(work, identity)
        bar = self.reporter.bar(name)
        last_write = 0.0

        def progress(done: int, total: int | None) -> None:
            nonlocal last_write
            bar(done, total)
            if time.monotonic() - last_write >= 0.5:
                last_write = time.monotonic()
                status.update(done=done, total=total)
                write_record(status_path, status)

        self.reporter.info(f"populating {name!r} in {base.path} from {' '.join(words)}")

        def fill() -> None:
            with cache.store(name, meta=identity, keep=keep, holder=owner, strict_budget=False) as data:
                recipe.populate(
                    data, work=work, limit=limit, progress=progress, connections=connections
                )

        try:
            try:
                fill()
            except NoSpaceError as e:
                # The file system is full: the space kept repositories hold is given back, once.
                freed = 0 if isinstance(e, SizeLimitError) else cache.evict()
                if not freed:
                    raise
                self.reporter.info(f"{e}; evicted {format_size(freed)} of kept data, trying again")
                self._prepare_work(work, identity)
                fill()
        except SharedCacheError as e:
            e.args = (f"repository {name!r}: {e}",)
            record = {"time": time.time(), "message": str(e), "error": type(e).__name__}
            write_record(error_path, record)
            remove_tree(work)
            raise
        finally:
            bar.close()
            unlink_if_present(status_path)
        remove_tree(work)
        unlink_if_present(error_path)
        lease = cache.lease_of(name, owner)
        assert lease is not None, "the commit gives the owner a lease"
        if cache.info(name).meta != identity:  # a direct FsCache user stored the name meanwhile
            cache.release(name, lease=lease)
            raise conflict(name, base.path, cache.info(name).meta, identity)
        return lease

    @staticmethod
    def _prepare_work(work: str, identity: str) -> None:
        """Keep a dead populator's work directory for the same recipe; clear any other."""
        marker = os.path.join(work, ".identity")
        try:
            with open(marker, encoding="utf-8") as f:
                if f.read() == identity:
                    return
        except OSError:
            pass
        remove_tree(work)
        os.mkdir(work)
        write_atomic(marker, identity.encode())

    # -- release, location, listing, gc ----------------------------------------------------------

    def find(self, name: str) -> Base | None:
        """The base holding a ready repository ``name``."""
        for base in self.bases:
            if base.has_cache() and name in base.cache():
                return base
        return None

    def release(
        self, words: Sequence[str], *, owner: Owner, name: str | None = None, keep: bool = False
    ) -> bool:
        """Release one use of ``owner``; return whether that deleted the repository."""
        words = split_words(words)
        name = check_repository_name(name) if name is not None else default_name(words)
        base = self.find(name)
        if base is None:
            raise SharedCacheError(
                f"no repository {name!r} in {', '.join(str(b.path) for b in self.bases)}"
            )
        try:
            deleted = base.cache().release(name, owner, keep=keep)
        except UsageError:
            raise SharedCacheError(
                f"process {owner.pid} holds no use of repository {name!r} in {base.path}"
            ) from None
        if deleted:
            base.drop_link_if_unused(name)
        return deleted

    def release_held(self, held: Held, *, keep: bool = False) -> None:
        """Release a use returned by :meth:`acquire`."""
        try:
            deleted = held.cache.release(held.name, lease=held.lease, keep=keep)
        except MissError:
            return  # deleted already (gc found its owner dead)
        if deleted:
            Base(held.base).drop_link_if_unused(held.name)

    def locate(self, words: Sequence[str], *, name: str | None = None) -> str | None:
        words = split_words(words)
        name = check_repository_name(name) if name is not None else default_name(words)
        base = self.find(name)
        return None if base is None else base.link(name)

    def listing(self) -> list[dict]:
        """Every repository in the candidate bases: ready ones and populations in progress."""
        rows = []
        for base in self.bases:
            if not base.has_cache():
                continue
            for entry in base.cache().entries():
                rows.append({
                    "name": entry.name, "path": str(base.link(entry.name)), "state": "ready",
                    "size": entry.size, "users": list(entry.users), "keep": entry.keep,
                    "last_used": entry.last_used, "base": str(base.path),
                })
            for name, status in base.populations():
                rows.append({
                    "name": name, "path": str(base.link(name)), "state": "populating",
                    "size": status.get("done", 0), "users": [status.get("pid")], "keep": None,
                    "last_used": status.get("started"), "base": str(base.path),
                })
        return rows

    def collect(self) -> dict[str, dict]:
        """gc every base: the engine's gc, then the population leftovers and stale links."""
        reports = {}
        for base in self.bases:
            if not base.has_cache():
                continue
            report = vars(FsCache(base.control, group=base.group, repair=True).gc())
            report["populations_cleaned"] = self._clean_populations(base)
            report["links_removed"] = self._clean_links(base)
            reports[str(base.path)] = report
        return reports

    @staticmethod
    def _clean_populations(base: Base) -> int:
        cleaned = 0
        names = set()
        files = []
        for entry in os.scandir(base.populate_dir):
            if entry.is_symlink():  # nothing here is a symlink but what someone planted
                os.unlink(entry.path)
            else:
                files.append(entry.name)
        for file in files:
            stem, dot, suffix = file.rpartition(".")
            if dot and suffix in ("lock", "json", "error", "work"):
                names.add(stem)
        for name in names:
            lock_path = base.population_file(name, ".lock")
            fd = locks.open_lock_file(lock_path)
            try:
                if not locks.try_lock(fd, locks.EXCLUSIVE):
                    continue
                error = base.population_file(name, ".error")
                record = read_status(error)
                if record is None or time.time() - float(record.get("time", 0)) > _ERROR_RECORD_TTL:
                    unlink_if_present(error)
                remove_tree(base.population_file(name, ".work"))
                # Records are written under the population lock, so the temporary files of
                # their atomic writes are abandoned once it is free.
                for file in files:
                    if file.startswith((f".{name}.json.tmp-", f".{name}.error.tmp-")):
                        unlink_if_present(os.path.join(base.populate_dir, file))
                unlink_if_present(base.population_file(name, ".json"))
                if not os.path.exists(error):
                    os.unlink(lock_path)  # waiters check that the path still names what they lock
                cleaned += 1
            finally:
                os.close(fd)
        return cleaned

    @staticmethod
    def _clean_links(base: Base) -> int:
        """Remove the links of deleted repositories (run after the engine's gc, which has given
        every committed entry its row)."""
        removed = 0
        present = base.cache().names()
        for link in os.scandir(base.path):
            if link.name in present:
                continue
            try:
                ours = link.is_symlink() and os.readlink(link.path) == base.link_target(link.name)
            except OSError:
                continue  # gone meanwhile
            if ours and link.name not in base.cache():
                base.drop_link_if_unused(link.name)
                removed += not os.path.islink(link.path)
        return removed


def check_repository_name(name: str) -> str:
    try:
        return check_name(name)
    except UsageError:
        raise UsageError(
            f"invalid repository name {name!r}: it must be one path component, not starting "
            "with '.'"
        ) from None


def conflict(name: str, base: str, existing: str | None, identity: str) -> SharedCacheError:
    theirs = " ".join((existing or "?").split("\n"))
    return SharedCacheError(
        f"repository {name!r} in {base} already exists with another loader stack ({theirs}); "
        "choose another --name"
    )


@scoped
def use(
    *words: str,
    name: str | None = None,
    size: int | str | None = None,
    directories: str | Sequence[str | os.PathLike[str]] | None = None,
    keep: bool = False,
    max_size: int | str | None = None,
    timeout: float | None = None,
    connections: int = 1,
    verbosity: int = -1,
) -> Iterator[Path]:
    """Hold a use of a repository for the duration of the ``with`` block; yield its path.

    The first user populates it from the loader ``words``; the others wait and share it.  The use
    is a lease of this process and also a kernel lock, so it vanishes if the process dies; on
    exit it is released, and the last release deletes the repository unless ``keep``.
    """
    repositories = Repositories(directories, reporter=Reporter(verbosity))
    held = repositories.acquire(
        words, owner=Owner.current(), name=name, size=size, keep=keep, max_size=max_size,
        timeout=timeout, connections=connections,
    )
    try:
        with held.cache.load(held.name):
            from pathlib import Path

            yield Path(held.path)
    finally:
        repositories.release_held(held, keep=keep)
