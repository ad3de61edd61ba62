"""Loader words as plain text: what can be known of a recipe without loading any loader.

The warm path of ``sc --use`` needs a recipe's identity (to check that a repository was made
from the same stack) and its default repository name, and nothing else of it; this module gives
both at the cost of a few string operations.  Parsing words into loaders is
:mod:`sharedcache.loaders.registry`'s job.
"""

from __future__ import annotations

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Iterable


def normalize_words(words: str | Iterable[str]) -> tuple[str, ...]:
    """The words of a stack: each string given counts as its whitespace-separated words.

    This is the one splitting rule, on the command line and in the API alike, so that
    ``"http:URL tar"`` and ``("http:URL", "tar")`` are the same recipe.  A loader's argument
    therefore holds no whitespace (URLs cannot; a path with a space is written with another
    name or a symlink).  A relative ``file:`` path is made absolute here (see
    :func:`_absolute_file`), so that the identity, the name and the file read agree."""
    parts = words.split() if isinstance(words, str) else [part for word in words for part in word.split()]
    return tuple(part if not part.startswith("file:") else _absolute_file(part) for part in parts)


def _absolute_file(word: str) -> str:
    """A ``file:`` word whose path is absolute: a relative one (or ``~``) names another file in
    another directory, so it is resolved before it identifies anything.  ``..`` is left for the
    kernel to follow (a lexical clean-up could name another file through a symlink)."""
    import os  # (loaded already by every caller: this costs a dictionary look-up)

    path = os.path.expanduser(word[5:])
    return word if not path or path.startswith("/") else f"file:{os.getcwd()}/{path}"


def recipe_identity(words: str | Iterable[str]) -> str:
    """A canonical string for a stack of words: equal stacks give equal strings.

    The identity is stored as UTF-8, so words that are not UTF-8 text are refused: on POSIX a
    command-line argument with other bytes (a path in Latin-1) arrives with lone surrogates.
    """
    identity = "\n".join(normalize_words(words))
    if not identity.isascii():
        try:
            identity.encode()
        except UnicodeEncodeError as exc:
            from ..errors import UsageError

            word = next(word for word in identity.split("\n") if exc.object[exc.start] in word)
            raise UsageError(f"loader word {word!r} is not UTF-8 text") from None
    return identity


def default_name(words: str | Iterable[str]) -> str:
    """A repository name derived from the stack: a readable stem and a hash of the whole stack."""
    import hashlib  # only without --name: each of these costs more than the rest of a warm use
    import re
    from urllib.parse import unquote

    normalized = normalize_words(words)
    argument = normalized[0].partition(":")[2] if normalized else ""
    path = re.split(r"[?#]", argument, maxsplit=1)[0].rstrip("/")
    stem = re.sub(
        r"(\.(tar|cpio)(\.(gz|bz2|xz|zst|lz|lzma|z))?|\.(tgz|tbz2?|txz|tzst|zip|gz|bz2|xz|zst))+$",
        "", unquote(path.rpartition("/")[2]), flags=re.IGNORECASE,
    )
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).lstrip("._+-")[:117].rstrip("._+-") or "data"
    digest = hashlib.sha256(recipe_identity(normalized).encode()).hexdigest()[:10]
    return f"{stem}-{digest}"
