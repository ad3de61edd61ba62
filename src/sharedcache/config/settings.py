"""The settings as values: what each is, its default, what makes it valid, and the environment
variables that set it.

A value is validated once, when it is built, so that the code that uses it need not check it
again; invalid input raises :class:`~sharedcache.errors.UsageError` with one line naming the
setting.  The environment is read here, by functions the edge calls (the command line,
:func:`sharedcache.use`); a value given explicitly wins over it:

===================  ================================================================
``SC_DIRECTORIES``   candidate base directories, ``:``-separated (as ``--directories``)
===================  ================================================================

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


class FetchPolicy:
    """How sources fetch: connections at once, timeouts, retries and back-off.

    ``connections``: how many connections one download may use at once (HTTP ranges), 1 to
    :data:`MAX_CONNECTIONS`.  ``connect_timeout``, ``read_timeout``: seconds to wait for a
    connection, and for the next bytes of an answer.  ``retries``: how many times a failed
    transfer (connection error, 5xx, interrupted body) is tried again, and how many times a
    population starts over when a source cannot resume.  Retry ``attempt`` (from 0) waits
    ``backoff`` seconds doubled ``attempt`` times, at most ``backoff_max``.  ``speed_limit``,
    ``speed_time``: a transfer (each connection of one) that brings fewer than ``speed_limit``
    bytes a second, on average over ``speed_time`` seconds, fails (curl's ``--speed-limit`` and
    ``--speed-time``); a ``speed_limit`` of 0 never does.  Without it, an origin that sends a
    byte now and then, each within the read timeout, would keep a population going forever.
    """

    __slots__ = (
        "backoff",
        "backoff_max",
        "connect_timeout",
        "connections",
        "read_timeout",
        "retries",
        "speed_limit",
        "speed_time",
    )
    connections: int
    connect_timeout: float
    read_timeout: float
    retries: int
    backoff: float
    backoff_max: float
    speed_limit: int
    speed_time: float

    def __init__(self, *, connections: int = 1, connect_timeout: float = 30.0,
                 read_timeout: float = 60.0, retries: int = 5, backoff: float = 0.25,
                 backoff_max: float = 8.0, speed_limit: int = 1000, speed_time: float = 60.0) -> None:
        if type(connections) is not int or not 1 <= connections <= MAX_CONNECTIONS:
            raise SettingError("connections", f"must be between 1 and {MAX_CONNECTIONS}, not {connections!r}")
        if type(retries) is not int or retries < 0:
            raise SettingError("retries", f"must be a whole number of at least 0, not {retries!r}")
        if type(speed_limit) is not int or speed_limit < 0:
            raise SettingError("speed_limit", f"must be a whole number of bytes a second, not {speed_limit!r}")
        for what, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout),
                              ("backoff", backoff), ("backoff_max", backoff_max), ("speed_time", speed_time)):
            if not isinstance(seconds, (int, float)) or not seconds >= 0 or seconds == float("inf"):
                raise SettingError(what, f"must be a number of seconds, not {seconds!r}")
        if speed_time == 0 and speed_limit:
            raise SettingError("speed_time", "must be more than 0 seconds when there is a speed limit")
        values = {"connections": connections, "connect_timeout": float(connect_timeout),
                  "read_timeout": float(read_timeout), "retries": retries, "backoff": float(backoff),
                  "backoff_max": float(backoff_max), "speed_limit": speed_limit, "speed_time": float(speed_time)}
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        # A value, shared by whoever was given it: changing it would change their fetching too.
        raise AttributeError(f"FetchPolicy is immutable: make a new one to change {name}")

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


def directories_from_environment(given: str | Sequence[str | os.PathLike[str]] | None,
                environ: Mapping[str, str] = os.environ) -> str | Sequence[str | os.PathLike[str]] | None:
    """The base directories asked for: ``given``, else ``$SC_DIRECTORIES``, else None (the
    defaults)."""
    if given is not None:
        return given
    return environ.get("SC_DIRECTORIES") or None
