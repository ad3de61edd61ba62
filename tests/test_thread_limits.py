"""A process that may not start another thread still fills its repository (sharedcache.loaders.threads):
``sc --use`` run as a user whose limit on tasks (RLIMIT_NPROC, ``ulimit -u``) it has reached alone,
as a batch job that has forked its workers has, reading a compressed tar from a file and over HTTP,
with one connection and with several, by address and by a host name the resolver must look up.
Under a cap on memory (RLIMIT_AS, ``ulimit -v``), where a thread may also be made and die as it
starts, it fills its repository or says in one line that it ran out, and never hangs."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from origin import Origin
from scutil import SC, SRC, check_tree, interpreter_for, sc_env, tarball_bytes

pytestmark = [
    pytest.mark.timeout(180),
    # Root ignores RLIMIT_NPROC, so sc runs as nobody, who has no other process here.
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as another user whose tasks it can limit"),
    pytest.mark.skipif(not (shutil.which("setpriv") and shutil.which("prlimit")),
                       reason="needs setpriv and prlimit (util-linux)"),
]

NOBODY = 65534
MiB = 1 << 20
# Incompressible, so that a download with several connections is four parts (of 1 MiB but the last).
FILES = {"a/one": os.urandom(MiB), "a/two": os.urandom(MiB), "b/three": os.urandom(MiB), "b/small": b"small\n"}
ARCHIVE = tarball_bytes(FILES)
MD5 = f"md5:{hashlib.md5(ARCHIVE).hexdigest()}"
#: What a download reads in one piece: the HTTP stack's own memory is what meets the caps.
SMALL_FILES = {f"f{i}": b"%d" % i * 1000 for i in range(20)}
SMALL_ARCHIVE = tarball_bytes(SMALL_FILES)
REFUSED = "sc: the system refused another thread (a limit on tasks or memory): working in fewer threads, more slowly\n"


def use_without_threads(base: Path, *argv: str, stderr: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """``sc --use -d BASE -n data ARGV`` as nobody, with no task left to start a thread with."""
    python, env = interpreter_for(NOBODY, NOBODY)
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "prlimit", "--nproc=1", python, "-m", "sharedcache", "--use", "-d", str(base),
                           "-n", "data", *argv], stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=150,
                          env=env)


def base_of_nobody(directory: Path) -> Path:
    """A base directory in ``directory`` that nobody owns."""
    base = directory / "base"
    base.mkdir()
    os.chown(base, NOBODY, NOBODY)
    return base


@pytest.mark.parametrize(("where", "connections"), [("file", 1), ("127.0.0.1", 1), ("127.0.0.1", 4),
                                                     ("localhost", 4)])
def test_without_a_thread_to_start_the_archive_is_unpacked(reachable_tmp: Path, origin: Origin, where: str,
                                                            connections: int) -> None:
    if where == "file":
        path = reachable_tmp / "data.tar.gz"
        path.write_bytes(ARCHIVE)
        source = f"file:{path}"
    else:  # a name (localhost) needs the resolver, which runs in a thread of its own
        source = "http:" + origin.add("/data.tar.gz", ARCHIVE).replace("127.0.0.1", where)
    result = use_without_threads(base_of_nobody(reachable_tmp), "-v", "--connections", str(connections), source,
                                 MD5, "tar")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(REFUSED) == 1, result.stderr
    check_tree(Path(result.stdout.strip()), FILES)
    if connections > 1:  # the first answer brings the first part; a request for each of the others
        parts = [f"bytes={start}-{min(start + MiB, len(ARCHIVE)) - 1}" for start in range(MiB, len(ARCHIVE), MiB)]
        assert origin.stats("/data.tar.gz").ranges == ["bytes=0-", *parts]


def test_without_a_thread_to_start_a_file_is_downloaded_under_the_default_speed_limit(
        reachable_tmp: Path, origin: Origin) -> None:
    # The speed limit's clock beats in a thread of its own (sharedcache.loaders.http._Heartbeat):
    # refused it, the download judges by the wall clock rather than fail.
    data = os.urandom(3 * MiB)
    result = use_without_threads(base_of_nobody(reachable_tmp), "-v", "http:" + origin.add("/data.bin", data))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(REFUSED) == 1, result.stderr
    assert (Path(result.stdout.strip()) / "data.bin").read_bytes() == data


def test_on_a_terminal_the_progress_bar_goes_without_a_thread(reachable_tmp: Path) -> None:
    path = reachable_tmp / "data.tar.gz"
    path.write_bytes(ARCHIVE)
    leader, follower = pty.openpty()
    try:
        result = use_without_threads(base_of_nobody(reachable_tmp), f"file:{path}", MD5, "tar", stderr=follower)
        os.close(follower)
        follower = -1
        shown = b""
        while select.select([leader], [], [], 10)[0]:
            try:
                piece = os.read(leader, 4096)
            except OSError:  # EIO: the writer is gone and everything is read
                break
            if not piece:
                break
            shown += piece
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert result.returncode == 0, shown
    check_tree(Path(result.stdout.strip()), FILES)
    # tqdm, which draws the bar, would start a thread, and warn in three lines that it could not.
    assert b"Warning" not in shown and b"Traceback" not in shown, shown


OUT_OF_MEMORY = re.compile(r"sc: error: (?:repository '[a-z]+': )?out of memory: this process may take ([0-9]+) bytes of address space "
                           r"\(ulimit -v\); raise the limit")


@pytest.mark.parametrize(("where", "caps"), [("file", range(20, 92, 2)), ("http", range(20, 66))])
def test_under_a_cap_on_memory_a_use_fills_its_repository_or_says_so_and_never_hangs(
        reachable_tmp: Path, origin: Origin, where: str, caps: range) -> None:
    # Every cap in turn (from a file: every other MiB from 20 to 90; over HTTP, whose stack is
    # larger, every MiB from 20 to 65).  A MemoryError was "internal error (MemoryError: ); rerun
    # with -v for details"; and a thread that was made but could not make its first objects died
    # before it said that it started, for which Thread.start waits without a limit: `sc --use`
    # hung (at one cap in twenty here).  Over HTTP, at caps where it came: "internal error
    # (LookupError: unknown encoding: idna)" (the codec's module loaded by the first resolution of
    # a host name), "internal error (SystemError: error return without exception set)", "corrupt
    # gzip data" (zlib could not get its window), "cannot write the data of ...: Cannot allocate
    # memory", and "out of memory" without its reason (the limit could not be read).
    if where == "file":
        path = reachable_tmp / "data.tar.gz"
        path.write_bytes(ARCHIVE)
        source, files, checksum = f"file:{path}", FILES, MD5
    else:
        source, files = "http:" + origin.add("/data.tar.gz", SMALL_ARCHIVE), SMALL_FILES
        checksum = f"md5:{hashlib.md5(SMALL_ARCHIVE).hexdigest()}"
    said = 0
    for cap in caps:
        base = reachable_tmp / f"base{cap}"
        base.mkdir()
        run = subprocess.run(["prlimit", f"--as={cap * MiB}", *SC, "--use", "-d", str(base), "-n", "data",
                              source, checksum, "tar"], capture_output=True, text=True, timeout=60, env=sc_env())
        if run.returncode == 0:
            check_tree(Path(run.stdout.strip()), files)
            continue
        assert run.returncode == 1 and "Traceback" not in run.stderr and "internal error" not in run.stderr, \
            (cap, run.stderr)
        # Python itself reports a thread that died as it started ("Exception ignored in thread
        # started by"), and may fail to end that report's line: the line that says what happened
        # ends the output.
        last = run.stderr.splitlines()[-1]
        found = OUT_OF_MEMORY.search(last)
        assert found is not None and found.end() == len(last) and int(found[1]) == cap * MiB, (cap, run.stderr)
        assert found.start() == 0 or "Exception ignored" in last, (cap, run.stderr)
        said += 1
    assert said >= 3, "too few caps ran out of memory to tell anything"


def test_a_library_that_cannot_be_mapped_under_a_cap_on_memory_is_out_of_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Under ulimit -v the import of a download's modules fails as the dynamic loader cannot map a
    # library (ImportError: ... failed to map segment from shared object), or as a module cannot
    # get memory (MemoryError): "internal error", and a loader that "cannot be loaded: " (a
    # usage error, with no reason).  Both are the limit's doing, said as such.
    # So is a SystemError there ("error return without exception set": the interpreter's C code
    # that met an allocation failing without saying so), which was an internal error; any other
    # SystemError stays a bug.  And so is "PyCapsule_Import could not import module" (the sweep
    # over HTTP met it once at 23 MiB: _ssl failing to import _socket's interface), which was a
    # loader that "cannot be loaded" (exit 2).
    check = ("import sys; from sharedcache.errors import memory_refused; "
             "print(memory_refused(ImportError('libcrypto.so.3: failed to map segment from shared object')), "
             "memory_refused(ImportError('PyCapsule_Import could not import module \"_socket\"')), "
             "memory_refused(SystemError('error return without exception set')), "
             "memory_refused(SystemError('<built-in function f> returned NULL without setting an exception')), "
             "memory_refused(SystemError('bad argument to internal function')))")
    limited = subprocess.run(["prlimit", f"--as={64 * 1024 * MiB}", *SC[:1], "-c", check], capture_output=True,
                             text=True, timeout=60, env=sc_env())
    unlimited = subprocess.run([*SC[:1], "-c", check], capture_output=True, text=True, timeout=60,
                               env=sc_env())
    assert (limited.stdout, unlimited.stdout) == ("True True True True False\n", "False False False False False\n"), (
        limited.stderr, unlimited.stderr)
    from sharedcache.loaders import registry

    def out_of_memory(module: str) -> None:
        raise MemoryError

    monkeypatch.setattr(registry.importlib, "import_module", out_of_memory)
    with pytest.raises(MemoryError):
        registry.loader_class("http")


def test_with_no_memory_left_the_line_still_names_the_cap() -> None:
    # The cap is read from /proc/self/limits as the line is made, when memory may be all taken: a
    # buffer made for the reading then failed, and the line said "out of memory" without its cause.
    hoard = ("from sharedcache.errors import out_of_memory\n"
             "hoard = []\n"
             "for size in (1 << 20, 1 << 16, 1 << 12, 512, 64):\n"
             "    try:\n"
             "        while True:\n"
             "            hoard.append(bytearray(size))\n"
             "    except MemoryError:\n"
             "        pass\n"
             "print(out_of_memory())\n")
    run = subprocess.run(["prlimit", f"--as={64 * MiB}", *SC[:1], "-c", hoard], capture_output=True, text=True,
                         timeout=60, env=sc_env())
    assert run.stdout == (f"out of memory: this process may take {64 * MiB} bytes of address space (ulimit -v); "
                          "raise the limit\n"), run.stderr


#: A ``sitecustomize`` that refuses ``sc`` memory as it opens the archive $SC_TEST_ARCHIVE (a
#: MemoryError), then takes all the memory left, into objects it keeps, as sc reads its cap to say
#: so: what the failure's unwinding gave back, which another thread of a download may take first.
#: With $SC_TEST_TAKEN_EARLY, it takes all there is as it refuses the open, too.
TAKES_MEMORY = """
import os, sys

