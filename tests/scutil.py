"""Helpers for tests that run the ``sc`` command line as real processes."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import struct
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

SC = [sys.executable, "-m", "sharedcache"]
#: The package's source, for the scripts that tests run with a bare interpreter.
SRC = str(Path(__file__).resolve().parents[1] / "src")


#: What sc reads from the environment that would change a test's outcome (see sharedcache.config).
_SETTINGS_ENVIRONMENT = ("SC_DIRECTORIES", "SC_CONFIG", "SC_PROXY", "SC_OFFLINE", "http_proxy", "https_proxy",
                         "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")


def sc_env(**extra: str) -> dict[str, str]:
    """The environment of a test's sc: without the settings of whoever runs the tests (and without a
    user config file); plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name not in _SETTINGS_ENVIRONMENT}
    env["XDG_CONFIG_HOME"] = "/nonexistent/sc-test-config"
    env.update(extra)
    return env


def sc(*args: str, timeout: float = 60, env: dict[str, str] | None = None,  # type: ignore[no-untyped-def]
       prefix: Sequence[str] = (), **kwargs):
    """Run ``sc ARGS`` to completion (by the command ``prefix`` if given, as :func:`sc_start`
    runs it); return the CompletedProcess (text mode)."""
    return subprocess.run(
        [*prefix, *SC, *args], capture_output=True, text=True, timeout=timeout,
        env=env if env is not None else sc_env(), **kwargs,
    )


#: A prefix that runs a command with the default action for the signals that end a job.  A test
#: that sends one must not depend on how the suite was started: under nohup, or in the
#: background of a non-interactive shell, its processes inherit SIGHUP or SIGINT ignored, and
#: ``sc`` rightly keeps a signal its starter ignored.
DEFAULT_SIGNALS = ["env", "--default-signal=HUP,INT,QUIT,TERM"]


