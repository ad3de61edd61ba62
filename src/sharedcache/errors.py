"""The exceptions shared-cache raises.

Every error meant for a user derives from :class:`SharedCacheError`; its message is one line that
says what failed and why, ready to be printed as it is.  The command line prints exactly that line
and exits with :attr:`SharedCacheError.exit_status`: 2 for a usage error, 1 for anything else.
Anything that is not a :class:`SharedCacheError` reaching the command line is a bug.

What a message may show of a URL is decided here too, once for every message, record, identity
and listing: never its user info (:func:`split_user_info`), of a proxy nothing but its scheme,
host and port (:func:`shown_proxy`), and in what other members of a group cache read, not its
query either, nor what a server wrote in an error answer (:func:`shown_to_others`).
"""

from __future__ import annotations

import _thread
import sys

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:  # (made on the first use of one: see __getattr__ at the end)
    from .loader_errors import AuthorizationError as AuthorizationError
    from .loader_errors import ChecksumError as ChecksumError
    from .loader_errors import CorruptDataError as CorruptDataError
    from .loader_errors import CredentialError as CredentialError
    from .loader_errors import DownloadError as DownloadError
    from .loader_errors import LoaderError as LoaderError
    from .loader_errors import ResumeError as ResumeError
    from .loader_errors import SizeLimitError as SizeLimitError
    from .loader_errors import UnsafeArchiveError as UnsafeArchiveError
    from .loader_errors import WaitForItselfError as WaitForItselfError

#: Quoted text longer than this many characters is shown by its two ends (a name in an archive may
#: be 256 KiB long, and the message must stay a line a user can read).
QUOTED_CHARACTERS = 160


class SharedCacheError(Exception):
    """Base of every error meant for a user."""

    exit_status = 1

    def __str__(self) -> str:
        # Messages quote words, paths, URLs and archive member names, which may hold any character.
        return printable(super().__str__())


