"""The seal: an unpacker seals and measures the tree it makes, and the commit takes that count where
the file system counts a file's blocks, when its last write returns, as it will once flushed
(tmpfs, ext4), and walks the tree to measure it everywhere else (here ext2).

Every count is checked against the engine's own walk (``disk_usage``) of the same tree, once
flushed, on file systems that the tests make and mount (which needs root and, but for tmpfs, a
loop device: elsewhere they are skipped, saying why).
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sharedcache
from scutil import Sleeper, control, mounted_image, mounted_tmpfs, sc, writers_past
from sharedcache.engine.fscache import FsCache
from sharedcache.engine.fsutil import (
    Seal,
    counts_blocks_at_write,
    disk_usage,
    flush_file_system,
    remove_tree,
)
from sharedcache.errors import LoaderError
from sharedcache.loaders import writer
from sharedcache.loaders.pipeline import populate
from sharedcache.loaders.registry import parse_recipe

pytestmark = pytest.mark.timeout(300)

ONE_PROCESS = 10**9
_LONG = "./" * 80  # a symlink target past 128 bytes takes a block of its own on tmpfs


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path_factory.mktemp("seal") / "tmpfs", "512m") as mount:
        yield mount


@pytest.fixture(scope="module")
def tmpfs_huge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmpfs whose files take huge pages: a small file holds 2 MiB, not its size in pages."""
    with mounted_tmpfs(tmp_path_factory.mktemp("seal") / "tmpfs-huge", "512m", huge="always") as mount:
        (mount / "small").write_bytes(os.urandom(4600))
        held = os.lstat(mount / "small").st_blocks * 512
        (mount / "small").unlink()
        if held <= 8192:  # a kernel without transparent huge pages, or one that denies them to tmpfs
            pytest.skip(f"a small file on a huge=always tmpfs holds {held} bytes here, not a huge page")
        yield mount


@pytest.fixture(scope="module")
def ext4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mounted_image(tmp_path_factory.mktemp("seal") / "ext4", "ext4", 512) as mount:
        yield mount


@pytest.fixture(scope="module")
def ext4_inline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ext4 that keeps the data of small files in their inodes: they have fewer blocks than their
    size, for good."""
    with mounted_image(tmp_path_factory.mktemp("seal") / "ext4-inline", "ext4", 512, "-O", "inline_data") as mount:
        yield mount


@pytest.fixture(scope="module")
def ext2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file system whose counts the commit does not take."""
    with mounted_image(tmp_path_factory.mktemp("seal") / "ext2", "ext2", 64) as mount:
        yield mount


#: The file systems whose counts the commit takes.
COUNTED = ("tmpfs", "ext4")
#: The fixtures of those file systems.
MEASURED = (*COUNTED, "ext4_inline")


def engines_seal(path: Path) -> Seal:
    """The seal the engine gives a filler of a tree at ``path``."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return Seal.for_file_system(descriptor)
    finally:
        os.close(descriptor)


def flushed_usage(path: Path) -> int:
    """What the engine's walk finds in the tree at ``path`` once its file system is flushed."""
    subprocess.run(["sync", "-f", str(path)], check=True)
    return disk_usage(path)


def file_system_type(path: Path) -> str:
    """The type of the file system mounted where ``path`` is, as util-linux's ``findmnt`` names it."""
    return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def sealed(root: Path) -> list[str]:
    """What below ``root`` is not sealed: a file writable by anyone, or a directory not 0555."""
    wrong = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            mode = os.lstat(path).st_mode
            allowed = {stat.S_IFDIR: (0o555,), stat.S_IFREG: (0o444, 0o555)}.get(stat.S_IFMT(mode))
            if allowed is not None and stat.S_IMODE(mode) not in allowed:
                wrong.append(f"{path}: {oct(mode)}")
    return wrong


@pytest.mark.parametrize("kind", ["tmpfs", "tmpfs_huge", "ext4", "ext2", "tmp_path"])
def test_the_file_systems_that_count_blocks_at_write(kind: str, request: pytest.FixtureRequest) -> None:
    where = request.getfixturevalue(kind)
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert counts_blocks_at_write(fd) == (file_system_type(where) in COUNTED and kind != "tmpfs_huge"), where
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["tmpfs", "tmpfs_huge", "ext4", "ext2"])
def test_only_a_tmpfs_without_huge_pages_counts_a_file_by_its_size(kind: str, request: pytest.FixtureRequest) -> None:
    where = request.getfixturevalue(kind)
    assert engines_seal(where).by_size is (kind == "tmpfs")
    cache = FsCache(str(where / f"cache-{os.getpid()}"))
    try:
        assert cache.seal().by_size is (kind == "tmpfs")
    finally:
        cache.close()
        remove_tree(where / f"cache-{os.getpid()}")


