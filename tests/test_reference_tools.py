"""The trees ``tar`` and ``zip`` unpack are the trees GNU tar and Info-ZIP's unzip make of the same
real archives: the same names, contents, symlinks, hard links, empty directories, executable bits
and modification times.

The corpus: archives that GNU tar (gnu, posix and ustar formats; gzip, xz and zstd) and Info-ZIP's
zip make of a tree with every kind of entry here, and sdists and wheels from PyPI, fetched once
with ``pip download`` into a cache (``$SC_TEST_CORPUS``, default ``~/.cache/shared-cache-tests``).
A test whose tool or download is not available is skipped and says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sharedcache.loaders.pipeline import populate
from sharedcache.loaders.registry import parse_recipe

pytestmark = pytest.mark.timeout(300)

SDISTS = ["six==1.16.0", "urllib3==2.2.3", "tqdm==4.66.5", "zstandard==0.23.0"]
WHEELS = ["six==1.16.0", "urllib3==2.2.3", "tqdm==4.66.5", "zstandard==0.23.0"]
UNICODE_NAME = "ünïcødé-файл-文件.txt"
TAR_FORMATS = {  # GNU tar's format and compression options, and the archive's suffix
    "gnu-gzip": (["--format=gnu", "--gzip"], ".tar.gz"),
    "posix-xz": (["--format=posix", "--xz"], ".tar.xz"),
    "ustar-zstd": (["--format=ustar", "--zstd"], ".tar.zst"),
    "posix-plain": (["--format=posix"], ".tar"),
}


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (tools/test.sh installs it when run as root)")


def run(*command: str | Path, cwd: Path | None = None) -> None:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, "LC_ALL": "C.UTF-8"}, timeout=120, check=False)
    assert result.returncode == 0, f"{command}: {result.stderr}"


def make_tree(root: Path) -> None:
    """A tree with every kind of entry an archive can carry here."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "lib" / "sub").mkdir(parents=True)
    (root / "lib" / "data.txt").write_bytes(b"".join(b"line %d\n" % i for i in range(20_000)))
    (root / "lib" / "random.bin").write_bytes(hashlib.sha256(b"seed").digest() * 10_000)
    (root / "lib" / "sub" / "empty").write_bytes(b"")
    (root / "lib" / "readonly.txt").write_text("read only\n")
    (root / "lib" / "readonly.txt").chmod(0o444)
    (root / "empty-dir").mkdir()
    (root / "dir with spaces").mkdir()
    (root / "dir with spaces" / "file (1).txt").write_text("spaces\n")
    (root / UNICODE_NAME).write_text("unicode\n")
    deep = root / "deep" / ("n" * 60) / ("m" * 60)  # past the 100 bytes of a tar name field
    deep.mkdir(parents=True)
    (deep / ("f" * 90)).write_text("deep\n")
    (root / "links").mkdir()
    (root / "links" / "relative").symlink_to("../lib/data.txt")
    (root / "links" / "to-dir").symlink_to("../lib")
    (root / "links" / "dangling").symlink_to("nowhere")
    os.link(root / "lib" / "data.txt", root / "links" / "hard")
    for number, path in enumerate(sorted(root.rglob("*"), reverse=True)):  # children before parents
        when = 1_600_000_000 + number * 3607
        os.utime(path, ns=(when * 10**9 + 123_456_789, when * 10**9 + 123_456_789), follow_symlinks=False)


def snapshot(root: Path, members: set[str], *, exact_times: bool) -> dict[str, tuple[object, ...]]:
    """What the comparison sees of a tree: each path's kind, content or target, executable bits and
    modification time (to the second unless ``exact_times``; for a directory only if it is one of
    the archive's ``members``, else it was made when it was unpacked), and which paths are one
    inode."""
    inodes: dict[int, list[str]] = {}
    seen: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        st = path.lstat()
        mtime = st.st_mtime_ns if exact_times else st.st_mtime_ns // 10**9
        if stat.S_ISLNK(st.st_mode):
            seen[name] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            seen[name] = ("dir", st.st_mode & 0o111, mtime if name in members else None)
        else:
            assert stat.S_ISREG(st.st_mode), name
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[name] = ("file", digest, st.st_mode & 0o111, mtime)
            inodes.setdefault(st.st_ino, []).append(name)
    seen["hard links"] = tuple(sorted(tuple(names) for names in inodes.values() if len(names) > 1))
    return seen


def unpack_with_sc(archive: Path, unpacker: str, scratch: Path) -> Path:
    dest, work = scratch / "sc", scratch / "work"
    dest.mkdir(parents=True)
    work.mkdir()
    populate(parse_recipe([f"file:{archive}", unpacker]), dest, work=work)
    return dest


def unpack_with_reference(archive: Path, unpacker: str, scratch: Path) -> Path:
    dest = scratch / "reference"
    dest.mkdir(parents=True)
    if unpacker == "tar":  # GNU tar recognises the compression by itself
        run("tar", "-xf", archive, "-C", dest)
    else:
        run("unzip", "-q", archive, "-d", dest)
    return dest