taken = []

def take_all():
    slots = [None] * 50_000  # (made first: a list that grew would need memory to grow)
    taken.append(slots)
    count = 0
    # (Down to a bytes object of each of the sizes of Python's allocator of small objects: one
    # of size - 33 bytes takes size.)
    for size in [1 << 20, 1 << 16, 1 << 12, 1024, *range(512, 40, -16)] * 2:
        try:
            while count < len(slots):
                slots[count] = b"\\0" * (size - 33) if size <= 512 else bytearray(size)
                count += 1
        except MemoryError:
            pass

def refuse(event, args):
    if event != "open":
        return
    if args[0] == os.environ["SC_TEST_ARCHIVE"]:
        if os.environ["SC_TEST_TAKEN_EARLY"]:
            take_all()
        raise MemoryError
    if args[0] == "/proc/self/limits" and sys.exception() is not None:
        take_all()

sys.addaudithook(refuse)
"""


@pytest.mark.parametrize("taken_early", [False, True])
def test_with_no_memory_left_to_say_it_the_out_of_memory_line_is_said(tmp_path: Path, taken_early: bool) -> None:
    # The line was made as it was said, when memory had run out: its making failed, as did
    # Python's report of that (at a cap of 32 MiB: two bare "MemoryError" lines, or two reports of
    # a SystemError and a MemoryError that found no memory for their tracebacks), and sc ended
    # with no line of its own; or it said "out of memory" without the cap, which it could not read.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(TAKES_MEMORY)
    path = tmp_path / "data.tar.gz"
    path.write_bytes(ARCHIVE)
    env = sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_ARCHIVE=str(path),
                 SC_TEST_TAKEN_EARLY="1" if taken_early else "")
    run = subprocess.run(["prlimit", f"--as={64 * MiB}", *SC, "--use", "-d", str(tmp_path), "-n", "data",
                          f"file:{path}", MD5, "tar"], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1:] == [f"sc: error: out of memory: this process may take {64 * MiB} bytes "
                                            "of address space (ulimit -v); raise the limit"], run.stderr


#: A program that calls ``sharedcache.cli.main(argv)`` with its stderr captured in an
#: ``io.StringIO`` (as a test harness or an embedding program does), the use of argv[1] meeting a
#: MemoryError (refused the opening of its source, as a cap on memory would refuse it).
_MAIN_OUT_OF_MEMORY_INTO_A_STRING = """
import contextlib, io, json, sys
from sharedcache.cli import main

