"""Loader words as plain text: what can be known of a recipe without loading any loader.

The warm path of ``sc --use`` needs a recipe's identity (to check that a repository was made
from the same stack) and its default repository name, and nothing else of it; this module gives
both at the cost of a few string operations.  Parsing words into loaders is
:mod:`sharedcache.loaders.registry`'s job.

Identity
--------
A recipe starts with one or more source words, alternatives for the same bytes (mirrors), then
transforms.  Textually, the sources are the first word and the built-in source words (``http:``,
``file:``, ``dirac:``) that follow it (see :func:`source_count`).  The identity is what decides
that two recipes make the same repository:

* without a checksum word, the words themselves (each URL exactly, query included);
* with one (``md5:``, ``sha1:``, ``sha256:``, ``sha512:``), the bytes are pinned, so the identity
  is the file name of the first source (the last path component of its argument, which names the
  file of a recipe without an unpacker) and the words after the sources (digests in lower
  case).  Mirror lists, and URLs that differ only in their host or a query token, then make one
  repository.

User info in a URL (``https://user:password@host/...``) is a credential: it is never part of the
identity, of a name, or of anything shown (:func:`~sharedcache.errors.without_user_info`).  A URL's
query may be one too (a presigned URL's signature, a ``token=``): the identity, which every
member of a group cache can read (it is stored with the repository and in the status of its
population), holds the SHA-256 of a query instead of the query (:func:`_query_hidden`), which
tells queries apart as well.  Identities stored before hold the query itself
(:func:`earlier_identities`).

Caches made before this rule stored the words themselves as the identity
(:func:`legacy_identity`); a repository with such an identity is still held under its name (see
:meth:`sharedcache.repository.bases.Base.hold`), and a release or a location without ``--name``
also looks for the default name that identity gave (:func:`legacy_default_name`).
"""

from __future__ import annotations

from ..errors import split_user_info, without_user_info

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

    path = word[5:]
    if path.startswith("~"):
        from ..config.files import at_home, home_directory, why_not_at_home  # (loaded already)

        # The home as a config file's "~/" finds it: os.path.expanduser leaves a "~" it cannot
        # expand, or makes it a relative HOME, and the file read was then the working directory's.
        expanded = at_home(path, home_directory(os.environ))
        if expanded is None:
            from ..errors import UsageError, quoted

            raise UsageError(f"cannot expand ~ in {quoted(word)}: {why_not_at_home(path)}")
        path = expanded
    if path and not path.startswith("/"):
        try:
            path = f"{os.getcwd()}/{path}"
        except FileNotFoundError:
            from ..errors import unresolvable

            raise unresolvable(path) from None
    if not path:
        return word
    # The expanded path, not the word: "~" is another directory for another user or $HOME, and
    # "file:~/x" identified as written would serve one user's file for another's.  Empty and "."
    # components are dropped, which name the same file whatever the links ("a/./b" is "a/b"),
    # but not the last, whose trailing "/" or "/." the kernel refuses on a file.
    *parents, last = path.split("/")
    return "file:/" + "/".join([*(part for part in parents if part not in ("", ".")), last])


#: The checksum words: with one of them a recipe's bytes are pinned, whatever source gives them.
CHECKSUM_WORDS = ("md5", "sha1", "sha256", "sha512")


def shown_words(words: Iterable[str]) -> str:
    """The words as messages may show them: user info removed."""
    return " ".join(without_user_info(word) for word in words)


#: The built-in source words: after the first word, only these are taken for its mirrors.
SOURCE_WORDS = ("http", "file", "dirac")


def source_count(words: tuple[str, ...]) -> int:
    """How many leading words are sources, as text tells: the first word, and the built-in source
    words after it.  A plugin's word is not known without loading it: one that takes an argument
    may be a transform (``rename:NAME``), which must stay in the identity; a plugin's source after
    the first word is then kept in it too, which costs a second download, never wrong data."""
    count = 1
    for word in words[1:]:
        name, colon, _ = word.partition(":")
        if not colon or name not in SOURCE_WORDS:
            break
        count += 1
    return count


def reads_over_network(words: tuple[str, ...]) -> bool:
    """Whether a source of the recipe ``words`` may read over the network: any but ``file:`` (a
    plugin's source, not known without loading it, may)."""
    return any(not word.startswith("file:") for word in words[:source_count(words)])


