"""The writer processes (sharedcache.loaders.writer) against one process: the same trees, the
same refusals with the same messages, in archive order, with one writer or two, however the names
of members collide; and children that hold nothing of their parent, end with it, and end when
the other is killed, even while waiting for it.

``SERIAL_MEMBERS`` is set here so that the children take over at the first member, or midway, and
``WRITERS`` to run the authority alone or with its helper; by default only archives of thousands
of members fork, and two writers run.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import select
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from origin import Origin
from test_fuzz import _snapshot, damaged

from scutil import SRC, control, interpreter_for, sc, sc_start, stop_process, wait_for, writers_past
from sharedcache.errors import LoaderError
from sharedcache.loaders import archives, writer
from sharedcache.loaders.pipeline import populate
from sharedcache.loaders.registry import parse_recipe

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not writer.available(), reason="no writer process is forked here (one CPU for "
                                 "this process, or no fork and /proc): there would be nothing to compare")]

ONE_PROCESS = 10**9
SOLARIS_ACL = b"A"  # a type GNU tar does not know, of which it makes a file


def outcome(data: bytes, unpacker: str, serial_members: int, limit: int | None = 10_000_000, *,
            writers: int = writer.WRITERS, small_file_bytes: int = 1 << 62) -> tuple[str, object]:
    """What unpacking ``data`` gives: the tree, or the error's type and message.  The writers take
    over past ``serial_members`` members however large their files, unless ``small_file_bytes``
    says otherwise (the writer's default does: see ``writer.worth_forking``)."""
    with writers_past(serial_members, writers=writers, small_file_bytes=small_file_bytes), \
            tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "dest").mkdir()
        (root / "work").mkdir()
        (root / "input").write_bytes(data)
        try:
            populate(parse_recipe([f"file:{root / 'input'}", unpacker]), root / "dest", work=root / "work",
                     limit=limit)
        except LoaderError as error:
            return type(error).__name__, str(error).replace(scratch, "SCRATCH")
        return "tree", _tree(root / "dest")


def _tree(dest: Path) -> dict[str, tuple[object, ...]]:
    """What is under ``dest``: each path's kind and content, and its modification time ("now"
    for one left as its creation made it)."""
    def mtime(path: Path) -> int | str:
        mtime_ns = os.lstat(path).st_mtime_ns
        return "now" if abs(mtime_ns - time.time_ns()) < 3600 * 10**9 else mtime_ns

    return {path: (*found, mtime(dest / path)) for path, found in _snapshot(dest).items()}


