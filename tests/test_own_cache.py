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


def deep_tree(top: Path, depth: int = DEPTH) -> None:
    """``depth`` nested directories below ``top``, a file at the bottom (made relative to
    descriptors: the whole path is longer than a path may be)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_a_deep_tree_is_committed_measured_and_removed(root: Path) -> None:
    cache = FsCache(root)
    with cache.store("deep") as data:
        deep_tree(data)
    assert cache.info("deep").size >= DEPTH * 4096 // 2
    cache.remove("deep")
    assert "deep" not in cache and list((root / "trash").iterdir()) == []
    # And the lower-level walks, on a sealed (read-only) tree deeper than the open descriptors kept.
    top = root / "loose"
    top.mkdir()
    deep_tree(top)
    assert disk_usage(top, seal=0o555) > 0
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
    end = time.monotonic() + 3
    rounds = 0
    while time.monotonic() < end:
        rounds += 1
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
    assert rounds > 5
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
