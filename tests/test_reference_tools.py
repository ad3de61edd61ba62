"""The trees ``tar`` and ``zip`` unpack are the trees GNU tar and Info-ZIP's unzip make of the same
real archives: the same names, contents, symlinks, hard links, empty directories, executable bits
and modification times.

The corpus:
- archives that GNU tar (gnu, posix and ustar formats; gzip, xz, zstd and pzstd) and Info-ZIP's
  zip make of a tree with every kind of entry here, and a few that they make of special cases;
- archives of trees made at random (long and non-ASCII names, hard links to files and symlinks,
  symlinks, read-only directories, times before 1970 and past 11 octal digits) by GNU tar, bsdtar
  (macOS's tar, against its own unpacking), zip and 7-Zip, and zips that Python's zipfile makes;
- zips with Deflate64 members (as Windows' Explorer and 7-Zip write them), which zipfile cannot read;
- compressed streams one after another, with padding or other bytes between them, against the
  compressors' own decompressors;
- sdists and wheels from PyPI, fetched once with ``pip download`` into a cache
  (``$SC_TEST_CORPUS``, default ``~/.cache/shared-cache-tests``).
A test whose tool or download is not available is skipped and says why.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import zstandard

from sharedcache.errors import LoaderError
from sharedcache.loaders.pipeline import populate
from sharedcache.loaders.registry import parse_recipe
from scutil import deflate64_zip, writers_past

pytestmark = pytest.mark.timeout(300)

SDISTS = ["six==1.16.0", "urllib3==2.2.3", "tqdm==4.66.5", "zstandard==0.23.0"]
WHEELS = ["six==1.16.0", "urllib3==2.2.3", "tqdm==4.66.5", "zstandard==0.23.0"]
UNICODE_NAME = "ünïcødé-файл-文件.txt"
TAR_FORMATS = {  # GNU tar's format and compression options, and the archive's suffix
    "gnu-gzip": (["--format=gnu", "--gzip"], ".tar.gz"),
    "posix-xz": (["--format=posix", "--xz"], ".tar.xz"),
    "ustar-zstd": (["--format=ustar", "--zstd"], ".tar.zst"),
    "gnu-pzstd": (["--format=gnu", "--use-compress-program=pzstd"], ".tar.zst"),  # a skippable frame first
    "posix-plain": (["--format=posix"], ".tar"),
}


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (tools/test.sh installs it when run as root)")


def run(*command: str | Path, cwd: Path | None = None, statuses: tuple[int, ...] = (0,)) -> None:
    # (errors: a tool's warnings name members by their bytes, which need not be UTF-8)
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, errors="replace",
                            cwd=cwd, env={**os.environ, "LC_ALL": "C.UTF-8"}, timeout=120, check=False)
    assert result.returncode in statuses, f"{command}: {result.stderr}"


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
    os.link(root / "links" / "relative", root / "lib" / "sub" / "hard-to-symlink", follow_symlinks=False)
    for number, path in enumerate(sorted(root.rglob("*"), reverse=True)):  # children before parents
        when = 1_600_000_000 + number * 3607
        os.utime(path, ns=(when * 10**9 + 123_456_789, when * 10**9 + 123_456_789), follow_symlinks=False)


def snapshot(root: Path, members: set[str], *, exact_times: bool, link_times: bool) -> dict[str, tuple[object, ...]]:
    """What the comparison sees of a tree: each path's kind, content or target, executable bits and
    modification time (to the second unless ``exact_times``; for a directory only if it is one of
    the archive's ``members``, else it was made when it was unpacked; for a symlink only with
    ``link_times``), and which paths are one inode."""
    inodes: dict[int, list[str]] = {}
    seen: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        st = path.lstat()
        mtime = st.st_mtime_ns if exact_times else st.st_mtime_ns // 10**9
        if stat.S_ISLNK(st.st_mode):
            seen[name] = ("symlink", os.readlink(path), mtime if link_times else None)
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


def unpack_with_reference(archive: Path, unpacker: str, scratch: Path, reference: str) -> Path:
    dest = scratch / "reference"
    dest.mkdir(parents=True)
    if unpacker == "tar":  # GNU tar (and bsdtar) recognise the compression by themselves
        run(reference, "-xpf", archive, "-C", dest)
    else:
        # 1: a warning, such as "appears to use backslashes as path separators"; the trees tell.
        run("unzip", "-q", archive, "-d", dest, statuses=(0, 1))
    return dest


def listing(archive: Path, unpacker: str) -> set[str]:
    """The names of the archive's members, as the reference tool lists them."""
    command = ["tar", "-tf"] if unpacker == "tar" else ["unzip", "-Z1"]
    result = subprocess.run([*command, str(archive)], capture_output=True, timeout=60, check=True)
    names = (os.fsdecode(line).removeprefix("./").rstrip("/") for line in result.stdout.splitlines())
    return {name for name in names if name not in ("", ".")}


def assert_same_trees(archive: Path, unpacker: str, scratch: Path, *, exact_times: bool = True,
                      reference: str = "tar") -> None:
    """The trees ``unpacker`` and the reference tool (GNU tar or unzip; ``reference`` may name
    another tar) make of ``archive`` are the same."""
    members = listing(archive, unpacker)
    # unzip leaves a symlink the time it was made at; the zip's own time is the one kept.
    link_times = unpacker == "tar"
    ours = snapshot(unpack_with_sc(archive, unpacker, scratch), members, exact_times=exact_times,
                    link_times=link_times)
    theirs = snapshot(unpack_with_reference(archive, unpacker, scratch, reference), members,
                      exact_times=exact_times, link_times=link_times)
    assert ours.keys() == theirs.keys()
    different = {name: (ours[name], theirs[name]) for name in ours if ours[name] != theirs[name]}
    assert not different, different


# --- archives made here by the reference tools ----------------------------------------------------


@pytest.mark.parametrize("options", [["-g", "snapshot"], ["-V", "volume 1"]], ids=["incremental", "label"])
def test_gnu_tar_incremental_dumps_and_volume_labels(tmp_path: Path, options: list[str]) -> None:
    """An incremental dump (``-g``) stores each directory as a "dumpdir" member (type D), with the
    list of its entries as data; a label (``-V``) comes first as a member of type V.  Unpacked
    without ``-g``, GNU tar makes the directories and passes over the label."""
    need("tar")
    make_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar"
    run("tar", "-cf", archive, "--format=gnu", *options, "-C", tmp_path / "tree", ".", cwd=tmp_path)
    assert_same_trees(archive, "tar", tmp_path / "out", exact_times=False)


@pytest.mark.parametrize("fmt", list(TAR_FORMATS))
def test_gnu_tar_archives(tmp_path: Path, fmt: str) -> None:
    options, suffix = TAR_FORMATS[fmt]
    need("tar", *(tool for option, tool in (("--zstd", "zstd"), ("--xz", "xz"), ("--use-compress-program=pzstd",
                                                                                 "pzstd")) if option in options))
    make_tree(tmp_path / "tree")
    archive = tmp_path / f"tree{suffix}"
    run("tar", "-cf", archive, *options, "-C", tmp_path / "tree", ".")
    # Only pax headers carry times below the second; the others round them down, for both.
    assert_same_trees(archive, "tar", tmp_path / "out", exact_times=fmt.startswith("posix"))