def tar(*members: tuple[str, bytes | str | None, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of (name, content or link target, type) members: a file's content, or that of a member of
    another type that has data."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, 1_700_000_000, 0o755 if name.endswith(".sh") else 0o644
            if isinstance(content, bytes):
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
            else:
                if isinstance(content, str):
                    info.linkname = content
                archive.addfile(info)
    return buffer.getvalue()


def many_members(count: int) -> list[tuple[str, bytes | str | None, bytes]]:
    members: list[tuple[str, bytes | str | None, bytes]] = [("top", None, tarfile.DIRTYPE)]
    for i in range(count):
        members.append((f"top/d{i % 7}/f{i}.{'sh' if i % 5 == 0 else 'txt'}", f"{i}\n".encode() * (i % 40),
                        tarfile.REGTYPE))
    members += [("top/big.bin", os.urandom(3 << 20), tarfile.REGTYPE),  # larger than a pipe and a batch
                ("top/link", "d0/f0.sh", tarfile.SYMTYPE), ("top/hard", "top/d1/f1.txt", tarfile.LNKTYPE),
                ("top/d2/f2.txt", b"replaced by a later member\n", tarfile.REGTYPE),
                ("top/empty", None, tarfile.DIRTYPE), ("top/" + "ü" * 80 + "/ナ", b"pax names\n", tarfile.REGTYPE)]
    return members


@pytest.mark.parametrize("ring", [None, (4096, 1500)], ids=["ring", "small ring"])
@pytest.mark.parametrize("writers", [1, 2])
@pytest.mark.parametrize("serial_members", [0, 1000])
def test_a_large_archive_makes_the_same_tree_as_in_one_process(serial_members: int, writers: int,
                                                               ring: tuple[int, int] | None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A ring of 4 KiB for files of 1,500 bytes or fewer: the data starts again at the ring's
    # start every few files, and a writer that lags leaves it without room, so that the files
    # that come then go through the pipe; the 3 MiB file always does.
    if ring is not None:
        monkeypatch.setattr(writer, "_RING", ring[0])
        monkeypatch.setattr(writer, "_RING_FILE", ring[1])
    data = tar(*many_members(3000))
    kind, tree = outcome(data, "tar", serial_members, writers=writers)
    assert kind == "tree"
    assert (kind, tree) == outcome(data, "tar", ONE_PROCESS)


#: The pid of each process that forked, in this one (the writers are forked by the unpacking
#: process itself, whose fork hooks run: os.register_at_fork).
_FORKS: list[int] = []
os.register_at_fork(before=lambda: _FORKS.append(os.getpid()))


@pytest.mark.parametrize(("file_bytes", "forked"), [(12_000, False), (3_000, True)], ids=["larger", "small"])
def test_writers_take_over_only_from_archives_of_small_files(file_bytes: int, forked: bool) -> None:
    """Past SERIAL_MEMBERS members, writer processes take over only if the files so far held
    SMALL_FILE_BYTES or less on average: for larger ones (a software tree's) they cost more than
    they save.  The tree is the same either way."""
    data = tar(*[(f"top/d{i // 50}/f{i}.txt", bytes([65 + i % 26]) * file_bytes, tarfile.REGTYPE) for i in range(800)])
    forks = len(_FORKS)
    found = outcome(data, "tar", 400, small_file_bytes=writer.SMALL_FILE_BYTES)
    assert (len(_FORKS) > forks) == forked
    assert found[0] == "tree"
    assert found == outcome(data, "tar", ONE_PROCESS)


def zip_of_members(members: list[tuple[str, bytes | str | None, bytes]]) -> bytes:
    """A zip of the same (name, content or link target, type) members as :func:`tar` takes: hard
    links, which zip does not have, become copies of their target."""
    import stat
    import zipfile

    contents: dict[str, bytes] = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content, kind in members:
            info = zipfile.ZipInfo(name + "/" if kind == tarfile.DIRTYPE else name, (2023, 11, 14, 22, 13, 20))
            info.create_system, info.compress_type = 3, zipfile.ZIP_DEFLATED
            if kind == tarfile.DIRTYPE:
                info.external_attr, data = (stat.S_IFDIR | 0o755) << 16, b""
            elif kind == tarfile.SYMTYPE:
                info.external_attr, data = (stat.S_IFLNK | 0o777) << 16, str(content).encode()
            else:
                data = contents[str(content)] if kind == tarfile.LNKTYPE else bytes(content or b"")
                info.external_attr = (stat.S_IFREG | (0o755 if name.endswith(".sh") else 0o644)) << 16
            contents[name] = data
            archive.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("writers", [1, 2])
@pytest.mark.parametrize("serial_members", [0, 1000])
def test_a_large_zip_makes_the_same_tree_as_in_one_process(serial_members: int, writers: int) -> None:
    data = zip_of_members(many_members(3000))
    kind, tree = outcome(data, "zip", serial_members, writers=writers)
    assert kind == "tree"
    assert (kind, tree) == outcome(data, "zip", ONE_PROCESS)


@pytest.mark.parametrize(("case", "members", "expected"), [
    ("a refusal by the child comes before a corrupt end", [
        ("a.txt", b"a", tarfile.REGTYPE), ("hard", "missing", tarfile.LNKTYPE),
        *[(f"f{i}", b"x" * 600, tarfile.REGTYPE) for i in range(40)]], "UnsafeArchiveError"),
    ("a refusal by the parent", [
        ("a.txt", b"a", tarfile.REGTYPE), ("../escape", b"x", tarfile.REGTYPE)], "UnsafeArchiveError"),
    ("a link that leads out, found at the end by the child", [
        ("d", None, tarfile.DIRTYPE), ("d/up", "..", tarfile.SYMTYPE), ("d/x", "up/../..", tarfile.SYMTYPE),
        ("f", b"y", tarfile.REGTYPE)], "UnsafeArchiveError"),
    ("a write below a file", [("f", b"x", tarfile.REGTYPE), ("f/g", b"y", tarfile.REGTYPE)], "UnsafeArchiveError"),
])
@pytest.mark.parametrize("writers", [1, 2])
def test_failures_are_the_ones_one_process_reports(case: str, members: list, expected: str, writers: int) -> None:
    data = tar(*members)
    if case.endswith("corrupt end"):
        data = data[: len(data) // 2]  # cut within the members after the refused one
    serial = outcome(data, "tar", ONE_PROCESS)
    assert serial[0] == expected, serial
    assert outcome(data, "tar", 0, writers=writers) == serial


@pytest.mark.parametrize("writers", [1, 2])
def test_the_cap_on_entries_falls_on_the_member_it_falls_on_in_one_process(writers: int,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Directories made before the writers take over (the first 3 members) and after, implied by
    # files and named by members: every one counted once, whoever makes it.
    members: list[tuple[str, bytes | str | None, bytes]] = [
        ("a/b/one", b"1", tarfile.REGTYPE), ("c/two", b"2", tarfile.REGTYPE), ("d", None, tarfile.DIRTYPE)]
    members += [(f"{top}/{i}/f{j}", b"x", tarfile.REGTYPE) for top in "ac" for i in range(3) for j in range(4)]
    members += [("e", None, tarfile.DIRTYPE), ("a/b/three", b"3", tarfile.REGTYPE), ("e/g/h", b"4", tarfile.REGTYPE)]
    data = tar(*members)
    kinds = set()
    for cap in range(36, 46):  # 30 members, and 12 directories made: the tree's count is 42
        monkeypatch.setattr(archives, "MAX_ENTRIES", cap)
        serial = outcome(data, "tar", ONE_PROCESS)
        kinds.add(serial[0])
        assert outcome(data, "tar", 3, writers=writers) == serial, cap
    assert kinds == {"tree", "UnsafeArchiveError"}


def with_pax_records(records: dict[str, str]) -> bytes:
    """A tar of a plain file, then one whose pax header says ``records``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, pax in (("before.txt", {}), ("odd.txt", records)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.pax_headers = 1, 1_700_000_000, pax
            archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


@pytest.mark.parametrize("records", [{"mtime": "1e30"}, {"mtime": "-1e30"}, {"mtime": "9223372036.854775808"},
                                     {"size": str(2**70)}, {"size": str(2**63)}])
@pytest.mark.parametrize("limit", [None, 1000])
def test_numbers_no_frame_can_hold_give_what_one_process_gives(records: dict[str, str], limit: int | None) -> None:
    # A pax header can say any number; the frames hold 64 bits.
    data = with_pax_records(records)
    serial = outcome(data, "tar", ONE_PROCESS, limit)
    assert outcome(data, "tar", 0, limit, writers=1) == serial
    assert outcome(data, "tar", 0, limit, writers=2) == serial


def test_the_size_limit_is_kept_by_the_child() -> None:
    data = tar(*[(f"f{i}", b"z" * 1_000_000, tarfile.REGTYPE) for i in range(12)])
    serial = outcome(data, "tar", ONE_PROCESS)
    assert serial[0] == "SizeLimitError"
    for writers in (1, 2):
        assert outcome(data, "tar", 0, writers=writers) == serial
        assert outcome(data, "tar", 5, writers=writers) == serial


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(damaged().filter(lambda sample: sample[1] in ("tar", "zip")))
def test_damaged_archives_give_the_same_outcome_in_both(sample: tuple[bytes, str]) -> None:
    data, unpacker = sample
    serial = outcome(data, unpacker, ONE_PROCESS)
    assert outcome(data, unpacker, 0, writers=1) == serial
    assert outcome(data, unpacker, 0, writers=2) == serial


def _leaves_for_both_writers() -> tuple[str, ...]:
    """Names of which some fall on the helper and some on the authority (the parent routes a
    file by the hash of its name's last component, and this process is the parent)."""
    candidates = [f"n{number}" for number in range(64)]
    return (*[name for name in candidates if hash(name) & 1][:3], *[name for name in candidates if not hash(name) & 1][:2])


@st.composite
def colliding_members(draw: st.DrawFn) -> list[tuple[str, bytes | str | None, bytes]]:
    """Members of few names in few directories, of every kind, falling on both writers: files
    replaced by files, links and directories, and the other way round; hard links to files
    either writer made; files below what is not a directory; members of a type GNU tar does not
    know, whose files the next member of their name replaces, a directory too."""
    leaves = _leaves_for_both_writers()
    directories = ["", "d/", "d/e/", f"d/{leaves[0]}/", f"{leaves[3]}/"]
    drawn: list[tuple[str, bytes | str | None, bytes]] = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from([tarfile.REGTYPE] * 4 + [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                                             SOLARIS_ACL]))
        name = draw(st.sampled_from(directories)) + draw(st.sampled_from(leaves))
        content: bytes | str | None = None
        if kind in (tarfile.REGTYPE, SOLARIS_ACL):
            content = draw(st.sampled_from([b"", b"x", b"y" * 5000]))
        elif kind == tarfile.SYMTYPE:
            content = "../" * name.count("/") + draw(st.sampled_from(leaves))
        elif kind == tarfile.LNKTYPE:
            files = [earlier for earlier, _, earlier_kind in drawn if earlier_kind in (tarfile.REGTYPE, SOLARIS_ACL)]
            content = draw(st.sampled_from(files)) if files else name
        drawn.append((name, content, kind))
    return drawn


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=colliding_members())
def test_two_writers_make_what_one_process_makes_whatever_the_names_collide(
        drawn: list[tuple[str, bytes | str | None, bytes]]) -> None:
    data = tar(*drawn)
    serial = outcome(data, "tar", ONE_PROCESS)
    event(serial[0] if serial[0] == "tree" else "refused")
    assert outcome(data, "tar", 0, writers=2) == serial
    assert outcome(data, "tar", 3, writers=2) == serial


@pytest.mark.parametrize("writers", [1, 2])
def test_the_file_of_an_unknown_type_is_replaced_by_a_directory_as_in_one_process(writers: int) -> None:
    """The file of a member of a type GNU tar does not know (Solaris' ACL, before the directory it
    is for) is replaced by the next member of its name, a directory too, and a directory replaces
    it no longer once another member has: whichever writer a file of that name would fall on,
    the tree and the refusal are those of one process."""
    leaf = _leaves_for_both_writers()[0]  # a name whose files fall on the helper
    for members, expected in (
            ([(leaf, b"acl", SOLARIS_ACL), (leaf, None, tarfile.DIRTYPE), (f"{leaf}/f", b"f", tarfile.REGTYPE)], "tree"),
            ([(leaf, b"acl", SOLARIS_ACL), (leaf, b"file", tarfile.REGTYPE), (leaf, None, tarfile.DIRTYPE)],
             "UnsafeArchiveError")):
        data = tar(*members)
        serial = outcome(data, "tar", ONE_PROCESS)
        assert serial[0] == expected, serial
        assert outcome(data, "tar", 0, writers=writers) == serial


# --- the child process ----------------------------------------------------------------------------

STALLED = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    held = open({held!r}, "w")  # a descriptor the child must not keep: a lock, a connection
    signal.signal(signal.SIGTERM, lambda *_: None)  # a handler of the program's, not the child's
    read_end = os.fdopen({read_end}, "rb", buffering=0)
    print(os.getpid(), flush=True)
    extract_tar(read_end, Path({dest!r}), Context(work=Path({work!r}), what="stalled"))
""")


def caught_signals(pid: int) -> int:
    """The mask of the signals that process ``pid`` catches with a handler."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie that its new parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # (gone between the open and the read: ESRCH)
        return True


def end_unpacking(parent: subprocess.Popen[bytes] | subprocess.Popen[str], write_end: int,
                  children: list[int] | None = None, signum: int = signal.SIGKILL) -> None:
    """A test's clean-up of its unpacking process: close its input (unless closed: -1), send
    ``signum`` to the ``children`` found, then end the process if it has not ended."""
    if write_end >= 0:
        os.close(write_end)
    for child in children or []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)
    if parent.poll() is None:
        parent.kill()
        parent.wait(timeout=30)


def test_the_child_holds_no_descriptor_of_the_parent_and_ends_when_it_is_killed(tmp_path: Path) -> None:
    dest, work, held = tmp_path / "dest", tmp_path / "work", tmp_path / "held.lock"
    dest.mkdir()
    work.mkdir()
    read_end, write_end = os.pipe()
    script = STALLED.format(src=SRC, held=str(held), read_end=read_end, dest=str(dest), work=str(work))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, pass_fds=[read_end])
    os.close(read_end)
    try:
        assert parent.stdout is not None
        assert int(parent.stdout.readline()) == parent.pid
        # Members, then silence: the parent waits for more, the child for the parent.  Which writer
        # makes a file is a hash of its name (random in each process), and a writer is sent
        # nothing until a batch of its files is gathered: 300 files of 2,000 bytes left f0's
        # writer short of a batch in about one run of fifty.  Files of the ring's largest fill a
        # batch by the handful, and each writer gets dozens.
        data = b"data\n" * (writer._RING_FILE // 5)
        assert 5 * len(data) >= writer._BATCH
        head = tar(*[(f"f{i}", data, tarfile.REGTYPE) for i in range(64)])
        os.write(write_end, head[: len(head) - 2048])
        wait_for(lambda: len(children_of(parent.pid)) == writer.WRITERS, 30, "the writer processes")
        children = children_of(parent.pid)
        wait_for((dest / "f0").exists, 30, "the members sent to be written")
        for child in children:
            def targets(child: int = child) -> set[str]:
                found = set()
                for fd in os.listdir(f"/proc/{child}/fd"):
                    with contextlib.suppress(FileNotFoundError):  # a file the child just closed
                        found.add(os.readlink(f"/proc/{child}/fd/{fd}"))
                return found

            def only_its_own(child: int = child) -> bool:
                # Its pipes, the tree's directories and the file being written, if any: nothing
                # else, once it has closed what fork gave it (the first thing it does: a loaded
                # machine may look before).
                return all(target.startswith("pipe:") or target == str(dest) or target.startswith(f"{dest}/")
                           for target in targets(child))

            wait_for(only_its_own, 30, "the child to close the parent's descriptors")
            assert str(held) not in targets()
            # The parent's handlers (Python's for SIGINT, the program's for SIGTERM) are not the
            # child's: a signal to it does what it does to any process.
            assert caught_signals(child) == 0
        assert caught_signals(parent.pid) & (1 << (signal.SIGTERM - 1))
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for(lambda: all(map(ended, children)), 30, "the end of the children after their parent's")
    finally:
        end_unpacking(parent, write_end)


def feed(write_end: int, data: memoryview, until: Callable[[], bool], what: str) -> memoryview:
    """Write ``data`` to the non-blocking pipe ``write_end`` as its reader takes it, until all of
    it is written, the reader has gone or ``until()``; return what is left."""
    deadline = time.monotonic() + 30
    while data and not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        try:
            data = data[os.write(write_end, data):]
        except BlockingIOError:
            time.sleep(0.01)
        except BrokenPipeError:
            return data[:0]
    return data


def waiting_for_the_other(pid: int) -> bool:
    """Whether writer ``pid`` is in its wait for the other writer (a poll with a timeout)."""
    with open(f"/proc/{pid}/wchan") as wchan:
        return "poll_schedule_timeout" in wchan.read()


@pytest.mark.parametrize("victim", [0, 1], ids=["the authority", "the helper"])
def test_a_writer_killed_while_the_other_waits_for_it_ends_the_unpack_with_an_error(tmp_path: Path,
                                                                                     victim: int) -> None:
    # Each directory's files that fall on the helper wait for the authority to make it; a
    # directory whose name falls on the helper, made beside files of the helper, waits for them.
    dest, work = tmp_path / "dest", tmp_path / "work"
    dest.mkdir()
    work.mkdir()
    read_end, write_end = os.pipe()
    script = STALLED.format(src=SRC, held=str(tmp_path / "held"), read_end=read_end, dest=str(dest), work=str(work))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              pass_fds=[read_end])
    os.close(read_end)
    children: list[int] = []
    try:
        assert parent.stdout is not None
        assert int(parent.stdout.readline()) == parent.pid
        members = []
        for directory in range(40):
            members += [(f"r{directory}-{i}", b"top\n" * 100, tarfile.REGTYPE) for i in range(8)]
            members += [(f"d{directory}/f{i}", b"data\n" * 400, tarfile.REGTYPE) for i in range(20)]
        data = tar(*members)
        head = len(data) // 2  # past the parent's first batch of frames for each writer
        os.write(write_end, data[:head])
        wait_for(lambda: len(children_of(parent.pid)) == 2, 30, "the writer processes")
        children = children_of(parent.pid)  # in the order they were made: the authority first
        survivor = children[1 - victim]
        wait_for(lambda: any(dest.iterdir()), 30, "the members sent to be written")
        os.kill(children[victim], signal.SIGSTOP)
        # The parent may block on the stopped writer's full pipe and stop reading: the pipe is fed
        # only as it is read, until the other writer waits.
        os.set_blocking(write_end, False)
        left = feed(write_end, memoryview(data)[head:], lambda: waiting_for_the_other(survivor),
                    "the other writer waiting")
        wait_for(lambda: waiting_for_the_other(survivor), 30, "the other writer waiting")
        os.kill(children[victim], signal.SIGKILL)
        feed(write_end, left, lambda: False, "the parent reading the rest")
        os.close(write_end)
        write_end = -1
        _out, err = parent.communicate(timeout=60)
        assert parent.returncode != 0
        assert "its writer process was killed by signal 9" in err.decode(), err
        wait_for(lambda: all(map(ended, children)), 30, "the end of both writers")
    finally:
        end_unpacking(parent, write_end, children, signal.SIGKILL)


MANY_DESCRIPTORS = textwrap.dedent("""
    import os, resource, sys
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]  # a server's sockets, say
    with open({archive!r}, "rb") as archive:
        extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="many.tar"))
    print("unpacked")
""")


def test_a_parent_with_descriptors_past_1024_gets_its_tree(tmp_path: Path) -> None:
    # The writers' pipes then have numbers past what select() can watch (FD_SETSIZE).
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2048:
        pytest.skip("the hard limit on open files is below 2048 here")
    archive, dest, work = tmp_path / "many.tar", tmp_path / "dest", tmp_path / "work"
    members = []
    for directory in range(40):  # each directory's files wait for it; each waits for the files beside it
        members += [(f"r{directory}-{i}", b"top\n", tarfile.REGTYPE) for i in range(8)]
        members += [(f"d{directory}/f{i}", b"data\n", tarfile.REGTYPE) for i in range(20)]
    archive.write_bytes(tar(*members))
    dest.mkdir()
    work.mkdir()
    script = MANY_DESCRIPTORS.format(src=SRC, archive=str(archive), dest=str(dest), work=str(work))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "unpacked\n", result.stderr
    assert ("tree", _tree(dest)) == outcome(archive.read_bytes(), "tar", ONE_PROCESS)


COUNTS_FORKS = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    if {cpus!r}:
        os.sched_setaffinity(0, {cpus!r})
    os.register_at_fork(after_in_parent=lambda: print("forked"))
    with open({archive!r}, "rb") as archive:
        extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="many.tar"))
    print("unpacked")
