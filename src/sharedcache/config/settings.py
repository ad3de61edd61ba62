"""The settings as values: what each is, its default, what makes it valid, and the environment
variables that set it.

A value is validated once, when it is built, so that the code that uses it need not check it
again; invalid input raises :class:`~sharedcache.errors.UsageError` with one line naming the
setting.  The environment is read here, by functions the edge calls (the command line,
:func:`sharedcache.use`); a value given explicitly wins over it:

===================  ================================================================
``SC_DIRECTORIES``   candidate base directories, ``:``-separated (as ``--directories``)
``SC_PROXY``         the proxy chain (as ``--proxy``; see :func:`proxy_chain`)
``SC_OFFLINE``       ``1`` (or ``yes``, ``true``, ``on``): no network at all (as ``--offline``)
===================  ================================================================

Which proxy a URL goes through when no chain is set (curl's variables ``http_proxy``,
``https_proxy``, ``all_proxy``, ``no_proxy``) is decided per URL by
:mod:`sharedcache.loaders.transport`.

This module is on the warm path of ``sc --use``: it imports nothing costly.
"""

from __future__ import annotations

import os

from ..errors import SettingError, UsageError

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Base directories used when none are given.
DEFAULT_DIRECTORIES = ("/tmp", "/var/tmp")
#: At most this many connections for one download (``--connections``).
MAX_CONNECTIONS = 32
#: The member of a proxy chain that means "no proxy".
DIRECT = "DIRECT"

ProxyChain = tuple[tuple[str, ...], ...]


class FetchPolicy:
    """How sources fetch: connections at once, timeouts, retries and back-off.

    ``connections``: how many connections one download may use at once (HTTP ranges), 1 to
    :data:`MAX_CONNECTIONS`.  ``connect_timeout``, ``read_timeout``: seconds to wait for a
    connection, and for the next bytes of an answer.  ``retries``: how many times a failed
    transfer (connection error, 5xx, interrupted body) is tried again, and how many times a
    population starts over when a source cannot resume.  Retry ``attempt`` (from 0) waits
    ``backoff`` seconds doubled ``attempt`` times, at most ``backoff_max``.

    ``proxy``: the proxy chain (a string as :func:`proxy_chain` reads it, or its groups), or None
    to follow curl's environment variables.  ``no_proxy``: hosts reached directly, as curl's
    ``no_proxy`` (None: the environment's).  ``offline``: no network connection of any kind; a
    source that needs one fails at once.
    """

    __slots__ = (
        "backoff",
        "backoff_max",
        "connect_timeout",
        "connections",
        "no_proxy",
        "offline",
        "proxy",
        "read_timeout",
        "retries",
    )

    def __init__(self, *, connections: int = 1, connect_timeout: float = 30.0,
                 read_timeout: float = 60.0, retries: int = 5, backoff: float = 0.25,
                 backoff_max: float = 8.0, proxy: str | ProxyChain | None = None,
                 no_proxy: str | None = None, offline: bool = False) -> None:
        if type(connections) is not int or not 1 <= connections <= MAX_CONNECTIONS:
            raise SettingError("connections", f"must be between 1 and {MAX_CONNECTIONS}, not {connections!r}")
        if type(retries) is not int or retries < 0:
            raise SettingError("retries", f"must be a whole number of at least 0, not {retries!r}")
        for what, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout),
                              ("backoff", backoff), ("backoff_max", backoff_max)):
            if not isinstance(seconds, (int, float)) or not seconds >= 0 or seconds == float("inf"):
                raise SettingError(what, f"must be a number of seconds, not {seconds!r}")
        self.connections, self.retries = connections, retries
        self.connect_timeout, self.read_timeout = float(connect_timeout), float(read_timeout)
        self.backoff, self.backoff_max = float(backoff), float(backoff_max)
        self.proxy: ProxyChain | None = proxy_chain(proxy) if isinstance(proxy, str) else proxy
        self.no_proxy = no_proxy
        if type(offline) is not bool:
            raise SettingError("offline", f"must be true or false, not {offline!r}")
        self.offline = offline

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first)."""
        return min(self.backoff * 2.0**attempt, self.backoff_max)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FetchPolicy) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"FetchPolicy({fields})"


def proxy_chain(text: str) -> ProxyChain:
    """The groups of a CVMFS-style proxy chain ``A|B;C``: groups (``;``) are tried in order, the
    proxies of a group (``|``) in random order; ``DIRECT`` is a member that uses no proxy.  A
    proxy is ``[http://|https://][USER:PASSWORD@]HOST[:PORT]`` (``http://`` if no scheme is given).
    """
    groups = []
    for group in text.split(";"):
        members = tuple(_proxy_member(member.strip()) for member in group.split("|"))
        groups.append(members)
    return tuple(groups)


def _proxy_member(member: str) -> str:
    if member.upper() == DIRECT:
        return DIRECT
    scheme, has_scheme, rest = member.partition("://")
    if not has_scheme:
        scheme, rest = "http", member
    address = rest.rpartition("@")[2].partition("/")[0]  # HOST[:PORT], without user info
    host, colon, port = address.rpartition(":")
    if not colon or host.endswith(":"):  # no port, or an IPv6 address without brackets
        host, port = address, ""
    if scheme not in ("http", "https") or not host or (port and not port.isdigit()) \
            or any(char.isspace() for char in member):
        why = f"cannot use {member!r}" if member else "has an empty member"
        raise SettingError("proxy", f"{why}: expected DIRECT or [http://]HOST[:PORT], groups "
                                    "separated by ';' and proxies inside a group by '|'")
    return f"{scheme}://{rest}"


def flag(value: str, setting: str) -> bool:
    """A yes/no setting written as text: 1, yes, true, on or 0, no, false, off (any case)."""
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off", ""):
        return False
    raise SettingError(setting, f"must be yes or no (1/0, true/false, on/off), not {value!r}")


def base_directories(directories: str | Sequence[str | os.PathLike[str]] | None) -> list[str]:
    """Candidate base directories as absolute paths: a ``:``-separated string or a sequence;
    None gives :data:`DEFAULT_DIRECTORIES`."""
    if directories is None:
        directories = DEFAULT_DIRECTORIES
    if isinstance(directories, str):
        directories = [d for d in directories.split(":") if d]
    result = [os.path.abspath(os.fspath(d)) for d in directories]
    if not result:
        raise UsageError("no candidate directory given")
    return result


def directories(given: str | Sequence[str | os.PathLike[str]] | None,
                environ: Mapping[str, str] = os.environ) -> str | Sequence[str | os.PathLike[str]] | None:
    """The base directories asked for: ``given``, else ``$SC_DIRECTORIES``, else None (the
    defaults)."""
    if given is not None:
        return given
    return environ.get("SC_DIRECTORIES") or None
