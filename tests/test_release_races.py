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

from scutil import (SRC, Sleeper, check_tree, control, finish, make_tarball, sample_files, sc, sc_env, started_paused,
                    user_dir, wait_for)

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


def test_a_release_that_cannot_read_the_budget_deletes_the_repository_whole(base, words):
    """A damaged budget is taken for none by a release, as by a download: a budget never fails
    a job (the release failed in one line, and sc run exited 1 once its command had succeeded).
    Before that, it had deleted the repository (into the trash), left its row counted and its
    link in place, and then reported the failure: the use could not be released again."""
    with Sleeper() as owner:
        args = ["-d", str(base), "-n", "repo", "--pid", str(owner.pid), *words]
        assert sc("--use", "--max-size", "10MB", *args).returncode == 0
        (control(base) / "budget").write_text("junk")
        released = sc("--unuse", *args)
        assert released.returncode == 0 and "the release restores none" in released.stderr, released.stderr
        assert os.listdir(control(base) / "trash") == []
        assert not (control(base) / "objects" / "repo").exists()
        assert not os.path.lexists(user_dir(base) / "repo")
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert listed == []
        from sharedcache import FsCache

        assert FsCache(control(base)).size == 0


def test_a_release_whose_population_lock_gc_removed_leaves_the_link_of_the_next_population(base, words, tmp_path):
    """The last release removes the link of the repository it deleted under the population lock,
    which it opened before a gc removed the lock file: that lock locks nothing then.  A new
    population, holding the new lock file, commits while the release is between its look into
    the cache (the repository is not there yet) and its removal of the link, and keeps the link
    it finds there: the release must not then remove the link of that live repository."""
    link = user_dir(base) / "repo"
    lock = control(base) / "populate" / "repo.lock"
    args = ["-d", str(base), "-n", "repo", *words]
    with Sleeper() as first, Sleeper() as second:
        assert sc("--use", "--pid", str(first.pid), *args).returncode == 0
        assert lock.exists() and link.is_symlink()
        procs = []
        try:
            # The release pauses having opened the lock file, before it locks it; and again as it
            # removes the link, if it gets that far.
            release, release_paused, release_go = started_paused(
                tmp_path, "release",
                f'(event == "fcntl.flock" and os.readlink(f"/proc/self/fd/{{args[0]}}") == {str(lock)!r}) '
                f'or (event == "os.remove" and str(args[0]) == {str(link)!r})',
                "--unuse", "--pid", str(first.pid), *args, times=2)
            procs.append(release)
            wait_for(release_paused.exists, what="the release")
            # gc pauses having removed the lock file, before it looks at the links.
            gc, gc_paused, gc_go = started_paused(
                tmp_path, "gc", f'event == "os.scandir" and str(args[0]) == {str(user_dir(base))!r}',
                "gc", "-d", str(base))
            procs.append(gc)
            wait_for(gc_paused.exists, what="gc")
            assert not lock.exists()
            # The new population pauses holding the new lock file, before it fills the repository.
            population, populating, population_go = started_paused(
                tmp_path, "population", 'event == "os.mkdir" and str(args[0]).endswith("/repo.work")',
                "--use", "--pid", str(second.pid), *args)
            procs.append(population)
            wait_for(populating.exists, what="the population")
            release_paused.unlink()
            release_go.touch()
            wait_for(lambda: release_paused.exists() or release.poll() is not None, what="the release to go on")
            population_go.touch()
            ((status, out, err),) = finish([population])
            assert status == 0, err
            assert out.strip() == str(link)
            release_go.touch()
            gc_go.touch()
            for status, _, err in finish([release, gc]):
                assert status == 0, err
        finally:
            finish(procs)
        assert link.is_symlink(), "the link of the repository in use was removed"
        check_tree(link, FILES)