def printable(text: str) -> str:
    """``text`` with its unprintable characters (newlines, terminal controls) escaped as Python
    escapes them, so that printed it stays one line and cannot steer the terminal.  The bytes of
    a path that are no text in the file system's encoding (lone surrogates, as
    ``surrogateescape`` decodes them) are escaped too (``\\udce9``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def quoted(text: str) -> str:
    """``text`` quoted for a message: its ``repr``, or past :data:`QUOTED_CHARACTERS`, its two ends
    joined by an ellipsis, and its length."""
    if len(text) <= QUOTED_CHARACTERS:
        return repr(text)
    return f"{_ends(text, QUOTED_CHARACTERS)!r} ({len(text):,} characters)"


def clipped(message: str, limit: int = 4000) -> str:
    """``message``, or past ``limit`` characters, its two ends and its length: what an error says
    first (what failed) and last (why) stays.  For the line a user reads: messages quote URLs,
    paths and records that another member of a group cache wrote, any of them kilobytes long."""
    return message if len(message) <= limit else f"{_ends(message, limit)} ({len(message):,} characters)"


def _ends(text: str, limit: int) -> str:
    half = limit // 2
    return text[:half] + "…" + text[-half:]


def split_user_info(url: str, *, schemeless: bool = False) -> tuple[str, str | None]:
    """``url`` (or a loader word that holds one, ``http:https://...``) without the user info of its
    authority, and that user info (``USER:PASSWORD``, None if it has none): what may be shown,
    stored or made an identity of a URL, and the credential it carries.  ``schemeless``: ``url``
    may be written without its scheme, starting with its authority (a proxy's
    ``USER:PASSWORD@HOST``); else text without ``://`` holds no URL.

    The authority ends at the first "/", "?" or "#", and its user info at its last "@", as URL
    parsers read it, so that an "@" in the path or query ("https://host/a@b") is no end of user
    info.  But users write passwords with those characters unescaped ("alice:pa#ss@host",
    "alice:a/b@host"), which would show what follows them: when the authority so ended has no "@"
    and an "@" comes after it, the user info goes on to that "@" (the last one before the next "/",
    "?" or "#") if the authority cannot be a host on its own: a ":" followed by what is no port
    ("alice:pa"), or a "#" after it (a download needs no fragment).  A host with a port
    ("host:8080/a@b") keeps its path."""
    start = _authority_start(url, schemeless)
    if start is None:
        return url, None
    end = _authority_end(url, start)
    at = url.rfind("@", start, end)
    if at < 0:
        after = url.find("@", end)
        if after >= 0 and (_no_host(url[start:end]) or url.startswith("#", end)):
            at = url.rfind("@", start, _authority_end(url, after))
    if at < 0:
        return url, None
    return url[:start] + url[at + 1:], url[start:at]


def _authority_start(url: str, schemeless: bool) -> int | None:
    """Where the authority of ``url`` begins: after its "://", or at its start if it may be
    written without a scheme (``schemeless``); None if it holds no URL."""
    start = url.find("://")
    if start >= 0:
        return start + 3
    return 0 if schemeless else None


def _authority_end(url: str, start: int) -> int:
    """Where the authority that begins at ``start`` ends: at the first "/", "?" or "#" after it."""
    ends = [found for found in (url.find(delimiter, start) for delimiter in "/?#") if found >= 0]
    return min(ends, default=len(url))


def _no_host(authority: str) -> bool:
    """Whether ``authority`` (without user info) is no host: a ":" that no port follows."""
    host, colon, port = authority.partition(":")
    return bool(colon and port and not port.isdigit() and not host.startswith("["))


def user_info_problem(url: str, *, schemeless: bool = False) -> str | None:
    """What is wrong with the user info of ``url`` (see :func:`split_user_info`), which a URL
    parser (urllib3's, curl's) would not read as such: it would take another host; None if nothing."""
    user_info = split_user_info(url, schemeless=schemeless)[1] or ""
    if any(char in user_info for char in "/?#"):
        return "a '/', '?' or '#' in the user name or password of a URL is written %2F, %3F or %23"
    return None


def pathless_problem(url: str, *, schemeless: bool = False) -> str | None:
    """What is wrong with ``url``, a URL that has no use for a path (a proxy's), if an "@" follows
    its authority once its user info is gone (see :func:`split_user_info`); None if nothing.  That
    "@" can only end user info with an unescaped "/" or "?" that URL parsers (curl's, urllib3's)
    end the host at, and that :func:`split_user_info` cannot tell from a path, as the digits
    before it can be a port: "alice:12/S3CRET@proxy:3128" is to them the host alice, port 12 and
    the path "/S3CRET@proxy:3128", so the password would be shown, and the connection made to
    the user name."""
    shown = without_user_info(url, schemeless=schemeless)
    start = _authority_start(shown, schemeless)
    if start is None or "@" not in shown[_authority_end(shown, start):]:
        return None
    return ("a proxy URL has no path, so an '@' after its host ends a user name or password, where a '/' "
            "is written %2F and a '?' %3F")


def with_path(url: str) -> str:
    """``url`` (``SCHEME://...``) with the path "/" if it has none (``https://host``,
    ``https://host?q``): to HTTP the same URL (RFC 3986, 6.2.3), but one that ends its authority
    with a "/", so that no text joined to its end can go on its host or port."""
    start = _authority_start(url, False)
    if start is None:
        return url
    end = _authority_end(url, start)
    return url if url.startswith("/", end) else f"{url[:end]}/{url[end:]}"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """``text`` with its ASCII letters in lower case, and only those: as hosts and the keywords of
    configuration files compare, where Unicode's rules would take a Kelvin sign for a "k" (and
    change the text's length)."""
    return text.translate(_ASCII_LOWER)


def with_folded_origin(url: str) -> str:
    """``url`` (``SCHEME://...``) with its scheme and authority in lower case (ASCII letters only,
    so that its length is the same): URLs that differ there alone name the same resource (RFC 3986,
    6.2.2.1), as ``HTTPS://GitHub.com/x`` and ``https://github.com/x`` do; its path, query and
    fragment are compared as they are."""
    start = _authority_start(url, False)
    if start is None:
        return url
    end = _authority_end(url, start)
    return ascii_lower(url[:end]) + url[end:]


def without_user_info(url: str, *, schemeless: bool = False) -> str:
    """``url`` without the user info of its authority (see :func:`split_user_info`)."""
    return split_user_info(url, schemeless=schemeless)[0]


def server_says(text: str) -> str:
    """The end of an error's line that gives what a server wrote in its answer (see
    :func:`said_by_server`)."""
    return f": {said_by_server(text)}"


def said_by_server(text: str) -> str:
    """What a server wrote, quoted (escaped, and by its two ends if long), as a message says it
    after ": " or "(": :func:`shown_to_others` hides it."""
    return f"the server says {quoted(text)}"


def shown_to_others(message: str) -> str:
    """``message`` as other members of a group cache may read it: without what a server wrote
    (an error answer may repeat a token it was sent), and with the query of each URL hidden
    (:func:`without_queries`)."""
    import re  # (not at the top: this module is on the warm path, and re is not)

    # What said_by_server made: a quoted string (a repr), and its length if shortened.
    said = re.compile(r"(: |\()the server says (?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(?: \([0-9,]+ characters\))?")
    return without_queries(said.sub(r"\1the server says …", message))


def without_queries(message: str) -> str:
    """``message`` with whatever may be the query of a URL hidden, for the other members of a
    group cache; conservative, as it cannot tell a URL from other text:

    - In each quoted item (a ``repr``, as :func:`quoted` makes it: a URL that a server wrote, a
      ``Location`` that is relative or of another scheme, anything else), all after its first "?",
      shown as ``?…``, and all after the ellipsis of one shown by its two ends, unless a "?" comes
      before it: its "?" may be in the middle that was left out, and what follows, the end of its
      query.  A quote after a letter or digit is an apostrophe ("the server's"), not an item's start.
    - In each URL outside quotes (``SCHEME://...``, which holds no space: a source's URL refuses
      one, and a redirect's target that holds one is quoted), all after its first "?" or ellipsis
      up to the next space, quotes included: a URL may hold a quote, which ends nothing there.
      (Messages put a space, or punctuation and a space, after such a URL, never a quote.)
    """
    parts = []
    at = 0
    while at < len(message):
        quote = next((i for i in range(at, len(message)) if message[i] in "'\"" and not
                      (i > 0 and message[i - 1].isalnum())), len(message))
        url = _bare_url_start(message, at, quote)
        if url < quote:
            end = next((i for i in range(url, len(message)) if message[i].isspace()), len(message))
            parts.append(message[at:url] + _without_query(message[url:end]))
        elif quote < len(message):
            end = _quoted_end(message, quote)
            parts.append(message[at:quote + 1] + _without_query(message[quote + 1:end]) + message[end:end + 1])
            end += 1
        else:
            end = len(message)
            parts.append(message[at:])
        at = end
    return "".join(parts)


def _bare_url_start(message: str, start: int, end: int) -> int:
    """Where the first ``SCHEME://`` in ``message[start:end]`` begins, or ``end``."""
    found = message.find("://", start, end)
    if found < 0:
        return end
    while found > start and (message[found - 1].isalnum() or message[found - 1] in "+-."):
        found -= 1
    return found


def _quoted_end(message: str, start: int) -> int:
    """Where the quoted item that opens at ``start`` closes (its quote, escaped with "\\" within
    it, as ``repr`` does), or the end of ``message``."""
    at = start + 1
    while at < len(message) and message[at] != message[start]:
        at += 2 if message[at] == "\\" else 1
    return min(at, len(message))


def _without_query(text: str) -> str:
    """``text`` up to its first "?", followed by ``?…``, or through its first ellipsis (see
    :func:`without_queries`), whichever comes first."""
    asked, shortened = text.find("?"), text.find("…")
    if shortened >= 0 and not 0 <= asked < shortened:
        return text[:shortened + 1]
    return text if asked < 0 else text[:asked] + "?…"


def unparsed_url(url: str, *, schemeless: bool = False, pathless: bool = False) -> str:
    """What a message shows of ``url``, which no URL parser takes: without its user info, and
    with nothing after its "://" if what remains of the authority is no host but one with a ":"
    that no port follows.  That is a user and password whose "@" is gone (a password with a space,
    which splits a recipe's word there: "http://alice:pa").  ``pathless``: ``url`` has no use for
    a path (a proxy's), so nothing after its authority is shown (it means nothing, and may be the
    end of a password whose "@" is gone: "http://alice:12/S3CRET"); and nothing after its "://"
    either if :func:`pathless_problem` finds a problem: what comes before its "/" or "?" is a user
    name (a token, as some write one) and a password's first characters, what comes after, the
    rest of that password and a host that would seem to be the one used, where a URL parser would
    connect to the user name."""
    shown = without_user_info(url, schemeless=schemeless)
    parts = _address_parts(shown, schemeless)
    if parts is None:
        return shown
    before, address = parts
    if _no_host(address) or (pathless and pathless_problem(url, schemeless=schemeless)):
        return f"{before}..."
    return before + address if pathless else shown


def shown_proxy(url: str) -> str:
    """What a message or ``sc config`` shows of the proxy ``url`` (``[SCHEME://]HOST[:PORT]``
    with user info and anything after it, which a proxy has no use for): its scheme, host and port
    only, or less if it is no URL (see :func:`unparsed_url`)."""
    return unparsed_url(url, schemeless=True, pathless=True)


def host_and_port(url: str, *, schemeless: bool = False) -> str:
    """The authority of ``url`` without its user info (see :func:`split_user_info`): ``HOST[:PORT]``,
    empty if ``url`` holds no URL."""
    parts = _address_parts(without_user_info(url, schemeless=schemeless), schemeless)
    return "" if parts is None else parts[1]


def _address_parts(shown: str, schemeless: bool) -> tuple[str, str] | None:
    """What comes before the authority of ``shown`` (a URL without user info), and that
    authority; None if it holds no URL."""
    start = _authority_start(shown, schemeless)
    return None if start is None else (shown[:start], shown[start:_authority_end(shown, start)])


def unresolvable(path: str) -> SharedCacheError:
    """The error for a relative ``path`` given while the current directory no longer exists
    (``os.getcwd()`` then fails with a bare "No such file or directory" that names nothing)."""
    return SharedCacheError(f"cannot resolve the relative path {quoted(path)}: the current directory "
                            "no longer exists")


def why_full(code: int, path: str) -> str:
    """What to add to "no space left on the device" for a write under ``path`` that met ``code``
    (ENOSPC or EDQUOT), where ``df`` would show free space: ENOSPC also means that the file system
    has no inode left (a tree of many small files), EDQUOT that the user's quota is used up.
    Asked at once: the failed tree, once removed, gives its inodes back."""
    import errno
    import os

    if code == errno.EDQUOT:
        return ": your disk quota is used up"
    try:
        stats = os.statvfs(path)
    except OSError:
        return ""
    return ": no free inodes (see df -i)" if stats.f_files > 0 and stats.f_ffree == 0 else ""  # 0, 0: no count


class Ended(BaseException):
    """A signal that ends the process (SIGTERM, SIGHUP), taken as an exception so that what is
    under way undoes itself first; not an Exception, so that no handler of failures takes it for
    one of theirs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def end_by_exception(signum: int, _frame: object) -> None:
    """A signal handler that raises :class:`Ended`: ``sc run`` installs it as the first process
    of a PID namespace, for which the kernel drops a signal left to its default action.  A
    population that finds it in place ends cleanly by its signal, as it does by a default one
    (:mod:`sharedcache.repository.population`)."""
    raise Ended(signum)


class UsageError(SharedCacheError, ValueError):
    """The caller asked for something malformed: a bad recipe, option, name or size."""

    exit_status = 2


def writes_as_utf8(text: str) -> bool:
    """Whether this process writes ``text`` into a file name as its UTF-8 bytes, as every name
    in a cache is written: it is ASCII, or Python's file-system encoding is UTF-8 (that of a
    UTF-8 locale, of the C and POSIX locales, and of PYTHONUTF8=1).  Under another (a Latin-1
    locale) the same name is other bytes on disk, another file to every other process."""
    return text.isascii() or sys.getfilesystemencoding() == "utf-8"


def not_utf8_here(what: str) -> UsageError:
    """The refusal of ``what``, not ASCII, by a process that would not write it as UTF-8
    (:func:`writes_as_utf8`)."""
    return UsageError(f"{what} is not ASCII, and {why_not_utf8_here()}")


def why_not_utf8_here() -> str:
    """Why this process leaves alone the names not ASCII (:func:`writes_as_utf8`), and what to do."""
    return (f"this locale writes file names in {sys.getfilesystemencoding()}, not in UTF-8 as a cache's names are: "
            "run sc under a UTF-8 locale (such as LC_ALL=C.UTF-8) or with PYTHONUTF8=1")


class SettingError(UsageError):
    """A setting has a value it cannot take.  ``setting`` is its name (``connections``), so that
    whoever took the value can say where it came from (``--connections``, a file and key)."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting} {reason}")
        self.setting, self.reason = setting, reason


class ConfigError(SharedCacheError):
    """A config file or a setting's environment variable is malformed; the message names the file
    and line (or the variable) and the key."""

    exit_status = 2


class MissError(SharedCacheError, KeyError):
    """The requested cache entry does not exist (or is not committed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "cache miss"


class CacheError(SharedCacheError):
    """The cache directory cannot be used: corrupt or foreign metadata, bad permissions."""


class LeasedError(CacheError, BlockingIOError):
    """A file of the cache that its owner (another member of a group cache) holds under a file
    lease (``fcntl F_SETLEASE``), past the wait for it: an open that must not block is refused
    until the kernel breaks the lease.  Still the ``BlockingIOError`` that the open raised, to
    whoever takes any failed open for a file it cannot use."""


class ConflictError(SharedCacheError):
    """An entry exists under the requested name with different metadata (another recipe)."""

    def __init__(self, name: str, existing: str | None) -> None:
        super().__init__(f"entry {name!r} already exists with different metadata")
        self.name = name
        self.existing = existing


class NameTakenError(SharedCacheError):
    """A repository's name holds another recipe than the one given: the caller chose the name,
    and is the one to change it, so the status is a usage error's (without its pointer to the
    help, which does not help here)."""

    exit_status = 2


class BusyError(SharedCacheError):
    """An entry is in use and cannot be removed or replaced now."""


class WaitTimeoutError(SharedCacheError):
    """Waiting for a lock or for another process's population took longer than allowed."""