def test_tar_regular_members_named_as_directories(tmp_path: Path) -> None:
    """Old tars, and some tools since, wrote a directory as a regular member (type 0, or the NUL of
    the first tars) whose name ends with a slash: GNU tar makes a directory of it."""
    need("tar")
    archive = tmp_path / "old.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as out:
        # (Nothing is put in them: GNU tar gives such a directory its time at once, and a file
        # made in it later changes that; `tar` gives every directory its time at the end.)
        for name, kind, data in (("zero/", tarfile.REGTYPE, b""), ("nul/", tarfile.AREGTYPE, b""),
                                 ("after.txt", tarfile.REGTYPE, b"a")):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode, info.mtime = kind, len(data), 0o755, 1_600_000_000
            out.addfile(info, io.BytesIO(data))
    assert_same_trees(archive, "tar", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / "nul").is_dir()


def test_tar_members_of_types_gnu_tar_does_not_know_are_files(tmp_path: Path) -> None:
    """GNU tar makes a regular file of a member whose type it does not know, with a warning:
    Solaris tar's ACL ("A", before the file it is for, which then replaces it) and extended
    attributes ("E"), star's inode metadata ("I"), any other letter or digit, a name ending in a
    slash too.  Such an archive was refused, "member 'file' is a special file"."""
    need("tar")
    archive = tmp_path / "solaris.tar"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as out:
        for name, kind, mode, data in (("file", b"A", 0o644, b"user::rw-,group::r--,other:r--\0"),
                                       ("file", tarfile.REGTYPE, 0o644, b"data\n"),
                                       ("attributes", b"E", 0o644, b"user.origin=solaris\n"),
                                       ("inode", b"I", 0o755, b""), ("slashed/", b"Z", 0o644, b"z"),
                                       ("numbered", b"9", 0o600, b"9" * 700)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.mtime = kind, mode, len(data), 1_600_000_000
            out.addfile(info, io.BytesIO(data))
    assert_same_trees(archive, "tar", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / "file").read_bytes() == b"data\n"
    assert (tmp_path / "out" / "sc" / "slashed").read_bytes() == b"z"


@pytest.mark.parametrize("writer_processes", [False, True], ids=["one process", "writer processes"])
def test_tar_acl_before_a_directory_is_replaced_by_it(tmp_path: Path, writer_processes: bool) -> None:
    """Solaris tar (``tar -p``) writes the ACL of a directory (default entries exist on
    directories alone) as a member of type A named as the directory, just before it: GNU tar
    makes a file of it, which the directory replaces, then unpacks what goes in it.  Such an
    archive was refused, "member 'd/' is a directory in place of the file 'd' made before it"."""
    need("tar")
    archive = tmp_path / "solaris-acls.tar"
    acl = b"user::rwx,group::r-x,mask:r-x,other:r-x,default:user::rwx,default:group::r-x\0"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as out:
        for name, kind, data in (("d/", b"A", acl), ("d", tarfile.DIRTYPE, b""),
                                 ("d/f", b"A", acl), ("d/f", tarfile.REGTYPE, b"data\n"),
                                 ("d/sub", b"A", acl), ("d/other", tarfile.REGTYPE, b"o\n"),
                                 ("d/sub", tarfile.DIRTYPE, b""), ("d/sub/g", tarfile.REGTYPE, b"g\n")):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.mtime = kind, 0o755, len(data), 1_600_000_000
            out.addfile(info, io.BytesIO(data))
    with writers_from_the_first_member(writer_processes):
        assert_same_trees(archive, "tar", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / "d" / "sub" / "g").read_bytes() == b"g\n"


def test_tar_directory_replaces_the_file_of_an_unknown_type_only_until_another_member_has(tmp_path: Path) -> None:
    """Only the next member of the name replaces the file of a member of a type GNU tar does not
    know: past a regular file that replaced it, a directory of that name is refused, as for any
    file (GNU tar would replace it, a difference kept)."""
    archive = tmp_path / "replaced.tar"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as out:
        for name, kind, data in (("d", b"A", b"acl\0"), ("d", tarfile.REGTYPE, b"file\n"), ("d", tarfile.DIRTYPE, b"")):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            out.addfile(info, io.BytesIO(data))
    with pytest.raises(LoaderError, match="member 'd/' is a directory in place of the file 'd' made before it$"):
        unpack_with_sc(archive, "tar", tmp_path / "out")


@pytest.mark.parametrize("writer_processes", [False, True], ids=["one process", "writer processes"])
def test_gnu_tar_archive_of_names_given_twice(tmp_path: Path, writer_processes: bool) -> None:
    """GNU tar stores a file of two links whose name is given twice as a hard link to itself the
    second time (``f`` linked to ``f``), and the other name as a link to it, twice: each is
    already that file when it comes.  Replacing it removed the link's own target."""
    need("tar")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("data\n")
    os.link(tree / "f", tree / "g")
    archive = tmp_path / "twice.tar"
    run("tar", "-cf", archive, "-C", tree, "f", "f", "g", "g")
    with writers_from_the_first_member(writer_processes):
        assert_same_trees(archive, "tar", tmp_path / "out")


def test_info_zip_archive(tmp_path: Path) -> None:
    need("zip", "unzip")
    make_tree(tmp_path / "tree")
    archive = tmp_path / "tree.zip"
    run("zip", "-q", "-r", "-y", archive, ".", cwd=tmp_path / "tree")  # -y: symlinks as links
    assert_same_trees(archive, "zip", tmp_path / "out", exact_times=False)
    assert (tmp_path / "out" / "sc" / UNICODE_NAME).read_text() == "unicode\n"


def test_zip_names_keep_their_control_characters_as_unzip_does_when_asked(tmp_path: Path) -> None:
    """A name with a tab or an escape in it (legal in Linux file names, and kept by GNU tar) is
    unpacked as it is stored, as ``unzip -^`` unpacks it; plain unzip drops those characters (a
    difference kept on purpose, docs/guarantees.md)."""
    need("zip", "unzip")
    tree = tmp_path / "tree"
    tree.mkdir()
    names = ["tab\tname", "escape\x1bname", "plain"]
    for name in names:
        (tree / name).write_text(name)
    archive = tmp_path / "controls.zip"
    run("zip", "-q", "-r", archive, ".", cwd=tree)
    ours = unpack_with_sc(archive, "zip", tmp_path / "out")
    asked, plain = tmp_path / "unzip-^", tmp_path / "unzip"
    run("unzip", "-q", "-^", archive, "-d", asked)
    run("unzip", "-q", archive, "-d", plain)
    assert snapshot(ours, set(), exact_times=False, link_times=False) == snapshot(
        asked, set(), exact_times=False, link_times=False)
    assert sorted(os.listdir(ours)) == sorted(names)
    assert sorted(os.listdir(plain)) == sorted(["tabname", "escapename", "plain"])


@pytest.mark.parametrize("options", [[], ["-mm=Deflate64"]])
def test_7zip_archive(tmp_path: Path, options: list[str]) -> None:
    """7-Zip, as Windows users make their zips, with its default method or with Deflate64 (the
    method Windows' Explorer writes in zips past 2 GiB), which unzip reads and zipfile does not."""
    need("7zz", "unzip")
    make_tree(tmp_path / "tree")
    archive = tmp_path / "tree.zip"
    run("7zz", "a", "-tzip", "-snl", "-bso0", "-bsp0", *options, archive, ".", cwd=tmp_path / "tree")  # -snl: links
    assert_same_trees(archive, "zip", tmp_path / "out", exact_times=False)


def test_zip_names_ending_in_a_slash_are_directories_whatever_their_mode(tmp_path: Path) -> None:
    """unzip (and bsdtar) make a directory of every name that ends in a slash, whatever type its
    Unix mode gives: some tools write S_IFREG there.  Such an entry became an empty file, and
    its members were then refused as written below a file."""
    need("unzip")
    archive = tmp_path / "dirs.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, mode, data in (("regular/", stat.S_IFREG | 0o755, b""), ("regular/inside", stat.S_IFREG | 0o644, b"1"),
                                 ("link/", stat.S_IFLNK | 0o777, b"target"), ("device/", stat.S_IFCHR | 0o755, b""),
                                 ("typeless/", 0o755, b"")):
            info = zipfile.ZipInfo(name, (2020, 5, 5, 10, 10, 10))
            info.create_system, info.external_attr = 3, mode << 16
            out.writestr(info, data)
    assert_same_trees(archive, "zip", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / "link").is_dir()