def reads_files(words: tuple[str, ...]) -> bool:
    """Whether a source of the recipe ``words`` is a ``file:`` path, which names what the mounts
    of the process that reads it show."""
    return any(word.startswith("file:") for word in words[:source_count(words)])


def _file_name(word: str) -> str:
    """The last path component of a source word's argument, query and fragment removed from a URL
    (a path, ``file:`` or ``dirac:``, may hold "?" and "#" in its file name, which names the file
    of a recipe without an unpacker).  After a trailing "/" it is empty: such a URL's file is
    named "download", so it is not the repository of the URL without the "/"."""
    argument = without_user_info(word).partition(":")[2]
    if "://" in argument:
        for delimiter in "?#":
            argument = argument.partition(delimiter)[0]
    return argument.rpartition("/")[2]


def _canonical(word: str) -> str:
    """``word`` as the identity holds it: a checksum's hex digest in lower case, as it is checked
    (``sha256:ABC...`` and ``sha256:abc...`` are one recipe)."""
    name, colon, argument = word.partition(":")
    return f"{name}:{argument.lower()}" if colon and name in CHECKSUM_WORDS else word


def earlier_identities(words: str | Iterable[str]) -> tuple[str, ...]:
    """The identities that repositories made before paths and digests were normalised hold for
    this very recipe: its ``file:`` paths as spelled (``/a/./b``, ``/a//b``; never ``~``, which named
    another user's file) and its digests in the case written, under the checksum rule and as the
    words themselves (:func:`legacy_identity`).  A repository holding one is this recipe's."""
    import os  # (loaded already by every caller)

    parts = words.split() if isinstance(words, str) else [part for word in words for part in word.split()]
    spelled = []
    for part in parts:
        word = part
        if part.startswith("file:"):
            path = part[5:]
            if path.startswith("~"):
                return ()  # identified as written then: another user's or $HOME's file, not this one
            if path and not path.startswith("/"):
                try:
                    word = f"file:{os.getcwd()}/{path}"
                except FileNotFoundError:
                    return ()  # (the identity says so: see _absolute_file)
        spelled.append(word)
    if not spelled:
        return ()
    return ("\n".join(_identity_words(tuple(spelled), canonical=False)), "\n".join(spelled),
            _query_shown_identity(words))


def _identity_words(normalized: tuple[str, ...], *, canonical: bool = True) -> tuple[str, ...]:
    """The lines of the identity (see the module docstring), queries as written; digests as
    written unless ``canonical`` (see :func:`earlier_identities`)."""
    checksummed = any(word.partition(":")[0] in CHECKSUM_WORDS and ":" in word for word in normalized[1:])
    if not checksummed:
        return tuple(without_user_info(word) for word in normalized)
    # The first line holds a space, which no word can: an identity of this form never equals one
    # made of the words themselves.
    return (f"checksummed {_file_name(normalized[0])}",
            *(_canonical(word) if canonical else word for word in normalized[source_count(normalized):]))


def _query_hidden(word: str) -> str:
    """``word`` with the query of a URL in its argument replaced by the query's SHA-256 (a
    presigned URL's signature or a token is a credential, and the identity is shared)."""
    head, mark, rest = word.partition("?")
    if not mark or "://" not in head:
        return word  # no query, or a "?" in a path (file:, dirac:), which is the file's name
    query, hash_mark, fragment = rest.partition("#")
    return f"{head}?sha256:{_sha256_hex(query)}{hash_mark}{fragment}"


