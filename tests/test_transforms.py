"""Checksums, decompressors and the tar and zip unpackers, fed from local files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import random
import stat
import struct
import tarfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard

from sharedcache.loaders.codecs import decompressing
from sharedcache.loaders.streams import CHUNK
from sharedcache.errors import ChecksumError, CorruptDataError, SizeLimitError, UnsafeArchiveError
from sharedcache.loaders.pipeline import populate as run_recipe
from sharedcache.loaders.registry import parse_recipe
from sharedcache.loaders.transforms import Gunzip, Unxz, Unzstd

pytestmark = pytest.mark.timeout(30)

COMPRESS = {
    "none": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    # With a checksum, as the zstd tool writes it.
    "zstd": lambda data: zstandard.ZstdCompressor(write_checksum=True).compress(data),
}
SUFFIX = {"none": "", "gzip": ".gz", "bzip2": ".bz2", "xz": ".xz", "zstd": ".zst"}
DECOMPRESSOR = {"gzip": "gunzip", "bzip2": "bunzip2", "xz": "unxz", "zstd": "unzstd"}


def populate(tmp_path: Path, *words: str, limit: int | None = None) -> Path:
    """Run the recipe into a fresh dest under tmp_path/box; return dest."""
    box = tmp_path / "box"
    box.mkdir(parents=True, exist_ok=True)
    dest, work = box / "dest", box / "work"
    dest.mkdir()
    work.mkdir(exist_ok=True)
    run_recipe(parse_recipe(words), dest, work=work, limit=limit)
    return dest


def put(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return f"file:{path}"


def everything_but_box(tmp_path: Path) -> set[str]:
    """Paths under tmp_path outside box/ (where dest and work live)."""
    paths = (path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    return {str(path) for path in paths if path.parts[0] != "box"}


def sample_tree() -> dict[str, bytes]:
    return {
        "top.txt": b"hello\n",
        "dir/numbers.txt": "".join(f"{i}\n" for i in range(50_000)).encode(),
        "dir/sub/random.bin": os.urandom(300_000),
        "dir/sub/empty": b"",
    }


def make_tar(files: dict[str, bytes], extra: Sequence[tuple[tarfile.TarInfo, bytes | None]] = ()) -> bytes:
    """A tar archive of ``files`` (regular members), then of the ``extra`` members, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for info, content in extra:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, *, linkname: str = "", mode: int = 0o644,
           content: bytes = b"") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content if kind == tarfile.REGTYPE else None


def read_tree(root: Path) -> dict[str, bytes]:
    files = (path for path in root.rglob("*") if path.is_file() and not path.is_symlink())
    return {str(path.relative_to(root)): path.read_bytes() for path in files}


# --- checksums ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_checksum_match_and_mismatch(tmp_path: Path, algorithm: str) -> None:
    data = os.urandom(3_000_000)
    source = put(tmp_path, "data.bin", data)
    digest = hashlib.new(algorithm, data).hexdigest()
    dest = populate(tmp_path, source, f"{algorithm}:{digest.upper()}")
    assert (dest / "data.bin").read_bytes() == data

    wrong = hashlib.new(algorithm, b"other").hexdigest()
    with pytest.raises(ChecksumError) as caught:
        populate(tmp_path / "again", source, f"{algorithm}:{wrong}")
    assert str(caught.value) == f"{algorithm} mismatch for {source[5:]}: expected {wrong}, got {digest}"


def test_a_mismatch_of_text_where_a_file_was_expected_says_what_the_text_is(tmp_path: Path) -> None:
    # A login page of a proxy or a captive portal, served in place of an archive: the digests
    # alone do not tell it from another version of the file.  (Binary data adds nothing: above.)
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in to the network</title></head></html>\n"
    source = put(tmp_path, "data.tar.gz", page)
    wrong = hashlib.sha256(b"the archive").hexdigest()
    with pytest.raises(ChecksumError) as caught:
        populate(tmp_path, source, f"sha256:{wrong}", "tar")
    assert str(caught.value) == (f"sha256 mismatch for {source[5:]}: expected {wrong}, got "
                                 f"{hashlib.sha256(page).hexdigest()} (the data is text starting "
                                 "'<!DOCTYPE html>': a page sent in place of the file?)")


@pytest.mark.parametrize("start, said", [
    (b"x\n", None),  # binary data whose first line is short and printable (random data, now and then)
    (b"\r\n\r\n<!DOCTYPE html>\n", "text starting '<!DOCTYPE html>'"),  # a page with blank lines first
], ids=["binary data with a short first line", "a page starting with blank lines"])
def test_a_mismatch_is_said_to_be_of_text_when_all_its_start_is(tmp_path: Path, start: bytes, said: str | None) -> None:
    # Before, only the first line was looked at: the first case was "text starting 'x'" (0.66% of
    # random data was text so: the checksum test above failed about once in 40 runs), the second
    # no text at all.
    data = start + (bytes(range(256)) * 4 if said is None else b"<html>" + b" " * 1000)
    source = put(tmp_path, "data.bin", data)
    wrong = hashlib.sha256(b"the file").hexdigest()
    with pytest.raises(ChecksumError) as caught:
        populate(tmp_path, source, f"sha256:{wrong}")
    told = "" if said is None else f" (the data is {said}: a page sent in place of the file?)"
    assert str(caught.value) == f"sha256 mismatch for {source[5:]}: expected {wrong}, got {hashlib.sha256(data).hexdigest()}{told}"


