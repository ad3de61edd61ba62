"""The lean idioms of the warm path: what a warm ``sc --use`` uses instead of costly imports.

A warm use (the repository is ready) must cost little more than starting Python (benchmark W3,
within 1.5x of ``python -c pass``).  The rule, and the measured costs behind it, are in
CONTRIBUTING.md; this module holds the substitutes it calls for:

* ``TYPE_CHECKING = False`` at the top of a module, then ``if TYPE_CHECKING:`` imports: the
  annotations are strings (``from __future__ import annotations``), so the types they name are
  imported for the type checker only, and :mod:`typing` is not imported at all.
* :class:`Record`: objects compared and shown by value, instead of :mod:`dataclasses`.
* :func:`scoped`: context managers from generators, instead of :mod:`contextlib`.

``@scoped`` does for the engine and the repositories what ``contextlib.contextmanager`` does:
the generator runs to its ``yield`` on entering the ``with`` block, and on leaving it is resumed,
or has the block's exception thrown into it.  contextlib itself is not used on those paths
because importing it (with the collections and functools it pulls in) costs about 2 ms, a
quarter of the whole budget of a warm ``sc --use``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from contextlib import AbstractContextManager
    from types import TracebackType
    from typing import Any, ParamSpec, TypeVar

    P = ParamSpec("P")
    T = TypeVar("T")


class Record:
    """Compared and shown by value, like a dataclass (importing dataclasses costs more than a
    warm ``sc --use``)."""

    __hash__ = None  # type: ignore[assignment]  # equal by value, and mutable: not hashable

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Scope:
    """One use of a ``@scoped`` function: the generator it returned, driven by ``with``."""

    __slots__ = ("_entered", "_name", "_steps")

    def __init__(self, steps: Generator[Any, None, None], name: str) -> None:
        self._steps, self._name, self._entered = steps, name, False

    def __enter__(self) -> Any:
        # Once only: entered again (inside its block, as a lock may be), the generator would run
        # on past its yield, to the release or the commit that the outer block's end is for.
        if self._entered:
            raise RuntimeError(f"{self._name}(...) entered again: each call gives one 'with' block")
        self._entered = True
        try:
            return next(self._steps)
        except StopIteration:
            raise RuntimeError(f"{self._name} did not yield") from None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if error is None:
            for _ in self._steps:
                raise RuntimeError(f"{self._name} yielded twice")
            return False
        try:
            self._steps.throw(error)
        except StopIteration as stop:
            # The generator handled the exception; unless it is the block's own, which a finished
            # generator throws back (an __exit__ called twice: entering twice is refused).
            return stop is not error
        except BaseException as raised:
            if raised is error:
                # Propagates with the block's traceback: re-raised here, it had gained this frame,
                # whose locals hold it, a cycle that only the collector frees (as contextlib does).
                error.__traceback__ = tb
                return False
            if isinstance(error, StopIteration) and raised.__cause__ is error:
                return False  # the block's StopIteration, which the generator turned into RuntimeError (PEP 479)
            raise
        raise RuntimeError(f"{self._name} yielded again after an exception")


def scoped(function: Callable[P, Iterator[T]]) -> Callable[P, AbstractContextManager[T]]:
    """Make a generator function that yields once into a function returning a context manager."""

    def start(*args: P.args, **kwargs: P.kwargs) -> Scope:
        # A generator function, annotated (as is usual) as returning an Iterator.
        return Scope(function(*args, **kwargs), function.__qualname__)  # type: ignore[arg-type]  # a generator

    start.__name__, start.__qualname__ = function.__name__, function.__qualname__
    start.__doc__, start.__module__ = function.__doc__, function.__module__
    # What help() and inspect.signature show: the parameters, not (*args, **kwargs).
    start.__wrapped__ = function  # type: ignore[attr-defined]  # (an attribute functions may have)
    return start