def _sha256_hex(text: str) -> str:
    """The SHA-256 of ``text`` in UTF-8, in hex, from the interpreter's own module, on which
    :mod:`hashlib` falls back: hashlib loads OpenSSL, which costs a warm use (3-4 ms) more than
    the rest of its work.  The module's name changed in Python 3.12."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # (typeshed stubs hashlib alone)
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]  # (as above)
        except ImportError:  # an interpreter built without its own hashes
            from hashlib import sha256
    digest: str = sha256(text.encode()).hexdigest()
    return digest


def _query_shown_identity(words: str | Iterable[str]) -> str:
    """The identity of ``words`` as it was before queries were hidden: what repositories made
    then hold, and what their default names are made of; refused (UsageError) if it is not
    UTF-8 text, as the identity must be stored, or if the user info of a URL is not, as it is
    sent (in a header, though the identity leaves it out).

    On POSIX a command-line argument with other bytes (a path in Latin-1) arrives with lone
    surrogates."""
    normalized = normalize_words(words)
    identity = "\n".join(_identity_words(normalized))
    if not "".join(normalized).isascii():  # (the identity is made of the words)
        from ..errors import UsageError, not_utf8_here, writes_as_utf8

        for word in normalized:
            if not writes_as_utf8(word):  # (the same words, another identity, in another locale)
                raise not_utf8_here(f"loader word {without_user_info(word)!r}")
        for line in identity.split("\n"):
            if not _utf8(line):
                raise UsageError(f"loader word {without_user_info(line)!r} is not UTF-8 text")
        for word in normalized:
            user_info = split_user_info(word)[1]
            if user_info is not None and not _utf8(user_info):
                raise UsageError(f"the user info of loader word {without_user_info(word)!r} is not UTF-8 text")
    return identity


def _utf8(text: str) -> bool:
    """Whether ``text`` can be written in UTF-8: it holds no lone surrogate."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def recipe_identity(words: str | Iterable[str]) -> str:
    """A canonical string for a stack of words: recipes that make the same repository give
    equal strings (see the module docstring), with the queries of URLs hidden.  The words must
    be UTF-8 text (see :func:`_query_shown_identity`)."""
    identity = _query_shown_identity(words)
    return "\n".join(_query_hidden(line) for line in identity.split("\n")) if "?" in identity else identity


def legacy_identity(words: str | Iterable[str]) -> str:
    """The identity that caches made before the checksum rule stored: the words themselves."""
    return "\n".join(normalize_words(words))


def default_name(words: str | Iterable[str]) -> str:
    """A repository name derived from the stack: a readable stem and a hash of its identity."""
    # Made of the identity with its queries as written, as before they were hidden: the name
    # shows nothing of them, and a repository keeps the name it had.
    return _name(words, _query_shown_identity(words))


def legacy_default_name(words: str | Iterable[str]) -> str | None:
    """The default name that caches made before the checksum rule gave the stack; None if the
    words are not UTF-8 text, which no cache stored as an identity (a checksummed identity leaves
    out the words in which a path in Latin-1 may be)."""
    identity = legacy_identity(words)
    return _name(words, identity) if identity.isascii() or _utf8(identity) else None


def _name(words: str | Iterable[str], identity: str) -> str:
    normalized = normalize_words(words)
    argument = without_user_info(normalized[0]).partition(":")[2] if normalized else ""
    path = argument.partition("?")[0].partition("#")[0].rstrip("/")
    file_name = path.rpartition("/")[2]
    if "%" in file_name:  # (urllib.parse costs a warm use 2 ms: imported for such a name only)
        from urllib.parse import unquote

        file_name = unquote(file_name)
    stem = _name_characters(_without_archive_suffixes(file_name)).lstrip("._+-")[:117].rstrip("._+-") or "data"
    return f"{stem}-{_sha256_hex(identity)[:10]}"


#: What the stem of a default name drops from the end of its file name, repeatedly and in any
#: case: a container, compressed or not, or a short form (``x.tar.gz``, ``x.tgz``, ``x.zip.gz``).
_ARCHIVE_SUFFIXES = (".tar", ".cpio", ".tgz", ".tbz", ".tbz2", ".txz", ".tzst", ".zip", ".gz", ".bz2", ".xz", ".zst",
                     *(container + compression for container in (".tar", ".cpio")
                       for compression in (".gz", ".bz2", ".xz", ".zst", ".lz", ".lzma", ".z")))

#: The characters outside ASCII that match an ASCII letter of those suffixes in any case, as
#: ``re.IGNORECASE`` matched them when names were made with it (a name must not change).
_FOLDED = {"\u0130": "i", "\u0131": "i", "\u017f": "s"}


def _without_archive_suffixes(file_name: str) -> str:
    folded = "".join(_FOLDED.get(c, c.lower() if c.isascii() else c) for c in file_name)  # one for one
    end = len(folded)
    while True:
        for suffix in _ARCHIVE_SUFFIXES:
            if folded.endswith(suffix, 0, end):
                end -= len(suffix)
                break
        else:
            return file_name[:end]


#: The characters a default name keeps of its file name; each run of others becomes one "-".
_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")


def _name_characters(text: str) -> str:
    kept: list[str] = []
    in_run = False
    for character in text:
        if character in _KEPT:
            kept.append(character)
            in_run = False
        elif not in_run:
            kept.append("-")
            in_run = True
    return "".join(kept)