def test_checksum_of_decompressed_bytes(tmp_path: Path) -> None:
    data = b"abc" * 100_000
    source = put(tmp_path, "data.txt.gz", gzip.compress(data))
    dest = populate(tmp_path, source, "gunzip", f"sha1:{hashlib.sha1(data).hexdigest()}")
    assert (dest / "data.txt").read_bytes() == data


def test_checksum_covers_bytes_after_the_tar_end(tmp_path: Path) -> None:
    archive = make_tar({"a": b"x"}) + os.urandom(100_000)  # trailing junk after the end of archive
    source = put(tmp_path, "junk.tar", archive)
    populate(tmp_path, source, f"sha256:{hashlib.sha256(archive).hexdigest()}", "tar")
    with pytest.raises(ChecksumError):
        populate(tmp_path / "again", source, f"sha256:{hashlib.sha256(archive[:-1]).hexdigest()}", "tar")


@pytest.mark.parametrize("algorithm", ["md5", "sha512"])
def test_a_failure_above_the_checksums_stops_the_threads_below_them(tmp_path: Path, algorithm: str) -> None:
    # The source and the checksums run in threads of their own.  The unpacker fails at the first
    # member, with most of the archive still to be read: both threads must end, not wait on a queue.
    archive = make_tar({"../escape": b"x", "big.bin": os.urandom(48 << 20)})
    source = put(tmp_path, "hostile.tar", archive)
    before = set(threading.enumerate())  # an earlier test's reader may still wait on its network read
    with pytest.raises(UnsafeArchiveError):
        populate(tmp_path, source, f"{algorithm}:{hashlib.new(algorithm, archive).hexdigest()}", "tar")
    deadline = time.monotonic() + 10
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == set()


# --- single-file decompressors --------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_decompressor(tmp_path: Path, codec: str) -> None:
    data = os.urandom(200_000) + b"\0" * 3_000_000
    source = put(tmp_path, f"blob.dat{SUFFIX[codec]}", COMPRESS[codec](data))
    dest = populate(tmp_path, source, DECOMPRESSOR[codec])
    assert [p.name for p in dest.iterdir()] == ["blob.dat"]
    assert (dest / "blob.dat").read_bytes() == data


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_concatenated_streams_are_read_through(tmp_path: Path, codec: str) -> None:
    source = put(tmp_path, "two", COMPRESS[codec](b"first\n") + COMPRESS[codec](b"second\n"))
    dest = populate(tmp_path, source, DECOMPRESSOR[codec])
    assert (dest / "two").read_bytes() == b"first\nsecond\n"


def test_gzip_streams_that_end_inside_a_chunk_of_input(tmp_path: Path) -> None:
    """The inflater is given its input in pieces smaller than a chunk: a stream that ends in one of
    them is followed by the rest of the chunk, read on as the next stream, or refused at the byte
    where the stream ended."""
    text = os.urandom(2_500_000).translate(bytes(b"abcdefghijklmnop"[i % 16] for i in range(256)))
    # 1.3 MB that inflate twice: past its first chunk, it is given in pieces, and ends in one.
    first = gzip.compress(text, compresslevel=1)
    second = gzip.compress(b"x" * 5_000_000, compresslevel=1)  # its output fills the buffer first
    assert len(first) > CHUNK
    dest = populate(tmp_path / "both", put(tmp_path, "two.gz", first + second + first), "gunzip")
    assert (dest / "two").read_bytes() == text + b"x" * 5_000_000 + text
    with pytest.raises(CorruptDataError, match=f"what follows its end at byte {len(first)} is not gzip data"):
        populate(tmp_path / "garbage", put(tmp_path, "garbage.gz", first + b"garbage" * 1000), "gunzip")


#: What may follow the last stream, as gzip -d and xz -d read it: gzip's trailing zeros (a
#: blocked tape's padding, which gzip ignores silently), xz's stream padding (zero bytes, a multiple
#: of four, after or between streams: part of the format).  Anything else is refused, with what
#: it is: GNU gzip warns of "trailing garbage" and exits 2 (so `tar xzf` fails), xz and zstd
#: refuse it; bzip2 only warns, and here it is refused too.
AFTER_THE_LAST_STREAM = {
    "gzip, zeros": ("gzip", gzip.compress(b"one\n") + b"\0" * 1000, b"one\n"),
    "gzip, one zero": ("gzip", gzip.compress(b"one\n") + b"\0", b"one\n"),
    "gzip, zeros then a member": ("gzip", gzip.compress(b"one\n") + b"\0" * 8 + gzip.compress(b"two\n"),
                                  "corrupt gzip data from .*: what follows its end at byte 24 is not gzip data"),
    "gzip, garbage": ("gzip", gzip.compress(b"one\n") + b"garbage\n",
                      "corrupt gzip data from .*: what follows its end at byte 24 is not gzip data"),
    "gzip, a member cut in its magic": ("gzip", gzip.compress(b"one\n") + b"\x1f", "truncated gzip data from "),
    "xz, padding": ("xz", lzma.compress(b"one\n") + b"\0" * 8, b"one\n"),
    "xz, padding between streams": ("xz", lzma.compress(b"one\n") + b"\0" * 4 + lzma.compress(b"two\n"),
                                    b"one\ntwo\n"),
    "xz, padding not of four": ("xz", lzma.compress(b"one\n") + b"\0" * 3,
                                "corrupt xz data from .*: 3 bytes of padding at byte 60, not a multiple of 4"),
    "xz, padding not of four between streams": (
        "xz", lzma.compress(b"one\n") + b"\0" * 2 + lzma.compress(b"two\n"),
        "corrupt xz data from .*: 2 bytes of padding at byte 60, not a multiple of 4"),
    "xz, garbage": ("xz", lzma.compress(b"one\n") + b"garbage\n",
                    "corrupt xz data from .*: what follows its end at byte 60 is not xz data"),
    "bzip2, garbage": ("bzip2", bz2.compress(b"one\n") + b"garbage\n",
                       "corrupt bzip2 data from .*: what follows its end at byte 42 is not bzip2 data"),
    "bzip2, zeros": ("bzip2", bz2.compress(b"one\n") + b"\0" * 4,
                     "corrupt bzip2 data from .*: what follows its end at byte 42 is not bzip2 data"),
}


