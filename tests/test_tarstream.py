"""The tar header reader against Python's tarfile: the same members from the same bytes, in every
format tarfile writes and in the older spellings of numbers and checksums."""

from __future__ import annotations

import io
import tarfile

import pytest

from sharedcache.errors import CorruptDataError
from sharedcache.loaders.tarstream import (
    DIRECTORY,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarMember,
    TarReader,
)

pytestmark = pytest.mark.timeout(60)

KINDS = {tarfile.REGTYPE: REGULAR, tarfile.DIRTYPE: DIRECTORY, tarfile.SYMTYPE: SYMLINK,
         tarfile.LNKTYPE: HARDLINK}


def members(data: bytes) -> list[TarMember]:
    reader, found = TarReader(io.BytesIO(data), "test"), []
    while (member := reader.next()) is not None:
        if member.kind == REGULAR:
            left = member.size
            while left:
                left -= len(reader.take(left))
        found.append(member)
    return found


def archive(infos: list[tarfile.TarInfo], fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as out:
        for info in infos:
            out.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return buffer.getvalue()


def sample() -> list[tarfile.TarInfo]:
    infos = []
    for name, kind, link, size, mtime, mode in [
        ("plain.txt", tarfile.REGTYPE, "", 3, 1_700_000_000, 0o644),
        ("dir", tarfile.DIRTYPE, "", 0, 1_600_000_000, 0o755),
        ("dir/" + "long-" * 30 + ".txt", tarfile.REGTYPE, "", 1000, 1_650_000_000, 0o755),
        ("ünïcødé-файл-文件.txt", tarfile.REGTYPE, "", 5, 1_700_000_001, 0o600),
        ("link", tarfile.SYMTYPE, "dir/" + "target-" * 20, 0, 1_700_000_002, 0o777),
        ("hard", tarfile.LNKTYPE, "plain.txt", 0, 1_700_000_003, 0o644),
        ("p" * 60 + "/" + "q" * 60 + "/file", tarfile.REGTYPE, "", 7, 1_700_000_004, 0o644),  # ustar prefix
    ]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size, info.mtime, info.mode = kind, link, size, mtime, mode
        infos.append(info)
    return infos


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_members_as_tarfile(fmt: int) -> None:
    infos = [info for info in sample() if fmt != tarfile.USTAR_FORMAT or len(info.linkname) <= 100]
    if fmt == tarfile.USTAR_FORMAT:
        infos = [info for info in infos if "long-" not in info.name]
    data = archive(infos, fmt)
    with tarfile.open(fileobj=io.BytesIO(data)) as reference:
        expected = [(info.name, KINDS[info.type], info.size, info.mode, info.mtime * 10**9, info.linkname)
                    for info in reference]
    found = [(m.name.rstrip("/"), m.kind, m.size, m.mode, m.mtime_ns, m.linkname) for m in members(data)]
    assert found == expected
    assert len(found) == len(infos)


def test_pax_times_to_the_nanosecond_and_global_records() -> None:
    first, second = tarfile.TarInfo("a"), tarfile.TarInfo("b")
    first.pax_headers = {"mtime": "1700000000.123456789"}
    data = archive([first, second], tarfile.PAX_FORMAT)
    global_header = tarfile.TarInfo("g")
    global_header.type = tarfile.XGLTYPE
    records = b"30 mtime=1234567890.000000001\n"
    global_header.size = len(records)
    prefix = global_header.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (512 - len(records))
    a, b = members(prefix + data)
    assert a.mtime_ns == 1_700_000_000_123_456_789  # the local record wins over the global one
    assert b.mtime_ns == 1_234_567_890_000_000_001  # a global record applies to every later member


def test_base_256_numbers_and_signed_checksums() -> None:
    info = tarfile.TarInfo("ancient")
    info.mtime = -(8**12)  # too far back for octal: base-256, negative
    data = bytearray(archive([info], tarfile.GNU_FORMAT))
    assert members(bytes(data))[0].mtime_ns == -(8**12) * 10**9
    # A name with bytes above 127, summed as signed bytes (as some old tars did).
    header = bytearray(data[:512])
    header[0:7] = "é-name".encode("latin-1") + b"\0"
    header[148:156] = b" " * 8
    signed = sum(byte - 256 if byte > 127 else byte for byte in header)
    header[148:156] = b"%06o\0 " % signed
    assert members(bytes(header) + bytes(data[512:]))[0].name == "\udce9-name"  # the byte, kept


def test_octal_fields_with_spaces_and_a_damaged_number() -> None:
    data = bytearray(archive([tarfile.TarInfo("spaces")], tarfile.USTAR_FORMAT))
    data[100:108] = b"   644 \0"  # old tars padded numbers with spaces
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    assert members(bytes(data))[0].mode == 0o644
    data[100:108] = b"   6x4 \0"
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    with pytest.raises(CorruptDataError, match="invalid header at byte 0"):
        members(bytes(data))


@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.AREGTYPE])
def test_a_regular_member_named_as_a_directory_is_one_and_its_data_is_passed_over(kind: bytes) -> None:
    """Such a member (see test_reference_tools) that declares data: GNU tar does not skip it and
    loses its way ("Skipping to next header"); the reader passes over it to the next member."""
    named = tarfile.TarInfo("d/")
    named.type, named.size = kind, 700
    after = tarfile.TarInfo("after.txt")
    after.size = 3
    found = members(archive([named, after], tarfile.GNU_FORMAT))
    assert [(member.name, member.kind) for member in found] == [("d/", DIRECTORY), ("after.txt", REGULAR)]