@pytest.mark.parametrize(("policy", "huge"), [
    ("always within_size advise [never] deny force\n", False),
    ("always within_size advise never deny [force]\n", True),  # huge pages for every tmpfs mount
    (None, False),  # a kernel without transparent huge pages
])
def test_the_kernels_policy_of_huge_pages_for_tmpfs_is_heeded(tmpfs: Path, tmp_path: Path, policy: str | None,
                                                              huge: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from sharedcache.engine import fsutil

    written = tmp_path / "shmem_enabled"  # the kernel's file, in its words, where ours is read from
    if policy is not None:
        written.write_text(policy)
    monkeypatch.setattr(fsutil, "_SHMEM_HUGE_PAGES", str(written))
    fd = os.open(tmpfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert Seal.for_file_system(fd).by_size is not huge
        assert counts_blocks_at_write(fd) is not huge
    finally:
        os.close(fd)


@pytest.mark.parametrize("serial_members", [ONE_PROCESS, 0], ids=["one process", "writer process"])
@pytest.mark.parametrize("empty", [1, 200], ids=["after an empty file", "after 200 empty files"])
def test_a_seal_wrong_about_counting_by_size_counts_nothing(tmpfs_huge: Path, serial_members: int,
                                                            empty: int) -> None:
    """A seal that says files may be counted by their size, on a tmpfs where they take huge pages:
    the unpacker reads the blocks of a sample of its files, finds one that holds more, and counts
    nothing, so that the commit walks the tree.  Empty files hold what their size says anywhere:
    the first file that holds data is found at the first sample that comes after them."""
    drawn = [(f"empty/{number}", "file", 0, 0o644) for number in range(empty)]
    drawn += [(f"full/{number}", "file", 4600, 0o644) for number in range(100)]
    scratch = tmpfs_huge / f"lying-{os.getpid()}"
    scratch.mkdir()
    try:
        unpacked = unpack_sealed(archive(drawn), scratch, serial_members, measure=True, by_size=True)
        assert unpacked is not None
        dest, seal = unpacked
        assert seal.allocated is None
        assert sealed(dest) == []
        assert len(os.listdir(dest / "full")) == 100
    finally:
        remove_tree(scratch)


@pytest.mark.parametrize("kind", ["tmpfs", "ext4", "ext2"])
def test_a_commit_takes_the_fillers_count_where_the_file_system_counts_at_write(
        kind: str, request: pytest.FixtureRequest) -> None:
    counted = kind in COUNTED
    root = request.getfixturevalue(kind) / f"cache-{os.getpid()}"
    cache = FsCache(str(root))
    try:
        seal = cache.seal()
        assert seal.measure is counted
        with cache.store("entry", seal=seal) as data:
            (data / "file").write_bytes(os.urandom(10_000))
            (data / "file").chmod(0o444)
            (data / "dir").mkdir(mode=0o555)
            seal.allocated = 1234 * 4096  # a count no walk of this tree finds
        data = root / "objects" / "entry" / "data"
        recorded = cache.info("entry").size
        if counted:
            assert recorded == os.lstat(data).st_blocks * 512 + 1234 * 4096
        else:
            assert recorded == disk_usage(data) < 1234 * 4096
        assert stat.S_IMODE(os.lstat(data).st_mode) == 0o555
        assert sealed(data) == []
    finally:
        cache.close()
        remove_tree(root)


# --- the unpacker's count -------------------------------------------------------------------------

_LEAVES = ("a", "b", "d/a", "d/b", "d/e/a")
_DIRECTORIES = ("d", "d/e")


@st.composite
def members(draw: st.DrawFn) -> list[tuple[str, str, object, int]]:
    """Members of a tar archive, as (name, kind, content or link target, mode): few names, so that
    later members replace earlier ones, and hard links, long and short symlinks among them."""
    drawn: list[tuple[str, str, object, int]] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink"]))
        name = draw(st.sampled_from(_DIRECTORIES if kind == "dir" else _LEAVES))
        mode = draw(st.sampled_from([0o644, 0o755, 0o600, 0o777, 0o4755]))
        content: object = None
        if kind == "file":
            content = draw(st.sampled_from([0, 1, 4095, 4097, 20_000]))
        elif kind == "symlink":
            content = "../" * name.count("/") + draw(st.sampled_from(["", _LONG])) + draw(st.sampled_from(_LEAVES))
        elif kind == "hardlink":
            files = [earlier for earlier, earlier_kind, _, _ in drawn if earlier_kind == "file"]
            if not files:
                continue
            content = draw(st.sampled_from(files))
        drawn.append((name, kind, content, mode))
    return drawn


def archive(drawn: list[tuple[str, str, object, int]]) -> bytes:
    buffer = io.BytesIO()
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content, mode in drawn:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = types[kind], mode, 1_700_000_000
            if kind == "file":
                assert isinstance(content, int)
                info.size = content
                tar.addfile(info, io.BytesIO(os.urandom(content)))
            else:
                if isinstance(content, str):
                    info.linkname = content
                tar.addfile(info)
    return buffer.getvalue()


def unpack_sealed(data: bytes, scratch: Path, serial_members: int, *, measure: bool,
                  by_size: bool | None = None) -> tuple[Path, Seal] | None:
    """Unpack ``data`` into ``scratch/dest`` with a seal that counts files by their size where the
    engine's would (unless ``by_size`` says); None if the archive is refused."""
    for sub in ("dest", "work"):
        (scratch / sub).mkdir()
    (scratch / "input.tar").write_bytes(data)
    seal = Seal(measure=measure, by_size=by_size if by_size is not None else engines_seal(scratch).by_size)
    try:
        with writers_past(serial_members):
            populate(parse_recipe([f"file:{scratch / 'input.tar'}", "tar"]), scratch / "dest", work=scratch / "work",
                     seal=seal)
    except LoaderError:
        return None
    return scratch / "dest", seal


@pytest.mark.parametrize("kind", MEASURED)
@pytest.mark.parametrize("serial_members", [ONE_PROCESS, 0, 2], ids=["one process", "writer process", "midway"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=members())
def test_the_unpackers_count_is_what_a_walk_finds(drawn: list[tuple[str, str, object, int]], serial_members: int,
                                                  kind: str, request: pytest.FixtureRequest) -> None:
    scratch = request.getfixturevalue(kind) / f"unpack-{os.getpid()}"
    scratch.mkdir()
    try:
        unpacked = unpack_sealed(archive(drawn), scratch, serial_members, measure=True)
        event("refused" if unpacked is None else "unpacked")
        if unpacked is None:
            return  # refused (a directory replaced, a link to nothing): nothing to count
        dest, seal = unpacked
        assert seal.allocated is not None
        assert seal.allocated + os.lstat(dest).st_blocks * 512 == flushed_usage(dest)
        assert sealed(dest) == []
    finally:
        remove_tree(scratch)


@pytest.mark.parametrize("kind", MEASURED)
@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's, for the member written twice on purpose
def test_a_zips_count_is_what_a_walk_finds(kind: str, request: pytest.FixtureRequest) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("top/", b"")
        archive.writestr("top/a.txt", os.urandom(5000))
        archive.writestr("top/deeper/b.bin", os.urandom(70_000))
        link = zipfile.ZipInfo("top/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16  # as Info-ZIP stores a symlink
        archive.writestr(link, _LONG + "a.txt")
        archive.writestr("top/a.txt", os.urandom(100))  # a second member of the same name wins
    scratch = request.getfixturevalue(kind) / f"zip-{os.getpid()}"
    scratch.mkdir()
    try:
        for sub in ("dest", "work"):
            (scratch / sub).mkdir()
        (scratch / "input.zip").write_bytes(buffer.getvalue())
        seal = Seal(measure=True)
        populate(parse_recipe([f"file:{scratch / 'input.zip'}", "zip"]), scratch / "dest", work=scratch / "work",
                 seal=seal)
        dest = scratch / "dest"
        assert (dest / "top" / "link").is_symlink() and (dest / "top" / "a.txt").stat().st_size == 100
        assert seal.allocated is not None
        assert seal.allocated + os.lstat(dest).st_blocks * 512 == flushed_usage(dest)
        assert sealed(dest) == []
    finally:
        remove_tree(scratch)


def test_a_seal_without_measure_seals_and_counts_nothing(tmpfs: Path) -> None:
    drawn = [("d/e/a", "file", 4097, 0o777), ("d", "dir", None, 0o700), ("b", "hardlink", "d/e/a", 0o644)]
    scratch = tmpfs / f"unmeasured-{os.getpid()}"
    scratch.mkdir()
    try:
        unpacked = unpack_sealed(archive(drawn), scratch, ONE_PROCESS, measure=False)
        assert unpacked is not None
        dest, seal = unpacked
        assert seal.allocated is None
        assert sealed(dest) == []
        assert os.lstat(dest / "d").st_mtime == 1_700_000_000  # the archive's time survives the seal
    finally:
        remove_tree(scratch)


@pytest.mark.parametrize("kind", [*COUNTED, "tmpfs_huge"])
def test_a_population_records_what_its_tree_holds(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The whole chain, with the writer process (past its first members): what the cache records
    for the entry is what a walk of it finds.  On a tmpfs whose files take huge pages, a file
    holds 2 MiB when written, and the full file system makes the kernel split the pages of
    files past their ends, meanwhile and after: there the commit walks the tree, and what it
    records is at least what a walk finds later, and near it (counted as the files were
    written, it was about six times that)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for number in range(writer.SERIAL_MEMBERS + 1000):
            content = os.urandom(number % 9000)
            info = tarfile.TarInfo(f"tree/{number % 7}/{number}.bin")
            info.size, info.mode = len(content), 0o755 if number % 3 else 0o640
            tar.addfile(info, io.BytesIO(content))
        for name, size in (("tree/again", 50_000), ("tree/again", 10)):  # replaced: only the second counts
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
        link = tarfile.TarInfo("tree/link")
        link.type, link.linkname = tarfile.LNKTYPE, "tree/0/7.bin"
        tar.addfile(link)
    source = tmp_path / "tree.tar.gz"
    source.write_bytes(buffer.getvalue())
    base = request.getfixturevalue(kind) / f"base-{os.getpid()}"
    base.mkdir()
    try:
        with Sleeper() as owner:
            words = ["-d", str(base), "-n", "tree", "--pid", str(owner.pid), f"file:{source}", "tar"]
            used = sc("--use", *words)
            assert used.returncode == 0, used.stderr
            cache = FsCache(str(control(base)))
            try:
                (entry,) = cache.entries()
                data = control(base) / "objects" / entry.name / "data"
                if kind == "tmpfs_huge":
                    held = flushed_usage(data)
                    assert held <= entry.size < 1.2 * held
                else:
                    assert entry.size == flushed_usage(data)
                assert sealed(data) == []
            finally:
                cache.close()
            assert sc("--unuse", *words).returncode == 0
    finally:
        remove_tree(base)


@pytest.mark.parametrize("kind", ["tmpfs", "tmpfs_huge", "ext4", "ext2"])
def test_a_population_walks_its_tree_only_where_the_count_is_not_taken(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain from the population to the commit: on tmpfs (without huge pages) and ext4 the
    unpacker's count is what gets recorded, and the commit's walk (``disk_usage`` with a seal)
    never runs; elsewhere it runs."""
    from sharedcache.engine import fsutil

    walks: list[object] = []

    def watched(path: object, *, seal: int | None = None, dir_fd: int | None = None) -> int:
        if seal is not None:
            walks.append(path)
        return disk_usage(path, seal=seal, dir_fd=dir_fd)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "disk_usage", watched)
    source = tmp_path / "tree.tar"
    with tarfile.open(source, "w") as tar:
        for number in range(20):
            info = tarfile.TarInfo(f"tree/{number % 3}/{number}.bin")
            info.size = 1000 * number
            tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    base = request.getfixturevalue(kind) / f"walked-{os.getpid()}"
    base.mkdir()
    try:
        with sharedcache.use(f"file:{source}", "tar", name="tree", directories=[base]) as path:
            assert sealed(path) == []
            cache = FsCache(str(control(base)))
            try:
                assert cache.info("tree").size == flushed_usage(path.resolve())
            finally:
                cache.close()
        assert walks == ([] if kind in COUNTED else ["data"])
    finally:
        remove_tree(base)


def test_a_count_taken_while_ext4_writes_back_is_what_a_walk_finds(ext4: Path) -> None:
    """Flushes run without a pause beside the unpack, in both of its processes, so that the counts
    are read while ext4 writes the files back: the count must still be what the flushed tree
    holds.  (Write-back lowers a file's reserved blocks a few instructions before it adds the
    allocated ones; an ``fstat`` in between reads the file short.  No test can land in that
    window at will: the unpacker's floor of a file's size in whole blocks is what covers it.)"""
    drawn = [(f"d{number % 5}/{number}", "file", (number * 7919) % 60_000, 0o644) for number in range(6000)]
    scratch = ext4 / f"racing-{os.getpid()}"
    scratch.mkdir()
    flushing = True
    image = os.open(ext4, os.O_RDONLY | os.O_DIRECTORY)

    def flush() -> None:
        while flushing:
            flush_file_system(image)

    flusher = threading.Thread(target=flush)
    flusher.start()
    try:
        unpacked = unpack_sealed(archive(drawn), scratch, 3000, measure=True)
    finally:
        flushing = False
        flusher.join(timeout=60)
        os.close(image)
    try:
        assert unpacked is not None
        dest, seal = unpacked
        assert seal.allocated is not None
        assert seal.allocated + os.lstat(dest).st_blocks * 512 == flushed_usage(dest)
    finally:
        remove_tree(scratch)