source = sys.argv[1]

def refuse(event, args):
    if event == "open" and args[0] == source:
        raise MemoryError

sys.addaudithook(refuse)
said = io.StringIO()
with contextlib.redirect_stderr(said):
    status = main(["--use", "-d", sys.argv[2], "-n", "data", f"file:{source}"])
print(json.dumps([status, said.getvalue()]))
"""


def test_main_out_of_memory_says_so_into_a_stream_with_no_descriptor(tmp_path: Path) -> None:
    # The line was written to stderr's descriptor, and a stream with none lost it: status 1,
    # and not a word.
    source = tmp_path / "data"
    source.write_bytes(b"x" * 1000)
    run = subprocess.run([sys.executable, "-c", _MAIN_OUT_OF_MEMORY_INTO_A_STRING, str(source), str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=sc_env(PYTHONPATH=SRC))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [1, "sc: error: out of memory\n"]


def test_a_read_ahead_whose_thread_ends_unheard_fails_rather_than_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The read-ahead thread hands its consumer what stops it; where that handing on failed too
    # (no memory for its frame, under a cap on memory), the thread ended without a word and the
    # consumer waited for the next chunk for ever: `sc --use` hung, once, at a cap of 38 MiB.
    from sharedcache.loaders import streams

    class Failing(streams.Stream):
        def read(self, size: int = -1) -> bytes:
            raise OSError("the source failed")

    def no_memory_to_hand_on(self: streams.Prefetch, item: object) -> None:
        raise MemoryError

    monkeypatch.setattr(streams.Prefetch, "_put", no_memory_to_hand_on)
    reader = streams.Prefetch(Failing())
    with pytest.raises(MemoryError, match="ended without handing on its work"):
        reader.read()
    reader.close()


def test_a_decoder_refused_memory_is_out_of_memory_not_corrupt_data(reachable_tmp: Path) -> None:
    # zstd's decoder allocates the window a frame asks for (here 128 MiB, as `zstd --long=27`
    # makes it, with no content size to allocate less by) as the stream starts: under a cap of
    # 100 MiB that allocation fails, and the line said "corrupt zstd data ... Allocation error".
    import zstandard

    params = zstandard.ZstdCompressionParameters(window_log=27, write_content_size=False)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()  # (streamed: no size)
    path = reachable_tmp / "wide.tar.zst"
    path.write_bytes(compressor.compress(tarball_bytes(SMALL_FILES, compression="")) + compressor.flush())
    assert zstandard.get_frame_parameters(path.read_bytes()).window_size == 128 * MiB
    checksum = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    argv = [*SC, "--use", "-d", str(reachable_tmp), "-n", "wide", f"file:{path}", checksum, "tar"]
    capped = subprocess.run(["prlimit", f"--as={100 * MiB}", *argv], capture_output=True, text=True, timeout=60,
                            env=sc_env())
    assert capped.returncode == 1 and OUT_OF_MEMORY.fullmatch(capped.stderr.splitlines()[-1]), capped.stderr
    assert "corrupt" not in capped.stderr, capped.stderr
    whole = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=sc_env())
    assert whole.returncode == 0, whole.stderr
    check_tree(Path(whole.stdout.strip()), SMALL_FILES)


def test_a_zip_members_inflater_refused_memory_is_out_of_memory_not_corrupt_data(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # zlib allocates its window as a stream needs it, and says Z_MEM_ERROR as "Error -4 while
    # decompressing data": a zip member's inflater took that for corrupt data, as the gzip
    # decoder did (ISA-L's -4 is a bad header: data).
    import zlib

    from sharedcache.loaders import ziparchive

    class Refusing:
        eof = False
        unconsumed_tail = b""

        def __init__(self, error: zlib.error) -> None:
            self.error = error

        def decompress(self, data: bytes, max_length: int) -> bytes:
            raise self.error

    for error, raised in ((zlib.error("Error -4 while decompressing data"), MemoryError),
                          (zlib.error("Error -3 while decompressing data: invalid block type"), ValueError)):
        monkeypatch.setattr(ziparchive, "inflate_module", lambda error=error: type(
            "Zlib", (), {"error": zlib.error, "decompressobj": staticmethod(lambda wbits: Refusing(error))}))
        with pytest.raises(raised):
            ziparchive._Inflate().decompress(b"data", 100)


#: Starts a thread of ours (``threads.start``) that dies of ``argv[1]`` (an exception's name) saying
#: ``argv[2]``, then a bare thread that does (which Python reports as "Exception ignored in thread
#: started by").
DIES_OF = """
import _thread, sys, threading, time
from sharedcache.loaders import threads

