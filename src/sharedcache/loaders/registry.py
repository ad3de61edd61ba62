"""The registry of loader words, and the parsing of a stack of words into a :class:`Recipe`.

The built-in words are :data:`BUILT_IN`; other packages add words as entry points of the group
``sharedcache.loaders``.  A built-in word cannot be replaced by one (a package installed beside
cannot change what ``sha256:`` checks), and the installed packages' metadata, which costs tens of
milliseconds to scan, is read only for a word that is not built in.  The protocol a loader
follows is :mod:`sharedcache.loaders.protocol`.  What can be known of a recipe without loading
any loader (its identity, its default repository name) is :mod:`sharedcache.loaders.words`.
Running a recipe is :mod:`sharedcache.loaders.pipeline`'s job.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import (
    SettingError,
    UsageError,
    host_and_port,
    memory_refused,
    unparsed_url,
    with_folded_origin,
    without_user_info,
)
from .protocol import Loader, Source, Transform, Unpacker
from .words import CHECKSUM_WORDS, normalize_words, recipe_identity

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from ..config.settings import Rewrite

ENTRY_POINT_GROUP = "sharedcache.loaders"

#: The built-in words and the classes that implement them, as ``module:class``.
BUILT_IN = {
    "http": "sharedcache.loaders.http:HttpSource",
    "file": "sharedcache.loaders.local:FileSource",
    "dirac": "sharedcache.loaders.dirac:DiracSource",
    "md5": "sharedcache.loaders.transforms:Md5Check",
    "sha1": "sharedcache.loaders.transforms:Sha1Check",
    "sha256": "sharedcache.loaders.transforms:Sha256Check",
    "sha512": "sharedcache.loaders.transforms:Sha512Check",
    "tar": "sharedcache.loaders.transforms:Untar",
    "zip": "sharedcache.loaders.transforms:Unzip",
    "gunzip": "sharedcache.loaders.transforms:Gunzip",
    "bunzip2": "sharedcache.loaders.transforms:Bunzip2",
    "unxz": "sharedcache.loaders.transforms:Unxz",
    "unzstd": "sharedcache.loaders.transforms:Unzstd",
}

_registry: dict[str, str | EntryPoint] | None = None


def _words() -> dict[str, str | EntryPoint]:
    """Every word: the built-in ones, then those that installed packages add as entry points."""
    global _registry  # noqa: PLW0603 - the entry points are scanned once per process
    if _registry is None:
        from importlib.metadata import entry_points

        found: dict[str, str | EntryPoint] = dict(BUILT_IN)
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(entry_point.name, entry_point)
        _registry = found
    return _registry


def _known(name: str) -> bool:
    return name in BUILT_IN or name in _words()


def loader_words() -> list[tuple[str, type[Loader] | None]]:
    """Every registered word and its class (None for one that cannot be loaded), by name."""
    found: list[tuple[str, type[Loader] | None]] = []
    for name in sorted(_words()):
        try:
            found.append((name, loader_class(name)))
        except UsageError:
            found.append((name, None))
    return found


def loader_class(name: str) -> type[Loader]:
    """The loader class registered for word ``name``; :class:`UsageError` if there is none."""
    found = BUILT_IN.get(name) or _words().get(name)
    if found is None:
        known = ", ".join(sorted(_words()))
        if "@" in name:  # no word's name: the end of a URL whose password held a space, which split the word
            raise UsageError(f"unknown loader '...@{name.rpartition('@')[2]}' (a space in a URL is written %20; "
                             f"known: {known})")
        raise UsageError(f"unknown loader '{name}' (known: {known})")
    target = found if isinstance(found, str) else found.value
    try:
        if isinstance(found, str):
            module, _, attribute = found.partition(":")
            cls = getattr(importlib.import_module(module), attribute)
        else:
            cls = found.load()
    except (Exception, SystemExit) as exc:  # a module may sys.exit() when it cannot work here
        if memory_refused(exc):  # (under ulimit -v: the limit is the news, not the loader)
            raise
        raise UsageError(f"loader '{name}' ({target}) cannot be loaded: {exc!s}") from None
    if not (isinstance(cls, type) and issubclass(cls, (Source, Transform, Unpacker))):
        raise UsageError(f"loader '{name}' ({target}) is not a Source, Transform or Unpacker")
    return cls


class Recipe:
    """A parsed, validated stack of loaders.

    ``sources`` are the alternatives to try in order (the recipe's source words, as the site's
    rewrite rules map them); ``source`` is the first source word as written, which names the file
    of a recipe without an unpacker whichever alternative delivers it."""

    def __init__(self, words: tuple[str, ...], sources: tuple[Source, ...], transforms: tuple[Transform, ...],
                 unpacker: Unpacker | None, *, source: Source | None = None) -> None:
        self.words = words
        self.identity = recipe_identity(words)  # computed once: the pipeline asks for it often
        self.sources = sources
        self.source = source if source is not None else sources[0]
        self.transforms = transforms
        self.unpacker = unpacker

    def __repr__(self) -> str:
        return f"<Recipe {' '.join(loader.word for loader in (*self.sources, *self.transforms))}>"


def parse_recipe(words: str | Iterable[str], rewrites: Iterable[Rewrite] = ()) -> Recipe:
    """Parse and validate a stack of words; :class:`UsageError` if it is malformed.

    The leading source words are alternatives for the same bytes; several of them need a checksum
    word to check that each gives the same bytes.  ``rewrites`` (the site's rules) then map each
    source whose URL starts with a rule's prefix to that rule's mirrors."""
    normalized = normalize_words(words)
    if not normalized:
        raise UsageError("empty recipe: give a source such as http:URL, file:PATH or dirac:LFN")
    loaders: list[Loader] = []
    for word in normalized:
        name, colon, arg = word.partition(":")
        if arg.startswith("//") and not _known(name):
            raise UsageError(f"'{unparsed_url(word)}' looks like a bare URL: write http:{unparsed_url(word)}")
        cls = loader_class(name)
        try:
            loaders.append(cls(name, arg if colon else None))
        except UsageError:
            raise
        except Exception as exc:  # a plugin's check of its argument, which should say UsageError
            if memory_refused(exc):  # (under ulimit -v: the limit is the news, as in loader_class)
                raise
            raise UsageError(f"'{without_user_info(word)}': {exc!s}") from None
    if not isinstance(loaders[0], Source):
        raise UsageError(
            f"a recipe starts with a source (http:URL, file:PATH, dirac:LFN), not '{loaders[0].word}'")
    count = next((i for i, loader in enumerate(loaders) if not isinstance(loader, Source)), len(loaders))
    sources = tuple(loader for loader in loaders[:count] if isinstance(loader, Source))
    rest = loaders[count:]
    if count > 1 and not any(word.partition(":")[0] in CHECKSUM_WORDS for word in normalized[count:]):
        raise UsageError(f"'{sources[1].word}': several sources need a checksum word (such as sha256:HEX) "
                         "to check that each gives the same bytes")
    for position, loader in enumerate(rest, start=1):
        if isinstance(loader, Source):
            raise UsageError(f"'{loader.word}' is a source: sources come first, before '{rest[0].word}'")
        if isinstance(loader, Unpacker) and position != len(rest):
            after = rest[position].word
            raise UsageError(f"'{loader.word}' unpacks, so it must be the last word "
                             f"(found '{after}' after it)")
    last = rest[-1] if rest else None
    unpacker = last if isinstance(last, Unpacker) else None
    # loader_class admits only sources, transforms and unpackers: all the others are transforms.
    transforms = tuple(loader for loader in rest if isinstance(loader, Transform))
    return Recipe(normalized, _rewritten(sources, tuple(rewrites)), transforms, unpacker, source=sources[0])


def _rewritten(sources: tuple[Source, ...], rewrites: tuple[Rewrite, ...]) -> tuple[Source, ...]:
    """Each source replaced by the mirrors of the first rule that its argument (user info aside)
    is under; a mirror that is the prefix itself keeps the source as written, credentials
    included, which no other mirror is given.  A source met twice is tried once."""
    result: dict[str, Source] = {}
    for source in sources:
        argument = without_user_info(source.arg or "")
        matched = next(((rule, rest) for rule in rewrites if (rest := rule.rest(argument)) is not None), None)
        if matched is None:
            result.setdefault(source.word, source)
            continue
        rule, rest = matched
        for mirror in rule.mirrors:
            if with_folded_origin(mirror) == with_folded_origin(rule.prefix):
                result.setdefault(source.word, source)
            else:
                alternative = type(source)(source.name, _at_mirror(rule, mirror, rest))
                result.setdefault(alternative.word, alternative)
    return tuple(result.values())


def _at_mirror(rule: Rewrite, mirror: str, rest: str) -> str:
    """``mirror`` followed by ``rest``, the part of a URL after ``rule``'s prefix; refused if that
    is not on the mirror's own host and port (its scheme is the mirror's: it begins with it), as
    the mirror's user info would go there.  A rule's mirrors end their host with a path, but a
    program may set a rule's ``mirrors`` as it likes."""
    url = mirror + rest
    if host_and_port(url) != host_and_port(mirror):
        raise SettingError("rewrite", f"{unparsed_url(rule.prefix)}: the mirror {unparsed_url(mirror)!r} followed "
                                      f"by the rest of the URL is {unparsed_url(url)!r}, on another host than the "
                                      "mirror's")
    return url