""")


def unpack_counting_forks(tmp_path: Path, cpus: set[int], *, prefix: tuple[str, ...] = ()) -> list[str]:
    """Unpack an archive of many members in a new process that may run on ``cpus`` (all if
    empty), with ``prefix`` before its command; what it printed, one line per fork."""
    archive, dest, work = tmp_path / "many.tar", tmp_path / "dest", tmp_path / "work"
    tmp_path.mkdir(exist_ok=True)
    archive.write_bytes(tar(*many_members(50)))
    dest.mkdir()
    work.mkdir()
    script = COUNTS_FORKS.format(src=SRC, cpus=cpus, archive=str(archive), dest=str(dest), work=str(work))
    result = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("tree", _tree(dest)) == outcome(archive.read_bytes(), "tar", ONE_PROCESS)
    return result.stdout.splitlines()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="this machine gives this process one CPU")
def test_a_process_bound_to_one_cpu_unpacks_in_one_process_and_on_two_with_two_writers(tmp_path: Path) -> None:
    first, second = sorted(os.sched_getaffinity(0))[:2]
    assert unpack_counting_forks(tmp_path / "one", {first}) == ["unpacked"]
    assert unpack_counting_forks(tmp_path / "two", {first, second}) == ["forked", "forked", "unpacked"]


def cpu_quota_of_one_cpu(group: Path) -> tuple[str, ...]:
    """Make the control group ``group`` with a quota of one CPU; the command prefix that runs a
    program in it.  Skips the calling test where no control group can be made (cgroup v1's cpu
    controller or cgroup v2's, as root)."""
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            made = v1 / group.name
            made.mkdir()
            (made / "cpu.cfs_period_us").write_text("100000")
            (made / "cpu.cfs_quota_us").write_text("100000")
        elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            made = v2 / group.name
            made.mkdir()
            (made / "cpu.max").write_text("100000 100000")
        else:
            pytest.skip("no cpu controller of cgroup v1 or v2 to give a process a quota")
    except PermissionError:
        pytest.skip("cannot make a control group here (needs root)")
    except FileNotFoundError:
        pytest.skip("no control groups mounted at /sys/fs/cgroup")
    return ("sh", "-c", f'echo $$ > {made / "cgroup.procs"} && exec "$@"', "in-group")


def test_a_process_with_a_cpu_quota_of_one_cpu_unpacks_in_one_process(tmp_path: Path) -> None:
    group = Path(f"sc-test-quota-{os.getpid()}")
    prefix = cpu_quota_of_one_cpu(group)
    made = next(path for path in (Path("/sys/fs/cgroup/cpu") / group, Path("/sys/fs/cgroup") / group)
                if path.exists())
    try:
        assert unpack_counting_forks(tmp_path, set(), prefix=prefix) == ["unpacked"]
    finally:
        made.rmdir()  # its process has exited


NO_FORK = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # no other process (or thread) for this user
    with open({archive!r}, "rb") as archive:  # uncompressed: no decompressing thread either
        extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="many.tar"))
    print("unpacked")
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run as another user whose processes it can limit")
def test_without_a_process_to_fork_the_archive_is_unpacked_in_one(reachable_tmp: Path) -> None:
    # Root ignores RLIMIT_NPROC, so the unpack runs as nobody, who has no other process here.
    archive, dest, work = reachable_tmp / "many.tar", reachable_tmp / "dest", reachable_tmp / "work"
    archive.write_bytes(tar(*many_members(50)))
    for directory in (dest, work):
        directory.mkdir()
        os.chown(directory, 65534, 65534)
    script = NO_FORK.format(src=SRC, archive=str(archive), dest=str(dest), work=str(work))
    interpreter, env = interpreter_for(65534, 65534)  # (this one may be in a home only root enters)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", interpreter, "-c",
                             script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and result.stdout == "unpacked\n", result.stderr
    expected = outcome(archive.read_bytes(), "tar", ONE_PROCESS)
    assert ("tree", _tree(dest)) == expected