def die():
    raise getattr(__builtins__, sys.argv[1])(sys.argv[2])

thread = threading.Thread(target=die)
assert threads.start(thread)
thread.join(10)
_thread.start_new_thread(die, ())
time.sleep(1)
"""


@pytest.mark.parametrize(("error", "message", "quiet"), [
    ("MemoryError", "died", True),
    ("SystemError", "error return without exception set", True),  # (C code that met an allocation failing)
    ("SystemError", "bad argument to internal function", False),   # a bug
    ("RuntimeError", "can't allocate lock", True),  # (a lock of the interpreter's, under a cap of 42 MiB)
    ("RuntimeError", "died", False),
    ("ValueError", "died", False),
])
def test_a_thread_that_dies_of_memory_is_not_reported_and_others_are(error: str, message: str, quiet: bool) -> None:
    # A thread that died of memory as it started (its work done without it) was reported by
    # Python with a traceback on the user's stderr; any other death still is.  (Under a cap on
    # address space, where memory is refused: a large one, which this never reaches.)
    run = subprocess.run(["prlimit", f"--as={64 * 1024 * MiB}", *SC[:1], "-c", DIES_OF, error, message],
                         capture_output=True, text=True, timeout=60, env=sc_env())
    assert run.returncode == 0, run.stderr
    if quiet:
        assert run.stderr == "", run.stderr
    else:
        assert run.stderr.count(f"{error}: {message}") == 2, run.stderr


#: Hands the hooks that ``threads.start`` sets Python's report of a thread refused memory as it
#: started, in the words of each version: 3.11 and 3.12 give the thread's function apart, 3.13
#: puts it into the message.
REPORTED_AS = """
import sys, threading
from types import SimpleNamespace
from sharedcache.loaders import threads