def test_zip_times_past_2038_and_before_1970(tmp_path: Path) -> None:
    """The extended time field holds 32 bits: Info-ZIP's zip writes a time past 2038-01-19 as a
    negative number, as it does one before 1970, and unzip tells them apart by the MS-DOS time
    beside it (it takes that one, 1980, for a time before 1970).  Read as signed alone, 2040
    came out as 1903."""
    need("zip", "unzip")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name, when in (("past-2038", 2_208_988_800), ("just-past", 2_149_000_000), ("before-1970", -144_000_000),
                       ("ordinary", 1_600_000_000)):
        (tree / name).write_text(name)
        os.utime(tree / name, (when, when))
    archive = tmp_path / "times.zip"
    run("zip", "-q", "-r", archive, ".", cwd=tree)
    assert_same_trees(archive, "zip", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / "past-2038").stat().st_mtime == 2_208_988_800


def test_deflate64_members_against_unzip(tmp_path: Path) -> None:
    """Deflate64 data of every kind of content, large and small, as inflate64 makes it."""
    need("unzip")
    files = {"empty": b"", "one": b"x", "text.txt": b"".join(b"line %d\n" % i for i in range(200_000)),
             "random.bin": hashlib.sha256(b"seed").digest() * 100_000, "dir/zeros": bytes(3 << 20)}
    archive = tmp_path / "deflate64.zip"
    archive.write_bytes(deflate64_zip(files))
    assert_same_trees(archive, "zip", tmp_path / "out", exact_times=False)
    assert (tmp_path / "out" / "sc" / "text.txt").read_bytes() == files["text.txt"]


def unicode_path(name: str, crc_of: str) -> bytes:
    """An Info-ZIP Unicode Path extra field (0x7075) giving ``name``, for the stored name ``crc_of``."""
    import struct
    import zlib

    field = b"\x01" + struct.pack("<L", zlib.crc32(crc_of.encode("cp437"))) + name.encode()
    return struct.pack("<HH", 0x7075, len(field)) + field


def test_zip_name_in_a_unicode_path_field(tmp_path: Path) -> None:
    """Zips made where names are not UTF-8 (Info-ZIP on Windows, 7-Zip) keep a name in the local
    code page and the UTF-8 one in a Unicode Path extra field (0x7075) that names the stored one
    by its CRC; unzip uses the UTF-8 name then, and only then."""
    need("unzip")
    stored = "unicode-fallback.txt"
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


@pytest.mark.parametrize("kept_in", ["central directory", "local header"])
def test_zip_times_in_one_header_only(tmp_path: Path, kept_in: str) -> None:
    """unzip (and bsdtar) take a member's extended timestamp ("UT", 0x5455) from its local header.
    Some writers put it in one header only: yazl (VS Code's extensions, many npm tools) in the
    central directory, where unzip does not look and the DOS time counts."""
    need("unzip")
    import struct

    def extended_time(seconds: int) -> bytes:
        return struct.pack("<HHBl", 0x5455, 5, 1, seconds)

    archive = tmp_path / "one-header.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for number, member in enumerate(("dir/", "dir/file.txt", "top.txt")):
            info = zipfile.ZipInfo(member, (2024, 5, 6, 7, 8, 10))
            info.create_system = 3
            info.external_attr = (0o40755 if member.endswith("/") else 0o100644) << 16
            info.extra = extended_time(1_600_000_001 + 3607 * number)  # odd: no DOS time holds it
            out.writestr(info, "" if member.endswith("/") else member)
    data = bytearray(archive.read_bytes())
    # Rename the other header's copy of the field to an id nobody reads: the sizes stay.
    other, fixed, name_size_at = (b"PK\x03\x04", 30, 26) if kept_in == "central directory" else (b"PK\x01\x02", 46, 28)
    at = data.find(other)
    while at >= 0:
        field = at + fixed + struct.unpack_from("<H", data, at + name_size_at)[0]
        assert data[field:field + 2] == b"\x55\x54"
        data[field:field + 2] = b"\xfe\xca"
        at = data.find(other, at + 4)
    archive.write_bytes(bytes(data))
    assert_same_trees(archive, "zip", tmp_path / "out", exact_times=False)


def test_a_zip_member_typed_a_directory_without_a_trailing_slash_is_a_file_as_unzip_makes_it(tmp_path: Path) -> None:
    """unzip knows a directory by the "/" that ends its name alone: a member whose mode says
    directory without it (and the MS-DOS directory bit or not, data or not) is made a file, with
    the mode's permissions.  It was refused as a special file."""
    need("unzip")
    archive = tmp_path / "typed.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, attributes, data in (("flagged", (stat.S_IFDIR | 0o750) << 16 | 0x10, b""),
                                       ("mode-only", (stat.S_IFDIR | 0o750) << 16, b""),
                                       ("with-data", (stat.S_IFDIR | 0o700) << 16, b"xyz"),
                                       ("real-dir/", (stat.S_IFDIR | 0o755) << 16 | 0x10, b""),
                                       ("real-dir/inside", (stat.S_IFREG | 0o644) << 16, b"in")):
            info = zipfile.ZipInfo(name, (2024, 5, 6, 7, 8, 10))
            info.create_system, info.external_attr = 3, attributes
            out.writestr(info, data)
    assert_same_trees(archive, "zip", tmp_path / "out", exact_times=False)


