"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fscache_worker import Children
from origin import Origin

# --- Loader tests: the loopback HTTP origin --------------------------------------------------------


@pytest.fixture
def origin() -> Iterator[Origin]:
    """A loopback HTTP origin (tests/origin.py) serving what the test adds to it; stopped at the end."""
    server = Origin().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """An empty base directory for repositories."""
    path = tmp_path / "base"
    path.mkdir()
    return path


# --- Engine tests: child processes and a cache directory ------------------------------------------


@pytest.fixture
def children() -> Iterator[Children]:
    """Child processes for a test, each SIGKILLed by its PID when the test ends."""
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where a test's cache lives (not created: the engine creates it)."""
    return tmp_path / "cache"