def test_a_last_release_overtaken_by_gc_reports_the_repository_deleted(base, words, tmp_path):
    """A last release removes its lease, then looks at the others: a gc that deletes the entry,
    unused by then, overtakes it.  The release's look found the private cache's entry gone by
    its path, and the release failed with the system's error ("No such file or directory",
    naming the entry); it is the release that deleted it, in effect, and says so."""
    args = ["-d", str(base), "-n", "repo", *words]
    with Sleeper() as owner:
        assert sc("--use", "--pid", str(owner.pid), *args).returncode == 0
        # The release pauses as it lists the entry's leases for its look, its own lease removed.
        removed_then_listed = ('(event == "os.remove" and globals().__setitem__("removed", True)) '
                               'or (event == "os.listdir" and isinstance(args[0], int) and globals().get("removed"))')
        release, paused, go = started_paused(tmp_path, "release", removed_then_listed,
                                             "--unuse", "-v", "--pid", str(owner.pid), *args)
        try:
            wait_for(paused.exists, what="the release")
            collected = sc("gc", "-d", str(base))
            assert collected.returncode == 0, collected.stderr
            assert not (control(base) / "objects" / "repo").exists(), "gc left the unused entry"
            go.touch()
        finally:
            ((status, _, err),) = finish([release])
        assert status == 0, err
        assert "repository deleted" in err, err
        assert not (user_dir(base) / "repo").exists()


def test_threads_of_one_program_release_every_use_they_took(base, words, monkeypatch):
    """A population looks its owner's lease up once it has committed: a use that another thread
    of the program took just then (of the fresh repository, without waiting) could be the one it
    found.  Both threads then released that lease: the second failed ("holds no use"), and the
    population's own use stayed held for the rest of the program.  Which lease the look finds
    is a matter of their names: several rounds."""
    import threading

    import sharedcache
    from sharedcache.engine import fscache

    real = fscache.FsCache.lease_of
    failures: list[BaseException] = []

    def use(name: str, entered: threading.Event | None = None, looked: threading.Event | None = None) -> None:
        try:
            with sharedcache.use(*words, directories=str(base), name=name, keep=False):
                if entered is not None and looked is not None:
                    entered.set()
                    looked.wait(30)  # held while the population looks its lease up
        except BaseException as e:  # (reported by the test, not lost in a thread)
            failures.append(e)

    for round in range(6):
        name, entered, looked = f"r{round}", threading.Event(), threading.Event()

        def lease_of_once_another_thread_holds(self, entry, owner, name=name, entered=entered,  # type: ignore[no-untyped-def]
                                               looked=looked):
            if entry != name or entered.is_set() or threading.current_thread().name != name:
                return real(self, entry, owner)
            threading.Thread(target=use, args=(name, entered, looked), name="other").start()
            assert entered.wait(30), "the other thread took no use"
            try:
                return real(self, entry, owner)
            finally:
                looked.set()

        monkeypatch.setattr(fscache.FsCache, "lease_of", lease_of_once_another_thread_holds)
        populator = threading.Thread(target=use, args=(name,), name=name)
        populator.start()
        populator.join(60)
        for thread in threading.enumerate():
            if thread.name == "other":
                thread.join(60)
        assert failures == [], failures
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert [row["users"] for row in listed if row["name"] == name] in ([], [[]]), listed


def test_a_repository_moved_away_as_it_is_committed_fails_the_use_in_one_line(base, words, tmp_path):
    """Between the commit, which gives the owner its use, and the look for that use, another
    process of the user (or of the group) renames the fresh entry away: the use fails, saying
    so, and nothing is linked (the look's assertion was an internal error)."""
    objects = control(base) / "objects"
    with Sleeper() as owner:
        population, paused, go = started_paused(
            tmp_path, "population", 'event == "os.remove" and str(args[0]).endswith("/repo.error")',
            "--use", "--pid", str(owner.pid), "-d", str(base), "-n", "repo", *words)
        try:
            wait_for(paused.exists, what="the population's commit")
            os.rename(objects / "repo", objects / "aside")
            go.touch()
        finally:
            ((status, out, err),) = finish([population])
    assert status == 1 and out == ""
    assert "moved away" in err and len(err.splitlines()) == 1, err
    assert not (user_dir(base) / "repo").is_symlink()
