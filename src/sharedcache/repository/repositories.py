"""The repositories of a list of candidate base directories: acquire, release, locate, list, gc.

:class:`Repositories` follows the protocol in the docstring of :mod:`sharedcache.repository`
(step 1 here, steps 2-4 in :mod:`~sharedcache.repository.population`); :func:`use` is the
Python API.  Settings arrive as arguments: the environment is read by the callers (the command
line, :func:`use`), not here.
"""

from __future__ import annotations

import errno
import os
import time
from _thread import _local as thread_local  # threading.local, without importing threading

from ..engine import locks
from ..engine.fscache import FsCache
from ..engine.fsutil import remove_leftovers, shown_path, unlink_if_present
from ..engine.layout import MAX_NAME_BYTES, check_base, check_flag, check_name, user_directory
from ..engine.leases import INTERRUPTS, Owner, require_proc
from ..errors import (
    BusyError,
    CacheError,
    MissError,
    NoSpaceError,
    SharedCacheError,
    UsageError,
    no_space_for,
    not_utf8_here,
    printable,
    raise_if_over_limit,
    why_not_utf8_here,
    without_user_info,
    writes_as_utf8,
)
from ..lean import scoped
from ..loaders.words import (
    default_name,
    earlier_identities,
    legacy_default_name,
    legacy_identity,
    normalize_words,
    recipe_identity,
    source_count,
)
from ..modes import read_umask_again
from ..progress import Reporter
from ..sizes import NO_BUDGET, format_size, parse_budget, parse_size
from .bases import (
    POPULATE,
    PRIVATE_CACHE,
    RECIPE_LOST,
    RESERVATIONS_LOCK,
    WAITING,
    Base,
    base_directories,
    conflict,
    group_id,
    open_with_waiters,
    recipe_lost,
    say_if_budget_damaged,
    unlink_unless_locked,
)

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path
    from typing import TypeVar

    from ..config.settings import FetchPolicy
    from ..loaders.registry import Recipe
    from .records import Record

    Changed = TypeVar("Changed")

    #: A fetch policy, or a function that makes one when a miss needs it.
    Fetch = FetchPolicy | Callable[[], FetchPolicy]

#: Why a base on a file system mounted read-only is skipped.
READ_ONLY = "a read-only file system"
#: What makes a candidate base no use to a command that looks for a cache to use (a miss choosing
#: where to populate, a listing, a gc), which then skips it saying why: the base, this user's
#: directory or the cache is not safe to use, or its file system has no room (no block, no
#: inode) to make what the cache needs there.
UNUSABLE = (CacheError, NoSpaceError)

#: How many acquires and releases are under way in this thread (``depth``), one inside another
#: only in a signal handler, which runs in the thread whose step it interrupted (see
#: :class:`Repositories`).
_steps = thread_local()


@scoped
def _a_step() -> Iterator[None]:
    """An acquire or a release of this thread, under way (see :data:`_steps`)."""
    _steps.depth = getattr(_steps, "depth", 0) + 1
    try:
        yield
    finally:
        _steps.depth -= 1