def test_zip_times_in_the_old_unix_fields(tmp_path: Path) -> None:
    """Before the extended timestamp, Info-ZIP's zip wrote the times in its "UX" field (0x5855),
    and PKWARE's zip for Unix in its Unix field (0x000d): access, then modification time, in the
    local header.  unzip takes the time from them where no "UT" field is (the last of them, if
    both are there), and its DOS time (two-second steps, local time) only after them."""
    need("unzip")
    import struct

    fields = {"ux": struct.pack("<HHll", 0x5855, 8, 1_000, 1_500_000_001),
              "ux-with-owner": struct.pack("<HHllHH", 0x5855, 12, 1_000, 1_500_003_609, 0, 0),
              "pkware": struct.pack("<HHllHH", 0x000D, 12, 1_000, 1_400_000_003, 0, 0),
              "both": struct.pack("<HHllHH", 0x000D, 12, 1_000, 1_400_000_003, 0, 0)
              + struct.pack("<HHll", 0x5855, 8, 1_000, 1_300_000_005),
              "ut-first": struct.pack("<HHll", 0x5855, 8, 1_000, 1_300_000_005)
              + struct.pack("<HHBl", 0x5455, 5, 1, 1_200_000_007),
              "before-1970": struct.pack("<HHll", 0x5855, 8, 1_000, -5)}
    archive = tmp_path / "old-times.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, extra in fields.items():
            info = zipfile.ZipInfo(name, (2024, 5, 6, 7, 8, 10))
            info.create_system, info.external_attr, info.extra = 3, 0o100644 << 16, extra
            out.writestr(info, name)
    assert_same_trees(archive, "zip", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / "ux").stat().st_mtime == 1_500_000_001


def test_zip_comment_ending_in_an_end_record_signature(tmp_path: Path) -> None:
    """The end record is the last signature with a whole record after it, as unzip finds it: the
    signature in the last bytes of a comment (binary comments, such as a signature's) is not
    it.  Taken for it, the archive was refused as having no end record."""
    need("unzip")
    archive = tmp_path / "comment.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr(zipfile.ZipInfo("file.txt", (2024, 5, 6, 7, 8, 10)), "data\n")
        out.comment = b"signed: PK\x05\x06\x01\x02\x03"
    assert_same_trees(archive, "zip", tmp_path / "out")


def test_zip_name_flagged_utf8_in_a_zip_made_on_ms_dos(tmp_path: Path) -> None:
    """Java writes every zip (every jar) as made on MS-DOS, with non-ASCII names in UTF-8 and
    flagged so (bit 11).  The flag decides, as the format says: the Debian build of unzip reads
    such a name as the OEM code page instead (``é.txt`` comes out as ``+®.txt``), a difference kept."""
    archive = tmp_path / "java-like.jar"
    with zipfile.ZipFile(archive, "w") as out:
        info = zipfile.ZipInfo(UNICODE_NAME, (2024, 5, 6, 7, 8, 10))
        info.create_system = 0
        out.writestr(info, "unicode\n")
    assert zipfile.ZipFile(archive).infolist()[0].flag_bits & 0x800
    assert (unpack_with_sc(archive, "zip", tmp_path / "out") / UNICODE_NAME).read_text() == "unicode\n"


@pytest.mark.parametrize("system", [2, 5, 12, 13, 16, 17, 30])
def test_zips_made_on_other_systems_that_record_unix_modes(tmp_path: Path, system: int) -> None:
    """unzip reads a Unix mode in the external attributes of zips made on VMS (2), Atari MiNT (5),
    QDOS (12), Acorn (13), BeOS and Haiku (16: Haiku's zip says so), Tandem (17) and AtheOS (30),
    and makes the symlinks of five of them.  Read for Unix (3) alone, their executables came out
    without their x bits, and their symlinks as files holding the target."""
    need("unzip")
    archive = tmp_path / f"made-on-{system}.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, mode, data in (("run.sh", stat.S_IFREG | 0o755, b"#!/bin/sh\n"), ("link", stat.S_IFLNK | 0o777, b"run.sh"),
                                 ("data.txt", stat.S_IFREG | 0o644, b"data\n"), ("dir/", stat.S_IFDIR | 0o755, b"")):
            info = zipfile.ZipInfo(name, (2024, 5, 6, 7, 8, 10))
            info.create_system, info.external_attr = system, mode << 16
            out.writestr(info, data)
    assert_same_trees(archive, "zip", tmp_path / "out", exact_times=False)
    assert os.access(tmp_path / "out" / "sc" / "run.sh", os.X_OK)


MS_DOS_ARCHIVE = 0x20  # MS-DOS's "archive" attribute alone: the attributes Windows' tools record


def zip_of_stored_names(archive: Path, members: list[tuple[bytes, int, int]], *,
                        local_names: dict[bytes, bytes] | None = None, external_attr: int = MS_DOS_ARCHIVE) -> None:
    """Write a zip whose members' names are the bytes given, unflagged (zipfile would write them
    in UTF-8, flagged), each made on the system and by the version given, with the attributes
    given (zipfile would record a Unix mode), and holding its name.  ``local_names`` gives the
    bytes, as long, that a member's local header names in place of the central directory's."""
    placeholders = {}
    with zipfile.ZipFile(archive, "w") as out:
        for number, (stored, system, version) in enumerate(members):
            placeholder = f"{number}".rjust(len(stored), "_")  # as long as the stored name
            placeholders[placeholder.encode()] = stored
            info = zipfile.ZipInfo(placeholder, (2024, 5, 6, 7, 8, 10))
            info.create_system, info.create_version, info.external_attr = system, version, external_attr
            out.writestr(info, stored)
    data = archive.read_bytes()
    for placeholder, stored in placeholders.items():
        # The local header comes first, then the central directory's record.
        data = data.replace(placeholder, (local_names or {}).get(stored, stored), 1).replace(placeholder, stored)
    archive.write_bytes(data)


def test_zip_names_made_on_windows_nt_by_tools_other_than_winzip_5_are_in_its_ansi_code_page(tmp_path: Path) -> None:
    """unzip reads the unflagged names of zips made on Windows NT as its ANSI code page, but for
    those that WinZip 5.0 wrote (version made by 5.0), in the OEM code page as on MS-DOS: "café"
    written by Info-ZIP's zip for Windows (version 3.0) came out as "cafΘ".  (unzip writes those
    letters in ISO 8859-1, as it does the others; they are written in UTF-8 here.)"""
    archive = tmp_path / "windows.zip"
    names = {b"caf\xe9.txt": (11, 30, "café.txt"), b"\x80uro.txt": (11, 20, "€uro.txt"),
             b"na\x8bve.txt": (11, 50, "naïve.txt"), b"\x81x.txt": (11, 30, "\x81x.txt"),
             b"\x82t\x82.txt": (0, 20, "été.txt")}
    zip_of_stored_names(archive, [(stored, system, version) for stored, (system, version, _) in names.items()])
    unpacked = unpack_with_sc(archive, "zip", tmp_path / "out")
    assert sorted(os.listdir(unpacked)) == sorted(name for _, _, name in names.values())


