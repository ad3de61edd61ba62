"""A cache in the lower layer of an overlayfs, as a container finds one that its image's build
warmed: overlayfs refuses to rename a directory of a lower layer (EXDEV, unless mounted with
redirect_dir, which Docker's overlay2 does not use), so what a deletion moves into the trash
elsewhere is removed in place there (see "Delete" in sharedcache.engine.fscache).  Mounting needs
root: elsewhere every test here is skipped, saying why."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from scutil import (Sleeper, check_tree, content_for, control, interpreter_for, make_tarball, mounted_overlay,
                    sample_files, sc, started_paused, stop_process, user_dir, wait_for)
from sharedcache import FsCache

FILES = sample_files(4, 5_000)
#: A repository of many files in many directories, whose removal a test stops half-way.
MANY_FILES = {f"shard-{i:02d}/f-{j:03d}": content_for(f"{i}/{j}", 100) for i in range(20) for j in range(100)}


def source(tmp_path: Path, name: str, files: dict[str, bytes]) -> list[str]:
    """The words of ``sc --use`` that name a tarball of ``files``."""
    path = tmp_path / "origin" / f"{name}.tar.gz"
    path.parent.mkdir(exist_ok=True)
    return [f"file:{path}", f"md5:{make_tarball(path, files)}", "tar"]


def run(*args: str | Path | int) -> None:
    done = sc(*map(str, args))
    assert done.returncode == 0, done.stderr


def listed(base: Path) -> dict[str, int]:
    """The repositories ``sc list`` shows, by name, with their sizes."""
    return {r["name"]: r["size"] for r in json.loads(sc("list", "--json", "-d", str(base)).stdout)}


def assert_consistent(base: Path) -> None:
    """``objects/`` holds exactly the entries the index accounts for, and their sizes add up."""
    with closing(FsCache(control(base))) as cache:
        entries = cache.entries()
        assert set(os.listdir(control(base) / "objects")) == cache.names() == {e.name for e in entries}
        assert cache.size == sum(e.size for e in entries)


def test_a_cache_in_a_lower_layer_deletes_evicts_and_collects(tmp_path):
    """The last release of a repository of the image deletes it, a budget evicts one, gc
    completes, and a deleted name can be used again: each failed with "Invalid cross-device
    link", the use that the budget made evict included (which the budget must never fail)."""
    lower = tmp_path / "image"
    lower.mkdir()
    words = source(tmp_path, "files", FILES)
    with Sleeper() as job:
        run("--use", "--keep", "-d", lower, "-n", "baked", "--pid", job.pid, *words)
        run("--unuse", "--keep", "-d", lower, "-n", "baked", "--pid", job.pid, *words)
        for name in ("unkept", "held"):
            run("--use", "-d", lower, "-n", name, "--pid", job.pid, *words)
        # What a store killed during the image's build leaves: a staging directory, unlocked.
        stage = control(lower) / "stage" / "abandoned"
        (stage / "data").mkdir(parents=True)
        (stage / "data" / "part").write_bytes(b"partial")
        (stage / "lock").touch()
        with mounted_overlay(lower, tmp_path / "container") as base:
            objects = control(base) / "objects"
            run("--unuse", "-d", base, "-n", "unkept", "--pid", job.pid, *words)
            assert "unkept" not in listed(base) and not (objects / "unkept").exists()
            run("gc", "-d", base)
            assert os.listdir(control(base) / "stage") == []
            size = listed(base)["baked"]
            run("--use", "--keep", "-d", base, "-n", "new", "--max-size", str(size * 5 // 2), "--pid", job.pid, *words)
            assert set(listed(base)) == {"held", "new"}, "the kept repository of the image is evicted"
            assert not (objects / "baked").exists()
            run("--use", "-d", base, "-n", "unkept", "--pid", job.pid, *words)
            for name in ("held", "new", "unkept"):
                check_tree(user_dir(base) / name, FILES)
            run("gc", "-d", base)
            assert_consistent(base)


def bake(lower: Path, name: str, words: list[str], job: Sleeper) -> None:
    """Make ``lower`` an image's layer that holds repository ``name``, kept and unused."""
    lower.mkdir()
    run("--use", "--keep", "-d", lower, "-n", name, "--pid", job.pid, *words)
    run("--unuse", "--keep", "-d", lower, "-n", name, "--pid", job.pid, *words)


@pytest.mark.parametrize("at", ["commit", "data"])
@pytest.mark.parametrize("then", ["gc", "use"])
def test_a_removal_in_place_killed_midway_leaves_no_entry_and_a_leftover_cleaned(tmp_path, then, at):
    """An eviction killed while it removes a repository of the image in place, its markers gone,
    before its transaction commits or while the data goes: the repository is no entry any more
    (a use populates it again, over what is left), and gc removes what is left, even when its
    row, rolled back, still says it is kept (and no budget asks for the room)."""
    lower, many, few = tmp_path / "image", source(tmp_path, "many", MANY_FILES), source(tmp_path, "few", FILES)
    with Sleeper() as job:
        bake(lower, "baked", many, job)
        if at == "commit":
            # What a kill between the markers and the commit leaves (no event of the audit hook
            # falls there to stop at): the markers gone, the data whole, the row still kept.
            for marker in (control(lower) / "objects" / "baked").glob("entry*.json"):
                marker.unlink()
        with mounted_overlay(lower, tmp_path / "container") as base:
            entry = control(base) / "objects" / "baked"
            if at == "data":
                evictor, paused, _ = started_paused(
                    tmp_path, "evictor", 'event == "os.rmdir" and str(args[0]).startswith("shard-")',
                    "--use", "--keep", "-d", str(base), "-n", "new", "--max-size", "1MB", "--pid", str(job.pid),
                    *few)
                try:
                    wait_for(lambda: paused.exists() or evictor.poll() is not None, what="the removal in place")
                    assert paused.exists(), evictor.communicate(timeout=10)[1]
                    assert not list(entry.glob("entry*.json")), "the markers go first"
                    assert (entry / "lock").exists() and len(os.listdir(entry / "data")) > 10
                    evictor.kill()
                    evictor.wait(10)
                finally:
                    stop_process(evictor)
            assert "baked" not in listed(base)
            if then == "gc":
                # With a budget that no longer needs the room, only gc's look at it removes it.
                run("--use", "-d", base, "-n", "other", "--max-size", "100MB", "--pid", job.pid, *few)
                assert entry.exists()
                run("gc", "-d", base)
                assert not entry.exists()
            else:
                run("--use", "-d", base, "-n", "baked", "--pid", job.pid, *many)
                check_tree(user_dir(base) / "baked", MANY_FILES)
                run("gc", "-d", base)
                assert "baked" in listed(base)
            assert_consistent(base)


@pytest.mark.parametrize("planted", ["cache.info", "stage.lock"])
def test_gc_frees_a_name_the_image_holds_as_a_directory(tmp_path, planted):
    """A directory of the image at a name the cache needs for a file (its marker, ``stage.lock``),
    which overlayfs renames nowhere, into the trash or aside: a repairing gc removes it in place
    and makes the file again (the marker's repair failed with "Invalid cross-device link", and gc
    left the cache damaged); the repository of the image stays usable."""
    lower, words = tmp_path / "image", source(tmp_path, "files", FILES)
    with Sleeper() as job:
        bake(lower, "baked", words, job)
        (control(lower) / planted).unlink()
        (control(lower) / planted / "inside").mkdir(parents=True)
        with mounted_overlay(lower, tmp_path / "container") as base:
            collected = sc("gc", "-d", str(base))  # (a base gc cannot repair is skipped, status 0)
            assert collected.returncode == 0 and collected.stderr == "", collected.stderr
            assert (control(base) / planted).is_file()
            assert [name for name in os.listdir(control(base)) if name.startswith(".aside-")] == []
            run("--use", "-d", base, "-n", "baked", "--pid", job.pid, *words)
            check_tree(user_dir(base) / "baked", FILES)
            assert_consistent(base)


# Two members of a group cache, by uid (no user needs to exist to run a process as one).
ALICE, BOB, GROUP = 41001, 41002, 41500


def as_member(python: tuple[str, dict[str, str]], uid: int, *args: str | Path | int) -> str:
    """The output of ``sc ARGS`` run as ``uid``, a member of GROUP, under umask 077; it must succeed."""
    interpreter, env = python
    done = subprocess.run([interpreter, "-m", "sharedcache", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env, user=uid, group=GROUP, extra_groups=[GROUP], umask=0o077)
    assert done.returncode == 0, done.stderr
    return done.stdout


def listed_to(python: tuple[str, dict[str, str]], uid: int, base: Path) -> dict[str, int]:
    """The repositories of GROUP's cache in ``base`` that ``sc list`` shows ``uid``, with their sizes."""
    return {r["name"]: r["size"] for r in json.loads(as_member(python, uid, "list", "--json", "--group", GROUP,
                                                               "-d", base))}


def group_image(reachable_tmp: Path) -> tuple[Path, list[str]]:
    """A base in an image's layer that every member may write (as /tmp), and the words of a use."""
    lower = reachable_tmp / "image"
    (lower / "base").mkdir(parents=True)
    (lower / "base").chmod(0o1777)
    return lower, source(reachable_tmp, "files", FILES)


def test_another_members_repository_in_a_lower_layer_is_passed_over_not_failed_on(reachable_tmp):
    """In a group cache of the image, a member may not remove another's files in their sticky
    directory, which a deletion in place must do: gc and the eviction a budget makes pass over
    such a repository as over one in use, and the member's own work goes on (it failed with
    "Operation not permitted: 'entry.json'")."""
    python = interpreter_for(ALICE, GROUP)
    lower, words = group_image(reachable_tmp)
    shared = ["--group", GROUP]
    with Sleeper() as alice_job:
        as_member(python, ALICE, "--use", "--keep", *shared, "-d", lower / "base", "-n", "kept", "--pid",
                  alice_job.pid, *words)
        as_member(python, ALICE, "--use", *shared, "-d", lower / "base", "-n", "unused", "--pid", alice_job.pid,
                  *words)
    with mounted_overlay(lower, reachable_tmp / "container") as merged, Sleeper() as bob_job:
        base = merged / "base"
        as_member(python, BOB, "gc", *shared, "-d", base)  # alice's "unused" has no live use left
        size = listed_to(python, BOB, base)["kept"]
        as_member(python, BOB, "--use", *shared, "-d", base, "-n", "new", "--max-size", size * 3 // 2, "--pid",
                  bob_job.pid, *words)
        assert set(listed_to(python, BOB, base)) == {"kept", "unused", "new"}
        check_tree(base / f".shared-cache-{BOB}" / "new", FILES)


def test_a_removal_in_place_holds_the_index_only_while_its_markers_go(tmp_path):
    """The index's write lock is held while the markers of a repository of the image go, not
    while its data does: another job's release, which needs that lock, is done at once, though
    the eviction is stopped half-way through the data (it waited for as long as the removal
    took: a tree of a million files took longer than any command waits)."""
    lower, many, few = tmp_path / "image", source(tmp_path, "many", MANY_FILES), source(tmp_path, "few", FILES)
    with Sleeper() as job:
        bake(lower, "baked", many, job)
        with mounted_overlay(lower, tmp_path / "container") as base:
            entry = control(base) / "objects" / "baked"
            run("--use", "-d", base, "-n", "other", "--pid", job.pid, *few)
            evictor, paused, go = started_paused(
                tmp_path, "evictor", 'event == "os.rmdir" and str(args[0]).startswith("shard-")',
                "--use", "--keep", "-d", str(base), "-n", "new", "--max-size", "1MB", "--pid", str(job.pid), *few)
            try:
                wait_for(lambda: paused.exists() or evictor.poll() is not None, what="the removal in place")
                assert paused.exists(), evictor.communicate(timeout=10)[1]
                assert len(os.listdir(entry / "data")) > 10, "stopped half-way through the data"
                released = sc("--unuse", "--timeout", "5", "-d", str(base), "-n", "other", "--pid", str(job.pid), *few)
                assert released.returncode == 0, released.stderr
                assert evictor.poll() is None
                go.touch()
                _, err = evictor.communicate(timeout=60)
                assert evictor.returncode == 0, err
            finally:
                stop_process(evictor)
            assert not entry.exists()
            assert set(listed(base)) == {"new"}
            check_tree(user_dir(base) / "new", FILES)
            assert_consistent(base)


def test_a_release_that_may_not_remove_another_members_repository_keeps_the_cache_within_its_budget(reachable_tmp):
    """In a group cache of the image, the last release of another member's repository, which
    this user may not remove, leaves it counted; the eviction down to the budget that comes
    with the release counts it too (it evicted as if the repository were gone, and the cache
    stayed over its budget until the next eviction)."""
    python = interpreter_for(ALICE, GROUP)
    lower, words = group_image(reachable_tmp)
    shared = ["--group", GROUP]
    with Sleeper() as alice_job:
        as_member(python, ALICE, "--use", *shared, "-d", lower / "base", "-n", "hers", "--pid", alice_job.pid, *words)
    with mounted_overlay(lower, reachable_tmp / "container") as merged, Sleeper() as bob_job:
        base = merged / "base"
        mine = ["-d", base, "-n", "mine", "--pid", bob_job.pid, *words]
        as_member(python, BOB, "--use", "--keep", *shared, *mine)
        as_member(python, BOB, "--unuse", "--keep", *shared, *mine)
        hers = ["-d", base, "-n", "hers", "--pid", bob_job.pid, *words]
        as_member(python, BOB, "--use", *shared, *hers)
        sizes = listed_to(python, BOB, base)
        budget = sizes["hers"] * 3 // 2  # room for one of the two
        as_member(python, BOB, "--unuse", *shared, *hers, "--max-size", budget)
        assert set(listed_to(python, BOB, base)) == {"hers"}, "hers stays, and mine goes for the budget"
        interpreter, env = python
        accounted = subprocess.run(
            [interpreter, "-c", "import sys; from sharedcache import FsCache; "
             "print(FsCache(sys.argv[1], group=int(sys.argv[2])).size)", base / f".shared-cache-g{GROUP}", str(GROUP)],
            capture_output=True, text=True, timeout=60, env=env, user=BOB, group=GROUP, extra_groups=[GROUP])
        assert accounted.returncode == 0, accounted.stderr
        assert int(accounted.stdout) == sizes["hers"] <= budget
