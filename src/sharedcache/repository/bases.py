"""Base directories: where repositories live, and the links that make them visible.

A base directory (``/tmp``, ``/var/tmp``, or one the user names) holds the FsCache of its
repositories, ``<base>/.shared-cache``, and one link per repository, ``<base>/<name>``, to the
entry's data.  The population files of a repository live in ``.shared-cache/populate`` (see
:mod:`sharedcache.repository.population`).  This module owns a base's paths, its cache, its
free space and the space reserved by populations in progress, and the links.
"""

from __future__ import annotations

import os

from ..engine import locks
from ..engine.fscache import FsCache
from ..errors import ConflictError, MissError, SharedCacheError

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from .records import Record
    from .repositories import Request

CONTROL = ".shared-cache"
# The caches this process has opened, kept so that a program calling use() in a loop opens each
# cache and its index once (a new FsCache costs checks, and its connection to the index).
_open_caches: dict[tuple[str, int | None], FsCache] = {}


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

    def hold(self, request: Request) -> str:
        """A lease on the repository if it is ready here; MissError if it is not.

        A repository made before checksummed recipes had their own identity holds the words
        themselves as its identity (:func:`~sharedcache.loaders.words.legacy_identity`): it is
        the same recipe, and is held."""
        try:
            return self.cache().hold(request.name, request.owner, keep=request.keep, meta=request.identity)
        except ConflictError as e:
            from ..loaders.words import legacy_identity

            if e.existing is not None and e.existing == legacy_identity(request.words):
                return self.cache().hold(request.name, request.owner, keep=request.keep, meta=e.existing)
            raise conflict(request.name, self.path, e.existing) from None

    def try_hold(self, request: Request) -> str | None:
        """A lease on the repository if it is ready here, else None."""
        try:
            return self.hold(request)
        except MissError:
            return None

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
        for _name, status in self.populations():
            total += int(status.get("size") or 0)
        return total

    def populations(self) -> list[tuple[str, Record]]:
        """(name, status) of every population in progress (its lock is held)."""
        from .records import read_status  # (populations are looked at on a miss only)

        found: list[tuple[str, Record]] = []
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


def conflict(name: str, base: str, existing: str | None) -> SharedCacheError:
    """The error for a repository name taken by another recipe in ``base``."""
    theirs = " ".join((existing or "?").split("\n"))
    return SharedCacheError(
        f"repository {name!r} in {base} already exists with another loader stack ({theirs}); "
        "choose another --name"
    )