def as_unzip_names_read(name: bytes) -> str:
    """A name that unzip wrote in ISO 8859-1, as sc writes it: the letters of the ANSI code page
    (1252: unzip's table writes the OEM code page's ƒ as its 0x83), where it has one."""
    try:
        return name.decode("cp1252")
    except UnicodeDecodeError:
        return name.decode("latin-1")


PKZIP_FOR_UNIX = 0o100644 << 16 | MS_DOS_ARCHIVE  # PKZIP for UNIX 2.51 says MS-DOS too, and records a Unix mode


@pytest.mark.parametrize(("system", "version", "external_attr"), [
    (0, 20, MS_DOS_ARCHIVE), (6, 20, MS_DOS_ARCHIVE), (11, 50, MS_DOS_ARCHIVE), (0, 25, MS_DOS_ARCHIVE),
    (0, 26, MS_DOS_ARCHIVE), (0, 40, MS_DOS_ARCHIVE), (0, 25, PKZIP_FOR_UNIX), (11, 30, MS_DOS_ARCHIVE)],
    ids=["MS-DOS", "OS/2", "WinZip 5.0", "PKZIP for Windows 2.5", "PKZIP for Windows 2.6", "PKZIP for Windows 4.0",
         "PKZIP for UNIX 2.51", "Windows NT"])
def test_zip_names_in_a_code_page_are_unzips_letters(tmp_path: Path, system: int, version: int,
                                                     external_attr: int) -> None:
    """unzip converts the unflagged names of zips made on MS-DOS, OS/2 and by WinZip 5.0 from the
    OEM code page with its table, which is code page 850's: "Ação.txt" from a Portuguese Windows
    came out as "Aç╞o.txt", read as code page 437.  PKZIP for Windows 2.5, 2.6 and 4.0 say MS-DOS
    and write the central directory's names in the OEM code page too (only their local headers'
    are in the ANSI code page, as Windows NT's other tools write them), unless they record a Unix
    mode, as PKZIP for UNIX 2.51 does: unzip takes those names as they are.  (The central
    directory's names of PKZIP for Windows were read in the ANSI code page.)  All 128 high bytes,
    against ``unzip -^`` (which keeps the "ÿ" that plain unzip drops, as it drops control
    characters: a difference kept)."""
    need("unzip")
    archive = tmp_path / "code-page.zip"
    zip_of_stored_names(archive, [(b"%02x-" % byte + bytes([byte]), system, version) for byte in range(0x80, 0x100)],
                        external_attr=external_attr)
    ours = unpack_with_sc(archive, "zip", tmp_path / "out")
    theirs = tmp_path / "unzip"
    # 1: a warning, where PKZIP for Windows' local headers, read in the other code page, name
    # other letters than the central directory; unzip makes the central directory's, as we do.
    run("unzip", "-q", "-^", archive, "-d", theirs, statuses=(0, 1))
    assert sorted(os.listdir(ours)) == sorted(as_unzip_names_read(name) for name in os.listdir(bytes(theirs)))
    ansi = (system == 11 and version != 50) or external_attr == PKZIP_FOR_UNIX
    assert ("c6-Æ" if ansi else "c6-ã") in os.listdir(ours)


@pytest.mark.parametrize("version", [25, 26, 40])
def test_zip_names_that_pkzip_for_windows_wrote_in_two_code_pages(tmp_path: Path, version: int) -> None:
    """PKZIP for Windows 2.5, 2.6 and 4.0 say MS-DOS and write each name twice: in Windows' ANSI
    code page in the local header, in the OEM code page in the central directory, whose name is
    the one unzip makes; it finds the two the same, each decoded as its header's are.  Such a
    member was refused, "cannot unzip 'café.txt' ...: its local header names 'cafΘ.txt'"."""
    need("unzip")
    names = ["café.txt", "Ação.txt", "Søren.txt", "naïve.txt"]
    archive = tmp_path / "pkzip-for-windows.zip"
    zip_of_stored_names(archive, [(name.encode("cp850"), 0, version) for name in names],
                        local_names={name.encode("cp850"): name.encode("cp1252") for name in names})
    ours = unpack_with_sc(archive, "zip", tmp_path / "out")
    theirs = tmp_path / "unzip"
    run("unzip", "-q", archive, "-d", theirs)  # 0: no warning of names that differ
    assert sorted(os.listdir(ours)) == sorted(as_unzip_names_read(name) for name in os.listdir(bytes(theirs)))
    assert sorted(os.listdir(ours)) == sorted(names)


def test_zip_local_header_naming_another_member_shows_its_letters(tmp_path: Path) -> None:
    """A local header that names another member than the central directory does is refused, its
    name decoded as that header's are: PKZIP for Windows' in the ANSI code page ("cafè", which
    showed as "cafΦ", read as code page 437)."""
    archive = tmp_path / "other-member.zip"
    zip_of_stored_names(archive, [(b"caf\x82.txt", 0, 25)], local_names={b"caf\x82.txt": b"caf\xe8.txt"})
    with pytest.raises(LoaderError, match="cannot unzip 'café.txt' from .*: its local header names 'cafè.txt'$"):
        unpack_with_sc(archive, "zip", tmp_path / "out")


def _ms_dos_attributes(name: str) -> int:
    return 0x10 if name.endswith("\\") else 0  # MS-DOS's directory attribute


def test_zip_with_backslashes_for_separators(tmp_path: Path) -> None:
    """Windows tools that ignore the format's rule (PowerShell 5's Compress-Archive) write
    ``dir\\file``: unzip takes the backslashes for separators in an archive made on MS-DOS (FAT)
    whose name has no slash, and only there."""
    need("unzip")
    archive = tmp_path / "backslashes.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, system in (("dos\\sub\\", 0), ("dos\\sub\\f.txt", 0), ("dos\\g.txt", 0),
                             ("mixed/a\\b.txt", 0), ("ntfs\\f.txt", 11), ("unix\\f.txt", 3)):
            info = zipfile.ZipInfo(name, (2024, 5, 6, 7, 8, 10))
            info.create_system = system
            info.external_attr = _ms_dos_attributes(name)
            out.writestr(info, "" if name.endswith("\\") else name)
    assert_same_trees(archive, "zip", tmp_path / "out")
    assert (tmp_path / "out" / "sc" / "dos" / "sub" / "f.txt").read_text() == "dos\\sub\\f.txt"
    assert (tmp_path / "out" / "sc" / "unix\\f.txt").is_file()


#: A tree as PowerShell 5's Compress-Archive writes it (made on MS-DOS, backslashes for separators),
#: an empty directory in it; the names, and the content of each file.
_POWERSHELL_NAMES = {"Relatórios\\2024\\março.txt": "março\n", "Relatórios\\vazio\\": "", "Reports\\march.txt": "march\n"}


def _assert_powershell_tree(unpacked: Path) -> None:
    assert sorted(str(path.relative_to(unpacked)) for path in unpacked.rglob("*")) == [
        "Relatórios", "Relatórios/2024", "Relatórios/2024/março.txt", "Relatórios/vazio", "Reports",
        "Reports/march.txt"]
    assert (unpacked / "Relatórios" / "vazio").is_dir()
    assert (unpacked / "Relatórios" / "2024" / "março.txt").read_text() == "março\n"


