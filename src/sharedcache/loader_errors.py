"""The errors of loaders (fetching or preparing data failed), and the refusal of a signal
handler's wait for what its own thread holds.

They are :mod:`sharedcache.errors`' and are named from there; they live here, made on the first
use of one of them (:func:`sharedcache.errors.__getattr__`), because a ready ``sc --use`` raises
none of them, and making a class of an exception costs as much as a tenth of a module's import
(CONTRIBUTING.md, "The warm path").
"""

from __future__ import annotations

from .errors import NoSpaceError, SharedCacheError, UsageError


class LoaderError(SharedCacheError):
    """Fetching or preparing data failed (base of the loader errors)."""


class CredentialError(LoaderError):
    """This process's credentials cannot be used (a CA bundle, a client certificate or key, a
    bearer token file, a ``.netrc``): its own failure, not the recipe's, which the processes
    waiting for its population, who have their own, are not told."""


class DownloadError(LoaderError):
    """A source could not deliver its bytes: network failure, HTTP error, missing file or tool."""


class AuthorizationError(DownloadError):
    """A server refused this process's request for want of credentials, or for the ones it sent:
    a 401 or 403 answer from the URL's own origin (which alone is sent them), a 407 from a proxy;
    or the system refused a local file to this process's uid and groups (``EACCES``, ``EPERM``);
    with several sources, from every one (a source that failed otherwise would fail any process).
    This process's own failure, as a :class:`CredentialError` is: it is recorded for the listing,
    but a process waiting for its population, whose credentials are its own, is not told it."""


class ChecksumError(LoaderError):
    """The data does not match the checksum the recipe gives."""


class UnsafeArchiveError(LoaderError):
    """An archive holds a member that would escape the repository or is not allowed."""


class SizeLimitError(LoaderError, NoSpaceError):
    """The data grew past the size the recipe reserved for it."""


class CorruptDataError(LoaderError):
    """The data is not what the recipe says it is: a corrupt or truncated archive or compressed stream."""


class ResumeError(DownloadError):
    """A transfer cannot continue where it stopped: the data changed, or the server ignores ranges.

    Loaders raise it so that the population starts over; it reaches the user only when starting over
    did not help either.
    """


class WaitForItselfError(UsageError):
    """A wait that this very thread would have to end: a signal handler's, run in the thread
    whose step it interrupted, which holds what the handler waits for (a lock, the index's
    write lock) until the handler returns.  Refused at once: waiting would last until the
    timeout, or for good."""


# Named where they are documented and imported from, in a traceback and by pickle (which finds
# them there through sharedcache.errors.__getattr__).
for _error in (LoaderError, CredentialError, DownloadError, AuthorizationError, ChecksumError, UnsafeArchiveError,
               SizeLimitError, CorruptDataError, ResumeError, WaitForItselfError):
    _error.__module__ = "sharedcache.errors"
