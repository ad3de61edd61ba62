"""Trees of any shape in your own cache: any tree that can be committed can be removed, walks
never follow a link out of the tree, and what goes wrong in your own cache is repaired by gc."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from scutil import Sleeper, check_tree, control, make_tarball, sample_files, sc, user_dir
from sharedcache import FsCache
from sharedcache.engine.fsutil import disk_usage, remove_tree

FILES = sample_files(n=3, size=4_000)
DEPTH = 1_200


#: The bytes of the file at the bottom of a deep tree: what shows that a walk reached it, on any
#: file system (XFS, btrfs and tmpfs give a small directory no blocks at all).
BOTTOM = 256 * 1024


def deep_tree(top: Path, depth: int = DEPTH) -> None:
    """``depth`` nested directories below ``top``, a file of :data:`BOTTOM` bytes at the bottom
    (made relative to descriptors: the whole path is longer than a path may be)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        bottom = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        try:
            os.write(bottom, b"x" * BOTTOM)
        finally:
            os.close(bottom)
    finally:
        os.close(fd)


def test_a_deep_tree_is_committed_measured_and_removed(root: Path) -> None:
    cache = FsCache(root)
    with cache.store("deep") as data:
        deep_tree(data)
    assert cache.info("deep").size >= BOTTOM
    cache.remove("deep")
    assert "deep" not in cache and list((root / "trash").iterdir()) == []
    # And the lower-level walks, on a sealed (read-only) tree deeper than the open descriptors kept.
    top = root / "loose"
    top.mkdir()
    deep_tree(top)
    assert disk_usage(top, seal=0o555) >= BOTTOM
    assert stat.S_IMODE(top.stat().st_mode) == 0o555
    remove_tree(top)
    assert not top.exists()