def test_zip_names_flagged_utf8_with_backslashes_for_separators(tmp_path: Path) -> None:
    """PowerShell 5 (.NET's ZipArchive) flags its non-ASCII names UTF-8 (bit 11) in a zip made on
    MS-DOS, and separates them with backslashes: unzip's rule for them holds whatever decodes the
    name.  A flagged name was one file, backslashes and all, and ``dir\\`` an empty file.  (The
    Debian build of unzip reads those letters as the OEM code page, a difference kept: see
    test_zip_name_flagged_utf8_in_a_zip_made_on_ms_dos.)"""
    archive = tmp_path / "compress-archive.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for name, content in _POWERSHELL_NAMES.items():
            info = zipfile.ZipInfo(name, (2024, 5, 6, 7, 8, 10))
            info.create_system, info.external_attr = 0, _ms_dos_attributes(name)
            out.writestr(info, content)
    assert [info.flag_bits & 0x800 for info in zipfile.ZipFile(archive).infolist()] == [0x800, 0x800, 0]
    _assert_powershell_tree(unpack_with_sc(archive, "zip", tmp_path / "out"))


def test_zip_names_in_a_unicode_path_field_with_backslashes_for_separators(tmp_path: Path) -> None:
    """A UTF-8 name from a Unicode Path extra field (0x7075) of a zip made on MS-DOS is judged by
    unzip's rule for backslashes too: unzip makes directories of them."""
    need("unzip")
    archive = tmp_path / "unicode-path-backslashes.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for number, (name, content) in enumerate(_POWERSHELL_NAMES.items()):
            info = zipfile.ZipInfo(f"stored-{number}", (2024, 5, 6, 7, 8, 10))
            info.create_system, info.external_attr = 0, _ms_dos_attributes(name)
            info.extra = unicode_path(name, info.filename)
            out.writestr(info, content)
    assert_same_trees(archive, "zip", tmp_path / "out")
    _assert_powershell_tree(tmp_path / "out" / "sc")


class _Unseekable(io.RawIOBase):
    """Where zipfile writes as to a pipe: each member then ends with a data descriptor."""

    def __init__(self) -> None:
        self.written = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.written += data
        return len(data)


#: Names for the zips below: directories come before what is in them, as writers put them.
_ZIP_NAMES = ["a.txt", "dir/", "dir/b.bin", "dir/sub/", "dir/sub/c", "x y/z", "é/ü.txt", "文件.txt"]


@pytest.mark.timeout(300)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(st.sampled_from(_ZIP_NAMES), st.sampled_from([0, 3, 11, 19]),
                                  st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2]),
                                  st.sampled_from([0o644, 0o755, 0o600, 0o444]), st.integers(0, 300)),
                        min_size=1, max_size=8, unique_by=lambda member: member[0]),
       unseekable=st.booleans(), comment=st.booleans())
def test_zipfile_archives_against_unzip(tmp_path_factory: pytest.TempPathFactory, members: list[tuple[Any, ...]],
                                        unseekable: bool, comment: bool) -> None:
    """Zips as Python's zipfile writes them (wheels, and many tools), made on Unix, MS-DOS,
    Windows or macOS, stored, deflated or bzip2'd, with data descriptors or not.  Differences kept
    on purpose, so left out here: unzip gives a directory its mode without the owner's execute
    bit, where `zip` keeps that bit (a directory its owner cannot enter is of no use); and the
    Debian build of unzip reads a name flagged UTF-8 as the OEM code page in a zip made on MS-DOS."""
    need("unzip")
    scratch = tmp_path_factory.mktemp("zipfile")
    out: io.BytesIO | _Unseekable = _Unseekable() if unseekable else io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, made_on, method, mode, size in sorted(members):
            system = 11 if made_on == 0 and not name.isascii() else made_on
            info = zipfile.ZipInfo(name, (2021, 3, 4, 5, 6, 8))
            info.create_system, info.compress_type = system, method
            directory = name.endswith("/")
            if system == 3:
                info.external_attr = (mode | 0o700 if directory else mode) << 16 | (0x10 if directory else 0)
                info.external_attr |= (stat.S_IFDIR if directory else stat.S_IFREG) << 16
            else:
                info.external_attr = 0x10 if directory else 0
            archive.writestr(info, b"" if directory else hashlib.sha256(name.encode()).digest() * size)
        if comment:
            archive.comment = b"an archive's comment"
    path = scratch / "a.zip"
    path.write_bytes(bytes(out.written) if isinstance(out, _Unseekable) else out.getvalue())
    assert_same_trees(path, "zip", scratch / "out", exact_times=False)


# --- compressed streams, against gzip -d, xz -d, lzma -d, bzip2 -d and zstd -d -------------------

_COMPRESSORS = {
    "gzip": ("gunzip", gzip.compress),
    "xz": ("unxz", lzma.compress),
    "lzma": ("unxz", lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE)),  # xz's older format
    "bzip2": ("bunzip2", bz2.compress),
    "zstd": ("unzstd", lambda data: zstandard.ZstdCompressor(write_checksum=True).compress(data)),
}
#: The magic numbers of the formats other than gzip that `gzip -d` reads.
_GZIP_READS_TOO = (b"\x1f\x9d", b"\x1f\x1e", b"\x1f\xa0", b"\x1f\x9e", b"PK\x03\x04")
#: Pieces of a compressed file: a stream of some bytes, zero bytes (padding, or not), other bytes.
_PIECES = st.lists(st.one_of(st.tuples(st.just("stream"), st.binary(max_size=300)),
                             st.tuples(st.just("zeros"), st.integers(1, 9)),
                             st.tuples(st.just("other"), st.binary(min_size=1, max_size=8))),
                   min_size=1, max_size=5)


@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(codec=st.sampled_from(list(_COMPRESSORS)), pieces=_PIECES)
def test_compressed_streams_as_the_reference_tools_read_them(tmp_path_factory: pytest.TempPathFactory,
                                                            codec: str, pieces: list[tuple[str, Any]]) -> None:
    """Streams one after another, with zero bytes or other bytes between or after them: what the
    reference tool reads without a word of warning, the decompressor gives byte for byte; what it
    refuses or warns about (gzip's "trailing garbage", bzip2's "trailing garbage after EOF"), the
    decompressor refuses."""
    need(codec)
    word, compress = _COMPRESSORS[codec]
    if codec == "gzip":
        # gzip -d reads other formats too, where a member would start: compress's .Z, pack, LZH,
        # the old gzip and a zip of one file; gunzip reads gzip alone, and says what else it is.
        runs, run = [], b""  # the bytes between streams
        for kind, piece in pieces:
            if kind == "stream":
                runs.append(run)
                run = b""
            else:
                run += bytes(piece) if kind == "zeros" else piece
        assume(not any(between.startswith(_GZIP_READS_TOO) for between in [*runs, run]))
    data = b"".join(compress(piece) if kind == "stream" else bytes(piece) if kind == "zeros" else piece
                    for kind, piece in pieces)
    scratch = tmp_path_factory.mktemp("stream")
    (scratch / "input").write_bytes(data)
    reference = subprocess.run([codec, "-dc"], input=data, capture_output=True, timeout=60, check=False)
    (scratch / "dest").mkdir()
    (scratch / "work").mkdir()
    try:
        populate(parse_recipe([f"file:{scratch / 'input'}", word]), scratch / "dest", work=scratch / "work")
    except LoaderError:
        assert reference.returncode != 0 or reference.stderr, "refused what the reference tool reads"
        return
    assert reference.returncode == 0 and not reference.stderr, reference.stderr
    assert (scratch / "dest" / "input").read_bytes() == reference.stdout