IGNORES_CHILDREN = textwrap.dedent("""
    import signal, sys
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel: no waitpid
    with open({archive!r}, "rb") as archive:
        extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="many.tar"))
    print("unpacked")
""")


def fifty_member_unpack(tmp_path: Path, template: str) -> tuple[Path, Path, str]:
    """A tar of 50 members, the directory to unpack it into, and ``template`` (a script that
    unpacks it with writer processes) filled in for them."""
    archive, dest, work = tmp_path / "many.tar", tmp_path / "dest", tmp_path / "work"
    archive.write_bytes(tar(*many_members(50)))
    dest.mkdir()
    work.mkdir()
    return archive, dest, template.format(src=SRC, archive=str(archive), dest=str(dest), work=str(work))


def test_a_program_that_ignores_sigchld_gets_its_tree(tmp_path: Path) -> None:
    archive, dest, script = fifty_member_unpack(tmp_path, IGNORES_CHILDREN)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "unpacked\n", result.stderr
    expected = outcome(archive.read_bytes(), "tar", ONE_PROCESS)
    assert ("tree", _tree(dest)) == expected



INTERRUPTED = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a shell in the foreground starts it
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    try:
        with open({read_end}, "rb") as archive:
            extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="piped.tar"))
    except KeyboardInterrupt:
        print("interrupted")
    else:
        print("unpacked")
