"""Context managers written as generators, without importing :mod:`contextlib`.

``@scoped`` does for the engine and the repositories what ``contextlib.contextmanager`` does:
the generator runs to its ``yield`` on entering the ``with`` block, and on leaving it is resumed,
or has the block's exception thrown into it.  contextlib itself is not used on those paths
because importing it (with the collections and functools it pulls in) costs about 2 ms, a
quarter of the whole budget of a warm ``sc --use``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from types import TracebackType


class Scope:
    """One use of a ``@scoped`` function: the generator it returned, driven by ``with``."""

    __slots__ = ("_steps", "_name")

    def __init__(self, steps: Generator, name: str) -> None:  # type: ignore[type-arg]
        self._steps, self._name = steps, name

    def __enter__(self):  # type: ignore[no-untyped-def]
        return next(self._steps)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if error is None:
            for _ in self._steps:
                raise RuntimeError(f"{self._name} yielded twice")
            return False
        try:
            self._steps.throw(error)
        except StopIteration:
            return True  # the generator handled the exception
        except BaseException as raised:
            if raised is error:
                return False  # propagates with its own traceback
            raise
        raise RuntimeError(f"{self._name} yielded again after an exception")


def scoped(function: Callable) -> Callable:  # type: ignore[type-arg]
    """Make a generator function that yields once into a function returning a context manager."""

    def start(*args, **kwargs) -> Scope:  # type: ignore[no-untyped-def]
        return Scope(function(*args, **kwargs), function.__qualname__)

    start.__name__, start.__qualname__ = function.__name__, function.__qualname__
    start.__doc__, start.__module__ = function.__doc__, function.__module__
    return start