#: The suffixes each reference tool drops from the name of a file it decompresses (or makes
#: ``.tar``), with the format read under them; gzip compares them in any case of letters.
_SUFFIXES = [*[("gzip", "gzip", suffix) for suffix in (".gz", ".tgz", ".taz", "-gz", "-z", "_z", ".z", ".Z", ".TGZ")],
             *[("bzip2", "bzip2", suffix) for suffix in (".bz2", ".bz", ".tbz2", ".tbz")],
             *[("xz", "xz", suffix) for suffix in (".xz", ".txz")], *[("xz", "lzma", suffix) for suffix in (".lzma", ".tlz")],
             *[("zstd", "zstd", suffix) for suffix in (".zst", ".zstd", ".tzst")]]


@pytest.mark.parametrize(("tool", "codec", "suffix"), _SUFFIXES)
def test_a_decompressed_file_is_named_as_the_reference_tool_names_it(tmp_path: Path, tool: str, codec: str,
                                                                     suffix: str) -> None:
    # The README said a decompressing word drops its suffix as gzip -d does; .taz, -gz, _z, .z,
    # .bz and .zstd were kept ("data.bz" held the decompressed bytes).
    need(tool)
    word, compress = _COMPRESSORS[codec]
    name, data = f"data{suffix}", compress(b"payload\n")
    for directory in ("input", "reference", "dest", "work"):
        (tmp_path / directory).mkdir()
    (tmp_path / "input" / name).write_bytes(data)
    (tmp_path / "reference" / name).write_bytes(data)
    run(tool, "-d", "--", name, cwd=tmp_path / "reference")
    made = [path.name for path in (tmp_path / "reference").iterdir() if path.name != name]  # (zstd keeps it)
    populate(parse_recipe([f"file:{tmp_path / 'input' / name}", word]), tmp_path / "dest", work=tmp_path / "work")
    assert [path.name for path in (tmp_path / "dest").iterdir()] == made


# --- sdists and wheels from PyPI ------------------------------------------------------------------


def corpus(kind: str, requirement: str) -> Path:
    """The sdist or wheel of ``requirement``, downloaded once into the corpus cache."""
    cache = Path(os.environ.get("SC_TEST_CORPUS") or Path.home() / ".cache" / "shared-cache-tests")
    folder = cache / kind / requirement
    found = sorted(folder.glob("*")) if folder.is_dir() else []
    if not found:
        # The sdist of the requirement alone: with ":all:", pip builds the backend that prepares
        # its metadata (setuptools, hatchling...) from sdists too, past the 120 s allowed on a busy machine.
        binary = ["--no-binary", requirement.partition("==")[0]] if kind == "sdist" else ["--only-binary", ":all:"]
        partial = cache / kind / f".{requirement}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                     "--disable-pip-version-check", *binary, "-d", str(partial), requirement],
                                    capture_output=True, text=True, timeout=120, check=False)
            failure = (result.stderr.strip().splitlines()[-1:] or ["no output"])[0] if result.returncode else None
        except subprocess.TimeoutExpired:
            failure = "pip took more than 120 s"
        if failure is not None:
            shutil.rmtree(partial, ignore_errors=True)
            pytest.skip(f"cannot download the {kind} of {requirement} from PyPI: {failure}")
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


# --- trees made at random, archived by GNU tar, bsdtar and zip -------------------------------------

_NAME = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="/\\"),
                min_size=1, max_size=12)
#: Long names too: past the 100 bytes of a tar name field, up to the 255 bytes a file system takes.
_LONG_NAME = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="/\\"),
                     min_size=90, max_size=130)
_NAMES = st.one_of(_NAME, _NAME, _NAME, _LONG_NAME).filter(
    lambda name: name not in (".", "..") and len(name.encode()) <= 255)
#: Modification times, in ns: before 1970, fractions of a second, and past what 11 octal digits hold.
_WHOLE_TIMES = [0, 1_600_000_000_123_456_789, -2_000_000_000, 8**11 * 10**9 + 999_999_999, 2**33 * 10**9 + 7,
                1_700_000_000_000_000_000]
_TIMES = [*_WHOLE_TIMES, -1_500_000_000, -315_532_800_250_000_000]  # and fractions before 1970
_SIZES = st.sampled_from([0, 1, 511, 512, 513, 10_240, 65_543])
_FILE_MODES = st.sampled_from([0o644, 0o755, 0o444, 0o700, 0o4755])
_DIR_MODES = st.sampled_from([0o755, 0o700, 0o555])