def function():
    pass

thread = threading.Thread(target=function)
assert threads.start(thread)
thread.join(10)
for message, of in (("Exception ignored in thread started by", function),
                    (f"Exception ignored in thread started by {function!r}", None)):
    sys.unraisablehook(SimpleNamespace(exc_type=MemoryError, exc_value=MemoryError(), exc_traceback=None,
                                       err_msg=message, object=of))
"""


def test_the_report_of_a_thread_refused_memory_is_known_in_the_words_of_each_python() -> None:
    # The sweep meets such a report now and then; here both wordings come under this Python.
    # (A report passed on reaches Python's own hook, which refuses a namespace: TypeError.)
    run = subprocess.run([*SC[:1], "-c", REPORTED_AS], capture_output=True, text=True, timeout=60, env=sc_env())
    assert (run.returncode, run.stderr) == (0, "")


#: Ends a bare thread, which threading never registered, with threading's own bookkeeping of a
#: thread's end (a KeyError), then another with a KeyError of its own.
UNREGISTERED = """
import _thread, os, time, threading
from sharedcache.loaders import threads

never_started = threading.Thread()  # (made here: made in the bare thread, it would register that)

def unregistered():
    never_started._delete()

def elsewhere():
    {}["not threading's"]

threads.start(threading.Thread(target=lambda: None))
for end in (unregistered, elsewhere):
    _thread.start_new_thread(end, ())
    # Until the thread has ended (its exception reported, or not, before it does): however
    # late a loaded machine runs it, the interpreter's exit would cut it short.
    deadline = time.monotonic() + 30
    while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def test_a_thread_that_died_before_it_was_registered_is_not_reported() -> None:
    # Under a cap of 42 MiB, about once in a hundred runs, a thread's start was refused memory
    # before threading registered it, and threading's bookkeeping at its end raised a KeyError
    # (Thread._delete), which Python reported with a traceback beside the out-of-memory line.
    # A KeyError from anywhere else is still reported.
    run = subprocess.run([*SC[:1], "-c", UNREGISTERED], capture_output=True, text=True, timeout=60, env=sc_env())
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("Exception ignored in thread started by") == 1, run.stderr
    assert "not threading's" in run.stderr and "_delete" not in run.stderr, run.stderr
