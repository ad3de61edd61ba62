"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
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