@pytest.mark.parametrize("case", list(AFTER_THE_LAST_STREAM))
def test_what_may_follow_the_last_stream(tmp_path: Path, case: str) -> None:
    codec, data, expected = AFTER_THE_LAST_STREAM[case]
    source = put(tmp_path, "data", data)
    if isinstance(expected, bytes):
        assert (populate(tmp_path, source, DECOMPRESSOR[codec]) / "data").read_bytes() == expected
    else:
        with pytest.raises(CorruptDataError, match=f"^{expected}"):
            populate(tmp_path, source, DECOMPRESSOR[codec])


@pytest.mark.parametrize("case", ["gzip, zeros", "xz, padding between streams"])
def test_what_may_follow_the_last_stream_of_a_tar(tmp_path: Path, case: str) -> None:
    codec = AFTER_THE_LAST_STREAM[case][0]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"one\n"))
    data = COMPRESS[codec](archive.getvalue())
    data += b"\0" * 512 if codec == "gzip" else b"\0" * 4 + COMPRESS[codec](b"")
    dest = populate(tmp_path, put(tmp_path, "a.tar", data), "tar")
    assert (dest / "a.txt").read_bytes() == b"one\n"


def test_unxz_reads_an_lzma_file_as_xz_does(tmp_path: Path) -> None:
    """The older LZMA-alone format (.lzma) has no magic: `xz -d` takes a file for one by the
    checks its header passes, and so does `unxz`.  Eighteen zero bytes, which liblzma's automatic
    choice would decode as an empty file, fail them."""
    data = lzma.compress(b"the old format\n" * 100, format=lzma.FORMAT_ALONE)
    assert (populate(tmp_path, put(tmp_path, "a.lzma", data), "unxz") / "a").read_bytes() == \
        b"the old format\n" * 100
    with pytest.raises(CorruptDataError, match="^corrupt xz data from "):
        populate(tmp_path / "zeros", put(tmp_path, "zeros.xz", bytes(18)), "unxz")
    damaged = bytearray(data)
    damaged[20:24] = b"\xff\xff\xff\xff"
    with pytest.raises(CorruptDataError, match="^corrupt xz data from .*: (?!it is)"):  # not "it is .lzma data"
        populate(tmp_path / "damaged", put(tmp_path, "damaged.lzma", bytes(damaged)), "unxz")


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_truncated_compressed_data_is_an_error(tmp_path: Path, codec: str) -> None:
    whole = COMPRESS[codec](os.urandom(100_000))
    source = put(tmp_path, "cut", whole[: len(whole) - 10])
    with pytest.raises(CorruptDataError, match=f"^truncated {codec} data from "):
        populate(tmp_path, source, DECOMPRESSOR[codec])


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_corrupt_compressed_data_is_an_error(tmp_path: Path, codec: str) -> None:
    whole = bytearray(COMPRESS[codec](b"some text " * 10_000))
    whole[len(whole) // 2] ^= 0xFF
    whole[len(whole) // 2 + 1] ^= 0xFF
    source = put(tmp_path, "bad", bytes(whole))
    with pytest.raises(CorruptDataError, match=f"^(corrupt|truncated) {codec} data from "):
        populate(tmp_path, source, DECOMPRESSOR[codec])


def _tar_bytes() -> bytes:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("empty.txt"))
    return archive.getvalue()


def _zip_bytes(content: bytes = b"a") -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:  # stored: what compresses it is what follows
        out.writestr("a.txt", content)
    return archive.getvalue()


#: Data that is not what the word expects, and what the message says it is instead: a page a
#: server sent instead of the file is the usual case.
NOT_WHAT_WAS_EXPECTED = {
    "an HTML page to tar": ("tar", b"<!DOCTYPE html>\n<html><head><title>Sign in</title>" + b" " * 600,
                            r"cannot unpack .* as a tar archive: it is text starting '<!DOCTYPE html>'$"),
    "a zip to tar": ("tar", _zip_bytes(), r"cannot unpack .* as a tar archive: it is a zip archive; 'zip' unpacks it$"),
    "a .tar.lzma to tar": ("tar", lzma.compress(_tar_bytes(), format=lzma.FORMAT_ALONE),
                           r"cannot unpack .* as a tar archive: it is LZMA-alone \(\.lzma\) data; 'unxz tar' unpacks it$"),
    "lzip data to tar": ("tar", b"LZIP\x01" + bytes(600), r"cannot unpack .* as a tar archive: it is lzip data$"),
    "a .tar.gz to zip": ("zip", gzip.compress(_tar_bytes()),
                         r"cannot unpack .* as a zip archive: it is gzip data of a tar archive; 'tar' unpacks it$"),
    "a zip as zstd to zip": ("zip", COMPRESS["zstd"](_zip_bytes(b"the same line\n" * 1000)),
                             r"cannot unpack .* as a zip archive: it is zstd data of a zip archive; "
                             r"'unzstd zip' unpacks it$"),
    "bzip2ed text to zip": ("zip", bz2.compress(b"hello world\n" * 100),
                            r"cannot unpack .* as a zip archive: it is bzip2 data of text starting 'hello world'; "
                            r"'bunzip2' decompresses it$"),
    "gzipped random bytes to zip": ("zip", gzip.compress(bytes(range(256)) * 4),
                                    r"cannot unpack .* as a zip archive: it is gzip data; 'gunzip' decompresses it$"),
    "a .tar.gz cut short to zip": ("zip", gzip.compress(os.urandom(4000))[:100],
                                   r"cannot unpack .* as a zip archive: it is gzip data; 'gunzip' decompresses it$"),
    "a tar to zip": ("zip", _tar_bytes(), r"cannot unpack .* as a zip archive: it is a tar archive; 'tar' unpacks it$"),
    "xz data to gunzip": ("gunzip", lzma.compress(b"x" * 100), r"corrupt gzip data from .*: it is xz data; 'unxz' decompresses it$"),
    "gzip data to unzstd": ("unzstd", gzip.compress(b"x" * 100),
                            r"corrupt zstd data from .*: it is gzip data; 'gunzip' decompresses it$"),
    "zstd data to unxz": ("unxz", zstandard.ZstdCompressor().compress(b"x" * 100),
                          r"corrupt xz data from .*: it is zstd data; 'unzstd' decompresses it$"),
    "xz data to bunzip2": ("bunzip2", lzma.compress(b"x" * 100),
                           r"corrupt bzip2 data from .*: it is xz data; 'unxz' decompresses it$"),
    "bzip2 data to gunzip": ("gunzip", bz2.compress(b"x" * 100),
                             r"corrupt gzip data from .*: it is bzip2 data; 'bunzip2' decompresses it$"),
    "a zip to gunzip": ("gunzip", _zip_bytes(), r"corrupt gzip data from .*: it is a zip archive; 'zip' unpacks it$"),
    "a tar to unzstd": ("unzstd", _tar_bytes(), r"corrupt zstd data from .*: it is a tar archive; 'tar' unpacks it$"),
    "gzipped text to tar": ("tar", gzip.compress(b"hello world\n" * 100),
                            r"cannot unpack .* as a tar archive: it is gzip data of text starting 'hello world'; "
                            r"'gunzip' decompresses it$"),
    "an HTML page as zstd to tar": ("tar", COMPRESS["zstd"](b"<!DOCTYPE html>\n<html>" + b" " * 600),
                                    r"cannot unpack .* as a tar archive: it is zstd data of text starting "
                                    r"'<!DOCTYPE html>'; 'unzstd' decompresses it$"),
    "a zip as xz to tar": ("tar", lzma.compress(_zip_bytes()),
                           r"cannot unpack .* as a tar archive: it is xz data of a zip archive; 'unxz zip' unpacks it$"),
    "a JSON error to unzstd": ("unzstd", b'{"error": "not found"}\n',
                               r"""corrupt zstd data from .*: it is text starting '{"error": "not found"}'$"""),
}


@pytest.mark.parametrize("case", list(NOT_WHAT_WAS_EXPECTED))
def test_data_that_is_something_else_is_named(tmp_path: Path, case: str) -> None:
    word, data, message = NOT_WHAT_WAS_EXPECTED[case]
    with pytest.raises(CorruptDataError, match=message):
        populate(tmp_path, put(tmp_path, "download", data), word)


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
@pytest.mark.parametrize("where", [0.0, 0.1, 0.5])
def test_a_damaged_compressed_tar_is_called_so(tmp_path: Path, codec: str, where: float) -> None:
    """What a compressed tar holds is looked at when its first header is not one, but a tar whose
    compressed data is damaged, before its first header is out or midway, is said to be that, not
    something else."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name in ("a.txt", "b.txt"):
            info = tarfile.TarInfo(name)
            data = os.urandom(100_000).hex().encode()  # text that compresses, but not to nothing
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = bytearray(COMPRESS[codec](archive.getvalue()))
    at = max(24, int(len(whole) * where))  # 24: in the first compressed block, past any header
    whole[at:at + 4] = bytes(byte ^ 0xFF for byte in whole[at:at + 4])
    with pytest.raises(CorruptDataError, match=f"^(corrupt|truncated) {codec} data from "):
        populate(tmp_path, put(tmp_path, "damaged", bytes(whole)), "tar")


def test_bzip2_damage_that_decompresses_to_garbage_is_called_so(tmp_path: Path) -> None:
    """bzip2 checks a block's checksum at its end, and damaged data can decompress to garbage
    before it: here the block's first 512 bytes are no tar header, which was reported as "corrupt
    tar archive ... invalid header at byte 0" (about one archive in seventy of the test above).
    What follows is read on, to the block's end, and the damage is what is reported."""
    rng = random.Random(33)  # data whose damage gives garbage, not an error, at first
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name in ("a.txt", "b.txt"):
            info = tarfile.TarInfo(name)
            data = rng.randbytes(100_000).hex().encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = bytearray(bz2.compress(archive.getvalue()))
    at = len(whole) // 2
    whole[at:at + 4] = bytes(byte ^ 0xFF for byte in whole[at:at + 4])
    decompressor = bz2.BZ2Decompressor()
    assert not decompressor.decompress(bytes(whole), 512).startswith(archive.getvalue()[:100])  # garbage first
    with pytest.raises(CorruptDataError, match="^corrupt bzip2 data from "):
        populate(tmp_path, put(tmp_path, "damaged", bytes(whole)), "tar")


def test_streams_that_need_too_much_memory_are_refused_as_such(tmp_path: Path) -> None:
    """A zstd frame with a window past 128 MiB (`zstd --long=28` and up: `zstd -d` refuses it too
    unless told) and an xz stream with a dictionary past 256 MiB are valid, but not decoded here."""
    window = zstandard.ZstdCompressionParameters(window_log=28, write_content_size=0)
    compressor = zstandard.ZstdCompressor(compression_params=window).compressobj()
    zstd = compressor.compress(b"x" * 1000) + compressor.flush()
    xz = lzma.compress(b"x" * 1000, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 300 * 2**20}])
    for data, word, message in ((zstd, "unzstd", "zstd data needs a window of 256.0 MiB to decompress, more than "
                                                 "the 128.0 MiB allowed"),
                                (xz, "unxz", "xz data needs more memory to decompress, more than the 256.0 MiB "
                                             "allowed")):
        with pytest.raises(UnsafeArchiveError, match=f"^refused .*: its {message}$"):
            populate(tmp_path / word, put(tmp_path, f"{word}.data", data), word)


