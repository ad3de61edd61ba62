"""Hostile archives and decompression bombs: each is refused with one line, writing nothing outside
the repository and committing nothing.

The archives are crafted here with tarfile and zipfile (and a few raw headers), so that every case
says what it is.  Most go through ``parse_recipe(...).populate``; the corpus also goes through
:func:`sharedcache.use` (nothing committed, no staging left) and part of it through the command line.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

import sharedcache
from sharedcache.loaders import archives, codecs
from sharedcache.errors import QUOTED_CHARACTERS, CorruptDataError, LoaderError, SizeLimitError, UnsafeArchiveError
from sharedcache.loaders.pipeline import populate
from sharedcache.loaders.registry import parse_recipe
from scutil import SRC, control, deflate64_zip, sc, user_dir

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


# --- crafting archives ----------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def member(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644,
           content: bytes = b"", **fields: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    for field, value in fields.items():
        setattr(info, field, value)
    return info, content if kind == tarfile.REGTYPE else None


def tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def raw_header(kind: bytes, payload: bytes, name: str = "././@PaxHeader") -> bytes:
    """An extended header (pax, GNU long name) and its data, as bytes, whatever the payload."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(payload)
    return info.tobuf(tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % tarfile.BLOCKSIZE)


def plain(name: str, content: bytes = b"") -> bytes:
    """One regular member as raw ustar bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info.tobuf(tarfile.USTAR_FORMAT) + content + b"\0" * (-len(content) % tarfile.BLOCKSIZE)


END = b"\0" * 2 * tarfile.BLOCKSIZE


def pax(*records: tuple[str, str]) -> bytes:
    """A pax header's data: records ``LENGTH KEYWORD=VALUE\\n``."""
    out = b""
    for keyword, value in records:
        body = f" {keyword}={value}\n".encode()
        length = len(body) + len(str(len(body)))
        length += len(str(length)) - len(str(len(body)))
        out += str(length).encode() + body
    return out


