"""``@scoped``: the generator-based context managers of the engine behave like contextlib's."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharedcache import FsCache
from sharedcache.lean import scoped


@scoped
def recording(log: list[str], *, swallow: bool = False):  # type: ignore[no-untyped-def]
    """Enter, then exit or fail."""
    log.append("enter")
    try:
        yield "value"
    except KeyError:
        log.append("failed")
        if not swallow:
            raise
    finally:
        log.append("exit")


def test_value_and_order_on_a_normal_exit() -> None:
    log: list[str] = []
    with recording(log) as value:
        log.append(value)
    assert log == ["enter", "value", "exit"]
    assert recording.__name__ == "recording" and recording.__doc__ == "Enter, then exit or fail."


def test_help_shows_the_parameters() -> None:
    # help(sharedcache.use) showed (*args, **kwargs): none of name=, size=, keep=...
    import inspect

    import sharedcache

    assert list(inspect.signature(recording).parameters) == ["log", "swallow"]
    assert {"name", "size", "keep"} <= set(inspect.signature(sharedcache.use).parameters)
    assert {"name", "meta", "keep"} <= set(inspect.signature(FsCache.store).parameters)


def test_the_blocks_exception_reaches_the_generator_and_propagates_unchanged() -> None:
    log: list[str] = []
    error = KeyError("x")
    with pytest.raises(KeyError) as raised:
        with recording(log):
            raise error
    assert raised.value is error and log == ["enter", "failed", "exit"]
    with pytest.raises(ValueError):  # not handled by the generator: its finally still runs
        with recording(log):
            raise ValueError
    assert log[-2:] == ["enter", "exit"]


def test_an_exception_that_propagates_is_freed_without_the_collector() -> None:
    # The generator re-raises the block's exception inside __exit__, which added __exit__'s frame
    # (whose locals hold the exception) to its traceback: a cycle only the collector frees.  Under
    # a cap on memory, MemoryErrors so kept alive used up CPython's spare ones.
    import gc
    import weakref

    class Failure(KeyError):
        pass

    log: list[str] = []
    gc.disable()
    try:
        try:
            with recording(log):
                raise Failure("x")
        except Failure as caught:
            freed = weakref.ref(caught)
            assert caught.__traceback__ is not None
        assert log == ["enter", "failed", "exit"]
        assert freed() is None, "the exception outlived its last reference"
    finally:
        gc.enable()


def test_a_generator_may_swallow_the_exception() -> None:
    log: list[str] = []
    with recording(log, swallow=True):
        raise KeyError("x")
    assert log == ["enter", "failed", "exit"]


def test_a_generator_that_yields_twice_is_an_error() -> None:
    @scoped
    def twice():  # type: ignore[no-untyped-def]
        yield 1
        yield 2

    with pytest.raises(RuntimeError, match="yielded twice"):
        with twice():
            pass


@pytest.mark.parametrize("what", ["load", "store", "stage"])
def test_a_stop_iteration_in_the_block_propagates_as_itself(root: Path, what: str) -> None:
    cache = FsCache(root)
    with cache.store("a") as path:
        (path / "f").write_text("a")
    manager = {"load": lambda: cache.load("a"), "store": lambda: cache.store("b"), "stage": cache.stage}[what]
    with pytest.raises(StopIteration):
        with manager():
            next(iter([]))
    assert "b" not in cache


@pytest.mark.parametrize("what", ["use", "store"])
def test_a_scope_entered_again_is_refused_and_changes_nothing(tmp_path: Path, what: str) -> None:
    # Entered again inside its own block (as a lock may be), a use released the outer use,
    # deleting its data under the block, and a store committed its half-filled directory; the
    # StopIteration that followed was taken for handled, and the rest of the block skipped.
    import sharedcache

    data = tmp_path / "data"
    data.write_bytes(b"data")
    (tmp_path / "base").mkdir()
    cache = FsCache(tmp_path / "cache")
    manager = {"use": lambda: sharedcache.use(f"file:{data}", directories=str(tmp_path / "base"), verbosity=-1),
               "store": lambda: cache.store("entry")}[what]()
    finished = False
    with manager as path:
        with pytest.raises(RuntimeError, match="entered again"):
            with manager:
                pass
        if what == "use":
            assert (path / "data").read_bytes() == b"data", "the use is still held"
        else:
            assert "entry" not in cache, "nothing committed"
            (path / "f").write_text("whole")
        finished = True
    assert finished, "the rest of the block ran"
    if what == "store":
        with cache.load("entry") as path:
            assert (path / "f").read_text() == "whole"
    with pytest.raises(RuntimeError, match="entered again"):  # after the block, as contextlib refuses it
        with manager:
            pass

