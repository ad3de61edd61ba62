"""Releases that race one another, fail half-way, or cannot reach the index: the uses a job
holds are released exactly, and a failed command leaks none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scutil import SRC, Sleeper, control, make_tarball, sample_files, sc, sc_env

FILES = sample_files()


@pytest.fixture
def words(tmp_path: Path) -> list[str]:
    path = tmp_path / "origin" / "data.tar.gz"
    path.parent.mkdir()
    return [f"file:{path}", f"md5:{make_tarball(path, FILES)}", "tar"]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base"
    path.mkdir()
    return path


def leases(base: Path, name: str) -> list[str]:
    return os.listdir(control(base) / "objects" / name / "leases")


def test_a_job_releasing_two_uses_at_once_releases_both(base, words):
    """Two `sc --unuse` of one job at once, which holds two uses: each picks a lease before the
    other has removed it; the second must take the job's other lease, not fail with "holds no
    use" and leave that use held for as long as the job lives."""
    with Sleeper() as owner:
        args = ["-d", str(base), "-n", "repo", "--pid", str(owner.pid), *words]
        for _ in range(2):
            assert sc("--use", *args).returncode == 0
        assert len(leases(base, "repo")) == 2
        # The other release runs between this one's choice of a lease and its release of it.
        script = textwrap.dedent(f"""
            import subprocess, sys
            from sharedcache.engine.fscache import FsCache
            from sharedcache.cli import main
            chosen = FsCache.lease_of
            def lease_of(self, name, owner):
                lease = chosen(self, name, owner)
                if lease is not None and not getattr(lease_of, "raced", False):
                    lease_of.raced = True
                    other = subprocess.run([sys.executable, "-m", "sharedcache", "--unuse", *{args!r}],
                                           capture_output=True, text=True, timeout=60)
                    assert other.returncode == 0, other.stderr
                return lease
            FsCache.lease_of = lease_of
            sys.argv = ["sc", "--unuse", *{args!r}]
            sys.exit(main())
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                env=sc_env(PYTHONPATH=SRC))
        assert result.returncode == 0, result.stderr
        assert not (control(base) / "objects" / "repo").exists(), "the last release deletes it"


def test_a_warm_use_whose_budget_cannot_be_set_leaks_no_lease(base, words):
    """`sc --use --max-size` of a ready repository takes its lease, then sets the budget, which
    needs the index: when the index stays busy past --timeout the command fails, and its lease
    must go with it (the release that would give it back needs the index too, and the deadline
    has passed by then)."""
    with Sleeper() as owner:
        args = ["-d", str(base), "-n", "repo", "--pid", str(owner.pid), "--keep", *words]
        assert sc("--use", *args).returncode == 0
        assert sc("--unuse", *args).returncode == 0
        assert leases(base, "repo") == []
        holder = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import sqlite3, sys, time
                db = sqlite3.connect({str(control(base) / "index.sqlite")!r}, isolation_level=None)
                db.execute("BEGIN IMMEDIATE")
                print("held", flush=True)
                sys.stdin.read()
            """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline() == "held\n"
            result = sc("--use", "--max-size", "1KB", "--timeout", "1", *args)
        finally:
            holder.stdin.close()
            holder.wait(30)
        assert result.returncode == 1 and "busy" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert leases(base, "repo") == [], "the failed use left its lease to the job"


def test_a_release_that_cannot_read_the_budget_changes_nothing(base, words):
    """A damaged budget fails a release in one line, as an unusable index does: before anything
    changes.  It had deleted the repository (into the trash), left its row counted and its link
    in place, and then reported the failure: the use could not be released again."""
    with Sleeper() as owner:
        args = ["-d", str(base), "-n", "repo", "--pid", str(owner.pid), *words]
        assert sc("--use", "--max-size", "10MB", *args).returncode == 0
        (control(base) / "budget").write_text("junk")
        failed = sc("--unuse", *args)
        assert failed.returncode == 1 and "set it again" in failed.stderr, failed.stderr
        assert len(leases(base, "repo")) == 1, "a failed release keeps the use"
        assert os.listdir(control(base) / "trash") == []
        (control(base) / "budget").write_text("10000000")
        assert sc("--unuse", *args).returncode == 0
        assert not (control(base) / "objects" / "repo").exists()
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert listed == []
        from sharedcache import FsCache

        assert FsCache(control(base)).size == 0
