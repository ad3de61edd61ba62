"""The registry of loader words, and the parsing of a stack of words into a :class:`Recipe`.

Every loader word, the built-in ones included, is an entry point of the group
``sharedcache.loaders`` (see pyproject.toml); the protocol a loader follows is
:mod:`sharedcache.loaders.protocol`.  What can be known of a recipe without loading any loader
(its identity, its default repository name) is :mod:`sharedcache.loaders.words`.  Running a
recipe is :mod:`sharedcache.loaders.pipeline`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import UsageError
from .protocol import Loader, Source, Transform, Unpacker
from .words import normalize_words, recipe_identity

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "sharedcache.loaders"

_registry: dict[str, EntryPoint] | None = None


def _entry_points() -> dict[str, EntryPoint]:
    global _registry  # noqa: PLW0603 - the entry points are scanned once per process
    if _registry is None:
        from importlib.metadata import entry_points

        found: dict[str, EntryPoint] = {}
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(entry_point.name, entry_point)
        _registry = found
    return _registry


def loader_words() -> list[tuple[str, type[Loader] | None]]:
    """Every registered word and its class (None for one that cannot be loaded), by name."""
    found: list[tuple[str, type[Loader] | None]] = []
    for name in sorted(_entry_points()):
        try:
            found.append((name, loader_class(name)))
        except UsageError:
            found.append((name, None))
    return found


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
        self.identity = recipe_identity(words)  # computed once: the pipeline asks for it often
        self.source = source
        self.transforms = transforms
        self.unpacker = unpacker


    def __repr__(self) -> str:
        return f"<Recipe {' '.join(self.words)}>"


def parse_recipe(words: str | Iterable[str]) -> Recipe:
    """Parse and validate a stack of words; :class:`UsageError` if it is malformed."""
    normalized = normalize_words(words)
    if not normalized:
        raise UsageError("empty recipe: give a source such as http:URL, file:PATH or dirac:LFN")
    loaders: list[Loader] = []
    for word in normalized:
        name, colon, arg = word.partition(":")
        if arg.startswith("//") and name not in _entry_points():
            raise UsageError(f"'{word}' looks like a bare URL: write http:{word}")
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