def zip_of(*entries: tuple[str, bytes, int], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``(name, content, unix mode with file type)`` entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = method
            archive.writestr(info, content)
    return buffer.getvalue()


def zeros(codec: str, size: int) -> bytes:
    """``size`` zero bytes compressed with ``codec``, made a chunk at a time."""
    compressor = {
        "gzip": lambda: zlib.compressobj(9, zlib.DEFLATED, 31),
        "bzip2": bz2.BZ2Compressor,
        "xz": lzma.LZMACompressor,
        "zstd": lambda: zstandard.ZstdCompressor().compressobj(),
    }[codec]()
    chunk = bytes(MiB)
    out = [compressor.compress(chunk) for _ in range(size // MiB)]
    return b"".join(out) + compressor.compress(bytes(size % MiB)) + compressor.flush()


DECOMPRESSOR = {"gzip": "gunzip", "bzip2": "bunzip2", "xz": "unxz", "zstd": "unzstd"}
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data)}


# --- running them ---------------------------------------------------------------------------------


class Box:
    """tmp_path laid out as: in/ (the archives), outside/ (what links aim at), box/{dest,work}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inputs, self.outside = root / "in", root / "outside"
        self.dest, self.work = root / "box" / "dest", root / "box" / "work"
        for directory in (self.inputs, self.outside, self.dest, self.work):
            directory.mkdir(parents=True)

    def put(self, name: str, data: bytes) -> str:
        (self.inputs / name).write_bytes(data)
        return f"file:{self.inputs / name}"

    def outside_box(self) -> set[str]:
        return {str(path.relative_to(self.root)) for top in self.root.iterdir() if top.name != "box"
                for path in (top, *top.rglob("*"))}

    def populate(self, *words: str, limit: int | None = None) -> Path:
        populate(parse_recipe(words), self.dest, work=self.work, limit=limit)
        return self.dest

    def refused(self, data: bytes, unpacker: str, *, limit: int | None = None,
                expected: type[LoaderError] = UnsafeArchiveError) -> str:
        """Populate from ``data``; check that it fails with ``expected`` and touches nothing outside
        the box; return the message."""
        source = self.put(f"input.{unpacker}", data)
        before = self.outside_box()
        with pytest.raises(LoaderError) as caught:
            self.populate(source, unpacker, limit=limit)
        assert type(caught.value) is expected, caught.value
        message = str(caught.value)
        assert "\n" not in message and "\r" not in message
        assert len(message) < len(str(self.inputs)) + 2 * QUOTED_CHARACTERS + 200, message  # one readable line
        assert self.outside_box() == before
        assert not any(self.outside.iterdir())
        assert not any(self.work.iterdir())
        return message


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


# --- the corpus -----------------------------------------------------------------------------------

# Each case: (unpacker, the archive given the absolute path of outside/, the error, its message).
Case = tuple[str, Callable[[str], bytes], type[LoaderError], str]


def _tar_cases() -> dict[str, Case]:
    def refused(*members: Member, why: str) -> Case:
        return "tar", lambda outside: tar(member("fine.txt", content=b"ok"), *members), \
            UnsafeArchiveError, why

    def through(outside: str) -> bytes:  # the classic: a link, then a file written through it
        return tar(member("a", tarfile.SYMTYPE, link=outside), member("a/evil", content=b"x"))

    return {
        "dot-dot": refused(member("../evil", content=b"x"), why="has a '..' component"),
        "dot-dot deep": refused(member("a/b/../../../evil", content=b"x"), why="has a '..' component"),
        "absolute": refused(member("/tmp/evil", content=b"x"), why="has an absolute path"),
        "symlink absolute, then a file through it": ("tar", through, UnsafeArchiveError,
                                                     "is a symlink to '/.*', outside the archive"),
        "symlink up": refused(member("a", tarfile.SYMTYPE, link="../outside"), why="outside the archive"),
        "symlink up from a subdirectory": refused(
            member("a/b/c", tarfile.SYMTYPE, link="../../../outside"), why="outside the archive"),
        "symlink to a directory inside, then a file through it": refused(
            member("d", tarfile.DIRTYPE, mode=0o755), member("a", tarfile.SYMTYPE, link="d"),
            member("a/evil", content=b"x"), why="would be written through the symlink 'a'"),
        "symlink to the top, then '..' through it": refused(
            member("d/up", tarfile.SYMTYPE, link=".."), member("d/up/../../evil", content=b"x"),
            why="has a '..' component"),
        "symlink to the top, then a file through it": refused(
            member("d/up", tarfile.SYMTYPE, link=".."), member("d/up/evil", content=b"x"),
            why="would be written through the symlink 'd/up'"),
        "dangling symlink inside, its target made later, then a file through it": refused(
            member("a", tarfile.SYMTYPE, link="b"), member("b", tarfile.DIRTYPE, mode=0o755),
            member("a/evil", content=b"x"), why="would be written through the symlink 'a'"),
        "symlink chain escaping": refused(
            member("a", tarfile.SYMTYPE, link="x/../outside"), member("x", tarfile.SYMTYPE, link="."),
            why="is a symlink that leads outside the archive"),
        # tarfile cuts names at a NUL, but a pax linkpath can hold one (os.symlink raises ValueError).
        "symlink with a NUL in its target": refused(
            member("a", tarfile.SYMTYPE, link="b", pax_headers={"linkpath": "b\0c"}),
            why="is a symlink whose target has a NUL byte"),
        "hard link absolute": ("tar", lambda outside: tar(member("h", tarfile.LNKTYPE, link=f"{outside}/x")),
                               UnsafeArchiveError, "is a hard link to '/.*', outside the archive"),
        "hard link up": refused(member("h", tarfile.LNKTYPE, link="../outside/x"), why="outside the archive"),
        # A hard link to a symlink is the symlink again, judged where the link stands.
        "hard link to a symlink, leading out from where it is": refused(
            member("a/b/s", tarfile.SYMTYPE, link="../x"), member("h", tarfile.LNKTYPE, link="a/b/s"),
            why="is a symlink to '../x', outside the archive"),
        "hard link to a symlink to a directory inside, then a file through it": refused(
            member("d", tarfile.DIRTYPE, mode=0o755), member("s", tarfile.SYMTYPE, link="d"),
            member("h", tarfile.LNKTYPE, link="s"), member("h/evil", content=b"x"),
            why="would be written through the symlink 'h'"),
        "hard link through a symlinked directory": refused(
            member("d/f", content=b"x"), member("l", tarfile.SYMTYPE, link="d"),
            member("h", tarfile.LNKTYPE, link="l/f"), why="which is not a file extracted before it"),
        "hard link to a directory": refused(
            member("d", tarfile.DIRTYPE), member("h", tarfile.LNKTYPE, link="d"),
            why="which is not a file extracted before it"),
        "hard link to a later member": refused(
            member("h", tarfile.LNKTYPE, link="later"), member("later", content=b"x"),
            why="which is not a file extracted before it"),
        "character device": refused(member("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
                                    why="is a device file"),
        "block device": refused(member("sda", tarfile.BLKTYPE, devmajor=8), why="is a device file"),
        "fifo": refused(member("pipe", tarfile.FIFOTYPE), why="is a FIFO"),
        "unknown member type, outside": refused(member("../odd", b"Z"), why="has a '..' component"),
        "file over a directory": refused(member("d/x", content=b"x"), member("d", content=b"y"),
                                         why="would replace a directory"),
        "symlink over a directory": refused(member("d/x", content=b"x"),
                                            member("d", tarfile.SYMTYPE, link="../outside"),
                                            why="outside the archive"),
        "directory over a symlink": refused(member("l", tarfile.SYMTYPE, link="."),
                                            member("l", tarfile.DIRTYPE), why="through the symlink 'l'"),
        "a newline in a name": refused(member("x\n../../evil", content=b"x"), why=r"'x\\n\.\./\.\./evil'"),
        "negative size": ("tar", lambda outside: tar(member("n", content=b"", pax_headers={"size": "-1"})),
                          UnsafeArchiveError, "has a negative size"),
    }


def _header_cases() -> dict[str, Case]:
    """Headers that would make tarfile slow, greedy or wrong, and archives that are cut or damaged."""
    files = plain("a", b"x" * 1000) + plain("b", b"y" * 1000)
    quadratic_framing = pax(("path", "p")) + b"2 " * 40_000 + b"a=b\n"  # CVE-2024-6232
    runs = ("7" * 64 + "x") * 20  # quadratic in tarfile's search for hdrcharset, run by run
    unsafe, corrupt = UnsafeArchiveError, CorruptDataError
    return {
        "pax records badly framed": ("tar", lambda _: raw_header(tarfile.XHDTYPE, quadratic_framing)
                                     + plain("f") + END, corrupt, "a malformed pax header at byte 0"),
        "pax digits in a row": ("tar", lambda _: raw_header(tarfile.XHDTYPE, pax(("comment", "7" * 100_000)))
                                + plain("f") + END, unsafe, "a pax header with long runs of digits"),
        "pax many runs of digits": ("tar", lambda _: raw_header(tarfile.XHDTYPE, pax(("comment", runs)))
                                    + plain("f") + END, unsafe, "a pax header with long runs of digits"),
        "pax header too large": ("tar", lambda _: raw_header(tarfile.XHDTYPE, pax(("comment", "x" * MiB)))
                                 + plain("f") + END, unsafe, "an extended header of 1.0 MiB, more than 256.0 KiB"),
        "GNU long name too large": ("tar", lambda _: raw_header(tarfile.GNUTYPE_LONGNAME, b"n" * MiB, "././@LongLink")
                                    + plain("f") + END, unsafe, "an extended header of 1.0 MiB"),
        "extended headers in a long chain": ("tar", lambda _: raw_header(tarfile.XHDTYPE, pax(("comment", "c"))) * 9
                                             + plain("f") + END, unsafe, "more than 8 extended headers in a row"),
        "global pax records piling up": ("tar", lambda _: b"".join(
            raw_header(tarfile.XGLTYPE, pax(*((f"k{i}.{j}", "v") for j in range(10)))) + plain(f"f{i}")
            for i in range(7)) + END, unsafe, "more than 64 global pax records"),
        "sparse file, GNU pax 1.0": ("tar", lambda _: tar(member("s", content=b"", pax_headers={
            "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s",
            "GNU.sparse.realsize": str(10**12)})), unsafe, "it holds a sparse file, which is not supported"),
        "sparse file, old GNU": ("tar", lambda _: tar(member("s", tarfile.GNUTYPE_SPARSE), fmt=tarfile.GNU_FORMAT),
                                 unsafe, "it holds a sparse file"),
        "cut at a member boundary": ("tar", lambda _: files, corrupt, "ends without an end-of-archive marker"),
        "cut inside a header": ("tar", lambda _: files + plain("c")[:300], corrupt, "truncated header at byte 3072"),
        "cut inside a member": ("tar", lambda _: files[:1500], corrupt, "unexpected end of data"),
        "damaged header": ("tar", lambda _: files[:1536] + b"\xff" * 512 + files[2048:] + END, corrupt,
                           "bad checksum at byte 1536"),
        "empty": ("tar", lambda _: b"", corrupt, "empty file"),
    }


def _zip_cases() -> dict[str, Case]:
    regular, link = stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777

    def refused(*entries: tuple[str, bytes, int], why: str) -> Case:
        return "zip", lambda outside: zip_of(("fine.txt", b"ok", regular), *entries), UnsafeArchiveError, why

    return {
        "zip slip": refused(("../evil", b"x", regular), why="has a '..' component"),
        "zip slip deep": refused(("a/../../evil", b"x", regular), why="has a '..' component"),
        "zip absolute": refused(("/tmp/evil", b"x", regular), why="has an absolute path"),
        "zip symlink absolute, then a file through it": ("zip", lambda outside: zip_of(
            ("a", outside.encode(), link), ("a/evil", b"x", regular)), UnsafeArchiveError, "outside the archive"),
        "zip symlink up": refused(("a", b"../outside", link), why="outside the archive"),
        "zip symlink inside, then a file through it": refused(
            ("d/", b"", stat.S_IFDIR | 0o755), ("a", b"d", link), ("a/evil", b"x", regular),
            why="would be written through the symlink 'a'"),
        "zip symlink chain escaping": refused(("a", b"x/../outside", link), ("x", b".", link),
                                              why="leads outside the archive"),
        "zip symlink with a NUL": refused(("a", b"b\0c", link), why="whose target has a NUL byte"),
        "zip symlink with a huge target": refused(("a", b"a/" * 4000, link), why="implausibly long target"),
        "zip character device": refused(("null", b"", stat.S_IFCHR | 0o666), why="is a device file"),
        "zip block device": refused(("sda", b"", stat.S_IFBLK | 0o660), why="is a device file"),
        "zip fifo": refused(("pipe", b"", stat.S_IFIFO | 0o644), why="is a FIFO"),
        "zip socket": refused(("sock", b"", stat.S_IFSOCK | 0o644), why="is a special file"),
    }


CORPUS: dict[str, Case] = {**_tar_cases(), **_header_cases(), **_zip_cases()}


@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_archive_is_refused(box: Box, case: str) -> None:
    unpacker, build, error, why = CORPUS[case]
    message = box.refused(build(str(box.outside)), unpacker, expected=error)
    assert re.search(why, message), message


@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_archive_is_never_committed(tmp_path: Path, case: str) -> None:
    unpacker, build, error, _ = CORPUS[case]
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (tmp_path / "input").write_bytes(build(str(outside)))
    with pytest.raises(error):
        with sharedcache.use(f"file:{tmp_path / 'input'}", unpacker, name="repo", directories=[base]):
            pass
    assert not (user_dir(base) / "repo").exists() and not (user_dir(base) / "repo").is_symlink()
    assert not any((control(base) / "stage").iterdir())
    assert not any(outside.iterdir())


@pytest.mark.parametrize("case", ["dot-dot", "symlink absolute, then a file through it", "zip slip",
                                  "pax records badly framed"])
def test_hostile_archive_from_the_command_line(tmp_path: Path, case: str) -> None:
    unpacker, build, _, _ = CORPUS[case]
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (tmp_path / "input").write_bytes(build(str(outside)))
    result = sc("--use", "-n", "repo", "-d", str(base), f"file:{tmp_path / 'input'}", unpacker)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("sc: error: repository 'repo': ")
    assert not (user_dir(base) / "repo").exists() and not (user_dir(base) / "repo").is_symlink()
    assert not any((control(base) / "stage").iterdir())
    assert not any(outside.iterdir())


# --- what is not refused, but made safe -----------------------------------------------------------


def test_special_mode_bits_are_stripped(box: Box) -> None:
    archive = tar(member("bin", tarfile.DIRTYPE, mode=0o7777),
                  member("bin/suid", mode=0o4755, content=b"x"),
                  member("bin/sgid", mode=0o2755, content=b"x"),
                  member("bin/sticky-writable", mode=0o1777, content=b"x"),
                  member("shared", tarfile.DIRTYPE, mode=0o3777))
    dest = box.populate(box.put("modes.tar", archive), "tar")
    modes = {name: stat.S_IMODE((dest / name).stat().st_mode)
             for name in ("bin", "bin/suid", "bin/sgid", "bin/sticky-writable", "shared")}
    assert modes == {"bin": 0o755, "bin/suid": 0o755, "bin/sgid": 0o755, "bin/sticky-writable": 0o755,
                     "shared": 0o755}


def test_zip_special_mode_bits_are_stripped(box: Box) -> None:
    archive = zip_of(("suid", b"x", stat.S_IFREG | 0o6777), ("d/", b"", stat.S_IFDIR | 0o1777))
    dest = box.populate(box.put("modes.zip", archive), "zip")
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o755


def test_later_members_replace_links_without_writing_through_them(box: Box) -> None:
    archive = tar(member("f", content=b"original"),
                  member("sym", tarfile.SYMTYPE, link="f"), member("sym", content=b"replaces the symlink"),
                  member("hard", tarfile.LNKTYPE, link="f"), member("hard", content=b"replaces the hard link"),
                  member("twice", tarfile.SYMTYPE, link="f"), member("twice", tarfile.SYMTYPE, link="hard"))
    dest = box.populate(box.put("dup.tar", archive), "tar")
    assert (dest / "f").read_bytes() == b"original"
    assert not (dest / "sym").is_symlink() and (dest / "sym").read_bytes() == b"replaces the symlink"
    assert (dest / "hard").read_bytes() == b"replaces the hard link"
    assert (dest / "hard").stat().st_ino != (dest / "f").stat().st_ino
    assert os.readlink(dest / "twice") == "hard"


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_duplicate_entries_replace_a_symlink(box: Box) -> None:
    archive = zip_of(("f", b"original", stat.S_IFREG | 0o644), ("l", b"f", stat.S_IFLNK | 0o777),
                     ("l", b"now a file", stat.S_IFREG | 0o644))
    dest = box.populate(box.put("dup.zip", archive), "zip")
    assert (dest / "f").read_bytes() == b"original"
    assert not (dest / "l").is_symlink() and (dest / "l").read_bytes() == b"now a file"


# --- chains of links -----------------------------------------------------------------------------


def chain(count: int, prefix: str, end: str) -> list[tuple[str, str]]:
    """``count`` symlinks, each to the next: ``<prefix>0 -> <prefix>1 -> ... -> end``."""
    return [(f"{prefix}{i}", f"{prefix}{i + 1}" if i + 1 < count else end) for i in range(count)]


@pytest.mark.parametrize("unpacker", ["tar", "zip"])
def test_a_chain_of_links_longer_than_the_kernel_follows_is_unpacked(box: Box, unpacker: str) -> None:
    """As GNU tar and unzip unpack it: the check of where the links lead follows the chain to
    its end, without recursion (Python's realpath recursed for each link: RecursionError, an
    internal error that left the population's work directory behind)."""
    links = chain(2000, "l", "f")
    archive = (tar(member("f", content=b"x\n"), *(member(name, tarfile.SYMTYPE, link=to) for name, to in links))
               if unpacker == "tar" else
               zip_of(("f", b"x\n", stat.S_IFREG | 0o644),
                      *((name, to.encode(), stat.S_IFLNK | 0o777) for name, to in links)))
    dest = box.populate(box.put(f"chain.{unpacker}", archive), unpacker)
    assert all(os.readlink(dest / name) == to for name, to in links)
    assert (dest / "l1990").read_bytes() == b"x\n"  # (the kernel follows 40 links, no more)


@pytest.mark.parametrize("unpacker", ["tar", "zip"])
def test_a_dangling_link_to_a_name_too_long_for_the_file_system_is_kept(box: Box, unpacker: str) -> None:
    """As GNU tar keeps it: its target names nothing (the look-up of a 300-byte name fails with
    ENAMETOOLONG, which failed the archive as data that could not be written)."""
    target = "a" * 300
    archive = (tar(member("l", tarfile.SYMTYPE, link=target)) if unpacker == "tar" else
               zip_of(("l", target.encode(), stat.S_IFLNK | 0o777)))
    dest = box.populate(box.put(f"long.{unpacker}", archive), unpacker)
    assert os.readlink(dest / "l") == target


def test_links_into_a_long_chain_are_each_resolved_once(box: Box) -> None:
    """3000 links to the head of a chain of 900 cost what 3900 links do, not 3000 walks of the
    chain (some 10 s, 3.5 ms each: minutes for an archive of 100 KB).  Counted in look-ups of
    the tree (os.lstat), by one process doing it all (bound to one CPU, as the unpacker's writer
    processes are not started)."""
    members = [member("f", content=b"x\n"), *(member(name, tarfile.SYMTYPE, link=to) for name, to in chain(900, "c", "f")),
               *(member(f"l/{i}", tarfile.SYMTYPE, link="../c0") for i in range(3000))]
    source = box.put("fan.tar", tar(*members))
    script = ("import os, sys\n"
              "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
              "from sharedcache.loaders.pipeline import populate\n"
              "from sharedcache.loaders.registry import parse_recipe\n"
              "lstat, calls = os.lstat, [0]\n"
              "def counted(*args, **kwargs):\n"
              "    calls[0] += 1\n"
              "    return lstat(*args, **kwargs)\n"
              "os.lstat = counted\n"
              "populate(parse_recipe(sys.argv[1:3]), sys.argv[3], work=sys.argv[4])\n"
              "print(calls[0])\n")
    result = subprocess.run([sys.executable, "-c", script, source, "tar", box.dest, box.work],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=50)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 5 * len(members), "the links were resolved again for each link into the chain"
    assert (box.dest / "l" / "0").is_symlink() and os.readlink(box.dest / "c899") == "f"


def test_names_too_long_for_the_file_system(box: Box) -> None:
    message = box.refused(tar(member("n" * 300, content=b"x")), "tar", expected=LoaderError)
    assert message.startswith("cannot write the data of ") and "File name too long" in message
    # Past PATH_MAX (4 KiB) across directories: the message shows the path's two ends and its length.
    deep = "/".join(["d" * 200] * 23) + "/file"
    message = box.refused(tar(member(deep, content=b"x")), "tar", expected=LoaderError)
    assert "File name too long ('ddd" in message and " characters))" in message
    assert "(None)" not in message


@pytest.mark.parametrize("unpacker", ["tar", "zip"])
def test_a_huge_refused_name_is_shown_by_its_two_ends(box: Box, unpacker: str) -> None:
    name = "start-" + "x" * 60_000 + "/../../end-of-the-name"  # a zip name has at most 65,535 bytes
    archive = tar(member(name, content=b"x")) if unpacker == "tar" else zip_of((name, b"x", stat.S_IFREG | 0o644))
    message = box.refused(archive, unpacker)
    assert message.endswith(f"'start-{'x' * 74}…{'x' * 58}/../../end-of-the-name' ({len(name):,} characters) "
                            "has a '..' component"), message


# --- many members ---------------------------------------------------------------------------------


def empty_members(count: int) -> Iterator[bytes]:
    """``count`` empty regular members ``d<i % 100>/f<i>``, as raw headers made quickly."""
    template = bytearray(tarfile.TarInfo("").tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8  # the checksum counts its own field as spaces
    base = sum(template)
    for i in range(count):
        name = b"d%d/f%d" % (i % 100, i)
        header = template.copy()
        header[: len(name)] = name
        header[148:156] = b"%06o\0 " % (base + sum(name))
        yield bytes(header)


@pytest.mark.timeout(150)
def test_200000_empty_members_in_bounded_memory(box: Box) -> None:
    """Within the entry cap: unpacked at the file system's pace, in constant memory."""
    path = box.inputs / "many.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        headers = empty_members(200_000)
        while batch := b"".join(itertools.islice(headers, 10_000)):
            out.write(batch)
        out.write(END)
    # The peak of this process's own memory: VmHWM.  (ru_maxrss would include the RSS of the
    # process that started it, which Linux carries across exec: pytest's, late in a long run.)
    script = ("import sys\n"
              "from sharedcache.loaders.pipeline import populate\n"
              "from sharedcache.loaders.registry import parse_recipe\n"
              "populate(parse_recipe(sys.argv[1:3]), sys.argv[3], work=sys.argv[4])\n"
              "status = open('/proc/self/status').read()\n"
              "print(status.split('VmHWM:')[1].split()[0])\n")
    # (A guard against a hang, not a measure of speed: about 10 s alone, more than 50 s beside two
    # busy loops and the suite's other worker on two cores.)
    result = subprocess.run([sys.executable, "-c", script, f"file:{path}", "tar", box.dest, box.work],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 150 * 1024  # KiB: the interpreter alone takes some 30 MiB
    assert sum(len(files) for _, _, files in os.walk(box.dest)) == 200_000
    shutil.rmtree(box.dest)  # rather than leave 200,000 inodes to pytest's retention


def test_entry_cap(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_ENTRIES", 1000)
    dest = box.populate(box.put("at-cap.tar", b"".join(empty_members(900)) + END), "tar")  # 900 + 100 dirs
    assert sum(len(files) for _, _, files in os.walk(dest)) == 900
    message = Box(box.root / "again").refused(b"".join(empty_members(901)) + END, "tar")
    assert message.endswith(": more than 1000 entries (members and the directories of their paths)")


def test_entry_cap_counts_the_directories_of_a_deep_path(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_ENTRIES", 100)
    deep = "/".join(["d"] * 100) + "/file"
    assert "more than 100 entries" in box.refused(tar(member(deep, content=b"x")), "tar")


def test_zip_entry_cap_is_checked_before_the_directory_is_loaded(
        box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    # More than 65535 entries: the count comes from the zip64 end records.
    many = zip_of(*((f"f{i}", b"", stat.S_IFREG | 0o644) for i in range(70_000)), method=zipfile.ZIP_STORED)
    prefixed = b"#!/bin/sh\nexit 0\n" + many  # a self-extracting archive: the offsets are off by this
    assert archives._zip_entries(Path(box.put("many.zip", prefixed)[5:])) == 70_000
    monkeypatch.setattr(archives, "MAX_ENTRIES", 69_999)
    opened: list[object] = []
    monkeypatch.setattr(zipfile, "ZipFile", lambda *args: opened.append(args))
    assert box.refused(prefixed, "zip").endswith(": more than 69999 members")
    assert not opened  # refused before zipfile read the directory


@pytest.mark.parametrize("codec", list(DECOMPRESSOR))
def test_a_compressed_archive_of_nothing_says_it_holds_no_tar_data(box: Box, codec: str) -> None:
    # It was refused as an "empty file", which the compressed file it names is not.
    message = box.refused(COMPRESS[codec](b""), "tar", expected=CorruptDataError)
    assert message.endswith(f": it holds no tar data (its {codec} data decompresses to nothing)"), message


# --- decompression bombs --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(DECOMPRESSOR))
def test_bomb_past_the_size_limit(tmp_path: Path, codec: str) -> None:
    single = Box(tmp_path / "single").refused(zeros(codec, 3 * MiB), DECOMPRESSOR[codec], limit=MiB,
                                              expected=SizeLimitError)
    archive = COMPRESS[codec](tar(member("zeros", content=bytes(3 * MiB))))
    unpacked = Box(tmp_path / "tar").refused(archive, "tar", limit=MiB, expected=SizeLimitError)
    assert single.endswith("holds more than the limit of 1.0 MiB") and unpacked.endswith("1.0 MiB")


@pytest.mark.parametrize("codec", list(DECOMPRESSOR))
@pytest.mark.parametrize("unpacker", ["single file", "tar"])
def test_bomb_without_a_limit_hits_the_expansion_cap(box: Box, monkeypatch: pytest.MonkeyPatch, codec: str,
                                                     unpacker: str) -> None:
    # A small floor keeps this fast; test_expansion_cap_for_real uses the real one.  (gzip's best is
    # about 1030 times, so its zeros pass the cap of 1000 only just: real gzip bombs are nested.)
    monkeypatch.setattr(codecs, "EXPANSION_FLOOR", MiB)
    bomb = COMPRESS[codec](tar(member("zeros", content=bytes(8 * MiB)))) if unpacker == "tar" else zeros(codec, 8 * MiB)
    message = box.refused(bomb, "tar" if unpacker == "tar" else DECOMPRESSOR[codec])
    assert "expands more than 1000 times" in message and message.endswith("a likely decompression bomb")


@pytest.mark.parametrize("codec", list(DECOMPRESSOR))
@pytest.mark.parametrize("unpacker", ["single file", "tar"])
def test_blank_image_passes_the_cap_within_twice_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           codec: str, unpacker: str) -> None:
    """Data that is mostly one byte (a blank disk image) expands past the ratio, and its user knows
    it: given its size, it is unpacked at any ratio; what expands past twice that size, unwritten
    (zeros after a tar's end), is still refused."""
    monkeypatch.setattr(codecs, "EXPANSION_FLOOR", MiB)
    image = bytes(8 * MiB)
    if unpacker == "tar":
        data, word = COMPRESS[codec](tar(member("disk.img", content=image))), "tar"
    else:
        data, word = zeros(codec, len(image)), DECOMPRESSOR[codec]
    box = Box(tmp_path / "fits")
    [made] = box.populate(box.put("disk.img.compressed", data), word, limit=8 * MiB).iterdir()
    assert made.read_bytes() == image
    trailing = COMPRESS[codec](tar(member("small", content=b"x")) + bytes(8 * MiB))
    message = Box(tmp_path / "past").refused(trailing, "tar", limit=MiB)
    assert "expands more than 1000 times" in message and "past twice its --size of 1.0 MiB" in message


def test_blank_image_in_a_zip_passes_the_cap_within_twice_its_size(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "EXPANSION_FLOOR", MiB)
    image = bytes(8 * MiB)
    data = zip_of(("disk.img", image, stat.S_IFREG | 0o644), method=zipfile.ZIP_BZIP2)
    box = Box(tmp_path / "fits")
    assert (box.populate(box.put("disk.zip", data), "zip", limit=8 * MiB) / "disk.img").read_bytes() == image
    message = Box(tmp_path / "past").refused(data, "zip", limit=MiB)
    assert "expands more than 1000 times" in message and "past twice its --size of 1.0 MiB" in message


def test_expansion_cap_for_real(box: Box) -> None:
    """The real floor: 100 MiB; a stream of zeros is stopped just past it."""
    message = box.refused(zeros("zstd", 300 * MiB), "unzstd")
    assert re.search(r"^refused .*: it expands more than 1000 times \(101\.0 MiB from [0-9.]+ KiB\)", message)
    assert sum(path.stat().st_size for path in box.dest.iterdir()) <= 100 * MiB


def test_compressible_data_under_the_cap_is_fine(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "EXPANSION_FLOOR", MiB)
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(100_000))
    dest = box.populate(box.put("log.xz", lzma.compress(text, preset=1)), "unxz")
    assert (dest / "log").read_bytes() == text


def test_zip_bomb_is_refused_before_anything_is_written(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "EXPANSION_FLOOR", MiB)
    bomb = zip_of(*((f"z{i}", bytes(5 * MiB), stat.S_IFREG | 0o644) for i in range(3)), method=zipfile.ZIP_BZIP2)
    assert "expands more than 1000 times" in box.refused(bomb, "zip")
    assert not any(box.dest.iterdir())
    monkeypatch.undo()  # with the real floor, the size limit is what stops it
    assert Box(box.root / "again").refused(bomb, "zip", limit=MiB, expected=SizeLimitError).endswith("1.0 MiB")


def _overlapping_zip(case: str) -> bytes:
    """A zip of ``case``: 50 central records for one member's local header and data, or a member
    stored inside the data of another, as the zip bombs that expand millions of times nest them."""
    import struct

    inner = zip_of(("inner", bytes(MiB), stat.S_IFREG | 0o644))
    directory = inner.rindex(b"PK\x01\x02")
    record, trailer = inner[directory:inner.rindex(b"PK\x05\x06")], bytearray(inner[inner.rindex(b"PK\x05\x06"):])
    if case == "shared":
        records = record * 50
        body = inner[:directory]
    else:
        outer = zip_of(("outer", inner[:directory], stat.S_IFREG | 0o644), method=zipfile.ZIP_STORED)
        outer_directory = outer.rindex(b"PK\x01\x02")
        moved = bytearray(record)
        struct.pack_into("<L", moved, 42, 30 + len("outer"))  # inner's local header, inside outer's data
        records = outer[outer_directory:outer.rindex(b"PK\x05\x06")] + bytes(moved)
        body = outer[:outer_directory]
    count = records.count(b"PK\x01\x02")
    struct.pack_into("<HHLL", trailer, 8, count, count, len(records), len(body))
    return body + records + bytes(trailer)


@pytest.mark.parametrize("case", ["shared", "nested"])
def test_zip_members_overlapping_are_refused(box: Box, case: str) -> None:
    """Members whose data overlap add up to more compressed data than the archive holds: with 50
    records for one member, 50 MiB would come of 4 KB, under the bomb limits here."""
    archive = _overlapping_zip(case)
    assert len(zipfile.ZipFile(io.BytesIO(archive)).namelist()) == (50 if case == "shared" else 2)
    message = box.refused(archive, "zip")
    assert "members overlap" in message, message
    assert not any(box.dest.rglob("inner"))


def test_zip_cut_within_its_end_record(box: Box) -> None:
    """A zip cut short within its end-of-central-directory record (an empty zip is that record
    alone) is no zip: its signature, with less than a record after it, is not taken for one."""
    whole = zip_of()
    assert whole.startswith(b"PK\x05\x06") and len(whole) == 22
    for cut in range(4, len(whole)):
        message = Box(box.root / str(cut)).refused(whole[:cut], "zip", expected=CorruptDataError)
        assert message.endswith("it has no end-of-central-directory record in its last 64 KiB"), message


def test_a_later_volume_of_a_multi_volume_tar_says_what_it_is(box: Box) -> None:
    """GNU tar's second volume (``tar -M``) starts with the rest of a file, a member of type M:
    before, "is a special file"."""
    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar")
    (box.root / "big").write_bytes(os.urandom(150_000))
    subprocess.run(["tar", "-M", "-L", "100", "-cf", "v1.tar", "-f", "v2.tar", "big"], cwd=box.root, check=True,
                   timeout=60)
    message = box.refused((box.root / "v2.tar").read_bytes(), "tar")
    assert message.endswith("member 'big' is the rest of a file begun in the volume before (a volume of a "
                            "multi-volume archive, tar -M, which is not supported)"), message


def test_a_tar_cut_inside_a_member_names_it_and_the_first_volume_of_a_multi_volume_tar(box: Box) -> None:
    """An archive that ends inside a member's data (a download cut short, or the first volume of
    ``tar -M``, which ends so): the line names the member and the byte, where it said "unexpected
    end of data" alone."""
    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar")
    (box.root / "small").write_bytes(b"small\n")
    (box.root / "big").write_bytes(os.urandom(150_000))
    subprocess.run(["tar", "-M", "-L", "100", "-cf", "v1.tar", "-f", "v2.tar", "small", "big"], cwd=box.root,
                   check=True, timeout=60)
    said = ("unexpected end of data in member 'big' at byte {}: the archive is cut short, or is the first volume "
            "of a multi-volume one (tar -M)")
    message = box.refused((box.root / "v1.tar").read_bytes(), "tar", expected=CorruptDataError)
    assert message.endswith(said.format("102,400")), message
    whole = tar(member("small", content=b"small\n"), member("big", content=b"b" * 5000))
    message = box.refused(whole[:3000], "tar", expected=CorruptDataError)
    assert message.endswith(said.format("3,000")), message


def test_the_last_part_of_a_split_zip_says_to_join_the_parts(box: Box) -> None:
    """The last file of a zip split over several (``zip -s``), whose central directory places
    the members in the other files: before, "its members overlap ... a likely decompression
    bomb"."""
    if shutil.which("zip") is None:
        pytest.skip("needs Info-ZIP's zip (the package zip)")
    (box.root / "a.bin").write_bytes(os.urandom(200_000))
    subprocess.run(["zip", "-q", "-s", "64k", str(box.root / "split.zip"), "a.bin"], cwd=box.root, check=True,
                   timeout=60)
    assert (box.root / "split.z01").exists()
    message = box.refused((box.root / "split.zip").read_bytes(), "zip", expected=CorruptDataError)
    assert message.endswith(": it is the last part of a zip split over several files (zip -s), which is not "
                            "supported: join the parts first (zip -s 0 PART.zip --out WHOLE.zip)"), message


@pytest.mark.parametrize("method, named", [(98, "PPMd (method 98)"), (93, "Zstandard (method 93)"), (77, "method 77")])
def test_zip_member_of_a_method_no_decoder_reads_is_named_for_it(box: Box, method: int, named: str) -> None:
    archive = bytearray(zip_of(("f", b"data", stat.S_IFREG | 0o644), method=zipfile.ZIP_STORED))
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = archive.index(signature) + offset
        archive[at:at + 2] = method.to_bytes(2, "little")
    message = box.refused(bytes(archive), "zip", expected=CorruptDataError)
    assert message.endswith(f"'f' from {box.inputs / 'input.zip'}: it is compressed with {named}, which no unpacker "
                            "here reads"), message


def test_zip_member_lying_about_its_size(box: Box) -> None:
    archive = bytearray(zip_of(("f", b"x" * 1000, stat.S_IFREG | 0o644), method=zipfile.ZIP_STORED))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers
        at = archive.index(signature) + offset
        archive[at:at + 4] = (10).to_bytes(4, "little")  # says 10 bytes instead of 1000
    assert "Bad CRC-32" in box.refused(bytes(archive), "zip", expected=CorruptDataError)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_member_with_damaged_data(box: Box, method: int) -> None:
    archive = bytearray(zip_of(("f", bytes(range(256)) * 40, stat.S_IFREG | 0o644), method=method))
    start = archive.index(b"f", 30) + 1  # the data follows the name in the local header
    archive[start + 20:start + 60] = bytes(40)
    message = box.refused(bytes(archive), "zip", expected=CorruptDataError)
    assert message.startswith("cannot unzip 'f' from ")


def test_deflate64_member_with_damaged_data(box: Box) -> None:
    content = bytes(range(256)) * 400
    good = deflate64_zip({"f": content})
    assert (box.populate(box.put("good.zip", good), "zip") / "f").read_bytes() == content
    inflate64 = pytest.importorskip("inflate64")
    deflater = inflate64.Deflater()
    damaged = bytearray(deflater.deflate(content) + deflater.flush())
    damaged[len(damaged) // 2:len(damaged) // 2 + 40] = bytes(40)
    message = Box(box.root / "damaged").refused(deflate64_zip({"f": content}, compressed={"f": bytes(damaged)}),
                                                "zip", expected=CorruptDataError)
    assert message.startswith("cannot unzip 'f' from "), message
    assert "Bad CRC-32" in message or "its data is corrupt" in message or "ends before" in message, message


@pytest.mark.parametrize("declared", ["smaller", "larger"])
def test_deflate64_member_lying_about_its_size(box: Box, declared: str) -> None:
    """Its data is cut at the declared size, and the CRC of what is kept tells; data that ends
    before it is too short.  Nothing past the declared size is kept in memory or written."""
    content = b"".join(b"line %d\n" % i for i in range(20_000))
    archive = bytearray(deflate64_zip({"f": content}))
    size = 10 if declared == "smaller" else len(content) + 1000
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers
        at = archive.index(signature) + offset
        archive[at:at + 4] = size.to_bytes(4, "little")
    message = box.refused(bytes(archive), "zip", expected=CorruptDataError)
    assert ("Bad CRC-32 for file 'f'" if declared == "smaller" else "its data ends before its declared size") in message


def test_deflate64_bomb_is_refused_before_anything_is_written(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "EXPANSION_FLOOR", MiB)
    bomb = deflate64_zip({f"z{i}": bytes(5 * MiB) for i in range(3)})
    assert "expands more than 1000 times" in box.refused(bomb, "zip")
    assert not any(box.dest.iterdir())


def test_zip_member_placed_before_the_archive(box: Box) -> None:
    """A central directory said to start past where it does puts its members before the file's
    first byte: a corrupt archive, not a failure to write."""
    archive = bytearray(zip_of(("f", b"x", stat.S_IFREG | 0o644)))
    end = archive.rindex(b"PK\x05\x06") + 16  # the directory's offset in the end record
    archive[end:end + 4] = (int.from_bytes(archive[end:end + 4], "little") + 10).to_bytes(4, "little")
    message = box.refused(bytes(archive), "zip", expected=CorruptDataError)
    assert message.startswith("cannot unzip 'f' from "), message
    assert "before the start of the archive" in message


@pytest.mark.parametrize("offset", [2**63 - 1, 2**63, 2**64 - 1])
def test_zip_member_placed_past_the_archive_by_its_zip64_field(box: Box, offset: int) -> None:
    """A Zip64 field can place a member's local header anywhere up to 2**64 - 1: past the file,
    it is no header, as one a few bytes past the end is not (the system's pread refused the
    offset, an internal error, or read it as a failure to write)."""
    name, data = b"a", b"x"
    crc = zlib.crc32(data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, 1, 1, len(name), 0) + name + data
    extra = struct.pack("<HHQ", 0x0001, 8, offset)  # Zip64: the local header's offset alone
    central = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 45, 0, 0, 0, 0, 0x21, crc, 1, 1,
                          len(name), len(extra), 0, 0, 0, 0o100644 << 16, 0xFFFFFFFF) + name + extra
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    message = box.refused(local + central + end, "zip", expected=CorruptDataError)
    assert message.startswith("cannot unzip 'a' from "), message
    assert f"no local header at byte {offset}" in message, message


def test_zip_name_flagged_as_utf8_that_is_not(box: Box) -> None:
    # bsdtar flags every name as UTF-8, whatever the bytes of the locale it read them in: unzip
    # writes such a name as its bytes, and so do we.  A local header that names another file
    # than the directory does is still corrupt.
    archive = bytearray(zip_of(("é", b"x", stat.S_IFREG | 0o644)))  # flag bit 11: the name is UTF-8
    for signature in (b"PK\x01\x02", b"PK\x03\x04"):
        at = archive.index("é".encode(), archive.index(signature))
        archive[at:at + 2] = b"\xe7("  # not UTF-8
    dest = box.populate(box.put("latin1.zip", bytes(archive)), "zip")
    assert [(os.fsencode(path.name), path.read_bytes()) for path in dest.iterdir()] == [(b"\xe7(", b"x")]
    shutil.rmtree(dest)
    dest.mkdir()
    at = archive.index(b"\xe7(", archive.index(b"PK\x03\x04"))
    archive[at:at + 2] = "é".encode()
    message = box.refused(bytes(archive), "zip", expected=CorruptDataError)
    assert message.startswith("cannot unzip "), message


def test_zip_lzma_member_asking_for_a_huge_dictionary(box: Box) -> None:
    """liblzma allocates an LZMA dictionary whole as it starts: 1 GiB asked is 1 GiB taken."""
    archive = bytearray(zip_of(("f", b"hello" * 100, stat.S_IFREG | 0o644), method=zipfile.ZIP_LZMA))
    properties = archive.index(b"f", 30) + 1 + 4  # the data follows the name: version, size, properties
    archive[properties + 1:properties + 5] = (1 << 30).to_bytes(4, "little")
    message = box.refused(bytes(archive), "zip", expected=UnsafeArchiveError)
    assert message.endswith("'f' from " + box.inputs.as_posix() + "/input.zip: its lzma data needs a dictionary "
                            "of 1.0 GiB to decompress, more than the 256.0 MiB allowed"), message


def test_xz_asking_for_a_huge_dictionary(box: Box) -> None:
    greedy = lzma.compress(b"hello" * 100, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1024 * MiB,
                                                     "mf": lzma.MF_HC3, "nice_len": 8, "depth": 1}])
    assert "its xz data needs more memory to decompress, more than the 256.0 MiB allowed" in box.refused(
        greedy, "unxz", expected=UnsafeArchiveError)


def test_zstd_asking_for_a_huge_window(box: Box) -> None:
    params = zstandard.ZstdCompressionParameters(window_log=31, enable_ldm=True)
    writer = zstandard.ZstdCompressor(compression_params=params).compressobj()
    greedy = writer.compress(b"hello" * 100) + writer.flush()
    assert "its zstd data needs a window of 2.0 GiB to decompress, more than the 128.0 MiB allowed" in box.refused(
        greedy, "unzstd", expected=UnsafeArchiveError)


def test_data_after_the_end_of_a_tar_is_bounded_too(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bomb hidden after the end-of-archive marker, where nothing is written but all is read."""
    monkeypatch.setattr(codecs, "EXPANSION_FLOOR", MiB)
    bomb = zstandard.ZstdCompressor().compress(tar(member("small", content=b"x")) + bytes(20 * MiB))
    assert "a likely decompression bomb" in box.refused(bomb, "tar")
