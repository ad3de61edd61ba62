"""An interrupt (KeyboardInterrupt, or what a signal handler raises) at the wrong moment of an
index transaction or an atomic write: it propagates as itself, and leaves no write lock held."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sharedcache import FsCache
from sharedcache.engine import fsutil, index

HERE = os.path.dirname(__file__)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "..", "src"), os.environ.get("PYTHONPATH", "")])}


def _store_elsewhere(root: Path) -> subprocess.CompletedProcess[str]:
    code = (f"from sharedcache import FsCache\nc = FsCache({str(root)!r}, timeout=2)\n"
            "with c.store('other') as p: (p / 'f').write_text('o')\n")
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("after", ["BEGIN IMMEDIATE", "before COMMIT"])
def test_an_interrupt_next_to_begin_or_commit_leaves_no_write_lock_held(
    root: Path, monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    cache = FsCache(root, timeout=2)
    with cache.store("a") as path:
        (path / "f").write_text("a")
    real = index._Rows.execute
    fired = []

    def execute(self, sql, parameters=()):
        if after == "before COMMIT" and sql == "COMMIT" and not fired:
            fired.append(sql)
            raise KeyboardInterrupt  # the signal's handler ran just before the statement
        rows = real(self, sql, parameters)
        if after == "BEGIN IMMEDIATE" and sql == after and not fired:
            fired.append(sql)
            raise KeyboardInterrupt  # ... or just as it returned
        return rows

    monkeypatch.setattr(index._Rows, "execute", execute)
    with pytest.raises(KeyboardInterrupt):
        cache.remove("a")
    assert fired
    assert not cache._db().in_transaction
    other = _store_elsewhere(root)  # another process is not locked out of the index
    assert other.returncode == 0, other.stderr
    with cache.store("b") as path:  # and this one carries on
        (path / "f").write_text("b")
    cache.gc()  # (a rename into the trash is not rolled back: a row without its directory)
    assert {e.name for e in cache.entries()} - {"a"} == {"other", "b"}


def test_an_interrupt_as_an_atomic_write_renames_propagates_as_itself(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FsCache(root)
    real = os.rename

    def rename(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # delivered as the system call returned

    monkeypatch.setattr(fsutil.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with cache.store("a") as path:
            (path / "f").write_text("a")
    monkeypatch.undo()
    assert "a" not in cache
    assert os.listdir(root / "stage") == []