""")


def pipes_of(pid: int) -> int:
    """How many pipes process ``pid`` has open, besides its standard streams."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            count += int(fd) > 2 and os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
    return count


def test_an_interrupt_while_the_parent_waits_for_the_child_s_answer_still_stops_the_child(tmp_path: Path) -> None:
    # The parent has sent everything and closed the command pipe; a signal's exception (Ctrl-C, a
    # job's end) cuts into its wait for the answer.  The clean-up stopped the child again from
    # the start: it closed the command pipe a second time (EBADF, or a descriptor opened since)
    # and failed with "Bad file descriptor" instead of the interrupt, without waiting for the child.
    dest, work = tmp_path / "dest", tmp_path / "work"
    dest.mkdir()
    work.mkdir()
    read_end, write_end = os.pipe()
    script = INTERRUPTED.format(src=SRC, read_end=read_end, dest=str(dest), work=str(work))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, pass_fds=[read_end])
    os.close(read_end)
    children: list[int] = []
    try:
        data = tar(*[(f"f{i}", b"data\n" * 400, tarfile.REGTYPE) for i in range(500)])  # past one read
        os.write(write_end, data[:-2048])  # the reader waits for whole buffers: all but the end
        wait_for(lambda: len(children_of(parent.pid)) == writer.WRITERS, 30, "the writer processes")
        children = children_of(parent.pid)
        for child in children:
            os.kill(child, signal.SIGSTOP)  # they answer only once continued
        os.write(write_end, data[-2048:])
        os.close(write_end)
        write_end = -1

        def waiting_for_the_answer() -> bool:  # the command pipes closed: the input's and the answers' left
            with open(f"/proc/{parent.pid}/wchan") as wchan:
                return pipes_of(parent.pid) == 1 + writer.WRITERS and "poll_schedule_timeout" in wchan.read()

        wait_for(waiting_for_the_answer, 30, "the parent waiting for the children's answers")
        parent.send_signal(signal.SIGINT)
        # The interrupt is handled; the parent, given up, waits no longer for stopped writers:
        # it kills them (a continued one would end too, having been sent nothing more).
        time.sleep(0.5)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        out, err = parent.communicate(timeout=30)
        assert (parent.returncode, out) == (0, "interrupted\n"), err
        wait_for(lambda: all(map(ended, children)), 30, "the end of the children")
    finally:
        end_unpacking(parent, write_end, children, signal.SIGCONT)  # they end once continued