def _steps(times: list[int]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """What :func:`build_tree` makes, with modification times from ``times``."""
    step = st.one_of(
        st.tuples(st.just("dir"), st.integers(0, 20), _NAMES, _DIR_MODES, st.sampled_from(times)),
        st.tuples(st.just("file"), st.integers(0, 20), _NAMES, _FILE_MODES, st.sampled_from(times), _SIZES),
        st.tuples(st.just("symlink"), st.integers(0, 20), _NAMES, st.integers(0, 40)),
        st.tuples(st.just("hardlink"), st.integers(0, 20), _NAMES, st.integers(0, 40)),
    )
    return st.lists(step, max_size=30)


def build_tree(root: Path, steps: list[tuple[Any, ...]]) -> None:
    """Make ``steps`` under ``root``: each puts a directory, file, symlink or hard link in a
    directory made before (chosen by index); a name already taken skips the step.  A symlink
    leads to an entry made before, or to a name that does not exist, always inside the tree; a
    hard link is to a file or a symlink made before.  Modes and times are set last, children
    before parents."""
    root.mkdir()
    directories, entries = [root], []
    finishing: list[tuple[Path, int | None, int]] = []
    for kind, where, name, *rest in steps:
        parent = directories[where % len(directories)]
        path = parent / name
        if os.path.lexists(path):
            continue
        if kind == "dir":
            mode, when = rest
            path.mkdir()
            directories.append(path)
            finishing.append((path, mode, when))
        elif kind == "file":
            mode, when, size = rest
            seed = hashlib.sha256(str(path).encode()).digest()
            path.write_bytes((seed * (size // len(seed) + 1))[:size])
            finishing.append((path, mode, when))
        elif kind == "symlink":
            (choice,) = rest
            target = entries[choice % len(entries)] if entries and choice % 4 else parent / "nothing"
            path.symlink_to(os.path.relpath(target, parent))
            finishing.append((path, None, 1_600_000_000 * 10**9))
        else:  # a hard link to a file or to a symlink (as `cp -al` makes them)
            (choice,) = rest
            files = [entry for entry in entries if entry.is_symlink() or entry.is_file()]
            if not files:
                continue
            linked = files[choice % len(files)]
            if linked.is_symlink():  # beside it: its target means the same there
                path = linked.parent / name
                if os.path.lexists(path):
                    continue
            os.link(linked, path, follow_symlinks=False)
        entries.append(path)
    for path, mode, when in sorted(finishing, key=lambda item: len(item[0].parts), reverse=True):
        if mode is not None:
            path.chmod(mode)
        os.utime(path, ns=(when, when), follow_symlinks=False)


def writers_from_the_first_member(wanted: bool) -> contextlib.AbstractContextManager[None]:
    """If ``wanted``, the writer processes take over at the first member (where this machine has
    them), not only in archives of thousands of small files."""
    return writers_past(0) if wanted else contextlib.nullcontext()


@pytest.mark.timeout(600)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps(_TIMES), fmt=st.sampled_from(["gnu", "oldgnu", "posix"]),
       writer_processes=st.booleans())
def test_gnu_tar_archives_of_trees_made_at_random(tmp_path_factory: pytest.TempPathFactory,
                                                   steps: list[tuple[Any, ...]], fmt: str,
                                                   writer_processes: bool) -> None:
    """Unpacked in one process, or by the writer processes from the first member on (where this
    machine has them: by default only archives of thousands of members fork)."""
    need("tar")
    scratch = tmp_path_factory.mktemp("random")
    build_tree(scratch / "tree", steps)
    archive = scratch / "tree.tar"
    run("tar", "-cf", archive, f"--format={fmt}", "-C", scratch / "tree", ".")
    with writers_from_the_first_member(writer_processes):
        # Only pax headers carry times below the second; the others round them down, for both.
        assert_same_trees(archive, "tar", scratch / "out", exact_times=fmt == "posix")


@pytest.mark.timeout(600)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps(_WHOLE_TIMES), fmt=st.sampled_from(["pax", "gnutar"]))
def test_bsdtar_archives_of_trees_made_at_random(tmp_path_factory: pytest.TempPathFactory,
                                                 steps: list[tuple[Any, ...]], fmt: str) -> None:
    """Archives as macOS's tar (libarchive's bsdtar) makes them, against bsdtar's own unpacking:
    it lists a directory before entries that are not in it, and then GNU tar, which restores a
    directory's time once it has left it, leaves the time of the directory's later entries.

    Without fractions of a second before 1970: bsdtar writes -1.5 s as "mtime=-2.5" (the
    seconds, then the nanoseconds after them), and reads it back as -1.5 s; by the pax format it
    is -2.5 s, which GNU tar and `tar` make of it."""
    need("bsdtar")
    scratch = tmp_path_factory.mktemp("random")
    build_tree(scratch / "tree", steps)
    archive = scratch / "tree.tar"
    run("bsdtar", "-cf", archive, f"--format={fmt}", "-C", scratch / "tree", ".")
    assert_same_trees(archive, "tar", scratch / "out", exact_times=fmt == "pax", reference="bsdtar")


#: What a zip's extended timestamp (Unix seconds, 32 bits) and its DOS time (from 1980) both hold.
_ZIP_TIMES = st.sampled_from([315_532_800 * 10**9, 1_600_000_000_123_456_789, 2_000_000_001 * 10**9])


@pytest.mark.timeout(600)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps(_WHOLE_TIMES), when=_ZIP_TIMES,
       options=st.sampled_from([[], ["-mx0"], ["-mm=Deflate64"], ["-mcu=on"], ["-mtc=on"]]))
def test_7zip_archives_of_trees_made_at_random(tmp_path_factory: pytest.TempPathFactory,
                                               steps: list[tuple[Any, ...]], when: int, options: list[str]) -> None:
    """Made with 7-Zip's defaults, stored (-mx0), with Deflate64, with UTF-8 names flagged (-mcu),
    or with the NTFS field of times (-mtc)."""
    need("7zz", "unzip")
    assume(not any(";" in step[2] for step in steps))  # unzip's VMS versions: see the test below
    scratch = tmp_path_factory.mktemp("random")
    build_tree(scratch / "tree", steps)
    assume(any((scratch / "tree").iterdir()))  # 7-Zip makes no archive of nothing
    for directory, names, files, _ in os.fwalk(scratch / "tree"):
        for name in names + files:
            os.utime(os.path.join(directory, name), ns=(when, when), follow_symlinks=False)
    archive = scratch / "tree.zip"
    run("7zz", "a", "-tzip", "-snl", "-bso0", "-bsp0", *options, archive, ".", cwd=scratch / "tree")
    assert_same_trees(archive, "zip", scratch / "out", exact_times=False)


@pytest.mark.timeout(600)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps(_TIMES), when=_ZIP_TIMES,
       options=st.sampled_from([[], ["-D"], ["-0"], ["-X"], ["-fz"], ["-D", "-X", "-9"]]),
       writer_processes=st.booleans())
def test_info_zip_archives_of_trees_made_at_random(tmp_path_factory: pytest.TempPathFactory,
                                                   steps: list[tuple[Any, ...]], when: int,
                                                   options: list[str], writer_processes: bool) -> None:
    """Made with zip's defaults, or without directory entries (-D), stored (-0), without the
    extra fields of times and owners (-X), or as Zip64 (-fz); unpacked in one process, or by the
    writer processes from the first member on (where this machine has them)."""
    need("zip", "unzip")
    # unzip takes a name's last ";" and the digits after it for a VMS version and drops them ("a;1"
    # and "a;2" both make "a", one file); the archive holds the whole name, and `zip` keeps it.
    # And Info-ZIP's zip takes a file named "-" for its standard input, which it records with the
    # input's type, a character device here: unzip makes an empty file of it, `zip` refuses it as
    # it refuses any device.
    assume(not any(";" in step[2] or step[2] == "-" for step in steps))
    scratch = tmp_path_factory.mktemp("random")
    build_tree(scratch / "tree", steps)
    # zip makes no archive of nothing, nor with -D of directories alone, and with -fz of them it
    # makes one that unzip cannot read ("missing 4294967215 bytes in zipfile")
    assume(any(not path.is_dir() or path.is_symlink() or not {"-D", "-fz"} & set(options)
               for path in (scratch / "tree").rglob("*")))
    for directory, names, files, _ in os.fwalk(scratch / "tree"):
        for name in names + files:
            os.utime(os.path.join(directory, name), ns=(when, when), follow_symlinks=False)
    archive = scratch / "tree.zip"
    run("zip", "-q", "-r", "-y", *options, archive, ".", cwd=scratch / "tree")  # -y: symlinks as links
    with writers_from_the_first_member(writer_processes):
        assert_same_trees(archive, "zip", scratch / "out", exact_times=False)