class NoSpaceError(SharedCacheError):
    """Not enough space: the budget or the file system cannot hold the data."""


def no_space_for(what: str, error: OSError, path: str, written: int = 0) -> NoSpaceError | None:
    """The error to raise for ``error``, met by a write for ``what`` under ``path``, if it is a
    full file system or quota (ENOSPC, EDQUOT), said with :func:`why_full` at once; else None.
    ``written``: the bytes of the data written by then, which tell how much room it needed at
    least."""
    import errno

    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    if written:
        from .sizes import format_size

        what += f" after {format_size(written)} of its data"
    return NoSpaceError(f"no space left on the device of {_mount_point(path)} for {what}"
                        f"{why_full(error.errno, path)}")


def cannot_write_here(error: OSError) -> bool:
    """Whether ``error`` says that nothing more can be written on its file system for now: no
    room (no block, no inode: ENOSPC; a quota: EDQUOT), or mounted read-only (EROFS).  A write
    that is only advisory skips on it rather than failing what it speaks of."""
    import errno

    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _mount_point(path: str) -> str:
    """Where the file system of ``path`` is mounted (what ``df`` names), or ``path`` itself if
    that cannot be told: the place a message about a full file system names, rather than the
    source whose data was being written.  A ``path`` not made yet (a new cache's directory, which
    found no room) is on the file system of its nearest existing parent."""
    import os

    try:
        here = os.path.realpath(path)
        while not os.path.exists(here) and here != "/":
            here = os.path.dirname(here)
        device = os.stat(here).st_dev
        while here != "/" and os.stat(os.path.dirname(here)).st_dev == device:
            here = os.path.dirname(here)
    except OSError:
        return path
    return here