# --- what the other threads of the parent hold at the fork ----------------------------------------

SIGNALLED_AT_THE_FORK = textwrap.dedent("""
    import os, signal, sys, threading, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a shell in the foreground starts it
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.errors import LoaderError
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    # A progress line, written by another thread to a stderr that nobody reads for now: that
    # thread holds the stream's lock at the fork.
    telling = threading.Thread(target=lambda: print("sc: progress", file=sys.stderr, flush=True), daemon=True)
    telling.start()
    def writing():
        with open(f"/proc/self/task/{{telling.native_id}}/wchan") as wchan:
            return "pipe_write" in wchan.read()
    while not writing():
        time.sleep(0.01)
    # Ctrl-C (or a job's end) reaching each child as it starts.
    os.register_at_fork(after_in_parent=lambda: print("forked", flush=True),
                        after_in_child=lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        with open({archive!r}, "rb") as archive:
            extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="many.tar"))
    except LoaderError as error:
        print(error, flush=True)
    else:
        print("unpacked", flush=True)
    # Its line out (the test drains stderr once forked), the stream's lock is free again: else
    # the flush of stderr at exit, waiting for that lock, would abort the interpreter.
    telling.join(30)
""")


def first_line(descriptor: int, timeout: float) -> tuple[bytes, bytes]:
    """The first line read from the pipe ``descriptor``, and what came with it.  Read from the
    descriptor, not through a file object: ``communicate()`` reads the descriptor too, and would
    not see what a file object's ``readline()`` had taken into its buffer."""
    got, deadline = b"", time.monotonic() + timeout
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([descriptor], [], [], left)[0]:
            raise TimeoutError(f"no line in {timeout} s (got {got!r})")
        if not (chunk := os.read(descriptor, 1 << 16)):
            break
        got += chunk
    line, newline, rest = got.partition(b"\n")
    return line + newline, rest


def full_pipe() -> tuple[int, int]:
    """A pipe filled to the brim: a write to it waits until its reader reads."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"." * 4096)
    os.set_blocking(write_end, True)
    return read_end, write_end


def test_a_signal_as_a_writer_starts_while_another_thread_writes_to_stderr_ends_the_unpack(tmp_path: Path) -> None:
    # The signal's exception, raised in the child by the parent's handler within the handlers
    # Python runs after a fork, was printed to stderr: whose lock the child never got, as the
    # thread that held it at the fork does not exist there.  Both writers waited for it for
    # good, and the parent for them.
    script = fifty_member_unpack(tmp_path, SIGNALLED_AT_THE_FORK)[2]
    read_end, write_end = full_pipe()
    # Buffered, as anyone runs sc: the stream then has a lock (PYTHONUNBUFFERED leaves it none).
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=write_end, env=env)
    os.close(write_end)
    children: list[int] = []
    err: list[bytes] = []
    try:
        assert parent.stdout is not None
        # (The parent may have said all it says by now: the rest is kept for what follows.)
        line, rest = first_line(parent.stdout.fileno(), 30)
        assert line == b"forked\n"
        with contextlib.suppress(FileNotFoundError):  # gone already: it ended
            children = children_of(parent.pid)
        drain = threading.Thread(target=lambda: err.extend(iter(lambda: os.read(read_end, 1 << 16), b"")), daemon=True)
        drain.start()  # the line goes out: the parent's thread lets go of the stream's lock
        out = (rest + parent.communicate(timeout=30)[0]).decode()
        assert parent.returncode == 0
        assert out.splitlines()[-1] == "cannot unpack many.tar: its writer process was killed by signal 2", out
        drain.join(30)
        assert b"".join(err).strip(b".") == b"sc: progress\n"  # and nothing of the children's
        wait_for(lambda: all(map(ended, children)), 30, "the end of the writers")
    finally:
        with contextlib.suppress(FileNotFoundError):  # the writers forked since the first look
            children += children_of(parent.pid)
        end_unpacking(parent, -1, children)
        os.close(read_end)


FINALIZED_AT_THE_FORK = textwrap.dedent("""
    import gc, os, sys
    parent = os.getpid()
    class Connection:  # a finalizer of the program's: it may take a lock, flush a file, print
        def __del__(self):
            os.write(1, b"finalized in the parent\\n" if os.getpid() == parent else b"finalized in a writer\\n")
    def garbage():
        connection = Connection()
        connection.cycle = connection
        del connection  # garbage, not yet collected: the next allocation collects it
        gc.set_threshold(1)
    # Registered first, so that it runs last before the fork.
    os.register_at_fork(before=garbage, after_in_parent=lambda: gc.set_threshold(700))
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    with open({archive!r}, "rb") as archive:
        extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="many.tar"))
    gc.collect()
    print("unpacked")
""")


def test_no_finalizer_of_the_parent_runs_in_a_writer(tmp_path: Path) -> None:
    # A collection in the child, as it made its first objects, ran the finalizers of the
    # parent's garbage there, with whatever locks the parent's other threads held.
    archive, dest, script = fifty_member_unpack(tmp_path, FINALIZED_AT_THE_FORK)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["finalized in the parent"] * writer.WRITERS + ["unpacked"]
    assert ("tree", _tree(dest)) == outcome(archive.read_bytes(), "tar", ONE_PROCESS)


TWO_UNPACKS_AT_ONCE = textwrap.dedent("""
    import gc, os, sys, threading, time
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    # Each writer, as it starts, says whether the collector was on (it must not be).
    os.register_at_fork(after_in_child=lambda: os.write(1, b"collector on in a writer\\n") if gc.isenabled() else None)
    first = threading.Event()   # the first unpack is about to fork its first writer
    second = threading.Event()  # the second is about to fork too
    def at_fork(event, args):
        if event != "os.fork":
            return
        if threading.current_thread().name == "first" and not first.is_set():
            first.set()
            second.wait(2)  # until the second thread has looked at the collector, if it may
        elif threading.current_thread().name == "second" and not second.is_set():
            second.set()
            deadline = time.monotonic() + 2  # until the first has switched the collector back on
            while not gc.isenabled() and time.monotonic() < deadline:
                time.sleep(0.001)
    sys.addaudithook(at_fork)
    def unpack(number):
        with open({archive!r}, "rb") as archive:
            extract_tar(archive, Path({dest!r}) / number, Context(work=Path({work!r}), what="many.tar"))
    threads = [threading.Thread(target=unpack, args=(name,), name=name) for name in ("first", "second")]
    threads[0].start()
    first.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(60)
    print("collector", "on" if gc.isenabled() else "off")