def test_sealing_and_removal_never_follow_a_symlink_out_of_the_tree(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "key").write_text("secret")
    (outside / "key").chmod(0o600)
    cache = FsCache(root)
    with cache.store("links") as data:
        (data / "to-file").symlink_to(outside / "key")
        (data / "to-dir").symlink_to(outside)
        (data / "real").mkdir()
        (data / "real" / "f").write_text("x")
    assert stat.S_IMODE((outside / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) != 0o555
    cache.remove("links")
    assert (outside / "key").read_text() == "secret"


def test_a_subdirectory_swapped_for_a_link_while_sealing_is_never_chmodded_through(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(20):
        (outside / f"f{i}").write_text("mine")
        (outside / f"f{i}").chmod(0o600)
    outside.chmod(0o700)
    cache = FsCache(root, durable=False)
    for rounds in range(1, 301):  # (about as many as 3 s allow on an idle machine)
        stop = threading.Event()
        try:
            with cache.store(f"e{rounds}") as data:
                for i in range(20):
                    (data / f"a{i}").mkdir()
                    (data / f"a{i}" / "f").write_text("x")
                sub = data / "sub"
                sub.mkdir()

                def swap(sub: Path = sub, stop: threading.Event = stop) -> None:  # a hostile writer of the tree
                    aside = sub.with_name("aside")
                    while not stop.is_set():
                        try:
                            sub.rename(aside)
                            sub.symlink_to(outside)
                            sub.unlink()
                            aside.rename(sub)
                        except OSError:
                            pass

                swapper = threading.Thread(target=swap)
                swapper.start()
                time.sleep(0.001)
        except OSError:
            pass  # the tree changed under the walk: the commit may fail, never reach outside
        finally:
            stop.set()
        swapper.join(10)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
    for i in range(20):
        assert stat.S_IMODE((outside / f"f{i}").stat().st_mode) == 0o600


@pytest.fixture
def words(tmp_path: Path) -> list[str]:
    tarball = tmp_path / "data.tar.gz"
    return [f"file:{tarball}", f"md5:{make_tarball(tarball, FILES)}", "tar"]


@pytest.mark.parametrize("damage", ["stage.lock", "trash", "cache.info"])
def test_gc_heals_your_own_cache(tmp_path: Path, words: list[str], damage: str) -> None:
    base = tmp_path / "base"
    base.mkdir()
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words]
        assert sc("--use", *args).returncode == 0
        assert sc("--unuse", *args).returncode == 0
        target = control(base) / damage
        if target.is_dir():
            os.rmdir(target)
            target.write_text("not a directory")
        else:
            target.unlink()
            if damage == "cache.info":
                target.write_bytes(b"\x00\xffgarbage" * 5)
            else:
                target.mkdir()
        assert sc("gc", "-d", str(base)).returncode == 0
        fixed = sc("--use", *args)
        assert fixed.returncode == 0, fixed.stderr
        check_tree(Path(fixed.stdout.strip()), FILES)
        assert sc("--unuse", *args).returncode == 0


def test_a_cache_of_a_newer_format_is_refused_as_such_and_left_as_it_is(tmp_path: Path, words: list[str]) -> None:
    # A later version's cache is healthy: it was called "not a shared-cache cache", which
    # invites its removal.  gc and list skip it as any base they cannot use, saying why.
    base = tmp_path / "base"
    base.mkdir()
    args = ["-n", "repo", "-d", str(base), *words]
    assert sc("--use", "--keep", *args).returncode == 0
    assert sc("--unuse", *args).returncode == 0
    info = control(base) / "cache.info"
    info.write_bytes(b"shared-cache fscache 4\n")
    said = f"cache {control(base)} was made by a newer version of shared-cache (format 4); this version cannot use it"
    used = sc("--use", *args)
    assert used.returncode != 0 and said in used.stderr and "not a shared-cache cache" not in used.stderr, used.stderr
    for command in ("gc", "list"):  # (asked to look there, and unable to: exit status 1)
        skipped = sc(command, "-d", str(base))
        assert skipped.returncode == 1 and skipped.stderr == f"sc: skipping {base}: {said}\n", skipped.stderr
    assert info.read_bytes() == b"shared-cache fscache 4\n"
    assert (control(base) / "objects" / "repo" / "entry.json").exists()


def test_gc_skips_odd_names_and_never_touches_foreign_objects(tmp_path: Path, words: list[str]) -> None:
    base = tmp_path / "base"
    base.mkdir()
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0
    bbase = os.fsencode(base)
    foreign = [b"x" * 255, b"odd-\xff\xfe-bytes", b"repo"]
    for name in foreign:
        os.symlink(b"/etc/passwd", os.path.join(bbase, name))
    odd = os.path.join(os.fsencode(user_dir(base)), b"odd-\xff")
    os.symlink(b".cache/objects/odd-\xff/data", odd)
    long = user_dir(base) / ("y" * 250)
    long.write_text("")
    result = sc("gc", "-d", str(base))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("sc: gc: skipping") for line in lines), lines
    for name in foreign:
        assert os.readlink(os.path.join(bbase, name)) == b"/etc/passwd"
    assert os.path.lexists(odd) and long.exists()


OTHER_MACHINE = "0123456789abcdef0123456789abcdef"


def kept_and_unused(tmp_path: Path, words: list[str]) -> tuple[Path, Path]:
    """A base holding the repository "repo", kept and used by nobody; and its leases directory."""
    base = tmp_path / "base"
    base.mkdir()
    args = ["-n", "repo", "-d", str(base), "--keep", *words]
    with Sleeper() as owner:
        assert sc("--use", *args, "--pid", str(owner.pid)).returncode == 0
        assert sc("--unuse", *args, "--pid", str(owner.pid)).returncode == 0
    return base, control(base) / "objects" / "repo" / "leases"