class ProcessLimitError(SharedCacheError):
    """A limit set on this process or its system (``ulimit``, a sysctl) stopped it: a limit to
    raise, not a fact about the data or the cache.  Nothing is judged from it (no damage to
    repair, no leftover), nor recorded as a repository's failure: its waiters have limits of
    their own (see :func:`over_limit`)."""


class OutOfMemoryError(ProcessLimitError):
    """The system refused this process memory (ENOMEM): under a cap on address space, most often."""


class OutOfFilesError(ProcessLimitError):
    """The process, or the system, has as many files open as it may."""


class FileSizeLimitError(ProcessLimitError):
    """A file reached the size this process may write (``ulimit -f``)."""


def over_limit(error: OSError) -> ProcessLimitError | None:
    """The error to raise for ``error`` if a limit of this process's or its system's caused it;
    else None.  EMFILE is this process's limit of open files (``ulimit -n``), ENFILE the system's:
    whatever failed to open is fine, it is what this process may open that ran out, so the line
    says which limit and not what was being opened.  EFBIG under a file size limit (``ulimit
    -f``) is that limit; without one it is the file system's largest file, a fact of the base.
    ENOMEM is memory refused, as under ``ulimit -v``.

    The limit of open files is read with ``os.sysconf``, which returns the soft RLIMIT_NOFILE as
    ``getrlimit`` does: importing :mod:`resource` would open its shared library, which a
    process with no descriptor left cannot."""
    import errno
    import os

    if error.errno == errno.EMFILE:
        return OutOfFilesError(f"too many open files: this process may open {os.sysconf('SC_OPEN_MAX')} "
                               "(ulimit -n); raise the limit")
    if error.errno == errno.ENFILE:
        return OutOfFilesError("too many open files on this system: its limit (sysctl fs.file-max) is reached; "
                               "raise it, or end what holds them")
    if error.errno == errno.EFBIG:
        return file_size_limit_error()
    if error.errno == errno.ENOMEM:
        return OutOfMemoryError(out_of_memory())
    return None


