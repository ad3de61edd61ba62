"""shared-cache: share read-only data between the processes of a host.

* :class:`FsCache` (:mod:`sharedcache.fscache`): the crash-safe multi-process cache engine.
* :func:`use` (:mod:`sharedcache.repository`): hold a use of a repository described by a loader
  stack; the first user downloads and prepares it, the others wait and share it.
* :mod:`sharedcache.errors`: every error meant for a user.

Submodules are imported on first access, so ``import sharedcache`` costs almost nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported: it is costly on the warm path

__version__ = "0.2.0"

_EXPORTS = {
    "FsCache": "fscache",
    "use": "repository",
    "MissError": "errors",
    "SharedCacheError": "errors",
    "UsageError": "errors",
    "LoaderError": "errors",
    "DownloadError": "errors",
    "ChecksumError": "errors",
    "UnsafeArchiveError": "errors",
    "NoSpaceError": "errors",
    "BusyError": "errors",
    "CacheError": "errors",
    "WaitTimeoutError": "errors",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .errors import (  # noqa: F401
        BusyError,
        CacheError,
        ChecksumError,
        DownloadError,
        LoaderError,
        MissError,
        NoSpaceError,
        SharedCacheError,
        UnsafeArchiveError,
        UsageError,
        WaitTimeoutError,
    )
    from .fscache import FsCache  # noqa: F401
    from .repository import use  # noqa: F401


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sharedcache' has no attribute {name!r}")
    # __import__ rather than importlib.import_module: importing importlib costs a warm sc --use
    # a tenth of its budget.
    __import__(f"{__name__}.{module}")
    value = getattr(globals()[module], name)
    globals()[name] = value
    return value