def test_list_names_the_host_of_another_host_s_use_and_gc_forgets_it_by_that_id(
    tmp_path: Path, words: list[str]
) -> None:
    # Another host sharing the base holds a use: its pid means nothing here, so `sc list` must
    # not show it as if it were a process of this host, and must show the id that
    # `sc gc --forget-host` takes.
    import json

    base, leases = kept_and_unused(tmp_path, words)
    (leases / f"11111111-2222-3333-4444-555555555555:4242:999:4026531836:{OTHER_MACHINE}.x1").touch()
    listed = sc("list", "-d", str(base))
    assert listed.returncode == 0, listed.stderr
    row = listed.stdout.splitlines()[1]
    assert row.split()[-1] == f"4242@{OTHER_MACHINE}", row
    rows = json.loads(sc("list", "--json", "-d", str(base)).stdout)
    assert rows[0]["users"] == [4242] and rows[0]["owners"] == [f"4242@{OTHER_MACHINE}"]
    # What `sc list` shows whole is refused with a line saying what to pass; a typo is too.
    for bad in (f"4242@{OTHER_MACHINE}", "0123 4567", ","):
        refused = sc("gc", "-d", str(base), "--forget-host", bad)
        assert refused.returncode == 2 and refused.stderr.startswith("sc: error: --forget-host"), refused
    assert sc("list", "-d", str(base)).stdout.splitlines()[1].split()[-1] == f"4242@{OTHER_MACHINE}"
    assert sc("gc", "-d", str(base), "--forget-host", OTHER_MACHINE).returncode == 0
    assert sc("list", "-d", str(base)).stdout.splitlines()[1].split()[-1] == "-"


def test_list_escapes_a_planted_lease_s_host_and_names_no_user_for_a_record_without_pid(
    tmp_path: Path, words: list[str]
) -> None:
    import fcntl
    import json

    base, leases = kept_and_unused(tmp_path, words)
    (leases / "11111111-2222:77:1:4026531836:\x1b[31mred.x1").touch()
    populate = control(base) / "populate"
    (populate / "ghost.json").write_text('{"identity": "x", "started": 1.5}')
    with open(populate / "ghost.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        listed = sc("list", "-d", str(base))
        rows = {row["name"]: row for row in json.loads(sc("list", "--json", "-d", str(base)).stdout)}
    assert listed.returncode == 0 and "\x1b" not in listed.stdout, listed.stdout
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert lines["ghost"].endswith(" a lock"), lines["ghost"]
    assert rows["ghost"]["users"] == [] and rows["ghost"]["owners"] == []
    assert set(rows["ghost"]) == set(rows["repo"])


def test_list_goes_past_a_base_whose_index_is_damaged(tmp_path: Path, words: list[str]) -> None:
    # One candidate's index garbled (a crash of a network file system, a planted file) must not
    # hide the repositories of the others: the base is skipped with the line that says to run
    # gc, as uses and gc go past it.  Alone, it is the error.
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    with Sleeper() as owner:
        for base in (good, bad):
            args = ["-n", f"in-{base.name}", "-d", str(base), "--pid", str(owner.pid), *words]
            assert sc("--use", *args).returncode == 0
        (control(bad) / "index.sqlite").write_bytes(b"garbage" * 1000)
        listed = sc("list", "-d", f"{bad}:{good}")  # (the other listed, and a base -d names skipped: exit 1)
        assert listed.returncode == 1, listed.stderr
        assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["in-good"]
        assert listed.stderr.startswith(f"sc: skipping {bad}: the index of cache") and "run gc" in listed.stderr
        alone = sc("list", "-d", str(bad))
        assert alone.returncode == 1 and alone.stderr.startswith("sc: error: the index of cache"), alone
        assert sc("gc", "-d", f"{bad}:{good}").returncode == 0
        assert len(sc("list", "-d", f"{bad}:{good}").stdout.splitlines()) == 3


def test_gc_reports_each_repair_that_heals_the_cache(tmp_path: Path, words: list[str]) -> None:
    # A trash or stage replaced by the repairing open, and a stage.lock put out of the way, were
    # left out of gc's report ("nothing to do"), which is what a user reads to know what gc did.
    base = tmp_path / "base"
    base.mkdir()
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0
    cache = control(base)
    for sub in ("trash", "stage"):
        (cache / sub).rmdir()
        (cache / sub).write_bytes(b"planted")
    (cache / "stage.lock").unlink()
    (cache / "stage.lock").mkdir()
    gc = sc("gc", "-d", str(base))
    assert gc.returncode == 0, gc.stderr
    assert "subdirectories repaired: 2" in gc.stdout and "put away: 1" in gc.stdout, gc.stdout
    assert (cache / "trash").is_dir() and (cache / "stage").is_dir() and (cache / "stage.lock").is_file()
    assert sc("gc", "-d", str(base)).stdout.endswith("nothing to do\n")