def raise_if_over_limit(error: OSError) -> None:
    """Raise :func:`over_limit`'s error for ``error``, if it is one, where ``error`` would
    otherwise be taken for a fact about a file (missing, not ours, abandoned, damaged): a process
    at one of its limits must not judge anything from what it failed to do."""
    limit = over_limit(error)
    if limit is not None:
        raise limit from None


def file_size_limit() -> int | None:
    """The size in bytes past which this process may not write a file (its soft RLIMIT_FSIZE,
    ``ulimit -f``), or None if there is none."""
    return _soft_limit("Max file size")


#: What :func:`_soft_limit` reads ``/proc/self/limits`` into: made with the module, since a process
#: that has run out of memory may not get the 4 KiB of a new buffer (the line then lost its reason).
_LIMITS = bytearray(4096)
_LIMITS_LOCK = _thread.allocate_lock()
_DIGITS = b"0123456789"


def _soft_limit(name: str) -> int | None:
    """This process's soft limit ``name`` (as ``/proc/self/limits`` names it), or None if there is
    none or it cannot be read.  Read there rather than with :mod:`resource`, whose shared library
    a process out of address space cannot load, and without making a buffer or a line."""
    import os

    key = b"\n" + name.encode() + b"  "
    try:
        fd = os.open("/proc/self/limits", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _LIMITS_LOCK:
                size = os.readv(fd, [_LIMITS])
                start = _LIMITS.find(key, 0, size)
                if start < 0:
                    return None
                first = start + len(key)
                while first < size and _LIMITS[first] == ord(" "):
                    first += 1
                last = first
                while last < size and _LIMITS[last] in _DIGITS:
                    last += 1
                return int(_LIMITS[first:last]) if last > first else None  # (None: "unlimited")
        finally:
            os.close(fd)
    except (OSError, ValueError, MemoryError):
        return None


def file_size_limit_error(sizes: tuple[int, ...] = ()) -> FileSizeLimitError | None:
    """:class:`FileSizeLimitError` if this process has a file size limit, and one of the files of
    ``sizes`` (if given: for a failure that carries no errno, SQLite's) may have met it by growing
    (by at most 64 KiB, SQLite's largest page); else None."""
    limit = file_size_limit()
    if limit is None or (sizes and max(sizes) + 65536 < limit):
        return None
    return FileSizeLimitError(f"file too large: this process may write files of at most {limit} bytes "
                              "(ulimit -f); raise the limit")


def out_of_memory() -> str:
    """What to say of a :class:`MemoryError`: the address space this process may take, where a
    limit (``ulimit -v``, as batch systems set for a job's memory) caused it.  The threads of a
    miss each reserve address space far past what they use (the C library's arena of each)."""
    soft = _soft_limit("Max address space")
    if soft is None:
        return "out of memory"
    return f"out of memory: this process may take {soft} bytes of address space (ulimit -v); raise the limit"


#: SQLite's (extended) result codes for memory it did not get: SQLITE_NOMEM, SQLITE_IOERR_NOMEM.
_SQLITE_OUT_OF_MEMORY = frozenset({7, 3082})
#: SQLite's codes for the shared memory of a WAL index not mapped: SQLITE_IOERR_SHMSIZE, _SHMMAP.
_SQLITE_UNMAPPED = frozenset({4874, 5386})


def memory_refused(error: BaseException | None) -> bool:
    """Whether ``error`` is the system refusing memory: a :class:`MemoryError`, or, under a limit
    on address space, a module whose library could not be mapped (the dynamic loader says "failed
    to map segment from shared object", or "cannot allocate memory"; a module that imports
    another's C interface through a capsule says only "PyCapsule_Import could not import module",
    the reason dropped: ``_ssl`` of ``_socket``, at a cap of 23 MiB) or a :class:`SystemError`
    (the interpreter's C code that met an allocation failing and did not say so: "error return
    without exception set", in an import at a cap of 29 MiB, or "... returned NULL without setting
    an exception"; any other SystemError is a bug, capped or not), or SQLite's error that it could
    not map the index's shared memory (``-shm``), which it says as "disk I/O error" (or that it ran
    out of memory, which it says as such), or the interpreter's "can't allocate lock" (a
    RuntimeError, met by a thread under a cap of 42 MiB).  A call that fails with ENOMEM is
    :func:`over_limit`'s."""
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and str(error) == "can't allocate lock"):
        return True
    text = str(error).lower()
    sqlite_code = getattr(error, "sqlite_errorcode", None)
    if sqlite_code is not None:
        if sqlite_code in _SQLITE_OUT_OF_MEMORY:
            return True
        unsaid = sqlite_code in _SQLITE_UNMAPPED
    elif isinstance(error, SystemError):
        unsaid = "without exception set" in text or "without setting an exception" in text
    elif isinstance(error, ImportError):
        unsaid = ("failed to map segment" in text or "cannot allocate memory" in text
                  or "pycapsule_import could not import module" in text)
    else:
        return False
    return unsaid and _soft_limit("Max address space") is not None