def checked_timeout(timeout: float | None) -> float | None:
    """``timeout`` as seconds (None: no limit); :class:`SettingError` if it is not a number of
    seconds (negative, NaN)."""
    if timeout is None:
        return None
    from ..config.settings import seconds

    return seconds("timeout", timeout)


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` at which ``timeout`` seconds, checked, from now end (None: never)."""
    return None if timeout is None else time.monotonic() + timeout


class Request:
    """One call of :meth:`Repositories.acquire`: what is asked for, by whom, on what terms."""

    __slots__ = (
        "_fetch",
        "_policy",
        "_recipe",
        "chosen",
        "deadline",
        "given",
        "identity",
        "keep",
        "limit",
        "name",
        "owner",
        "timeout",
        "words",
    )

    def __init__(self, words: tuple[str, ...], identity: str, *, name: str, owner: Owner,
                 keep: bool, limit: int | None, timeout: float | None, fetch: Fetch | None) -> None:
        self.words, self.identity, self.name = words, identity, name
        #: The words as given, before normalize_words: what repositories made by earlier
        #: versions were identified by (see Base.hold), read only on a conflict.
        self.given: tuple[str, ...] = words
        self.owner, self.keep, self.limit = owner, keep, limit
        self.timeout, self._fetch = checked_timeout(timeout), fetch
        self._policy: FetchPolicy | None = None  # made from _fetch on first need
        self._recipe: Recipe | None = None  # parsed from words on first need
        self.deadline = deadline_after(self.timeout)
        #: Whether the base was chosen for the room it had for ``limit``: the population checks
        #: that room again as it reserves it (a use that takes over another's population, whose
        #: data may fill part of it already, was not).
        self.chosen = False

    @property
    def recipe(self) -> Recipe:
        """The recipe the words make, parsed on first need: a use of ready data, and a wait for
        another process's population, import no loader.  A miss asks for it before it chooses a
        base, so that a bad recipe is refused as such (exit 2), not said as a want of a
        directory where none would do, and before a cache is made for it."""
        if self._recipe is None:
            from ..loaders.registry import parse_recipe

            self._recipe = parse_recipe(self.words, self.fetch.rewrites)
        return self._recipe

    @property
    def fetch(self) -> FetchPolicy:
        """How a download fetches, made on first need: a use of ready data fetches nothing, so
        it neither imports the fetch settings nor reads credentials (nor fails on a bad one).

        Made, it checks the proxies that curl's variables name, when it follows them and the
        recipe downloads over HTTP: the download reads them, inside the population, where a bad
        one failed it once its work was begun (a bad proxy setting fails before).  Both schemes':
        a redirect or a rewrite may take the download to the other.  So are the files that the
        variables of the credentials name (:meth:`~sharedcache.config.settings.Credentials.check_variables`),
        the CAs' only when the recipe or a rewrite's mirror asks for an HTTPS URL."""
        if self._policy is not None:
            return self._policy
        fetch = self._fetch
        if fetch is None:
            from ..config.settings import FetchPolicy

            fetch = FetchPolicy()
        elif callable(fetch):
            fetch = fetch()
        urls = [word[5:] for word in self.words[:source_count(self.words)] if word.startswith("http:")]
        if not fetch.offline and urls:
            if fetch.proxy is None:
                from ..loaders.transport import curl_proxies

                curl_proxies(os.environ)
            if fetch.credentials is not None:
                # (A redirect to HTTPS checks the CAs' ones when its connection is made: see tls_context.)
                fetch.credentials.check_variables(tls=any(
                    url[:6].lower() == "https:" for url in (*urls, *(mirror for rule in fetch.rewrites
                                                                     for mirror in rule.mirrors))))
        self._policy = fetch
        return fetch


class Held:
    """A use held on a repository: its name, base directory, path, cache and lease id."""

    __slots__ = ("base", "cache", "lease", "name", "path")

    def __init__(self, name: str, base: str, path: str, cache: FsCache, lease: str) -> None:
        self.name, self.base, self.path, self.cache, self.lease = name, base, path, cache, lease


class Repositories:
    """The repositories of a list of candidate base directories."""

    def __init__(
        self,
        directories: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        reporter: Reporter | None = None,
        group: int | None = None,
    ) -> None:
        """``directories``: the candidate base directories (see
        :func:`~sharedcache.config.settings.base_directories`; None: the defaults).
        ``group``: create new caches in the bases as group caches of that gid.

        Made while an acquire or a release of this thread is under way, by a signal handler
        that interrupted it (its use()), it opens caches of its own (see :class:`Base`): the
        interrupted step's are in a state of that step's, its connection to an index perhaps in
        a transaction, its deadline set, which the handler's would share and change."""
        require_proc()  # (before the identity of a job is asked for)
        self.group = group
        interrupting = getattr(_steps, "depth", 0) > 0
        self.bases = [Base(p, group, of_its_own=interrupting) for p in base_directories(directories)]
        self.reporter = reporter or Reporter(verbosity=-1)
        #: base directories found unusable (path -> why), skipped from then on
        self.unusable: dict[str, str] = {}
        self._reported: set[str] = set()

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
        fetch: Fetch | None = None,
    ) -> Held:
        """Hold a use of the repository made by ``words`` for ``owner``, populating it if needed.

        ``fetch`` says how a download fetches (connections, timeouts, retries; None: the
        defaults); it does not change the data, so it is not part of the recipe's identity.  It
        may be a function that makes the policy: it is called on a miss only, before anything is
        created, so that its errors (a bad setting) leave nothing behind."""
        check_flag("keep", keep)
        read_umask_again()
        given, words = words, normalize_words(words)
        if not words:
            raise UsageError("no loader given (expected a source such as http:URL, then transforms)")
        request = Request(
            words,
            recipe_identity(words),
            name=check_repository_name(name) if name is not None else default_name(words),
            owner=owner,
            keep=keep,
            limit=None if size is None else parse_size(size, "--size"),
            timeout=timeout,
            fetch=fetch,
        )
        request.given = tuple(given)
        budget = None if max_size is None else parse_budget(max_size, "--max-size")
        with _a_step():
            for base in self.bases:
                base.bound_waits(request.deadline)
            try:
                return self._acquire(request, budget)
            finally:
                self._finish()

    def _acquire(self, request: Request, budget: int | None) -> Held:
        """The steps of :meth:`acquire`, each wait in the caches bounded by the request's deadline."""
        base = self._existing(request)
        if isinstance(base, Held):
            self._report_skips()
            if budget is not None:
                try:
                    self._set_budget(base.cache, budget)  # after the hold: evictions spare ours
                except BaseException:
                    self._give_back(base)  # a failed use leaks no lease
                    raise
            return base
        request.fetch  # noqa: B018 - a miss: the fetch policy is made (or fails) before anything else
        if base is None:  # (else another process populates it, whose waiters need no loader)
            request.recipe  # noqa: B018 - and a bad recipe is refused before a base is chosen
            base = self._choose(request)
            request.chosen = True
        self._report_skips()
        base.linked(request.name)  # a name this user holds in another cache of the base: refused before any download
        cache = base.cache()
        if budget is not None:
            self._set_budget(cache, budget)
        from .population import RoomTaken, hold_or_populate  # a miss, or a wait for one

        try:
            lease = hold_or_populate(base, request, self.reporter)
        except RoomTaken as e:
            # Another use that chose this base at the same moment reserved the room first: the
            # choice is made again without it, nor the other candidates of its file system.
            self._give_up(base, NoSpaceError(str(e)))
            return self._acquire(request, budget)
        except NoSpaceError as e:
            # Full, with nothing left to evict there: the next candidate may have the room
            # (a --size outgrown is the data's, and fails the use wherever it is made).  So for
            # a use that waited for another's population there, which the populator's error
            # record failed: that populator goes on in the next candidate, where this use
            # finds it.
            from ..errors import SizeLimitError  # (a loader's error: made on a miss only)

            if isinstance(e, SizeLimitError):
                raise
            self._give_up(base, e)
            if not any(other.path not in self.unusable for other in self.bases):
                raise
            self.reporter.info(f"{e}; trying the next candidate directory")
            return self._acquire(request, budget)
        return self._held(base, request.name, lease)

    def _give_up(self, base: Base, error: SharedCacheError) -> None:
        """Skip ``base``, and the other candidates on its file system, for ``error``."""
        device = os.stat(base.path).st_dev
        for other in self.bases:
            if other is base or (os.path.isdir(other.path) and os.stat(other.path).st_dev == device):
                self._skip(other, error)

    def _held(self, base: Base, name: str, lease: str) -> Held:
        """The use just taken with ``lease``, once its link is in place; a use whose link
        cannot be made is released, not leaked."""
        try:
            link = base.ensure_link(name)
        except BaseException:
            self._give_back(Held(name, base.path, "", base.cache(), lease))
            raise
        return Held(name, base.path, link, base.cache(), lease)

    def _give_back(self, held: Held) -> None:
        """Release the use ``held``, which this command took but fails to hand out.  A release
        needs the index, which may be what failed the command (busy until its deadline, which has
        passed by now, or unusable): the lease is then removed alone, so that the owner, told of
        a failure, is not left holding the repository."""
        try:
            self.release_held(held)
        except (SharedCacheError, OSError):
            held.cache.drop_lease(held.name, held.lease)

    def _skip(self, base: Base, error: SharedCacheError) -> None:
        """Skip ``base`` from now on; why is said once, by :meth:`_report_skips` if the
        command goes on, or in its error if it fails."""
        self.unusable.setdefault(base.path, str(error))

    def _skip_unusable(self, base: Base, error: SharedCacheError) -> None:
        """Skip ``base`` for ``error``, met in its cache: on a read-only file system, for that
        alone, whatever the engine's error says of the cache."""
        self._skip(base, CacheError(READ_ONLY) if base.read_only() else error)

    def skip_missing(self) -> None:
        """Skip from now on each candidate that is no directory, saying why as for a base that
        cannot be used: for candidates that the caller named, where one missing is a typo or a
        file system not mounted (sc never makes a base directory), not a base unused so far.  A
        candidate of a setting or of the defaults (``/var/tmp`` in a container) may well be
        missing, and is passed over in silence without this."""
        for base in self.bases:
            why = _not_a_directory(base.path)
            if why is not None:
                self._skip(base, CacheError(why))

    def cacheless(self) -> list[str]:
        """The candidates not skipped that hold no cache (this user's own, or the group's): no
        use has made one there, and there is nothing to list or collect."""
        return [base.path for base in self.bases if base.path not in self.unusable and not base.has_cache()]

    def _report_skips(self) -> None:
        for path, problem in self.unusable.items():
            if path not in self._reported:
                self._reported.add(path)
                self.reporter.warning(f"skipping {path}: {problem}")

    def _searched(self) -> str:
        """The candidates searched, each skipped one with why."""
        return ", ".join(
            f"{b.path} ({self.unusable[b.path]})" if b.path in self.unusable else b.path for b in self.bases
        )

    def _caches(self) -> Iterator[tuple[Base, FsCache]]:
        """Each candidate base that has a cache this user may use, with its cache; the others
        are skipped with one line saying why."""
        for base in self.bases:
            if base.path in self.unusable:
                continue
            try:
                if not base.present():
                    continue
                cache = base.cache()
                try:
                    base.populate_dir  # noqa: B018 - made now if missing: a base with no room for it is skipped
                except OSError as e:
                    # Read-only (a cache made by FsCache alone has none): nothing is made there,
                    # and what looks at what is ready needs none.
                    if e.errno != errno.EROFS:
                        raise
            except UNUSABLE as e:
                self._skip(base, e)
                continue
            yield base, cache

    @staticmethod
    def _set_budget(cache: FsCache, budget: int) -> None:
        """Give the cache this budget (:data:`~sharedcache.sizes.NO_BUDGET`: lift the one it
        has); a budget already in place costs no write (nor the index), and a damaged one is
        written over, as its error says to do."""
        if Repositories._budget_differs(cache, budget):
            cache.max_size = _stored(budget)

    @staticmethod
    def _budget_differs(cache: FsCache, budget: int) -> bool:
        """Whether the cache's budget is another than ``budget``, or damaged."""
        try:
            return cache.max_size != _stored(budget)
        except CacheError:
            return True

    def _existing(self, request: Request) -> Held | Base | None:
        """Step 1: a held use where the repository exists, or the base populating it, or None."""
        name = request.name
        populating = None
        for base in self.bases:
            if not base.has_cache() or base.path in self.unusable:
                continue
            try:
                lease = base.hold(request, self.reporter)
            except CacheError as e:
                self._skip_unusable(base, e)  # (a use is a lease, written there)
                continue
            except MissError:
                if populating is None and self._found_populating(base, name):
                    populating = base
                continue
            return self._held(base, name, lease)
        return populating

    @staticmethod
    def _found_populating(base: Base, name: str) -> bool:
        """Whether ``name`` is being populated in ``base``; if it is, this use waits for it from
        now on (see :meth:`Base.await_population`), until :func:`hold_or_populate` has its lease
        (or :meth:`acquire` ends): said before the population lock is looked at, so that what a
        population found under way makes is not deleted before this use holds it."""
        try:
            base.await_population(name, at_once=True)
        except SharedCacheError:
            pass  # (something planted there: said by step 2, if this base is the one it takes)
        if base.populating(name):
            return True
        base.stop_awaiting()
        return False

    def _choose(self, request: Request) -> Base:
        """Step 1, continued: the first base with room for ``limit`` bytes, and a block and an
        inode; a base with none left comes after the others.

        Populations in progress reserve their size on their file system, so the reservations
        of every candidate on the same device count against each of them.  The unused
        repositories of a base's cache are room too: evicted, least recently used first, for
        what the free space lacks (:meth:`Base.room`).
        """
        name, limit = request.name, request.limit
        seen = [f"{path} ({problem})" for path, problem in self.unusable.items()]
        present = [b for b in self.bases if os.path.isdir(b.path) and b.path not in self.unusable]
        reserved: dict[int, int] = {}
        if limit is not None:
            for base in present:
                device = os.stat(base.path).st_dev
                reserved[device] = reserved.get(device, 0) + (base.reserved() if base.has_cache() else 0)
        # A full base comes last: chosen only if no other will do, and its evictions make room.
        full = {base.path for base in present if base.full()}
        for base in sorted(present, key=lambda base: base.path in full):
            if base.read_only():
                seen.append(f"{base.path} ({READ_ONLY})")
                continue
            made = not base.has_cache()
            try:
                if limit is not None:
                    free = base.free_space() - reserved[os.stat(base.path).st_dev]
                    if free < limit and not made:
                        with base.reservations_held():  # (the population's reservation checks again)
                            free = base.room(limit, reserved[os.stat(base.path).st_dev])
                    if free < limit:
                        seen.append(f"{base.path} ({format_size(max(free, 0))} free)")
                        continue
                base.cache()
                base.populate_dir  # noqa: B018 - made now if missing: a base with no room for it is skipped
            except (*UNUSABLE, OSError) as e:
                # (No inode for the reservations lock: such a base has no room either.)
                unusable = e if isinstance(e, SharedCacheError) else no_space_for(
                    f"repository {name!r}", e, base.path)
                if unusable is None:
                    raise
                seen.append(f"{base.path} ({unusable})")
                self._skip(base, unusable)
                continue
            if made:
                self._warn_of_cleaning(base)
            for passed in present[: present.index(base)]:
                if passed.path in full:  # (said as a full file system says it)
                    no_room = no_space_for(f"repository {name!r}", OSError(errno.ENOSPC, ""), passed.path)
                    assert no_room is not None  # (ENOSPC always is one)
                    self._skip(passed, no_room)
            return base
        seen += [f"{b.path} ({why})" for b in self.bases if (why := _not_a_directory(b.path)) is not None]
        if limit is None or not any(s.endswith(" free)") for s in seen):
            raise CacheError(f"repository {name!r}: no usable candidate directory: " + ", ".join(seen))
        raise NoSpaceError(
            f"repository {name!r}: no usable candidate directory has {format_size(limit)} free: "
            + ", ".join(seen)
        )

    def _warn_of_cleaning(self, base: Base) -> None:
        """Say, as a cache is made in ``base``, if a cleaner of the system's deletes its files by
        age: once, for the user who may never run ``sc config``, which says it too."""
        warning = base.cleaning_warning()
        if warning is not None:
            self.reporter.warning(warning)

    # -- release, location, listing, gc ----------------------------------------------------------

    def find(self, name: str) -> Base | None:
        """The base holding a ready repository ``name``."""
        for base, cache in self._caches():
            if name in cache:
                self._report_skips()
                return base
        return None

    def release(
        self, words: Sequence[str], *, owners: Sequence[Owner], name: str | None = None, keep: bool = False,
        max_size: int | str | None = None, timeout: float | None = None,
    ) -> bool:
        """Release one use of the first of ``owners`` that holds one; return whether that deleted
        the repository.  ``max_size``: the budget to give the repository's base directory, which
        the release then evicts down to, as a use that gives one does (``none``: the stored one
        lifted).  ``timeout``: seconds any
        wait (for a lock, for the index) may take in all."""
        read_umask_again()
        budget = None if max_size is None else parse_budget(max_size, "--max-size")
        deadline = deadline_after(checked_timeout(timeout))
        with _a_step():
            for base in self.bases:
                base.bound_waits(deadline)
            try:
                return self._release(words, owners, name, keep, budget)
            finally:
                self._finish()

    def _finish(self) -> None:
        """The end of an acquire or a release, whether it succeeded or not: the links of what its
        evictions deleted are removed, waits in the caches are bounded by their own bound again,
        and a wait for a population is over (an acquire may fail between finding a population
        and waiting for it)."""
        for base in self.bases:
            base.drop_links_of_evicted()
            base.bound_waits(None)
            base.stop_awaiting()

    def _release(self, words: Sequence[str], owners: Sequence[Owner], name: str | None, keep: bool,
                 budget: int | None) -> bool:
        name, base = self._find_named(words, name)
        if base is None:
            raise SharedCacheError(f"no repository {name!r} in {self._searched()}")
        cache = base.cache()
        lease = next(filter(None, (cache.lease_of(name, owner) for owner in owners)), None)
        if lease is None:
            # The first candidate holding it may hold another job's use only (one whose list of
            # candidates put it first): the use to release is then in a later one.
            identity = cache.meta(name)
            for other, other_cache in self._caches():
                try:
                    if other is base or other_cache.meta(name) != identity:
                        continue
                except MissError:
                    continue  # not there, or deleted meanwhile
                found = next(filter(None, (other_cache.lease_of(name, owner) for owner in owners)), None)
                if found is not None:
                    base, cache, lease = other, other_cache, found
                    break
        # Set with the release, which evicts once the entry it deletes is gone; not by a release
        # that fails for want of a use.
        max_size = budget if lease is not None and budget is not None and self._budget_differs(cache, budget) \
            else None
        if max_size == NO_BUDGET:  # (lifted now, with the use held: no budget has nothing to evict down to)
            self._set_budget(cache, max_size)
            max_size = None
        if max_size is None:
            say_if_budget_damaged(cache, self.reporter, "the release restores none")
        while True:
            try:
                with _releasing(name, base.path):
                    deleted = cache.release(name, owners[-1], lease=lease, keep=keep, max_size=max_size)
                break
            except UsageError:
                # The lease was chosen before the release began: another release of the same
                # job (`sc --unuse` run twice at once) may have taken it meanwhile.  The next
                # lease the job holds is then the one to release.
                found = next(filter(None, (cache.lease_of(name, owner) for owner in owners)), None)
                if found is None or found == lease:
                    raise SharedCacheError(
                        f"process {owners[-1]} holds no use of repository {name!r} in {base.path}"
                    ) from None
                lease = found
        if deleted:
            base.drop_link_if_unused(name)
        return deleted

    def release_held(self, held: Held, *, keep: bool = False) -> None:
        """Release a use returned by :meth:`acquire`."""
        with _a_step():
            self._release_held(held, keep)

    def _release_held(self, held: Held, keep: bool) -> None:
        read_umask_again()
        say_if_budget_damaged(held.cache, self.reporter, "the release restores none")
        with _releasing(held.name, held.base):
            try:
                deleted = held.cache.release(held.name, lease=held.lease, keep=keep)
            except MissError:
                return  # deleted already (gc found its owner dead)
            except UsageError as refused:
                from ..errors import WaitForItselfError  # (made on first use: a ready use never meets it)

                if isinstance(refused, WaitForItselfError):
                    # A signal handler's release, whose thread's interrupted step holds the index
                    # (or the entry's lock) until the handler returns: the lease goes alone, and
                    # the repository stays, unused, for the next release or gc, as a use that
                    # fails leaves it (see _give_back).
                    held.cache.drop_lease(held.name, held.lease)
                    return
                # Released already, by another release of its owner: an `sc --unuse` of `sc run`'s
                # command, whose job `sc run` is; or another thread of a program, handed this lease
                # for its own by a population, which looks its owner's lease up once it has
                # committed.  An owner's uses are alike: one it still holds goes in its place.
                owner = Owner.parse(held.lease.rpartition(".")[0])
                try:
                    deleted = held.cache.release(held.name, owner, keep=keep)
                except (MissError, UsageError):
                    return  # none left: what the other release could not delete (its lock held), gc does
        base = Base(held.base, self.group)
        base.use_cache(held.cache)
        if deleted:
            base.drop_link_if_unused(held.name)
        base.drop_links_of_evicted()  # (what the release evicted to restore the budget)

    def locate(self, words: Sequence[str], *, name: str | None = None) -> str | None:
        name, base = self._find_named(words, name)
        self._report_skips()
        if base is None:
            return None
        # The path shown is the user's link: what --use checks before it prints it, --location
        # checks too (anything planted there is refused, a missing link is no path to give).
        if not base.linked(name):
            raise SharedCacheError(f"repository {name!r} is in {base.path}, but its link {base.link(name)} is "
                                   "missing: a use of it makes it again")
        return base.link(name)

    def _find_named(self, words: Sequence[str], name: str | None) -> tuple[str, Base | None]:
        """The repository's name and the base holding it ready.  Without ``name``, the default
        name, else the default name of caches made before checksummed recipes had their own
        identity (a use taken then is released now)."""
        if name is not None:
            name = check_repository_name(name)
            base = self.find(name)
            if base is not None:
                # A name is not a recipe: another recipe's repository of that name is not this
                # one, to be shown (--location) or released (--unuse), as --use refuses it.
                try:
                    found = base.cache().meta(name)
                except MissError:
                    return name, None  # deleted meanwhile
                wanted = recipe_identity(words)
                if found not in (wanted, legacy_identity(words), *earlier_identities(words)):
                    raise conflict(name, base.path, found, wanted)
            return name, base
        name = default_name(words)
        base = self.find(name)
        if base is None and (legacy := legacy_default_name(words)) not in (None, name):
            legacy_base = self.find(legacy)
            if legacy_base is not None:
                return legacy, legacy_base
        return name, base

    def listing(self) -> list[Record]:
        """Every repository in the candidate bases: ready ones, populations in progress, and
        populations that failed (while their error record counts).  Every row has the same
        fields; those that do not apply to its state are None."""
        from .records import populator

        rows = []
        listed, failed = False, None
        failures: list[tuple[str, Base, Record]] = []
        for base, cache in self._caches():
            try:
                entries = cache.entries()
            except UNUSABLE as e:
                # Its index cannot be opened there (a read-only file system, an index damaged
                # or planted: "run gc to rebuild it", or no room to make it): the other candidates are still listed,
                # as gc and uses go on past such a base, and the skipped one said why.
                failed = failed or e
                self._skip_unusable(base, e)
                continue
            listed = True
            left_out = sum(not writes_as_utf8(name) for name in cache.names())
            if left_out:
                self.reporter.warning(f"{base.path}: left out {left_out} repositories whose names are not ASCII: "
                                      f"{why_not_utf8_here()}")
            for entry in entries:
                # Unused, and left for the uses waiting for the population that made it (see
                # Base.await_population): said, since it outlives its last release for them.
                awaited = not entry.in_use and cache.awaited is not None and cache.awaited(entry.name)
                # No path where the link is missing: one that gc adopted (committed by a use that
                # was killed before it made the link) has none until its next use makes it.
                link = base.link(entry.name)
                # Said as a use that refuses it says it, and what deletes it.
                damage = entry.damage or _recipe_damage(cache, entry.name)
                rows.append(_row(entry.name, base, "damaged" if damage else "ready",
                                 path=link if os.path.lexists(link) else None, size=entry.size,
                                 users=list(entry.users), owners=list(entry.owners), keep=entry.keep,
                                 last_used=entry.last_used, in_use=entry.in_use, awaited=awaited, error=damage))
            for name, status in base.populations():
                # The populating process, as a lease names it (of another host: PID@MACHINE-ID);
                # a record without one (written by another member of a group cache) names nobody.
                # No path and no size yet: the link is made, and the size known, at the commit.
                process = populator(status)
                rows.append(_row(name, base, "populating", users=[] if process is None else [process.pid],
                                 owners=[] if process is None else [str(process)], last_used=status.get("started"),
                                 in_use=True, done=status.get("done", 0), total=status.get("total")))
            failures.extend((name, base, record) for name, record in base.failures())
        if failed is not None and not listed:
            raise failed  # nothing else to list: the one line says why
        # A failure is shown unless its repository was made since, or is being made, in any base
        # listed: a use that failed in one (a full one) went on to the next candidate.
        made = {row["name"] for row in rows}
        rows.extend(_row(name, base, "failed", error=record.get("message", "population failed"),
                         failed_at=record.get("time")) for name, base, record in failures if name not in made)
        self._report_skips()
        return rows

    def collect(self) -> dict[str, Record]:
        """gc every base: the engine's gc, then the population leftovers and stale links."""
        reports = {}
        for base in self.bases:
            try:
                if not os.path.isdir(base.control) and not base.present():
                    continue
                if base.read_only():  # nothing to clean that could be cleaned
                    raise CacheError(READ_ONLY)
                check_base(base.path, base.group)
                user_directory(base.path)
                cache = open_with_waiters(base.control, base.group, repair=True)
            except UNUSABLE as e:
                self._skip(base, e)
                continue
            try:
                report = vars(cache.gc())
                if report["names_left_alone"]:
                    self.reporter.warning(f"gc: {base.path}: left alone {report['names_left_alone']} repositories "
                                          f"whose names are not ASCII: {why_not_utf8_here()}")
                for line in report["left_alone"]:  # (paths another member chose)
                    self.reporter.warning(f"gc: {printable(line)}")
                report["left_alone"] = len(report["left_alone"])
                report["entries_deleted"] += self._delete_recipeless(cache)
                base.use_cache(cache)
                report["populations_cleaned"] = self._clean_populations(base, cache)
                report["stuck_populations"] = self._stuck_populations(base)
                report["reservations_ignored"] = self._ignored_reservations(base)
                report["links_removed"] = self._clean_links(base)
            except NoSpaceError as e:
                # No room for what the cache lacks (the index of a cache whose making found
                # none): said as for a base with no room to make the cache, and the others go on.
                self._skip(base, e)
                continue
            finally:
                cache.close()  # opened for the repair, outside the process's table of caches
            reports[str(base.path)] = report
        self._report_skips()
        return reports

    def evict(self, names: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
        """Evict the repositories ``names`` from every candidate base that holds them, now, kept
        or not, as an eviction for a budget deletes them: never one in use, nor one left for the
        uses waiting for its population; their links go with them.  Returns the names evicted
        from each base, and a line saying why of each of the others (in use, being populated, not
        there): one refused leaves the others of ``names`` to be evicted."""
        evicted: dict[str, list[str]] = {}
        refusals: list[str] = []
        for name in names:
            found = False
            for base, cache in self._caches():
                try:
                    if name not in cache:
                        if base.populating(name):
                            found = True
                            refusals.append(f"repository {name!r} in {base.path} is being populated: not evicted")
                        continue
                    cache.remove(name, unless_awaited=True)
                except MissError:
                    continue  # deleted meanwhile
                except SharedCacheError as e:
                    found = True
                    refusals.append(f"repository {name!r} in {base.path} not evicted: {e}")
                    continue
                found = True
                evicted.setdefault(base.path, []).append(name)
                base.drop_links([name])
            if not found:
                refusals.append(f"no repository {name!r} in {self._searched()}")
        self._report_skips()
        return evicted, refusals

    @staticmethod
    def _delete_recipeless(cache: FsCache) -> int:
        """Delete the unused repositories that lost the record of their recipe (its meta file):
        no recipe can be matched to them, so no use or release would ever come to them."""
        deleted = 0
        for name in filter(writes_as_utf8, cache.names()):  # (the others are left alone: see FsCache.gc)
            try:
                if recipe_lost(cache.meta(name)):
                    cache.remove(name)
                    deleted += 1
            except (MissError, BusyError):
                continue  # deleted meanwhile, or in use: left to its users, then to the next gc
            except PermissionError:
                continue  # a directory of another member's, which the cache's gc has said it leaves alone
        return deleted

    @staticmethod
    def _stuck_populations(base: Base) -> str:
        """The populations in progress that look stuck, and why ("" if none), the first few by
        name (:func:`_first_named`)."""
        from .population import stuck

        found = ((name, stuck(base.population_file(name, ".json"), status)) for name, status in base.populations())
        return _first_named(sorted(f"{name!r} ({why})" for name, why in found if why))

    @staticmethod
    def _ignored_reservations(base: Base) -> str:
        """The reservations of populations in progress that no use counts, past the size of the
        base's file system (see :meth:`Base.reservations`), and what they claim ("" if none),
        the first few by name (:func:`_first_named`)."""
        _, ignored = base.reservations()
        if not ignored:
            return ""
        holds = format_size(base.file_system_size())
        return _first_named(sorted(f"{name!r} ({format_size(claim)}, where the file system holds {holds})"
                                   for name, claim in ignored.items()))

    def _lock_file(self, base: Base, file: str, cache: FsCache) -> tuple[int | None, int]:
        """A descriptor of the lock file ``file`` in ``populate/`` (None if there is none to use),
        and how many things gc put away there: what every population that needs the lock
        refuses (a FIFO, a directory, a file this user may not read, planted at its name)."""
        lock_path = base.population_file(file, "")
        try:
            return locks.open_lock_file(lock_path, mode=cache.modes.file), 0
        except CacheError:
            try:
                cache.put_away(POPULATE, file)
            except FileNotFoundError:
                return None, 0  # put away by another gc meanwhile
            return None, 1
        except OSError as e:  # a name no lock can have
            self.reporter.warning(f"gc: skipping {shown_path(lock_path)!r}: {e}")
            return None, 0

    def _clean_populations(self, base: Base, cache: FsCache) -> int:
        from .records import ERROR_RECORD_TTL, read_status

        cleaned = 0
        names = set()
        files = []
        # The temporary names of lock files and work directories, left by processes that ended
        # as they made them.
        cleaned += remove_leftovers(base.populate_dir)
        cache.trash_what_was_set_aside(POPULATE)
        for entry in os.scandir(base.populate_dir):
            if entry.is_symlink():  # nothing here is a symlink but what someone planted
                os.unlink(entry.path)
            else:
                files.append(entry.name)
        for file in files:
            stem, dot, suffix = file.rpartition(".")
            # (A stem that starts with a dot is no repository's: the reservations lock, held by
            # populations in turn, which a removal would split in two.)
            # (Nor is a stem this process would write as other bytes, whose files it leaves alone.)
            if dot and suffix in ("lock", "json", "error", "work", "waiting") and not stem.startswith(".") \
                    and writes_as_utf8(stem):
                names.add(stem)
        if RESERVATIONS_LOCK in files:  # a file, or planted: never unlinked, it is only cleared
            fd, removed = self._lock_file(base, RESERVATIONS_LOCK, cache)
            cleaned += removed
            if fd is not None:
                locks.close(fd)
        for name in names:
            if name + WAITING in files:
                cleaned += self._remove_unawaited(base, name, cache)
            lock_path = base.population_file(name, ".lock")
            fd, removed = self._lock_file(base, f"{name}.lock", cache)
            cleaned += removed
            if fd is None:
                continue
            try:
                # A lock file unlinked (by another gc) since it was opened locks nothing: the
                # files of the name may now belong to a population that holds the new one.
                if not locks.try_lock(fd, locks.EXCLUSIVE) or not locks.still_linked(fd, lock_path):
                    continue
                error = base.population_file(name, ".error")
                record = read_status(error)
                expired = record is None or time.time() - float(record.get("time", 0)) > ERROR_RECORD_TTL
                # Records are written under the population lock, so the temporary files of
                # their atomic writes are abandoned once it is free.
                leftovers = [os.path.join(base.populate_dir, file) for file in files
                             if file.startswith((f".{name}.json.tmp-", f".{name}.error.tmp-"))]
                leftovers.append(base.population_file(name, ".json"))
                if expired:
                    leftovers.append(error)
                work = base.population_file(name, ".work")
                found = os.path.lexists(work) or any(os.path.lexists(path) for path in leftovers)
                cache.discard(work)
                for path in leftovers:
                    try:
                        unlink_if_present(path)
                    except IsADirectoryError:  # (a member's, planted) put away as a work directory is
                        cache.discard(path)
                if expired:  # a kept error record keeps its lock: waiters may still read it
                    os.unlink(lock_path)  # waiters check that the path still names what they lock
                cleaned += found
            finally:
                locks.close(fd)
        return cleaned

    def _remove_unawaited(self, base: Base, name: str, cache: FsCache) -> int:
        """Remove the waiting file of ``name`` (see :meth:`Base.await_population`), a killed
        waiter's, if nobody holds it; return 1 if it was removed (or what was planted there), else 0."""
        path = base.population_file(name, WAITING)
        fd, removed = self._lock_file(base, f"{name}{WAITING}", cache)
        if fd is not None:
            try:
                removed = unlink_unless_locked(fd, path)
            finally:
                locks.close(fd)
        return removed

    def _clean_links(self, base: Base) -> int:
        """Remove the links of deleted repositories (run after the engine's gc, which has given
        every committed entry its row).  Only this user's directory is looked at."""
        removed = 0
        present = base.cache().names()
        for link in os.scandir(base.links):
            if link.name in present or link.name == PRIVATE_CACHE or not writes_as_utf8(link.name):
                continue  # (a name not ASCII, in a locale that would write it as other bytes: left alone)
            try:
                check_name(link.name)
            except UsageError:
                self.reporter.warning(f"gc: skipping {link.path!r}: not a repository's name")
                continue
            try:
                ours = link.is_symlink() and os.readlink(link.path) == base.link_target(link.name)
            except OSError:
                continue  # gone meanwhile
            if ours and link.name not in base.cache():
                base.drop_link_if_unused(link.name)
                removed += not os.path.islink(link.path)
        return removed


#: How many populations a field of gc's report names; the others it counts.  In a group cache
#: any member may make thousands, which made each gc's line for the base hundreds of kilobytes.
_NAMED_IN_A_REPORT = 5


def _first_named(found: Sequence[str]) -> str:
    """What gc's report says of ``found``: the first :data:`_NAMED_IN_A_REPORT`, then how many
    more there are ("" if none)."""
    more = len(found) - _NAMED_IN_A_REPORT
    return "; ".join(found[:_NAMED_IN_A_REPORT]) + (f"; and {more} more" if more > 0 else "")


def _stored(budget: int) -> int | None:
    """What the engine stores for ``budget`` (:attr:`FsCache.max_size`): None for no budget."""
    return None if budget == NO_BUDGET else budget


def _not_a_directory(path: str) -> str | None:
    """Why ``path`` is no directory ("missing", "not a directory", or what the system says: a
    path too long is not a missing one), or None if it is one."""
    import stat

    try:
        return None if stat.S_ISDIR(os.stat(path).st_mode) else "not a directory"
    except OSError as e:
        return "missing" if isinstance(e, FileNotFoundError) else (e.strerror or str(e)).lower()


def check_repository_name(name: str) -> str:
    """``name`` if a repository may be given it: an entry's name (:func:`check_name`) that is
    printable too (a newline or a terminal control in it would garble every listing)."""
    rule = "one path component of printable characters, not starting with '.'"
    if not (isinstance(name, str) and name.isprintable()):
        raise UsageError(f"invalid repository name {name!r}: it must be {rule}")
    if not writes_as_utf8(name):
        raise not_utf8_here(f"repository name {name!r}")
    try:
        check_name(name)
    except UsageError:
        raise UsageError(f"invalid repository name {name!r}: it must be {rule}, "
                         f"of at most {MAX_NAME_BYTES} bytes of UTF-8") from None
    return name


@scoped
def _releasing(name: str, base: str) -> Iterator[None]:
    """The release of a use of ``name`` in the base directory ``base``, whoever asks for it
    (``--unuse``, the end of ``sc run`` or of :func:`use`): a file system remounted read-only
    since the use was taken fails it in one line naming the repository and the base, not with
    the system's error naming a lease's file."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.EROFS:
            raise
        raise CacheError(f"cannot release the use of repository {name!r} in {base}: {READ_ONLY}") from None


def acquire_deferring_interrupts(acquire: Callable[[], Held], endings: tuple[int, ...] = ()) -> tuple[Held, bool]:
    """The use that ``acquire()`` takes, with Ctrl-C of the main thread deferred from the making
    of its lease on (see :class:`~sharedcache.engine.leases.InterruptGuard`), and whether it is
    (the guard armed).  The caller, once its ``try`` holds the use, raises what came
    meanwhile (``INTERRUPTS.settle()``), or lets it go as moot (the outcome decided), and after
    its release disarms the guard.  A failed acquire has disarmed it, raising what came.  The
    signals ``endings`` (SIGTERM, SIGHUP: the command line's) are held back with the interrupt,
    blocked, and act as the deferral stops (or are taken over: ``INTERRUPTS.take_endings()``)."""
    return _deferring_interrupts(acquire, "acquiring", endings)


def release_deferring_interrupts(release: Callable[[], bool]) -> tuple[bool, bool]:
    """What ``release()`` returns, with Ctrl-C of the main thread deferred from the removal of
    its lease on (``sc --unuse``), and whether it is (the guard armed): the release is then the
    outcome, and what came meanwhile is moot; the caller disarms the guard.  A failed release,
    which gave its lease back, has disarmed it, raising what came."""
    return _deferring_interrupts(release, "releasing", ())


def _deferring_interrupts(change: Callable[[], Changed], when: str, endings: tuple[int, ...]) -> tuple[Changed, bool]:
    """What ``change()`` returns, with Ctrl-C (and the signals ``endings``) deferred once the
    guard's attribute ``when`` (``acquiring``, ``releasing``) has the lease's change defer it;
    and whether it is."""
    guarded = INTERRUPTS.arm()
    try:
        if guarded:
            INTERRUPTS.settle()
            INTERRUPTS.endings = endings
            setattr(INTERRUPTS, when, True)
        return change(), guarded
    except BaseException:
        if guarded:
            INTERRUPTS.deferring = True  # (first: no call comes before it)
            INTERRUPTS.disarm()  # (an interrupt deferred as a failed change undid itself is raised)
        raise


@scoped
def use(
    *words: str,
    name: str | None = None,
    size: int | str | None = None,
    directories: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    keep: bool = False,
    max_size: int | str | None = None,
    timeout: float | None = None,
    connections: int | None = None,
    fetch: FetchPolicy | None = None,
    group: str | int | None = None,
    verbosity: int = -1,
) -> Iterator[Path]:
    """Hold a use of a repository for the duration of the ``with`` block; yield its path.

    The first user populates it from the loader ``words``; the others wait and share it.  The use
    is a lease of this process and also a kernel lock, so it vanishes if the process dies; on
    exit it is released, and the last release deletes the repository unless ``keep``.

    ``fetch`` (a :class:`~sharedcache.config.settings.FetchPolicy`) says how a download fetches;
    ``connections`` is a shorthand for ``FetchPolicy(connections=N)``.  What is not given (None)
    is taken from the config files and the environment as ``sc`` takes it
    (:mod:`sharedcache.config.files`): ``directories`` (else /tmp:/var/tmp; a leading ``~`` is
    the home, as the shell makes it on the command line), ``max_size`` (stored on the base until
    another is given; ``"none"`` lifts it), ``timeout``, ``group`` (a group's name or gid: use the
    cache that group shares, as ``sc --group`` does, instead of your own) and, without ``fetch``,
    the fetch settings (``connections``, proxy, offline, timeouts...), which are made into a
    policy, and checked, only when the repository is not ready (``connections``, given here, is
    checked at once, and wins over a file's, 1 included).
    """
    from ..config import files

    if fetch is not None and connections is not None:
        raise UsageError("give connections in fetch, or alone, not both")
    if fetch is not None:
        from ..config.settings import FetchPolicy

        if not isinstance(fetch, FetchPolicy):
            raise UsageError(f"fetch must be a FetchPolicy, not {fetch!r}")
    if type(verbosity) is not int:
        raise UsageError(f"verbosity must be a whole number, not {verbosity!r}")
    if directories is not None:  # (no shell expanded them)
        directories = files.paths_at_home(directories, os.environ, "use(directories=...)")  # type: ignore[assignment]  # checked by Repositories
    given = {key: value for key, value in (("directories", directories), ("max_size", max_size),
                                           ("timeout", timeout), ("group", group), ("connections", connections))
             if value is not None}
    effective = files.effective(given, os.environ, given_as="use({}=...)")
    # Parsed here, so that an error names them as this function does (acquire names the options).
    limit = None if size is None else parse_size(size, "size")
    budget = files.value(effective, "max_size")
    if budget is not None:
        parse_budget(budget, "max_size")
    repositories = Repositories(files.value(effective, "directories"), reporter=Reporter(verbosity),
                                group=files.converted(effective, "group", group_id))
    # Ctrl-C from the lease's making to the try below, and during the release, is deferred, then
    # raised: it left the use taken for the life of the process (see InterruptGuard).
    try:
        held, guarded = acquire_deferring_interrupts(lambda: repositories.acquire(
            _loader_words(words), owner=Owner.current(), name=name, size=limit, keep=keep,
            max_size=budget, timeout=files.value(effective, "timeout"),
            fetch=fetch if fetch is not None else files.fetch_when_needed(effective, os.environ, given),
        ))
    except OSError as e:  # (the command line says the same of what reaches it)
        raise_if_over_limit(e)
        raise
    generation = locks.process_key()  # (the holder's)
    try:
        if guarded:
            INTERRUPTS.settle()  # in the try: the release below runs
        with held.cache.load(held.name):
            from pathlib import Path

            yield Path(held.path)
    finally:
        # (First, with no call before it: nothing is checked for an interrupt until it is done.)
        if guarded:
            INTERRUPTS.deferring = True
        try:
            # A child forked inside the block that leaves it (sys.exit() unwinds it) does not own
            # the use: its parent does, and releases it when it leaves the block itself.
            if locks.process_key() == generation:
                repositories.release_held(held, keep=keep)
        finally:
            if guarded:
                INTERRUPTS.disarm()


def _loader_words(words: tuple[object, ...]) -> list[str]:
    """The loader words given to :func:`use`, each a string (one may hold several words
    separated by spaces); anything else is refused with a clear error."""
    for word in words:
        if isinstance(word, (list, tuple)):
            raise UsageError("loader words are given as separate arguments: use(*words), "
                             "as in use('http:URL', 'sha256:HEX', 'tar')")
        if not isinstance(word, str):
            raise UsageError(f"a loader word is a string, as in use('http:URL', 'sha256:HEX', 'tar'), "
                             f"not {type(word).__name__} {word!r}")
        if "\0" in word:  # (no command-line argument can hold one)
            raise UsageError(f"loader word {without_user_info(word)!r} holds a NUL character")
    return list(words)  # type: ignore[arg-type]  # (each was checked to be a str)


def _recipe_damage(cache: FsCache, name: str) -> str | None:
    """Why no use can take repository ``name`` if it lost the record of its recipe, or None."""
    try:
        return RECIPE_LOST if recipe_lost(cache.meta(name)) else None
    except MissError:
        return None  # deleted since it was listed


def _row(name: str, base: Base, state: str, *, path: str | None = None, size: int | None = None,
         users: list[int] | None = None, owners: list[str] | None = None, keep: bool | None = None,
         last_used: float | None = None, in_use: bool = False, done: int | None = None, total: int | None = None,
         error: str | None = None, failed_at: float | None = None, awaited: bool = False) -> Record:
    """A row of :meth:`Repositories.listing`."""
    return {"name": name, "path": path, "state": state, "size": size, "users": users or [], "keep": keep,
            "last_used": last_used, "base": str(base.path), "in_use": in_use, "owners": owners or [],
            "done": done, "total": total, "error": error, "failed_at": failed_at, "awaited": awaited}