def listing(archive: Path, unpacker: str) -> set[str]:
    """The names of the archive's members, as the reference tool lists them."""
    command = ["tar", "-tf"] if unpacker == "tar" else ["unzip", "-Z1"]
    result = subprocess.run([*command, str(archive)], capture_output=True, timeout=60, check=True)
    names = (os.fsdecode(line).removeprefix("./").rstrip("/") for line in result.stdout.splitlines())
    return {name for name in names if name not in ("", ".")}


def assert_same_trees(archive: Path, unpacker: str, scratch: Path, *, exact_times: bool = True) -> None:
    members = listing(archive, unpacker)
    ours = snapshot(unpack_with_sc(archive, unpacker, scratch), members, exact_times=exact_times)
    theirs = snapshot(unpack_with_reference(archive, unpacker, scratch), members, exact_times=exact_times)
    assert ours.keys() == theirs.keys()
    different = {name: (ours[name], theirs[name]) for name in ours if ours[name] != theirs[name]}
    assert not different, different


# --- archives made here by the reference tools ----------------------------------------------------


@pytest.mark.parametrize("fmt", list(TAR_FORMATS))
def test_gnu_tar_archives(tmp_path: Path, fmt: str) -> None:
    options, suffix = TAR_FORMATS[fmt]
    need("tar", *(("zstd",) if "--zstd" in options else ()), *(("xz",) if "--xz" in options else ()))
    make_tree(tmp_path / "tree")
    archive = tmp_path / f"tree{suffix}"
    run("tar", "-cf", archive, *options, "-C", tmp_path / "tree", ".")
    # Only pax headers carry times below the second; the others round them down, for both.
    assert_same_trees(archive, "tar", tmp_path / "out", exact_times=fmt.startswith("posix"))


def test_info_zip_archive(tmp_path: Path) -> None:
    need("zip", "unzip")
    make_tree(tmp_path / "tree")
    archive = tmp_path / "tree.zip"
    run("zip", "-q", "-r", "-y", archive, ".", cwd=tmp_path / "tree")  # -y: symlinks as links
    assert_same_trees(archive, "zip", tmp_path / "out", exact_times=False)
    assert (tmp_path / "out" / "sc" / UNICODE_NAME).read_text() == "unicode\n"


def test_zip_name_in_a_unicode_path_field(tmp_path: Path) -> None:
    """Zips made where names are not UTF-8 (Info-ZIP on Windows, 7-Zip) keep a name in the local
    code page and the UTF-8 one in a Unicode Path extra field (0x7075) that names the stored one
    by its CRC; unzip uses the UTF-8 name then, and only then."""
    need("unzip")
    import struct
    import zipfile
    import zlib

    stored = "unicode-fallback.txt"

    def unicode_path(name: str, crc_of: str) -> bytes:
        field = b"\x01" + struct.pack("<L", zlib.crc32(crc_of.encode("cp437"))) + name.encode()
        return struct.pack("<HH", 0x7075, len(field)) + field

    archive = tmp_path / "unicode-path.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for member, extra, content in (("a.txt", unicode_path(UNICODE_NAME, "a.txt"), "right crc\n"),
                                       (stored, unicode_path("ignored.txt", "other"), "wrong crc\n")):
            info = zipfile.ZipInfo(member, (2024, 5, 6, 7, 8, 10))
            info.create_system, info.external_attr, info.extra = 0, 0, extra
            out.writestr(info, content)
    assert_same_trees(archive, "zip", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / UNICODE_NAME).read_text() == "right crc\n"
    assert (tmp_path / "out" / "sc" / stored).read_text() == "wrong crc\n"


# --- sdists and wheels from PyPI ------------------------------------------------------------------


def corpus(kind: str, requirement: str) -> Path:
    """The sdist or wheel of ``requirement``, downloaded once into the corpus cache."""
    cache = Path(os.environ.get("SC_TEST_CORPUS") or Path.home() / ".cache" / "shared-cache-tests")
    folder = cache / kind / requirement
    found = sorted(folder.glob("*")) if folder.is_dir() else []
    if not found:
        binary = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
        partial = cache / kind / f".{requirement}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                 "--disable-pip-version-check", *binary, "-d", str(partial), requirement],
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            reason = result.stderr.strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f"cannot download the {kind} of {requirement} from PyPI: {reason[0]}")
        partial.rename(folder)
        found = sorted(folder.glob("*"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("requirement", SDISTS)
def test_sdists(tmp_path: Path, requirement: str) -> None:
    need("tar")
    archive = corpus("sdist", requirement)
    assert archive.name.endswith(".tar.gz")
    assert_same_trees(archive, "tar", tmp_path)


@pytest.mark.parametrize("requirement", WHEELS)
def test_wheels(tmp_path: Path, requirement: str) -> None:
    need("unzip")
    archive = corpus("wheel", requirement)
    assert archive.suffix == ".whl"
    assert_same_trees(archive, "zip", tmp_path)