""")


def test_two_unpacks_at_once_fork_with_the_collector_off_and_leave_it_on(tmp_path: Path) -> None:
    # The collector's state is the process's: two threads forking at once (a program unpacking
    # two archives with the library) each saved and restored it, so the second forked with it
    # switched back on by the first, or left it off for good.
    archive, dest, script = fifty_member_unpack(tmp_path, TWO_UNPACKS_AT_ONCE)
    for number in ("first", "second"):
        (dest / number).mkdir()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "collector on\n"
    expected = outcome(archive.read_bytes(), "tar", ONE_PROCESS)
    assert ("tree", _tree(dest / "first")) == ("tree", _tree(dest / "second")) == expected


LEAVES_THE_FILTERS = textwrap.dedent("""
    import os, sys, warnings
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from sharedcache.loaders import writer
    from sharedcache.loaders.archives import extract_tar
    from sharedcache.loaders.protocol import Context
    writer.SERIAL_MEMBERS = 0
    parent = os.getpid()
    class Told(warnings.catch_warnings):  # says in which process the filters are put back
        def __exit__(self, *exc):
            os.write(1, b"filters put back in the parent\\n" if os.getpid() == parent else b"in a writer\\n")
            return super().__exit__(*exc)
    warnings.catch_warnings = Told
    with open({archive!r}, "rb") as archive:
        extract_tar(archive, Path({dest!r}), Context(work=Path({work!r}), what="many.tar"))
    print("unpacked", flush=True)