def test_zstd_data_made_with_a_dictionary_says_it_needs_it(tmp_path: Path) -> None:
    """Data compressed with a dictionary (`zstd -D`) is whole, where the line said "corrupt zstd
    data … Dictionary mismatch": it says that the data needs its dictionary, by ID, whether its
    frame gives a window or its content's size, as a tar, and after a frame without one."""
    rnd = random.Random(7)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(6)) for _ in range(50)]
    samples = [b" ".join(rnd.choice(words) for _ in range(60)) for _ in range(300)]
    dictionary = zstandard.train_dictionary(2048, samples)
    archive = make_tar({"a.txt": samples[0]})
    with_it = zstandard.ZstdCompressor(dict_data=dictionary).compress(archive)  # its size, no window
    windowed = zstandard.ZstdCompressor(dict_data=dictionary, write_content_size=False).compress(archive)
    assert zstandard.get_frame_parameters(with_it).dict_id == dictionary.dict_id() != 0
    assert zstandard.get_frame_parameters(windowed).dict_id == dictionary.dict_id()
    after = zstandard.ZstdCompressor().compress(archive[:512]) + \
        zstandard.ZstdCompressor(dict_data=dictionary).compress(archive[512:])
    said = (f"^cannot decompress the zstd data from .*: it needs the dictionary it was compressed with "
            f"\\(zstd -D, dictionary ID {dictionary.dict_id()}\\), which sc does not support$")
    for name, word, data in (("alone", "unzstd", with_it), ("windowed", "unzstd", windowed), ("tar", "tar", with_it),
                             ("after", "tar", after)):
        with pytest.raises(CorruptDataError, match=said):
            populate(tmp_path / name, put(tmp_path, f"{name}.data", data), word)