def sc_start(*args: str, env: dict[str, str] | None = None, default_signals: bool = False,  # type: ignore[no-untyped-def]
             prefix: Sequence[str] = (), interpreter: str = sys.executable, **kwargs) -> subprocess.Popen:
    """Start ``sc ARGS`` (text mode, output captured); with ``default_signals``, as a job starts
    it: SIGHUP, SIGINT, SIGQUIT and SIGTERM do what they do by default (see :data:`DEFAULT_SIGNALS`);
    run by the command ``prefix`` if given (``unshare``, ``ip netns exec``), in ``interpreter``
    (another user's: see :func:`interpreter_for`)."""
    return subprocess.Popen(
        [*(DEFAULT_SIGNALS if default_signals else []), *prefix, interpreter, *SC[1:], *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env if env is not None else sc_env(), **kwargs,
    )


def finish(procs: Sequence[subprocess.Popen], timeout: float = 60) -> list[tuple[int, str, str]]:
    """Wait for every process (killing them all if time runs out); return (status, out, err)."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    return results


def get_direct(url: str, netns: str | None = None, timeout: float = 10.0) -> str:
    """The body of a GET of ``url`` over no proxy, from network namespace ``netns`` if given (where
    a test's site keeps its servers).  ``no-cache``: squid would answer a page of its cache manager
    from its cache."""
    script = ("import sys, urllib.request\n"
              "request = urllib.request.Request(sys.argv[1], headers={'Cache-Control': 'no-cache'})\n"
              "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
              "sys.stdout.write(opener.open(request, timeout=float(sys.argv[2])).read().decode())\n")
    command = [sys.executable, "-c", script, url, str(timeout)]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 20, check=True).stdout


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill_populator_and_take_over(args: list[str], partly_done,  # type: ignore[no-untyped-def]
                                 env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Start a populating ``sc``, and once ``partly_done()``, a second one that waits for it;
    SIGKILL the first; return what the second ends with."""
    first = sc_start(*args, env=env)
    try:
        wait_for(partly_done, what="a partial download")
        waiter = sc_start(*args, env=env)
        time.sleep(0.3)  # the waiter is now waiting for the first
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        ((status, out, err),) = finish([waiter], timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    return status, out, err


def resumable(base: Path) -> bool:
    """Whether a download in ``base`` has a checkpoint that counts bytes: a takeover resumes it."""
    return any(json.loads(record.read_text())["bytes"] > 0 for record in base.rglob("partial.json"))


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:  # type: ignore[type-arg]
    """Stop ``proc`` by its PID: SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def pause_at(event_test: str, times: int = 1) -> str:
    """The text of a ``sitecustomize`` that pauses the process that loads it at each of the first
    ``times`` audit events that pass ``event_test`` (an expression of ``event`` and ``args``): it
    makes the file $SC_TEST_PAUSED, then waits (at most 30 s) for the file $SC_TEST_GO, so that a
    test can act at that very moment.  Before a pause that is not the last it removes
    $SC_TEST_GO, and the test removes $SC_TEST_PAUSED before making it, to see the next pause."""
    return f"""
import os, sys, time
_pauses = [{times}]
def _hook(event, args):
    if _pauses[0] and {event_test}:
        _pauses[0] -= 1
        open(os.environ["SC_TEST_PAUSED"], "w").close()
        end = time.monotonic() + 30
        while not os.path.exists(os.environ["SC_TEST_GO"]) and time.monotonic() < end:
            time.sleep(0.005)
        if _pauses[0] and os.path.exists(os.environ["SC_TEST_GO"]):
            os.remove(os.environ["SC_TEST_GO"])
sys.addaudithook(_hook)
"""


def started_paused(tmp_path: Path, role: str, event_test: str, *args: str, times: int = 1,
                   prefix: Sequence[str] = (), python: tuple[str, dict[str, str]] | None = None,
                   ) -> tuple[subprocess.Popen[str], Path, Path]:
    """``sc ARGS`` started (by ``prefix``, as :func:`sc_start` starts it; by the interpreter and
    environment ``python`` of :func:`interpreter_for` if given, as another user, who must then be
    able to write in ``tmp_path``) to pause at the first ``times`` audit events that pass
    ``event_test`` (see :func:`scutil.pause_at`); with the files that tell it has paused, and
    let it go on."""
    site = tmp_path / f"site-{role}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(pause_at(event_test, times))
    paused, go = tmp_path / f"paused-{role}", tmp_path / f"go-{role}"
    interpreter, path = (sys.executable, SRC) if python is None else (python[0], python[1]["PYTHONPATH"])
    proc = sc_start(*args, env=sc_env(PYTHONPATH=os.pathsep.join([str(site), path]), SC_TEST_PAUSED=str(paused),
                                      SC_TEST_GO=str(go)), prefix=prefix, interpreter=interpreter)
    return proc, paused, go


class Sleeper:
    """A live process to own leases (``--pid``), killed on exit."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "600"])
        self.pid = self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def __enter__(self) -> Sleeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def tarball_bytes(files: dict[str, bytes], *, compression: str = "gz") -> bytes:
    """A tarball of ``files`` (name: content), built in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_tarball(path: Path, files: dict[str, bytes], *, compression: str = "gz") -> str:
    """Write a tarball of ``files`` to ``path``; return its md5."""
    data = tarball_bytes(files, compression=compression)
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def deflate64_zip(files: dict[str, bytes], *, compressed: dict[str, bytes] | None = None) -> bytes:
    """A zip of ``files`` with every member compressed with Deflate64 (method 9, as Windows' Explorer
    and 7-Zip write it), which zipfile cannot write: each is written stored, holding its Deflate64
    data (from ``compressed``, for damaged data, else made by inflate64), and its headers then say
    Deflate64, with the CRC and size of its content."""
    import zipfile
    import zlib

    inflate64 = pytest.importorskip("inflate64", reason="inflate64 is not installed (pip install inflate64)")

    def deflated(content: bytes) -> bytes:
        deflater = inflate64.Deflater()
        return deflater.deflate(content) + deflater.flush()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(name, (compressed or {}).get(name) or deflated(content))
    data = bytearray(buffer.getvalue())
    directory = struct.unpack_from("<L", data, data.rindex(b"PK\x05\x06") + 16)[0]
    at = directory
    for info, content in zip(zipfile.ZipFile(io.BytesIO(bytes(data))).infolist(), files.values(), strict=True):
        # method, then CRC-32, compressed size, size: 8 and 14 in the local header, 10 and 16 in the central
        for where, method, crc in ((info.header_offset, 8, 14), (at, 10, 16)):
            struct.pack_into("<H", data, where + method, 9)
            struct.pack_into("<L", data, where + crc, zlib.crc32(content))
            struct.pack_into("<L", data, where + crc + 8, len(content))
        at += 46 + sum(struct.unpack_from("<3H", data, at + 28))
    return bytes(data)


def sample_files(n: int = 20, size: int = 20_000, *, compressible: bool = True) -> dict[str, bytes]:
    """Files whose content is derived from their name, so a reader can check each one: a short seed
    repeated, or unless ``compressible``, pseudo-random bytes (a .tar.gz of them is as large)."""
    names = [f"data/part-{i:03d}.bin" for i in range(n)]
    return {name: content_for(name, size) if compressible else random.Random(name).randbytes(size) for name in names}


def content_for(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def check_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (root / name).read_bytes() == data, name


def read_head(conn: socket.socket) -> bytes | None:
    """An HTTP request's head from ``conn`` (to the blank line), or None if it closed first."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        request += chunk
    return request


class ThreadedServer:
    """A TCP server on 127.0.0.1 that hands each connection to ``serve(conn)`` in a thread of its
    own, and closes it after; :attr:`stopping` is set by :meth:`stop`, which waits for them all."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._serve = serve
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._serve(conn)
            except OSError:
                return  # the client went away

    def stop(self) -> None:
        self.stopping.set()
        close_listener(self._listener)
        for thread in self._threads:
            thread.join(10)


def close_listener(listener: socket.socket) -> None:
    """Close a listening socket, waking an accept() blocked on it (close() alone does not)."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


def user_dir(base: Path) -> Path:
    """This user's directory in the base directory ``base``: the repositories' paths are there."""
    return base / f".shared-cache-{os.geteuid()}"


def control(base: Path) -> Path:
    """This user's private cache in the base directory ``base``."""
    return user_dir(base) / ".cache"


def interpreter_for(uid: int, gid: int) -> tuple[str, dict[str, str]]:
    """A Python that the user ``uid`` may run, and the environment that finds the project with it.

    This interpreter may live in a directory only root can enter (a home directory); a system
    Python of the same version then runs the project from its source and the venv's packages.
    """
    import shutil

    import pytest
    import sharedcache
    import urllib3

    paths = os.pathsep.join([str(Path(sharedcache.__file__).parents[1]), str(Path(urllib3.__file__).parents[1])])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")):
        if candidate is None:
            continue
        try:
            subprocess.run([candidate, "-c", "import sharedcache"], env=sc_env(PYTHONPATH=paths),
                           user=uid, group=gid, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.CalledProcessError):
            continue
        return candidate, sc_env(PYTHONPATH=paths)
    pytest.skip(f"no {version} that another user may run")


#: Damage to an index that SQLite's quick_check finds sound, each made by damage_in_values.
SOUND_LOOKING_DAMAGE = ["misplaced-total", "total-text", "total-missing", "size-text", "meta-not-utf8"]


def damage_in_values(index: Path, how: str) -> None:
    """Damage the index file ``index`` (no journal beside it, no connection open) as ``how`` says:
    the rowid of the 'total' setting changed in the file, so that the table and its index
    disagree (one byte), or values no write of the engine makes; ``PRAGMA quick_check`` still says
    "ok" after each."""
    import re
    import sqlite3

    if how == "misplaced-total":
        data = bytearray(index.read_bytes())
        # The table's record: its rowid (1), its header (3 bytes: the header's size, a text of 5
        # bytes, an integer), 'total'.  The index's record of it has the rowid after the key.
        found = [m.start() for m in re.finditer(rb"\x01\x03\x17[\x01-\x09]total", data)]
        assert len(found) == 1, found
        data[found[0]] = 0x36
        index.write_bytes(bytes(data))
    else:
        statement = {
            "total-text": "UPDATE settings SET value='abc' WHERE key='total'",
            "total-missing": "DELETE FROM settings WHERE key='total'",
            "size-text": "UPDATE entries SET size='big' WHERE rowid=(SELECT min(rowid) FROM entries)",
            "meta-not-utf8": "UPDATE entries SET meta=CAST(X'74FF31' AS TEXT) WHERE rowid=(SELECT min(rowid) FROM entries)",
        }[how]
        db = sqlite3.connect(index, isolation_level=None)
        try:
            db.execute(statement)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    db = sqlite3.connect(index)
    try:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        db.close()


def pending(path: Path) -> bool:
    """Whether some of the data of ``path`` waits in memory for its blocks (an extent that FIEMAP
    marks delayed-allocation): written and not yet flushed.  False where FIEMAP is not supported."""
    fs_ioc_fiemap, delayed_allocation, count = 0xC020660B, 0x4, 64  # _IOWR('f', 11, struct fiemap)
    request = bytearray(struct.pack("=QQIIII", 0, 2**64 - 1, 0, 0, count, 0) + bytes(56 * count))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.ioctl(fd, fs_ioc_fiemap, request)
    except OSError:
        return False
    finally:
        os.close(fd)
    mapped = struct.unpack_from("=I", request, 20)[0]
    return any(struct.unpack_from("=I", request, 32 + 56 * i + 40)[0] & delayed_allocation for i in range(mapped))


def needs_delayed_allocation(directory: Path) -> None:
    """Skip the calling test unless the file system of ``directory`` delays allocation (ext4, xfs
    and btrfs do): there :func:`pending` tells what was flushed and what was not."""
    probe = directory / "delayed-allocation-probe"
    probe.write_bytes(os.urandom(2**16))
    try:
        if not pending(probe):
            pytest.skip(f"the file system of {directory} does not delay allocation (ext4, xfs and btrfs "
                        "do), so what was flushed cannot be seen")
    finally:
        probe.unlink()


def on_host(host: tuple[Path, Path | None, str], argv: list[str]) -> list[str]:
    """``argv`` run on another host, or on this one after a reboot: a mount namespace with that
    host's boot id (the file ``host[0]``) and machine id (``host[1]``; None: this machine's)."""
    boot, machine, _ = host
    if machine is None:
        script = 'mount --bind "$1" /proc/sys/kernel/random/boot_id && shift 2 && exec "$@"'
    else:
        script = ('mount --bind "$1" /proc/sys/kernel/random/boot_id && mount --bind "$2" /etc/machine-id'
                  ' && shift 2 && exec "$@"')
    return ["unshare", "--mount", "sh", "-c", script, "sh", str(boot), str(machine), *argv]


@contextmanager
def mounted_tmpfs(mount: Path, size: str, inodes: int | None = None, *, huge: str | None = None) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``), of at most ``inodes`` inodes and with the ``huge=``
    policy if given, mounted on the new directory ``mount`` for the block; the calling test is
    skipped, saying why, where it cannot be mounted (not root)."""
    mount.mkdir()
    options = (f"size={size}" + (f",nr_inodes={inodes}" if inodes is not None else "")
               + (f",huge={huge}" if huge is not None else ""))
    with _mounted(["-t", "tmpfs", "-o", options, "tmpfs"], mount, "a tmpfs"):
        yield mount


@contextmanager
def _mounted(argv: list[str], mount: Path, what: str) -> Iterator[None]:
    """``mount ARGV MOUNT`` for the block, then unmounted (lazily if busy: a descriptor a failed
    test left open); the calling test is skipped, saying why, if ``what`` cannot be mounted."""
    done = subprocess.run(["mount", *argv, str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount {what}: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@contextmanager
def mounted_bindfs(source: Path, view: Path, *options: str) -> Iterator[Path]:
    """``source`` seen through bindfs, a FUSE file system (given ``options``), at the new directory
    ``view`` for the block; the calling test is skipped, saying why, where bindfs is missing or
    cannot mount."""
    import shutil

    if shutil.which("bindfs") is None:
        pytest.skip("bindfs is not installed (Debian: bindfs)")
    view.mkdir()
    daemon = subprocess.Popen(["bindfs", "-f", *options, str(source), str(view)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(view):
            if daemon.poll() is not None:
                pytest.skip(f"cannot mount bindfs: {daemon.stderr.read().decode().strip()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "bindfs never mounted"
            time.sleep(0.05)
        yield view
    finally:
        # Lazily if busy (a descriptor a failed test left open): a mount whose daemon is killed
        # would stay behind, its directory unreachable.
        if subprocess.run(["umount", str(view)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)


@contextmanager
def mounted_overlay(lower: Path, merged: Path) -> Iterator[Path]:
    """``lower`` as the lower layer of an overlayfs (a container's image), with a new upper layer,
    mounted on the new directory ``merged`` for the block (``lower`` must not change meanwhile);
    the calling test is skipped, saying why, where it cannot be mounted (not root, no overlayfs)."""
    upper, work = merged.with_name(merged.name + ".upper"), merged.with_name(merged.name + ".work")
    for directory in (upper, work, merged):
        directory.mkdir()
    with _mounted(["-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", "overlay"], merged,
                  "an overlay"):
        yield merged


@contextmanager
def mounted_image(mount: Path, fs_type: str, megabytes: int, *options: str) -> Iterator[Path]:
    """A new file system of ``fs_type`` (made by ``mkfs.<fs_type>``, given ``options`` too) in an
    image file of ``megabytes`` MiB beside ``mount``, mounted through a loop device on the new directory
    ``mount`` for the block, then unmounted and the image removed; the calling test is skipped,
    saying why, where it cannot be made or mounted (not root, no loop device, no mkfs)."""
    image = mount.with_name(mount.name + ".img")
    with open(image, "wb") as made:
        made.truncate(megabytes << 20)
    try:
        try:
            formatted = subprocess.run([f"mkfs.{fs_type}", "-q", "-F", *options, str(image)], capture_output=True)
        except FileNotFoundError:
            pytest.skip(f"mkfs.{fs_type} is not installed (Debian: e2fsprogs)")
        if formatted.returncode != 0:
            pytest.skip(f"cannot make an {fs_type} file system: {formatted.stderr.decode().strip()}")
        mount.mkdir()
        with _mounted(["-t", fs_type, "-o", "loop", str(image)], mount, f"an {fs_type} image"):
            yield mount
    finally:
        image.unlink()


@contextmanager
def writers_past(members: int, *, writers: int | None = None, small_file_bytes: int = 1 << 62) -> Iterator[None]:
    """While it lasts, the writer processes of an unpack in this process take over past ``members``
    members (``sharedcache.loaders.writer``), however large the files so far unless
    ``small_file_bytes`` says otherwise, ``writers`` of them if given."""
    from sharedcache.loaders import writer

    saved = writer.SERIAL_MEMBERS, writer.WRITERS, writer.SMALL_FILE_BYTES
    writer.SERIAL_MEMBERS, writer.SMALL_FILE_BYTES = members, small_file_bytes
    if writers is not None:
        writer.WRITERS = writers
    try:
        yield
    finally:
        writer.SERIAL_MEMBERS, writer.WRITERS, writer.SMALL_FILE_BYTES = saved


#: A population of a release before the status record held its owner's key (format 2, and the
#: first of format 3): it holds the population lock exclusively, as such a release does, and
#: writes the record as it wrote it (no ``owner``; its recipe's identity left out, which reads as
#: no other recipe's), then prints ``holding`` and waits.
_EARLIER_POPULATOR = """
import fcntl, json, os, sys, time
populate, name = sys.argv[1:]
os.makedirs(populate, mode=0o700, exist_ok=True)
fd = os.open(os.path.join(populate, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
record = {"pid": os.getpid(), "pid_ns": os.stat("/proc/self/ns/pid").st_ino, "size": None, "done": 0,
          "total": None, "started": time.time()}
with open(os.path.join(populate, name + ".json"), "w") as status:
    json.dump(record, status)
print("holding", flush=True)
time.sleep(600)
"""


@contextmanager
def earlier_populator(base: Path, name: str) -> Iterator[subprocess.Popen[str]]:
    """A live population of ``name`` in the cache of ``base`` by a release before the status
    record named its owner (:data:`_EARLIER_POPULATOR`); killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", _EARLIER_POPULATOR, str(control(base) / "populate"), name],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        assert ready == ["holding\n"], f"the earlier population did not start: {ready}"
        yield proc
    finally:
        stop_process(proc)