def out_of_files_now() -> ProcessLimitError | None:
    """:func:`over_limit`'s error if this process cannot open a descriptor now: for a failure
    that carries no errno (SQLite's "unable to open database file"), met just before."""
    import os

    try:
        os.close(os.open("/", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as e:
        return over_limit(e)
    return None


class EntryTooLargeError(NoSpaceError):
    """An entry is larger than the whole cache budget; it is refused without evicting anything."""


def size_change(before: int, now: int | None) -> str:
    """Why a continuation is not of the file of ``before`` bytes that it continues: it gives another
    size, ``now``, or none (a ``Content-Range`` ending in ``/*``)."""
    if now is None:
        return f"its size of {before} bytes is no longer given"
    return f"its size changed from {before} to {now} bytes"


#: The errors that a ready use never raises, made on the first use of one (see
#: :mod:`sharedcache.loader_errors`).
_MADE_ON_FIRST_USE = frozenset({
    "LoaderError", "CredentialError", "DownloadError", "AuthorizationError", "ChecksumError",
    "UnsafeArchiveError", "SizeLimitError", "CorruptDataError", "ResumeError", "WaitForItselfError",
})


def __getattr__(name: str) -> object:
    if name not in _MADE_ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import loader_errors

    value = getattr(loader_errors, name)
    globals()[name] = value
    return value