class _Dribble(io.RawIOBase):
    """A source that hands out ``step`` bytes a read, as a slow connection may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = io.BytesIO(data), step

    def read(self, size: int = -1) -> bytes:
        return self.data.read(min(self.step, size) if size > 0 else self.step)


@pytest.mark.parametrize("step", [1, 3, 7])
@pytest.mark.parametrize("case", ["gzip, zeros", "xz, padding between streams", "xz, padding", "lzma"])
def test_decompression_reads_alike_in_pieces_of_any_size(case: str, step: int) -> None:
    """A decoder is chosen by a stream's first bytes (an .lzma file's header has 13), and padding
    and the next stream's magic are read across reads: a source that gives a few bytes at a time
    decodes to the same bytes as one that gives them all."""
    if case == "lzma":
        codec, data, expected = "xz", lzma.compress(b"old\n" * 50, format=lzma.FORMAT_ALONE), b"old\n" * 50
    else:
        codec, data, expected = AFTER_THE_LAST_STREAM[case]
    stream = decompressing(codec, _Dribble(data, step), "dribble", None)  # type: ignore[arg-type]
    out = b""
    while piece := stream.read(65536):
        out += piece
    assert out == expected


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_decompression_output_is_bounded_by_the_read_size(codec: str) -> None:
    bomb = COMPRESS[codec](b"\0" * 50_000_000)

    class Source(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(bomb)

        def read(self, size: int = -1) -> bytes:
            return self.data.read(size)

    stream = decompressing(codec, Source(), "bomb", None)  # type: ignore[arg-type]
    sizes = [len(stream.read(65536)) for _ in range(50)]
    assert max(sizes) <= 65536 and sum(sizes) > 0


def test_output_names() -> None:
    assert Gunzip("gunzip", None).rename("a.tar.gz") == "a.tar"
    assert Gunzip("gunzip", None).rename("a.TGZ") == "a.tar"
    assert Gunzip("gunzip", None).rename("plain") == "plain"
    assert Gunzip("gunzip", None).rename(".gz") == ".gz"
    assert Unzstd("unzstd", None).rename("x.zst") == "x"
    # As xz -d names them (the .lzma suffix was kept: "a.lzma" held the decompressed bytes).
    assert Unxz("unxz", None).rename("a.lzma") == "a"
    assert Unxz("unxz", None).rename("a.tlz") == "a.tar"


# --- tar ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(COMPRESS))
def test_tar_any_compression(tmp_path: Path, codec: str) -> None:
    files = sample_tree()
    archive = COMPRESS[codec](make_tar(files))
    source = put(tmp_path, f"t.tar{SUFFIX[codec]}", archive)
    dest = populate(tmp_path, source, f"md5:{hashlib.md5(archive).hexdigest()}", "tar")
    assert read_tree(dest) == files
    assert not any((tmp_path / "box" / "work").iterdir())


def test_tar_of_zstd_frames_after_skippable_ones(tmp_path: Path) -> None:
    """pzstd (zstd's parallel compressor) writes a skippable frame, holding the size of the next,
    before each frame, so a .tar.zst of it starts with no zstd magic; GNU tar unpacks it."""
    files = sample_tree()
    tar = make_tar(files)
    frames = [zstandard.ZstdCompressor().compress(part) for part in (tar[:4096], tar[4096:])]
    archive = b"".join(b"\x50\x2a\x4d\x18" + struct.pack("<II", 4, len(frame)) + frame for frame in frames)
    dest = populate(tmp_path, put(tmp_path, "t.tar.zst", archive), "tar")
    assert read_tree(dest) == files


def test_tar_keeps_links_modes_and_times_but_not_setuid(tmp_path: Path) -> None:
    archive = make_tar({"bin/tool": b"#!/bin/sh\n"}, [
        member("bin/suid", mode=0o4755 | 0o2000 | 0o1000, content=b"x"),
        member("bin/shared", mode=0o777, content=b"y"),
        member("bin/alias", tarfile.SYMTYPE, linkname="tool"),
        member("bin/hard", tarfile.LNKTYPE, linkname="bin/tool"),
        member("lib/up", tarfile.SYMTYPE, linkname="../bin/tool"),
        member("ro", tarfile.DIRTYPE, mode=0o555),
        member("ro/inside", content=b"z"),
    ])
    dest = populate(tmp_path, put(tmp_path, "t.tar", archive), "tar")
    assert stat.S_IMODE((dest / "bin/suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "bin/shared").stat().st_mode) == 0o755
    assert os.readlink(dest / "bin/alias") == "tool"
    assert (dest / "lib/up").read_bytes() == b"#!/bin/sh\n"
    assert (dest / "bin/hard").stat().st_ino == (dest / "bin/tool").stat().st_ino
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o755
    assert (dest / "ro/inside").read_bytes() == b"z"


HOSTILE = {
    "absolute path": [member("/tmp/evil", content=b"x")],
    "dot-dot": [member("../evil", content=b"x")],
    "dot-dot inside": [member("a/../../evil", content=b"x")],
    "absolute symlink": [member("link", tarfile.SYMTYPE, linkname="/etc")],
    "symlink out": [member("link", tarfile.SYMTYPE, linkname="../evil")],
    "symlink out from a subdirectory": [member("a/b/link", tarfile.SYMTYPE, linkname="../../../evil")],
    "write through symlink": [member("d", tarfile.DIRTYPE, mode=0o755),
                              member("link", tarfile.SYMTYPE, linkname="d"),
                              member("link/file", content=b"x")],
    "symlink chain escaping": [member("a", tarfile.SYMTYPE, linkname="x/../evil"),
                               member("x", tarfile.SYMTYPE, linkname=".")],
    "hard link absolute": [member("h", tarfile.LNKTYPE, linkname="/etc/passwd")],
    "hard link out": [member("h", tarfile.LNKTYPE, linkname="../evil")],
    "hard link to a symlink, leading out from where it is": [member("a/b/s", tarfile.SYMTYPE, linkname="../x"),
                                                             member("h", tarfile.LNKTYPE, linkname="a/b/s")],
    "character device": [member("dev", tarfile.CHRTYPE)],
    "block device": [member("dev", tarfile.BLKTYPE)],
    "fifo": [member("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_tar_is_refused(tmp_path: Path, case: str) -> None:
    (tmp_path / "evil").mkdir()  # a target outside dest that links could reach
    before = everything_but_box(tmp_path)
    archive = make_tar({"fine.txt": b"ok"}, HOSTILE[case])
    with pytest.raises(UnsafeArchiveError, match=r"^unsafe archive .*: member '.*' "):
        populate(tmp_path, put(tmp_path, "hostile.tar", archive), "tar")
    assert everything_but_box(tmp_path) == before | {"hostile.tar"}


def test_tar_later_member_wins_but_never_replaces_a_directory(tmp_path: Path) -> None:
    archive = make_tar({"f": b"first"}, [member("f", content=b"second"),
                                         member("l", tarfile.SYMTYPE, linkname="f"),
                                         member("l", content=b"now a file")])
    dest = populate(tmp_path, put(tmp_path, "twice.tar", archive), "tar")
    assert (dest / "f").read_bytes() == b"second"
    assert not (dest / "l").is_symlink() and (dest / "l").read_bytes() == b"now a file"
    archive = make_tar({"d/x": b"x"}, [member("d", content=b"file over a directory")])
    with pytest.raises(UnsafeArchiveError, match="member 'd' would replace a directory"):
        populate(tmp_path / "again", put(tmp_path, "clash.tar", archive), "tar")
    # Nor a file by a directory (an archive appended to with `tar -r` after x became one), said
    # as such: it was "would be written below the file 'x'".
    archive = make_tar({"x": b"a file"}, [member("x", tarfile.DIRTYPE), member("x/y", content=b"y")])
    with pytest.raises(UnsafeArchiveError, match="member 'x/?' is a directory in place of the file 'x' made before it"):
        populate(tmp_path / "third", put(tmp_path, "appended.tar", archive), "tar")


def test_tar_with_an_impossible_time(tmp_path: Path) -> None:
    info, content = member("far-future", content=b"x")
    info.mtime = 1e30  # stored in a pax header
    dest = populate(tmp_path, put(tmp_path, "t.tar", make_tar({}, [(info, content)])), "tar")
    assert (dest / "far-future").read_bytes() == b"x"


def test_tar_limit(tmp_path: Path) -> None:
    archive = gzip.compress(make_tar({"a": b"1" * 1000, "b": b"2" * 1000}))
    source = put(tmp_path, "t.tgz", archive)
    populate(tmp_path, source, "tar", limit=2000)
    with pytest.raises(SizeLimitError, match="more than the limit of"):
        populate(tmp_path / "again", source, "tar", limit=1999)


def test_corrupt_tar(tmp_path: Path) -> None:
    # (Text is named as text: see test_data_that_is_something_else_is_named.)
    with pytest.raises(CorruptDataError, match="^corrupt tar archive"):
        populate(tmp_path, put(tmp_path, "t.tar", bytes(range(256)) * 4), "tar")


# --- zip ------------------------------------------------------------------------------------------


def make_zip(files: dict[str, bytes], symlinks: dict[str, str] | None = None,
             modes: dict[str, int] | None = None) -> bytes:
    symlinks, modes = symlinks or {}, modes or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | modes.get(name, 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
        for name, target in symlinks.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def test_zip(tmp_path: Path) -> None:
    files = sample_tree()
    archive = make_zip(files, {"dir/link": "numbers.txt"}, {"top.txt": 0o6755})
    checksum = f"sha512:{hashlib.sha512(archive).hexdigest()}"
    dest = populate(tmp_path, put(tmp_path, "a.zip", archive), checksum, "zip")
    assert read_tree(dest) == files
    assert os.readlink(dest / "dir/link") == "numbers.txt"
    assert stat.S_IMODE((dest / "top.txt").stat().st_mode) == 0o755
    assert not any((tmp_path / "box" / "work").iterdir())  # the spool is gone


@pytest.mark.parametrize("files,symlinks", [
    ({"../evil": b"x"}, {}),
    ({"/evil": b"x"}, {}),
    ({}, {"link": "../evil"}),
    ({}, {"link": "/etc/passwd"}),
])
def test_hostile_zip_is_refused(tmp_path: Path, files: dict[str, bytes], symlinks: dict[str, str]) -> None:
    before = everything_but_box(tmp_path)
    with pytest.raises(UnsafeArchiveError):
        populate(tmp_path, put(tmp_path, "hostile.zip", make_zip(files, symlinks)), "zip")
    assert everything_but_box(tmp_path) == before | {"hostile.zip"}
    assert not any((tmp_path / "box" / "work").iterdir())


@pytest.mark.parametrize("name", ["..\\evil", "dir\\..\\..\\evil", "\\evil"])
def test_backslashes_of_a_dos_zip_are_judged_as_separators(tmp_path: Path, name: str) -> None:
    """A zip made on MS-DOS may separate with backslashes (see test_reference_tools): the rules
    judge the name they make, ``../evil``, not the one stored."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.create_system = 0
        archive.writestr(info, b"x")
    before = everything_but_box(tmp_path)
    with pytest.raises(UnsafeArchiveError):
        populate(tmp_path, put(tmp_path, "hostile.zip", buffer.getvalue()), "zip")
    assert everything_but_box(tmp_path) == before | {"hostile.zip"}


# (tracemalloc slows the 20,000 members' unpack tenfold: 3.6 s on a quiet machine, past the
# module's 30 s under a load of 11; the default bound still catches a hang.)
@pytest.mark.timeout(120)
def test_zip_memory_does_not_grow_with_its_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The central directory is read a record at a time: unpacking 20,000 members allocates no
    more than unpacking 200 does, but for the buffer of a directory past one chunk (two chunks
    while it is refilled), where zipfile kept about half a kilobyte per member (10 MB).  In this
    process alone (the writer processes' memory is theirs), the modules it uses loaded first."""
    import tracemalloc

    from sharedcache.loaders import writer

    monkeypatch.setattr(writer, "SERIAL_MEMBERS", 10**9)

    def peak(members: int) -> int:
        source = put(tmp_path, f"{members}.zip", make_zip({f"d{i % 50}/f{i}": b"x" for i in range(members)}))
        tracemalloc.start()
        try:
            dest = populate(tmp_path / str(members), source, "zip")
            most = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(list(dest.rglob("f*"))) == members
        return most

    peak(100)
    small, large = peak(200), peak(20_000)
    assert large < small + 2 * CHUNK + 2**20, (small, large)


def test_zip_entry_cap_refuses_before_any_member_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap on entries is checked on the count of the central directory's records, before any
    member is read or made: the reader's members are never asked for, and the tree stays empty.
    (The hostile corpus's test of the cap watched zipfile, which the unpacker no longer uses.)"""
    from sharedcache.loaders import archives, ziparchive

    listed: list[object] = []
    members = ziparchive.ZipReader.members

    def watched(reader: ziparchive.ZipReader) -> object:
        listed.append(reader)
        return members(reader)

    monkeypatch.setattr(ziparchive.ZipReader, "members", watched)
    source = put(tmp_path, "many.zip", make_zip({f"d/f{i}": b"x" for i in range(300)}))
    monkeypatch.setattr(archives, "MAX_ENTRIES", 299)
    with pytest.raises(UnsafeArchiveError, match=r": more than 299 members$"):
        populate(tmp_path / "capped", source, "zip")
    assert not listed
    assert not any((tmp_path / "capped" / "box" / "dest").iterdir())
    monkeypatch.setattr(archives, "MAX_ENTRIES", 301)  # 300 files and their directory
    assert len(list(populate(tmp_path / "under", source, "zip").rglob("f*"))) == 300
    assert listed


def test_zip_limit_and_corruption(tmp_path: Path) -> None:
    source = put(tmp_path, "a.zip", make_zip({"a": b"0" * 10_000}))
    with pytest.raises(SizeLimitError):
        populate(tmp_path, source, "zip", limit=9_999)
    with pytest.raises(CorruptDataError, match="^corrupt zip archive"):
        populate(tmp_path / "again", put(tmp_path, "b.zip", b"PK\x01\x02 not really"), "zip")


def test_raw_file_limit(tmp_path: Path) -> None:
    source = put(tmp_path, "data", b"x" * 5000)
    with pytest.raises(SizeLimitError):
        populate(tmp_path, source, "md5:" + hashlib.md5(b"x" * 5000).hexdigest(), limit=4999)
    with pytest.raises(SizeLimitError):
        source = put(tmp_path, "data.gz", gzip.compress(b"x" * 5000))
        populate(tmp_path / "again", source, "gunzip", limit=4999)


# Loaded by sc as its sitecustomize: the interpreter has none of the hash modules named in
# $SC_TEST_NO_HASHES (separated by ":"), as one built without OpenSSL or some of its own has not.
WITHOUT_HASHES = """
import os, sys
for name in os.environ["SC_TEST_NO_HASHES"].split(":"):
    sys.modules[name] = None
"""


def test_an_interpreter_without_some_hashes_checks_with_those_it_has_and_refuses_the_others(tmp_path):
    # hashlib logs a traceback on stderr for each hash it cannot make, as it is imported: a use
    # of sha256: printed a dozen lines of tracebacks (so did a use under a small cap on memory,
    # which such libraries do not fit in), and a hash it lacked was said among them.
    from scutil import SRC, sc, sc_env

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_HASHES)
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n" * 100)
    base = tmp_path / "base"
    base.mkdir()
    env = sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_NO_HASHES="_hashlib:_sha3:_blake2:_md5")
    used = sc("--use", "-d", str(base), f"file:{source}", "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest(),
              env=env)
    assert (used.returncode, used.stderr) == (0, ""), used.stderr
    assert (Path(used.stdout.strip()) / source.name).read_bytes() == source.read_bytes()
    refused = sc("--use", "-d", str(base), f"file:{source}", "md5:" + hashlib.md5(source.read_bytes()).hexdigest(),
                 env=env)
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        f"sc: error: 'md5:{hashlib.md5(source.read_bytes()).hexdigest()}': unsupported hash type md5 (see 'sc --help')"
    ], refused.stderr