""")


def test_a_writer_never_puts_back_the_parent_s_warning_filters(tmp_path: Path) -> None:
    # From Python 3.13 that takes the warnings module's lock, which another thread of the parent
    # may have held at the fork: the writer would wait for it for good.
    script = fifty_member_unpack(tmp_path, LEAVES_THE_FILTERS)[2]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["filters put back in the parent"] * writer.WRITERS + ["unpacked"]


# --- a writer stopped (kill -STOP, a debugger) ----------------------------------------------------

def small_then_large() -> bytes:
    """A tar of small files, for the writers to take over, then of files too large for their
    rings: their data goes through the command pipes, which fill once a writer stops reading."""
    return tar(*[(f"small{i}", b"small\n" * 100, tarfile.REGTYPE) for i in range(writer.SERIAL_MEMBERS + 100)],
               *[(f"large{i}", os.urandom(200_000), tarfile.REGTYPE) for i in range(60)])


@pytest.fixture
def slow_archive() -> Iterator[tuple[Origin, str]]:
    """An origin serving :func:`small_then_large` at 2 MB/s (a few seconds for all of it), and its URL."""
    server = Origin(rate=2_000_000).start()
    try:
        yield server, server.add("/many.tar", small_then_large())
    finally:
        server.stop()


def stop_writers(populator: subprocess.Popen[str], *, begun: bool = False) -> list[int]:
    """Stop the writer processes of ``populator`` as soon as they are forked, or once they have
    ``begun`` (bound to their parent: they have put back the default action of SIGTERM, which
    ``populator``, started with ``default_signals``, catches); their pids."""
    def forked() -> bool:
        assert populator.poll() is None, populator.communicate()
        children = children_of(populator.pid)
        try:
            return len(children) == writer.WRITERS and not (begun and any(
                caught_signals(child) & 1 << (signal.SIGTERM - 1) for child in children))
        except (FileNotFoundError, ProcessLookupError):  # a process that is no writer, gone already
            return False

    wait_for(forked, 30, "the writer processes")
    children = children_of(populator.pid)
    for child in children:
        os.kill(child, signal.SIGSTOP)
    return children


def test_stopped_writers_end_the_population_at_its_timeout_and_the_waiter_takes_over(
        tmp_path: Path, slow_archive: tuple[Origin, str]) -> None:
    # The populator waited for good on a stopped writer (to write to its pipe, then to read its
    # answer), past --timeout, silent even with -v; a signal's clean-up waited the same way.
    server, url = slow_archive
    base = tmp_path / "base"
    base.mkdir()
    args = ["--use", "-d", str(base), "-n", "many", "--pid", str(os.getpid()), f"http:{url}", "tar"]
    populator = sc_start("--timeout", "4", *args)
    waiter: subprocess.Popen[str] | None = None
    children: list[int] = []
    try:
        children = stop_writers(populator)
        waiter = sc_start("--timeout", "60", *args)
        _out, err = populator.communicate(timeout=30)
        assert populator.returncode == 1, err
        assert err.startswith("sc: error: repository 'many': timed out after 4 s populating it"), err
        assert len(err.splitlines()) == 1, err
        assert any(f"its writer process {child} did not answer (it is stopped)" in err for child in children), err
        assert all(map(ended, children)), "a stopped writer is left behind"
        server.rate = None
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        assert len(os.listdir(out.strip())) == writer.SERIAL_MEMBERS + 160
    finally:
        if waiter is not None:
            stop_process(waiter)
        end_unpacking(populator, -1, children, signal.SIGKILL)


def test_a_populator_whose_writers_are_stopped_ends_at_once_by_sigterm(tmp_path: Path,
                                                                    slow_archive: tuple[Origin, str]) -> None:
    server, url = slow_archive
    base = tmp_path / "base"
    base.mkdir()
    args = ["--use", "-d", str(base), "-n", "many", "--pid", str(os.getpid()), f"http:{url}", "tar"]
    populator = sc_start(*args, default_signals=True)
    children: list[int] = []
    try:
        children = stop_writers(populator)
        populator.send_signal(signal.SIGTERM)
        _out, err = populator.communicate(timeout=30)
        assert populator.returncode == -signal.SIGTERM, err
        assert all(map(ended, children)), "a stopped writer is left behind"
        assert list((control(base) / "stage").iterdir()) == [], "the staging tree is left for a sweep"
        assert not (control(base) / "populate" / "many.error").exists(), "an error is recorded for the next use"
        server.rate = None
        again = sc(*args)
        assert again.returncode == 0, again.stderr
        assert len(os.listdir(again.stdout.strip())) == writer.SERIAL_MEMBERS + 160
    finally:
        end_unpacking(populator, -1, children, signal.SIGKILL)


def test_a_populator_ended_by_sigterm_does_not_wait_for_its_writers_to_drain_their_queue(tmp_path: Path) -> None:
    # On a signal the parent let its writers execute every frame it had sent them (a megabyte of
    # small files) before it stopped them: the command took seconds (9-13 s on a disk) to end,
    # with its writers busy in a staging tree nobody would commit.
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as out:
        for number in range(40_000):
            info = tarfile.TarInfo(f"d{number // 1000}/f{number}")
            info.size = 64
            out.addfile(info, io.BytesIO(bytes(64)))
    base = tmp_path / "base"
    base.mkdir()
    populator = sc_start("--use", "-d", str(base), "-n", "many", "--pid", str(os.getpid()), f"file:{archive}", "tar",
                         default_signals=True)
    children: list[int] = []
    try:
        def forked() -> bool:
            assert populator.poll() is None, populator.communicate()
            return len(children_of(populator.pid)) == writer.WRITERS

        wait_for(forked, 30, "the writer processes")
        children = children_of(populator.pid)
        # The writers' work is counted in their write calls, which load slows as it slows them: a
        # few hundred made (their queue filled meanwhile) against those made once the signal is
        # sent.  Killed, they make a handful more; draining their queue, thousands.
        began = sum(writes_of(children).values())
        wait_for(lambda: sum(writes_of(children).values()) - began >= 500, 60, "the writers' first files")
        signalled = writes_of(children)
        populator.send_signal(signal.SIGTERM)
        last = dict(signalled)
        deadline = time.monotonic() + 60
        while not all(map(ended, children)):
            assert time.monotonic() < deadline, "a writer is left behind"
            for child, count in writes_of(children).items():
                last[child] = max(last[child], count)
            time.sleep(0.002)
        populator.communicate(timeout=60)
        assert populator.returncode == -signal.SIGTERM
        before = sum(signalled.values()) - began
        after = sum(last.values()) - sum(signalled.values())
        assert after < before // 2, f"the writers made {after} write calls after SIGTERM, {before} before it: " \
                                    "they drained their queue first"
    finally:
        end_unpacking(populator, -1, children, signal.SIGKILL)


def writes_of(pids: list[int]) -> dict[int, int]:
    """The write calls each process of ``pids`` has made (0 for one that has ended)."""
    counts = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as listing:
                counts[pid] = next(int(line.split()[1]) for line in listing if line.startswith("syscw:"))
        # PermissionError: once a process has let go of its memory (a zombie), the kernel gives
        # root its files under /proc, and its own user may no longer read its io.
        except (FileNotFoundError, ProcessLookupError, PermissionError, StopIteration):
            counts[pid] = 0
    return counts


def populate_many(tmp_path: Path, url: str) -> subprocess.Popen[str]:
    """Start ``sc --use`` of the tar at ``url``, named ``many``, in a base made under ``tmp_path``, as a
    job starts it (``default_signals``)."""
    base = tmp_path / "base"
    base.mkdir()
    populator: subprocess.Popen[str] = sc_start("--use", "-d", str(base), "-n", "many", "--pid", str(os.getpid()),
                                                f"http:{url}", "tar", default_signals=True)
    return populator


def test_stopped_writers_end_with_their_populator_when_it_is_killed(tmp_path: Path,
                                                                    slow_archive: tuple[Origin, str]) -> None:
    # A writer that runs reads the end of its command pipe and exits; a stopped one reads nothing,
    # and stayed stopped for good once its populator was killed, holding the staging tree.
    populator = populate_many(tmp_path, slow_archive[1])
    children: list[int] = []
    try:
        children = stop_writers(populator, begun=True)
        populator.kill()
        populator.wait(timeout=30)
        wait_for(lambda: all(map(ended, children)), 30, "the end of the stopped writers after their populator's")
    finally:
        end_unpacking(populator, -1, children, signal.SIGKILL)


def test_a_populator_held_by_a_stopped_writer_says_so_once_and_goes_on_when_it_is_continued(
        tmp_path: Path, slow_archive: tuple[Origin, str]) -> None:
    # Without --timeout, the populator waited for a stopped writer for good, saying nothing, -v or
    # not; its waiters waited behind it.  A writer the user stopped is the user's: it is not killed.
    server, url = slow_archive
    populator = populate_many(tmp_path, url)
    children: list[int] = []
    try:
        children = stop_writers(populator)
        assert populator.stderr is not None
        said, deadline = b"", time.monotonic() + 60
        while not all(f"writer process {child}, ".encode() in said for child in children):
            left = deadline - time.monotonic()
            assert left > 0 and select.select([populator.stderr], [], [], left)[0], f"nothing said: {said!r}"
            chunk = os.read(populator.stderr.fileno(), 1 << 16)
            assert chunk, f"the populator ended: {said!r}"
            said += chunk
        for child in children:
            assert not ended(child), "a stopped writer was killed"
            with open(f"/proc/{child}/stat") as status:
                assert status.read().rpartition(")")[2].split()[0] == "T"
        server.rate = None
        for child in children:
            os.kill(child, signal.SIGCONT)
        out, err = populator.communicate(timeout=60)
        assert populator.returncode == 0, err
        lines = (said.decode() + err).splitlines()
        assert len(lines) == writer.WRITERS, lines
        for child in children:
            named = [line for line in lines if f"writer process {child}, " in line]
            assert len(named) == 1 and named[0].startswith("sc: "), lines
            assert "is stopped (state T)" in named[0] and f"kill -CONT {child}" in named[0], named[0]
        assert len(os.listdir(out.strip())) == writer.SERIAL_MEMBERS + 160
    finally:
        end_unpacking(populator, -1, children, signal.SIGKILL)