# Imports the transforms while hashlib logs its tracebacks (the hashes of $SC_TEST_NO_HASHES
# missing), and has another thread write a line to sys.stderr and log a warning meanwhile: as
# hashlib looks for its own SHA-1 module, a finder first on sys.meta_path starts that thread and
# waits for it.
WRITES_WHILE_HASHLIB_IS_IMPORTED = """
import logging, sys, threading

def write_and_log():
    print("another thread's line", file=sys.stderr)
    logging.getLogger("its.own").warning("another thread's record")

class WriteFromAnotherThread:
    def find_spec(self, name, path=None, target=None):
        if name == "_sha1":
            sys.meta_path.remove(self)
            writer = threading.Thread(target=write_and_log)
            writer.start()
            writer.join(30)
        return None

sys.meta_path.insert(0, WriteFromAnotherThread())
import sharedcache.loaders.transforms
print("hashlib" in sys.modules, "_sha1" in sys.modules)
"""


def test_importing_the_transforms_hides_hashlibs_tracebacks_but_no_other_threads_writes(tmp_path):
    # sys.stderr was replaced while hashlib was imported, to drop its tracebacks: what a library
    # caller's other threads wrote to stderr meanwhile was lost with them.
    import subprocess
    import sys

    from scutil import SRC, sc_env

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_HASHES)
    env = sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_NO_HASHES="_hashlib:_sha3:_blake2:_md5")
    done = subprocess.run([sys.executable, "-c", WRITES_WHILE_HASHLIB_IS_IMPORTED], env=env, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "True True\n", "another thread's line\nanother thread's record\n"), done.stderr


# Imports the transforms while hashlib logs its tracebacks, then configures logging as a program does.
CONFIGURES_LOGGING_AFTER_THE_TRANSFORMS = """
import logging
import sharedcache.loaders.transforms
print(logging.getLogger().handlers, logging.getLevelName(logging.getLogger().level))
logging.basicConfig(level=logging.INFO, format="CONFIGURED %(levelname)s %(message)s")
logging.info("the program's record")
"""


def test_importing_the_transforms_leaves_the_root_logger_as_it_was(tmp_path):
    # hashlib's logging.exception() configured the root logger with a handler of its own, which
    # stayed: the program's own logging.basicConfig(level=..., format=...) then did nothing.
    import subprocess
    import sys

    from scutil import SRC, sc_env

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_HASHES)
    env = sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_NO_HASHES="_hashlib:_md5")
    done = subprocess.run([sys.executable, "-c", CONFIGURES_LOGGING_AFTER_THE_TRANSFORMS], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "[] WARNING\n", "CONFIGURED INFO the program's record\n"), done.stderr
